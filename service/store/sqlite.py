"""The command store in one SQLite file, on a thread of its own (the event loop never blocks).

Every operation is a function run by :class:`~service.store.sqlite_writer.SqliteWriter` on the
thread that owns the connection. Operations queued while the thread is busy run together in
one transaction with one commit (group commit): under load, one thread hand-off and one WAL
append for many commands instead of one per statement. Each operation keeps the meaning it
would have alone: it runs whole, in queue order, and its caller hears of it only once its
batch committed. Conditions are still checked and changed in one statement
(``INSERT … ON CONFLICT … DO UPDATE … WHERE … RETURNING`` for a claim, ``UPDATE … RETURNING``
for the rest; SQLite >= 3.35), and every batch takes the file's write lock first
(``BEGIN IMMEDIATE``), so a second process on the same file, taking over after a crash, never
interleaves with a batch.

Durability: WAL with ``synchronous=NORMAL``, which survives a killed process but may lose the
last commits on a power loss or a host crash. Only one write must survive that: the IN_FLIGHT
mark before an API call (a lost one could let a money-moving call run twice), so a batch that
holds a ``mark_call_started`` commits with ``synchronous=FULL``, whose fsync of the WAL also
makes every earlier commit durable. A claim, finish or publish mark lost to a power loss means
at most that a command runs or is announced once more; reconciliation still sees the mark.
``busy_timeout`` makes writers from other processes wait for the lock instead of failing.

Times are stored as fixed-width UTC ISO-8601 text (``2026-05-09T07:35:25.000000+00:00``), so
text order is time order and the file stays readable with the ``sqlite3`` shell.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from service.store.clock import UtcClock, as_utc, system_clock
from service.store.ledger import (
    LedgerState,
    LedgerUpdate,
    cap_exceeded,
    cents,
    face_value,
    ledger_update,
    renewed,
)
from service.store.records import lease_end, lost_claim
from service.store.runner import SqliteRunner
from service.store.sqlite_writer import SqliteWriter
from service.store.steering import SteeringStore
from service.store.types import (
    CapExceeded,
    Claim,
    ClaimOutcome,
    CommandStatus,
    CouponCaps,
    StoredCommand,
)
from service.store.versions import STORE, upgrade_sqlite

__all__ = ["BUSY_TIMEOUT_MS", "MEMORY", "SqliteCommandStore", "sqlite_path_from_url"]

BUSY_TIMEOUT_MS = 5_000
MEMORY = ":memory:"
_MIN_VERSION = (3, 35, 0)  # RETURNING

_COLUMNS = """command_id, type, status, attempts, call_started_at, note, event, published_at,
           lease_until, owner, updated_at, fingerprint, requested_by, partner_id, customer_id, body,
           created_at, finished_at"""

# Claimable: not finished, and nobody holds a live lease. Not re-entrant on purpose: an owner
# is typically a replica (renew_leases heartbeats all its commands), and two deliveries of one
# command_id inside one replica must not both run.
_CLAIM = f"""
    INSERT INTO relay_commands (command_id, type, status, attempts, owner, lease_until,
                         created_at, updated_at, fingerprint, requested_by, partner_id,
                         customer_id, body)
    VALUES (:command_id, :type, 'received', 0, :owner, :lease_until, :now, :now,
            :fingerprint, :requested_by, :partner_id, :customer_id, :body)
    ON CONFLICT (command_id) DO UPDATE
        SET owner = excluded.owner,
            lease_until = excluded.lease_until,
            updated_at = excluded.updated_at
        WHERE relay_commands.status <> 'finished'
          AND (relay_commands.owner IS NULL OR relay_commands.lease_until <= excluded.updated_at)
    RETURNING {_COLUMNS}
"""  # noqa: S608 - a constant column list, no input

_GET = f"""
    SELECT {_COLUMNS}
    FROM relay_commands WHERE command_id = :command_id
"""  # noqa: S608 - a constant column list

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
    RETURNING 1
"""

_RELEASE = """
    UPDATE relay_commands SET owner = NULL, lease_until = NULL, updated_at = :now
    WHERE command_id = :command_id AND owner = :owner
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

_PRUNE_LEDGERS = (
    "DELETE FROM relay_renewals WHERE renewed_at < :bound",
    "DELETE FROM relay_coupon_spend WHERE at < :bound",
)

_LIST = f"""
    SELECT {_COLUMNS} FROM relay_commands
    WHERE type IN (SELECT value FROM json_each(:types))
      AND (:since IS NULL OR created_at >= :since) AND (:until IS NULL OR created_at < :until)
      AND (json_array_length(:partners) = 0
           OR partner_id IN (SELECT value FROM json_each(:partners)))
      AND (json_array_length(:users) = 0
           OR requested_by IN (SELECT value FROM json_each(:users)))
    ORDER BY created_at, command_id
    LIMIT :limit
"""  # noqa: S608 - a constant column list

_RECORD_RENEWAL = """
    INSERT INTO relay_renewals (resource_id, command_id, customer_id, done, renewed_at)
    VALUES (:resource_id, :command_id, :customer_id, 1, :now)
    ON CONFLICT (resource_id, command_id) DO UPDATE
        SET done = 1, renewed_at = excluded.renewed_at
"""

_RESERVE_RENEWAL = """
    INSERT INTO relay_renewals (resource_id, command_id, customer_id, done, renewed_at)
    VALUES (:resource_id, :command_id, :customer_id, 0, :now) ON CONFLICT DO NOTHING
"""

_RELEASE_RENEWALS = "DELETE FROM relay_renewals WHERE command_id = :command_id AND done = 0"

_RECENT_RENEWALS = """
    SELECT resource_id, command_id FROM relay_renewals
    WHERE resource_id IN (SELECT value FROM json_each(:resource_ids))
      AND command_id <> :excluding AND renewed_at > :bound AND (done = 1 OR :pending)
    ORDER BY renewed_at
"""

_COMMIT_COUPONS = """
    UPDATE relay_coupon_spend SET committed = 1, at = :now
    WHERE command_id = :command_id AND committed = 0
      AND customer_id IN (SELECT value FROM json_each(:issued))
"""

# Issued without a reservation (no caps in force then): recorded all the same, so caps that
# come into force later count the day's spend.
_RECORD_COUPON = """
    INSERT INTO relay_coupon_spend (command_id, customer_id, partner_id, cents, committed, at)
    VALUES (:command_id, :customer_id, :partner_id, :cents, 1, :now) ON CONFLICT DO NOTHING
"""

_RELEASE_COUPONS = """
    DELETE FROM relay_coupon_spend
    WHERE command_id = :command_id AND committed = 0
      AND customer_id NOT IN (SELECT value FROM json_each(:issued))
"""

_OWN_RESERVATION = """
    SELECT count(*) AS live FROM relay_coupon_spend WHERE command_id = :command_id AND at > :bound
"""

_PARTNER_SPENT = """
    SELECT coalesce(sum(cents), 0) AS cents FROM relay_coupon_spend
    WHERE partner_id = :partner_id AND at > :bound
"""

_CUSTOMERS_SPENT = """
    SELECT customer_id, sum(cents) AS cents FROM relay_coupon_spend
    WHERE customer_id IN (SELECT value FROM json_each(:customer_ids)) AND at > :bound
    GROUP BY customer_id
"""

_RESERVE = """
    INSERT INTO relay_coupon_spend (command_id, customer_id, partner_id, cents, committed, at)
    VALUES (:command_id, :customer_id, :partner_id, :cents, 0, :now)
"""


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
        owner=row["owner"],
        updated_at=updated_at,
        fingerprint=row["fingerprint"],
        requested_by=row["requested_by"],
        partner_id=row["partner_id"],
        customer_id=row["customer_id"],
        body=row["body"],
        created_at=_moment(row["created_at"]),
        finished_at=_moment(row["finished_at"]),
    )


class SqliteCommandStore:
    """``CommandStore`` on one SQLite connection owned by a writer thread; ``async with`` opens
    and closes it."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: UtcClock | None = None,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self._path = str(path)
        self._clock = clock or system_clock
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = SqliteWriter(self._connect)
        self.steering = SteeringStore(SqliteRunner(self._writer, self._now))

    async def __aenter__(self) -> Self:
        if self._writer.is_open:
            raise RuntimeError("store is already open")
        if sqlite3.sqlite_version_info < _MIN_VERSION:
            raise RuntimeError(f"SQLite >= 3.35 needed (RETURNING), have {sqlite3.sqlite_version}")
        await self._writer.open(self._prepare)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._writer.close()

    def _connect(self) -> sqlite3.Connection:
        # Called on the writer thread, the only one that ever uses the connection.
        # Autocommit (isolation_level=None): the writer issues BEGIN and COMMIT itself.
        return sqlite3.connect(
            self._path, isolation_level=None, timeout=self._busy_timeout_ms / 1000
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        upgrade_sqlite(conn, (STORE,))  # see service.store.versions

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
        params = {
            "command_id": command_id,
            "type": command_type,
            "owner": owner,
            "lease_until": _text(lease_end(now, lease)),
            "now": _text(now),
            "fingerprint": fingerprint,
            "requested_by": requested_by,
            "partner_id": partner_id,
            "customer_id": customer_id,
            "body": body,
        }

        def claim(conn: sqlite3.Connection) -> Claim:
            row = conn.execute(_CLAIM, params).fetchone()
            if row is not None:
                return Claim(ClaimOutcome.CLAIMED, _record(row))
            # The insert met the row, and the batch's write lock keeps any prune out until
            # the read below: the row is there to say why the claim was lost.
            current = _get(conn, command_id)
            if current is None:  # pragma: no cover - impossible inside one transaction
                raise RuntimeError(f"claim of {command_id!r} lost to a row that is gone")
            return lost_claim(current, now)

        return await self._writer.run(claim)

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

        def mark(conn: sqlite3.Connection) -> int:
            row = conn.execute(_MARK_CALL_STARTED, params).fetchone()
            if row is None:
                raise LookupError(f"{owner!r} holds no live lease on command {command_id!r}")
            attempts: int = row["attempts"]
            return attempts

        return await self._writer.run(mark, durable=True)  # fsync'd before the call is made

    async def finish(self, command_id: str, *, owner: str, event: bytes) -> bytes:
        # Any caller may finish an unfinished command, even one whose lease was lost (see
        # the package docstring): its event records a call that really happened.
        now = _text(self._now())
        params = {"command_id": command_id, "event": event, "now": now}
        update = ledger_update(event)

        def finish(conn: sqlite3.Connection) -> bytes:
            if conn.execute(_FINISH, params).fetchone() is not None:
                if update is not None:  # same transaction: the ledgers follow the event
                    _update_ledgers(conn, command_id, update, now)
                return event  # ours is the event stored
            current = _get(conn, command_id)
            if current is None or current.event is None:
                raise LookupError(f"command {command_id!r} was never claimed")
            return current.event

        return await self._writer.run(finish)

    async def mark_published(self, command_id: str) -> None:
        await self._write(_MARK_PUBLISHED, {"command_id": command_id, "now": _text(self._now())})

    async def release(self, command_id: str, *, owner: str) -> None:
        params = {"command_id": command_id, "owner": owner, "now": _text(self._now())}
        await self._write(_RELEASE, params)

    async def get(self, command_id: str) -> StoredCommand | None:
        return await self._writer.run(lambda conn: _get(conn, command_id))

    async def prune(self, *, finished_before: datetime) -> int:
        bound = {"bound": _text(as_utc(finished_before, "finished_before"))}

        def prune(conn: sqlite3.Connection) -> int:
            conn.execute(_PRUNE_EFFECTS, bound)
            for statement in _PRUNE_LEDGERS:
                conn.execute(statement, bound)
            return conn.execute(_PRUNE, bound).rowcount

        return await self._writer.run(prune)

    async def clear_in_flight(self, command_id: str, *, owner: str) -> None:
        params = {"command_id": command_id, "owner": owner, "now": _text(self._now())}
        await self._write(_CLEAR_IN_FLIGHT, params)

    async def claim_effects(self, command_id: str, effect_ids: Collection[str]) -> dict[str, str]:
        now = _text(self._now())
        rows = [{"effect_id": e, "command_id": command_id, "now": now} for e in effect_ids]
        ids = {"effect_ids": json.dumps(list(effect_ids))}

        def claim_effects(conn: sqlite3.Connection) -> dict[str, str]:
            # Each insert is atomic: the first command to claim an effect owns it.
            conn.executemany(_CLAIM_EFFECT, rows)
            return _effect_owners(conn, ids)

        return await self._writer.run(claim_effects)

    async def effect_owners(self, effect_ids: Collection[str]) -> dict[str, str]:
        ids = {"effect_ids": json.dumps(list(effect_ids))}
        return await self._writer.run(lambda conn: _effect_owners(conn, ids))

    async def recent_renewals(
        self, resource_ids: Collection[str], *, within: timedelta, excluding: str
    ) -> dict[str, str]:
        params = {
            "resource_ids": json.dumps(list(resource_ids)),
            "excluding": excluding,
            "bound": _text(self._now() - within),
            "pending": False,
        }

        def recent(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute(_RECENT_RENEWALS, params)
            return {row["resource_id"]: row["command_id"] for row in rows}

        return await self._writer.run(recent)

    async def reserve_renewals(
        self,
        command_id: str,
        *,
        customer_id: str,
        resource_ids: Collection[str],
        within: timedelta,
    ) -> dict[str, str]:
        now = self._now()
        params = {
            "resource_ids": json.dumps(list(resource_ids)),
            "excluding": command_id,
            "bound": _text(now - within),
            "pending": True,
        }
        rows = [
            {
                "resource_id": r,
                "command_id": command_id,
                "customer_id": customer_id,
                "now": _text(now),
            }
            for r in resource_ids
        ]

        # One operation under the batch's write lock: check and reserve are atomic.
        def reserve(conn: sqlite3.Connection) -> dict[str, str]:
            taken = {
                r["resource_id"]: r["command_id"] for r in conn.execute(_RECENT_RENEWALS, params)
            }
            if not taken:
                conn.executemany(_RESERVE_RENEWAL, rows)
            return taken

        return await self._writer.run(reserve)

    async def release_renewals(self, command_id: str) -> None:
        await self._write(_RELEASE_RENEWALS, {"command_id": command_id})

    async def reserve_coupons(
        self,
        command_id: str,
        *,
        partner_id: str,
        customer_ids: Sequence[str],
        face_value: Decimal,
        caps: CouponCaps,
    ) -> CapExceeded | None:
        now = self._now()
        asked = cents(face_value)
        params = {
            "command_id": command_id,
            "partner_id": partner_id,
            "customer_ids": json.dumps(list(customer_ids)),
            "bound": _text(now - caps.window),
            "now": _text(now),
        }

        # One operation: the batch's write lock (BEGIN IMMEDIATE) makes the check and the
        # reservation atomic against every other writer of the file.
        def reserve(conn: sqlite3.Connection) -> CapExceeded | None:
            if conn.execute(_OWN_RESERVATION, params).fetchone()["live"]:
                return None  # ours already: a retry or a take-over re-uses it
            conn.execute(
                "DELETE FROM relay_coupon_spend WHERE command_id = :command_id", params
            )  # leftovers that aged out of the window
            partner_used = conn.execute(_PARTNER_SPENT, params).fetchone()["cents"]
            used = {
                row["customer_id"]: row["cents"] for row in conn.execute(_CUSTOMERS_SPENT, params)
            }
            exceeded = cap_exceeded(caps, partner_id, partner_used, used, customer_ids, asked)
            if exceeded is None:
                conn.executemany(
                    _RESERVE, [{**params, "customer_id": c, "cents": asked} for c in customer_ids]
                )
            return exceeded

        return await self._writer.run(reserve)

    async def release_coupons(self, command_id: str) -> None:
        await self._write(_RELEASE_COUPONS, {"command_id": command_id, "issued": "[]"})

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
        params = {
            "types": json.dumps(list(types)),
            "since": None if since is None else _text(as_utc(since, "since")),
            "until": None if until is None else _text(as_utc(until, "until")),
            "partners": json.dumps(list(partner_ids)),
            "users": json.dumps(list(requested_by)),
            "limit": -1 if limit is None else limit,
        }

        def listing(conn: sqlite3.Connection) -> list[StoredCommand]:
            return [_record(row) for row in conn.execute(_LIST, params)]

        return await self._writer.run(listing)

    def _now(self) -> datetime:
        return as_utc(self._clock(), "the store clock's now")

    async def _write(self, sql: str, params: dict[str, Any]) -> int:
        return await self._writer.run(lambda conn: conn.execute(sql, params).rowcount)


def _update_ledgers(
    conn: sqlite3.Connection, command_id: str, update: LedgerUpdate, now: str
) -> None:
    key = {"command_id": command_id}
    if update.renewals is LedgerState.COMMIT:
        row = conn.execute("SELECT body FROM relay_commands WHERE command_id = :command_id", key)
        customer, resources = renewed(row.fetchone()["body"], update.renewal_failed)
        conn.executemany(
            _RECORD_RENEWAL,
            [{**key, "resource_id": r, "customer_id": customer, "now": now} for r in resources],
        )
    if update.renewals in (LedgerState.COMMIT, LedgerState.RELEASE):
        conn.execute(_RELEASE_RENEWALS, key)  # reserved, not renewed: the failed ones
    if update.coupons is LedgerState.COMMIT:
        params = {**key, "issued": json.dumps(update.issued), "now": now}
        conn.execute(_COMMIT_COUPONS, params)
        conn.execute(_RELEASE_COUPONS, params)
        row = conn.execute(
            "SELECT body, partner_id FROM relay_commands WHERE command_id = :command_id", key
        ).fetchone()
        face = face_value(row["body"])
        if face is not None and row["partner_id"] is not None:
            conn.executemany(
                _RECORD_COUPON,
                [
                    {**params, "customer_id": c, "partner_id": row["partner_id"], "cents": face}
                    for c in update.issued
                ],
            )
    elif update.coupons is LedgerState.RELEASE:
        conn.execute(_RELEASE_COUPONS, {**key, "issued": "[]"})


def _get(conn: sqlite3.Connection, command_id: str) -> StoredCommand | None:
    row = conn.execute(_GET, {"command_id": command_id}).fetchone()
    return None if row is None else _record(row)


def _effect_owners(conn: sqlite3.Connection, ids: dict[str, str]) -> dict[str, str]:
    return {row["effect_id"]: row["command_id"] for row in conn.execute(_EFFECT_OWNERS, ids)}
