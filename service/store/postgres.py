"""The command store in PostgreSQL through an asyncpg pool, for several replicas.

Atomicity: every operation is ONE statement. A claim is ``INSERT … ON CONFLICT (command_id)
DO UPDATE … WHERE <claimable> RETURNING``: PostgreSQL guarantees an atomic insert-or-update
even under concurrency (a racing insert of the same new id waits, then takes the conflict path
and re-checks the condition against the committed row, which now has a live lease). When it
returns nothing, a plain read says whether the command is FINISHED or BUSY.

Isolation: ``schema`` (from ``?schema=NAME`` in the URL, see :func:`split_schema`) is created
if missing and becomes every pooled connection's ``search_path``, so the same SQL serves any
schema and tests get a throw-away one. Schema creation at open runs under a transaction-level
advisory lock, because concurrent ``CREATE … IF NOT EXISTS`` from replicas starting at once can
still collide on PostgreSQL's catalogs.

Times are ``timestamptz``; asyncpg returns them as UTC-aware datetimes.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from handlers.ports import Claim, ClaimOutcome, CommandStatus, StoredCommand
from service.store.clock import UtcClock, as_utc, system_clock
from service.store.records import CLAIM_TRIES, lease_end, lost_claim

__all__ = ["PostgresCommandStore", "split_schema"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DDL_LOCK_KEY = int.from_bytes(b"bssrelay", "big")

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS relay_commands (
        command_id      text PRIMARY KEY,
        type            text NOT NULL,
        status          text NOT NULL CHECK (status IN ('received', 'in_flight', 'finished')),
        attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        call_started_at timestamptz,
        note            bytea,
        event           bytea,
        published_at    timestamptz,
        owner           text,
        lease_until     timestamptz,
        created_at      timestamptz NOT NULL,
        updated_at      timestamptz NOT NULL,
        finished_at     timestamptz,
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
        effect_id  text PRIMARY KEY,
        command_id text NOT NULL,
        created_at timestamptz NOT NULL
    )
    """,
)

# Claimable: not finished, and nobody holds a live lease. Not re-entrant on purpose: an owner
# is typically a replica (renew_leases heartbeats all its commands), and two deliveries of one
# command_id inside one replica must not both run.
_CLAIM = """
    INSERT INTO relay_commands AS c (command_id, type, status, attempts, owner, lease_until,
                              created_at, updated_at)
    VALUES ($1, $2, 'received', 0, $3, $4, $5, $5)
    ON CONFLICT (command_id) DO UPDATE
        SET owner = EXCLUDED.owner,
            lease_until = EXCLUDED.lease_until,
            updated_at = EXCLUDED.updated_at
        WHERE c.status <> 'finished'
          AND (c.owner IS NULL OR c.lease_until <= EXCLUDED.updated_at)
    RETURNING command_id, type, status, attempts, call_started_at, note, event, published_at,
           lease_until, updated_at
"""

_GET = """
    SELECT command_id, type, status, attempts, call_started_at, note, event, published_at,
           lease_until, updated_at
    FROM relay_commands WHERE command_id = $1
"""

# An expired lease still recorded for this owner is revived: nobody took the command over.
_RENEW = """
    UPDATE relay_commands SET lease_until = $2, updated_at = $3
    WHERE owner = $1 AND status <> 'finished' AND command_id = ANY($4::text[])
"""

_MARK_CALL_STARTED = """
    UPDATE relay_commands
    SET status = 'in_flight', attempts = attempts + 1, call_started_at = $3, updated_at = $4,
        note = $5
    WHERE command_id = $1 AND owner = $2 AND lease_until > $4 AND status <> 'finished'
    RETURNING attempts
"""

_FINISH = """
    UPDATE relay_commands
    SET status = 'finished', event = $2,
        finished_at = $3, updated_at = $3
    WHERE command_id = $1 AND status <> 'finished'
    RETURNING event
"""

_RELEASE = """
    UPDATE relay_commands SET owner = NULL, lease_until = NULL, updated_at = $3
    WHERE command_id = $1 AND owner = $2 AND status <> 'finished'
"""

_MARK_PUBLISHED = """
    UPDATE relay_commands SET published_at = $2, owner = NULL, lease_until = NULL
    WHERE command_id = $1 AND status = 'finished' AND published_at IS NULL
"""

_CLEAR_IN_FLIGHT = """
    UPDATE relay_commands SET status = 'received', note = NULL, updated_at = $3
    WHERE command_id = $1 AND owner = $2 AND status = 'in_flight'
"""

_CLAIM_EFFECTS = """
    INSERT INTO relay_effects (effect_id, command_id, created_at)
    SELECT unnest($1::text[]), $2, $3 ON CONFLICT (effect_id) DO NOTHING
"""

_EFFECT_OWNERS = """
    SELECT effect_id, command_id FROM relay_effects WHERE effect_id = ANY($1::text[])
"""

_PRUNE_EFFECTS = "DELETE FROM relay_effects WHERE created_at < $1"

_PRUNE = "DELETE FROM relay_commands WHERE status = 'finished' AND finished_at < $1"


def split_schema(url: str) -> tuple[str, str | None]:
    """``postgresql://…?schema=NAME&…`` → (the URL without ``schema``, ``NAME``).

    asyncpg would send an unknown query parameter to the server as a setting, so ``schema`` is
    taken out here. NAME must be a lower-case identifier, so it needs no quoting anywhere.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [value for key, value in query if key == "schema"]
    if not names:
        return url, None
    if len(names) > 1 or not _SCHEMA_NAME.fullmatch(names[0]):
        raise ValueError("store URL: 'schema' must appear once, as a lower-case SQL identifier")
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), names[0]


def _record(row: Any) -> StoredCommand:
    return StoredCommand(
        command_id=str(row["command_id"]),
        type=str(row["type"]),
        status=CommandStatus(row["status"]),
        attempts=int(row["attempts"]),
        call_started_at=_utc(row["call_started_at"]),
        note=None if row["note"] is None else bytes(row["note"]),
        event=None if row["event"] is None else bytes(row["event"]),
        published=row["published_at"] is not None,
        lease_until=_utc(row["lease_until"]),
        updated_at=row["updated_at"].astimezone(UTC),
    )


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


class PostgresCommandStore:
    """``CommandStore`` on an asyncpg pool; ``async with`` creates the schema and the pool."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        clock: UtcClock | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError("schema must be a lower-case SQL identifier")
        self._dsn = dsn
        self._schema = schema
        self._clock = clock or system_clock
        self._pool_options = {"min_size": min_size, "max_size": max_size}
        self._connect_timeout = connect_timeout
        self._pool: Any = None

    async def __aenter__(self) -> Self:
        if self._pool is not None:
            raise RuntimeError("store is already open")
        settings = {"application_name": "bss-relay"}
        if self._schema is not None:
            settings["search_path"] = self._schema
        pool = await asyncpg.create_pool(
            self._dsn,
            server_settings=settings,
            timeout=self._connect_timeout,
            **self._pool_options,
        )
        try:
            await self._create_schema(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- for the shared rate-limit buckets and renewal locks (service.store.buckets, .locks) --

    @property
    def pool(self) -> Any:
        """The open asyncpg pool (every connection's ``search_path`` is the store's schema)."""
        return self._open_pool()

    @property
    def schema(self) -> str | None:
        return self._schema

    async def connect(self) -> Any:
        """A new dedicated connection (not pooled) to the same database and schema; the caller
        closes it. For session state such as advisory locks, which pooled connections drop."""
        settings = {"application_name": "bss-relay"}
        if self._schema is not None:
            settings["search_path"] = self._schema
        return await asyncpg.connect(
            self._dsn, server_settings=settings, timeout=self._connect_timeout
        )

    async def _create_schema(self, pool: Any) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK_KEY)
            if self._schema is not None:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
            for statement in _DDL:
                await conn.execute(statement)

    async def claim(
        self, command_id: str, command_type: str, *, owner: str, lease: timedelta
    ) -> Claim:
        now = self._now()
        until = lease_end(now, lease)
        for _ in range(CLAIM_TRIES):
            row = await self._open_pool().fetchrow(
                _CLAIM, command_id, command_type, owner, until, now
            )
            if row is not None:
                return Claim(ClaimOutcome.CLAIMED, _record(row))
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
        until = lease_end(now, lease)
        await self._open_pool().execute(_RENEW, owner, until, now, list(command_ids))

    async def mark_call_started(
        self, command_id: str, *, owner: str, at: datetime, note: bytes | None = None
    ) -> int:
        at = as_utc(at, "call start")
        pool = self._open_pool()
        attempts = await pool.fetchval(_MARK_CALL_STARTED, command_id, owner, at, self._now(), note)
        if attempts is None:
            raise LookupError(f"{owner!r} holds no live lease on command {command_id!r}")
        return int(attempts)

    async def finish(self, command_id: str, *, owner: str, event: bytes) -> bytes:
        # Any caller may finish an unfinished command, even one whose lease was lost (see
        # the package docstring): its event records a call that really happened.
        stored = await self._open_pool().fetchval(_FINISH, command_id, event, self._now())
        if stored is not None:
            return bytes(stored)
        current = await self.get(command_id)
        if current is None or current.event is None:
            raise LookupError(f"command {command_id!r} was never claimed")
        return current.event

    async def mark_published(self, command_id: str) -> None:
        await self._open_pool().execute(_MARK_PUBLISHED, command_id, self._now())

    async def release(self, command_id: str, *, owner: str) -> None:
        await self._open_pool().execute(_RELEASE, command_id, owner, self._now())

    async def get(self, command_id: str) -> StoredCommand | None:
        row = await self._open_pool().fetchrow(_GET, command_id)
        return None if row is None else _record(row)

    async def clear_in_flight(self, command_id: str, *, owner: str) -> None:
        await self._open_pool().execute(_CLEAR_IN_FLIGHT, command_id, owner, self._now())

    async def claim_effects(self, command_id: str, effect_ids: Collection[str]) -> dict[str, str]:
        # one statement: every effect not yet owned by anyone becomes this command's
        await self._open_pool().execute(_CLAIM_EFFECTS, list(effect_ids), command_id, self._now())
        return await self.effect_owners(effect_ids)

    async def effect_owners(self, effect_ids: Collection[str]) -> dict[str, str]:
        rows = await self._open_pool().fetch(_EFFECT_OWNERS, list(effect_ids))
        return {row["effect_id"]: row["command_id"] for row in rows}

    async def prune(self, *, finished_before: datetime) -> int:
        bound = as_utc(finished_before, "finished_before")
        await self._open_pool().execute(_PRUNE_EFFECTS, bound)
        status: str = await self._open_pool().execute(_PRUNE, bound)
        return int(status.rsplit(" ", 1)[-1])  # "DELETE <count>"

    def _now(self) -> datetime:
        return as_utc(self._clock(), "the store clock's now")

    def _open_pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open: use 'async with'")
        return self._pool
