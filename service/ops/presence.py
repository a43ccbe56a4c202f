"""What a replica tells the deployment about itself, about once a second (``PUBLISH_S``): that
it is alive, which commands wait where (held by its dispatcher, parked, paused, delayed), the
buckets it used in the last 5 minutes (limit in force, rate now, 429s), and what went into and
out of the parking lines. ``quota show`` and ``why`` read these rows (``service.ops.deployment``).

The waiting set goes as *changes*: new or changed entries, and the ids no longer here. An entry
counts as changed when its state, bucket or priority changed, or its expected start moved by
more than ``MOVED_S`` and a tenth of the wait left (``MOVED_SHARE``; ``why``'s estimate is held
to a fifth) -- so a command that waits as foreseen is written once, not every second, and a
backlog of thousands whose pace wavers is not written again whole each second.
One transaction a second, whatever the number of commands: the store's cost is per replica.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from service.messages.admission import Drain, WaitingRoom
from service.messages.whereabouts import Noted, Whereabouts
from service.pacing.dispatcher import Dispatcher, Waiting
from service.pacing.limits import Limits
from service.store.errors import STORE_ERRORS
from service.store.steering import (
    BucketReport,
    Publication,
    SteeringStore,
    WaitingEntry,
)

__all__ = ["PUBLISH_S", "Presence"]

log = structlog.get_logger(__name__)

PUBLISH_S = 1.0
MOVED_S = 1.0  # an expected start that moved less than this ...
MOVED_SHARE = 0.1  # ... or than this share of the wait left is not written again
FRESH_S = 10.0  # rows of a live replica stay fresh this long past each publication
PARKED_FRESH_S = 60.0  # a parked command's row outlives its replica this long past its start
SWEEP_EVERY = 60  # publications between sweeps of stale rows
CHUNK = 256  # parked commands looked at between two turns of the event loop
PRIORITY_NAMES = {1: "low", 2: "normal", 3: "high"}


def _at(wall: float | None) -> datetime | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC)


@dataclass(frozen=True, slots=True)
class _Shown:
    """What was last published of one entry."""

    state: str
    bucket: tuple[str | None, str | None, str | None, int | None]
    expected_at: float | None


class Presence:
    def __init__(
        self,
        steering: SteeringStore,
        dispatcher: Dispatcher,
        limits: Limits,
        whereabouts: Whereabouts,
        *,
        identity: tuple[str, str],  # (owner, egress)
        parked: WaitingRoom | None = None,  # the parking lines and what their commands wait for
    ) -> None:
        self._steering = steering
        self._dispatcher = dispatcher
        self._limits = limits
        self._whereabouts = whereabouts
        self._owner, self._egress = identity
        self._parked = parked
        self._started_at = datetime.now(UTC)
        self._shown: dict[str, _Shown] = {}
        self._published = 0
        self.statements = 0  # publications sent (one transaction each)

    async def run(self) -> None:
        """Publish until cancelled (a background loop of the runtime)."""
        while True:
            try:
                await self.publish()
            except STORE_ERRORS as exc:  # the next round sends what changed since
                log.warning("presence_not_published", error=repr(exc))
            await asyncio.sleep(PUBLISH_S)

    async def publish(self) -> None:
        now = time.time()
        current, changed = await self._entries(now)
        gone = [cid for cid in self._shown if cid not in current]
        lines = [] if self._parked is None else self._parked.lines.deltas()
        await self._steering.publish(
            Publication(
                owner=self._owner,
                egress=self._egress,
                started_at=self._started_at,
                renew_until=datetime.fromtimestamp(now + FRESH_S, UTC),
                waiting=changed,
                gone=gone,
                reports=self._reports(),
                lines=lines,
            )
        )
        self.statements += 1
        for command_id in gone:
            del self._shown[command_id]
        for entry in changed:
            self._shown[entry.command_id] = _shown(entry)
        self._published += 1
        if self._published % SWEEP_EVERY == 0:
            await self._steering.sweep(
                replicas_before=datetime.fromtimestamp(now - 60, UTC),
                reports_before=datetime.fromtimestamp(now - 300, UTC),
            )

    async def retire(self) -> None:
        """This replica stops: its rows of commands held in memory go (they go back to the
        broker), parked ones stay until due."""
        try:
            await self._steering.retire(self._owner)
        except STORE_ERRORS as exc:
            log.warning("presence_not_retired", error=repr(exc))

    # -- what is published --------------------------------------------------------------------

    async def _entries(self, now: float) -> tuple[set[str], list[WaitingEntry]]:
        """The ids of every command waiting here, and the entries that changed since they
        were last published. Thousands of parked commands are looked at in chunks of
        ``CHUNK``, the event loop served in between (in one go, 5,000 of them held it for
        0.4 s every publication, and the egress sent nothing meanwhile); each line's pace
        is computed once, and an entry is only built when it changed."""
        held = {w.command_id: w for w in self._dispatcher.waiting() if w.command_id is not None}
        current, changed = set(held), []
        paces: dict[tuple[str, str, int], Drain | None] = {}
        for i, noted in enumerate(self._whereabouts.entries()):
            if i % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)
            if noted.command_id in held:
                continue  # held here: what the dispatcher says wins
            current.add(noted.command_id)
            standing = self._now_for(noted, now, paces)
            if self._moved(noted.command_id, _shown_noted(standing), now):
                changed.append(_noted(standing, now))
        for waiting in held.values():
            entry = _held(waiting, now)
            if self._moved(entry.command_id, _shown(entry), now):
                changed.append(entry)
        return current, changed

    def _now_for(
        self,
        noted: Noted,
        now: float,
        paces: dict[tuple[str, str, int], Drain | None],
    ) -> Noted:
        """A parked command as things stand now: paused while its customer is, else expected
        when its bucket's pace now brings it (a limit changed, a pause lifted since).
        ``paces``: how each line drains (None: paused), computed once per publication."""
        parked = self._parked
        if parked is None or noted.line is None or noted.state == "delayed":
            return noted
        if noted.line not in paces:
            api, customer, _ = noted.line
            paces[noted.line] = None if parked.paused(api, customer) else parked.drain(noted.line)
        drain = paces[noted.line]
        if drain is None:
            return replace(noted, state="paused", expected_at=None)
        return replace(noted, state="waiting", expected_at=now + drain.start(noted.seq))

    def _moved(self, command_id: str, current: _Shown, now: float) -> bool:
        """Whether an entry differs from what was last published of it (see the module)."""
        shown = self._shown.get(command_id)
        if shown is None or current.state != shown.state or current.bucket != shown.bucket:
            return True
        if current.expected_at is None or shown.expected_at is None:
            return current.expected_at != shown.expected_at
        moved = abs(current.expected_at - shown.expected_at)
        return moved > max(MOVED_S, MOVED_SHARE * (current.expected_at - now))

    def _reports(self) -> list[BucketReport]:
        reports = []
        for (api, kind, key), usage in self._dispatcher.reports().items():
            limit = (
                self._limits.customer(api, key)
                if kind == "customer"
                else self._limits.egress(api, key)
            )
            rate = None if usage.rate == float("inf") else usage.rate
            reports.append(
                BucketReport(
                    api,
                    kind,
                    key,
                    limit,
                    rate if limit is None or rate is None else min(rate, limit),
                    len(usage.throttled),
                    datetime.fromtimestamp(usage.used_at, UTC),
                )
            )
        return reports


def _shown(entry: WaitingEntry) -> _Shown:
    bucket = (entry.api, entry.kind, entry.key, _priority(entry.priority))
    expected = entry.expected_at.timestamp() if entry.expected_at else None
    return _Shown(entry.state, bucket, expected)


def _shown_noted(noted: Noted) -> _Shown:
    """``_shown(_noted(noted, now))`` without building the entry and its datetimes (the
    expected start to the float's precision: it is compared within ``MOVED_S``)."""
    priority = noted.priority if noted.priority in PRIORITY_NAMES else None
    return _Shown(noted.state, (noted.api, noted.kind, noted.key, priority), noted.expected_at)


_PRIORITY_OF = {v: k for k, v in PRIORITY_NAMES.items()}


def _priority(name: str | None) -> int | None:
    return _PRIORITY_OF.get(name or "")


def _held(waiting: Waiting, now: float) -> WaitingEntry:
    assert waiting.command_id is not None
    return WaitingEntry(
        command_id=waiting.command_id,
        state="waiting",
        api=waiting.api,
        kind=waiting.kind,
        key=waiting.key,
        priority=PRIORITY_NAMES.get(waiting.priority, "normal"),
        since=datetime.fromtimestamp(waiting.since, UTC),
        expected_at=_at(waiting.expected_at),
        until=datetime.fromtimestamp(now + FRESH_S, UTC),
        customer=waiting.customer or None,
    )


def _noted(noted: Noted, now: float) -> WaitingEntry:
    until = now + FRESH_S
    if noted.state != "delayed" and noted.expected_at is not None:
        until = max(until, noted.expected_at + PARKED_FRESH_S)
    elif noted.expected_at is not None:
        until = max(until, noted.expected_at + FRESH_S)
    return WaitingEntry(
        command_id=noted.command_id,
        state=noted.state,  # type: ignore[arg-type]
        api=noted.api,
        kind=noted.kind,
        key=noted.key,
        priority=None if noted.priority is None else PRIORITY_NAMES.get(noted.priority),
        since=datetime.fromtimestamp(noted.since, UTC),
        expected_at=_at(noted.expected_at),
        until=datetime.fromtimestamp(until, UTC),
        customer=None if noted.line is None else noted.line[1],
        queued_at=_at(noted.queued_at or None),
    )
