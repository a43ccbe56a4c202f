"""Which limit is in force for a bucket: a live limit, else the configured one.

The configured table comes from ``RELAY_RATE_LIMITS`` over the published defaults (the
operations table, handed in: pacing does not know the API). ``"*"`` in the overrides sets one
limit for every operation; a named operation wins over it; ``null`` lifts a limit.

Live limits (``bss-relay quota set``, kept in the store and polled by every replica) win over
the configured table, the most specific first: the customer's or the egress's own, then the
operation's for every key. A live limit may also bound an operation the table leaves unlimited.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Limits", "LiveLimit", "configured_limits"]

Kind = Literal["all", "customer", "egress"]


def configured_limits(
    defaults: Mapping[str, float | None], overrides: Mapping[str, float | None]
) -> dict[str, float | None]:
    """The configured table: ``overrides`` (``RELAY_RATE_LIMITS``) over ``defaults`` (the
    published limit of each operation; None: not a rate-limited API, such as IAM's). Key
    ``"*"``: the limit of every rate-limited operation not named."""
    overrides = dict(overrides)
    table = dict(defaults)
    if "*" in overrides:
        everything = overrides.pop("*")
        table = {name: None if limit is None else everything for name, limit in table.items()}
    table.update(overrides)
    return {name: (limit if limit else None) for name, limit in table.items()}


@dataclass(frozen=True, slots=True)
class LiveLimit:
    api: str
    kind: Kind
    key: str  # '' for kind 'all'
    rate: float


class Limits:
    """The limit in force per bucket; :meth:`replace_live` swaps in the polled live limits."""

    def __init__(self, configured: Mapping[str, float | None]) -> None:
        self._configured = dict(configured)
        self._live: dict[tuple[str, str, str], float] = {}

    def configured(self, api: str) -> float | None:
        return self._configured.get(api)

    def replace_live(self, rows: Iterable[LiveLimit]) -> bool:
        """Take the live limits now in the store; True when they changed."""
        live: dict[tuple[str, str, str], float] = {
            (row.api, row.kind, row.key): row.rate for row in rows
        }
        changed = live != self._live
        self._live = live
        return changed

    @property
    def live(self) -> Mapping[tuple[str, str, str], float]:
        return self._live

    def live_for(self, api: str, kind: str, key: str) -> float | None:
        """The live limit of a bucket, if one applies: its own, else its operation's."""
        live = self._live
        if not live:
            return None
        own = live.get((api, kind, key))
        return own if own is not None else live.get((api, "all", ""))

    def _in_force(self, api: str, kind: str, key: str) -> float | None:
        live = self.live_for(api, kind, key)
        return live if live is not None else self.configured(api)

    def customer(self, api: str, key: str) -> float | None:
        return self._in_force(api, "customer", key)

    def egress(self, api: str, key: str) -> float | None:
        return self._in_force(api, "egress", key)

    def limited(self, api: str) -> bool:
        """Whether any key of ``api`` may have a limit (else calls of it are not paced)."""
        if self.configured(api) is not None:
            return True
        return any(found == api for found, _, _ in self._live)
