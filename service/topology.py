"""Broker topology: the contract's fixed names plus the service's own queues.

Declared idempotently, with the same arguments every time, at start and after every reconnect;
``deploy/rabbitmq-definitions.json`` states the same topology for pre-provisioned brokers (a
test keeps the two equal).

::

    producers ──command.<type>──▶ bss.commands (topic) ──#──▶ <prefix>.work ──▶ service
    service ──<type>.<outcome>──▶ bss.events (topic)
    service ──(default exchange)──▶ bss.commands.dlq            dead letters, kept for replay
    service ──(default exchange)──▶ <prefix>.delay.<ms>  ──TTL, dead-letter──▶ <prefix>.work

The work queue is bound with ``#``: the command's ``type`` field is authoritative, so a message
with an odd routing key is still read (and rejected if unusable) rather than silently dropped.
Delays use one queue per fixed TTL, never per-message TTL: RabbitMQ expires messages only at the
head of a queue, so mixed per-message TTLs would hold short delays behind long ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

__all__ = [
    "COMMANDS_EXCHANGE",
    "DELAY_LEVELS_MS",
    "DLQ",
    "EVENTS_EXCHANGE",
    "Declared",
    "Topology",
    "declare",
]

COMMANDS_EXCHANGE = "bss.commands"
EVENTS_EXCHANGE = "bss.events"
DLQ = "bss.commands.dlq"
# Fixed delay steps, milliseconds: a delay is rounded down to a step (see Topology.delay_for).
DELAY_LEVELS_MS = (250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 300_000)


@dataclass(frozen=True, slots=True)
class Topology:
    prefix: str = "bss-relay"

    @property
    def work_queue(self) -> str:
        return f"{self.prefix}.work"

    def delay_queue(self, level_ms: int) -> str:
        return f"{self.prefix}.delay.{level_ms}"

    def delay_arguments(self, level_ms: int) -> dict[str, Any]:
        return {
            "x-message-ttl": level_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.work_queue,
        }

    @staticmethod
    def delay_for(seconds: float, *, at_least: bool = False) -> int:
        """The largest delay step not above ``seconds`` (the smallest step at least); with
        ``at_least``, the smallest step not below it (the largest step at most)."""
        wanted = seconds * 1000
        if at_least:
            return next(
                (level for level in DELAY_LEVELS_MS if level >= wanted), DELAY_LEVELS_MS[-1]
            )
        fitting = [level for level in DELAY_LEVELS_MS if level <= wanted]
        return fitting[-1] if fitting else DELAY_LEVELS_MS[0]


@dataclass(frozen=True, slots=True)
class Declared:
    commands: AbstractExchange
    events: AbstractExchange
    work: AbstractQueue
    dlq: AbstractQueue


async def declare(channel: AbstractChannel, topology: Topology) -> Declared:
    commands = await channel.declare_exchange(
        COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlq = await channel.declare_queue(DLQ, durable=True)
    work = await channel.declare_queue(topology.work_queue, durable=True)
    await work.bind(commands, routing_key="#")
    for level in DELAY_LEVELS_MS:
        await channel.declare_queue(
            topology.delay_queue(level),
            durable=True,
            arguments=topology.delay_arguments(level),
        )
    return Declared(commands=commands, events=events, work=work, dlq=dlq)


def definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """The same topology as a RabbitMQ definitions document (``deploy/rabbitmq-definitions.json``),
    for operators who pre-provision brokers; a test keeps the checked-in file equal to this."""
    queue = {"vhost": vhost, "durable": True, "auto_delete": False}
    return {
        "exchanges": [
            {
                "name": name,
                "vhost": vhost,
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for name in (COMMANDS_EXCHANGE, EVENTS_EXCHANGE)
        ],
        "queues": [
            {"name": DLQ, **queue, "arguments": {}},
            {"name": topology.work_queue, **queue, "arguments": {}},
            *(
                {
                    "name": topology.delay_queue(ms),
                    **queue,
                    "arguments": topology.delay_arguments(ms),
                }
                for ms in DELAY_LEVELS_MS
            ),
        ],
        "bindings": [
            {
                "source": COMMANDS_EXCHANGE,
                "vhost": vhost,
                "destination": topology.work_queue,
                "destination_type": "queue",
                "routing_key": "#",
                "arguments": {},
            }
        ],
    }
