"""``bss-relay serve`` with a memory report on a signal: a debugging aid, not a scenario.

``python -m bench.traced DIR [--tracemalloc] serve``: runs the service's command line; on
SIGUSR1 it writes ``DIR/report-<n>.txt``: the collector's counters and statistics, the objects
it tracks by type and, with ``--tracemalloc``, the lines that hold the most memory. SIGUSR2
runs a full collection first and reports what it freed. ``bss-relay bench`` starts the service
this way when ``BSS_RELAY_BENCH_TRACE_DIR`` is set (the ``soak`` scenario signals it after
warm-up and at the end).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import signal
import sys
import tracemalloc
import types
from collections import Counter
from pathlib import Path

from service.cli import main as relay_main

__all__ = ["main"]

TOP = 40


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _malloc() -> str:
    """glibc's view: bytes from the system (arena, hblkhd: mmapped), in use, free."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return "malloc n/a"
    kib = {field[0]: getattr(info, field[0]) // 1024 for field in _MallInfo2._fields_}
    return "malloc_kib " + " ".join(f"{k}={v}" for k, v in kib.items())


def _trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _report(out: Path, n: int, *, collect: bool) -> None:
    lines = [f"rss_kib {_rss_kib()}", _malloc(), f"gc.get_count {gc.get_count()}"]
    lines += [f"gc.get_stats gen{g} {s}" for g, s in enumerate(gc.get_stats())]
    lines.append(f"gc.get_freeze_count {gc.get_freeze_count()}")
    if collect:
        freed = gc.collect()
        lines.append(f"gc.collect() freed {freed} objects; rss_kib now {_rss_kib()}")
        _trim()
        lines.append(f"after malloc_trim(0): rss_kib {_rss_kib()} {_malloc()}")
    kinds = Counter(
        f"{type(o).__module__}.{type(o).__qualname__}"
        for o in gc.get_objects()
        if not isinstance(o, types.FunctionType)
    )
    lines.append(f"tracked objects {sum(kinds.values())}")
    lines += [f"  {count:8d}  {name}" for name, count in kinds.most_common(TOP)]
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        lines.append(f"traced {tracemalloc.get_traced_memory()}")
        for stat in snapshot.statistics("lineno")[:TOP]:
            lines.append(f"  {stat.size / 1024:9.1f} KiB {stat.count:7d}  {stat.traceback}")
    (out / f"report-{n}.txt").write_text("\n".join(lines) + "\n")


def main() -> int:
    out = Path(sys.argv[1])
    args = sys.argv[2:]
    if args[:1] == ["--tracemalloc"]:
        tracemalloc.start(1)
        args = args[1:]
    out.mkdir(parents=True, exist_ok=True)
    reports = [0]

    def on_signal(signum: int, _frame: object) -> None:
        reports[0] += 1
        _report(out, reports[0], collect=signum == signal.SIGUSR2)

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    return relay_main(args)


if __name__ == "__main__":
    sys.exit(main())
