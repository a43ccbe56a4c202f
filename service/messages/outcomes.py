"""Building terminal events from commands, results, errors and rejections."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from handlers.errors import RelayError
from schemas.commands import Command
from schemas.events import EVENT_ADAPTER, Event, Outcome
from service.messages.intake import Rejection

__all__ = [
    "announce_again",
    "deferred_event",
    "error_info",
    "event_for",
    "new_event_id",
    "rejection_event",
]


def new_event_id() -> str:
    return f"evt-{uuid.uuid4().hex}"


def error_info(exc: RelayError) -> dict[str, Any]:
    return {
        "code": exc.code,
        "message": exc.message,
        "retryable": exc.retryable,
        "http_status": exc.http_status,
        "request_id": exc.request_id,
    }


def event_for(
    command: Command,
    *,
    outcome: Outcome,
    now: datetime,
    attempts: int,
    result: BaseModel | None = None,
    error: RelayError | None = None,
    requested_by: str | None = None,
) -> Event:
    return EVENT_ADAPTER.validate_python(
        {
            "event_id": new_event_id(),
            "command_id": command.command_id,
            "type": command.type,
            "outcome": outcome,
            "occurred_at": now,
            "attempts": attempts,
            "duplicate": False,
            "partner_id": command.partner_id,
            "customer_id": command.customer_id,
            "requested_by": requested_by,
            "result": result.model_dump() if result is not None else None,
            "error": error_info(error) if error is not None else None,
        }
    )


def rejection_event(
    rejection: Rejection, *, now: datetime, requested_by: str | None = None
) -> Event:
    return EVENT_ADAPTER.validate_python(
        {
            "event_id": new_event_id(),
            "command_id": rejection.command_id,
            "type": rejection.type,
            "outcome": Outcome.REJECTED,
            "occurred_at": now,
            "attempts": 0,
            "duplicate": False,
            "partner_id": rejection.partner_id,
            "customer_id": rejection.customer_id,
            "requested_by": requested_by,
            "result": None,
            "error": {
                "code": rejection.code,
                "message": rejection.message,
                "retryable": False,
                "http_status": None,
                "request_id": None,
            },
        }
    )


def deferred_event(
    command: Command, *, now: datetime, expected_start_at: datetime, requested_by: str | None
) -> Event:
    """The one progress event of a command that waits long for quota. Its ``event_id`` is
    derived from the ``command_id``: if a crash made the service send it twice, subscribers
    see the same ``message_id`` and can drop the second."""
    return EVENT_ADAPTER.validate_python(
        {
            "event_id": f"evt-deferred-{command.command_id}",
            "command_id": command.command_id,
            "type": command.type,
            "outcome": Outcome.DEFERRED,
            "occurred_at": now,
            "attempts": 0,
            "duplicate": False,
            "partner_id": command.partner_id,
            "customer_id": command.customer_id,
            "requested_by": requested_by,
            "result": None,
            "error": None,
            "expected_start_at": expected_start_at,
        }
    )


def announce_again(stored: bytes, *, conflict: bool = False) -> Event:
    """The stored terminal event, re-announced: a new ``event_id`` and ``duplicate: true``;
    ``conflict`` when the message that asked re-used the id for a different command."""
    event = EVENT_ADAPTER.validate_json(stored)
    update = {"event_id": new_event_id(), "duplicate": True, "conflict": conflict}
    return event.model_copy(update=update)
