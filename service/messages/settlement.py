"""Step *settle*: what happens to a delivered message, decided once as a value, applied here.

The pipeline's steps *decide* and return one of these values; ``Settler.settle`` *applies* it.
No other code acks, nacks or publishes on a message's behalf.

==============  =============================================================================
``Finish``      a claimed command's terminal event: store it (the first stored event wins),
                dead-letter a copy if asked, publish the event, mark it published, ack
``Reannounce``  a finished ``command_id`` again: its stored event re-announced with
                ``duplicate: true`` (or as itself, if it never went out); with ``conflict``
                the message re-used the id for a different command and a copy is dead-lettered
``Reject``      the command is unusable: give back its claim if one was taken (``Leases``),
                dead-letter a copy, publish a ``rejected`` event, ack
``Delay``       back to the work queue later through a delay queue (retry, wait out a lease
                or the store): give back the claim if asked (``Leases``), publish the copy,
                note where it is (``why``), ack
``Park``        into its parking line (``service.messages.lines``) until its bucket can serve
                it or its customer is resumed: give back the claim if asked, publish the copy
                to the line's queue, note where it is, ack
``Redeliver``   hand it back to the broker now (``nack`` with requeue): the service is stopping
==============  =============================================================================

Order of effects (guarantee 2): store bookkeeping, then every publish with confirms, then
``mark_published``, then the ack. A crash anywhere before the ack redelivers the message, and
the store says how far it got.

Guarantee 6 (every delivered message is settled), whatever happens meanwhile:

* Before each broker step the message's own channel is checked. A message whose channel closed
  is never settled on another channel: settling stops (``Settled.ABANDONED``) and the broker
  redelivers it; the store makes the redelivery finish the job.
* A publish that fails while the message's channel lives waits for the publishing channel to be
  restored and tries again, within ``SettleRetry.broker_s``. Beyond that the message is
  ``STUCK``: it holds a prefetch slot that only a new consuming channel frees, which the
  consumer's stall detector does (and ``/healthz`` says so meanwhile).
* The store unreachable while storing a terminal event: the message waits in a delay queue
  instead; an uncertain money-moving call is then reconciled by the redelivery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

from handlers.errors import StoreUnavailable
from schemas.events import EVENT_ADAPTER, Event, Outcome, routing_key
from service.broker.headers import failed_deliveries, requester
from service.messages.intake import Rejection, valid_command_id
from service.messages.leases import Leases
from service.messages.lines import LineKey, Lines
from service.messages.outcomes import announce_again, rejection_event
from service.messages.publisher import BROKER_ERRORS, DeadLetterReason, Publisher, Unroutable
from service.messages.whereabouts import Noted, Whereabouts
from service.store.errors import STORE_ERRORS, store_call
from service.store.steering import SteeringStore
from service.store.types import CommandStore, StoredCommand
from service.telemetry.metrics import Metrics, age_s

__all__ = [
    "Books",
    "Delay",
    "Finish",
    "Park",
    "Reannounce",
    "Redeliver",
    "Reject",
    "SettleRetry",
    "Settled",
    "Settlement",
    "Settler",
]

log = structlog.get_logger(__name__)

RETRY_PAUSE_S = 0.2  # between tries of a publish whose channel is being restored


@dataclass(frozen=True, slots=True)
class Finish:
    command_id: str
    event: Event
    dead_letter: DeadLetterReason | None = None  # also keep a copy (e.g. `unknown`: a person looks)
    issued_at: datetime | None = None  # the command's, when the message has no timestamp


@dataclass(frozen=True, slots=True)
class Reannounce:
    record: StoredCommand
    conflict: DeadLetterReason | None = None  # the message re-used the id for another command


@dataclass(frozen=True, slots=True)
class Reject:
    rejection: Rejection
    release: str | None = None  # the command id whose claim is given back first


@dataclass(frozen=True, slots=True)
class Delay:
    seconds: float
    why: str  # for logs and metrics: retry, park, busy, wait, crash
    reason: DeadLetterReason | None = None  # failure headers (and an attempt spent), or none
    headers: Mapping[str, Any] = field(default_factory=dict)
    at_least: bool = False  # never sooner than ``seconds`` (else: the step not above it)
    release: str | None = None
    command_id: str | None = None  # noted as delayed until it comes back (``why``)


@dataclass(frozen=True, slots=True)
class Park:
    """Into the parking line ``line``, whose place it took when it was decided (the line's
    count, with its deadline); ``noted`` says where and until when (``why``)."""

    line: LineKey
    noted: Noted
    headers: Mapping[str, Any] = field(default_factory=dict)
    release: str | None = None


@dataclass(frozen=True, slots=True)
class Redeliver:
    why: str


Settlement = Finish | Reannounce | Reject | Delay | Park | Redeliver


@dataclass(frozen=True, slots=True)
class Books:
    """Where the settler writes down what it did besides the broker: the clock it stamps
    with, the parking lines, where commands are (``why``) and the dead-letter records."""

    clock: Callable[[], datetime]
    lines: Lines
    whereabouts: Whereabouts
    steering: SteeringStore


@dataclass(frozen=True, slots=True)
class _Who:
    """A dead letter's command, for its record in the store (``why``)."""

    command_id: str | None
    type: str | None
    customer_id: str | None


@dataclass(frozen=True, slots=True)
class SettleRetry:
    """How long settling waits out what it depends on."""

    broker_s: float = 30.0  # a publish keeps being tried while the broker reconnects
    store_s: float = 2.0  # the store away while storing an event: the message waits this long


class Settled(StrEnum):
    SETTLED = "settled"  # acked or nacked: the broker has its answer
    ABANDONED = "abandoned"  # its channel closed first: the broker redelivers it
    STUCK = "stuck"  # the broker could not be reached in time while its channel lives


class DeliveryLost(Exception):
    """The message's channel closed before it was settled."""


class SettlementFailed(Exception):
    """The broker did not take a publish within the retry bound; the channel still lives."""


def delivery_alive(message: AbstractIncomingMessage) -> bool:
    try:
        message.channel  # noqa: B018 - raises once the delivery's channel has closed
    except BROKER_ERRORS:
        return False
    return True


class Settler:
    """Applies settlements. One per process; every message's settlement passes here."""

    def __init__(
        self,
        *,
        store: CommandStore,
        publisher: Publisher,
        leases: Leases,
        books: Books,
        metrics: Metrics,
        retry: SettleRetry = SettleRetry(),
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._leases = leases
        self._books = books
        self._clock = books.clock
        self._metrics = metrics
        self._retry = retry

    async def settle(self, message: AbstractIncomingMessage, decision: Settlement) -> Settled:
        """Apply ``decision``. Returns how it ended; raises only on a bug of its own (the
        consumer's last resort then dead-letters the raw message)."""
        try:
            try:
                await self._apply(message, decision)
            except StoreUnavailable as exc:
                self._metrics.store_error()
                log.warning("store_unavailable_at_settlement", error=exc.message)
                await self._apply(message, Delay(self._retry.store_s, "wait"))
        except DeliveryLost:
            log.info("settlement_abandoned", why="channel closed; the broker redelivers it")
            self._metrics.inc(self._metrics.settlements, Settled.ABANDONED)
            return Settled.ABANDONED
        except SettlementFailed as exc:
            log.error("settlement_stuck", error=repr(exc.__cause__ or exc))  # noqa: TRY400
            self._metrics.inc(self._metrics.settlements, Settled.STUCK)
            return Settled.STUCK
        self._metrics.inc(self._metrics.settlements, Settled.SETTLED)
        return Settled.SETTLED

    async def _apply(self, message: AbstractIncomingMessage, decision: Settlement) -> None:
        match decision:
            case Finish():
                await self._finish(message, decision)
            case Reannounce():
                await self._reannounce(message, decision)
            case Reject():
                await self._reject(message, decision)
            case Delay():
                await self._delay(message, decision)
            case Park():
                await self._park(message, decision)
            case Redeliver():
                await self._broker(message, lambda: message.nack(requeue=True))

    async def _finish(self, message: AbstractIncomingMessage, decision: Finish) -> None:
        body = decision.event.model_dump_json().encode()
        stored = await store_call(
            self._store.finish(decision.command_id, owner=self._leases.owner, event=body)
        )
        # Another attempt may have finished first: its event is the one, ours is dropped.
        event = decision.event if stored == body else EVENT_ADAPTER.validate_json(stored)
        if decision.dead_letter is not None:
            who = _Who(decision.command_id, event.type, event.customer_id)
            await self._dead_letter(message, decision.dead_letter, who)
        await self._send_event(message, event, stored, issued_at=decision.issued_at)
        await self._mark_published(decision.command_id)
        await self._ack(message)

    async def _reannounce(self, message: AbstractIncomingMessage, decision: Reannounce) -> None:
        record = decision.record
        stored = record.event
        if stored is None:  # pragma: no cover - a finished row always has its event
            raise AssertionError(f"finished command {record.command_id} has no stored event")
        if not record.published:  # the owner crashed before the event went out: as itself
            await self._send_event(message, EVENT_ADAPTER.validate_json(stored), stored)
            await self._mark_published(record.command_id)
        if decision.conflict is not None:
            await self._dead_letter(message, decision.conflict, _Who(None, None, None))
        if record.published or decision.conflict is not None:
            event = announce_again(stored, conflict=decision.conflict is not None)
            log.info("command_duplicate", conflict=event.conflict, original=event.outcome)
            await self._send_event(message, event)
        await self._ack(message)

    async def _reject(self, message: AbstractIncomingMessage, decision: Reject) -> None:
        rejection = decision.rejection
        await self._leases.release(decision.release)
        log.warning("command_rejected", code=rejection.code, reason=rejection.message)
        now = self._clock()
        reason = DeadLetterReason(
            rejection.code, rejection.message, failed_deliveries(message), now
        )
        who = _Who(rejection.command_id, rejection.type, rejection.customer_id)
        await self._dead_letter(message, reason, who)
        event = rejection_event(rejection, now=now, requested_by=requester(message))
        await self._send_event(message, event)
        await self._ack(message)

    async def _delay(self, message: AbstractIncomingMessage, decision: Delay) -> None:
        await self._leases.release(decision.release)
        await self._broker(
            message,
            lambda: self._publisher.delay(
                message,
                seconds=decision.seconds,
                reason=decision.reason,
                extra_headers=dict(decision.headers),
                at_least=decision.at_least,
            ),
        )
        self._metrics.inc(self._metrics.delayed, decision.why)
        if decision.command_id is not None:
            retry_at = self._clock().timestamp() + decision.seconds
            self._books.whereabouts.note(
                Noted(decision.command_id, "delayed", None, None, None, None, time.time(), retry_at)
            )
        await self._ack(message)

    async def _park(self, message: AbstractIncomingMessage, decision: Park) -> None:
        lines = self._books.lines
        await self._leases.release(decision.release)
        queued_at = time.time()

        async def to_line() -> None:
            nonlocal queued_at
            queue = await lines.queue(decision.line)
            # its place: when it goes in (the line is first in, first out; taken at the
            # publish, not the decision, which a busy replica makes long before)
            queued_at = time.time()
            headers = dict(decision.headers)
            try:
                await self._publisher.park(message, queue=queue, extra_headers=headers)
            except Unroutable:  # deleted (it was empty) since it was declared here: again
                queue = await lines.queue(decision.line, again=True)
                await self._publisher.park(message, queue=queue, extra_headers=headers)

        try:
            await self._broker(message, to_line)
        except BaseException:
            lines.unparked(decision.line)
            raise
        lines.landed(decision.line)
        self._books.whereabouts.note(replace(decision.noted, queued_at=queued_at))
        self._metrics.inc(self._metrics.parked, decision.line[0])
        self._metrics.inc(self._metrics.delayed, "park")
        await self._ack(message)

    # -- steps -------------------------------------------------------------------------------

    async def _mark_published(self, command_id: str) -> None:
        try:
            await store_call(self._store.mark_published(command_id))
        except StoreUnavailable as exc:
            self._metrics.store_error()
            # The event is out; a later copy of the command re-sends it as itself once the
            # lease has passed. Holding the message back would not make that any better.
            log.warning("mark_published_failed", error=exc.message)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, reason: DeadLetterReason, who: _Who
    ) -> None:
        await self._broker(message, lambda: self._publisher.dead_letter(message, reason))
        command_id = who.command_id or _safe_id(message)
        if command_id is None:
            return
        try:  # for `why`; the copy in the DLQ is what counts
            await self._books.steering.dead_lettered(
                command_id,
                type=who.type,
                customer_id=who.customer_id,
                reason=reason.code,
                message=reason.message[:1000],
            )
        except STORE_ERRORS as exc:
            log.warning("dead_letter_not_recorded", error=repr(exc))

    async def _send_event(
        self,
        message: AbstractIncomingMessage,
        event: Event,
        body: bytes | None = None,
        *,
        issued_at: datetime | None = None,
    ) -> None:
        payload = body if body is not None else event.model_dump_json().encode()
        await self._broker(
            message,
            lambda: self._publisher.event(
                payload,
                routing_key=routing_key(event),
                event_id=event.event_id,
                correlation_id=message.correlation_id or event.command_id,
                reply_to=message.reply_to,
            ),
        )
        if not event.duplicate and event.outcome is not Outcome.DEFERRED:
            self._metrics.inc(self._metrics.commands, event.type, event.outcome)
            start = _utc(message.timestamp) or issued_at
            if start is not None:
                self._metrics.observe_command(event.type, event.outcome, age_s(start))

    async def _broker(
        self, message: AbstractIncomingMessage, step: Callable[[], Awaitable[Any]]
    ) -> None:
        """One broker step for ``message``, only while its channel lives; a failed publish is
        tried again once the publishing channel is back, within ``retry.broker_s``."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._retry.broker_s
        while True:
            if not delivery_alive(message):
                raise DeliveryLost
            try:
                await step()
            except BROKER_ERRORS as exc:
                if not delivery_alive(message):
                    raise DeliveryLost from exc
                if loop.time() >= give_up_at:
                    why = f"broker step failed for {self._retry.broker_s:g} s"
                    raise SettlementFailed(why) from exc
                log.warning("broker_step_retry", error=repr(exc))
                await asyncio.sleep(RETRY_PAUSE_S)
            else:
                return

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.ack()
        except BROKER_ERRORS as exc:
            raise DeliveryLost from exc

    async def last_resort(self, message: AbstractIncomingMessage, exc: BaseException) -> Settled:
        """Processing and its crash path both failed: keep the raw message in the dead-letter
        queue with the error, answer it with a ``rejected`` event if anything of it can be
        read, and ack. Never raises: what cannot be done is logged and reported as STUCK."""
        text = f"internal error: {type(exc).__name__}: {exc}"[:1000]
        reason = DeadLetterReason("RELAY.INTERNAL", text, failed_deliveries(message), self._clock())
        try:
            await self._dead_letter(message, reason, _Who(_safe_id(message), None, None))
            try:
                rejection = Rejection("RELAY.INTERNAL", text, command_id=_safe_id(message))
                event = rejection_event(rejection, now=reason.at, requested_by=requester(message))
                await self._send_event(message, event)
            except (DeliveryLost, SettlementFailed):
                raise
            except Exception:  # the copy is kept: that is what matters; say what failed
                log.exception("last_resort_event_failed")
            await self._ack(message)
        except DeliveryLost:
            return Settled.ABANDONED
        except Exception:
            log.exception("last_resort_failed")
            self._metrics.inc(self._metrics.settlements, Settled.STUCK)
            return Settled.STUCK
        self._metrics.inc(self._metrics.settlements, "last_resort")
        return Settled.SETTLED


def _utc(moment: datetime | None) -> datetime | None:
    """aio-pika reads the AMQP timestamp as a naive datetime; it is UTC by definition."""
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _safe_id(message: AbstractIncomingMessage) -> str | None:
    value = message.message_id
    return value if isinstance(value, str) and valid_command_id(value) else None
