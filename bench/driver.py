"""The benchmark's own side of the broker and the sandbox: it publishes commands, timestamps the
events that come back, and reads the sandbox's request log and counters.

Times are ``time.monotonic()`` for publish → event latencies (one process, one clock) and
``time.time()`` where they are compared with the sandbox's request log (``at`` is epoch seconds;
same machine, same clock).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from service.broker.topology import (
    COMMANDS_EXCHANGE,
    DELAY_LEVELS_MS,
    EVENTS_EXCHANGE,
    Topology,
    declare,
)

__all__ = ["Batch", "Driver", "SandboxControl", "driver"]

PUBLISH_CHUNK = 500  # publishes awaited together (each confirmed by the broker)
TAP_PREFETCH = 1000


@dataclass(eq=False)
class Batch:
    """Commands whose events a scenario waits for; filled in by the ``Driver``'s event tap."""

    ids: frozenset[str]
    arrived: dict[str, float] = field(default_factory=dict)  # command_id -> monotonic
    outcomes: Counter[str] = field(default_factory=Counter)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # the first event came

    def record(self, command_id: str, outcome: str, at: float) -> None:
        if outcome == "deferred":
            return  # progress only (CONTRACT §8): the terminal event comes later
        if command_id in self.arrived:
            return  # a duplicate announcement; the first event is the one that counts
        self.arrived[command_id] = at
        self.started.set()
        self.outcomes[outcome] += 1
        if len(self.arrived) == len(self.ids):
            self.done.set()

    @property
    def first(self) -> float:
        return min(self.arrived.values())

    @property
    def last(self) -> float:
        return max(self.arrived.values())

    def failed(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome != "succeeded")

    async def wait(self, timeout_s: float) -> bool:
        """True when every event arrived within ``timeout_s``."""
        try:
            await asyncio.wait_for(self.done.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class Driver:
    """Publisher and event tap on one connection to the benchmark's vhost."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        commands: AbstractExchange,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._commands = commands
        self._batches: dict[str, Batch] = {}
        # every event seen, in arrival order (the fields the estimate and start measures need)
        self.events: list[dict[str, Any]] = []

    def expect(self, ids: Iterable[str]) -> Batch:
        batch = Batch(frozenset(ids))
        for command_id in batch.ids:
            self._batches[command_id] = batch
        return batch

    def forget(self, batch: Batch) -> None:
        for command_id in batch.ids:
            self._batches.pop(command_id, None)

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        at = time.monotonic()
        event = json.loads(message.body)
        self.events.append(
            {
                "command_id": event.get("command_id"),
                "outcome": event.get("outcome"),
                "occurred_at": event.get("occurred_at"),
                "expected_start_at": event.get("expected_start_at"),
                "seen_at": time.time(),
            }
        )
        batch = self._batches.get(event.get("command_id") or "")
        if batch is not None:
            batch.record(event["command_id"], event.get("outcome", "?"), at)

    def _message(self, command_id: str, body: bytes) -> aio_pika.Message:
        return aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=command_id,
        )

    async def publish(self, command_id: str, body: bytes, *, queue: str | None = None) -> float:
        """Publish one command (to ``bss.commands``, or straight to ``queue``); returns the
        monotonic instant just before publishing."""
        at = time.monotonic()
        message = self._message(command_id, body)
        if queue is None:
            await self._commands.publish(message, routing_key="command.set_auto_renew")
        else:
            await self._channel.default_exchange.publish(message, routing_key=queue)
        return at

    async def publish_many(
        self, commands: Sequence[tuple[str, bytes]], *, queue: str | None = None
    ) -> None:
        for start in range(0, len(commands), PUBLISH_CHUNK):
            chunk = commands[start : start + PUBLISH_CHUNK]
            await asyncio.gather(*(self.publish(cid, body, queue=queue) for cid, body in chunk))

    async def declare_service_queues(self, prefix: str) -> None:
        """The service's own topology, so commands published before it starts wait for it."""
        await declare(self._channel, Topology(prefix))

    async def delete_service_queues(self, prefix: str) -> None:
        topology = Topology(prefix)
        for name in (topology.work_queue, *map(topology.delay_queue, DELAY_LEVELS_MS)):
            await self._channel.queue_delete(name)

    async def declare_queue(self, name: str) -> None:
        await self._channel.declare_queue(name, durable=True)

    async def delete_queue(self, name: str) -> None:
        await self._channel.queue_delete(name)

    async def consumers(self, queue: str) -> int:
        """Consumers on ``queue`` now (0 when it does not exist yet)."""
        channel = await self._connection.channel()  # a failed passive declare closes it
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        finally:
            if not channel.is_closed:
                await channel.close()
        return int(declared.declaration_result.consumer_count or 0)


@asynccontextmanager
async def driver(amqp_url: str) -> AsyncIterator[Driver]:
    connection: AbstractRobustConnection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        commands = await channel.declare_exchange(
            COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        events = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        tap_channel = await connection.channel()
        await tap_channel.set_qos(prefetch_count=TAP_PREFETCH)
        tap = await tap_channel.declare_queue(exclusive=True, auto_delete=True)
        await tap.bind(events, routing_key="#")
        running = Driver(connection, channel, commands)
        await tap.consume(running.on_event, no_ack=True)
        yield running


class SandboxControl:
    """The sandbox's unsigned ``/_sandbox/`` routes."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self._http = http

    async def _json(self, method: str, route: str, body: Any = None, **params: str) -> Any:
        async with self._http.request(
            method, f"{self.url}/_sandbox/{route}", json=body, params=params or None
        ) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def requests(self, since: float | None = None) -> list[dict[str, Any]]:
        params = {"since": repr(since)} if since is not None else {}
        rows: list[dict[str, Any]] = await self._json("GET", "requests", **params)
        return rows

    async def counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = await self._json("GET", "counters")
        return counters

    async def reset(self) -> None:
        await self._json("POST", "reset")

    async def set_limits(self, limits: dict[str, float | None]) -> None:
        await self._json("PUT", "limits", limits)

    async def throttled(self, api: str) -> int:
        per_api = (await self.counters()).get("per_api", {})
        return int(per_api.get(api, {}).get("throttled", 0))
