"""What an unreachable or failing command store raises, for both backends.

Callers that must tell "the store is down" from a bug catch ``STORE_ERRORS``: asyncpg's errors
(server, interface and internal client), the driver's and the OS's connection errors and
timeouts, and SQLite's. The store never answers a lost connection with anything else.

asyncpg's ``InternalClientError`` is among them because a connection the server terminates in
the middle of a statement (a fast shutdown, ``pg_terminate_backend``) can leave the driver's
protocol state behind, and the next statement on it -- or the pool's reset -- then raises
``InternalClientError: cannot switch to state N; another operation (2) is in progress``
(MagicStack/asyncpg#1069, #784) instead of an ``InterfaceError``. The pool drops that
connection, so it is an outage symptom, not a bug of ours.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg

from handlers.errors import StoreUnavailable

__all__ = ["STORE_ERRORS", "store_call"]

_T = TypeVar("_T")

STORE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection terminated mid-statement: see above
    OSError,  # ConnectionRefusedError, ConnectionResetError, ...
    TimeoutError,
    sqlite3.Error,
)


async def store_call(operation: Awaitable[_T]) -> _T:
    """Await a store operation; an unreachable store becomes ``StoreUnavailable``: the command
    waits (no attempt spent, no API call made) instead of crashing."""
    try:
        return await operation
    except STORE_ERRORS as exc:
        raise StoreUnavailable("RELAY.STORE_UNAVAILABLE", f"command store: {exc!r}") from exc
