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

Times are ``timestamptz``; asyncpg returns them as UTC-aware datetimes. Without an injected
clock, now is the server's ``statement_timestamp()``, taken in the statement that checks or sets
the lease (no extra round trip): one instant for the whole statement, so ``lease_until`` is
exactly ``updated_at`` plus the lease, and unlike ``now()`` it moves on between statements of a
transaction. Each statement takes it as ``coalesce($n::timestamptz, statement_timestamp())``:
``$n`` is the injected clock's now, or NULL. The guardrail windows read ``clock_timestamp()``
after taking their lock, whatever the clock.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from service.store.clock import UtcClock, as_utc
from service.store.ledger import LedgerState, cap_exceeded, cents, ledger_update
from service.store.records import CLAIM_TRIES, lost_claim, positive
from service.store.runner import PostgresRunner, Row, Statement
from service.store.steering import SteeringStore
from service.store.types import (
    CapExceeded,
    Claim,
    ClaimOutcome,
    CommandStatus,
    CouponCaps,
    StoredCommand,
)
from service.store.versions import STORE, Component, upgrade_postgres

__all__ = ["PostgresCommandStore", "split_schema"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DDL_LOCK_KEY = int.from_bytes(b"bssrelay", "big")

_COLUMNS = """command_id, type, status, attempts, call_started_at, note, event, published_at,
           lease_until, owner, updated_at, fingerprint, requested_by, partner_id, customer_id, body,
           created_at, finished_at"""

# Claimable: not finished, and nobody holds a live lease. Not re-entrant on purpose: an owner
# is typically a replica (renew_leases heartbeats all its commands), and two deliveries of one
# command_id inside one replica must not both run.
_CLAIM = f"""
    INSERT INTO relay_commands AS c (command_id, type, status, attempts, owner, lease_until,
                              created_at, updated_at, fingerprint, requested_by, partner_id,
                              customer_id, body)
    SELECT $1::text, $2::text, 'received', 0, $3::text, t.now + $4::interval, t.now, t.now,
           $6::text, $7::text, $8::text, $9::text, $10::bytea
    FROM (SELECT coalesce($5::timestamptz, statement_timestamp()) AS now) AS t
    ON CONFLICT (command_id) DO UPDATE
        SET owner = EXCLUDED.owner,
            lease_until = EXCLUDED.lease_until,
            updated_at = EXCLUDED.updated_at
        WHERE c.status <> 'finished'
          AND (c.owner IS NULL OR c.lease_until <= EXCLUDED.updated_at)
    RETURNING {_COLUMNS}
"""  # noqa: S608 - a constant column list, no input

_GET = f"""
    SELECT {_COLUMNS}
    FROM relay_commands WHERE command_id = $1
"""  # noqa: S608 - a constant column list

# A lost claim's read, with the now its lease is compared with (lost_claim).
_GET_AT = f"""
    SELECT {_COLUMNS}, coalesce($2::timestamptz, statement_timestamp()) AS now
    FROM relay_commands WHERE command_id = $1
"""  # noqa: S608 - a constant column list

# An expired lease still recorded for this owner is revived: nobody took the command over.
_RENEW = """
    UPDATE relay_commands SET lease_until = t.now + $2::interval, updated_at = t.now
    FROM (SELECT coalesce($3::timestamptz, statement_timestamp()) AS now) AS t
    WHERE owner = $1 AND status <> 'finished' AND command_id = ANY($4::text[])
"""

_MARK_CALL_STARTED = """
    UPDATE relay_commands
    SET status = 'in_flight', attempts = attempts + 1, call_started_at = $3, updated_at = t.now,
        note = $5
    FROM (SELECT coalesce($4::timestamptz, statement_timestamp()) AS now) AS t
    WHERE command_id = $1 AND owner = $2 AND lease_until > t.now AND status <> 'finished'
    RETURNING attempts
"""

_FINISH = """
    UPDATE relay_commands
    SET status = 'finished', event = $2,
        finished_at = t.now, updated_at = t.now
    FROM (SELECT coalesce($3::timestamptz, statement_timestamp()) AS now) AS t
    WHERE command_id = $1 AND status <> 'finished'
    RETURNING event
"""

_RELEASE = """
    UPDATE relay_commands SET owner = NULL, lease_until = NULL,
        updated_at = coalesce($3::timestamptz, statement_timestamp())
    WHERE command_id = $1 AND owner = $2
"""

_MARK_PUBLISHED = """
    UPDATE relay_commands
    SET published_at = coalesce($2::timestamptz, statement_timestamp()), owner = NULL,
        lease_until = NULL
    WHERE command_id = $1 AND status = 'finished' AND published_at IS NULL
"""

_CLEAR_IN_FLIGHT = """
    UPDATE relay_commands
    SET status = 'received', note = NULL,
        updated_at = coalesce($3::timestamptz, statement_timestamp())
    WHERE command_id = $1 AND owner = $2 AND status = 'in_flight'
"""

_CLAIM_EFFECTS = """
    INSERT INTO relay_effects (effect_id, command_id, created_at)
    SELECT unnest($1::text[]), $2, coalesce($3::timestamptz, statement_timestamp())
    ON CONFLICT (effect_id) DO NOTHING
"""

_EFFECT_OWNERS = """
    SELECT effect_id, command_id FROM relay_effects WHERE effect_id = ANY($1::text[])
"""

_PRUNE_EFFECTS = "DELETE FROM relay_effects WHERE created_at < $1"

_PRUNE = "DELETE FROM relay_commands WHERE status = 'finished' AND finished_at < $1"

_PRUNE_LEDGERS = (
    "DELETE FROM relay_renewals WHERE renewed_at < $1",
    "DELETE FROM relay_coupon_spend WHERE at < $1",
)

# finish for a money-moving command: the event and the ledgers in one statement. $4: renewal
# ledger state ('commit': record the body's resource_ids except $5; 'release'; '' to keep); $6:
# coupon ledger state (same words); $7: customers issued (recorded as spend even when nothing
# was reserved: caps that come into force later count it). Times are the database server's.
_FINISH_WITH_LEDGERS = """
    WITH f AS (
        UPDATE relay_commands
        SET status = 'finished', event = $2, finished_at = t.now, updated_at = t.now
        FROM (SELECT coalesce($3::timestamptz, statement_timestamp()) AS now) AS t
        WHERE command_id = $1 AND status <> 'finished'
        RETURNING event, partner_id, convert_from(body, 'UTF8')::jsonb AS command
    ), renewed AS (
        INSERT INTO relay_renewals (resource_id, command_id, customer_id, done, renewed_at)
        SELECT r.value, $1, f.command #>> '{payload,customer_id}', true, clock_timestamp()
        FROM f, jsonb_array_elements_text(f.command #> '{payload,resource_ids}') AS r(value)
        WHERE $4 = 'commit' AND NOT (r.value = ANY($5::text[]))
        ON CONFLICT (resource_id, command_id) DO UPDATE
            SET done = true, renewed_at = EXCLUDED.renewed_at
    ), unrenewed AS (
        DELETE FROM relay_renewals AS r USING f
        WHERE r.command_id = $1 AND NOT r.done
          AND ($4 = 'release' OR ($4 = 'commit' AND r.resource_id = ANY($5::text[])))
    ), committed AS (
        UPDATE relay_coupon_spend AS s SET committed = true, at = clock_timestamp()
        FROM f
        WHERE s.command_id = $1 AND NOT s.committed AND $6 = 'commit'
          AND s.customer_id = ANY($7::text[])
    ), unreserved AS (
        INSERT INTO relay_coupon_spend (command_id, customer_id, partner_id, cents, committed, at)
        SELECT $1, c.customer_id, f.partner_id,
               round((f.command #>> '{payload,face_value}')::numeric * 100)::bigint, true,
               clock_timestamp()
        FROM f, unnest($7::text[]) AS c(customer_id)
        WHERE $6 = 'commit' AND f.partner_id IS NOT NULL
          AND f.command #>> '{payload,face_value}' IS NOT NULL
        ON CONFLICT (command_id, customer_id) DO NOTHING
    ), released AS (
        DELETE FROM relay_coupon_spend AS s USING f
        WHERE s.command_id = $1 AND NOT s.committed AND $6 IN ('commit', 'release')
          AND NOT (s.customer_id = ANY($7::text[]))
    )
    SELECT event FROM f
"""

_RECENT_RENEWALS = """
    SELECT resource_id, command_id FROM relay_renewals
    WHERE resource_id = ANY($1::text[]) AND command_id <> $2
      AND renewed_at > clock_timestamp() - $3::interval AND (done OR $4)
    ORDER BY renewed_at
"""

# Renewals of one customer are serialised by this lock while a reservation checks and inserts.
_LOCK_CUSTOMER = "SELECT pg_advisory_xact_lock(hashtextextended('bss-relay:renew:' || $1, 0))"

_RESERVE_RENEWALS = """
    INSERT INTO relay_renewals (resource_id, command_id, customer_id, done, renewed_at)
    SELECT unnest($1::text[]), $2, $3, false, clock_timestamp() ON CONFLICT DO NOTHING
"""

_RELEASE_RENEWALS = "DELETE FROM relay_renewals WHERE command_id = $1 AND NOT done"

_LIST = f"""
    SELECT {_COLUMNS} FROM relay_commands
    WHERE type = ANY($1::text[])
      AND ($2::timestamptz IS NULL OR created_at >= $2)
      AND ($3::timestamptz IS NULL OR created_at < $3)
      AND (cardinality($4::text[]) = 0 OR partner_id = ANY($4::text[]))
      AND (cardinality($5::text[]) = 0 OR requested_by = ANY($5::text[]))
    ORDER BY created_at, command_id
    LIMIT $6
"""  # noqa: S608 - a constant column list

_RELEASE_COUPONS = "DELETE FROM relay_coupon_spend WHERE command_id = $1 AND NOT committed"

# Reservations of one partner are serialised by this transaction-level lock (customers belong
# to one partner, so their caps are covered too); the check reads after taking it, so under
# READ COMMITTED it sees every reservation committed before.
_LOCK_PARTNER = "SELECT pg_advisory_xact_lock(hashtextextended('bss-relay:coupons:' || $1, 0))"

_OWN_RESERVATION = """
    SELECT count(*) FROM relay_coupon_spend WHERE command_id = $1 AND at > $2
"""

_PARTNER_SPENT = """
    SELECT coalesce(sum(cents), 0) FROM relay_coupon_spend WHERE partner_id = $1 AND at > $2
"""

_CUSTOMERS_SPENT = """
    SELECT customer_id, sum(cents) AS cents FROM relay_coupon_spend
    WHERE customer_id = ANY($1::text[]) AND at > $2 GROUP BY customer_id
"""

_RESERVE = """
    INSERT INTO relay_coupon_spend (command_id, customer_id, partner_id, cents, committed, at)
    SELECT $1, unnest($2::text[]), $3, $4, false, $5
"""


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
        owner=row["owner"],
        updated_at=row["updated_at"].astimezone(UTC),
        fingerprint=row["fingerprint"],
        requested_by=row["requested_by"],
        partner_id=row["partner_id"],
        customer_id=row["customer_id"],
        body=None if row["body"] is None else bytes(row["body"]),
        created_at=_utc(row["created_at"]),
        finished_at=_utc(row["finished_at"]),
    )


def _word(state: LedgerState | None) -> str:
    """A ledger state as the finish statement reads it ('' = leave the ledger alone)."""
    return "" if state in (None, LedgerState.KEEP) else str(state)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


class _Closed:
    """The steering tables' runner before the pool is open."""

    async def run(self, statements: Sequence[Statement]) -> None:
        raise RuntimeError("store is not open: use 'async with'")

    async def fetch(self, sql: str, params: Any = None) -> list[Row]:
        raise RuntimeError("store is not open: use 'async with'")


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
        components: Sequence[Component] = (),
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError("schema must be a lower-case SQL identifier")
        self._dsn = dsn
        self._schema = schema
        self._clock = clock  # None: the database server's clock decides (see the docstring)
        self._pool_options = {"min_size": min_size, "max_size": max_size}
        self._connect_timeout = connect_timeout
        self._components = (STORE, *components)
        self._pool: Any = None
        self.steering = SteeringStore(_Closed())

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
        self.steering = SteeringStore(PostgresRunner(pool))
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

    # -- for the shared rate-limit buckets and renewal locks (service.pacing.shared, .locks) --

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

    async def ping(self) -> None:
        """One ``SELECT 1`` through the pool (a lost connection is replaced on the way):
        raises as any other statement does if the server cannot be reached. The caller
        bounds the wait (``service.store.health``)."""
        await self._open_pool().fetchval("SELECT 1")

    async def _create_schema(self, pool: Any) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK_KEY)
            if self._schema is not None:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
            await upgrade_postgres(conn, self._components)

    async def claim(
        self,
        command_id: str,
        command_type: str,
        *,
        owner: str,
        lease: timedelta,
        fingerprint: str | None = None,
        requested_by: str | None = None,
        partner_id: str | None = None,
        customer_id: str | None = None,
        body: bytes | None = None,
    ) -> Claim:
        now = self._now()
        details = (fingerprint, requested_by, partner_id, customer_id, body)
        for _ in range(CLAIM_TRIES):
            row = await self._open_pool().fetchrow(
                _CLAIM, command_id, command_type, owner, positive(lease), now, *details
            )
            if row is not None:
                return Claim(ClaimOutcome.CLAIMED, _record(row))
            row = await self._open_pool().fetchrow(_GET_AT, command_id, now)
            if row is not None:
                return lost_claim(_record(row), row["now"].astimezone(UTC))
        raise RuntimeError(f"claim of {command_id!r} kept racing with prune")

    async def renew_leases(
        self, owner: str, command_ids: Collection[str], *, lease: timedelta
    ) -> None:
        if not command_ids:
            return
        await self._open_pool().execute(
            _RENEW, owner, positive(lease), self._now(), list(command_ids)
        )

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
        update = ledger_update(event)
        if update is None:
            stored = await self._open_pool().fetchval(_FINISH, command_id, event, self._now())
        else:
            stored = await self._open_pool().fetchval(
                _FINISH_WITH_LEDGERS,
                command_id,
                event,
                self._now(),
                _word(update.renewals),
                sorted(update.renewal_failed),
                _word(update.coupons),
                list(update.issued),
            )
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
        for statement in _PRUNE_LEDGERS:
            await self._open_pool().execute(statement, bound)
        status: str = await self._open_pool().execute(_PRUNE, bound)
        return int(status.rsplit(" ", 1)[-1])  # "DELETE <count>"

    async def recent_renewals(
        self, resource_ids: Collection[str], *, within: timedelta, excluding: str
    ) -> dict[str, str]:
        rows = await self._open_pool().fetch(
            _RECENT_RENEWALS, list(resource_ids), excluding, within, False
        )
        return {row["resource_id"]: row["command_id"] for row in rows}

    async def reserve_renewals(
        self,
        command_id: str,
        *,
        customer_id: str,
        resource_ids: Collection[str],
        within: timedelta,
    ) -> dict[str, str]:
        resources = list(resource_ids)
        async with self._open_pool().acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_CUSTOMER, customer_id)
            # after the lock: under READ COMMITTED this sees every reservation made before
            rows = await conn.fetch(_RECENT_RENEWALS, resources, command_id, within, True)
            if rows:
                return {row["resource_id"]: row["command_id"] for row in rows}
            await conn.execute(_RESERVE_RENEWALS, resources, command_id, customer_id)
            return {}

    async def release_renewals(self, command_id: str) -> None:
        await self._open_pool().execute(_RELEASE_RENEWALS, command_id)

    async def reserve_coupons(
        self,
        command_id: str,
        *,
        partner_id: str,
        customer_ids: Sequence[str],
        face_value: Decimal,
        caps: CouponCaps,
    ) -> CapExceeded | None:
        asked = cents(face_value)
        async with self._open_pool().acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_PARTNER, partner_id)
            now = await conn.fetchval("SELECT clock_timestamp()")  # the server's, after the lock
            bound = now - caps.window
            if await conn.fetchval(_OWN_RESERVATION, command_id, bound):
                return None  # ours already: a retry or a take-over re-uses it
            await conn.execute("DELETE FROM relay_coupon_spend WHERE command_id = $1", command_id)
            partner_used = int(await conn.fetchval(_PARTNER_SPENT, partner_id, bound))
            rows = await conn.fetch(_CUSTOMERS_SPENT, list(customer_ids), bound)
            used = {row["customer_id"]: int(row["cents"]) for row in rows}
            exceeded = cap_exceeded(caps, partner_id, partner_used, used, customer_ids, asked)
            if exceeded is None:
                await conn.execute(_RESERVE, command_id, list(customer_ids), partner_id, asked, now)
            return exceeded

    async def release_coupons(self, command_id: str) -> None:
        await self._open_pool().execute(_RELEASE_COUPONS, command_id)

    async def list_commands(
        self,
        *,
        types: Collection[str],
        since: datetime | None = None,
        until: datetime | None = None,
        partner_ids: Collection[str] = (),
        requested_by: Collection[str] = (),
        limit: int | None = None,
    ) -> list[StoredCommand]:
        rows = await self._open_pool().fetch(
            _LIST,
            list(types),
            None if since is None else as_utc(since, "since"),
            None if until is None else as_utc(until, "until"),
            list(partner_ids),
            list(requested_by),
            limit,
        )
        return [_record(row) for row in rows]

    def _now(self) -> datetime | None:
        """The injected clock's now; None (the database server's clock) without one."""
        return None if self._clock is None else as_utc(self._clock(), "the store clock's now")

    def _open_pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open: use 'async with'")
        return self._pool
