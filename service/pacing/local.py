"""The pacing algorithm in process (one replica, or an SQLite store): ``service.pacing.buckets``
states it; ``service/pacing/postgres.sql`` is the same algorithm on rows every replica shares,
and ``tests/pacing/test_differential.py`` keeps the two equal, step for step.

The functions below mirror the SQL functions one to one (``climb`` is ``relay_pacing_climb``,
and so on), with the same order of arithmetic, so that both give the same instants to the bit
for the same trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from service.pacing.buckets import (
    EPSILON_S,
    FLOOR_RATE,
    GUARD_STEP_S,
    HOLD_FIRST_S,
    HOLD_MAX_S,
    IDLE_S,
    LONE_S,
    NARROW_AFTER_S,
    PAUSE_AFTER_CUT_S,
    PROBE_EVERY_S,
    STEP_MIN,
    STEP_SHARE,
    Candidate,
    Looked,
    Offer,
    Priority,
    Reservation,
    Throttle,
    Throttled,
)

__all__ = ["SWEEP_EVERY", "Bucket", "LocalBuckets"]

INF = float("inf")
SWEEP_EVERY = 4096  # reservations between sweeps of buckets at rest

Key = tuple[str, str, str]  # (api, kind, name), kind 'customer' or 'egress'


@dataclass(slots=True)
class Bucket:
    """One bucket's state: the columns of ``relay_pacing``."""

    tat: float = 0.0  # next slot
    cap: float = INF  # the rate's ceiling from throttling; INF: none
    good: float = 0.0  # a rate known accepted since the last cut; 0: none known
    step: float = 0.0  # the next climbing step, requests/s
    cut_at: float = -INF  # the last cut: answers to requests sent before belong to it
    probe_at: float = INF  # the next climbing step's instant; INF: not climbing
    hold_s: float = 0.0  # how long a found level is held (0: searching)
    want_prio: int = 0  # a waiting candidate's priority that wants a slot of this bucket
    want_at: float = 0.0  # ... the instant it wants
    want_until: float = 0.0  # ... and until when the want stands
    want_by: str = ""  # ... the replica it waits on
    used_at: float = 0.0
    # egress buckets only: the API's guard on this egress
    guard: float = 0.0
    guard_min: float = 0.0
    throttled_at: float = -INF
    widened_at: float = -INF
    narrowed_at: float = -INF


def first_step(limit: float) -> float:
    return max(STEP_MIN, limit * STEP_SHARE)


def climb(b: Bucket, limit: float, now: float) -> None:
    """The rate's lazy climb: every ``PROBE_EVERY_S`` since the cut, the rate that ran is good
    and the cap rises by a doubling step; at the limit in force the episode ends."""
    while b.cap < INF and b.probe_at <= now:
        b.good = max(b.good, min(b.cap, limit))
        b.cap = b.cap + b.step
        b.step = b.step * 2
        b.probe_at = b.probe_at + PROBE_EVERY_S
        if b.cap >= limit:
            end_episode(b)


def end_episode(b: Bucket) -> None:
    b.cap, b.good, b.step, b.probe_at, b.hold_s = INF, 0.0, 0.0, INF, 0.0


def rate(b: Bucket, limit: float) -> float:
    return min(limit, b.cap)


def probing_above(b: Bucket, limit: float) -> bool:
    """The rate climbs above a level known good: a 429 now is the probe failing, not jitter."""
    return b.good > 0 and rate(b, limit) > b.good


def narrow(e: Bucket, now: float) -> None:
    """A widened guard halves after a quiet ``NARROW_AFTER_S``, not below where it started."""
    if e.guard > e.guard_min and now - max(e.throttled_at, e.widened_at, e.narrowed_at) >= (
        NARROW_AFTER_S
    ):
        e.guard = max(e.guard_min, e.guard / 2)
        e.narrowed_at = now


def explains(e: Bucket, now: float, sent_at: float | None, guard_max: float) -> bool:
    """A lone 429 widens the egress's guard and is explained by it; an answer to a request
    sent before the last widening belongs to that episode."""
    if sent_at is not None and sent_at <= e.widened_at:
        return True
    lone = now - e.throttled_at >= LONE_S
    e.throttled_at = now
    if not lone or e.guard >= guard_max:
        return False
    e.guard = min(guard_max, max(2 * e.guard, e.guard + GUARD_STEP_S))
    e.widened_at = now
    return True


def cut(b: Bucket, limit: float, now: float, sent_at: float | None) -> bool:
    """A 429 blamed on this bucket; True when its rate was cut (a new episode)."""
    if sent_at is not None and sent_at < b.cut_at:
        return False
    current = rate(b, limit)
    if b.good > 0 and current > b.good:  # probing above a known-good level failed: hold it
        b.cap = b.good
        b.hold_s = min(HOLD_MAX_S, max(2 * b.hold_s, HOLD_FIRST_S))
        b.probe_at = now + PAUSE_AFTER_CUT_S + b.hold_s
    else:  # the API lowered its limit below where we run: halve, then search upwards
        b.cap = max(FLOOR_RATE, current / 2)
        b.good = 0.0
        b.hold_s = 0.0
        b.probe_at = now + PAUSE_AFTER_CUT_S + PROBE_EVERY_S
    b.step = first_step(limit)
    b.cut_at = now
    b.tat = max(b.tat, now + PAUSE_AFTER_CUT_S)
    return True


def blocks(b: Bucket, priority: int, end: float, now: float) -> bool:
    """A standing want of a higher priority forbids a slot that ends after its instant."""
    return b.want_prio > priority and b.want_until > now and end > b.want_at


def want(b: Bucket, c: Candidate, at: float, until: float, *, owner: str, now: float) -> None:
    if b.want_prio < c.priority or b.want_until <= now:
        b.want_prio, b.want_at, b.want_until, b.want_by = c.priority, at, until, owner
    elif b.want_prio == c.priority:
        b.want_at = min(b.want_at, at)
        b.want_until = max(b.want_until, until)
        b.want_by = owner


def release(b: Bucket, c: Candidate, owner: str) -> None:
    if b.want_prio == c.priority and b.want_by == owner and not c.more:
        b.want_prio, b.want_at, b.want_until, b.want_by = 0, 0.0, 0.0, ""


class LocalBuckets:
    """:class:`~service.pacing.buckets.Buckets` in this process's memory."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[Key, Bucket] = {}
        self._since_sweep = 0

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        return len(self._buckets)

    def items(self) -> Iterator[tuple[Key, Bucket]]:
        return iter(self._buckets.items())

    def get(self, api: str, kind: str, name: str) -> Bucket | None:
        return self._buckets.get((api, kind, name))

    def _egress(self, api: str, name: str, guard_min: float) -> Bucket:
        key = (api, "egress", name)
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = Bucket(guard=guard_min, guard_min=guard_min)
        return found

    def _customer(self, api: str, uid: str) -> Bucket:
        key = (api, "customer", uid)
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = Bucket()
        return found

    def _widest_guard(self, api: str, egress: Bucket) -> float:
        widest = egress.guard
        for (name, kind, _), b in self._buckets.items():
            if name == api and kind == "egress" and b.guard > widest:
                widest = b.guard
        return widest

    async def reserve(self, offer: Offer) -> Reservation:
        return self.reserve_now(offer)

    def reserve_now(self, o: Offer) -> Reservation:
        """``reserve`` without a coroutine (the dispatcher's hot path in process)."""
        now = self._clock() if o.now is None else o.now
        e = self._egress(o.api, o.egress, o.guard_min)
        self._give_back(o.api, e, o.late)
        narrow(e, now)
        climb(e, o.egress_limit, now)
        g = e.guard
        gmax = self._widest_guard(o.api, e)
        rate_e = rate(e, o.egress_limit)
        ival_e = (1 + g) / rate_e
        horizon = o.within
        if 0 < o.within < e.tat - now <= o.within + ival_e:
            horizon = e.tat - now  # another replica took the slot this one came for
        looked: list[Looked] = []
        soonest = INF
        for c in o.candidates:
            if e.tat - now > horizon and c.priority <= Priority.LOW:
                continue  # the egress is busy: nobody goes, and a low one wants nothing
            u = self._customer(o.api, c.uid)
            climb(u, c.limit, now)
            rate_u = rate(u, c.limit)
            ival_u = (1 + gmax) / rate_u
            slot = max(now, e.tat, u.tat)
            soonest = min(soonest, slot)
            if slot - now <= horizon + EPSILON_S and not (
                blocks(e, c.priority, slot + ival_e, now)
                or blocks(u, c.priority, slot + ival_u, now)
            ):
                e.tat = slot + ival_e
                u.tat = slot + ival_u
                e.used_at = now
                u.used_at = now
                release(e, c, o.owner)
                release(u, c, o.owner)
                looked.append(Looked(c.uid, u.tat, rate_u))
                self._maybe_sweep(now)
                return Reservation(c.uid, slot, e.tat, rate_e, g, tuple(looked), now)
            if c.priority > Priority.LOW:
                want(e, c, slot, slot + ival_e, owner=o.owner, now=now)
                want(u, c, slot, slot + ival_u, owner=o.owner, now=now)
            looked.append(Looked(c.uid, u.tat, rate_u))
        slot = soonest if soonest < INF else max(now, e.tat)
        return Reservation(None, slot, e.tat, rate_e, g, tuple(looked), now)

    async def throttled(self, throttle: Throttle) -> Throttled:
        t = throttle
        now = self._clock() if t.now is None else t.now
        e = self._egress(t.api, t.egress, t.guard_min)
        u = self._customer(t.api, t.uid)
        climb(e, t.egress_limit, now)
        climb(u, t.customer_limit, now)
        probing = (t.blame != "egress" and probing_above(u, t.customer_limit)) or (
            t.blame != "customer" and probing_above(e, t.egress_limit)
        )
        explained = not probing and explains(e, now, t.sent_at, t.guard_max)
        customer_cut = egress_cut = False
        if explained:  # the next slot waits one wider interval
            gmax = self._widest_guard(t.api, e)
            if t.blame != "egress":
                u.tat = max(u.tat, now + (1 + gmax) / rate(u, t.customer_limit))
            if t.blame != "customer":
                e.tat = max(e.tat, now + (1 + e.guard) / rate(e, t.egress_limit))
        else:
            if t.blame != "egress":
                customer_cut = cut(u, t.customer_limit, now, t.sent_at)
            if t.blame != "customer":
                egress_cut = cut(e, t.egress_limit, now, t.sent_at)
        return Throttled(
            explained,
            customer_cut,
            egress_cut,
            rate(u, t.customer_limit),
            rate(e, t.egress_limit),
            e.guard,
            now,
            u.tat,
        )

    async def give_back(self, api: str, egress: str, late: Sequence[tuple[str, float]]) -> None:
        e = self._buckets.get((api, "egress", egress))
        if e is not None:
            self._give_back(api, e, late)

    def _give_back(self, api: str, e: Bucket, late: Sequence[tuple[str, float]]) -> None:
        for uid, excess in late:
            e.tat += excess
            u = self._buckets.get((api, "customer", uid))
            if u is not None:
                u.tat += excess

    def _maybe_sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep >= SWEEP_EVERY:
            self._since_sweep = 0
            self.sweep_now(now)

    async def sweep(self, now: float | None = None) -> int:
        return self.sweep_now(now)

    def sweep_now(self, now: float | None = None) -> int:
        """Delete buckets at rest (idle for ``IDLE_S``, next slot past, no cut, no want, the
        guard where it started): a fresh bucket behaves the same."""
        now = self._clock() if now is None else now
        idle = [
            key
            for key, b in self._buckets.items()
            if b.used_at < now - IDLE_S
            and b.tat <= now
            and b.cap == INF
            and b.want_until <= now
            and b.guard <= b.guard_min
        ]
        for key in idle:
            del self._buckets[key]
        return len(idle)
