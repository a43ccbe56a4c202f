"""Step *admit or park*: a command waits for its API turn here, in memory, or on the broker.

This is the message path's one way into pacing's admission (``service.pacing.parking``): a
command whose turn is further away than the hold window is parked on a delay queue with its
ticket (``x-relay-ticket``), and one expected to wait longer than ``deferred_after_s`` tells
its producer once with a ``deferred`` event (``x-relay-deferred`` keeps it from saying so
again). Parking needs no claim: a backlog is read and parked without touching the store.

Not parked: a command some replica already took in (redelivered after it crashed or lost its
connection, or back from waiting out a claim): its takeover must not queue behind its
customer's backlog; and a command whose partner is unknown (it has no pacing key: it goes on
to be claimed and rejected). An admitted command is counted as held (``holding``) until it
ends, in the same step as the decision not to park.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas.commands import Command
from service.broker.headers import H
from service.messages.delivery import Delivery, Partner
from service.messages.kinds import primary_call
from service.messages.outcomes import deferred_event
from service.messages.settlement import Delay
from service.pacing.parking import Park, parking, ticket_from_headers, ticket_header
from service.pacing.scheduler import FairScheduler
from service.telemetry.metrics import Metrics

__all__ = ["Admission"]

log = structlog.get_logger(__name__)


class Admission:
    def __init__(
        self,
        scheduler: FairScheduler,
        *,
        metrics: Metrics,
        clock: Callable[[], datetime],
        deferred_after_s: float,
    ) -> None:
        self._scheduler = scheduler
        self._metrics = metrics
        self._clock = clock
        self._deferred_after_s = deferred_after_s

    async def admit(self, delivery: Delivery, command: Command) -> Delay | None:
        """None: go on now. A ``Delay``: park on the broker. Raises ``RelayError`` when a
        shared ticket needs the store and the store is away."""
        key = _key(delivery, command)
        if key is None or delivery.taken_in_before:
            return None
        park = await parking(self._scheduler, key, ticket_from_headers(delivery.headers))
        if park is None:
            return None
        self._metrics.inc(self._metrics.parked, key[0])
        log.debug("command_parked", api=key[0], wait_s=round(park.seconds, 2))
        return self._park(delivery, command, park)

    def holding(self, delivery: Delivery, command: Command) -> AbstractContextManager[None]:
        """The admitted command counted as held for its key while it is claimed and run. Enter
        it right after ``admit`` (no await between), so a burst cannot slip more than the hold
        window past the decision."""
        key = _key(delivery, command)
        return nullcontext() if key is None else self._scheduler.holding(*key)

    def _park(self, delivery: Delivery, command: Command, park: Park) -> Delay:
        headers: dict[str, Any] = dict(ticket_header(park.ticket))
        progress = None
        expected = datetime.fromtimestamp(park.ticket, UTC)
        now = self._clock()
        told = H.DEFERRED in delivery.headers
        if not told and (expected - now).total_seconds() > self._deferred_after_s:
            progress = deferred_event(
                command, now=now, expected_start_at=expected, requested_by=delivery.requested_by
            )
            headers[H.DEFERRED] = "1"
        return Delay(park.seconds, "park", headers=headers, progress=progress)


def _key(delivery: Delivery, command: Command) -> tuple[str, str] | None:
    """(API, ParentUid) of the call that paces the command; None when its partner is unknown."""
    partner = delivery.partner
    return primary_call(command, partner.partner_id) if isinstance(partner, Partner) else None
