"""What the console does, the same whether asked through the JSON API or a page's form: the
CLI verbs' rules (``quota set``/``reset``, ``pause``/``resume``, ``replay``, ``why``), with the
signed-in user as the audit's ``actor``."""

from __future__ import annotations

from typing import Any

import structlog

from service.ops.console.asks import PauseAsk, QuotaAsk, ReplayAsk
from service.ops.console.guard import Refusal
from service.ops.console.letters import (
    BrokerUnavailable,
    ReplayAnswer,
    ReplayFailed,
    with_dead_letter,
)
from service.ops.console.state import Console
from service.ops.console.users import User
from service.ops.replay.audited import record_replays

__all__ = ["change_quota", "replay", "steer_pause", "whereabouts"]

log = structlog.get_logger(__name__)


async def change_quota(console: Console, ask: QuotaAsk, user: User) -> dict[str, Any]:
    try:
        await console.deployment.set_limit(
            ask.api, ask.rate, customer=ask.customer, egress=ask.egress, actor=user.name
        )
    except ValueError as exc:  # the deployment's own rules (an unknown API, say)
        raise Refusal(400, f"invalid request: {exc}") from None
    action = "quota_reset" if ask.rate is None else "quota_set"
    log.info("console_action", action=action, user=user.name, api=ask.api)
    return {"action": action, **ask.model_dump()}


async def steer_pause(
    console: Console, ask: PauseAsk, user: User, *, pause: bool
) -> dict[str, Any]:
    steer = console.deployment.pause if pause else console.deployment.resume
    try:
        await steer(ask.customer, api=ask.api, actor=user.name)
    except ValueError as exc:
        raise Refusal(400, f"invalid request: {exc}") from None
    action = "pause" if pause else "resume"
    log.info("console_action", action=action, user=user.name, customer=ask.customer)
    return {"action": action, **ask.model_dump()}


async def replay(console: Console, ask: ReplayAsk, user: User) -> list[ReplayAnswer]:
    """The replay tool on the dead letters of ``ask.command_ids``; every dead letter moved back
    is recorded as the user's ``replay``. Raises ``ReplayFailed`` (after recording what did
    move) when the broker refused a copy."""
    try:
        answers, moved = await console.letters.replay(ask.command_ids, dry_run=ask.dry_run)
    except ReplayFailed as failed:
        await record_replays(console.deployment, failed.moved, actor=user.name, via="console")
        raise
    await record_replays(console.deployment, moved, actor=user.name, via="console")
    log.info(
        "console_action",
        action="replay",
        user=user.name,
        dry_run=ask.dry_run,
        asked=len(ask.command_ids),
        moved=len(moved),
    )
    return answers


async def whereabouts(console: Console, command_id: str) -> dict[str, Any]:
    """``why``'s answer, completed from the DLQ (``letters.with_dead_letter``); when the broker
    cannot be read, ``why``'s answer as it is."""
    answer = await console.deployment.why(command_id)
    if answer.get("state") != "not_seen":
        return answer
    try:
        letters = await console.letters.of_command(command_id)
    except BrokerUnavailable:
        log.warning("console_dlq_unreadable", command_id=command_id)
        return answer
    return with_dead_letter(answer, letters)
