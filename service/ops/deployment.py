"""What operators read and change about a running deployment: the one interface the CLI verbs
(``quota``, ``pause``, ``resume``, ``why``, ``audit``) and the console (``bss-relay console``)
share, so that an action means the same from either (CONTRACT §9, §10).

Everything here goes through the deployment's command store (``STORE_URL``): live limits and
pauses are rows every replica polls, the waiting sets and bucket reports are what replicas
publish about once a second, the audit trail is a table. Nothing here talks to a replica.

Actions are recorded in the audit with the actor's name (``--as NAME``, else the OS user, or
the console user) and one of :data:`ACTIONS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from service.ops.audit import MONEY_TYPES, AuditEntry, entry_from
from service.pacing.limits import Limits, LiveLimit
from service.store.runner import Row
from service.store.steering import AuditRecord, LimitKind
from service.store.types import CommandStatus, CommandStore, StoredCommand

__all__ = [
    "ACTIONS",
    "AuditRow",
    "Deployment",
    "DeploymentError",
    "LimitInForce",
    "PauseInForce",
    "QuotaRow",
    "StoreDeployment",
]

Action = Literal["replay", "quota_set", "quota_reset", "pause", "resume"]
ACTIONS: tuple[Action, ...] = ("replay", "quota_set", "quota_reset", "pause", "resume")
BucketKind = Literal["customer", "egress"]


@dataclass(frozen=True, slots=True)
class QuotaRow:
    """One bucket, as ``bss-relay quota show --json`` prints it (CONTRACT §9)."""

    api: str
    kind: BucketKind
    key: str  # the ParentUid, or the egress name
    limit: float | None  # requests/s in force (after ``quota set``); None: unlimited
    rate: float | None  # requests/s pacing uses now (after any slow-down for 429s)
    waiting: int  # commands waiting for it, deployment-wide (paused and parked included)
    oldest_wait_s: float | None  # how long the oldest of them has waited; None when none
    throttled_5m: int  # 429 answers in the last 5 minutes
    paused: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "kind": self.kind,
            "key": self.key,
            "limit": self.limit,
            "rate": self.rate,
            "waiting": self.waiting,
            "oldest_wait_s": self.oldest_wait_s,
            "throttled_5m": self.throttled_5m,
            "paused": self.paused,
        }


@dataclass(frozen=True, slots=True)
class LimitInForce:
    """A live limit set with ``quota set``: for every key of ``api`` (``kind`` ``all``), one
    customer or one egress."""

    api: str
    kind: Literal["all", "customer", "egress"]
    key: str | None
    rate: float
    set_by: str
    set_at: datetime


@dataclass(frozen=True, slots=True)
class PauseInForce:
    customer: str
    api: str | None  # None: every operation
    set_by: str
    set_at: datetime


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit entry (``GET /api/audit``): an operator's action, or a money-moving command
    (actor: the producer's broker-validated ``user_id``; action: the command type)."""

    at: datetime
    actor: str | None
    action: str
    command_id: str | None
    customer_id: str | None
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "command_id": self.command_id,
            "customer_id": self.customer_id,
            "detail": self.detail,
        }


class Deployment(Protocol):
    """The deployment named by ``STORE_URL``, as operators see and steer it."""

    async def quota(self) -> list[QuotaRow]:
        """Buckets with waiting commands, used in the last 5 minutes, or paused."""
        ...

    async def why(self, command_id: str) -> dict[str, Any]:
        """Where one command is: the object ``bss-relay why --json`` prints (``state`` one of
        finished, running, waiting, paused, delayed, dead_lettered, not_seen, with the
        fields CONTRACT §9 gives each)."""
        ...

    async def limits(self) -> list[LimitInForce]: ...

    async def pauses(self) -> list[PauseInForce]: ...

    async def set_limit(
        self,
        api: str,
        rate: float | None,
        *,
        customer: str | None = None,
        egress: str | None = None,
        actor: str,
    ) -> None:
        """``quota set`` (``rate`` requests/s) or, with ``rate`` None, ``quota reset``;
        audited as ``quota_set`` / ``quota_reset``."""
        ...

    async def pause(self, customer: str, *, api: str | None = None, actor: str) -> None: ...

    async def resume(self, customer: str, *, api: str | None = None, actor: str) -> None: ...

    async def record(
        self,
        action: Action,
        *,
        actor: str,
        command_id: str | None = None,
        customer_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record an operator's action that has no verb here (a replay)."""
        ...

    async def audit(
        self,
        *,
        command_id: str | None = None,
        customer_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        """Audit entries, newest first."""
        ...


# -- the implementation: the deployment's store ---------------------------------------------

REPORT_WINDOW = timedelta(minutes=5)  # a bucket used this recently is shown
WAITING_STATES = ("waiting", "paused")  # a delayed command waits for a retry, not a bucket


class DeploymentError(ValueError):
    """An operator's request that cannot be carried out as asked (unknown operation, ...)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


@dataclass(slots=True)
class _Bucket:
    report_at: datetime | None = None
    limit: float | None = None  # in force on the replica that reported last
    rate: float | None = None
    throttled: int = 0
    waiting: int = 0
    oldest: datetime | None = None

    def saw(self, since: datetime) -> None:
        self.waiting += 1
        self.oldest = since if self.oldest is None else min(self.oldest, since)


class StoreDeployment:
    """:class:`Deployment` on the command store (``STORE_URL``). ``limits``: the configured
    table (``RELAY_RATE_LIMITS`` over the published defaults), for the limit in force."""

    def __init__(
        self,
        store: CommandStore,
        *,
        limits: Limits,
        operations: Iterable[str],
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._steering = store.steering
        self._limits = limits
        self._operations = frozenset(operations)
        self._clock = clock

    def _check_api(self, api: str | None) -> None:
        if api is not None and api not in self._operations:
            known = ", ".join(sorted(self._operations))
            raise DeploymentError(f"unknown operation {api!r}; one of: {known}")

    # -- steering ----------------------------------------------------------------------------

    async def set_limit(
        self,
        api: str,
        rate: float | None,
        *,
        customer: str | None = None,
        egress: str | None = None,
        actor: str,
    ) -> None:
        self._check_api(api)
        if customer is not None and egress is not None:
            raise DeploymentError("a limit is for one customer or one egress, not both")
        kind: LimitKind = "customer" if customer else "egress" if egress else "all"
        key = customer or egress or ""
        if rate is None:
            await self._steering.reset_limit(api, kind, key, actor=actor)
            return
        if not math.isfinite(rate) or rate <= 0:
            raise DeploymentError(f"rate must be a positive number of requests/s, not {rate}")
        await self._steering.set_limit(api, kind, key, rate, actor=actor)

    async def pause(self, customer: str, *, api: str | None = None, actor: str) -> None:
        self._check_api(api)
        await self._steering.pause(customer, api, actor=actor)

    async def resume(self, customer: str, *, api: str | None = None, actor: str) -> None:
        self._check_api(api)
        await self._steering.resume(customer, api, actor=actor)

    async def record(
        self,
        action: Action,
        *,
        actor: str,
        command_id: str | None = None,
        customer_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await self._steering.record(
            AuditRecord(action, actor, command_id, customer_id, dict(detail or {}))
        )

    async def limits(self) -> list[LimitInForce]:
        return [
            LimitInForce(
                row["api"],
                row["kind"],
                row["key"] or None,
                row["rate"],
                row["set_by"],
                row["set_at"],
            )
            for row in await self._steering.limits()
        ]

    async def pauses(self) -> list[PauseInForce]:
        return [
            PauseInForce(row["customer"], row["api"] or None, row["set_by"], row["set_at"])
            for row in await self._steering.pauses()
        ]

    # -- seeing it ---------------------------------------------------------------------------

    async def quota(self) -> list[QuotaRow]:
        now = self._clock()
        live = await self._steering.limits()
        self._limits.replace_live(
            LiveLimit(row["api"], row["kind"], row["key"], row["rate"]) for row in live
        )
        buckets: dict[tuple[str, str, str], _Bucket] = {}
        for report in await self._steering.reports():
            if report["used_at"] < now - REPORT_WINDOW:
                continue
            bucket = buckets.setdefault((report["api"], report["kind"], report["key"]), _Bucket())
            bucket.throttled += report["throttled_5m"]
            if bucket.report_at is None or report["used_at"] > bucket.report_at:
                bucket.report_at, bucket.rate = report["used_at"], report["rate"]
                bucket.limit = report["limit_rate"]
        for row in await self._steering.waiting():
            if row["state"] in WAITING_STATES and row["api"] and row["kind"] and row["key"]:
                key = (row["api"], row["kind"], row["key"])
                buckets.setdefault(key, _Bucket()).saw(row["since"])
        paused = {(row["customer"], row["api"]) for row in await self._steering.pauses()}
        for customer, api in paused:
            if not any(
                k[1] == "customer" and k[2] == customer and api in ("", k[0]) for k in buckets
            ):
                buckets[(api or "*", "customer", customer)] = _Bucket()
        return [self._row(key, bucket, now, paused) for key, bucket in sorted(buckets.items())]

    def _row(
        self,
        key: tuple[str, str, str],
        bucket: _Bucket,
        now: datetime,
        paused: set[tuple[str, str]],
    ) -> QuotaRow:
        api, kind, name = key
        # a live limit (quota set) wins; else what the replicas run with (their configured
        # table, which this process's may not be); else this process's table
        limit = self._limits.live_for(api, "customer" if kind == "customer" else "egress", name)
        if limit is None:
            limit = bucket.limit if bucket.report_at is not None else self._limits.configured(api)
        rate = bucket.rate if bucket.rate is not None else limit
        if rate is not None and limit is not None:
            rate = min(rate, limit)
        return QuotaRow(
            api=api,
            kind="customer" if kind == "customer" else "egress",
            key=name,
            limit=limit,
            rate=rate,
            waiting=bucket.waiting,
            oldest_wait_s=None
            if bucket.oldest is None
            else round(max(0.0, (now - bucket.oldest).total_seconds()), 3),
            throttled_5m=bucket.throttled,
            paused=kind == "customer" and ((name, "") in paused or (name, api) in paused),
        )

    async def why(self, command_id: str) -> dict[str, Any]:
        found: dict[str, Any] = {"command_id": command_id}
        waiting = await self._steering.waiting_for(command_id)
        if waiting is not None:
            return {**found, **_waiting_state(waiting)}
        record = await self._store.get(command_id)
        letter = await self._steering.dead_letter(command_id)
        if record is not None and record.status is CommandStatus.FINISHED:
            return {**found, **_finished_state(record, letter)}
        now = self._clock()
        if record is not None and record.owner and record.lease_until and record.lease_until > now:
            return {**found, "state": "running", "replica": record.owner}
        if letter is not None:
            return {**found, **_dead_letter_state(letter)}
        if record is not None:  # taken in before, on the broker between deliveries now
            return {**found, "state": "delayed", "retry_at": None}
        return {**found, "state": "not_seen"}

    async def audit(
        self,
        *,
        command_id: str | None = None,
        customer_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        actions = [
            AuditRow(
                at=row["at"],
                actor=row["actor"],
                action=row["action"],
                command_id=row["command_id"],
                customer_id=row["customer_id"],
                detail=json.loads(row["detail"]),
            )
            for row in await self._steering.audit(
                command_id=command_id, customer_id=customer_id, limit=limit
            )
        ]
        commands = await self._command_rows(command_id, customer_id, limit)
        rows = sorted([*actions, *commands], key=lambda r: r.at, reverse=True)
        return rows[:limit]

    async def _command_rows(
        self, command_id: str | None, customer_id: str | None, limit: int
    ) -> list[AuditRow]:
        if command_id is not None:
            record = await self._store.get(command_id)
            records = [] if record is None or record.type not in MONEY_TYPES else [record]
        else:
            records = await self._store.list_commands(types=MONEY_TYPES)
        rows = []
        for record in records:
            entry = entry_from(record)
            if customer_id is not None and customer_id not in entry.customer_ids:
                continue
            rows.append(
                AuditRow(
                    at=entry.requested_at or record.updated_at,
                    actor=entry.requested_by,
                    action=entry.type,
                    command_id=entry.command_id,
                    customer_id=entry.customer_ids[0] if len(entry.customer_ids) == 1 else None,
                    detail=_command_detail(entry),
                )
            )
        rows.sort(key=lambda r: r.at, reverse=True)
        return rows[:limit]


def _waiting_state(row: Row) -> dict[str, Any]:
    if row["state"] == "delayed":
        return {"state": "delayed", "retry_at": _iso(row["expected_at"]), "replica": row["owner"]}
    if row["state"] == "paused":
        return {
            "state": "paused",
            "api": row["api"],
            "customer": row["key"],
            "since": _iso(row["since"]),
        }
    return {
        "state": "waiting",
        "api": row["api"],
        "kind": row["kind"],
        "key": row["key"],
        "priority": row["priority"] or "normal",
        "position": int(row["ahead"]) + 1,
        "expected_start_at": _iso(row["expected_at"]),
        "waiting_since": _iso(row["since"]),
        "replica": row["owner"],
    }


def _finished_state(record: StoredCommand, letter: Row | None) -> dict[str, Any]:
    event = json.loads(record.event or b"{}")
    state: dict[str, Any] = {
        "state": "finished",
        "outcome": event.get("outcome"),
        "event_id": event.get("event_id"),
        "finished_at": _iso(record.finished_at),
    }
    if letter is not None:  # ended `failed`/`unknown` with a copy kept for a person
        state["dead_letter"] = _dead_letter_state(letter)
    return state


def _dead_letter_state(letter: Row) -> dict[str, Any]:
    return {
        "state": "dead_lettered",
        "reason": letter["reason"],
        "message": letter["message"],
        "dead_lettered_at": _iso(letter["dead_lettered_at"]),
    }


def _command_detail(entry: AuditEntry) -> dict[str, Any]:
    return {
        "what": entry.what,
        "amount": None if entry.amount is None else str(entry.amount),
        "partner_id": entry.partner_id,
        "customer_ids": entry.customer_ids,
        "outcome": entry.outcome,
        "error_code": entry.error_code,
        "order_ids": entry.order_ids,
        "coupon_ids": entry.coupon_ids,
    }
