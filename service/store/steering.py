"""The deployment's steering state in the store: what operators set, and what replicas publish.

Tables (``schema.STEERING_TABLES``, schema versions 2 and 3), one meaning each:

``relay_limits``   live limits (``quota set``): per operation for every key (kind ``all``, key
                   ''), one customer, or one egress. Every replica polls them about once a
                   second and obeys the most specific one (customer/egress, then all, then the
                   configured table).
``relay_pauses``   paused customers (``pause``), for one operation or all (api '').
``relay_audit``    operators' actions, each with its actor: replay, quota_set, quota_reset,
                   pause, resume. A limit or pause and its audit entry are written in one
                   transaction: no change without its entry.
``relay_replicas`` every serving replica and when it last published (about once a second).
``relay_waiting``  the commands each replica knows to wait -- for a bucket (held in memory or
                   parked on the broker), paused, or delayed for a retry -- with the bucket and
                   the expected start. Published as changes once a second, never per command;
                   a row not renewed by its ``until`` is stale (its replica died).
``relay_bucket_reports``  per replica and bucket used in the last 5 minutes: the limit in
                   force, the rate pacing uses now, the 429s seen in the last 5 minutes.
``relay_lines``    parking lines: one broker queue per (operation, customer, priority) holding
                   parked commands, with running counts of what was parked into and pulled out
                   of it (their difference: how many wait in it), and of the pulled ones
                   settled (pulled, not settled: held in some replica's memory).
``relay_dead_letters``  the last dead-lettering of each command id, for ``why``.

Every statement is written once (``service.store.runner``) and runs on both backends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from service.store.runner import Row, Runner, Statement

__all__ = [
    "AuditRecord",
    "BucketReport",
    "LineDelta",
    "Publication",
    "SteeringStore",
    "WaitingEntry",
]

LimitKind = Literal["all", "customer", "egress"]
WaitState = Literal["waiting", "paused", "delayed"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    action: str
    actor: str
    command_id: str | None = None
    customer_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WaitingEntry:
    command_id: str
    state: WaitState
    api: str | None
    kind: str | None  # 'customer' | 'egress': the bucket it waits for
    key: str | None
    priority: str | None
    since: datetime
    expected_at: datetime | None  # expected start (a delayed command's retry)
    until: datetime  # stale after this unless published again
    customer: str | None = None  # the ParentUid its call is for (a delayed one's: unknown)
    queued_at: datetime | None = None  # parked: when it went into its line (None: held)


@dataclass(frozen=True, slots=True)
class BucketReport:
    api: str
    kind: str
    key: str
    limit: float | None
    rate: float | None
    throttled_5m: int
    used_at: datetime


@dataclass(frozen=True, slots=True)
class LineDelta:
    api: str
    customer: str
    priority: str
    queue: str
    parked: int  # parked into the line since the last publication
    pulled: int  # pulled out of it since then
    next_deadline: datetime | None  # the soonest deadline parked since then
    settled: int = 0  # of the pulled ones, settled since then


@dataclass(frozen=True, slots=True)
class Publication:
    """What one replica tells the deployment about itself, about once a second."""

    owner: str
    egress: str
    started_at: datetime
    renew_until: datetime  # its waiting rows stay fresh until then
    waiting: Sequence[WaitingEntry] = ()  # new or changed since the last publication
    gone: Sequence[str] = ()  # command ids no longer waiting here
    reports: Sequence[BucketReport] = ()
    lines: Sequence[LineDelta] = ()


_SET_LIMIT = """
    INSERT INTO relay_limits (api, kind, key, rate, set_by, set_at)
    VALUES (:api, :kind, :key, :rate, :actor, :now)
    ON CONFLICT (api, kind, key) DO UPDATE
        SET rate = excluded.rate, set_by = excluded.set_by, set_at = excluded.set_at
"""
_RESET_LIMIT = "DELETE FROM relay_limits WHERE api = :api AND kind = :kind AND key = :key"
_PAUSE = """
    INSERT INTO relay_pauses (customer, api, set_by, set_at) VALUES (:customer, :api, :actor, :now)
    ON CONFLICT (customer, api) DO UPDATE SET set_by = excluded.set_by, set_at = excluded.set_at
"""
_RESUME = "DELETE FROM relay_pauses WHERE customer = :customer AND api = :api"
_AUDIT = """
    INSERT INTO relay_audit (audit_id, at, actor, action, command_id, customer_id, detail)
    VALUES (:audit_id, :now, :actor, :action, :command_id, :customer_id, :detail)
"""
_HEARTBEAT = """
    INSERT INTO relay_replicas (owner, egress, started_at, seen_at)
    VALUES (:owner, :egress, :started_at, :now)
    ON CONFLICT (owner) DO UPDATE SET egress = excluded.egress, seen_at = excluded.seen_at
"""
_WAITING = """
    INSERT INTO relay_waiting (command_id, owner, state, api, kind, key, priority, since,
                               expected_at, until, customer, queued_at)
    VALUES (:command_id, :owner, :state, :api, :kind, :key, :priority, :since, :expected_at,
            :until, :customer, :queued_at)
    ON CONFLICT (command_id) DO UPDATE
        SET owner = excluded.owner, state = excluded.state, api = excluded.api,
            kind = excluded.kind, key = excluded.key, priority = excluded.priority,
            since = excluded.since, expected_at = excluded.expected_at, until = excluded.until,
            customer = excluded.customer, queued_at = excluded.queued_at
"""
_GONE = "DELETE FROM relay_waiting WHERE command_id = :command_id AND owner = :owner"
# A parked command's row outlives its replica until its expected start; the rest are renewed.
_RENEW_WAITING = """
    UPDATE relay_waiting SET until = :until WHERE owner = :owner AND until < :until
"""
_REPORT = """
    INSERT INTO relay_bucket_reports (owner, api, kind, key, limit_rate, rate, throttled_5m,
                                      used_at)
    VALUES (:owner, :api, :kind, :key, :limit, :rate, :throttled_5m, :used_at)
    ON CONFLICT (owner, api, kind, key) DO UPDATE
        SET limit_rate = excluded.limit_rate, rate = excluded.rate,
            throttled_5m = excluded.throttled_5m, used_at = excluded.used_at
"""
_LINE = """
    INSERT INTO relay_lines (api, customer, priority, queue, parked, pulled, next_deadline,
                             updated_at, settled)
    VALUES (:api, :customer, :priority, :queue, :parked, :pulled, :next_deadline, :now,
            :settled)
    ON CONFLICT (api, customer, priority) DO UPDATE
        SET queue = excluded.queue,
            parked = relay_lines.parked + excluded.parked,
            pulled = relay_lines.pulled + excluded.pulled,
            settled = COALESCE(relay_lines.settled, relay_lines.pulled) + excluded.settled,
            next_deadline = CASE
                WHEN excluded.next_deadline IS NULL THEN relay_lines.next_deadline
                WHEN relay_lines.next_deadline IS NULL THEN excluded.next_deadline
                WHEN excluded.next_deadline < relay_lines.next_deadline
                    THEN excluded.next_deadline
                ELSE relay_lines.next_deadline END,
            updated_at = excluded.updated_at
"""
_RETIRE = (
    "DELETE FROM relay_replicas WHERE owner = :owner",
    "DELETE FROM relay_bucket_reports WHERE owner = :owner",
    "DELETE FROM relay_waiting WHERE owner = :owner AND state <> 'paused' AND until <= :now",
)
_DEAD_LETTER = """
    INSERT INTO relay_dead_letters (command_id, type, customer_id, reason, message,
                                    dead_lettered_at)
    VALUES (:command_id, :type, :customer_id, :reason, :message, :now)
    ON CONFLICT (command_id) DO UPDATE
        SET type = excluded.type, customer_id = excluded.customer_id, reason = excluded.reason,
            message = excluded.message, dead_lettered_at = excluded.dead_lettered_at
"""


# a waiting row's priority as a rank: high goes first
_RANK = "CASE {t}.priority WHEN 'high' THEN 0 WHEN 'low' THEN 2 ELSE 1 END"

NO_LIMIT = 2**62  # LIMIT without a limit, written alike for both backends
# CAST: PostgreSQL must know a parameter's type where it is only compared with NULL
_AUDIT_READ = """
    SELECT at, actor, action, command_id, customer_id, detail FROM relay_audit
    WHERE (CAST(:command_id AS TEXT) IS NULL OR command_id = :command_id)
      AND (CAST(:customer_id AS TEXT) IS NULL OR customer_id = :customer_id)
      AND (CAST(:since AS TIMESTAMPTZ) IS NULL OR at >= :since)
      AND (CAST(:until AS TIMESTAMPTZ) IS NULL OR at < :until)
    ORDER BY at DESC, audit_id
    LIMIT :limit
"""
_O, _W = _RANK.format(t="o"), _RANK.format(t="w")
_WAITING_FOR = f"""SELECT w.command_id, w.owner, w.state, w.api, w.kind, w.key, w.priority,
                       w.since, w.expected_at, w.until,
                       (SELECT count(*) FROM relay_waiting o
                        WHERE o.api = w.api AND o.kind = w.kind AND o.key = w.key
                          AND o.state = 'waiting' AND o.until >= :now
                          AND o.command_id <> w.command_id
                          AND ({_O} < {_W}
                               OR ({_O} = {_W}
                                   AND (o.since < w.since OR (o.since = w.since
                                        AND o.command_id < w.command_id))))) AS ahead
                FROM relay_waiting w WHERE w.command_id = :command_id AND w.until >= :now"""  # noqa: S608 - constant text, no input


class SteeringStore:
    """The steering tables of one store, on its runner (see the module docstring)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    # -- operators ---------------------------------------------------------------------------

    @staticmethod
    def _audit(record: AuditRecord) -> Statement:
        return Statement(
            _AUDIT,
            {
                "audit_id": uuid.uuid4().hex,
                "actor": record.actor,
                "action": record.action,
                "command_id": record.command_id,
                "customer_id": record.customer_id,
                "detail": json.dumps(record.detail, sort_keys=True),
            },
        )

    async def set_limit(
        self, api: str, kind: LimitKind, key: str, rate: float, *, actor: str
    ) -> None:
        params = {"api": api, "kind": kind, "key": key, "rate": rate, "actor": actor}
        detail = {**_on(api, kind, key), "rate": rate}
        customer = key if kind == "customer" else None
        audit = AuditRecord("quota_set", actor, customer_id=customer, detail=detail)
        await self._runner.run([Statement(_SET_LIMIT, params), self._audit(audit)])

    async def reset_limit(self, api: str, kind: LimitKind, key: str, *, actor: str) -> None:
        detail = {**_on(api, kind, key), "rate": None}
        customer = key if kind == "customer" else None
        audit = AuditRecord("quota_reset", actor, customer_id=customer, detail=detail)
        params = {"api": api, "kind": kind, "key": key}
        await self._runner.run([Statement(_RESET_LIMIT, params), self._audit(audit)])

    async def pause(self, customer: str, api: str | None, *, actor: str) -> None:
        detail = {"customer": customer, "api": api}
        audit = AuditRecord("pause", actor, customer_id=customer, detail=detail)
        params = {"customer": customer, "api": api or "", "actor": actor}
        await self._runner.run([Statement(_PAUSE, params), self._audit(audit)])

    async def resume(self, customer: str, api: str | None, *, actor: str) -> None:
        detail = {"customer": customer, "api": api}
        audit = AuditRecord("resume", actor, customer_id=customer, detail=detail)
        params = {"customer": customer, "api": api or ""}
        await self._runner.run([Statement(_RESUME, params), self._audit(audit)])

    async def record(self, record: AuditRecord) -> None:
        await self._runner.run([self._audit(record)])

    async def limits(self) -> list[Row]:
        return await self._runner.fetch(
            "SELECT api, kind, key, rate, set_by, set_at FROM relay_limits ORDER BY api, kind, key"
        )

    async def pauses(self) -> list[Row]:
        return await self._runner.fetch(
            "SELECT customer, api, set_by, set_at FROM relay_pauses ORDER BY customer, api"
        )

    async def audit(
        self,
        *,
        command_id: str | None = None,
        customer_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        """Operators' actions, newest first; each filter given narrows the list."""
        params = {
            "command_id": command_id,
            "customer_id": customer_id,
            "since": since,
            "until": until,
            "limit": NO_LIMIT if limit is None else limit,
        }
        return await self._runner.fetch(_AUDIT_READ, params)

    # -- replicas ----------------------------------------------------------------------------

    async def publish(self, publication: Publication) -> None:
        """One replica's news, in one transaction."""
        p = publication
        owner = {"owner": p.owner}
        statements = [
            Statement(_HEARTBEAT, {**owner, "egress": p.egress, "started_at": p.started_at}),
            Statement(_RENEW_WAITING, {**owner, "until": p.renew_until}),
        ]
        if p.gone:
            statements.append(
                Statement(_GONE, many=[{**owner, "command_id": cid} for cid in p.gone])
            )
        if p.waiting:
            rows = [{**owner, **asdict(entry)} for entry in p.waiting]
            statements.append(Statement(_WAITING, many=rows))
        if p.reports:
            rows = [{**owner, **asdict(report)} for report in p.reports]
            statements.append(Statement(_REPORT, many=rows))
        if p.lines:
            rows = [asdict(line) for line in p.lines]
            statements.append(Statement(_LINE, many=rows))
        await self._runner.run(statements)

    async def retire(self, owner: str) -> None:
        """A replica stopping: its heartbeat, its reports and its rows of commands held in
        memory go (they are back on the broker); rows of parked commands stay until due."""
        await self._runner.run([Statement(sql, {"owner": owner}) for sql in _RETIRE])

    async def sweep(self, *, replicas_before: datetime, reports_before: datetime) -> None:
        """Forget what is stale: waiting rows past their ``until``, replicas silent since
        ``replicas_before``, reports of buckets unused since ``reports_before``."""
        await self._runner.run(
            [
                Statement("DELETE FROM relay_waiting WHERE until < :now"),
                Statement(
                    "DELETE FROM relay_replicas WHERE seen_at < :before",
                    {"before": replicas_before},
                ),
                Statement(
                    "DELETE FROM relay_bucket_reports WHERE used_at < :before",
                    {"before": reports_before},
                ),
            ]
        )

    async def replicas(self) -> list[Row]:
        return await self._runner.fetch(
            "SELECT owner, egress, started_at, seen_at FROM relay_replicas ORDER BY owner"
        )

    async def waiting(self) -> list[Row]:
        """Every fresh waiting row."""
        return await self._runner.fetch(
            """SELECT command_id, owner, state, api, kind, key, priority, since, expected_at,
                      until
               FROM relay_waiting WHERE until >= :now"""
        )

    async def waiting_for(self, command_id: str) -> Row | None:
        """The command's fresh waiting row, with ``ahead``: how many waiting rows of the same
        bucket go before it (higher priority first, then the longest waiting)."""
        rows = await self._runner.fetch(
            _WAITING_FOR,
            {"command_id": command_id},
        )
        return rows[0] if rows else None

    async def reports(self) -> list[Row]:
        return await self._runner.fetch(
            """SELECT owner, api, kind, key, limit_rate, rate, throttled_5m, used_at
               FROM relay_bucket_reports"""
        )

    async def customer_waiting(
        self, api: str, customer: str, priorities: Sequence[str], *, owner: str
    ) -> list[tuple[str, datetime | None, bool]]:
        """The customer's calls of ``api`` at one of ``priorities`` that the replicas know to
        wait for their turn: (command id, when it went into its line or None if it is held
        in memory, whether the replica ``owner`` published it)."""
        rows = await self._runner.fetch(
            f"""SELECT command_id, queued_at, owner FROM relay_waiting
                WHERE api = :api AND customer = :customer AND state = 'waiting'
                  AND until >= :now
                  AND priority IN ({", ".join(f":p{i}" for i in range(len(priorities)))})""",  # noqa: S608 - placeholders only, no input in the text
            {"api": api, "customer": customer, **{f"p{i}": p for i, p in enumerate(priorities)}},
        )
        return [(row["command_id"], row["queued_at"], row["owner"] == owner) for row in rows]

    async def egresses(self) -> int:
        """How many egresses (source addresses) the deployment's replicas send from."""
        rows = await self._runner.fetch("SELECT count(DISTINCT egress) AS n FROM relay_replicas")
        return int(rows[0]["n"]) if rows else 0

    async def lines(self) -> list[Row]:
        return await self._runner.fetch(
            """SELECT api, customer, priority, queue, parked, pulled,
                      COALESCE(settled, pulled) AS settled, next_deadline, updated_at
               FROM relay_lines ORDER BY api, customer, priority"""
        )

    async def forget_line(self, api: str, customer: str, priority: str) -> None:
        """The line's queue was deleted (it was empty): its counts start again."""
        await self._runner.run(
            [
                Statement(
                    """DELETE FROM relay_lines
                       WHERE api = :api AND customer = :customer AND priority = :priority""",
                    {"api": api, "customer": customer, "priority": priority},
                )
            ]
        )

    async def clear_line_deadline(self, api: str, customer: str, priority: str) -> bool:
        """A paused line is to be swept: its commands past their deadline are out of it, and
        the ones parked again bring their deadlines again. True for the one caller that
        cleared it: every replica reads the deadline, one sweeps (two sweeps pull each
        command twice and run the line's pulled count past the places of those parked again)."""
        cleared = await self._runner.fetch(
            """UPDATE relay_lines SET next_deadline = NULL
               WHERE api = :api AND customer = :customer AND priority = :priority
                 AND next_deadline IS NOT NULL
               RETURNING api""",
            {"api": api, "customer": customer, "priority": priority},
        )
        return bool(cleared)

    # -- dead letters ------------------------------------------------------------------------

    async def dead_lettered(
        self,
        command_id: str,
        *,
        type: str | None,
        customer_id: str | None,
        reason: str,
        message: str | None,
    ) -> None:
        params = {
            "command_id": command_id,
            "type": type,
            "customer_id": customer_id,
            "reason": reason,
            "message": message,
        }
        await self._runner.run([Statement(_DEAD_LETTER, params)])

    async def dead_letter(self, command_id: str) -> Row | None:
        rows = await self._runner.fetch(
            """SELECT command_id, type, customer_id, reason, message, dead_lettered_at
               FROM relay_dead_letters WHERE command_id = :command_id""",
            {"command_id": command_id},
        )
        return rows[0] if rows else None


def _on(api: str, kind: LimitKind, key: str) -> dict[str, Any]:
    """What a limit change was on, for its audit entry: the operation and its key, if any."""
    return {"api": api} if kind == "all" else {"api": api, kind: key}
