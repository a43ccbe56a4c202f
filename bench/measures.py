"""Arithmetic on what a benchmark observed: rates, sliding windows, percentiles, shares.

Pure functions over timestamps (seconds) and counts, so the figures the table prints can be
checked by hand against ``--json``. No I/O here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["busiest_window", "in_window", "jain_index", "percentile", "shares"]


def in_window(times: Iterable[float], start: float, end: float) -> list[float]:
    """The timestamps in ``[start, end)``, sorted."""
    return sorted(t for t in times if start <= t < end)


def busiest_window(times: Iterable[float], width: float = 1.0) -> int:
    """The most timestamps in any half-open interval ``[t, t + width)``: the sliding-window
    count a gateway enforcing "N per ``width`` seconds" compares with N."""
    ordered = sorted(times)
    best = start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:  # exactly on a rank (also keeps inf, a probe that never came, as inf)
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def shares(keys: Iterable[str], among: Sequence[str]) -> dict[str, float]:
    """Each of ``among``'s fraction of the occurrences in ``keys`` that belong to ``among``."""
    counts = Counter(k for k in keys if k in among)
    total = sum(counts.values())
    return {k: (counts[k] / total if total else 0.0) for k in among}


def jain_index(values: Mapping[str, float] | Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when all are equal, 1/n when one takes everything."""
    xs = list(values.values()) if isinstance(values, Mapping) else list(values)
    squares = sum(x * x for x in xs)
    return (sum(xs) ** 2) / (len(xs) * squares) if squares else math.nan
