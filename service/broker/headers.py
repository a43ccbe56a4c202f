"""The AMQP headers the service reads and writes on command messages, and their helpers.

Every copy the service makes of a command (a delayed retry, a parked command, a dead letter)
carries its bookkeeping in ``x-relay-*`` headers (documented in the AsyncAPI document); this is
the one place their names live and the one place they are read back. Low in the tree on
purpose: the broker, pacing, the policy step and the message path all read them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from service.broker.topology import COMMANDS_EXCHANGE

__all__ = [
    "REQUESTED_BY",
    "H",
    "carry_requester",
    "failed_deliveries",
    "original_routing_key",
    "requested_before",
    "requester",
    "waiting_since",
]


class H:
    """Header names carried by dead letters and delayed retries (documented in AsyncAPI)."""

    REASON = "x-relay-reason"
    REASON_MESSAGE = "x-relay-reason-message"
    ATTEMPTS = "x-relay-attempts"
    FIRST_FAILURE = "x-relay-first-failure"
    LAST_FAILURE = "x-relay-last-failure"
    ORIGINAL_ROUTING_KEY = "x-relay-original-routing-key"
    # parked in a line (service.messages.lines): pulled from it, it is taken in at once
    LINE = "x-relay-line"
    # when the command began to wait for its bucket (epoch seconds, text): kept across parkings
    WAITING_SINCE = "x-relay-waiting-since"
    REPLAYED_AT = "x-relay-replayed-at"  # set by `bss-relay replay` on the copy it republishes
    REPLAY_COUNT = "x-relay-replay-count"
    # API requests sent for the command by earlier deliveries (the event's `attempts` goes on
    # from there; requests of calls safe to repeat are not in the store)
    REQUESTS = "x-relay-requests"
    # the command's one `deferred` progress event is owed or went out (sent once its place in
    # its line settles, service.messages.announcer): it is not considered again
    DEFERRED = "x-relay-deferred"
    # admitted once already (it waited for another replica's claim): not parked again
    ADMITTED = "x-relay-admitted"


REQUESTED_BY = "x-relay-requested-by"
"""Header on the service's own copies of a command (delayed retries, parking, dead letters):
the broker-validated ``user_id`` of the original message, which a copy cannot carry as its
``user_id`` (the broker refuses a publish whose user_id is not the publisher's)."""


def _count(message: AbstractIncomingMessage, name: str) -> int:
    value = (message.headers or {}).get(name, 0)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def failed_deliveries(message: AbstractIncomingMessage) -> int:
    """How many deliveries of this command failed before (our header on a delayed retry)."""
    return _count(message, H.ATTEMPTS)


def requested_before(message: AbstractIncomingMessage) -> int:
    """API requests earlier deliveries sent for the command (our header on a delayed copy)."""
    return _count(message, H.REQUESTS)


def original_routing_key(message: AbstractIncomingMessage) -> str:
    headers = message.headers or {}
    value = headers.get(H.ORIGINAL_ROUTING_KEY)
    return str(value) if value else (message.routing_key or "")


def requester(message: AbstractIncomingMessage) -> str | None:
    """Who asked for this command: the message's ``user_id`` (RabbitMQ validated it against the
    publishing connection), or, on a copy that came back from the service's own delay queues
    (not through ``bss.commands``), the header the service put there. On a message from
    ``bss.commands`` the header is never trusted: a producer could write anything in it."""
    if message.user_id:
        return str(message.user_id)
    if getattr(message, "exchange", COMMANDS_EXCHANGE) == COMMANDS_EXCHANGE:
        return None  # (a stand-in message without an exchange is not trusted either)
    value = (message.headers or {}).get(REQUESTED_BY)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def carry_requester(message: AbstractIncomingMessage, headers: dict[str, Any]) -> None:
    """Set (or drop) ``REQUESTED_BY`` in the headers of a copy of ``message``."""
    who = requester(message)
    if who is None:
        headers.pop(REQUESTED_BY, None)
    else:
        headers[REQUESTED_BY] = who


def waiting_since(headers: Mapping[str, Any]) -> float | None:
    """When the command began to wait (our header; text, not a float header: pamqp sends a
    float as 32 bits, 128 s apart at epoch scale)."""
    value = headers.get(H.WAITING_SINCE)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        since = float(str(value)) if value is not None else None
    except ValueError:
        return None
    return since if since is not None and math.isfinite(since) else None
