"""Where this replica last put a command it does not hold in memory: parked in a line (waiting
for its bucket, or paused), or delayed for a retry. The replica publishes these with what its
dispatcher holds (``service.ops.presence``), so ``why`` can find a command anywhere.

An entry goes when the command comes back to this replica (:meth:`back`), when its line has
been pulled past it (:meth:`pulled`: another replica took it, and published it), or when it is
older than ``MAX_AGE_S``; memory follows what is parked or delayed now.

A parked command's place is the line's parked count as this replica knew it: other replicas
parking into the same line at the same time number theirs alike, not knowing of each other
yet. Its place for sure (``bound``) adds the commands the others parked that were not known
here when it was parked, as the store tells them ``PLACE_SETTLED_S`` later (once the others
published theirs): only a line pulled that far has surely taken it out. Counted without them,
two replicas' backlogs went twice as fast as the line, and ``quota show`` lost half of them.

A parked command may be owed its ``deferred`` event (:class:`Deferral`): it is sent once its
place is settled (``pulled`` hands those over), so that its expected start counts what the
other replicas parked before it. At parking, each replica counted about half of a backlog
two of them parked at once, and said so: the commands started 4-10 s after the estimate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from schemas.commands import Command

__all__ = ["MAX_AGE_S", "PLACE_SETTLED_S", "Deferral", "Noted", "Whereabouts"]

MAX_AGE_S = 3600.0
PLACE_SETTLED_S = 2.5  # > a publication period (service.ops.presence.PUBLISH_S) and a read


@dataclass(frozen=True, slots=True)
class Deferral:
    """A ``deferred`` event owed to a parked command's producer (``service.messages.announcer``):
    what the event and its publication need of the command's message."""

    command: Command
    requested_by: str | None
    correlation_id: str | None
    reply_to: str | None
    trace: Mapping[str, str]  # the command's trace context (``traceparent``, ``tracestate``)
    parked_at: float  # wall clock: its expected wait counts from here


@dataclass(frozen=True, slots=True)
class Noted:
    """A command's whereabouts (wall-clock instants)."""

    command_id: str
    state: str  # 'waiting' (parked for its bucket), 'paused', 'delayed'
    api: str | None
    kind: str | None
    key: str | None
    priority: int | None
    since: float  # waiting since (a parked command keeps it across parkings)
    expected_at: float | None  # expected start, or a delayed command's retry
    line: tuple[str, str, int] | None = None  # (api, customer, priority) of its line
    seq: int = 0  # its place in the line: the line's parked count when it was parked
    noted_at: float = 0.0
    others: int = 0  # commands other replicas parked in its line, as known here then
    bound: int | None = None  # its place for sure, once the others' parks are known
    deferral: Deferral | None = None  # its deferred event, owed until its place is settled
    queued_at: float = 0.0  # when it took its place (its order in its customer's turn)


class Whereabouts:
    """The entries by command id, and the parked ones also by line: a line pulled on is looked
    at alone (every line read each second, each over every entry, held the event loop 0.1-0.25 s
    with 5,000 commands parked in 50 lines)."""

    def __init__(self) -> None:
        self._entries: dict[str, Noted] = {}
        self._lines: dict[tuple[str, str, int], dict[str, Noted]] = {}

    def note(self, entry: Noted) -> None:
        if not entry.noted_at:
            entry = replace(entry, noted_at=time.time())
        self.back(entry.command_id)
        self._entries[entry.command_id] = entry
        if entry.line is not None and entry.seq > 0:
            self._lines.setdefault(entry.line, {})[entry.command_id] = entry

    def back(self, command_id: str) -> None:
        """The command is with this replica again (delivered, or pulled from its line)."""
        entry = self._entries.pop(command_id, None)
        if entry is not None and entry.line is not None:
            self._forget_in_line(entry.line, command_id)

    def pulled(self, line: tuple[str, str, int], count: int, *, others: int) -> list[Noted]:
        """Line ``line`` has had ``count`` commands pulled out of it, deployment-wide, and
        ``others`` parked into it by other replicas: those surely parked at or before that
        place are out of it. Returns the entries whose place was settled now and that are owed
        their ``deferred`` event (handed over: not returned again)."""
        parked = self._lines.get(line)
        if not parked:
            return []
        settled = time.time() - PLACE_SETTLED_S
        gone, due = [], []
        for command_id, noted in parked.items():
            entry = noted
            if entry.bound is None and entry.noted_at <= settled:
                bound = entry.seq + max(0, others - entry.others)
                entry = replace(entry, bound=bound, deferral=None)
                parked[command_id] = self._entries[command_id] = entry  # same keys: safe
                if noted.deferral is not None and bound > count:
                    due.append(replace(entry, deferral=noted.deferral))
            if entry.bound is not None and entry.bound <= count:
                gone.append(command_id)
        for command_id in gone:
            self.back(command_id)
        return due

    def parked(self, api: str, customer: str, priority: int) -> list[tuple[str, float]]:
        """The customer's commands this replica parked for ``api`` at ``priority`` or above,
        each with when it took its place."""
        return [
            (command_id, noted.queued_at)
            for (a, c, p), parked in self._lines.items()
            if a == api and c == customer and p >= priority
            for command_id, noted in parked.items()
        ]

    def entries(self) -> list[Noted]:
        horizon = time.time() - MAX_AGE_S
        for command_id in [c for c, e in self._entries.items() if e.noted_at < horizon]:
            self.back(command_id)
        return list(self._entries.values())

    def _forget_in_line(self, line: tuple[str, str, int], command_id: str) -> None:
        parked = self._lines.get(line)
        if parked is not None:
            parked.pop(command_id, None)
            if not parked:
                del self._lines[line]

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)
