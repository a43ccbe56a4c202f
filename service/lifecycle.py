"""Process lifecycle helpers shared by every long-running verb (serve, sandbox, bench).

Kept apart from ``service.cli`` so that the sandbox and the benchmark harness can use them
without importing the command line (which imports them back to register their verbs).
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["GC_THRESHOLDS", "run_until_signalled", "tune_gc"]

# Per command the service allocates many short-lived objects (futures, dicts, models),
# nearly all freed by reference counting. With the default gen-0 threshold (700 net
# allocations) a burst of commands in flight starts a collection every few commands: about 8%
# of the CPU in `bss-relay bench --scenario overhead`. Raised, and with everything alive at
# start-up (modules, settings, connections) frozen out of every later collection.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Call once, after start-up, in a long-running process of ours."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_until_signalled(
    body: Callable[[asyncio.Event], Coroutine[Any, Any, int | None]],
    *,
    on_hangup: Callable[[], None] | None = None,
) -> int:
    """Run ``body(stop)``; SIGTERM and SIGINT set ``stop`` so the body drains and returns.

    ``on_hangup``: called on the event loop at each SIGHUP (reload configuration, say); it must
    not block, so it starts a task for anything slow. Without it SIGHUP keeps its default."""

    async def runner() -> int | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if on_hangup is not None:
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        return await body(stop)

    return asyncio.run(runner()) or 0
