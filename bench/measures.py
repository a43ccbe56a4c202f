"""Arithmetic on what a benchmark observed: rates, sliding windows, percentiles, shares.

Pure functions over timestamps (seconds) and counts, so the figures the table prints can be
checked by hand against ``--json``. No I/O here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "busiest_window",
    "estimate_errors",
    "in_window",
    "jain_index",
    "match_starts",
    "per_second",
    "percentile",
    "recovery_after",
    "shares",
    "worst_window_ratio",
]


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


def worst_window_ratio(times: Iterable[float], limit_at: Callable[[float], float]) -> float:
    """The highest (requests in the 1-s window ending at a request) / (the limit in force at
    that request): above 1 means some 1-s window held more than the limit of its moment."""
    ordered = sorted(times)
    worst = 0.0
    start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= 1.0:
            start += 1
        worst = max(worst, (end - start + 1) / limit_at(moment))
    return worst


def recovery_after(times: Iterable[float], after: float, rate: float, span: float = 5.0) -> float:
    """Seconds from ``after`` to the first request from which ``span`` seconds hold at least
    ``rate x span`` requests (the rate is back); inf when that never happens."""
    ordered = sorted(t for t in times if t >= after)
    need = math.floor(rate * span + 1e-9)
    for n, moment in enumerate(ordered):
        if n + need - 1 < len(ordered) and ordered[n + need - 1] < moment + span:
            return moment - after
    return math.inf


def match_starts(
    requests: Iterable[tuple[str, float]], finishes: Iterable[tuple[str, str, float]]
) -> dict[str, float]:
    """Which accepted request carried each command, when the log cannot name the command:
    ``requests`` are (key, at) of accepted API requests, ``finishes`` (command_id, key,
    finished_at) from the commands' terminal events. Taken in order of finishing, each command
    gets the latest request of its key, not yet taken, sent at or before it finished. Returns
    command_id -> request time (commands without one are left out)."""
    free: dict[str, list[float]] = {}
    for key, at in requests:
        free.setdefault(key, []).append(at)
    for times in free.values():
        times.sort()
    started: dict[str, float] = {}
    for command_id, key, finished in sorted(finishes, key=lambda f: f[2]):
        times = free.get(key, [])
        candidates = [n for n, at in enumerate(times) if at <= finished]
        if candidates:
            started[command_id] = times.pop(candidates[-1])
    return started


def estimate_errors(
    deferred: Mapping[str, tuple[float, float]], started: Mapping[str, float]
) -> list[tuple[float, bool]]:
    """For each deferred command that started: (error, within) where error is actual start
    minus ``expected_start_at`` (seconds; positive = later than foreseen) and within says
    whether it is inside max(20 % of the wait, 2 s); the wait runs from the ``deferred``
    event to the actual start. ``deferred`` maps command_id -> (event time, expected start)."""
    out = []
    for command_id, (said_at, expected) in deferred.items():
        actual = started.get(command_id)
        if actual is None:
            continue
        error = actual - expected
        out.append((error, abs(error) <= max(0.2 * (actual - said_at), 2.0)))
    return out


def per_second(times: Sequence[float]) -> list[int]:
    """Counts per whole second from the first timestamp (sorted input): the run's shape."""
    if not times:
        return []
    counts = [0] * (int(times[-1] - times[0]) + 1)
    for t in times:
        counts[int(t - times[0])] += 1
    return counts
