"""Parking lines: where commands wait, on the broker, for a bucket that cannot serve them yet.

A command whose turn is further away than the hold window (``RELAY_HOLD_S``), or whose
customer is paused, or whose line already has commands waiting (first in, first out), is
*parked*: published to its line's queue -- one durable queue per (operation, customer,
priority), ``<prefix>.line.<operation>.<customer>.<priority>`` -- and acknowledged. Lines are
*pulled*, not pushed: each replica takes commands back out of a line (``basic.get``) when its
dispatcher has room for that customer (about ``RELAY_HOLD_S`` of its turns in memory), so
parked commands come back exactly when their bucket can serve them -- at the rate it serves
them, whichever replicas share it, however the set of waiting customers changes -- never at
a delay step, and without cycling through the broker while they wait. A paused customer's
lines are simply not pulled; resuming lets them go at once.

Which lines exist and how much went in and out of each (``relay_lines``) is what replicas
publish (``service.ops.presence``) and read every second here, so a replica pulls lines that
another parked into (that one may have died). A line found empty for ``EMPTY_S`` is deleted
(only if empty and unused: a command parked meanwhile is never lost) and forgotten.

A paused line holding a command whose deadline has passed (``next_deadline``) is *swept*:
every command in it is pulled once; the message path rejects those past their deadline
(``RELAY.DEADLINE_PASSED``) and parks the others again.

The message path settles every pulled message as it settles a consumed one; ``settled`` tells
the line, so that the replica's room for the customer frees up.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from service.broker.fetch import cancel_pending, get_one
from service.broker.topology import Topology
from service.messages.publisher import BROKER_ERRORS
from service.messages.whereabouts import Noted, Whereabouts
from service.store.errors import STORE_ERRORS
from service.store.steering import LineDelta, SteeringStore

__all__ = ["EMPTY_S", "LineHooks", "LineKey", "Lines", "line_queue"]

log = structlog.get_logger(__name__)

LineKey = tuple[str, str, int]  # (operation, customer, priority)
TICK_S = 1.0  # lines are read from the store and pulled at least this often
EMPTY_S = 30.0  # a line empty this long is deleted
PRIORITY_NAMES = {1: "low", 2: "normal", 3: "high"}
_PLAIN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CHANNEL_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, RuntimeError)


def line_queue(topology: Topology, key: LineKey) -> str:
    """The queue of a line. A customer id that is not plain text is named by its hash."""
    api, customer, priority = key
    name = (
        customer
        if _PLAIN.fullmatch(customer)
        else hashlib.sha256(customer.encode()).hexdigest()[:32]
    )
    return f"{topology.prefix}.line.{api}.{name}.{PRIORITY_NAMES.get(priority, priority)}"


@dataclass(slots=True)
class _Line:
    key: LineKey
    queue: str
    parked: int = 0  # ever parked into it, deployment-wide (as last read, plus ours since)
    pulled: int = 0  # ever pulled out of it, likewise
    parked_here: int = 0  # parked by this replica since the last publication
    mine: int = 0  # ever parked into it by this replica
    pulled_here: int = 0
    settled: int = 0  # of those pulled, settled, likewise
    settled_here: int = 0
    next_deadline: datetime | None = None  # soonest deadline parked here since then
    deadline_seen: datetime | None = None  # the store's soonest deadline in the line
    transit: int = 0  # pulled by this replica and not settled yet
    landing: int = 0  # decided to be parked here, not in the queue yet
    empty_since: float | None = None
    declared: bool = False

    @property
    def waiting(self) -> int:
        return max(0, self.parked - self.pulled)


@dataclass(frozen=True, slots=True)
class LineHooks:
    """What the lines ask and tell the rest of the replica.

    ``room``: how many commands of a line this replica takes in memory now; ``deliver``: a
    pulled message, to the message path, with what to call once it is settled; ``paused``:
    whether a customer's calls are paused; ``placed``: parked commands whose place is settled
    now and that are owed their ``deferred`` event (``service.messages.announcer``);
    ``poked``: set when there may be room (someone was served)."""

    room: Callable[[LineKey], int]
    deliver: Callable[[AbstractIncomingMessage, Callable[[], None]], None]
    paused: Callable[[str, str], bool]
    placed: Callable[[list[Noted]], None] = lambda _entries: None
    poked: asyncio.Event = field(default_factory=asyncio.Event)


class Lines:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        topology: Topology,
        steering: SteeringStore,
        *,
        hooks: LineHooks,
        whereabouts: Whereabouts,
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._steering = steering
        self._room = hooks.room
        self._deliver = hooks.deliver
        self._paused = hooks.paused
        self._placed = hooks.placed
        self._poked = hooks.poked
        self._lines: dict[LineKey, _Line] = {}
        self._channel: AbstractChannel | None = None
        self._whereabouts = whereabouts

    # -- parking ------------------------------------------------------------------------------

    def _line(self, key: LineKey) -> _Line:
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line(key, line_queue(self._topology, key))
        return line

    def active(self, key: LineKey) -> bool:
        """Commands wait in the line (as far as known here): a new one queues behind them."""
        line = self._lines.get(key)
        return line is not None and line.waiting > 0

    def waiting(self, key: LineKey) -> int:
        line = self._lines.get(key)
        return 0 if line is None else line.waiting

    def backlogs(self, api: str, priority: int) -> dict[str, int]:
        """Commands waiting in ``api``'s lines per customer, at ``priority`` or above
        (deployment-wide, as last read)."""
        found: dict[str, int] = {}
        for (a, customer, p), line in self._lines.items():
            if a == api and p >= priority and line.waiting:
                found[customer] = found.get(customer, 0) + line.waiting
        return found

    def others(self, key: LineKey) -> int:
        """Commands other replicas parked into the line, as far as known here."""
        line = self._lines.get(key)
        return 0 if line is None else max(0, line.parked - line.mine)

    async def queue(self, key: LineKey, *, again: bool = False) -> str:
        """The line's queue, declared (once, or ``again`` after the broker said it is gone)."""
        line = self._line(key)
        if not line.declared or again:
            channel = await self._open()
            await channel.declare_queue(
                line.queue, durable=True, arguments=self._topology.work_arguments()
            )
            line.declared = True
        return line.queue

    def parked(self, key: LineKey, deadline: datetime | None) -> int:
        """A command takes its place in the line (decided to be parked there): its place, the
        line's parked count."""
        line = self._line(key)
        line.parked += 1
        line.parked_here += 1
        line.mine += 1
        line.landing += 1
        line.empty_since = None
        if deadline is not None and (line.next_deadline is None or deadline < line.next_deadline):
            line.next_deadline = deadline
        return line.parked

    def taken(self, command_id: str) -> None:
        """A command is with this replica (pulled from its line, or delivered again): it is
        no longer shown as parked by this replica."""
        self._whereabouts.back(command_id)

    def landed(self, key: LineKey) -> None:
        """A command taken its place is in the line's queue now: it may be pulled."""
        line = self._line(key)
        line.landing = max(0, line.landing - 1)
        line.empty_since = None
        self._poked.set()

    def unparked(self, key: LineKey) -> None:
        """A command that took its place never reached the queue (its settlement failed)."""
        line = self._line(key)
        line.landing = max(0, line.landing - 1)
        line.parked = max(line.pulled, line.parked - 1)
        line.parked_here = max(0, line.parked_here - 1)

    def settled(self, key: LineKey) -> None:
        """A command pulled from the line was settled: room for the next."""
        line = self._lines.get(key)
        if line is not None and line.transit > 0:
            line.transit -= 1
            line.settled += 1
            line.settled_here += 1
        self._poked.set()

    def gone_by(self, key: LineKey) -> int:
        """Commands pulled out of the line and settled, deployment-wide (as last read, plus
        this replica's since): a place beyond this has not started."""
        line = self._lines.get(key)
        return 0 if line is None else line.settled

    def in_transit(self, api: str, customer: str, priority: int) -> int:
        """The customer's commands this replica pulled from its lines at ``priority`` or
        above and has not settled: held here, but counted by the lines' places."""
        return sum(
            line.transit
            for (a, c, p), line in self._lines.items()
            if a == api and c == customer and p >= priority
        )

    def poke(self) -> None:
        """The dispatcher served someone: look for room now."""
        self._poked.set()

    def deltas(self) -> list[LineDelta]:
        """What went into and out of each line since the last call (for the publication)."""
        found = []
        for line in self._lines.values():
            if line.parked_here or line.pulled_here or line.settled_here or line.next_deadline:
                api, customer, priority = line.key
                found.append(
                    LineDelta(
                        api,
                        customer,
                        PRIORITY_NAMES.get(priority, str(priority)),
                        line.queue,
                        line.parked_here,
                        line.pulled_here,
                        line.next_deadline,
                        line.settled_here,
                    )
                )
                line.parked_here = line.pulled_here = line.settled_here = 0
                line.next_deadline = None
        return found

    # -- pulling ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Pull lines with room until cancelled; read the store's lines every ``TICK_S``."""
        read_at = 0.0
        while True:
            if cancel_pending():  # asked to stop during a broker call that dropped the request
                raise asyncio.CancelledError
            if time.monotonic() - read_at >= TICK_S:
                read_at = time.monotonic()
                await self._read_store()
            await self._pull_all()
            self._poked.clear()
            # a tick, or a poke, whichever first. Not wait_for in a loop: on 3.11 a cancel
            # that meets its timeout can be swallowed as the timeout, and the loop goes on.
            waker = asyncio.ensure_future(self._poked.wait())
            try:
                await asyncio.wait({waker}, timeout=TICK_S)
            finally:
                waker.cancel()

    async def _read_store(self) -> None:
        try:
            rows = await self._steering.lines()
        except STORE_ERRORS as exc:  # pulled from what is known here meanwhile
            log.warning("lines_not_read", error=repr(exc))
            return
        for row in rows:
            priority = next((p for p, n in PRIORITY_NAMES.items() if n == row["priority"]), 2)
            line = self._line((row["api"], row["customer"], priority))
            line.parked = max(line.parked, int(row["parked"]) + line.parked_here)
            line.pulled = max(line.pulled, int(row["pulled"]) + line.pulled_here)
            line.settled = max(line.settled, int(row["settled"]) + line.settled_here)
            line.deadline_seen = row["next_deadline"]
            due = self._whereabouts.pulled(line.key, line.pulled, others=line.parked - line.mine)
            if due:
                self._placed(due)

    async def _pull_all(self) -> None:
        lines = sorted(self._lines.values(), key=lambda line: -line.key[2])  # high first
        for line in lines:
            api, customer, _ = line.key
            if self._paused(api, customer):
                if _due(line.deadline_seen):
                    await self._sweep(line)
                continue
            if line.waiting == 0 and line.empty_since is not None:
                await self._maybe_delete(line)
                continue
            room = self._room(line.key) - line.transit
            while room > 0 and await self._pull(line):
                room -= 1

    async def _pull(self, line: _Line) -> bool:
        """One command out of the line, to the message path; False when it is empty."""
        try:
            channel = await self._open()
            queue = await channel.get_queue(line.queue, ensure=False)
            # cancelled meanwhile: the message goes back to the line when the channel closes
            message = await get_one(queue, hold=lambda _message: None)
        except CHANNEL_ERRORS as exc:  # the queue is gone, or the broker is away
            log.info("line_not_pulled", queue=line.queue, error=repr(exc))
            self._channel = None
            line.declared = False
            line.empty_since = line.empty_since or time.monotonic()
            return False
        if message is None:  # none in the queue: all but those on their way were pulled
            line.empty_since = line.empty_since or time.monotonic()
            line.pulled = max(line.pulled, line.parked - line.landing)
            return False
        line.empty_since = None
        line.pulled += 1
        line.pulled_here += 1
        line.transit += 1
        self._deliver(message, functools.partial(self.settled, line.key))
        return True

    async def _sweep(self, line: _Line) -> None:
        """A paused line with a deadline passed: pull every command once (the message path
        rejects the late ones and parks the others again), if no other replica does."""
        line.deadline_seen = None
        try:
            if not await self._steering.clear_line_deadline(*_names(line.key)):
                return  # another replica cleared it: it sweeps
        except STORE_ERRORS as exc:  # swept here all the same: late is worse than twice
            log.warning("line_deadline_not_cleared", error=repr(exc))
        # every message the queue holds now, as the broker counts them (this replica's count
        # may lag another's parking); those parked again meanwhile go in behind them
        try:
            channel = await self._open()
            # not channel.declare_queue: a robust channel answers a queue it declared before
            # from its cache, with the count of that first declaration
            underlay = await channel.get_underlay_channel()
            declared = await underlay.queue_declare(line.queue, passive=True)
            ready = declared.message_count or 0
        except CHANNEL_ERRORS as exc:
            log.info("line_not_counted", queue=line.queue, error=repr(exc))
            self._channel = None
            ready = line.waiting
        log.info("line_swept", queue=line.queue, waiting=ready)
        for _ in range(ready):
            if not await self._pull(line):
                break

    async def _maybe_delete(self, line: _Line) -> None:
        if line.landing or line.transit or line.empty_since is None:
            return  # on its way in, or pulled here and not settled: its queue must stay
        if time.monotonic() - line.empty_since < EMPTY_S:
            return
        try:
            channel = await self._open()
            queue = await channel.get_queue(line.queue, ensure=False)
            await queue.delete(if_unused=True, if_empty=True)
        except CHANNEL_ERRORS as exc:  # not empty (counts went wrong), in use, or gone already
            log.info("line_kept", queue=line.queue, why=repr(exc))
            self._channel = None
            line.empty_since = None  # pulled again from the next round on
            return
        del self._lines[line.key]
        try:
            await self._steering.forget_line(*_names(line.key))
        except STORE_ERRORS as exc:
            log.warning("line_not_forgotten", error=repr(exc))
        log.info("line_deleted", queue=line.queue)

    async def _open(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel()
        return self._channel

    async def aclose(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()


def _names(key: LineKey) -> tuple[str, str, str]:
    api, customer, priority = key
    return api, customer, PRIORITY_NAMES.get(priority, str(priority))


def _due(deadline: datetime | None) -> bool:
    return deadline is not None and deadline <= datetime.now(UTC)
