"""The record of traffic: a bounded request log and counters, both read by tests and benchmarks.

The log is a ring buffer (``collections.deque`` with ``maxlen``): appending is O(1) and the oldest
entries fall off once it is full. Entries are appended when a request finishes (so a request held
by a latency or hang fault shows up late), and ``at`` is when it *arrived* (epoch seconds); reads
sort by ``at``, so "oldest first" means by arrival.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Any

__all__ = ["DEFAULT_LOG_SIZE", "Counters", "RequestLog"]

DEFAULT_LOG_SIZE = 10_000

Entry = dict[str, Any]


class RequestLog:
    def __init__(self, size: int = DEFAULT_LOG_SIZE) -> None:
        if size < 1:
            raise ValueError("the request log needs room for at least one entry")
        self._entries: deque[Entry] = deque(maxlen=size)

    @property
    def size(self) -> int:
        return self._entries.maxlen or 0

    def append(self, entry: Entry) -> None:
        self._entries.append(entry)

    def since(self, moment: float | None = None) -> list[Entry]:
        """Entries with ``at`` strictly after ``moment`` (all when None), by arrival.

        A full pass over the buffer: completion order is not arrival order, so there is no
        early exit; the buffer is bounded and this is an inspection route, not an API path.
        """
        chosen = [e for e in self._entries if moment is None or e["at"] > moment]
        chosen.sort(key=lambda entry: entry["at"])
        return chosen

    def clear(self) -> None:
        self._entries.clear()


class Counters:
    """Totals since start or the last reset.

    ``accepted``: passed the signature check and the throttle (reached the simulated BSS/IAM);
    ``throttled``: answered 429; ``rejected_signature``: answered 401; ``not_found``: no such API;
    ``faults``: injected faults by kind; ``by_status``: answers by HTTP status ("dropped" when the
    connection was cut instead); ``per_api``: the same outcomes per operation name.
    """

    OUTCOMES = ("accepted", "throttled", "rejected_signature")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.totals: Counter[str] = Counter({name: 0 for name in (*self.OUTCOMES, "not_found")})
        self.faults: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.per_api: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def outcome(self, api: str | None, name: str) -> None:
        self.totals[name] += 1
        if api is not None:
            self.per_api[api][name] += 1

    def answered(self, api: str | None, status: int | None) -> None:
        key = str(status) if status is not None else "dropped"
        self.by_status[key] += 1
        if api is not None:
            self.per_api[api][key] += 1

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.totals,
            "faults": dict(self.faults),
            "by_status": dict(self.by_status),
            "per_api": {api: dict(counts) for api, counts in sorted(self.per_api.items())},
        }
