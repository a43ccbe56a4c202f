"""An in-memory ``service.ops.deployment.Deployment`` for the tests of its users (the replay
verb, the console) until the store-backed one is there to use instead.

It keeps the Protocol's promises that its users rely on: every change is audited with its
actor and action name, ``limits``/``pauses`` show what is in force, ``audit`` is newest first
and filters, ``quota`` marks paused buckets. ``why`` answers from the command store when one
is given (finished commands), from ``whereabouts`` when a test sets one, else ``not_seen``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from service.ops.deployment import (
    Action,
    AuditRow,
    LimitInForce,
    PauseInForce,
    QuotaRow,
)
from service.store.types import CommandStatus, CommandStore

__all__ = ["MemoryDeployment"]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class MemoryDeployment:
    store: CommandStore | None = None
    rows: list[QuotaRow] = field(default_factory=list)
    whereabouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    trail: list[AuditRow] = field(default_factory=list)
    limits_in_force: dict[tuple[str, str, str | None], LimitInForce] = field(default_factory=dict)
    pauses_in_force: dict[tuple[str, str | None], PauseInForce] = field(default_factory=dict)

    async def quota(self) -> list[QuotaRow]:
        paused = {p.customer for p in self.pauses_in_force.values()}
        return [replace(r, paused=r.paused or r.key in paused) for r in self.rows]

    async def why(self, command_id: str) -> dict[str, Any]:
        if command_id in self.whereabouts:
            return {"command_id": command_id, **self.whereabouts[command_id]}
        record = await self.store.get(command_id) if self.store is not None else None
        if record is None:
            return {"command_id": command_id, "state": "not_seen"}
        if record.status is CommandStatus.FINISHED and record.event is not None:
            event = json.loads(record.event)
            return {
                "command_id": command_id,
                "state": "finished",
                "outcome": event.get("outcome"),
                "event_id": event.get("event_id"),
            }
        return {"command_id": command_id, "state": "running", "replica": record.owner}

    async def limits(self) -> list[LimitInForce]:
        return list(self.limits_in_force.values())

    async def pauses(self) -> list[PauseInForce]:
        return list(self.pauses_in_force.values())

    async def set_limit(
        self,
        api: str,
        rate: float | None,
        *,
        customer: str | None = None,
        egress: str | None = None,
        actor: str,
    ) -> None:
        if customer is not None and egress is not None:
            raise ValueError("a customer or an egress, not both")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        kind: Literal["all", "customer", "egress"] = (
            "customer" if customer else "egress" if egress else "all"
        )
        key = (api, kind, customer or egress)
        if rate is None:
            self.limits_in_force.pop(key, None)
        else:
            self.limits_in_force[key] = LimitInForce(
                api, kind, customer or egress, rate, actor, _now()
            )
        detail: dict[str, Any] = {"api": api, "rate": rate}
        detail.update({"customer": customer} if customer else {})
        detail.update({"egress": egress} if egress else {})
        action: Action = "quota_reset" if rate is None else "quota_set"
        await self.record(action, actor=actor, customer_id=customer, detail=detail)

    async def pause(self, customer: str, *, api: str | None = None, actor: str) -> None:
        self.pauses_in_force[(customer, api)] = PauseInForce(customer, api, actor, _now())
        await self.record("pause", actor=actor, customer_id=customer, detail={"api": api})

    async def resume(self, customer: str, *, api: str | None = None, actor: str) -> None:
        self.pauses_in_force.pop((customer, api), None)
        await self.record("resume", actor=actor, customer_id=customer, detail={"api": api})

    async def record(
        self,
        action: Action,
        *,
        actor: str,
        command_id: str | None = None,
        customer_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.trail.append(AuditRow(_now(), actor, action, command_id, customer_id, detail or {}))

    async def audit(
        self,
        *,
        command_id: str | None = None,
        customer_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        rows = [
            r
            for r in reversed(self.trail)
            if (command_id is None or r.command_id == command_id)
            and (customer_id is None or r.customer_id == customer_id)
        ]
        return rows[:limit]
