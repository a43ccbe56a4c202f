"""The store's notion of now, and the one check every datetime crossing the store passes.

Whose clock decides leases and windows:

* PostgreSQL (replicas share it, and compare each other's leases): the database server's,
  read in the very statement that checks or sets a lease, so one clock decides and a replica
  whose own clock drifts neither steals a live lease nor keeps one too long. A clock injected
  into the store (tests: time moves without sleeping) replaces it for leases and command times;
  the guardrail windows always use the server's.
* SQLite (one host): the injected clock, by default :func:`system_clock`.
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
