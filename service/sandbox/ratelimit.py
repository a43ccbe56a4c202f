"""The gateway's throttle: a sliding window per (API, ParentUid) and one per (API, source IP).

The strictest reading of the published limits (CONTRACT §6): a request is refused when either
its (API, ParentUid) window -- across all source addresses -- or its (API, source address)
window -- across all callers -- is full. A window is full when N requests were already
*accepted* for its key in the preceding 1.0 s (refused requests count in neither). With a limit
``r >= 1`` the window is 1 s and holds ``floor(r)`` requests; with ``0 < r < 1`` it holds one
request per ``1/r`` seconds. ``None`` or ``0`` means unlimited.

Each key keeps a deque of accepted timestamps no longer than its limit, so a check is amortised
O(1). Limits come from ``service.api.operations`` (``Operation.limit_per_second``) unless
overridden;
an override map may carry ``"*"`` for every operation, and named operations win over ``"*"``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from service.api.operations import OPERATIONS

__all__ = ["ALL_OPERATIONS", "Limits", "RateLimiter", "Window"]

ALL_OPERATIONS = "*"
Limits = Mapping[str, float | None]


@dataclass(frozen=True, slots=True)
class Window:
    size: int  # accepted requests allowed ...
    seconds: float  # ... within this many seconds
    per_second: float  # as configured, for messages

    @classmethod
    def of(cls, per_second: float | None) -> Window | None:
        if per_second is None or per_second == 0:
            return None
        if per_second >= 1:
            return cls(math.floor(per_second), 1.0, per_second)
        return cls(1, 1.0 / per_second, per_second)


def parse_limits(raw: object) -> dict[str, float | None]:
    """Validate an override map; ``ValueError`` names the first bad entry."""
    if not isinstance(raw, Mapping):
        raise ValueError("limits must be a JSON object of operation name to requests/s")  # noqa: TRY004
    out: dict[str, float | None] = {}
    for name, value in raw.items():
        if name != ALL_OPERATIONS and name not in OPERATIONS:
            raise ValueError(f"unknown operation {name!r} in limits")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"limit for {name!r} must be a number or null")
        if value is not None and (value < 0 or not math.isfinite(value)):
            raise ValueError(f"limit for {name!r} must be >= 0")
        out[name] = None if value is None else float(value)
    return out


class RateLimiter:
    def __init__(
        self, overrides: Limits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._windows: dict[str, Window | None] = {}
        self._overrides: dict[str, float | None] = {}
        # ("uid", api, parent_uid) and ("source", api, address): accepted instants, oldest first
        self._seen: dict[tuple[str, str, str | None], deque[float]] = {}
        self.configure(overrides or {})

    def configure(self, overrides: Limits) -> None:
        """Replace the overrides (relative to the published defaults) and forget past traffic."""
        checked = parse_limits(overrides)
        star = checked.get(ALL_OPERATIONS)
        windows: dict[str, Window | None] = {}
        for name, op in OPERATIONS.items():
            if name in checked:
                windows[name] = Window.of(checked[name])
            elif ALL_OPERATIONS in checked:
                windows[name] = Window.of(star)
            else:
                windows[name] = Window.of(op.limit_per_second)
        self._overrides, self._windows = checked, windows
        self._seen.clear()

    def clear(self) -> None:
        self._seen.clear()

    @property
    def overrides(self) -> dict[str, float | None]:
        return dict(self._overrides)

    def effective(self) -> dict[str, float | None]:
        return {name: (w.per_second if w else None) for name, w in self._windows.items()}

    def admit(self, source: str, api: str, parent_uid: str | None) -> Window | None:
        """None if the request may pass (and counts it); else the window it would exceed."""
        window = self._windows.get(api)
        if window is None:
            return None
        now = self._clock()
        cutoff = now - window.seconds
        windows = [self._recent(("uid", api, parent_uid), cutoff)]
        windows.append(self._recent(("source", api, source), cutoff))
        if any(len(seen) >= window.size for seen in windows):
            return window
        for seen in windows:
            seen.append(now)
        return None

    def _recent(self, key: tuple[str, str, str | None], cutoff: float) -> deque[float]:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = deque()
        while seen and seen[0] <= cutoff:
            seen.popleft()
        return seen
