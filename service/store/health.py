"""Whether the command store answers now, for ``/healthz`` (issue 10, item 5).

While the store is unreachable the service makes no API call (the journal, the leases and the
shared quota live there): every command that comes in waits in a delay queue and is tried
again every ``RELAY_STORE_RETRY_S``. Nothing is wrong with the process, so without this probe
``/healthz`` would keep answering 200 while no work gets done.

:class:`StoreHealth` pings the store every ``every_s`` (one ``SELECT 1`` with a timeout,
through the same pool the commands use, so a pool that cannot reconnect is seen too). The
first failed ping makes it report the store down, with the error; the first ping that
answers clears it. A ping never raises: it is a background loop of the runtime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from service.store.errors import STORE_ERRORS

__all__ = ["PING_EVERY_S", "PING_TIMEOUT_S", "StoreHealth"]

log = structlog.get_logger(__name__)

PING_EVERY_S = 1.0  # how often the store is pinged: an outage shows within about this long
PING_TIMEOUT_S = 2.0  # a ping not answered within this long counts as a failure
ERROR_CHARS = 200  # of the error's text in the problem reported (never a URL: see below)


class StoreHealth:
    """The store's reachability, from pings; ``problems()`` for ``/healthz``."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        *,
        every_s: float = PING_EVERY_S,
        timeout_s: float = PING_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._every_s = every_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._down_since: float | None = None
        self._error = ""

    @property
    def up(self) -> bool:
        return self._down_since is None

    def problems(self) -> list[str]:
        """Empty while the store answers; else why not, and since when."""
        if self._down_since is None:
            return []
        down_s = self._clock() - self._down_since
        return [
            f"command store unreachable for {down_s:.0f} s ({self._error}): no API call is "
            "made and commands wait in the delay queues until it answers again"
        ]

    async def check(self) -> bool:
        """Ping once; True if the store answered."""
        try:
            await asyncio.wait_for(self._ping(), self._timeout_s)
        except STORE_ERRORS as exc:  # TimeoutError included
            self._failed(exc)
            return False
        if self._down_since is not None:
            log.warning("store_reachable_again", down_s=round(self._clock() - self._down_since, 2))
            self._down_since = None
        return True

    async def watch(self) -> None:
        """Ping for ever, every ``every_s``."""
        while True:
            await self.check()
            await asyncio.sleep(self._every_s)

    def _failed(self, exc: BaseException) -> None:
        # asyncpg's and the OS's messages name the host and port at most, never the password
        self._error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
        if self._down_since is None:
            self._down_since = self._clock()
            log.error("store_unreachable", error=self._error)
