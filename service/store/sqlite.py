"""The command store in one SQLite file, through aiosqlite (the event loop never blocks).

Atomicity without explicit transactions: every operation is ONE autocommit statement
(``INSERT … ON CONFLICT … DO UPDATE … WHERE … RETURNING`` for a claim, ``UPDATE … RETURNING``
for the rest; SQLite >= 3.35). A write statement takes SQLite's write lock before it reads, so
the condition it checks and the change it makes cannot interleave with another connection's,
in this process or another one on the same file. That matters twice over: coroutines share the
one connection (a ``BEGIN … COMMIT`` spanning awaits would interleave with their statements),
and a second process may open the file to take over after a crash.

Durability: WAL with ``synchronous=NORMAL``, which survives a killed process but may lose the
last commits on a power loss or a host crash. Only one write must survive that: the IN_FLIGHT
mark before an API call (a lost one could let a money-moving call run twice), so
``mark_call_started`` alone runs with ``synchronous=FULL``, whose fsync of the WAL also makes
every earlier commit durable. A claim, finish or publish mark lost to a power loss means at
most that a command runs or is announced once more; reconciliation still sees the mark.
``busy_timeout`` makes writers from other processes wait for the lock instead of failing.

Times are stored as fixed-width UTC ISO-8601 text (``2026-05-09T07:35:25.000000+00:00``), so
text order is time order and the file stays readable with the ``sqlite3`` shell.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from handlers.ports import Claim, ClaimOutcome, CommandStatus, StoredCommand
from service.store.clock import UtcClock, as_utc, system_clock
from service.store.records import CLAIM_TRIES, lease_end, lost_claim

__all__ = ["BUSY_TIMEOUT_MS", "MEMORY", "SqliteCommandStore", "sqlite_path_from_url"]

BUSY_TIMEOUT_MS = 5_000
MEMORY = ":memory:"
_MIN_VERSION = (3, 35, 0)  # RETURNING

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS relay_commands (
        command_id      TEXT PRIMARY KEY NOT NULL,
        type            TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('received', 'in_flight', 'finished')),
        attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        call_started_at TEXT,
        note            BLOB,
        event           BLOB,
        published_at    TEXT,
        owner           TEXT,
        lease_until     TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        finished_at     TEXT,
        CHECK ((owner IS NULL) = (lease_until IS NULL)),
        CHECK ((status = 'finished') = (finished_at IS NOT NULL AND event IS NOT NULL))
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS relay_commands_finished_at
        ON relay_commands (finished_at) WHERE status = 'finished'
    """,
    """
    CREATE TABLE IF NOT EXISTS relay_effects (
        effect_id  TEXT PRIMARY KEY NOT NULL,
        command_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
)

# Claimable: not finished, and nobody holds a live lease. Not re-entrant on purpose: an owner
# is typically a replica (renew_leases heartbeats all its commands), and two deliveries of one
# command_id inside one replica must not both run.
_CLAIM = """
    INSERT INTO relay_commands (command_id, type, status, attempts, owner, lease_until,
                         created_at, updated_at)
    VALUES (:command_id, :type, 'received', 0, :owner, :lease_until, :now, :now)
    ON CONFLICT (command_id) DO UPDATE
        SET owner = excluded.owner,
            lease_until = excluded.lease_until,
            updated_at = excluded.updated_at
        WHERE relay_commands.status <> 'finished'
          AND (relay_commands.owner IS NULL OR relay_commands.lease_until <= excluded.updated_at)
    RETURNING command_id, type, status, attempts, call_started_at, note, event, published_at,
           lease_until, updated_at
"""

_GET = """
    SELECT command_id, type, status, attempts, call_started_at, note, event, published_at,
           lease_until, updated_at
    FROM relay_commands WHERE command_id = :command_id
"""

# An expired lease still recorded for this owner is revived: nobody took the command over.
_RENEW = """
    UPDATE relay_commands SET lease_until = :lease_until, updated_at = :now
    WHERE owner = :owner AND status <> 'finished'
      AND command_id IN (SELECT value FROM json_each(:command_ids))
"""

_MARK_CALL_STARTED = """
    UPDATE relay_commands
    SET status = 'in_flight', attempts = attempts + 1, call_started_at = :at, note = :note,
        updated_at = :now
    WHERE command_id = :command_id AND owner = :owner AND lease_until > :now
      AND status <> 'finished'
    RETURNING attempts
"""

_FINISH = """
    UPDATE relay_commands
    SET status = 'finished', event = :event,
        finished_at = :now, updated_at = :now
    WHERE command_id = :command_id AND status <> 'finished'
    RETURNING event
"""

_RELEASE = """
    UPDATE relay_commands SET owner = NULL, lease_until = NULL, updated_at = :now
    WHERE command_id = :command_id AND owner = :owner AND status <> 'finished'
"""

_MARK_PUBLISHED = """
    UPDATE relay_commands SET published_at = :now, owner = NULL, lease_until = NULL
    WHERE command_id = :command_id AND status = 'finished' AND published_at IS NULL
"""

_CLEAR_IN_FLIGHT = """
    UPDATE relay_commands SET status = 'received', note = NULL, updated_at = :now
    WHERE command_id = :command_id AND owner = :owner AND status = 'in_flight'
"""

_CLAIM_EFFECT = """
    INSERT INTO relay_effects (effect_id, command_id, created_at)
    VALUES (:effect_id, :command_id, :now) ON CONFLICT (effect_id) DO NOTHING
"""

_EFFECT_OWNERS = """
    SELECT effect_id, command_id FROM relay_effects
    WHERE effect_id IN (SELECT value FROM json_each(:effect_ids))
"""

_PRUNE_EFFECTS = "DELETE FROM relay_effects WHERE created_at < :bound"

_PRUNE = "DELETE FROM relay_commands WHERE status = 'finished' AND finished_at < :bound"


def sqlite_path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` → ``rel.db``; ``sqlite:////abs.db`` → ``/abs.db``;
    ``sqlite://:memory:`` (or ``sqlite:///:memory:``) → ``:memory:``; no scheme → the path."""
    if "://" not in url:
        if not url:
            raise ValueError("empty SQLite store path")
        return url
    rest = url.removeprefix("sqlite://")
    if rest == url:
        raise ValueError("not an sqlite:// URL")
    if rest == MEMORY:
        return MEMORY
    if not rest.startswith("/") or rest == "/":
        raise ValueError(
            "SQLite store URL must be sqlite:///relative.db, sqlite:////absolute.db "
            "or sqlite://:memory: (no host part)"
        )
    return rest[1:]


def _text(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _record(row: sqlite3.Row) -> StoredCommand:
    updated_at = _moment(row["updated_at"])
    assert updated_at is not None  # NOT NULL column
    return StoredCommand(
        command_id=row["command_id"],
        type=row["type"],
        status=CommandStatus(row["status"]),
        attempts=row["attempts"],
        call_started_at=_moment(row["call_started_at"]),
        note=row["note"],
        event=row["event"],
        published=row["published_at"] is not None,
        lease_until=_moment(row["lease_until"]),
        updated_at=updated_at,
    )


class SqliteCommandStore:
    """``CommandStore`` on one aiosqlite connection; ``async with`` opens and closes it."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: UtcClock | None = None,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self._durable = asyncio.Lock()
        self._path = str(path)
        self._clock = clock or system_clock
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None

    async def __aenter__(self) -> Self:
        if self._conn is not None:
            raise RuntimeError("store is already open")
        if sqlite3.sqlite_version_info < _MIN_VERSION:
            raise RuntimeError(f"SQLite >= 3.35 needed (RETURNING), have {sqlite3.sqlite_version}")
        conn = await aiosqlite.connect(
            self._path, isolation_level=None, timeout=self._busy_timeout_ms / 1000
        )
        try:
            await self._prepare(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _prepare(self, conn: aiosqlite.Connection) -> None:
        conn.row_factory = sqlite3.Row
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        for statement in _SCHEMA:
            await conn.execute(statement)

    async def claim(
        self, command_id: str, command_type: str, *, owner: str, lease: timedelta
    ) -> Claim:
        now = self._now()
        params = {
            "command_id": command_id,
            "type": command_type,
            "owner": owner,
            "lease_until": _text(lease_end(now, lease)),
            "now": _text(now),
        }
        for _ in range(CLAIM_TRIES):
            rows = await self._fetch(_CLAIM, params)
            if rows:
                return Claim(ClaimOutcome.CLAIMED, _record(rows[0]))
            current = await self.get(command_id)
            if current is not None:
                return lost_claim(current, now)
        raise RuntimeError(f"claim of {command_id!r} kept racing with prune")

    async def renew_leases(
        self, owner: str, command_ids: Collection[str], *, lease: timedelta
    ) -> None:
        if not command_ids:
            return
        now = self._now()
        params = {
            "owner": owner,
            "lease_until": _text(lease_end(now, lease)),
            "now": _text(now),
            "command_ids": json.dumps(list(command_ids)),
        }
        await self._write(_RENEW, params)

    async def mark_call_started(
        self, command_id: str, *, owner: str, at: datetime, note: bytes | None = None
    ) -> int:
        params = {
            "command_id": command_id,
            "owner": owner,
            "note": note,
            "at": _text(as_utc(at, "call start")),
            "now": _text(self._now()),
        }
        async with self._durable:  # no other statement may switch FULL off meanwhile
            await self._write("PRAGMA synchronous = FULL", {})
            try:
                rows = await self._fetch(_MARK_CALL_STARTED, params)
            finally:
                await self._write("PRAGMA synchronous = NORMAL", {})
        if not rows:
            raise LookupError(f"{owner!r} holds no live lease on command {command_id!r}")
        attempts: int = rows[0]["attempts"]
        return attempts

    async def finish(self, command_id: str, *, owner: str, event: bytes) -> bytes:
        # Any caller may finish an unfinished command, even one whose lease was lost (see
        # the package docstring): its event records a call that really happened.
        params = {"command_id": command_id, "event": event, "now": _text(self._now())}
        rows = await self._fetch(_FINISH, params)
        if rows:
            stored: bytes = rows[0]["event"]
            return stored
        current = await self.get(command_id)
        if current is None or current.event is None:
            raise LookupError(f"command {command_id!r} was never claimed")
        return current.event

    async def mark_published(self, command_id: str) -> None:
        await self._write(_MARK_PUBLISHED, {"command_id": command_id, "now": _text(self._now())})

    async def release(self, command_id: str, *, owner: str) -> None:
        params = {"command_id": command_id, "owner": owner, "now": _text(self._now())}
        await self._write(_RELEASE, params)

    async def get(self, command_id: str) -> StoredCommand | None:
        rows = await self._fetch(_GET, {"command_id": command_id})
        return _record(rows[0]) if rows else None

    async def prune(self, *, finished_before: datetime) -> int:
        bound = _text(as_utc(finished_before, "finished_before"))
        await self._write(_PRUNE_EFFECTS, {"bound": bound})
        return await self._write(_PRUNE, {"bound": bound})

    async def clear_in_flight(self, command_id: str, *, owner: str) -> None:
        params = {"command_id": command_id, "owner": owner, "now": _text(self._now())}
        await self._write(_CLEAR_IN_FLIGHT, params)

    async def claim_effects(self, command_id: str, effect_ids: Collection[str]) -> dict[str, str]:
        now = _text(self._now())
        for effect_id in effect_ids:  # each insert is atomic: the first command to claim wins
            params = {"effect_id": effect_id, "command_id": command_id, "now": now}
            await self._write(_CLAIM_EFFECT, params)
        return await self.effect_owners(effect_ids)

    async def effect_owners(self, effect_ids: Collection[str]) -> dict[str, str]:
        rows = await self._fetch(_EFFECT_OWNERS, {"effect_ids": json.dumps(list(effect_ids))})
        return {row["effect_id"]: row["command_id"] for row in rows}

    def _now(self) -> datetime:
        return as_utc(self._clock(), "the store clock's now")

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open: use 'async with'")
        return self._conn

    async def _fetch(self, sql: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        # execute + fetchall in one call on the worker thread: the statement runs to
        # completion, and so commits, before anything else uses the connection.
        rows: Iterable[sqlite3.Row] = await self._connection().execute_fetchall(sql, params)
        return list(rows)

    async def _write(self, sql: str, params: dict[str, Any]) -> int:
        async with self._connection().execute(sql, params) as cursor:
            return cursor.rowcount
