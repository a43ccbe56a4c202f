"""Everything the service publishes: events, dead letters and delayed retries.

Every message is persistent and published on a channel with publisher confirms: each ``await``
returns only once the broker has taken responsibility for the message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
)

from service.broker.headers import H, carry_requester, original_routing_key
from service.broker.topology import DLQ, Topology
from service.telemetry.tracing import publish_span

__all__ = ["BROKER_ERRORS", "DeadLetterReason", "Publisher", "Unroutable"]


class Unroutable(aiormq.exceptions.AMQPError):
    """The broker returned a mandatory publish: the queue it was meant for does not exist
    (deleted by an operator, or declared by nobody yet). Nothing was stored; never ack the
    original on the strength of it."""

    reason = "unroutable: %s"


# A publish or an ack that failed because the way to the broker is (for now) gone: the channel
# or connection closed, is being restored, or the broker refused to confirm. Never the message's
# fault; what to do about it is the settlement's decision.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,  # connection/channel closed, publish nacked; Unroutable
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel is closed
    ConnectionError,
    asyncio.TimeoutError,
)

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class DeadLetterReason:
    code: str
    message: str
    attempts: int
    at: datetime


def _failure_headers(message: AbstractIncomingMessage, reason: DeadLetterReason) -> dict[str, Any]:
    headers: dict[str, Any] = dict(message.headers or {})
    headers.pop("x-death", None)  # broker bookkeeping of our delay hops, not the producer's
    headers[H.REASON] = reason.code
    headers[H.REASON_MESSAGE] = reason.message[:1000]
    headers[H.ATTEMPTS] = reason.attempts
    headers.setdefault(H.FIRST_FAILURE, reason.at.isoformat())
    headers[H.LAST_FAILURE] = reason.at.isoformat()
    headers[H.ORIGINAL_ROUTING_KEY] = original_routing_key(message)
    return headers


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """The message again, body and properties unchanged, with ``headers``, persistent.

    ``user_id`` is left out: the broker refuses a publish whose user_id is not the publisher's.
    It travels in a header instead (``service.broker.headers.REQUESTED_BY``, issue 12).
    """
    carry_requester(message, headers)
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        priority=message.priority,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class Publisher:
    def __init__(
        self,
        *,
        channel: AbstractChannel,
        events: AbstractExchange,
        topology: Topology,
        ready_timeout_s: float = 10.0,
    ) -> None:
        self._channel = channel
        self._events = events
        self._topology = topology
        self._ready_timeout_s = ready_timeout_s

    async def ready(self) -> None:
        """Wait (bounded) until the publishing channel is open again after a reconnect.
        Raises ``TimeoutError`` if it is not back in time."""
        if self._channel.is_closed and isinstance(self._channel, AbstractRobustChannel):
            # only while it is being restored: wait_for costs a task per call
            await asyncio.wait_for(self._channel.ready(), self._ready_timeout_s)

    async def event(
        self,
        body: bytes,
        *,
        routing_key: str,
        event_id: str,
        correlation_id: str | None,
        reply_to: str | None,
    ) -> None:
        # TRACING HOOK (issue 13): a PRODUCER span; its traceparent in the event's headers.
        with publish_span(
            destination=self._events.name, routing_key=routing_key, message_id=event_id
        ) as headers:
            message = aio_pika.Message(
                body,
                headers=headers or None,
                content_type=JSON,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=event_id,
                correlation_id=correlation_id,
                type=routing_key,
            )
            await self.ready()
            await self._events.publish(message, routing_key=routing_key)
            if reply_to:
                await self._channel.default_exchange.publish(message, routing_key=reply_to)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: DeadLetterReason) -> None:
        headers = _failure_headers(message, reason)
        await self._to_queue(copy_message(message, headers), DLQ)

    async def delay(
        self,
        message: AbstractIncomingMessage,
        *,
        seconds: float,
        reason: DeadLetterReason | None,
        extra_headers: dict[str, Any] | None = None,
        at_least: bool = False,
    ) -> int:
        """Send the command back to the work queue after about ``seconds`` (with ``at_least``,
        never sooner); returns the step."""
        headers: dict[str, Any] = dict(message.headers or {})
        headers.pop("x-death", None)
        if reason is not None:
            headers = _failure_headers(message, reason)
        headers[H.ORIGINAL_ROUTING_KEY] = original_routing_key(message)
        headers.update(extra_headers or {})
        level = self._topology.delay_for(seconds, at_least=at_least)
        await self._to_queue(copy_message(message, headers), self._topology.delay_queue(level))
        return level

    async def park(
        self, message: AbstractIncomingMessage, *, queue: str, extra_headers: dict[str, Any]
    ) -> None:
        """Put the command in a parking line's ``queue`` (``service.messages.lines``)."""
        headers: dict[str, Any] = dict(message.headers or {})
        headers.pop("x-death", None)
        headers[H.ORIGINAL_ROUTING_KEY] = original_routing_key(message)
        headers.update(extra_headers)
        await self._to_queue(copy_message(message, headers), queue)

    async def _to_queue(self, message: aio_pika.Message, queue: str) -> None:
        """Publish straight into ``queue``; confirmed, and refused if the queue is missing
        (the broker returns the message instead of storing it)."""
        await self.ready()
        result = await self._channel.default_exchange.publish(message, routing_key=queue)
        if isinstance(result, aiormq.abc.DeliveredMessage):
            raise Unroutable(f"queue {queue!r} does not exist: the broker returned the message")
