"""What an error does to a command: "retry, give up, reconcile or wait" is one table.

The error's disposition (``handlers.errors``) picks the rule in ``_AFTER_ERROR``; the attempts
left decide between retrying and giving up:

=============  ===========================================================================
REJECT         ``Reject``: the command is unusable (dead-lettered, a ``rejected`` event)
FAIL           ``Finish`` ``failed``
UNKNOWN        ``Finish`` ``unknown``, a copy dead-lettered for a person to look at
RETRY          ``Delay`` with backoff while attempts are left; then ``failed``, or
RECONCILE      ``unknown`` if a money-moving call may have happened
WAIT           ``Delay`` without spending an attempt: the store is away, or the lease was lost
PARK           ``Park``: its customer is paused; into its line (nothing was sent)
=============  ===========================================================================

A bug (any other exception) is ``crashed``: kept and tried later, and after ``max_attempts``
rejected and dead-lettered. Every rule gives the claim back when this process holds it,
except WAIT (it cannot be, or it is not ours any more).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from handlers.errors import (
    Disposition,
    LeaseLost,
    Paused,
    RelayError,
    Retryable,
    StoreUnavailable,
)
from schemas.commands import Command
from schemas.events import Event, Outcome
from service.broker.headers import H
from service.messages.delivery import Delivery, rejection_of
from service.messages.intake import Rejection
from service.messages.kinds import PRIORITIES
from service.messages.lines import LineKey
from service.messages.outcomes import event_for
from service.messages.publisher import DeadLetterReason
from service.messages.settlement import Delay, Finish, Park, Reject, Settlement
from service.telemetry.metrics import Metrics

__all__ = ["Failures", "RetryPolicy"]

log = structlog.get_logger(__name__)


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


class Failures:
    def __init__(
        self,
        retry: RetryPolicy,
        *,
        lease: timedelta,
        metrics: Metrics,
        clock: Callable[[], datetime],
        parking: Callable[[Delivery, Command, LineKey], Park],
    ) -> None:
        self._retry = retry
        self._lease = lease
        self._metrics = metrics
        self._clock = clock
        self._parking = parking

    def after_error(
        self, delivery: Delivery, exc: RelayError, *, attempts: int, uncertain: bool
    ) -> Settlement:
        """The settlement the table gives ``exc`` (``attempts``: API requests so far;
        ``uncertain``: a money-moving call may have taken effect)."""
        command = delivery.command
        if command is None:  # pragma: no cover - only a command that was read meets an error
            return self.crashed(delivery, exc)
        rule = _AFTER_ERROR[exc.disposition]
        return rule(self, delivery, command, exc, attempts, uncertain)

    def crashed(self, delivery: Delivery, exc: BaseException) -> Settlement:
        """A bug, not input: keep the message and try it later; when it keeps failing, answer
        it with a ``rejected`` event and keep it in the dead-letter queue."""
        code, text = "RELAY.INTERNAL", f"internal error: {type(exc).__name__}"
        retries = delivery.failed_before + 1
        if retries < self._retry.max_attempts:
            reason = DeadLetterReason(code, text, retries, self._clock())
            backoff = self._retry.backoff(retries)
            return Delay(backoff, "crash", reason=reason, release=delivery.claimed)
        command = delivery.command
        rejection = Rejection(code, text) if command is None else rejection_of(command, code, text)
        return Reject(rejection, release=delivery.claimed)

    # -- the rules ---------------------------------------------------------------------------

    def _reject(
        self, d: Delivery, command: Command, exc: RelayError, _a: int, _u: bool
    ) -> Settlement:
        return Reject(rejection_of(command, exc.code, exc.message), release=d.claimed)

    def _end(
        self, d: Delivery, command: Command, exc: RelayError, attempts: int, _u: bool
    ) -> Settlement:
        """FAIL ends `failed`; UNKNOWN ends `unknown`, with a copy kept for a person."""
        outcome = Outcome.FAILED if exc.disposition is Disposition.FAIL else Outcome.UNKNOWN
        log.warning("command_ended", outcome=outcome, code=exc.code, status=exc.http_status)
        event = self._event(d, command, outcome, attempts, exc)
        if outcome is Outcome.FAILED:
            return Finish(command.command_id, event, issued_at=command.issued_at)
        reason = DeadLetterReason(exc.code, exc.message, d.failed_before, self._clock())
        return Finish(command.command_id, event, dead_letter=reason, issued_at=command.issued_at)

    def _retry_or_give_up(
        self, d: Delivery, command: Command, exc: RelayError, attempts: int, uncertain: bool
    ) -> Settlement:
        """RETRY and RECONCILE (the handler reconciled and found no effect): again later
        while attempts are left; then `failed`, or `unknown` if a money-moving call may have
        happened (nobody can say it did not spend)."""
        retries = d.failed_before + 1
        reason = DeadLetterReason(exc.code, exc.message, retries, self._clock())
        if retries < self._retry.max_attempts:
            delay, wait_out = self._retry.backoff(retries), False
            if isinstance(exc, Retryable) and exc.retry_after and exc.retry_after > delay:
                delay, wait_out = exc.retry_after, True  # sooner would fail the same way
            log.warning("command_retry_scheduled", code=exc.code, retries=retries)
            return Delay(
                delay,
                "retry",
                reason=reason,
                headers={H.REQUESTS: attempts},
                at_least=wait_out,
                release=d.claimed,
                command_id=command.command_id,
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
        self, _d: Delivery, _c: Command, exc: RelayError, attempts: int, _u: bool
    ) -> Settlement:
        """WAIT: the store is unreachable, or the lease was lost: no attempt is spent, the
        claim is not given back (it cannot be, or it is not ours any more)."""
        if isinstance(exc, StoreUnavailable):
            self._metrics.store_error()
        seconds = self._lease.total_seconds() if isinstance(exc, LeaseLost) else self._retry.wait_s
        log.warning("command_waiting", code=exc.code, wait_s=seconds)
        return Delay(seconds, "wait", headers={H.REQUESTS: attempts}, command_id=_c.command_id)

    def _park(
        self, d: Delivery, command: Command, exc: RelayError, _a: int, _u: bool
    ) -> Settlement:
        """PARK: the customer was paused while the command waited for its turn."""
        assert isinstance(exc, Paused), "only a pause parks a command"
        log.info("command_paused", api=exc.api)
        parked = self._parking(d, command, (exc.api, exc.customer, PRIORITIES[command.priority]))
        return replace(parked, release=d.claimed)

    def _event(
        self, d: Delivery, command: Command, outcome: Outcome, attempts: int, error: RelayError
    ) -> Event:
        return event_for(
            command,
            outcome=outcome,
            now=self._clock(),
            attempts=attempts,
            error=error,
            requested_by=d.requested_by,
        )


_Rule = Callable[[Failures, Delivery, Command, RelayError, int, bool], Settlement]

# The one table. Every disposition is named; a new one without a rule fails at import.
_AFTER_ERROR: Mapping[Disposition, _Rule] = {
    Disposition.REJECT: Failures._reject,
    Disposition.FAIL: Failures._end,
    Disposition.UNKNOWN: Failures._end,
    Disposition.RETRY: Failures._retry_or_give_up,
    Disposition.RECONCILE: Failures._retry_or_give_up,
    Disposition.WAIT: Failures._wait,
    Disposition.PARK: Failures._park,
}
assert set(_AFTER_ERROR) == set(Disposition), "every disposition needs a settlement rule"
