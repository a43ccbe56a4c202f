"""Replay fixtures on the real broker.

``amqp_url`` is a fresh vhost ``relay-test-<worker>-<hex>`` for the session, deleted afterwards. Per
test, ``broker`` declares the service's topology (its own queue prefix), starts with an empty
``bss.commands.dlq`` and binds a ``tap`` queue to ``bss.commands`` with ``#`` so a test sees
every copy a replay publishes; teardown deletes the test's queues and empties the DLQ again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from service.broker.headers import H
from service.broker.topology import COMMANDS_EXCHANGE, DELAY_LEVELS_MS, DLQ, Topology, declare
from tests.conftest import unique_name

FAILED_AT = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
SETTLE_TIMEOUT_S = 5.0


@pytest.fixture(scope="session")
async def connection(amqp_url: str) -> AsyncIterator[AbstractConnection]:
    conn = await aio_pika.connect(amqp_url)
    yield conn
    await conn.close()


def command(
    command_id: str,
    *,
    kind: str = "renew",
    partner: str = "p-1",
    customer: str = "c-1",
) -> dict[str, Any]:
    """A command valid under today's schemas (renew, unless ``kind`` says otherwise)."""
    if kind == "issue_coupon":
        payload: dict[str, Any] = {"quota_id": "q-1", "customer_ids": [customer], "face_value": "5"}
    else:
        payload = {
            "customer_id": customer,
            "resource_ids": ["r-1"],
            "period_type": "month",
            "period_num": 1,
        }
    return {"command_id": command_id, "type": kind, "partner_id": partner, "payload": payload}


@dataclass(frozen=True)
class Seen:
    """A message read back from a queue, reduced to what tests compare."""

    message_id: str | None
    routing_key: str | None
    body: bytes
    headers: dict[str, Any]
    correlation_id: str | None
    reply_to: str | None
    content_type: str | None

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> Seen:
        return cls(
            message.message_id,
            message.routing_key,
            message.body,
            dict(message.headers or {}),
            message.correlation_id,
            message.reply_to,
            message.content_type,
        )


async def put_dead_letter(
    channel: AbstractChannel,
    body: dict[str, Any] | bytes,
    *,
    message_id: str | None = None,
    reason: str = "RELAY.RETRIES_EXHAUSTED",
    reason_message: str | None = None,
    attempts: int = 8,
    failed_at: datetime = FAILED_AT,
    routing_key: str | None = "command.renew",
    **properties: Any,
) -> None:
    """A dead letter in the DLQ with the headers ``Publisher.dead_letter`` writes."""
    if isinstance(body, dict):
        message_id = message_id or body.get("command_id")
        body = json.dumps(body).encode()
    headers: dict[str, Any] = {
        H.REASON: reason,
        H.REASON_MESSAGE: reason_message or f"{reason} for the test",
        H.ATTEMPTS: attempts,
        H.FIRST_FAILURE: failed_at.isoformat(),
        H.LAST_FAILURE: failed_at.isoformat(),
        **properties.pop("headers", {}),
    }
    if routing_key is not None:
        headers[H.ORIGINAL_ROUTING_KEY] = routing_key
    message = aio_pika.Message(
        body,
        headers=headers,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        **properties,
    )
    await channel.default_exchange.publish(message, routing_key=DLQ)


@dataclass
class Broker:
    connection: AbstractConnection
    channel: AbstractChannel
    tap: AbstractQueue
    topology: Topology

    async def dead_letter(
        self,
        body: dict[str, Any] | bytes,
        *,
        message_id: str | None = None,
        reason: str = "RELAY.RETRIES_EXHAUSTED",
        attempts: int = 8,
        failed_at: datetime = FAILED_AT,
        routing_key: str | None = "command.renew",
        **properties: Any,
    ) -> None:
        """Put a dead letter in the DLQ with the headers ``Publisher.dead_letter`` writes."""
        await put_dead_letter(
            self.channel,
            body,
            message_id=message_id,
            reason=reason,
            attempts=attempts,
            failed_at=failed_at,
            routing_key=routing_key,
            **properties,
        )

    async def dlq_count(self) -> int:
        queue = await self.channel.declare_queue(DLQ, passive=True)
        return queue.declaration_result.message_count or 0

    async def settled(self, count: int) -> None:
        """Wait until the DLQ holds ``count`` ready messages: requeues (nacks, closed channels)
        reach the queue asynchronously, after the client has moved on."""

        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
        while (found := await self.dlq_count()) != count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the DLQ holds {found} messages, not {count}")
            await asyncio.sleep(0.02)

    async def dlq(self, count: int) -> list[Seen]:
        """What the DLQ holds, in order, once it holds ``count``; everything stays in place."""
        await self.settled(count)
        channel = await self.connection.channel(publisher_confirms=False)
        queue = await channel.declare_queue(DLQ, passive=True)
        seen: list[Seen] = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            seen.append(Seen.of(message))
        await channel.close()  # requeues everything read
        await self.settled(count)
        return seen

    async def tapped(self) -> list[Seen]:
        """Every copy published to ``bss.commands`` since the last call."""
        seen: list[Seen] = []
        while (message := await self.tap.get(no_ack=True, fail=False)) is not None:
            seen.append(Seen.of(message))
        return seen


@pytest.fixture
async def broker(connection: AbstractConnection) -> AsyncIterator[Broker]:
    channel = await connection.channel(publisher_confirms=True)
    topology = Topology(unique_name("replay", length=8))
    declared = await declare(channel, topology)
    await declared.dlq.purge()
    tap = await channel.declare_queue(f"{topology.prefix}.tap", exclusive=True)
    await tap.bind(COMMANDS_EXCHANGE, routing_key="#")
    yield Broker(connection, channel, tap, topology)
    await channel.queue_delete(tap.name)
    for name in [topology.work_queue, *(topology.delay_queue(ms) for ms in DELAY_LEVELS_MS)]:
        await channel.queue_delete(name)
    await declared.dlq.purge()
    await channel.close()
