"""Where the time went: the top functions of py-spy raw profiles, cumulative and self.

``python -m bench.profile FILE...`` reads py-spy's raw (collapsed) output, one stack a line
(``outer;...;inner COUNT``), such as ``bench overhead`` writes with ``BSS_RELAY_BENCH_PYSPY``
set, and prints a Markdown table: each function's share of all samples with it anywhere on
the stack (cumulative: counted once per stack) and at the top (self). Line numbers are
dropped, so a function is one row however many lines of it were sampled.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

__all__ = ["main", "top"]

_LINE = re.compile(r":\d+\)$")
_SITE = re.compile(r"\(.*/site-packages/")


def _frame(text: str) -> str:
    """``name (path:line)`` without the line, and libraries' paths from their package on."""
    return _SITE.sub("(", _LINE.sub(")", text.strip()))


def top(lines: Iterable[str]) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, samples per function anywhere on the stack, and at its top."""
    total, cumulative, own = 0, Counter[str](), Counter[str]()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        for frame in set(frames):
            cumulative[frame] += n
        own[frames[-1]] += n
    return total, cumulative, own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="py-spy raw outputs")
    parser.add_argument("--top", type=int, default=30, help="rows (30)")
    parser.add_argument("--self", action="store_true", help="order by self, not cumulative")
    args = parser.parse_args(argv)
    lines = (line for f in args.files for line in f.read_text().splitlines())
    total, cumulative, own = top(lines)
    order = own if args.self else cumulative
    print(f"{total:,} samples in {len(args.files)} files\n")
    print("| function | cumulative | self |")
    print("|---|--:|--:|")
    for frame, _ in order.most_common(args.top):
        cells = (frame, f"{cumulative[frame] / total:.1%}", f"{own[frame] / total:.1%}")
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
