"""The replay tool's rules against a deployment, the same from ``bss-relay replay`` and the
console: a finished command is only re-announced (the command store says which are), and every
dead letter moved back is recorded in the audit with who moved it (CONTRACT §10, ``replay``).

Dry runs change nothing and are not recorded; listing needs no store at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from service.ops.deployment import Deployment
from service.ops.replay.scanner import Finished, Result
from service.store.types import CommandStatus, CommandStore

__all__ = ["finished_in", "record_replays"]

Via = Literal["cli", "console"]


def finished_in(store: CommandStore) -> Finished:
    """``Finished`` for the scanner: the store holds the command's terminal event."""

    async def finished(command_id: str) -> bool:
        record = await store.get(command_id)
        return record is not None and record.status is CommandStatus.FINISHED

    return finished


def _customer(result: Result) -> str | None:
    customers = result.letter.customer_ids
    return customers[0] if len(customers) == 1 else None


async def record_replays(
    deployment: Deployment, results: Iterable[Result], *, actor: str, via: Via
) -> int:
    """Record each dead letter ``results`` moved back (REPLAYED or REANNOUNCED) as a
    ``replay`` by ``actor``; returns how many were recorded."""
    recorded = 0
    for result in results:
        if not result.moved:
            continue
        letter = result.letter
        await deployment.record(
            "replay",
            actor=actor,
            command_id=letter.command_id,
            customer_id=_customer(result),
            detail={
                "result": result.action.value,
                "type": letter.type,
                "reason": letter.reason,
                "message_id": letter.message_id,
                "via": via,
            },
        )
        recorded += 1
    return recorded
