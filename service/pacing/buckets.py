"""The pacing algorithm, stated once; two backends implement it (``local``, ``postgres``).

Buckets
    One per (API, ``customer``, ParentUid) and one per (API, ``egress``, egress name). A call
    spends from both of its buckets at once. A bucket is an evenly spaced schedule (GCRA with
    zero burst tolerance): ``tat`` is the earliest instant its next request may leave.

Invariant 1 -- never over a limit.
    Admitted send instants of a bucket are at least ``interval = (1 s + guard) / rate`` apart,
    so no 1-second window holds more than ``rate`` requests, right after start and after idle
    periods too (no burst credit is ever saved up). ``rate`` never exceeds the limit in force.

Reserving (``reserve``, one call per slot)
    An :class:`Offer` names the caller's candidate customers in its order (priority first,
    then round-robin: the dispatcher's business). The first candidate whose joint slot
    ``max(now, egress.tat, customer.tat)`` is due within ``within`` seconds (plus
    ``EPSILON_S``) gets it, and both
    buckets move one interval on from the slot. Nothing is reserved further ahead, so a replica
    never holds slots that another could use. Exception: a caller asking ahead (``within`` >
    0, replicas whose answer takes a round trip) that lost the race for the egress's slot
    (another replica on the same egress took it just now) may take the next one, one egress
    interval on, in the same call. In process, slots are asked for when due (``within`` 0):
    a request sent late then gives its lateness back before the next slot is granted.

Invariant 2 -- priority.
    A candidate of priority ``p`` that could not be granted leaves a *want* on both buckets
    (``want_prio = p``, the instant it wants, ``want_at``, and until when, ``want_until``,
    one interval after it) -- also while the egress is busy, so that its want is known before
    the slot comes. While a want stands, a lower-priority candidate is not granted a
    slot that would move the bucket past ``want_at``; slots that end before it stay usable,
    so priority never wastes quota. A granted candidate clears its own want when it has no
    more waiting at that priority (``more``). Low never leaves a want.

Invariant 3 -- lateness given back.
    A request that left ``d`` after its slot gives ``d - tolerance`` back: both buckets' next
    slots move on by it, so the window starting at the late send still holds at most
    ``rate``. ``tolerance`` is a quarter of the guard (the rest is for the path to the API).

The guard (per API and egress)
    Starts at ``guard_min``. A *lone* 429 (none on that egress for ``LONE_S``), unless a blamed
    rate is probing above a level known good (then the probe failed), is put down to jitter:
    the guard doubles (at least ``+GUARD_STEP_S``, at most ``guard_max``) and rates
    stay. Answers to requests sent before the last widening belong to that episode. After
    ``NARROW_AFTER_S`` without a 429 the guard halves, not below ``guard_min``. A customer's
    bucket, shared by replicas on every egress, is spaced by the widest guard of the API.

The rate (per bucket; "the API changes its mind")
    ``rate = min(limit in force, cap)``; ``cap`` is infinite until a 429 the guard does not
    explain is blamed on the bucket (the caller says which: the customer's, the egress's, or
    both). Answers to requests sent before the bucket's last cut (``cut_at``) belong to that
    episode and change nothing. A new episode:

    * if a known-good level exists below the rate (``good``: a rate that ran a whole
      ``PROBE_EVERY_S`` without a 429), the rate was probing above it: back to ``good``, and
      hold there (``hold_s``: ``HOLD_FIRST_S``, doubling per failed probe, at most
      ``HOLD_MAX_S``) -- no probing into 429s once the level is found;
    * otherwise the API lowered its limit below where we run: halve (not below
      ``FLOOR_RATE``) and search upwards.

    Either way the bucket pauses ``PAUSE_AFTER_CUT_S`` (the API's window drains). Then, every
    ``PROBE_EVERY_S`` without a new episode, the rate that ran is good and the rate climbs by a
    step that doubles each time (the first: ``STEP_SHARE`` of the limit, at least
    ``STEP_MIN``), until it reaches the limit in force and the episode ends. Climbing is
    computed lazily, from the bucket and ``now``, wherever the bucket is read.

Clocks
    Instants are seconds of the backend's clock: ``time.monotonic`` in process; the database
    server's ``clock_timestamp()`` (epoch seconds) for shared rows, which every replica then
    shares. Every operation takes ``now`` (None: the backend's clock), so one trace can drive
    both backends (tests/pacing/test_differential.py).

Memory
    A bucket idle for ``IDLE_S`` at full rate, its next slot past and its guard at rest, is
    deleted: a fresh one behaves the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, Protocol

__all__ = [
    "EPSILON_S",
    "FLOOR_RATE",
    "GUARD_STEP_S",
    "HOLD_FIRST_S",
    "HOLD_MAX_S",
    "IDLE_S",
    "LONE_S",
    "NARROW_AFTER_S",
    "PAUSE_AFTER_CUT_S",
    "PROBE_EVERY_S",
    "STEP_MIN",
    "STEP_SHARE",
    "Blame",
    "Buckets",
    "Candidate",
    "Looked",
    "Offer",
    "Priority",
    "Reservation",
    "Throttle",
    "Throttled",
]

GUARD_STEP_S = 0.005  # the least a lone 429 widens a guard by
LONE_S = 2.0  # a 429 is lone when its egress saw none for this long
NARROW_AFTER_S = 60.0  # a widened guard halves after this long without a 429
PAUSE_AFTER_CUT_S = 1.0  # a bucket whose rate was cut sends nothing for this long
PROBE_EVERY_S = 1.0  # a cut rate climbs one step per this long without a new episode
# A level found by a failed probe is held this long before probing again: long enough that the
# 429s of a lowered limit stop (one failed probe per hold), short enough that a limit raised
# right after the failed probe is used again within 30 s (the hold, a second's pause, and
# about four doubling steps to the limit).
HOLD_FIRST_S = 25.0
HOLD_MAX_S = 300.0  # ... doubling per failed probe, up to this
FLOOR_RATE = 0.5  # requests/s a cut never goes below
STEP_SHARE = 0.05  # the first climbing step: this share of the limit in force ...
STEP_MIN = 0.5  # ... and at least this many requests/s
IDLE_S = 3600.0  # an idle bucket at rest is deleted after this long
EPSILON_S = 1e-6  # a slot due within a microsecond counts as due (float rounding of instants)

Blame = Literal["customer", "egress", "both"]


class Priority(IntEnum):
    """A command's priority; a higher value goes first (CONTRACT §2, §9)."""

    LOW = 1
    NORMAL = 2
    HIGH = 3


@dataclass(frozen=True, slots=True)
class Candidate:
    uid: str  # the customer's ParentUid
    priority: int
    limit: float  # requests/s in force for the customer's bucket
    more: bool = False  # the caller has more waiting at this priority for this customer


@dataclass(frozen=True, slots=True)
class Offer:
    """One reservation: the candidates in the caller's order, the egress and its limit."""

    api: str
    egress: str
    egress_limit: float
    candidates: Sequence[Candidate]
    within: float  # grant only a slot due within this many seconds
    owner: str = ""  # the replica asking (whose wants these are)
    guard_min: float = 0.002
    guard_max: float = 0.05
    late: Sequence[tuple[str, float]] = ()  # lateness to give back first: (uid, seconds)
    now: float | None = None


@dataclass(frozen=True, slots=True)
class Looked:
    """A candidate looked at: when its own bucket is next free, at what rate."""

    uid: str
    ready_at: float
    rate: float


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: str | None  # the uid granted a slot, None: nobody
    slot: float  # the granted slot's instant (else the soonest joint slot looked at)
    egress_ready_at: float  # the egress bucket's next slot after this call
    egress_rate: float
    guard: float
    looked: tuple[Looked, ...] = ()  # every candidate looked at, in order
    now: float = 0.0  # the backend's clock when it answered


@dataclass(frozen=True, slots=True)
class Throttle:
    """A 429 for a request of ``uid`` through ``egress``, sent at ``sent_at``."""

    api: str
    uid: str
    egress: str
    blame: Blame
    customer_limit: float
    egress_limit: float
    sent_at: float | None = None
    guard_min: float = 0.002
    guard_max: float = 0.05
    now: float | None = None


@dataclass(frozen=True, slots=True)
class Throttled:
    explained: bool  # a lone 429: the guard widened, rates kept
    customer_cut: bool
    egress_cut: bool
    customer_rate: float
    egress_rate: float
    guard: float
    now: float = 0.0
    ready_at: float = field(default=0.0)  # the customer's bucket's next slot


class Buckets(Protocol):
    """What both backends implement (``service.pacing.local``, ``service.pacing.postgres``)."""

    def now(self) -> float:
        """The backend's clock (instants in answers are of it)."""
        ...

    async def reserve(self, offer: Offer) -> Reservation: ...

    async def throttled(self, throttle: Throttle) -> Throttled: ...

    async def give_back(self, api: str, egress: str, late: Sequence[tuple[str, float]]) -> None:
        """Move the named customers' and the egress's next slots on by the lateness."""
        ...

    async def sweep(self, now: float | None = None) -> int:
        """Delete the buckets at rest; how many."""
        ...
