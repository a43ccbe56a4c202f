"""The ``deferred`` event (CONTRACT §8): a parked command's producer is told when its API call is
expected to start, once, when that is further away than ``RELAY_DEFERRED_AFTER_S`` from its
parking.

The event is sent once the command's place in its line is settled (``Whereabouts.pulled``
hands over the entries owed one, ``PLACE_SETTLED_S`` after parking, when every replica has
published what it parked and holds meanwhile). What goes before it is every call of its
customer at its priority or above held in memory -- by this replica's dispatcher or on its
way there, or by another replica -- and every one parked before it (lines are first in,
first out: :class:`Places`), wherever: by this replica, or by another (the waiting sets the
replicas publish, ``relay_waiting``; a call counted once, by its command id); the buckets
drain those as :class:`~service.messages.admission.Drain` says. A command this replica parked
that another replica published since was pulled by that one: it is no longer this replica's
to show (``Whereabouts.back``).

Estimated at parking from the line's places, two replicas parking one backlog at once each
knew only its own half of it: the commands started 4-10 s after the estimate.

Not sent: for a command back from its line already (it is running: its terminal event comes
next), nor when it no longer waits that long. A replica that dies first owes nothing: the
contract promises at most one such event, and its ``event_id`` is the command's own.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from schemas.events import routing_key
from service.messages.admission import WaitingRoom
from service.messages.lines import PRIORITY_NAMES, LineKey
from service.messages.outcomes import deferred_event
from service.messages.publisher import BROKER_ERRORS, Publisher
from service.messages.whereabouts import Noted, Whereabouts
from service.store.errors import STORE_ERRORS
from service.telemetry.tracing import continued

__all__ = ["Announcer", "Places", "Published"]

log = structlog.get_logger(__name__)

SOON_S = 1.0  # a command expected to start sooner than this is not told: it is about to
GAP_S = 0.05  # two replicas' parks this close: in an order their stamps cannot tell (``Places``)
# (api, customer, priority names) -> the calls the replicas published as waiting for their turn
# -- (command id, when it went into its line or None if held in memory, whether this replica
# published it): ``SteeringStore.customer_waiting`` -- and how many egresses the replicas
# send from (``SteeringStore.egresses``)
Published = Callable[
    [str, str, Sequence[str]],
    Awaitable[tuple[list[tuple[str, datetime | None, bool]], int]],
]


class Announcer:
    """Sends the ``deferred`` events owed (``due``, fed by the lines as places settle)."""

    def __init__(
        self,
        due: asyncio.Queue[list[Noted]],
        waiting: WaitingRoom,
        whereabouts: Whereabouts,
        publisher: Publisher,
        published: Published,
        *,
        deferred_after_s: float,
    ) -> None:
        self._due = due
        self._waiting = waiting
        self._whereabouts = whereabouts
        self._publisher = publisher
        self._published = published
        self._deferred_after_s = deferred_after_s

    async def run(self) -> None:
        while True:
            by_line: dict[LineKey, list[Noted]] = {}
            for entry in await self._due.get():
                if entry.line is not None:
                    by_line.setdefault(entry.line, []).append(entry)
            for line, entries in by_line.items():
                await self.announce(line, entries)

    async def announce(self, line: LineKey, entries: list[Noted]) -> int:
        """The events still owed to ``entries`` (parked in ``line``); how many went out."""
        api, customer, _ = line
        if self._waiting.paused(api, customer):
            return 0  # no start to expect: resumed, they are pulled as their turns come
        held, places, egresses = await self._waiting_for(line)
        drain = self._waiting.drain(line)
        # what is ahead was counted deployment-wide: every egress serves it, not this one's only
        drain = replace(drain, egress_interval=drain.egress_interval / max(1, egresses))
        sent = 0
        for entry in entries:
            if entry.deferral is None or entry.command_id not in self._whereabouts:
                continue
            ahead = held + places.ahead(entry.queued_at)
            sent += await self._send(entry, time.time(), drain.wait(round(ahead)))
        return sent

    async def _waiting_for(self, line: LineKey) -> tuple[int, Places, int]:
        """The calls of the line's customer at its priority or above that wait for their turn
        anywhere: how many are held in memory (here, on their way here, or by another
        replica), and where the parked ones went into their lines; and how many egresses
        serve them."""
        api, customer, priority = line
        names = [name for p, name in PRIORITY_NAMES.items() if p >= priority]
        try:
            published, egresses = await self._published(api, customer, names)
        except STORE_ERRORS as exc:  # counted without the other replicas' calls
            log.warning("waiting_not_read", error=repr(exc))
            published, egresses = [], 1
        held_here, coming = self._waiting.dispatcher.queued(api, customer, priority)
        held = {command_id for command_id in held_here if command_id}
        parked: dict[str, tuple[float, bool]] = {}
        for command_id, queued_at, mine in published:
            if not mine and command_id in self._whereabouts:
                self._whereabouts.back(command_id)  # another replica pulled it from its line
            if queued_at is None:
                held.add(command_id)
            else:
                parked[command_id] = (queued_at.timestamp(), mine)
        for command_id, queued_at_s in self._whereabouts.parked(api, customer, priority):
            parked[command_id] = (queued_at_s, True)
        for command_id in held:
            parked.pop(command_id, None)  # pulled since it was published as parked
        anonymous = sum(1 for command_id in held_here if not command_id)
        return coming + anonymous + len(held), Places(list(parked.values())), egresses

    async def _send(self, entry: Noted, now: float, wait: float) -> bool:
        deferral = entry.deferral
        assert deferral is not None
        expected = now + wait
        if expected - deferral.parked_at <= self._deferred_after_s or wait < SOON_S:
            return False
        command = deferral.command
        event = deferred_event(
            command,
            now=datetime.now(UTC),
            expected_start_at=datetime.fromtimestamp(expected, UTC),
            requested_by=deferral.requested_by,
        )
        try:
            with continued(deferral.trace):
                await self._publisher.event(
                    event.model_dump_json().encode(),
                    routing_key=routing_key(event),
                    event_id=event.event_id,
                    correlation_id=deferral.correlation_id or command.command_id,
                    reply_to=deferral.reply_to,
                )
        except BROKER_ERRORS as exc:  # a progress event only: the command waits on unharmed
            log.warning("deferred_event_not_sent", command_id=command.command_id, error=repr(exc))
            return False
        log.debug("deferred_event_sent", command_id=command.command_id, wait_s=round(wait, 2))
        return True


class Places:
    """The parked calls of one customer, by when they went into their lines, and how many go
    before one of this replica's.

    This replica's own places are in the order it parked them (it stamps its publishes in the
    order it sends them). Another replica's publishes reach the broker in an order that the
    stamps of the two cannot tell within some tens of milliseconds (the frames wait in each
    client's writer, longer on a busy one): places closer together than ``GAP_S`` form one
    run, in which the other replicas' are taken as spread evenly among this one's. Taken at
    face value, the stamps put a replica's whole burst before or after the other's while the
    line held the two interleaved, or the other way round (2-4 s off either way); spread
    evenly, a burst's estimates are off by at most half of what the other replica parked
    in it at the same instant."""

    def __init__(self, places: list[tuple[float, bool]]) -> None:
        ordered = sorted(places)
        self._at = [at for at, _ in ordered]
        self._run_start: list[int] = []  # per place: where its run starts
        self._mine_before: list[int] = []  # per place: this replica's before it in its run
        self._run_of: list[int] = []  # per place: its run
        self._runs: list[tuple[int, int]] = []  # per run: (this replica's places, others')
        start, mine, previous = 0, 0, -math.inf
        for i, (at, is_mine) in enumerate(ordered):
            if at - previous > GAP_S:
                if i:
                    self._runs.append((mine, i - start - mine))
                start, mine = i, 0
            self._run_start.append(start)
            self._mine_before.append(mine)
            self._run_of.append(len(self._runs))
            mine += is_mine
            previous = at
        self._runs.append((mine, len(ordered) - start - mine))

    def ahead(self, at: float) -> float:
        """Calls expected before this replica's call that went in at ``at``."""
        i = bisect.bisect_left(self._at, at)
        if i == len(self._at):
            return float(i)
        mine, others = self._runs[self._run_of[i]]
        before = self._mine_before[i]
        return self._run_start[i] + before + others * ((before + 0.5) / mine if mine else 0.5)
