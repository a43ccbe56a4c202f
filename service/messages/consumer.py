"""Intake from the work queue into tasks this process owns; the stall detector; the drain.

aiormq runs each delivery callback in a task of the *channel*, cancelled if the channel closes.
The callback here only hands the message to a task of our own ``TaskGroup``, so a reconnect
never cancels a command half-way through an API call, and shutdown can wait for it.

The consumer owns its channel. Every delivered message is tracked until it is settled
(``Inflight``): that gives the age of the oldest unsettled message, and the stall detector. A
message that stays unsettled past ``stall_s`` while nothing it waits for is legitimate (it is
being settled, or its settlement failed with its channel alive) holds a prefetch slot that only
a new channel frees: the consumer then reports it on ``/healthz`` and re-establishes its
channel, which returns every unacknowledged message to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from service.messages.pipeline import Pipeline
from service.messages.publisher import BROKER_ERRORS
from service.messages.settlement import Settled
from service.telemetry.metrics import Metrics

__all__ = ["Consumer", "ConsumerOptions", "Inflight", "Phase"]

log = structlog.get_logger(__name__)

DELAY_POLL_S = 5.0
# Opening a channel on a connection being restored raises a plain RuntimeError in aio-pika.
CHANNEL_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, RuntimeError)


class Phase(StrEnum):
    WORKING = "working"  # reading, claiming, running the handler: waits are bounded elsewhere
    STUCK = "stuck"  # settlement could not reach the broker while the channel lives


@dataclass(slots=True)
class _Entry:
    message: AbstractIncomingMessage
    delivered_at: float
    phase: Phase


class Inflight:
    """Every delivered message not settled yet, by identity."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[int, _Entry] = {}

    def begin(self, message: AbstractIncomingMessage) -> None:
        self._entries[id(message)] = _Entry(message, self._clock(), Phase.WORKING)

    def end(self, message: AbstractIncomingMessage, how: Settled) -> None:
        if how is Settled.STUCK:
            self._entries[id(message)].phase = Phase.STUCK
        else:
            self._entries.pop(id(message), None)

    def forget_stuck(self) -> int:
        """The channel holding the stuck messages is closed: the broker has them back."""
        stuck = [key for key, e in self._entries.items() if e.phase is Phase.STUCK]
        for key in stuck:
            del self._entries[key]
        return len(stuck)

    def __len__(self) -> int:
        return len(self._entries)

    def oldest_age(self) -> float:
        if not self._entries:
            return 0.0
        return self._clock() - min(e.delivered_at for e in self._entries.values())

    def stuck(self, older_than_s: float) -> int:
        """Messages whose settlement failed and that have been held longer than the bound."""
        now = self._clock()
        return sum(
            1
            for e in self._entries.values()
            if e.phase is Phase.STUCK and now - e.delivered_at >= older_than_s
        )


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """Which queues the consumer reads and watches, and how."""

    work_queue: str
    prefetch: int
    delay_queues: tuple[str, ...] = ()  # counted for the metrics (commands waiting there)
    stall_s: float = 30.0  # unsettled this long while its channel lives: a new channel


Pulled = tuple[AbstractIncomingMessage, Callable[[], None]]
"""A message pulled from a parking line, and what to call once it is settled."""


class Consumer:
    def __init__(
        self,
        *,
        connection: AbstractRobustConnection,
        pipeline: Pipeline,
        tasks: asyncio.TaskGroup,
        metrics: Metrics,
        options: ConsumerOptions,
        pulled: asyncio.Queue[Pulled],
    ) -> None:
        self._connection = connection
        self._pulled = pulled
        self._pipeline = pipeline
        self._tasks = tasks
        self._metrics = metrics
        self._queue_name = options.work_queue
        self._prefetch = options.prefetch
        self._stall_s = options.stall_s
        self._delay_queues = options.delay_queues
        self.waiting_in_delay_queues = 0  # read from the broker every DELAY_POLL_S
        self.inflight = Inflight()
        self._running: set[asyncio.Task[None]] = set()
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._stopping = False
        self._freed_at: float | None = None  # when stuck messages last forced a new channel
        self.reestablished = 0

    @property
    def tasks_running(self) -> int:
        return len(self._running)

    @property
    def consuming(self) -> bool:
        return self._tag is not None and not self._stopping

    def problems(self) -> list[str]:
        """Why this consumer is not healthy now (empty: it is)."""
        found = []
        if not self.consuming:
            found.append("not consuming from the work queue")
        stuck = self.inflight.stuck(0)
        freed = self._freed_at is not None and time.monotonic() - self._freed_at < 2 * self._stall_s
        if stuck or freed:  # stays reported between rounds, so a probe cannot miss it
            found.append(
                f"messages could not be settled ({stuck} held now): the broker does not take "
                "their copies or events; the consuming channel is re-established every "
                f"{self._stall_s:g} s to hand them back"
            )
        return found

    async def start(self) -> None:
        """Open a channel of our own and consume the work queue on it."""
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        queue = await channel.declare_queue(self._queue_name, passive=True)
        self._tag = await queue.consume(self._on_message, no_ack=False)
        self._channel, self._queue = channel, queue
        log.info("consuming", queue=self._queue_name)

    async def reestablish(self) -> None:
        """Close the consuming channel (the broker requeues every message unacknowledged on
        it: a task still working on one finds its channel closed and leaves it) and consume
        on a new one."""
        old, self._channel, self._tag = self._channel, None, None
        if old is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await old.close()
        freed = self.inflight.forget_stuck()
        self.reestablished += 1
        log.warning("consumer_reestablished", freed=freed)
        await self.start()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:  # delivered between cancel and its answer: leave it to the broker
            await self._pipeline.hand_back(message)
            return
        self.inflight.begin(message)
        task = self._tasks.create_task(self._handle(message))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _handle(
        self, message: AbstractIncomingMessage, done: Callable[[], None] | None = None
    ) -> None:
        """One message's task: it ends with the message settled, abandoned to redelivery, or
        (never silently) stuck."""
        how = Settled.ABANDONED  # cancelled (shutdown): unacked, so redelivered
        try:
            how = await self._pipeline.process(message)
        finally:
            self.inflight.end(message, how)
            if done is not None:
                done()

    async def take_pulled(self) -> None:
        """Messages pulled from parking lines (``service.messages.lines``) go the way of
        consumed ones: a task of their own each, tracked until settled. A background loop."""
        while True:
            message, done = await self._pulled.get()
            if self._stopping:  # back to its line, undecided
                await self._pipeline.hand_back(message)
                done()
                continue
            self.inflight.begin(message)
            task = self._tasks.create_task(self._handle(message, done))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    # -- background loops, owned by the runtime's TaskGroup ---------------------------------

    async def watch(self) -> None:
        """The stall detector, the age of the oldest unsettled message, and how many commands
        wait in the delay queues (parked or retrying, all replicas together: the broker's
        count)."""
        interval = min(1.0, self._stall_s / 4)
        polled = 0.0
        while True:
            await asyncio.sleep(interval)
            self._metrics.oldest_unsettled.set(self.inflight.oldest_age())
            if time.monotonic() - polled >= DELAY_POLL_S:
                polled = time.monotonic()
                await self._count_delayed()
            if self.inflight.stuck(self._stall_s) == 0 or self._stopping:
                continue
            self._freed_at = time.monotonic()
            try:
                await self.reestablish()
            except Exception:  # the broker is away: the next round tries again
                log.exception("consumer_reestablish_failed")

    async def _count_delayed(self) -> None:
        try:
            channel = await self._connection.channel()
            try:
                total = 0
                for name in self._delay_queues:
                    queue = await channel.declare_queue(name, passive=True)
                    total += queue.declaration_result.message_count or 0
            finally:
                await channel.close()
        except CHANNEL_ERRORS as exc:  # the broker is away (aio-pika raises a
            # plain RuntimeError for a channel on a closed connection): tried next round
            log.info("delay_count_skipped", error=repr(exc))
            return
        self.waiting_in_delay_queues = total

    async def verify(self, *_: Any) -> None:
        """After a reconnect: check the broker really has our consumer again (aio-pika#231),
        else consume on a new channel."""
        try:
            channel = await self._connection.channel()
            try:
                queue = await channel.declare_queue(self._queue_name, passive=True)
                count = queue.declaration_result.consumer_count
            finally:
                await channel.close()
        except CHANNEL_ERRORS as exc:  # lost again meanwhile (aio-pika raises
            # a plain RuntimeError for a channel on a closed connection): checked next time
            log.info("reconnect_check_skipped", error=repr(exc))
            return
        log.info("reconnected", queue=self._queue_name, consumers=count)
        if count == 0 and not self._stopping:
            log.warning("consumer_missing_after_reconnect")
            await self.reestablish()

    # -- shutdown ---------------------------------------------------------------------------

    async def stop_intake(self) -> None:
        self._stopping = True
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except BROKER_ERRORS as exc:  # the channel is gone already: nothing to cancel
                log.info("cancel_skipped", error=repr(exc))
            self._tag = None

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for commands in progress, then cancel the rest: their
        messages stay unacked and are redelivered; the store says what they had started."""
        pending = set(self._running)
        if pending:
            log.info("draining", inflight=len(pending), grace_s=grace_s)
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("drain_timeout_cancelled", cancelled=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
