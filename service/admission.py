"""Admission: whether a command waits for its API turn in memory or on the broker.

Pure decisions; the processor acts on them (publishes to a delay queue, acks). A parked
command carries a *ticket*, the wall-clock instant its turn is expected, in a header; the
ticket travels as text because pamqp would send a float header as a 32-bit float (an epoch
instant rounded to a multiple of 128 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.publisher import H
from service.scheduler import FairScheduler

__all__ = ["Park", "park_decision", "ticket_from_headers", "ticket_header"]


def ticket_header(ticket: float) -> dict[str, str]:
    # A str, not a float: pamqp sends a float header as 32-bit, 128 s apart at epoch scale.
    return {H.TICKET: f"{ticket:.3f}"}


def ticket_from_headers(headers: Mapping[str, Any]) -> float | None:
    value = headers.get(H.TICKET)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Park:
    seconds: float  # how long to wait on the broker
    ticket: float  # the expected turn, carried in the header


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
    window, it waits a little more with the same ticket."""
    hold = scheduler.hold_s
    if ticket is not None and scheduler.ticket_due(ticket):
        backlog = scheduler.backlog_s(*key)
        return None if backlog <= hold else Park(backlog - hold / 2, ticket)
    if ticket is None:
        ticket = scheduler.estimate(*key).ticket
        if ticket is None:
            return None
    return Park(ticket - wall() - hold / 2, ticket)
