"""A replica's side of steering: the live limits and pauses in the store, polled about once a
second (``POLL_S``), so that every replica obeys a ``quota set`` or a ``pause`` within 2 s.

The poll reads two small tables (``relay_limits``, ``relay_pauses``); a change is applied to
the limits in force (:class:`~service.pacing.limits.Limits`) and to the paused set, and the
dispatcher is told (``on_change``) so that waiters of a paused customer are parked at once.
If the store cannot be read, what was last read stays in force.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from service.pacing.limits import Limits, LiveLimit
from service.store.errors import STORE_ERRORS
from service.store.steering import SteeringStore

__all__ = ["POLL_S", "PauseState", "Pauses", "SteeringPoller"]

log = structlog.get_logger(__name__)

POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Pauses:
    """Paused customers: for every operation (``everything``) or for named ones."""

    everything: frozenset[str] = frozenset()
    per_api: frozenset[tuple[str, str]] = frozenset()  # (customer, api)

    @classmethod
    def of(cls, rows: Iterable[tuple[str, str]]) -> Pauses:
        rows = list(rows)
        return cls(
            frozenset(customer for customer, api in rows if not api),
            frozenset((customer, api) for customer, api in rows if api),
        )

    def __call__(self, api: str, customer: str) -> bool:
        return customer in self.everything or (customer, api) in self.per_api

    def __bool__(self) -> bool:
        return bool(self.everything or self.per_api)


class PauseState:
    """The pauses in force as last read: what the dispatcher and the lines ask, what the poller
    updates. Callable: ``paused(api, customer)``."""

    def __init__(self) -> None:
        self.current = Pauses()

    def __call__(self, api: str, customer: str) -> bool:
        return self.current(api, customer)


class SteeringPoller:
    def __init__(
        self,
        steering: SteeringStore,
        limits: Limits,
        pauses: PauseState,
        *,
        on_change: Callable[[], None] = lambda: None,
        poll_s: float = POLL_S,
    ) -> None:
        self._steering = steering
        self._limits = limits
        self._pauses = pauses
        self._on_change = on_change
        self._poll_s = poll_s

    def paused(self, api: str, customer: str) -> bool:
        return self._pauses(api, customer)

    async def refresh(self) -> bool:
        """Read the live limits and pauses once; True when something changed."""
        limits = await self._steering.limits()
        pauses = Pauses.of((row["customer"], row["api"]) for row in await self._steering.pauses())
        changed = self._limits.replace_live(
            LiveLimit(row["api"], row["kind"], row["key"], row["rate"]) for row in limits
        )
        if pauses != self._pauses.current:
            self._pauses.current, changed = pauses, True
        if changed:
            log.info(
                "steering_changed",
                live_limits=len(limits),
                paused=sorted(pauses.everything) + sorted(f"{c}/{a}" for c, a in pauses.per_api),
            )
            self._on_change()
        return changed

    async def run(self) -> None:
        """Poll until cancelled (a background loop of the runtime)."""
        while True:
            try:
                await self.refresh()
            except STORE_ERRORS as exc:  # what was last read stays in force
                log.warning("steering_poll_failed", error=repr(exc))
            await asyncio.sleep(self._poll_s)
