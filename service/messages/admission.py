"""Step *admit or park*: a command waits for its API turn here, in memory, or in its parking line.

A command is *parked* (``Park``: into its line, ``service.messages.lines``) when

* its customer's calls are paused (``bss-relay pause``): it waits there until resumed;
* its line already has commands waiting: first in, first out, behind them;
* its turn is further away than the hold window (``RELAY_HOLD_S``): as the dispatcher says,
  from the waiters of its customer at its priority or above and its share of the egress.

One expected to wait longer than ``deferred_after_s`` tells its producer once with a
``deferred`` event, sent once its place in the line is settled (``service.messages.announcer``):
every parked command not paused is marked ``x-relay-deferred`` (it is not considered again)
and owed the event, and the event goes if, counting what other replicas parked before it,
it still waits that long. Parking needs no claim: a backlog is read and parked without
touching the store.

Taken in at once: a command past its deadline (it goes on to be rejected: a paused line is
swept for these, ``service.messages.lines``), one pulled from its line (``x-relay-line``: its
turn has come), one some replica already took in (redelivered after it crashed or lost its
connection, or back from waiting out a claim: its takeover must not queue behind its
customer's backlog), one of an operation that is not paced, and one whose partner is unknown
(it has no pacing key: it goes on to be claimed and rejected). An admitted command counts as
held (``holding``) until it ends, in the same step as the decision not to park.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from schemas.commands import Command
from service.broker.headers import H
from service.messages.delivery import Delivery, Partner
from service.messages.kinds import PRIORITIES, primary_call
from service.messages.lines import LineKey, Lines
from service.messages.settlement import Park
from service.messages.whereabouts import Deferral, Noted
from service.pacing.dispatcher import Dispatcher
from service.telemetry.tracing import trace_context

__all__ = ["Admission", "Drain", "WaitingRoom"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WaitingRoom:
    """Where commands wait: the dispatcher (in memory) and the parking lines (the broker)."""

    dispatcher: Dispatcher
    lines: Lines
    paused: Callable[[str, str], bool]
    hold_s: float

    def drain(self, line: LineKey) -> Drain:
        """How the line drains as things stand now (when each of its places starts): the
        buckets' rates, the customer's commands held here, the line's places gone by, and
        what every other customer not paused has waiting for the API, here and in the
        lines."""
        api, customer, priority = line
        own_rate, egress_rate, ready = self.dispatcher.pace(api, customer)
        waiting = self.dispatcher.backlogs(api, priority)
        for other, n in self.lines.backlogs(api, priority).items():
            waiting[other] = waiting.get(other, 0) + n
        others = sorted(
            n for c, n in waiting.items() if c != customer and n > 0 and not self.paused(api, c)
        )
        held = self.dispatcher.held(api, customer, priority)
        return Drain(
            ready,
            _interval(own_rate),
            _interval(egress_rate),
            max(0, held - self.lines.in_transit(api, customer, priority)),
            self.lines.gone_by(line),
            tuple(others),
        )


def _interval(rate: float) -> float:
    return 0.0 if rate == math.inf or rate <= 0 else 1.0 / rate


@dataclass(frozen=True, slots=True)
class Drain:
    """When each command of one line starts, every customer waiting for the API served in
    turn (fair shares). The customer's command with ``k`` of its commands before it (held
    here, then ahead in its line) starts after ``k`` of its own bucket's intervals, and after
    the egress served those ``k`` and ``min(n, k)`` of every other customer with ``n``
    waiting: a customer whose backlog runs out stops taking turns, and the rest speed up.
    (The pace *now* times the commands ahead -- the estimate before -- had hot customers
    start long before it once the light ones were done.)"""

    ready: float  # seconds until both buckets are ready
    own_interval: float  # 1 / the customer's rate now (0: not limited)
    egress_interval: float  # 1 / the egress's rate now
    direct: int  # the customer's commands held here that did not come out of the line
    gone_by: int  # the line's places gone by: pulled and settled, deployment-wide
    others: tuple[int, ...]  # other customers' waiting commands, ascending
    prefix: tuple[int, ...] = field(init=False)  # their running sums, from 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", tuple(itertools.accumulate(self.others, initial=0)))

    def start(self, place: int) -> float:
        """Seconds until the command at ``place`` of the line starts: after those held here
        that did not come from the line, and the places before it not gone by (held in some
        replica's memory, or still in the line)."""
        return self.wait(self.direct + max(0, place - 1 - self.gone_by))

    def wait(self, k: int) -> float:
        """Seconds until the customer's command with ``k`` of its commands before it starts."""
        short = bisect.bisect_left(self.others, k)  # those with fewer than k: all of theirs
        served = self.prefix[short] + k * (len(self.others) - short)
        return self.ready + max(k * self.own_interval, (k + served) * self.egress_interval)


class Admission:
    def __init__(self, waiting: WaitingRoom, *, clock: Callable[[], datetime]) -> None:
        self._waiting = waiting
        self._clock = clock

    async def admit(self, delivery: Delivery, command: Command) -> Park | None:
        """None: go on now. A ``Park``: into the command's line."""
        line = _line(delivery, command)
        self._waiting.lines.taken(command.command_id)
        # past its deadline: on to be claimed and rejected (step *run*), uncalled. Parked
        # again, one swept from a paused line brings its deadline back, swept until resumed
        if line is None or (command.deadline is not None and command.deadline <= self._clock()):
            return None
        w = self._waiting
        api, customer, priority = line
        if w.paused(api, customer):
            return self.park(delivery, command, line, paused=True)
        if H.LINE in delivery.headers or delivery.taken_in_before:
            return None
        if not w.dispatcher.limited(api):
            return None
        if w.lines.active(line) or w.dispatcher.expected_wait(api, customer, priority) > w.hold_s:
            return self.park(delivery, command, line, paused=False)
        return None

    def holding(self, delivery: Delivery, command: Command) -> AbstractContextManager[None]:
        """The admitted command counted as held for its line while it is claimed and run. Enter
        it right after ``admit`` (no await between), so a burst cannot slip more than the hold
        window past the decision."""
        line = _line(delivery, command)
        return nullcontext() if line is None else self._waiting.dispatcher.coming(*line)

    def paused(self, delivery: Delivery, command: Command, line: LineKey) -> Park:
        """A command whose call found its customer paused: into its line until resumed."""
        return self.park(delivery, command, line, paused=True)

    def park(self, delivery: Delivery, command: Command, line: LineKey, *, paused: bool) -> Park:
        """Into its line; what ``why`` says of it meanwhile; a ``deferred`` event if it is
        expected to wait long (and has not said so before)."""
        w = self._waiting
        api, customer, priority = line
        now = time.time()
        since = delivery.since
        # its place in the line, taken now: commands read at once count each other
        place = w.lines.parked(line, command.deadline)
        expected = None if paused else now + w.drain(line).start(place)
        headers: dict[str, Any] = {H.LINE: "1", H.WAITING_SINCE: f"{since:.3f}"}
        deferral = None
        if expected is not None and H.DEFERRED not in delivery.headers:
            message = delivery.message
            deferral = Deferral(
                command,
                delivery.requested_by,
                message.correlation_id,
                message.reply_to,
                trace_context(delivery.headers),
                now,
            )
            headers[H.DEFERRED] = "1"
        noted = Noted(
            command.command_id,
            "paused" if paused else "waiting",
            api,
            "customer",
            customer,
            priority,
            since,
            expected,
            line,
            place,
            others=w.lines.others(line),
            deferral=deferral,
        )
        log.debug("command_parked", api=api, paused=paused, place=place)
        return Park(line, noted, headers=headers, release=delivery.claimed)


def _line(delivery: Delivery, command: Command) -> LineKey | None:
    """(API, ParentUid, priority) of the call that paces the command; None when its partner
    is unknown."""
    partner = delivery.partner
    if not isinstance(partner, Partner):
        return None
    api, customer = primary_call(command, partner.partner_id)
    return api, customer, PRIORITIES[command.priority]
