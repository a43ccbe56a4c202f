"""Intake from the work queue into tasks this process owns, and the drain on shutdown.

aiormq runs each delivery callback in a task of the *channel*, cancelled if the channel closes.
The callback here only hands the message to a task of our own ``TaskGroup``, so a reconnect
never cancels a command half-way through an API call, and shutdown can wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from handlers.ports import CommandStore
from service.processor import Processor

__all__ = ["Consumer"]

log = structlog.get_logger(__name__)


class Consumer:
    def __init__(
        self,
        *,
        queue: AbstractQueue,
        processor: Processor,
        tasks: asyncio.TaskGroup,
        store: CommandStore,
        owner: str,
        lease: timedelta,
    ) -> None:
        self._queue = queue
        self._processor = processor
        self._tasks = tasks
        self._store = store
        self._owner = owner
        self._lease = lease
        self._inflight: set[asyncio.Task[None]] = set()
        self._tag: str | None = None
        self._stopping = False

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def consuming(self) -> bool:
        return self._tag is not None and not self._stopping

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message, no_ack=False)
        log.info("consuming", queue=self._queue.name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:  # delivered between cancel and its answer: leave it to the broker
            await message.nack(requeue=True)
            return
        task = self._tasks.create_task(self._guarded(message))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _guarded(self, message: AbstractIncomingMessage) -> None:
        """Input never crashes the service: anything unexpected is settled, not raised."""
        try:
            await self._processor.process(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the per-message boundary: settled below
            log.exception("processing_crashed")
            with contextlib.suppress(Exception):
                await self._processor.settle_crash(message, exc)

    async def heartbeat(self) -> None:
        """Keep the store leases of the commands we are working on alive."""
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            held = set(self._processor.holding)
            if held:
                try:
                    await self._store.renew_leases(self._owner, held, lease=self._lease)
                except Exception:  # a missed beat is retried next interval
                    log.exception("lease_renewal_failed", commands=len(held))

    async def stop_intake(self) -> None:
        self._stopping = True
        if self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
            self._tag = None

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for commands in progress, then cancel the rest: their
        messages stay unacked and are redelivered; the store says what they had started."""
        pending = set(self._inflight)
        if pending:
            log.info("draining", inflight=len(pending), grace_s=grace_s)
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("drain_timeout_cancelled", cancelled=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
