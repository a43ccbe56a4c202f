"""Every verb of ``bss-relay`` answers ``--help``; serve refuses a bad configuration clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

VERBS = ["serve", "sandbox", "demo", "replay", "bench", "asyncapi", "audit", "console"]


def bss_relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_top_level_help_lists_every_verb() -> None:
    result = bss_relay("--help")
    assert result.returncode == 0
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb: str) -> None:
    result = bss_relay(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: bss-relay {verb}")


def test_serve_reports_an_invalid_configuration() -> None:
    env = {**os.environ, "BSS_PARTNER_ID": "p-only", "RELAY_PREFETCH": "0"}
    env.pop("BSS_ACCESS_KEY", None)
    result = bss_relay("serve", env=env)
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr


def test_tune_gc_raises_the_thresholds_and_freezes_what_start_up_made() -> None:
    # In a child: the collector's settings are process-wide.
    code = (
        "import gc; from service.lifecycle import GC_THRESHOLDS, tune_gc; "
        "assert gc.get_freeze_count() == 0; tune_gc(); "
        "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold(); "
        "assert gc.get_threshold()[0] > 700; "
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_serve_gives_the_c_heaps_free_memory_back_periodically() -> None:
    """Issue 17: freed memory left in holes of glibc's heap was RSS growth in the soak bench.
    In a child: a heap full of holes (a long-lived block between freed ones) shrinks once
    ``give_back_free_memory`` has run."""
    code = """
import asyncio, ctypes, pathlib
from service.lifecycle import give_back_free_memory

def rss():
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def main():
    ctypes.CDLL(None).mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: glibc never trims on its own
    kept, churn = [], [bytearray(3000) for _ in range(20000)]
    kept += [bytearray(3000) for _ in range(0, 20000, 50)]
    del churn
    before = rss()
    task = asyncio.create_task(give_back_free_memory(every_s=0.05))
    await asyncio.sleep(0.2)
    task.cancel()
    after = rss()
    assert before - after > 20_000, (before, after)

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


_MMAPPED_AFTER_A_LARGE_FREE = """
import ctypes, sys
from service.lifecycle import tune_malloc

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    assert tune_malloc()
libc.free(libc.malloc(1 << 20))  # a 1 MiB buffer freed: glibc raises its threshold past it
before = libc.mallinfo2().hblks
block = libc.malloc(200 * 1024)  # the next frame-sized buffer: its own pages, or the heap's?
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.parametrize(("mode", "mmapped"), [("tuned", 1), ("default", 0)])
def test_serve_pins_the_mmap_threshold_so_large_buffers_leave_no_holes(
    mode: str, mmapped: int
) -> None:
    """Issue 17: glibc raises its mmap threshold as large blocks are freed, and then carves
    each command's frames and buffers out of the heap, between longer-lived blocks. With
    ``tune_malloc`` (serve calls it first) a buffer above 128 KiB keeps pages of its own
    after a larger one was freed; without it, it lands in the heap."""
    result = subprocess.run(
        [sys.executable, "-c", _MMAPPED_AFTER_A_LARGE_FREE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == mmapped
