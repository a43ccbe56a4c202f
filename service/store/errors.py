"""What an unreachable or failing command store raises, for both backends.

Callers that must tell "the store is down" from a bug catch ``STORE_ERRORS``: asyncpg's errors
(server and interface), the driver's and the OS's connection errors and timeouts, and
SQLite's. The store never answers a lost connection with anything else.
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
