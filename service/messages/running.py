"""Step *run*: the claimed command's handler, and the outcome it comes to.

In this order (CONTRACT guarantees 3 and 7):

1. A command past its deadline, or for a partner that is not configured, is rejected (it was
   claimed first, so a finished command is only ever re-announced).
2. A renewal holds its customer's renewal lock (``RenewalLocks.hold``): renewals of one
   customer run one at a time across every replica that shares the store, so an uncertain
   renewal stays decidable from the customer's renewal orders since its call.
3. The policy gate (``PolicyGate.admitted``): the policy's verdict and the money reservations,
   inside the lock, before the handler.
4. The handler. Its API calls carry the command's ``CallScope``, built here with the
   command's ``Preflight``: right before each send of a money-moving request, after its quota
   wait, 429 re-sends included, the renewal lock is checked (one lost with its connection is
   not relied on), then the journal records the call in the store, which fails if this
   process lost the lease (the call is then not sent).
5. ``Finish`` with the event; an error goes through the one table (``Failures``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import datetime

import structlog

from handlers.errors import RelayError
from handlers.ports import HandlerContext
from schemas.commands import Command
from schemas.events import Outcome
from service.api.client import CallScope, Preflight
from service.broker.headers import requested_before
from service.guardrails.gate import PolicyGate
from service.messages.delivery import Delivery, Partner, rejection_of
from service.messages.failures import Failures
from service.messages.journal import StoreJournal
from service.messages.kinds import KINDS, PRIORITIES
from service.messages.outcomes import event_for
from service.messages.settlement import Finish, Reject, Settlement
from service.store.locks import Held, RenewalLocks
from service.store.types import CommandStore, StoredCommand

__all__ = ["Runner"]

log = structlog.get_logger(__name__)


class Runner:
    def __init__(
        self,
        *,
        store: CommandStore,
        locks: RenewalLocks,
        gate: PolicyGate,
        failures: Failures,
        owner: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._locks = locks
        self._gate = gate
        self._failures = failures
        self._owner = owner
        self._clock = clock

    async def run(self, delivery: Delivery, command: Command, record: StoredCommand) -> Settlement:
        partner = delivery.partner
        if command.deadline is not None and command.deadline <= self._clock():
            partner = rejection_of(command, "RELAY.DEADLINE_PASSED", "deadline")
        if not isinstance(partner, Partner):
            assert partner is not None, "a command that was read has a partner or a rejection"
            return Reject(partner, release=command.command_id)
        journal = StoreJournal(self._store, record, owner=self._owner, clock=self._clock)
        # requests earlier deliveries sent: the store's count, or the message's header where
        # that is higher (calls safe to repeat are not written to the store)
        before = max(record.attempts, requested_before(delivery.message))
        kind = KINDS[command.type]
        scope: CallScope | None = None
        try:
            async with (
                self._renewal_lock(command) as held,
                self._gate.admitted(
                    command,
                    requested_by=delivery.requested_by,
                    partner_id=partner.partner_id,
                    uncertain=journal.uncertain_since is not None,
                ),
            ):
                scope = CallScope(
                    # never started before: the deadline holds until the first request is sent
                    deadline=command.deadline if before == 0 else None,
                    preflight=Preflight(
                        lock_check=None if held is None else held.check,
                        record_call=journal.record_call,
                    ),
                    command_id=command.command_id,
                    priority=PRIORITIES[command.priority],
                    since=delivery.since,
                )
                context = HandlerContext(
                    command_id=command.command_id,
                    api=partner.api.scoped(scope),
                    clock=_Clock(self._clock),
                    journal=journal,
                )
                done = await kind.handler(command, context)
        except RelayError as exc:
            uncertain = kind.money_moving and journal.uncertain_since is not None
            attempts = before + _sent(scope)
            return self._failures.after_error(delivery, exc, attempts=attempts, uncertain=uncertain)
        attempts = before + _sent(scope)
        outcome = Outcome.PARTIAL if done.partial else Outcome.SUCCEEDED
        log.info("command_finished", outcome=outcome, attempts=attempts)
        event = event_for(
            command,
            outcome=outcome,
            now=self._clock(),
            attempts=attempts,
            result=done.result,
            requested_by=delivery.requested_by,
        )
        return Finish(command.command_id, event, issued_at=command.issued_at)

    def _renewal_lock(self, command: Command) -> AbstractAsyncContextManager[Held | None]:
        """A renewal's customer lock (guarantee 7); nothing for other commands."""
        if command.type != "renew" or command.customer_id is None:
            return nullcontext()
        return self._locks.hold(command.customer_id)


def _sent(scope: CallScope | None) -> int:
    """Requests sent for the command by this delivery (none before its scope existed)."""
    return 0 if scope is None else scope.sent


class _Clock:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()
