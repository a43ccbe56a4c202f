"""One command message, from bytes to a settled delivery. The only place messages are settled.

Order of effects for a command that runs (guarantees 1-3 of the contract)::

    claim in the store ─▶ handler (API calls, journaled) ─▶ store.finish(event)
        ─▶ publish event (confirmed) ─▶ store.mark_published ─▶ ack

A crash anywhere before the ack redelivers the message: a finished command is then only
published again (as itself if it never went out, else with ``duplicate: true``); an
interrupted API call is reconciled by the handler because the store says it was in flight.

"Retry, give up or reconcile" is decided once, in ``_settle_error``, from the error's
disposition (``handlers.errors``) and the attempts left.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from aio_pika.abc import AbstractIncomingMessage
from structlog.contextvars import bind_contextvars

from handlers import HANDLERS
from handlers.errors import Disposition, RelayError, Retryable
from handlers.ports import (
    BssApi,
    ClaimOutcome,
    CommandStore,
    Completed,
    HandlerContext,
    StoredCommand,
)
from schemas.commands import (
    Command,
    RenewCommand,
)
from schemas.events import EVENT_ADAPTER, Event, Outcome, routing_key
from service.admission import parking, primary_call, ticket_from_headers, ticket_header
from service.client import START_DEADLINE
from service.intake import Rejection, read_command
from service.journal import StoreJournal
from service.metrics import Metrics
from service.outcomes import announce_again, event_for, rejection_event
from service.publisher import DeadLetterReason, H, Publisher
from service.scheduler import FairScheduler

__all__ = ["Processor", "RetryPolicy"]

log = structlog.get_logger(__name__)

MONEY_MOVING = frozenset({"renew", "issue_coupon"})
BUSY_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base_s: float = 1.0
    max_s: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform in [base, base * 2**(attempt-1)]."""
        ceiling = min(self.max_s, self.base_s * 2 ** max(0, attempt - 1))
        return random.uniform(min(self.base_s, ceiling), ceiling)


def _retries(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(H.ATTEMPTS, 0)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


class Processor:
    def __init__(
        self,
        *,
        store: CommandStore,
        publisher: Publisher,
        apis: Mapping[str, BssApi],
        scheduler: FairScheduler,
        owner: str,
        lease: timedelta,
        retry: RetryPolicy,
        max_body_bytes: int,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._apis = apis
        self._scheduler = scheduler
        self._owner = owner
        self._lease = lease
        self._retry = retry
        self._max_body = max_body_bytes
        self._metrics = metrics or Metrics()
        self._clock = clock
        self.holding: set[str] = set()  # command ids this process holds a lease on
        self._renew_locks: dict[str, asyncio.Lock] = {}
        self._renew_waiting: dict[str, int] = {}

    def now(self) -> datetime:
        return self._clock()

    async def process(self, message: AbstractIncomingMessage) -> None:
        """Settle one message. Call it in a task of its own (the consumer does): the log
        context it binds is that task's, and ends with it."""
        read = read_command(message.body, max_bytes=self._max_body)
        if isinstance(read, Rejection):
            bind_contextvars(command_id=read.command_id, type=read.type)
            await self._reject(message, read)
            return
        bind_contextvars(
            command_id=read.command_id,
            type=read.type,
            partner_id=read.partner_id,
            customer_id=read.customer_id,
            retries=_retries(message),
        )
        await self._process_command(message, read)

    async def _process_command(self, message: AbstractIncomingMessage, command: Command) -> None:
        found = self._api_for(command)
        key = None if isinstance(found, Rejection) else primary_call(command, found[0])
        # Parking needs no claim: a backlog is read and parked without touching the store.
        if key is not None and await self._parked(message, key):
            return
        # Counted as held in the same step as the decision not to park (no await between),
        # so a burst cannot slip more than the hold window past it.
        with self._scheduler.holding(*key) if key is not None else contextlib.nullcontext():
            await self._claim_and_admit(message, command, found)

    async def _claim_and_admit(
        self,
        message: AbstractIncomingMessage,
        command: Command,
        found: tuple[str, BssApi] | Rejection,
    ) -> None:
        # Claimed before any check that could reject: a finished command is only ever
        # re-announced, so a changed configuration or a passed deadline cannot give it a
        # second terminal event.
        claim = await self._store.claim(
            command.command_id, command.type, owner=self._owner, lease=self._lease
        )
        if claim.outcome is ClaimOutcome.FINISHED:
            await self._announce_finished(message, claim.record)
            return
        if claim.outcome is ClaimOutcome.BUSY:
            log.info("command_busy_elsewhere")
            await self._publisher.delay(message, seconds=BUSY_RETRY_S, reason=None)
            await self._ack(message)
            return
        self.holding.add(command.command_id)
        try:
            await self._admit(message, command, claim.record, found)
        finally:
            self.holding.discard(command.command_id)

    async def _admit(
        self,
        message: AbstractIncomingMessage,
        command: Command,
        record: StoredCommand,
        found: tuple[str, BssApi] | Rejection,
    ) -> None:
        """The command is ours: reject it (giving the claim back) or run it."""
        if command.deadline is not None and command.deadline <= self.now():
            found = _rejection(command, "RELAY.DEADLINE_PASSED", "deadline")
        if isinstance(found, Rejection):
            await self._store.release(command.command_id, owner=self._owner)
            await self._reject(message, found)
            return
        _, api = found
        journal = StoreJournal.from_claim(
            self._store, record, owner=self._owner, clock=self._clock, retries=_retries(message)
        )
        await self._run(message, command, api, journal)

    async def _parked(self, message: AbstractIncomingMessage, key: tuple[str, str]) -> bool:
        """Park the command on the broker when admission says so, so it does not sit in the
        prefetch window ahead of other keys' commands."""
        park = await parking(self._scheduler, key, ticket_from_headers(message.headers or {}))
        if park is None:
            return False
        await self._publisher.delay(
            message, seconds=park.seconds, reason=None, extra_headers=ticket_header(park.ticket)
        )
        await self._ack(message)
        self._metrics.inc(self._metrics.parked, key[0])
        log.debug("command_parked", api=key[0], parent_uid=key[1], wait_s=round(park.seconds, 2))
        return True

    def _api_for(self, command: Command) -> tuple[str, BssApi] | Rejection:
        if command.partner_id is None and len(self._apis) == 1:
            return next(iter(self._apis.items()))
        api = self._apis.get(command.partner_id or "")
        if api is None or command.partner_id is None:
            why = "partner_id is required: several partners are configured"
            if command.partner_id is not None:
                why = f"partner {command.partner_id!r} is not configured"
            return _rejection(command, "RELAY.UNKNOWN_PARTNER", why)
        return command.partner_id, api

    async def _run(
        self,
        message: AbstractIncomingMessage,
        command: Command,
        api: BssApi,
        journal: StoreJournal,
    ) -> None:
        context = HandlerContext(
            command_id=command.command_id, api=api, clock=_Clock(self._clock), journal=journal
        )
        # Never started before: the deadline holds until the first API call is sent.
        token = START_DEADLINE.set(command.deadline if journal.attempts == 0 else None)
        exclusive = (
            self._one_renewal_at_a_time(command)
            if isinstance(command, RenewCommand)
            else contextlib.nullcontext()
        )
        try:
            async with exclusive:
                done: Completed = await HANDLERS[command.type](command, context)
        except RelayError as exc:
            uncertain = command.type in MONEY_MOVING and journal.uncertain_since is not None
            await self._settle_error(message, command, exc, journal.attempts, uncertain=uncertain)
            return
        finally:
            START_DEADLINE.reset(token)
        outcome = Outcome.PARTIAL if done.partial else Outcome.SUCCEEDED
        event = event_for(
            command, outcome=outcome, now=self.now(), attempts=journal.attempts, result=done.result
        )
        log.info("command_finished", outcome=outcome, attempts=journal.attempts)
        await self._finish(message, command.command_id, event)

    @contextlib.asynccontextmanager
    async def _one_renewal_at_a_time(self, command: RenewCommand) -> AsyncIterator[None]:
        """Renewals of one customer run one at a time in this process: an uncertain renewal
        is reconciled by the customer's renewal orders since its call, which only stays
        decidable when no other renewal of ours for that customer ran in the same window."""
        key = command.payload.customer_id
        lock = self._renew_locks.setdefault(key, asyncio.Lock())
        self._renew_waiting[key] = self._renew_waiting.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._renew_waiting[key] -= 1
            if self._renew_waiting[key] == 0:
                del self._renew_waiting[key], self._renew_locks[key]

    async def _settle_error(
        self,
        message: AbstractIncomingMessage,
        command: Command,
        exc: RelayError,
        attempts: int,
        *,
        uncertain: bool,
    ) -> None:
        now = self.now()
        if exc.disposition is Disposition.REJECT:
            await self._store.release(command.command_id, owner=self._owner)
            await self._reject(message, _rejection(command, exc.code, exc.message))
            return
        if exc.disposition in (Disposition.FAIL, Disposition.UNKNOWN):
            outcome = Outcome.FAILED if exc.disposition is Disposition.FAIL else Outcome.UNKNOWN
            log.warning("command_ended", outcome=outcome, code=exc.code, status=exc.http_status)
            event = event_for(command, outcome=outcome, now=now, attempts=attempts, error=exc)
            if outcome is Outcome.UNKNOWN:  # a person must look: keep it for inspection
                await self._publisher.dead_letter(
                    message, DeadLetterReason(exc.code, exc.message, _retries(message), now)
                )
            await self._finish(message, command.command_id, event)
            return
        retries = _retries(message) + 1
        reason = DeadLetterReason(exc.code, exc.message, retries, now)
        if retries < self._retry.max_attempts:
            delay, wait_out = self._retry.backoff(retries), False
            if isinstance(exc, Retryable) and exc.retry_after and exc.retry_after > delay:
                delay, wait_out = exc.retry_after, True  # sooner would fail the same way
            await self._store.release(command.command_id, owner=self._owner)
            level = await self._publisher.delay(
                message, seconds=delay, reason=reason, at_least=wait_out
            )
            log.warning("command_retry_scheduled", code=exc.code, retries=retries, delay_ms=level)
            await self._ack(message)
            return
        await self._give_up(message, command, exc, attempts, reason, uncertain=uncertain)

    async def _give_up(
        self,
        message: AbstractIncomingMessage,
        command: Command,
        exc: RelayError,
        attempts: int,
        reason: DeadLetterReason,
        *,
        uncertain: bool,
    ) -> None:
        """Out of attempts. A money-moving command whose call may have happened (the store
        says in flight) ends ``unknown``, never ``failed``: nobody can say it did not spend."""
        code, outcome = (
            ("RELAY.OUTCOME_UNKNOWN", Outcome.UNKNOWN)
            if uncertain
            else ("RELAY.RETRIES_EXHAUSTED", Outcome.FAILED)
        )
        final = RelayError(
            code,
            f"gave up after {reason.attempts} attempts; last error {exc.code}: {exc.message}",
            http_status=exc.http_status,
            request_id=exc.request_id,
        )
        log.error("command_gave_up", code=code, last_code=exc.code, retries=reason.attempts)
        event = event_for(command, outcome=outcome, now=reason.at, attempts=attempts, error=final)
        await self._publisher.dead_letter(message, reason)
        await self._finish(message, command.command_id, event)

    async def _finish(
        self, message: AbstractIncomingMessage, command_id: str, event: Event
    ) -> None:
        body = event.model_dump_json().encode()
        stored = await self._store.finish(command_id, owner=self._owner, event=body)
        if stored == body:  # ours is the stored event: publish the bytes we have
            await self._send_event(message, event, body)
        else:  # another attempt finished first: its event is the one
            await self._publish(message, stored)
        await self._store.mark_published(command_id)
        await self._ack(message)

    async def _announce_finished(
        self, message: AbstractIncomingMessage, record: StoredCommand
    ) -> None:
        command_id, stored = record.command_id, record.event
        if stored is None:  # pragma: no cover - a finished row always has its event
            raise AssertionError(f"finished command {command_id} has no stored event")
        if record.published:
            event = announce_again(stored)
            log.info("command_duplicate", original_outcome=event.outcome)
            await self._send_event(message, event)
        else:  # finished, but the crash came before the event went out: send it as itself
            await self._publish(message, stored)
            await self._store.mark_published(command_id)
        await self._ack(message)

    async def _publish(self, message: AbstractIncomingMessage, stored: bytes) -> None:
        await self._send_event(message, EVENT_ADAPTER.validate_json(stored), stored)

    async def _send_event(
        self, message: AbstractIncomingMessage, event: Event, body: bytes | None = None
    ) -> None:
        if not event.duplicate:
            self._metrics.inc(self._metrics.commands, event.type, event.outcome)
        await self._publisher.event(
            body if body is not None else event.model_dump_json().encode(),
            routing_key=routing_key(event),
            event_id=event.event_id,
            correlation_id=message.correlation_id or event.command_id,
            reply_to=message.reply_to,
        )

    async def _reject(self, message: AbstractIncomingMessage, rejection: Rejection) -> None:
        log.warning("command_rejected", code=rejection.code, reason=rejection.message)
        event = rejection_event(rejection, now=self.now())
        reason = DeadLetterReason(rejection.code, rejection.message, _retries(message), self.now())
        await self._publisher.dead_letter(message, reason)
        await self._send_event(message, event)
        await self._ack(message)

    async def settle_crash(self, message: AbstractIncomingMessage, exc: BaseException) -> None:
        """A bug, not input: keep the message, retry it later; when it keeps failing, answer
        it with a ``rejected`` event and keep it in the dead-letter queue."""
        code, text = "RELAY.INTERNAL", f"internal error: {type(exc).__name__}"
        retries = _retries(message) + 1
        if retries < self._retry.max_attempts:
            reason = DeadLetterReason(code, text, retries, self.now())
            await self._publisher.delay(
                message, seconds=self._retry.backoff(retries), reason=reason
            )
            await self._ack(message)
            return
        read = read_command(message.body, max_bytes=self._max_body)
        rejection = read if isinstance(read, Rejection) else _rejection(read, code, text)
        await self._reject(message, rejection)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        await message.ack()


class _Clock:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()


def _rejection(command: Command, code: str, message: str) -> Rejection:
    if code == "RELAY.DEADLINE_PASSED":
        message = f"deadline {command.deadline} passed before the command could start"
    return Rejection(
        code=code,
        message=message,
        command_id=command.command_id,
        type=command.type,
        partner_id=command.partner_id,
        customer_id=command.customer_id,
    )
