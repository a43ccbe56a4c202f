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

Queue types (``RELAY_QUEUE_TYPE``): ``classic`` declares the queues without a type argument, as
always. ``quorum`` declares the work queue, every delay queue and the DLQ as quorum queues
(replicated on a cluster, RabbitMQ 3.10+) and moves messages between them with at-least-once
dead-lettering (a message leaves its queue only once the target confirmed it; RabbitMQ requires
``x-overflow: reject-publish`` for that). The work queue gets a delivery limit: a message
delivered :data:`WORK_DELIVERY_LIMIT` times without being settled (it crashes the process
every time) is dead-lettered to the DLQ by the broker, with ``x-death`` reason
``delivery_limit``. A queue that exists with other arguments (the other type) cannot be
re-declared: :func:`declare` raises :class:`TopologyMismatch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

__all__ = [
    "COMMANDS_EXCHANGE",
    "DELAY_LEVELS_MS",
    "DLQ",
    "EVENTS_EXCHANGE",
    "WORK_DELIVERY_LIMIT",
    "Declared",
    "QueueType",
    "Topology",
    "TopologyMismatch",
    "declare",
    "definitions",
]

COMMANDS_EXCHANGE = "bss.commands"
EVENTS_EXCHANGE = "bss.events"
DLQ = "bss.commands.dlq"
# Fixed delay steps, milliseconds: a delay is rounded down to a step (see Topology.delay_for).
DELAY_LEVELS_MS = (250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 300_000)
# Quorum work queue: deliveries of one message (redeliveries after a crash, a lost connection
# or a requeue included) before the broker dead-letters it to the DLQ. High enough that node
# losses and restarts never reach it; low enough that a message that kills the process every
# time stops doing so.
WORK_DELIVERY_LIMIT = 20

QueueType = Literal["classic", "quorum"]


class TopologyMismatch(RuntimeError):
    """A queue or exchange exists on the broker with other arguments than the service declares,
    most often a queue of the other type: the service cannot start until an operator acts."""


@dataclass(frozen=True, slots=True)
class Topology:
    prefix: str = "bss-relay"
    queue_type: QueueType = "classic"

    @property
    def work_queue(self) -> str:
        return f"{self.prefix}.work"

    def delay_queue(self, level_ms: int) -> str:
        return f"{self.prefix}.delay.{level_ms}"

    def _dead_letter_to(self, queue: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
        }
        if self.queue_type == "quorum":
            arguments |= {
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",  # at-least-once dead-lettering requires it
            }
        return arguments

    def _typed(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    def delay_arguments(self, level_ms: int) -> dict[str, Any]:
        return {**self._typed(), "x-message-ttl": level_ms, **self._dead_letter_to(self.work_queue)}

    def work_arguments(self) -> dict[str, Any]:
        if self.queue_type == "classic":
            return {}
        return {
            **self._typed(),
            "x-delivery-limit": WORK_DELIVERY_LIMIT,
            **self._dead_letter_to(DLQ),
        }

    def dlq_arguments(self) -> dict[str, Any]:
        return self._typed()

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
    """Declare everything; raise :class:`TopologyMismatch` if the broker has any of it with
    other arguments (the channel is closed by the broker then)."""
    commands = await _exchange(channel, COMMANDS_EXCHANGE)
    events = await _exchange(channel, EVENTS_EXCHANGE)
    dlq = await _queue(channel, topology, DLQ, topology.dlq_arguments())
    work = await _queue(channel, topology, topology.work_queue, topology.work_arguments())
    await work.bind(commands, routing_key="#")
    for level in DELAY_LEVELS_MS:
        delay = topology.delay_queue(level)
        await _queue(channel, topology, delay, topology.delay_arguments(level))
    return Declared(commands=commands, events=events, work=work, dlq=dlq)


async def _exchange(channel: AbstractChannel, name: str) -> AbstractExchange:
    try:
        return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    except ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"exchange {name!r} exists on the broker with other properties than a durable "
            f"topic exchange ({exc}); delete it or fix it to match deploy/"
        ) from exc


async def _queue(
    channel: AbstractChannel, topology: Topology, name: str, arguments: dict[str, Any]
) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except ChannelPreconditionFailed as exc:
        other = "classic" if topology.queue_type == "quorum" else "quorum"
        raise TopologyMismatch(
            f"queue {name!r} exists on the broker with other arguments than "
            f"RELAY_QUEUE_TYPE={topology.queue_type} declares ({exc}). "
            f"If it is a {other} queue, either run with RELAY_QUEUE_TYPE={other}, or migrate "
            "the queues to the new type first (README: 'Moving between classic and quorum "
            "queues'): a queue cannot change its type in place."
        ) from exc


def definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """The same topology as a RabbitMQ definitions document, for operators who pre-provision
    brokers: ``deploy/rabbitmq-definitions.json`` (classic) and
    ``deploy/rabbitmq-definitions-quorum.json``; a test keeps the checked-in files equal to this."""
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
            {"name": DLQ, **queue, "arguments": topology.dlq_arguments()},
            {"name": topology.work_queue, **queue, "arguments": topology.work_arguments()},
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
