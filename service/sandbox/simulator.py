"""Everything one running sandbox holds, built once at start and reset in place.

``reset()`` restores the loaded data set and the limits and faults given at start, forgets past
traffic (request log, counters, throttle windows) and keeps issued temporary credentials (a service
that cached a customer's token before the reset keeps working).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.sandbox.credentials import CredentialStore
from service.sandbox.faults import FaultPlan
from service.sandbox.journal import DEFAULT_LOG_SIZE, Counters, RequestLog
from service.sandbox.ratelimit import Limits, RateLimiter, parse_limits
from service.sandbox.state import Clock, SandboxState, load_dataset, system_clock

__all__ = ["Simulator"]


class Simulator:
    def __init__(
        self,
        *,
        data: Path | None = None,
        limits: Limits | None = None,
        faults: object | None = None,
        log_size: int = DEFAULT_LOG_SIZE,
        clock: Clock = system_clock,
    ) -> None:
        self.state = SandboxState(load_dataset(data), clock=clock)
        self.credentials = CredentialStore()
        self._start_limits = parse_limits(limits or {})
        self._start_faults = FaultPlan.parse(faults if faults is not None else {}).settings
        self.limiter = RateLimiter(self._start_limits)
        self.faults = FaultPlan(self._start_faults)
        self.log = RequestLog(log_size)
        self.counters = Counters()
        # Set when the server stops, so requests held open by a "hang" fault end promptly.
        self.closing = asyncio.Event()

    def reset(self) -> None:
        self.state.reset()
        self.limiter.configure(self._start_limits)
        self.faults = FaultPlan(self._start_faults)
        self.log.clear()
        self.counters.clear()

    def set_faults(self, raw: object) -> None:
        """Replace the fault rules (``ValueError`` if invalid); counts and the seed restart."""
        self.faults = FaultPlan.parse(raw)

    def set_limits(self, raw: object) -> None:
        """Replace the limit overrides (``ValueError`` if invalid); throttle windows restart."""
        self.limiter.configure(parse_limits(raw))
