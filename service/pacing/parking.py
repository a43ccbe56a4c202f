"""Admission: whether a command waits for its API turn in memory or on the broker.

Pure decisions; the processor acts on them (publishes to a delay queue, acks). A parked
command carries a *ticket*, the wall-clock instant its turn is expected, in a header; the
ticket travels as text because pamqp would send a float header as a 32-bit float (an epoch
instant rounded to a multiple of 128 s). The text also carries the key's fair interval when the
ticket was issued (``"<ticket>@<interval>"``): tickets are spaced by it, so when fewer keys wait
later (the interval shrank), a returning command's remaining wait is rescaled to the interval
now -- parking stays work-conserving instead of keeping the spacing of a busier moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.broker.headers import H
from service.pacing.scheduler import FairScheduler

__all__ = [
    "Park",
    "Ticket",
    "park_decision",
    "parking",
    "ticket_from_headers",
    "ticket_header",
]


class Ticket(float):
    """A parking ticket: the wall-clock instant of the expected turn (the float), and the key's
    fair interval when it was issued (None if unknown)."""

    interval: float | None

    def __new__(cls, at: float, interval: float | None = None) -> Ticket:
        ticket = super().__new__(cls, at)
        ticket.interval = interval
        return ticket


def ticket_header(ticket: float) -> dict[str, str]:
    # A str, not a float: pamqp sends a float header as 32-bit, 128 s apart at epoch scale.
    interval = getattr(ticket, "interval", None)
    if interval:
        return {H.TICKET: f"{ticket:.3f}@{interval:.6f}"}
    return {H.TICKET: f"{ticket:.3f}"}


def ticket_from_headers(headers: Mapping[str, Any]) -> Ticket | None:
    value = headers.get(H.TICKET)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    at, _, interval = str(value).partition("@")
    try:
        return Ticket(float(at), float(interval) if interval else None)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Park:
    seconds: float  # how long to wait on the broker
    ticket: Ticket  # the expected turn, carried in the header


def park_decision(
    scheduler: FairScheduler,
    key: tuple[str, str],
    ticket: float | None,
    *,
    wall: Callable[[], float] = time.time,
) -> Park | None:
    """None: hold the command in memory now. A ``Park``: send it to wait on the broker.

    A new command is parked when its turn is further away than the hold window. One coming
    back with a due ticket keeps its place: if the key's work held in memory still fills the
    window, it waits a little more with the same ticket. One coming back before its ticket is
    let in when its key is starving (its work in memory runs dry: the set of waiting keys
    shrank since the ticket was issued, so the key is served faster than its tickets assumed);
    this keeps parking work-conserving, as does rescaling a returning ticket issued at a wider
    spacing than the key's fair interval now."""
    hold = scheduler.hold_s
    if ticket is not None:
        now = wall()
        rescaled = _rescaled(scheduler, key, ticket, now)
        if scheduler.ticket_due(rescaled):
            backlog = scheduler.backlog_s(*key)
            return None if backlog <= hold else Park(backlog - hold / 2, rescaled)
        if scheduler.starving(*key):
            return None
        return Park(_halfway(rescaled - now, hold), rescaled)
    if ticket is None:
        issued = scheduler.estimate(*key).ticket
        if issued is None:
            return None
        ticket = Ticket(issued, scheduler.fair_interval(*key))
    return Park(_halfway(ticket - wall(), hold), ticket)


def _halfway(remaining: float, hold: float) -> float:
    """How long a command whose turn is ``remaining`` seconds away waits on the broker before
    it is looked at again: half the way (at least until the hold window), so a key that
    starts being served faster than its tickets assumed finds parked commands coming back
    all the time, not in a few batches (the delay steps are powers of two)."""
    return max(remaining - hold / 2, 0.0) if remaining <= 2 * hold else remaining / 2


RESCALE_BELOW = 0.9  # rescale a ticket when the interval shrank below this share of its own


def _rescaled(scheduler: FairScheduler, key: tuple[str, str], ticket: float, now: float) -> Ticket:
    """The ticket, its remaining wait rescaled to the key's fair interval now when that is
    clearly shorter than the interval it was issued at (fewer keys wait now)."""
    issued = getattr(ticket, "interval", None)
    current = scheduler.fair_interval(*key)
    if issued and 0 < current < issued * RESCALE_BELOW and ticket > now:
        return Ticket(now + (ticket - now) * current / issued, current)
    return ticket if isinstance(ticket, Ticket) else Ticket(ticket)


async def parking(
    scheduler: FairScheduler,
    key: tuple[str, str],
    ticket: float | None,
    *,
    wall: Callable[[], float] = time.time,
) -> Park | None:
    """``park_decision`` for any limiter: with buckets shared by replicas, a new ticket comes
    from the key's horizon shared by every replica (one store round trip, only when the
    command is parked), so k replicas do not bring a key's parked commands back k times too
    early. Same answers as ``park_decision`` with the in-process limiter."""
    if ticket is not None:
        return park_decision(scheduler, key, ticket, wall=wall)
    turn = await scheduler.ticket(*key)
    if turn.ticket is None:
        return None
    issued = Ticket(turn.ticket, turn.interval or scheduler.fair_interval(*key))
    return Park(_halfway(issued - wall(), scheduler.hold_s), issued)
