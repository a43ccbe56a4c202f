"""One command message, from bytes to its settlement, in named steps.

Deciding is four steps, each in a module of its own; settling is the fifth, in one place::

    read ─▶ admit or park ─▶ claim ─▶ run ─▶ settle
    (reading) (admission)   (claiming) (running) (settlement)

Deciding never acks or publishes, and never raises for a message: whatever goes wrong becomes
a settlement too (an error through the one table in ``service.messages.failures``, a bug
retried later and, after ``max_attempts``, rejected and dead-lettered). The command's lease is
taken by the claim step through the process's ``Leases`` and given back (or let go) by the
settlement; ``process`` tells ``Leases`` when the message is done.

Following a message from the consumer to its event (call hops through the relay's own code;
a handler's API calls branch off and come back, and count as one)::

     1. Consumer._on_message     hands the message to a task of the consumer's own
     2. Consumer._handle         tracks it until it is settled
     3. Pipeline.process         the command's trace span; decide, then settle
     4. Pipeline.decide          the four deciding steps, in order
     5. Reader.read              read: the command and its partner, or ``Reject``
     6. Admission.admit          admit or park: ``None``, or ``Park`` into its line
     7. Claiming.claim           claim: the claimed record, ``Reannounce`` or ``Delay`` ("busy")
     8. Leases.claim             the store's claim; a dead owner's taken over
     9. Runner.run               run: lock, policy gate, preflight, then the handler
    10. handlers.<type>          the handler: PartnerApi → BssHttp.call → CallScope.sending
                                 → Preflight.check before each money-moving send
    11. Settler.settle           settle: the one place a message is settled
    12. Settler._apply           dispatches on the settlement (here ``Finish``)
    13. Settler._finish          store the event, then publish it
    14. Settler._send_event      the event's body and routing key
    15. Publisher.event          the event, confirmed by the broker (then the command is
                                 marked published, then the message acked)
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aio_pika.abc import AbstractIncomingMessage

from handlers.errors import RelayError
from service.messages.admission import Admission
from service.messages.claiming import Claiming
from service.messages.delivery import Delivery
from service.messages.failures import Failures
from service.messages.leases import Leases
from service.messages.reading import Reader
from service.messages.running import Runner
from service.messages.settlement import (
    Delay,
    Reannounce,
    Redeliver,
    Reject,
    Settled,
    Settlement,
    Settler,
)
from service.telemetry.tracing import consume_span

__all__ = ["Pipeline", "Steps"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Steps:
    """The four deciding steps, in the order they run."""

    read: Reader
    admission: Admission
    claim: Claiming
    run: Runner


class Pipeline:
    def __init__(
        self, steps: Steps, *, settler: Settler, leases: Leases, failures: Failures
    ) -> None:
        self._steps = steps
        self._settler = settler
        self._leases = leases
        self._failures = failures

    async def process(self, message: AbstractIncomingMessage) -> Settled:
        """Decide and settle one message. Call it in a task of its own (the consumer does):
        the log context it binds is that task's, and ends with it."""
        # TRACING HOOK (issue 13): the command's CONSUMER span, from consume to settle.
        with consume_span(message):
            delivery = Delivery(message)
            how = Settled.ABANDONED
            try:
                decision = await self.decide(delivery)
                how = await self._settler.settle(message, decision)
            except Exception as exc:  # settling itself failed: the last resort, never silent
                log.exception("settlement_crashed")
                how = await self._settler.last_resort(message, exc)
            finally:
                # Its lease was kept alive until settled. Abandoned (its channel closed): the
                # redelivery, here or elsewhere, should not wait out our lease.
                await self._leases.done(delivery.claimed, give_back=how is Settled.ABANDONED)
            return how

    async def decide(self, delivery: Delivery) -> Settlement:
        """What to do with the message. Never raises for a message (only when cancelled)."""
        steps = self._steps
        try:
            command = steps.read.read(delivery)
            if isinstance(command, Reject):
                return command
            parked = await steps.admission.admit(delivery, command)
            if parked is not None:
                return parked
            with steps.admission.holding(delivery, command):
                claimed = await steps.claim.claim(delivery, command)
                if isinstance(claimed, Reannounce | Delay):
                    return claimed
                return await steps.run.run(delivery, command, claimed)
        except RelayError as exc:  # the store, away, was needed for the claim (or a paced call)
            return self._failures.after_error(delivery, exc, attempts=0, uncertain=False)
        except Exception as exc:  # a bug, not input: the per-message boundary
            log.exception("processing_crashed")
            return self._failures.crashed(delivery, exc)

    async def hand_back(self, message: AbstractIncomingMessage) -> Settled:
        """A message delivered while intake stops: back to the broker, undecided."""
        return await self._settler.settle(message, Redeliver("stopping"))
