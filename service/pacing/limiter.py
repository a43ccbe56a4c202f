"""Pacing of API calls per (API, ParentUid) and per (API, egress address).

Each key is an evenly spaced schedule (GCRA with zero burst tolerance): ``tat`` is the earliest
instant the key's next request may be sent, and admitting a request moves it one ``interval``
on. A call spends from both of its keys at once: its slot is the later of the two ``tat`` and
both advance from that slot, so no slot is wasted on one key while waiting for the other.

Invariant: for every key, admitted send instants are at least ``interval = (1 s + guard) /
rate`` apart, so any 1-second window holds at most ``rate`` requests (``guard`` absorbs jitter
between our clock and the gateway's). No burst credit is ever saved up, so the invariant holds
right after start and after an idle period too: that is why this is not aiolimiter, whose leaky
bucket starts full and admits ``max_rate`` at once followed by steady flow (up to 2*rate-1 in
one sliding second).

The guard adapts per API: it starts small (``guard_s``, a few milliseconds: 0.2 % of the quota)
and widens only when the API actually throttles; after ``NARROW_AFTER_S`` without a throttling
answer it narrows by half again, not below where it started. A *lone* throttling answer -- the
first of an API for ``lone_s`` seconds while its guard can still widen -- is explained by jitter
that a wider guard absorbs: the guard doubles (at least +5 ms, at most ``guard_max_s``) and the
rate stays. A request sent late for its slot gives its lateness back (``late``), so the guard
need not cover the sender's own delays (a request absorbs at most ``tolerance``, a quarter of
the guard; the rest is left for the path to the gateway).

Rates adapt (AIMD) otherwise: a throttling answer that a wider guard does not explain (another
one soon after, or the guard already at its widest) halves the key's rate (never below
``floor``), and each second of use after that adds back ``ceiling * recovery`` until the
configured limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Protocol, Self

import structlog

__all__ = ["Bucket", "Grant", "Guard", "Limiter", "Pick", "RateLimiter"]

log = structlog.get_logger(__name__)

SWEEP_EVERY = 4096  # reservations between sweeps of idle buckets
GUARD_STEP_S = 0.005  # the least a lone throttling answer widens an API's guard by
LONE_S = 2.0  # a throttling answer is lone when its API saw none for this long
NARROW_AFTER_S = 60.0  # a widened guard narrows by half after this long without a 429


class Grant(NamedTuple):
    """The answer to ``acquire``: a joint slot ``wait`` seconds away, reserved if ``granted``;
    else nothing reserved and how long each bucket is still busy."""

    granted: bool
    wait: float
    uid_wait: float
    egress_wait: float
    at: float = 0.0  # the slot's instant in the limiter's clock


class Pick(NamedTuple):
    """The answer to ``acquire_any``: the ParentUid granted a slot (None: none was), its
    grant (or, with none granted, how long the egress is busy), and how long each candidate
    looked at but not granted is busy on its own bucket."""

    uid: str | None
    grant: Grant
    busy: dict[str, float]


class Limiter(Protocol):
    """What the scheduler and the client use: :class:`RateLimiter` in process, or
    ``service.pacing.shared.SharedBuckets`` on rows every replica shares."""

    @property
    def shared(self) -> bool: ...

    def limit(self, api: str) -> float | None: ...

    def now(self) -> float:
        """The limiter's clock (``sent_at`` instants are of it)."""
        ...

    def delay(self, api: str, parent_uid: str) -> float:
        """Seconds until a call could be sent, as far as known without I/O."""
        ...

    def egress_delay(self, api: str) -> float: ...

    def current_rate(self, api: str, parent_uid: str) -> float: ...

    def rates(self) -> dict[str, float]: ...

    async def acquire(self, api: str, parent_uid: str, *, within: float) -> Grant: ...

    async def acquire_any(self, api: str, uids: Sequence[str], *, within: float) -> Pick:
        """The joint slot of the first of ``uids`` (in the caller's order) whose slot is due
        within ``within`` seconds, reserved; the others looked at are reported busy."""
        ...

    async def report_throttled(
        self, api: str, parent_uid: str, *, pause_s: float = 1.0, sent_at: float | None = None
    ) -> bool: ...

    def tolerance(self, api: str) -> float:
        """Lateness a request may pick up without giving it back (see ``RateLimiter``)."""
        ...

    def late(self, api: str, parent_uid: str, *, slot: float, sent_at: float) -> float:
        """A call left at ``sent_at``, after its slot ``slot`` (both of the limiter's clock):
        lateness beyond ``tolerance`` moves both keys' next slots on by the excess, which is
        returned (0: absorbed by the guard). Without I/O: the request waits for nothing."""
        ...

    async def ticket(
        self, api: str, parent_uid: str, *, earliest: float, interval: float
    ) -> tuple[float, float]:
        """The key's next parking ticket (after its last one) and the spacing used."""
        ...


@dataclass(slots=True)
class Guard:
    """One API's guard: widened on lone throttling answers, up to a maximum; narrowed back
    by half, towards where it started, after each ``NARROW_AFTER_S`` without any (a busy
    start or a transient does not cost the quota's last percent for good)."""

    seconds: float
    widest: float
    widened_at: float = float("-inf")
    throttled_at: float = float("-inf")
    narrowed_at: float = float("-inf")
    narrowest: float = 0.0  # where it started; 0: its first width

    def __post_init__(self) -> None:
        self.narrowest = self.narrowest or self.seconds

    def relax(self, now: float) -> None:
        """Narrow by half (not below where it started) once ``NARROW_AFTER_S`` passed since
        the last throttling answer and the last change."""
        if self.seconds <= self.narrowest:
            return
        if now - max(self.throttled_at, self.widened_at, self.narrowed_at) < NARROW_AFTER_S:
            return
        self.seconds = max(self.narrowest, self.seconds / 2)
        self.narrowed_at = now  # the next step is another quiet period away
        log.info("rate_guard_narrowed", guard_ms=round(self.seconds * 1000, 1))

    def explains(self, now: float, sent_at: float | None = None) -> bool:
        """A throttling answer now is lone and the guard can still widen (widening it if so).
        An answer to a request sent before the last widening belongs to that episode: the
        wider guard already explains it."""
        if sent_at is not None and sent_at <= self.widened_at:
            return True
        lone = now - self.throttled_at >= LONE_S
        self.throttled_at = now
        if not lone or self.seconds >= self.widest:
            return False
        self.seconds = min(self.widest, max(2 * self.seconds, self.seconds + GUARD_STEP_S))
        self.widened_at = now
        return True


@dataclass(slots=True)
class Bucket:
    ceiling: float  # configured limit, requests/second
    rate: float  # current rate: lowered on throttling, probing back to ceiling
    guard: Guard  # its API's guard (shared by every bucket of the API)
    tat: float = 0.0  # theoretical arrival time of the next request (clock seconds)
    adjusted_at: float = 0.0

    @property
    def interval(self) -> float:
        return (1.0 + self.guard.seconds) / self.rate


class RateLimiter:
    """Registry of buckets keyed by (api, "uid", parent_uid) and (api, "egress", egress).

    The in-process limiter (one process, or an SQLite store). ``service.pacing.shared``
    offers the same interface on rows shared by replicas (``shared`` tells them apart).
    ``published``: the limits table (``service.api.operations.PUBLISHED_LIMITS``, handed in by
    the backend); ``overrides`` (``RELAY_RATE_LIMITS``) win over it, ``"*"`` over every
    published limit."""

    shared = False

    def __init__(
        self,
        overrides: Mapping[str, float] | None = None,
        *,
        published: Mapping[str, float | None] | None = None,
        egress: str = "default",
        guard_s: float = 0.002,
        guard_max_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        recovery: float = 0.1,
        floor: float = 0.5,
    ) -> None:
        overrides = dict(overrides or {})
        everything = overrides.pop("*", None)  # "*": one limit for every operation
        self._limits: dict[str, float | None] = {
            name: limit if everything is None else everything
            for name, limit in (published or {}).items()
            if limit is not None or everything is None
        }
        self._limits.update(overrides)
        self._egress = egress
        self._guard_s = guard_s
        self._guard_max_s = max(guard_s, guard_max_s)
        self._guards: dict[str, Guard] = {}
        self._clock = clock
        self._recovery = recovery
        self._floor = floor
        self._buckets: dict[tuple[str, str, str], Bucket] = {}
        self._since_sweep = 0

    def limit(self, api: str) -> float | None:
        limit = self._limits.get(api, self._limits.get("*"))
        return limit if limit else None

    def _keys(self, api: str, parent_uid: str) -> tuple[tuple[str, str, str], ...]:
        return ((api, "uid", parent_uid), (api, "egress", self._egress))

    def guard(self, api: str) -> Guard:
        """The API's guard (every bucket of the API spaces its slots with it)."""
        guard = self._guards.get(api)
        if guard is None:
            guard = self._guards[api] = Guard(self._guard_s, self._guard_max_s)
        return guard

    def _bucket(self, key: tuple[str, str, str], ceiling: float, now: float) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.guard.relax(now)
        if bucket is None:
            guard = self.guard(key[0])
            bucket = Bucket(ceiling=ceiling, rate=ceiling, guard=guard, adjusted_at=now)
            self._buckets[key] = bucket
        elif bucket.rate < bucket.ceiling and now > bucket.adjusted_at:
            gained = (now - bucket.adjusted_at) * bucket.ceiling * self._recovery
            bucket.rate = min(bucket.ceiling, bucket.rate + gained)
            bucket.adjusted_at = now
            if bucket.rate >= bucket.ceiling:
                log.info("rate_recovered", key="/".join(key), rate=bucket.rate)
        return bucket

    def delay(self, api: str, parent_uid: str) -> float:
        """Seconds until a call could be sent, without reserving it."""
        ceiling = self.limit(api)
        if ceiling is None:
            return 0.0
        now = self._clock()
        tats = [self._buckets[k].tat for k in self._keys(api, parent_uid) if k in self._buckets]
        return max([0.0, *(t - now for t in tats)])

    def reserve(self, api: str, parent_uid: str) -> float:
        """Reserve the next joint slot of both keys; returns the seconds to wait for it."""
        ceiling = self.limit(api)
        if ceiling is None:
            return 0.0
        now = self._clock()
        buckets = [self._bucket(k, ceiling, now) for k in self._keys(api, parent_uid)]
        slot = max(now, *(b.tat for b in buckets))
        for bucket in buckets:
            bucket.tat = slot + bucket.interval
        self._maybe_sweep(now)
        return slot - now

    def egress_delay(self, api: str) -> float:
        """Seconds until the API's egress bucket has a slot."""
        bucket = self._buckets.get((api, "egress", self._egress))
        return 0.0 if bucket is None else max(0.0, bucket.tat - self._clock())

    async def acquire(self, api: str, parent_uid: str, *, within: float) -> Grant:
        """Reserve the joint slot if it is due within ``within`` seconds (the shared
        limiter's interface; here without I/O)."""
        now = self._clock()
        if self.limit(api) is None:
            return Grant(True, 0.0, 0.0, 0.0, now)
        uid = self._buckets.get((api, "uid", parent_uid))
        egress = self._buckets.get((api, "egress", self._egress))
        uid_wait = max(0.0, uid.tat - now) if uid else 0.0
        egress_wait = max(0.0, egress.tat - now) if egress else 0.0
        wait = max(uid_wait, egress_wait)
        if wait > within:
            return Grant(False, wait, uid_wait, egress_wait, now + wait)
        wait = self.reserve(api, parent_uid)
        return Grant(True, wait, uid_wait, egress_wait, now + wait)

    async def acquire_any(self, api: str, uids: Sequence[str], *, within: float) -> Pick:
        busy: dict[str, float] = {}
        grant = Grant(False, 0.0, 0.0, 0.0)
        for uid in uids:
            grant = await self.acquire(api, uid, within=within)
            if grant.granted:
                return Pick(uid, grant, busy)
            if grant.egress_wait >= grant.wait - 1e-9:
                return Pick(None, grant, busy)  # the egress is busy: no candidate can go
            busy[uid] = grant.uid_wait
        return Pick(None, grant, busy)

    async def report_throttled(
        self, api: str, parent_uid: str, *, pause_s: float = 1.0, sent_at: float | None = None
    ) -> bool:
        return self.throttled(api, parent_uid, pause_s=pause_s, sent_at=sent_at)

    def tolerance(self, api: str) -> float:
        """Lateness a request absorbs without giving it back: a quarter of the guard. A
        window starting at a request ``d`` late holds ``limit`` more only if ``d`` exceeds
        the lateness of the ``limit``-th next by more than the guard plus what the first gave
        back (``d - tolerance``): so the path to the gateway keeps ``guard - tolerance`` of
        jitter, however many requests of the window are late."""
        return self.guard(api).seconds / 4

    def late(self, api: str, parent_uid: str, *, slot: float, sent_at: float) -> float:
        """A call was sent ``sent_at - slot`` seconds after its slot (an event loop that
        woke late, a store round trip, a busy machine). Slots are spaced by ``(1 + guard) /
        rate``, so a late send could otherwise share a 1-second window with ``rate`` later
        ones sent on time. Lateness up to ``tolerance`` is absorbed (the rest of the guard
        is left for the path to the gateway); beyond that, both keys' next slots move on by
        the excess: the window that starts at the late send then holds at most ``rate``
        requests. Returns the excess (0: nothing moved)."""
        if self.limit(api) is None:
            return 0.0
        excess = sent_at - slot - self.tolerance(api)
        if excess <= 0:
            return 0.0
        for key in self._keys(api, parent_uid):
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.tat += excess
        log.debug("sent_late", api=api, excess_ms=round(excess * 1000, 1))
        return excess

    async def ticket(
        self, api: str, parent_uid: str, *, earliest: float, interval: float
    ) -> tuple[float, float]:
        """In process the scheduler keeps the tickets (``FairScheduler.estimate``)."""
        return earliest, interval

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def current_rate(self, api: str, parent_uid: str) -> float:
        """The (API, ParentUid) bucket's rate now: the ceiling unless throttling lowered it."""
        bucket = self._buckets.get((api, "uid", parent_uid))
        if bucket is not None:
            return bucket.rate
        return self.limit(api) or float("inf")

    def now(self) -> float:
        """The limiter's clock (callers pass instants of it back, as ``sent_at``)."""
        return self._clock()

    def throttled(
        self, api: str, parent_uid: str, *, pause_s: float = 1.0, sent_at: float | None = None
    ) -> bool:
        """The API answered 429 for this key. A lone answer widens the API's guard and the next
        slot waits one (wider) interval; otherwise halve the key's rate and pause it
        (multiplicative decrease). Slots already reserved keep their place; new ones start
        after the pause. ``sent_at`` (the limiter's clock) is when the refused request was
        sent, if known. True when the rate was halved."""
        now = self._clock()
        ceiling = self.limit(api)
        if ceiling is None:
            return False
        bucket = self._bucket((api, "uid", parent_uid), ceiling, now)
        if bucket.guard.explains(now, sent_at):
            bucket.tat = max(bucket.tat, now + bucket.interval)
            log.warning("rate_guard_widened", api=api, guard_ms=bucket.guard.seconds * 1000)
            return False
        bucket.rate = max(self._floor, bucket.rate / 2)
        bucket.adjusted_at = now + pause_s
        bucket.tat = max(bucket.tat, now + pause_s)
        log.warning(
            "rate_lowered", api=api, parent_uid=parent_uid, rate=bucket.rate, ceiling=ceiling
        )
        return True

    def rates(self) -> dict[str, float]:
        """Current rate of every key below its ceiling (for logs and metrics)."""
        return {
            "/".join(key): bucket.rate
            for key, bucket in self._buckets.items()
            if bucket.rate < bucket.ceiling
        }

    def __len__(self) -> int:
        return len(self._buckets)

    def _maybe_sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep < SWEEP_EVERY:
            return
        self._since_sweep = 0
        self.sweep(now)

    def sweep(self, now: float | None = None) -> int:
        """Drop buckets that are idle at full rate: their next slot has passed, so a fresh
        bucket (first slot: now) behaves identically. Memory then follows the keys with a slot
        still ahead, not every key seen lately, however fast keys come and go. A bucket whose
        rate throttling lowered is kept until it has recovered."""
        now = self._clock() if now is None else now
        idle = [key for key, b in self._buckets.items() if b.rate >= b.ceiling and b.tat <= now]
        for key in idle:
            del self._buckets[key]
        return len(idle)
