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

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

__all__ = [
    "ACTIONS",
    "AuditRow",
    "Deployment",
    "LimitInForce",
    "PauseInForce",
    "QuotaRow",
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
