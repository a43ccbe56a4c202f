"""Process lifecycle helpers shared by every long-running verb (serve, sandbox, bench).

Kept apart from ``service.cli`` so that the sandbox and the benchmark harness can use them
without importing the command line (which imports them back to register their verbs).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import signal
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = [
    "GC_THRESHOLDS",
    "TRIM_EVERY_S",
    "give_back_free_memory",
    "run_until_signalled",
    "tune_gc",
    "tune_malloc",
]

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


# How often a long-running process of ours hands the C heap's free pages back to the system.
TRIM_EVERY_S = 30.0


# glibc's mallopt parameters: blocks of at least MMAP_THRESHOLD bytes get pages of their own,
# given back when freed. glibc raises the threshold by itself up to 32 MiB as large blocks are
# freed, after which the frames and buffers of each command are carved out of the heap between
# longer-lived blocks and leave it full of holes; pinned, it stays put. ARENA_MAX: the
# threads (the thread pool, SQLite's writer) share two heaps rather than one each. Measured
# side by side (`bss-relay bench --scenario soak`, PostgreSQL): RSS growth after warm-up
# +11.2 MiB without, +6.6 with (slope 2.82 and 1.70 MiB per 10,000 commands); 64 KiB and a
# trim every 10 s did no better (+6.7).
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2


def tune_malloc() -> bool:
    """Pin glibc's mmap threshold and cap its arenas (see above): call once, first thing in a
    long-running process of ours. False where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_ARENA_MAX, ARENA_MAX)
    )


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None where the C library has none (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


async def give_back_free_memory(every_s: float = TRIM_EVERY_S) -> None:
    """Hand the C heap's free pages back to the system every ``every_s`` (until cancelled).

    glibc returns freed memory to the system only from the top of its heap. Per command the
    service's buffers above pymalloc's 512-byte objects (HTTP and AMQP frames, database
    protocol buffers, JSON text) come and go by the thousand; a few longer-lived blocks placed
    between them leave the freed memory in holes, kept as the process's own. Measured in
    ``bss-relay bench --scenario soak`` on PostgreSQL: the heap's memory in use stayed at 16 MB
    over 50,000 commands while its free part grew from 13 to 30 MB, and RSS with it (+23 MB);
    one ``malloc_trim(0)`` gave 29 MB back. Nothing of a command stays alive: this only
    returns what is already free (a few milliseconds for a 50 MB heap)."""
    trim = _malloc_trim()
    if trim is None:
        return
    while True:
        await asyncio.sleep(every_s)
        trim(0)


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
