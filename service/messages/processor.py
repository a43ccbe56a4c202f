"""One command message, from bytes to a decision; ``service.messages.settlement`` applies the
decision.

For a command that runs (guarantees 1-3 of the contract)::

    read ─▶ park? ─▶ claim in the store ─▶ handler (API calls, journaled) ─▶ Finish(event)

Deciding never acks or publishes, and never raises for a message: whatever goes wrong becomes a
settlement too (a bug is retried later, and after ``max_attempts`` rejected and dead-lettered).

"Retry, give up, reconcile or wait" is one table, ``_AFTER_ERROR``: the error's disposition
(``handlers.errors``) picks the rule, and the attempts left decide between retrying and giving up.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from aio_pika.abc import AbstractIncomingMessage
from structlog.contextvars import bind_contextvars

from handlers.errors import Disposition, LeaseLost, RelayError, Retryable, StoreUnavailable
from handlers.ports import BssApi, Completed, HandlerContext
from schemas.commands import Command
from schemas.events import Event, Outcome
from service.api.client import CallScope
from service.broker.headers import H, failed_deliveries, requested_before, requester
from service.guardrails.gate import PolicyGate
from service.messages.fingerprint import claim_details, fingerprint
from service.messages.intake import Rejection, read_command
from service.messages.journal import StoreJournal
from service.messages.kinds import KINDS, primary_call
from service.messages.outcomes import deferred_event, event_for
from service.messages.publisher import DeadLetterReason
from service.messages.settlement import (
    Delay,
    Finish,
    Reannounce,
    Reject,
    Settled,
    Settlement,
    Settler,
)
from service.pacing.parking import Park, parking, ticket_from_headers, ticket_header
from service.pacing.scheduler import FairScheduler
from service.store.errors import store_call
from service.store.locks import LocalLocks, RenewalLocks
from service.store.types import ClaimOutcome, CommandStore, StoredCommand
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import consume_span

__all__ = ["Processor", "RetryPolicy", "ScopedApi"]

log = structlog.get_logger(__name__)

MIN_WAIT_S = 0.25  # the shortest delay step
TAKEOVER_RECHECK_S = 1.0  # a redelivered command busy elsewhere asks again after this long


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base_s: float = 1.0
    max_s: float = 300.0
    wait_s: float = 2.0  # how long a command waits for the store before it is tried again

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform in [base, base * 2**(attempt-1)]."""
        ceiling = min(self.max_s, self.base_s * 2 ** max(0, attempt - 1))
        return random.uniform(min(self.base_s, ceiling), ceiling)


class ScopedApi(BssApi, Protocol):
    def scoped(self, scope: CallScope) -> BssApi:
        """This API for one command (see ``CallScope``)."""
        ...


@dataclass(slots=True)
class Delivery:
    """What deciding one message learned: the command (once read) and the claim it holds."""

    message: AbstractIncomingMessage
    command: Command | None = None
    claimed: str | None = None  # command id this process holds a lease on
    scope: CallScope = field(default_factory=CallScope)

    @property
    def failed_before(self) -> int:
        return failed_deliveries(self.message)

    @property
    def requested_by(self) -> str | None:
        # the broker-validated user_id, also on the service's own delayed copies (issue 12)
        return requester(self.message)


class Processor:
    def __init__(
        self,
        *,
        store: CommandStore,
        settler: Settler,
        apis: Mapping[str, ScopedApi],
        scheduler: FairScheduler,
        owner: str,
        lease: timedelta,
        retry: RetryPolicy,
        max_body_bytes: int,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        guard: PolicyGate | None = None,
        deferred_after_s: float = 10.0,
        renewals: RenewalLocks | None = None,
    ) -> None:
        self._store = store
        self._settler = settler
        self._apis = apis
        self._scheduler = scheduler
        self._owner = owner
        self._lease = lease
        self._retry = retry
        self._max_body = max_body_bytes
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._deferred_after_s = deferred_after_s
        self._guard = guard
        self.holding: set[str] = set()  # command ids this process holds a lease on
        self._renewals = renewals or LocalLocks()

    def now(self) -> datetime:
        return self._clock()

    async def process(self, message: AbstractIncomingMessage) -> Settled:
        """Decide and settle one message. Call it in a task of its own (the consumer does):
        the log context it binds is that task's, and ends with it."""
        # TRACING HOOK (issue 13): the command's CONSUMER span, from consume to settle.
        with consume_span(message):
            return await self._process(message)

    async def _process(self, message: AbstractIncomingMessage) -> Settled:
        delivery = Delivery(message)
        how = Settled.ABANDONED
        try:
            decision = await self.decide(delivery)
            how = await self._settler.settle(message, decision)
        except Exception as exc:  # settling itself failed: the last resort, never silent
            log.exception("settlement_crashed")
            how = await self._settler.last_resort(message, exc)
        finally:
            if delivery.claimed is not None:  # the lease is kept alive until settled
                self.holding.discard(delivery.claimed)
                if how is Settled.ABANDONED:
                    # Its channel closed: the redelivery (to this process or another) should
                    # not wait out our lease. A finished command keeps it until published.
                    await self._settler.release(delivery.claimed)
        return how

    async def decide(self, delivery: Delivery) -> Settlement:
        """What to do with the message. Never raises for a message (only when cancelled)."""
        try:
            read = read_command(delivery.message.body, max_bytes=self._max_body)
            if isinstance(read, Rejection):
                bind_contextvars(command_id=read.command_id, type=read.type)
                return Reject(read)
            delivery.command = read
            bind_contextvars(
                command_id=read.command_id,
                type=read.type,
                partner_id=read.partner_id,
                customer_id=read.customer_id,
                retries=delivery.failed_before,
            )
            return await self._decide_command(delivery, read)
        except Exception as exc:  # a bug, not input: the per-message boundary
            log.exception("processing_crashed")
            return self._crashed(delivery, exc)

    async def _decide_command(self, delivery: Delivery, command: Command) -> Settlement:
        found = self._api_for(command)
        key = None if isinstance(found, Rejection) else primary_call(command, found[0])
        # Parking needs no claim: a backlog is read and parked without touching the store.
        # A command some replica already took in (redelivered after it crashed or lost its
        # connection, or back from waiting out its claim) is not parked again: its takeover
        # must not queue behind its customer's backlog.
        headers = delivery.message.headers or {}
        admitted = delivery.message.redelivered or H.ADMITTED in headers
        if key is not None and not admitted:
            ticket = ticket_from_headers(headers)
            try:
                park = await parking(self._scheduler, key, ticket)
            except RelayError as exc:  # a shared ticket needs the store, which is away
                return self._after_error(delivery, command, exc, attempts=0, uncertain=False)
            if park is not None:
                self._metrics.inc(self._metrics.parked, key[0])
                log.debug("command_parked", api=key[0], wait_s=round(park.seconds, 2))
                return self._park(delivery, command, park)
        # Counted as held in the same step as the decision not to park (no await between),
        # so a burst cannot slip more than the hold window past it.
        with self._scheduler.holding(*key) if key is not None else contextlib.nullcontext():
            try:
                return await self._claim_and_run(delivery, command, found)
            except RelayError as exc:  # the store could not be reached for the claim
                return self._after_error(delivery, command, exc, attempts=0, uncertain=False)

    def _park(self, delivery: Delivery, command: Command, park: Park) -> Delay:
        """Park on the broker; a command expected to wait longer than ``deferred_after_s``
        for its turn tells its producer once (the header keeps it from saying so again)."""
        headers: dict[str, Any] = dict(ticket_header(park.ticket))
        progress = None
        expected = datetime.fromtimestamp(park.ticket, UTC)
        told = H.DEFERRED in (delivery.message.headers or {})
        if not told and (expected - self.now()).total_seconds() > self._deferred_after_s:
            progress = deferred_event(
                command,
                now=self.now(),
                expected_start_at=expected,
                requested_by=delivery.requested_by,
            )
            headers[H.DEFERRED] = "1"
        return Delay(park.seconds, "park", headers=headers, progress=progress)

    async def _claim_and_run(
        self, delivery: Delivery, command: Command, found: tuple[str, ScopedApi] | Rejection
    ) -> Settlement:
        # Claimed before any check that could reject: a finished command is only ever
        # re-announced, so a changed configuration or a passed deadline cannot give it a
        # second terminal event.
        details = claim_details(
            command,
            delivery.requested_by,
            partner_id=None if isinstance(found, Rejection) else found[0],
        )
        claim = await store_call(
            self._store.claim(
                command.command_id, command.type, owner=self._owner, lease=self._lease, **details
            )
        )
        dead = claim.record.owner
        if claim.outcome is ClaimOutcome.BUSY and dead and await self._renewals.owner_gone(dead):
            # its holder died (its liveness lock is free): take it over now, not after the
            # lease; reconciliation before any money-moving retry is the claim's as ever
            log.info("command_taken_over", dead_owner=dead)
            await store_call(self._store.release(command.command_id, owner=dead))
            claim = await store_call(
                self._store.claim(
                    command.command_id,
                    command.type,
                    owner=self._owner,
                    lease=self._lease,
                    **details,
                )
            )
        if claim.outcome is ClaimOutcome.FINISHED:
            return self._reannounce(delivery, command, claim.record)
        if claim.outcome is ClaimOutcome.BUSY:
            return self._wait_for_owner(claim.record, delivery)
        delivery.claimed = command.command_id
        self.holding.add(command.command_id)
        try:
            if command.deadline is not None and command.deadline <= self.now():
                found = _rejection(command, "RELAY.DEADLINE_PASSED", "deadline")
            if isinstance(found, Rejection):
                return Reject(found, release=command.command_id)
            return await self._run(delivery, command, found, claim.record)
        except Exception as exc:
            log.exception("processing_crashed")
            return self._crashed(delivery, exc)

    def _reannounce(
        self, delivery: Delivery, command: Command, record: StoredCommand
    ) -> Reannounce:
        conflict = None
        if record.fingerprint is not None and record.fingerprint != fingerprint(command):
            log.warning("command_id_conflict")
            conflict = DeadLetterReason(
                "RELAY.ID_CONFLICT",
                f"command_id {command.command_id!r} was already used for a different command "
                "(type, partner or payload); this one was not carried out",
                delivery.failed_before,
                self.now(),
            )
        return Reannounce(record, conflict=conflict)

    def _wait_for_owner(self, record: StoredCommand, delivery: Delivery) -> Delay:
        """Someone else holds the command: come back when its lease would have run out, once
        (a live owner keeps renewing it and finishes meanwhile; a dead one is taken over).
        It comes back marked admitted (``x-relay-admitted``): its turn had come, and it is
        not parked behind its customer's backlog again. A command the broker redelivered
        (its consumer went away) comes back within a second instead: its owner may have died
        a moment ago, before the database noticed, and its liveness lock will say so
        (``owner_gone``) long before the lease runs out."""
        left = MIN_WAIT_S
        if record.lease_until is not None:
            left = max(MIN_WAIT_S, (record.lease_until - self.now()).total_seconds())
        if delivery.message.redelivered or H.ADMITTED in (delivery.message.headers or {}):
            left = min(left, TAKEOVER_RECHECK_S)
        log.info("command_busy_elsewhere", wait_s=round(left, 2))
        return Delay(left, "busy", headers={H.ADMITTED: "1"})

    def _api_for(self, command: Command) -> tuple[str, ScopedApi] | Rejection:
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
        delivery: Delivery,
        command: Command,
        found: tuple[str, ScopedApi],
        record: StoredCommand,
    ) -> Settlement:
        partner_id, api = found
        scope = delivery.scope
        journal = StoreJournal.from_claim(
            self._store,
            record,
            owner=self._owner,
            clock=self._clock,
            scope=scope,
            requests_before=requested_before(delivery.message),
        )
        # Never started before: the deadline holds until the first API call is sent.
        scope.deadline = command.deadline if journal.attempts == 0 else None
        context = HandlerContext(
            command_id=command.command_id,
            api=api.scoped(scope),
            clock=_Clock(self._clock),
            journal=journal,
        )
        kind = KINDS[command.type]
        # --- guard hook (issue 12): the policy's verdict and the money reservations, after the
        # claim, inside the renewal lock, before the handler; raises PolicyDenied (a REJECT).
        guarded = (
            self._guard.admitted(
                command,
                requested_by=delivery.requested_by,
                partner_id=partner_id,
                uncertain=journal.uncertain_since is not None,
            )
            if self._guard is not None
            else contextlib.nullcontext()
        )
        try:
            async with self._exclusive(command, scope), guarded:
                done: Completed = await kind.handler(command, context)
        except RelayError as exc:
            uncertain = kind.money_moving and journal.uncertain_since is not None
            return self._after_error(
                delivery, command, exc, attempts=journal.attempts, uncertain=uncertain
            )
        outcome = Outcome.PARTIAL if done.partial else Outcome.SUCCEEDED
        log.info("command_finished", outcome=outcome, attempts=journal.attempts)
        return Finish(
            command.command_id,
            event_for(
                command,
                outcome=outcome,
                now=self.now(),
                attempts=journal.attempts,
                result=done.result,
                requested_by=delivery.requested_by,
            ),
            issued_at=command.issued_at,
        )

    @contextlib.asynccontextmanager
    async def _exclusive(self, command: Command, scope: CallScope) -> AsyncIterator[None]:
        """Renewals of one customer run one at a time, across every replica that shares the
        store (guarantee 7): an uncertain renewal is reconciled by the customer's renewal
        orders since its call, which only stays decidable when no other renewal of that
        customer ran in the same window. The lock is checked again right before each
        money-moving request: one lost with its connection is not relied on."""
        if command.type != "renew" or command.customer_id is None:
            yield
            return
        async with self._renewals.hold(command.customer_id) as held:
            record_call = scope.before_mutation

            async def checked() -> None:
                held.check()
                if record_call is not None:
                    await record_call()

            scope.before_mutation = checked
            yield

    # -- the one table: what an error does to the command ---------------------------------

    def _after_error(
        self,
        delivery: Delivery,
        command: Command,
        exc: RelayError,
        *,
        attempts: int,
        uncertain: bool,
    ) -> Settlement:
        rule = _AFTER_ERROR[exc.disposition]
        return rule(self, delivery, command, exc, attempts, uncertain)

    def _reject_error(
        self, d: Delivery, command: Command, exc: RelayError, _a: int, _u: bool
    ) -> Settlement:
        return Reject(_rejection(command, exc.code, exc.message), release=d.claimed)

    def _end(
        self, d: Delivery, command: Command, exc: RelayError, attempts: int, _u: bool
    ) -> Settlement:
        """FAIL ends `failed`; UNKNOWN ends `unknown`, with a copy kept for a person."""
        outcome = Outcome.FAILED if exc.disposition is Disposition.FAIL else Outcome.UNKNOWN
        log.warning("command_ended", outcome=outcome, code=exc.code, status=exc.http_status)
        event = self._event(d, command, outcome, attempts, exc)
        if outcome is Outcome.FAILED:
            return Finish(command.command_id, event, issued_at=command.issued_at)
        reason = DeadLetterReason(exc.code, exc.message, d.failed_before, self.now())
        return Finish(command.command_id, event, dead_letter=reason, issued_at=command.issued_at)

    def _retry_or_give_up(
        self, d: Delivery, command: Command, exc: RelayError, attempts: int, uncertain: bool
    ) -> Settlement:
        """RETRY and RECONCILE (the handler reconciled and found no effect): again later
        while attempts are left; then `failed`, or `unknown` if a money-moving call may have
        happened (nobody can say it did not spend)."""
        retries = d.failed_before + 1
        reason = DeadLetterReason(exc.code, exc.message, retries, self.now())
        if retries < self._retry.max_attempts:
            delay, wait_out = self._retry.backoff(retries), False
            if isinstance(exc, Retryable) and exc.retry_after and exc.retry_after > delay:
                delay, wait_out = exc.retry_after, True  # sooner would fail the same way
            log.warning("command_retry_scheduled", code=exc.code, retries=retries)
            return Delay(
                delay,
                "retry",
                reason=reason,
                headers=_requests_header(attempts),
                at_least=wait_out,
                release=d.claimed,
            )
        code, outcome = (
            ("RELAY.OUTCOME_UNKNOWN", Outcome.UNKNOWN)
            if uncertain
            else ("RELAY.RETRIES_EXHAUSTED", Outcome.FAILED)
        )
        final = RelayError(
            code,
            f"gave up after {retries} attempts; last error {exc.code}: {exc.message}",
            http_status=exc.http_status,
            request_id=exc.request_id,
        )
        log.error("command_gave_up", code=code, last_code=exc.code, retries=retries)
        event = self._event(d, command, outcome, attempts, final)
        return Finish(command.command_id, event, dead_letter=reason, issued_at=command.issued_at)

    def _wait(
        self, d: Delivery, command: Command, exc: RelayError, attempts: int, _u: bool
    ) -> Settlement:
        """WAIT: the store is unreachable, or the lease was lost: no attempt is spent, the
        claim is not given back (it cannot be, or it is not ours any more)."""
        if isinstance(exc, StoreUnavailable):
            self._metrics.store_error()
        seconds = self._lease.total_seconds() if isinstance(exc, LeaseLost) else self._retry.wait_s
        log.warning("command_waiting", code=exc.code, wait_s=seconds)
        return Delay(seconds, "wait", headers=_requests_header(attempts))

    def _event(
        self,
        d: Delivery,
        command: Command,
        outcome: Outcome,
        attempts: int,
        error: RelayError,
    ) -> Event:
        return event_for(
            command,
            outcome=outcome,
            now=self.now(),
            attempts=attempts,
            error=error,
            requested_by=d.requested_by,
        )

    def _crashed(self, delivery: Delivery, exc: BaseException) -> Settlement:
        """A bug, not input: keep the message and try it later; when it keeps failing, answer
        it with a ``rejected`` event and keep it in the dead-letter queue."""
        code, text = "RELAY.INTERNAL", f"internal error: {type(exc).__name__}"
        retries = delivery.failed_before + 1
        if retries < self._retry.max_attempts:
            reason = DeadLetterReason(code, text, retries, self.now())
            backoff = self._retry.backoff(retries)
            return Delay(backoff, "crash", reason=reason, release=delivery.claimed)
        command = delivery.command
        rejection = Rejection(code, text) if command is None else _rejection(command, code, text)
        return Reject(rejection, release=delivery.claimed)


_Rule = Callable[[Processor, Delivery, Command, RelayError, int, bool], Settlement]

# The one table. Every disposition is named; a new one without a rule fails at import.
_AFTER_ERROR: Mapping[Disposition, _Rule] = {
    Disposition.REJECT: Processor._reject_error,
    Disposition.FAIL: Processor._end,
    Disposition.UNKNOWN: Processor._end,
    Disposition.RETRY: Processor._retry_or_give_up,
    Disposition.RECONCILE: Processor._retry_or_give_up,
    Disposition.WAIT: Processor._wait,
}
assert set(_AFTER_ERROR) == set(Disposition), "every disposition needs a settlement rule"


def _requests_header(attempts: int) -> dict[str, int]:
    return {H.REQUESTS: attempts}


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
