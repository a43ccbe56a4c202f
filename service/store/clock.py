"""The store's notion of now, and the one check every datetime crossing the store passes.

Leases are compared against the injected clock of the process that writes, never the
database's: tests control time without sleeping, and replicas sharing a PostgreSQL store must
keep their clocks synchronised (NTP) to well within a lease.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["UtcClock", "as_utc", "system_clock"]

UtcClock = Callable[[], datetime]
"""Returns a timezone-aware now; the store converts it to UTC."""


def system_clock() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime, what: str) -> datetime:
    """``moment`` converted to UTC; a naive datetime is a bug, refused rather than guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)
