"""Step *admit or park*: a command waits for its API turn here, in memory, or in its parking line.

A command is *parked* (``Park``: into its line, ``service.messages.lines``) when

* its customer's calls are paused (``bss-relay pause``): it waits there until resumed;
* its line already has commands waiting: first in, first out, behind them;
* its turn is further away than the hold window (``RELAY_HOLD_S``): as the dispatcher says,
  from the waiters of its customer at its priority or above and its share of the egress.

One expected to wait longer than ``deferred_after_s`` tells its producer once with a
``deferred`` event (``x-relay-deferred`` keeps it from saying so again). Parking needs no claim:
a backlog is read and parked without touching the store.

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
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas.commands import Command
from service.broker.headers import H
from service.messages.delivery import Delivery, Partner
from service.messages.kinds import PRIORITIES, primary_call
from service.messages.lines import LineKey, Lines
from service.messages.outcomes import deferred_event
from service.messages.settlement import Park
from service.messages.whereabouts import Noted
from service.pacing.dispatcher import Dispatcher

__all__ = ["Admission", "Drain", "WaitingRoom", "waiting_since"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WaitingRoom:
    """Where commands wait: the dispatcher (in memory) and the parking lines (the broker)."""

    dispatcher: Dispatcher
    lines: Lines
    paused: Callable[[str, str], bool]
    hold_s: float

    def expected_wait(self, line: LineKey, ahead_in_line: int) -> float:
        """Seconds until a command of ``line`` with ``ahead_in_line`` parked commands before it
        starts: the commands held for its customer go first, then those ahead in its line,
        as the buckets drain every waiting customer (:class:`Drain`)."""
        return self.drain(line).wait(ahead_in_line)

    def drain(self, line: LineKey) -> Drain:
        """How the line drains as things stand now (``expected_wait`` for every place of the
        line at once): the buckets' rates, the customer's commands held here, and what every
        other customer not paused has waiting for the API, here and in the lines."""
        api, customer, priority = line
        own_rate, egress_rate, ready = self.dispatcher.pace(api, customer)
        waiting = self.dispatcher.backlogs(api, priority)
        for other, n in self.lines.backlogs(api, priority).items():
            waiting[other] = waiting.get(other, 0) + n
        others = sorted(
            n for c, n in waiting.items() if c != customer and n > 0 and not self.paused(api, c)
        )
        return Drain(
            ready,
            _interval(own_rate),
            _interval(egress_rate),
            self.dispatcher.held(api, customer, priority),
            tuple(others),
            tuple(itertools.accumulate(others, initial=0)),
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
    held: int  # the customer's commands held here, before any parked one
    others: tuple[int, ...]  # other customers' waiting commands, ascending
    prefix: tuple[int, ...]  # their running sums, from 0

    def wait(self, ahead_in_line: int) -> float:
        k = self.held + ahead_in_line
        short = bisect.bisect_left(self.others, k)  # those with fewer than k: all of theirs
        served = self.prefix[short] + k * (len(self.others) - short)
        return self.ready + max(k * self.own_interval, (k + served) * self.egress_interval)


class Admission:
    def __init__(
        self,
        waiting: WaitingRoom,
        *,
        clock: Callable[[], datetime],
        deferred_after_s: float,
    ) -> None:
        self._waiting = waiting
        self._clock = clock
        self._deferred_after_s = deferred_after_s

    async def admit(self, delivery: Delivery, command: Command) -> Park | None:
        """None: go on now. A ``Park``: into the command's line."""
        line = _line(delivery, command)
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
        since = waiting_since(delivery.headers) or now
        wait = w.expected_wait(line, w.lines.waiting(line))
        expected = None if paused else now + wait
        # its place in the line, taken now: commands read at once count each other
        place = w.lines.parked(line, command.deadline)
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
        )
        headers: dict[str, Any] = {H.LINE: "1", H.WAITING_SINCE: f"{since:.3f}"}
        progress = None
        if (
            expected is not None
            and H.DEFERRED not in delivery.headers
            and (wait > self._deferred_after_s)
        ):
            progress = deferred_event(
                command,
                now=self._clock(),
                expected_start_at=datetime.fromtimestamp(expected, UTC),
                requested_by=delivery.requested_by,
            )
            headers[H.DEFERRED] = "1"
        log.debug("command_parked", api=api, paused=paused, wait_s=round(wait, 2))
        return Park(line, noted, headers=headers, release=delivery.claimed, progress=progress)


def _line(delivery: Delivery, command: Command) -> LineKey | None:
    """(API, ParentUid, priority) of the call that paces the command; None when its partner
    is unknown."""
    partner = delivery.partner
    if not isinstance(partner, Partner):
        return None
    api, customer = primary_call(command, partner.partner_id)
    return api, customer, PRIORITIES[command.priority]


def waiting_since(headers: Mapping[str, Any]) -> float | None:
    """When the command began to wait (our header; text, not a float header: pamqp sends a
    float as 32 bits, 128 s apart at epoch scale)."""
    value = headers.get(H.WAITING_SINCE)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        since = float(str(value)) if value is not None else None
    except ValueError:
        return None
    return since if since is not None and math.isfinite(since) else None
