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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

__all__ = ["MAX_AGE_S", "PLACE_SETTLED_S", "Noted", "Whereabouts"]

MAX_AGE_S = 3600.0
PLACE_SETTLED_S = 2.5  # > a publication period (service.ops.presence.PUBLISH_S) and a read


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


class Whereabouts:
    def __init__(self) -> None:
        self._entries: dict[str, Noted] = {}

    def note(self, entry: Noted) -> None:
        if not entry.noted_at:
            entry = replace(entry, noted_at=time.time())
        self._entries[entry.command_id] = entry

    def back(self, command_id: str) -> None:
        """The command is with this replica again (delivered, or pulled from its line)."""
        self._entries.pop(command_id, None)

    def pulled(self, line: tuple[str, str, int], count: int, *, others: int) -> None:
        """Line ``line`` has had ``count`` commands pulled out of it, deployment-wide, and
        ``others`` parked into it by other replicas: those surely parked at or before that
        place are out of it."""
        settled = time.time() - PLACE_SETTLED_S
        gone = []
        for command_id, noted in self._entries.items():
            if noted.line != line or noted.seq <= 0:
                continue
            entry = noted
            if entry.bound is None and entry.noted_at <= settled:
                entry = replace(entry, bound=entry.seq + max(0, others - entry.others))
                self._entries[command_id] = entry
            if entry.bound is not None and entry.bound <= count:
                gone.append(command_id)
        for command_id in gone:
            del self._entries[command_id]

    def entries(self) -> list[Noted]:
        horizon = time.time() - MAX_AGE_S
        for command_id in [c for c, e in self._entries.items() if e.noted_at < horizon]:
            del self._entries[command_id]
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
