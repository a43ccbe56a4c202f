"""Every API call waits for its turn here: one dispatcher per API, on either backend.

Callers wait per (customer, priority). The dispatcher of an API offers the next slot to its
waiting customers in one reservation (``Buckets.reserve``): priority first (high, normal, low),
and within a priority round-robin, least recently served first -- so one customer's burst
gets one slot in N when N customers of its priority wait, and a customer whose own bucket is
busy is passed over for the next rather than leaving the egress's slot unused. It asks only
when a slot is due (on shared rows, a round trip ahead: ``PacingConfig.ahead_s``), and once a
slot is granted it waits for the slot's instant and hands it to the customer's longest waiter. A
waiter of a higher priority than any the dispatcher has left a want for wakes it at once, so
its want stands on the buckets (for every replica) before the slot comes -- also while a slot
granted ahead is being kept, and also when its customer's own bucket is busy.

Also here, because they are questions about who waits: a 429's report to the backend
(``throttled``, which also decides whom to blame), lateness to give back (``late``: it rides on
the next reservation of its API, or goes alone after ``GIVE_BACK_WITHIN_S``), how long a new
command would wait (``expected_wait``: the admission step parks it beyond the hold window),
what waits now (``waiting``) and which buckets were used lately (``reports``): what the
replica publishes for ``quota show`` and ``why``.

Paused customers (``bss-relay pause``): their waiters get :class:`~handlers.errors.Paused`
(nothing was sent; the command is parked until resumed) and new calls are refused the same way.

Invariants: the dispatcher of an API exists only while someone waits on it; a (customer,
priority) queue exists only while non-empty; usage kept for reports is pruned after
``REPORT_S``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import structlog

from handlers.errors import RelayError, paused
from service.pacing.buckets import (
    EPSILON_S,
    LONE_S,
    Blame,
    Buckets,
    Candidate,
    Offer,
    Priority,
    Reservation,
    Throttle,
    Throttled,
)
from service.pacing.limits import Limits
from service.store.errors import STORE_ERRORS

__all__ = ["Dispatcher", "PacingConfig", "Usage", "Waiting"]

log = structlog.get_logger(__name__)

INF = math.inf
CANDIDATES = 16  # customers offered per reservation
GIVE_BACK_WITHIN_S = 0.25  # lateness no reservation carried this soon goes alone
SPIN_PAUSE_S = 0.002  # a due slot refused (another replica's want or lock): ask again after
REPORT_S = 300.0  # usage kept for reports: the last 5 minutes
PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
AWAY: tuple[type[BaseException], ...] = (RelayError, *STORE_ERRORS)  # the store is away


@dataclass(frozen=True, slots=True)
class PacingConfig:
    """This replica's part in pacing: its egress, its name, its guard bounds."""

    egress: str = "default"
    owner: str = ""
    guard_min: float = 0.002
    guard_max: float = 0.05
    # how far ahead of a slot to ask for it: 0 in process (asked when due, so a late send's
    # give-back lands before the next grant); a round trip's worth on shared rows
    ahead_s: float = 0.0


@dataclass(slots=True)
class _Waiter:
    uid: str
    priority: int
    since: float  # wall clock
    future: asyncio.Future[float]
    command_id: str | None


@dataclass(frozen=True, slots=True)
class Waiting:
    """One call waiting here, for the replica's published waiting set."""

    command_id: str | None
    api: str
    kind: str  # the bucket it waits for: 'customer' or 'egress'
    key: str
    priority: int
    since: float  # wall clock
    expected_at: float  # wall clock
    customer: str = ""  # the ParentUid it is for (``key`` may be the egress)


@dataclass(slots=True)
class Usage:
    """A bucket used lately: for ``quota show``."""

    rate: float
    used_at: float  # wall clock
    throttled: deque[float] = field(default_factory=deque)  # wall clock of each 429


@dataclass(slots=True)
class _Lane:
    """The waiters of one API."""

    api: str
    queues: dict[tuple[str, int], deque[_Waiter]] = field(default_factory=dict)
    rotation: dict[int, OrderedDict[str, None]] = field(
        default_factory=lambda: {p: OrderedDict() for p in PRIORITIES}
    )
    ready: dict[str, float] = field(default_factory=dict)  # uid -> its bucket's next slot
    rates: dict[str, float] = field(default_factory=dict)  # uid -> its rate, last seen
    egress_ready: float = 0.0
    egress_rate: float = INF
    wanted: int = 0  # the highest priority with a want left since the last reservation
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self.queues)

    def waiters(self) -> Iterator[_Waiter]:
        for queue in self.queues.values():
            yield from queue


class Dispatcher:
    def __init__(
        self,
        buckets: Buckets,
        limits: Limits,
        *,
        config: PacingConfig,
        is_paused: Callable[[str, str], bool] = lambda _api, _uid: False,
        on_served: Callable[[], None] = lambda: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._buckets = buckets
        self._limits = limits
        self._config = config
        self._is_paused = is_paused
        self._on_served = on_served
        self._sleep = sleep
        self._coming: Counter[tuple[str, str, int]] = Counter()  # admitted, not waiting yet
        self._lanes: dict[str, _Lane] = {}
        self._late: dict[str, list[tuple[str, float]]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._urgent: list[asyncio.Task[None]] = []  # give-backs sent at once (see late)
        self._usage: dict[tuple[str, str, str], Usage] = {}
        self._throttled_at: dict[str, dict[str, float]] = {}  # api -> uid -> its last 429

    @property
    def buckets(self) -> Buckets:
        return self._buckets

    def limited(self, api: str) -> bool:
        return self._limits.limited(api)

    def tolerance(self, api: str) -> float:
        """Lateness a request absorbs without giving it back: a quarter of the guard."""
        return self._config.guard_min / 4

    # -- waiting for a turn ----------------------------------------------------------------

    async def turn(
        self,
        api: str,
        uid: str,
        *,
        priority: int = Priority.NORMAL,
        command_id: str | None = None,
        since: float | None = None,
    ) -> float | None:
        """Return when this call may be sent: the slot's instant in the buckets' clock (None
        for an unlimited API). ``since``: when its command began to wait (wall clock; now if
        not given). Raises ``Paused`` while the customer is paused."""
        if not self._limits.limited(api):
            return None
        if self._is_paused(api, uid):
            raise paused(api, uid)
        lane = self._lanes.get(api)
        if lane is None:
            lane = self._lanes[api] = _Lane(api)
        future = asyncio.get_running_loop().create_future()
        waiter = _Waiter(uid, priority, since or time.time(), future, command_id)
        queue = lane.queues.get((uid, priority))
        if queue is None:
            queue = lane.queues[(uid, priority)] = deque()
            lane.rotation[priority][uid] = None
            lane.wakeup.set()  # a customer new to the lane may go before those waited for
        elif priority > lane.wanted and priority > Priority.LOW:
            lane.wakeup.set()  # its want must stand before the slot comes
        queue.append(waiter)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._dispatch(lane))
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._discard(lane, waiter)
            raise

    def _discard(self, lane: _Lane, waiter: _Waiter) -> None:
        key = (waiter.uid, waiter.priority)
        queue = lane.queues.get(key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                self._drop_queue(lane, key)

    def _drop_queue(self, lane: _Lane, key: tuple[str, int]) -> None:
        del lane.queues[key]
        uid, priority = key
        lane.rotation[priority].pop(uid, None)
        if not any((uid, p) in lane.queues for p in PRIORITIES):
            lane.ready.pop(uid, None)
            lane.rates.pop(uid, None)

    def steering_changed(self) -> None:
        """Live limits or pauses changed: every lane looks again now."""
        for lane in self._lanes.values():
            lane.wakeup.set()

    def _drop_paused(self, lane: _Lane) -> None:
        for key in [k for k in lane.queues if self._is_paused(lane.api, k[0])]:
            for waiter in lane.queues[key]:
                if not waiter.future.done():
                    waiter.future.set_exception(paused(lane.api, key[0]))
            self._drop_queue(lane, key)

    # -- the dispatcher of one API ---------------------------------------------------------

    def _near(self, api: str) -> float:
        """How far ahead of a slot to ask for it: on shared rows, ``ahead_s`` or half an egress
        interval (a customer whose own bucket frees a little after the egress slot still takes
        it rather than skipping its turn); in process, when it is due."""
        ahead = self._config.ahead_s
        if ahead <= 0:
            return 0.0
        limit = self._limits.egress(api, self._config.egress) or INF
        return max(ahead, 0.5 / limit)

    async def _dispatch(self, lane: _Lane) -> None:
        try:
            while True:
                self._drop_paused(lane)
                if not lane:
                    return
                now, near = self._buckets.now(), self._near(lane.api)
                candidates = self._candidates(lane, now, near)
                if not candidates:
                    soonest = min(lane.ready.get(uid, now) for uid, _ in lane.queues)
                    await self._idle(lane, soonest - now - near / 2)
                    continue
                # while the egress is busy, ask only to leave a want a higher priority needs
                wanting = max(
                    (c.priority for c in candidates if c.priority > Priority.LOW), default=0
                )
                if lane.egress_ready - now > near + EPSILON_S and wanting <= lane.wanted:
                    await self._idle(lane, lane.egress_ready - now - near / 2)
                    continue
                reservation = await self._reserve(lane, candidates, near)
                if reservation is None:
                    return  # the store is away: every waiter got the error
                await self._settle(lane, candidates, reservation, near)
        finally:
            if self._lanes.get(lane.api) is lane and not lane:
                del self._lanes[lane.api]

    def _candidates(self, lane: _Lane, now: float, near: float) -> list[Candidate]:
        """Each waiting customer once, at its highest waiting priority, priority first, then
        round-robin; those whose own bucket is busy beyond ``near`` left out, unless a lower
        priority waits too: their wants must stand on the egress before their own buckets
        free up, or the lower ones (of this replica or another) book the egress's next slots
        meanwhile."""
        found: list[Candidate] = []
        offered: set[str] = set()
        lowest = min((p for _, p in lane.queues), default=Priority.LOW)
        for priority in PRIORITIES:
            for uid in lane.rotation[priority]:
                busy = lane.ready.get(uid, 0.0) > now + near + EPSILON_S
                if uid in offered or (busy and priority <= lowest):
                    continue
                offered.add(uid)
                limit = self._limits.customer(lane.api, uid) or INF
                more = len(lane.queues[(uid, priority)]) > 1
                found.append(Candidate(uid, priority, limit, more))
                if len(found) >= CANDIDATES:
                    return found
        return found

    async def _reserve(
        self, lane: _Lane, candidates: list[Candidate], near: float
    ) -> Reservation | None:
        config = self._config
        late = self._late.pop(lane.api, [])
        offer = Offer(
            api=lane.api,
            egress=config.egress,
            egress_limit=self._limits.egress(lane.api, config.egress) or INF,
            candidates=candidates,
            within=near,
            owner=config.owner,
            guard_min=config.guard_min,
            guard_max=config.guard_max,
            late=late,
        )
        try:
            return await self._buckets.reserve(offer)
        except Exception as exc:
            self._late.setdefault(lane.api, []).extend(late)
            self._fail_all(lane, exc)
            if not isinstance(exc, AWAY):  # a bug: say so
                log.exception("pacing_reservation_failed", api=lane.api)
            return None

    async def _settle(
        self, lane: _Lane, candidates: list[Candidate], r: Reservation, near: float
    ) -> None:
        for looked in r.looked:
            lane.ready[looked.uid] = looked.ready_at
            lane.rates[looked.uid] = looked.rate
        lane.egress_ready, lane.egress_rate = r.egress_ready_at, r.egress_rate
        refused = (c.priority for c in candidates if c.uid != r.granted)
        lane.wanted = max((p for p in refused if p > Priority.LOW), default=0)
        if r.granted is None:
            if r.looked and r.slot - self._buckets.now() <= near:
                await self._idle(lane, SPIN_PAUSE_S)  # due, but another's want or lock
            return
        priority = next(c.priority for c in candidates if c.uid == r.granted)
        await self._keep(lane, r.slot, priority, near)
        self._used(lane.api, r, r.granted)
        self._serve(lane, (r.granted, priority), r.slot)

    async def _keep(self, lane: _Lane, slot: float, priority: int, near: float) -> None:
        """Wait for the instant of a slot granted ahead (the slot is ours: keep it, on time).
        A waiter of a higher priority arriving meanwhile leaves its want at once: else another
        replica asking ahead books the egress's next slot before it, and it waits a third."""
        while (wait := slot - self._buckets.now()) > 0:
            await self._idle(lane, wait)
            now = self._buckets.now()
            higher = [c for c in self._candidates(lane, now, near) if c.priority > priority]
            if higher and max(c.priority for c in higher) > lane.wanted:
                await self._want(lane, higher)

    async def _want(self, lane: _Lane, candidates: list[Candidate]) -> None:
        """Leave the candidates' wants on the buckets without taking a slot."""
        reservation = await self._reserve(lane, candidates, -INF)
        if reservation is None:
            return  # the store is away: every waiter got the error
        for looked in reservation.looked:
            lane.ready[looked.uid] = looked.ready_at
            lane.rates[looked.uid] = looked.rate
        lane.wanted = max(c.priority for c in candidates)

    def _serve(self, lane: _Lane, key: tuple[str, int], slot: float) -> None:
        queue = lane.queues.get(key)
        if not queue:
            return  # its waiter went away meanwhile (cancelled): the slot is spent unused
        waiter = queue.popleft()
        rotation = lane.rotation[key[1]]
        if queue:
            rotation.move_to_end(key[0])  # served: to the back of the round
        else:
            self._drop_queue(lane, key)
        if not waiter.future.done():
            waiter.future.set_result(slot)
        self._on_served()

    async def _idle(self, lane: _Lane, delay: float) -> None:
        """Sleep up to ``delay``, or until a waiter or a steering change wakes the lane."""
        lane.wakeup.clear()
        if delay <= 0:
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(lane.wakeup.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    @staticmethod
    def _fail_all(lane: _Lane, exc: BaseException) -> None:
        for waiter in lane.waiters():
            if not waiter.future.done():
                waiter.future.set_exception(exc)
        lane.queues.clear()
        for rotation in lane.rotation.values():
            rotation.clear()

    # -- what the API said back ------------------------------------------------------------

    def late(self, api: str, uid: str, *, slot: float, sent_at: float) -> float:
        """A call left ``sent_at - slot`` after its slot: the excess over the tolerance is
        given back to both of its buckets, with the API's next reservation or alone after
        ``GIVE_BACK_WITHIN_S`` -- at once on shared rows when it eats half the guard.
        Returns the excess (0: absorbed). No I/O here (a task does it)."""
        excess = sent_at - slot - self.tolerance(api)
        if excess <= 0 or not self._limits.limited(api):
            return 0.0
        self._late.setdefault(api, []).append((uid, excess))
        if self._config.ahead_s > 0 and excess >= self._config.guard_min / 2:
            # shared rows: another replica reserves the bucket's next slot about ``ahead_s``
            # before it, maybe before this replica's next reservation; lateness eating half
            # the guard goes to the rows at once, so that slot is moved on too
            self._urgent.append(asyncio.create_task(self._flush_later(0.0)))
            self._urgent = [task for task in self._urgent if not task.done()]
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(GIVE_BACK_WITHIN_S))
        return excess

    async def _flush_later(self, delay: float) -> None:
        if delay > 0:
            await self._sleep(delay)
        while self._late:
            api, late = self._late.popitem()
            try:
                await self._buckets.give_back(api, self._config.egress, late)
            except AWAY as exc:  # no slot is granted meanwhile anyway
                log.warning("sent_late_not_recorded", api=api, error=repr(exc))
                return

    def blame(self, api: str, uid: str) -> Blame:
        """Whose window a 429 for ``uid`` came from, as far as this replica can tell: the
        customer's alone, unless another customer of the same egress was throttled within
        ``LONE_S`` -- then the egress's too. (A 429 answers before any later request of
        another customer could show the egress still had room, so that is what tells.)"""
        now = time.monotonic()
        recent = self._throttled_at.setdefault(api, {})
        for gone in [u for u, at in recent.items() if now - at > LONE_S]:
            del recent[gone]
        others = any(u != uid for u in recent)
        recent[uid] = now
        return "both" if others else "customer"

    async def throttled(
        self, api: str, uid: str, *, blame: Blame | None = None, sent_at: float | None
    ) -> Throttled:
        """The API answered 429 for a call of ``uid``: tell the buckets (the guard widens, or
        the blamed buckets' rates are cut; see :meth:`blame`), and count it for the reports."""
        config = self._config
        blame = blame or self.blame(api, uid)
        answer = await self._buckets.throttled(
            Throttle(
                api=api,
                uid=uid,
                egress=config.egress,
                blame=blame,
                customer_limit=self._limits.customer(api, uid) or INF,
                egress_limit=self._limits.egress(api, config.egress) or INF,
                sent_at=sent_at,
                guard_min=config.guard_min,
                guard_max=config.guard_max,
            )
        )
        wall = time.time()
        for kind, key, rate in (
            ("customer", uid, answer.customer_rate),
            ("egress", config.egress, answer.egress_rate),
        ):
            usage = self._usage_of(api, kind, key, rate, wall)
            usage.throttled.append(wall)
        lane = self._lanes.get(api)
        if lane is not None:
            lane.ready[uid] = max(lane.ready.get(uid, 0.0), answer.ready_at)
            lane.rates[uid] = answer.customer_rate
            lane.egress_rate = answer.egress_rate
        if answer.customer_cut or answer.egress_cut:
            log.warning(
                "rate_lowered",
                api=api,
                parent_uid=uid,
                blame=blame,
                customer_rate=answer.customer_rate,
                egress_rate=answer.egress_rate,
            )
        elif answer.explained:
            log.warning("rate_guard_widened", api=api, guard_ms=round(answer.guard * 1000, 1))
        return answer

    # -- what waits, and what was used ------------------------------------------------------

    def _usage_of(self, api: str, kind: str, key: str, rate: float, wall: float) -> Usage:
        usage = self._usage.get((api, kind, key))
        if usage is None:
            usage = self._usage[(api, kind, key)] = Usage(rate, wall)
        usage.rate, usage.used_at = rate, wall
        return usage

    def _used(self, api: str, r: Reservation, uid: str) -> None:
        wall = time.time()
        rate = next((looked.rate for looked in r.looked if looked.uid == uid), INF)
        self._usage_of(api, "customer", uid, rate, wall)
        self._usage_of(api, "egress", self._config.egress, r.egress_rate, wall)

    def reports(self) -> dict[tuple[str, str, str], Usage]:
        """Buckets used in the last ``REPORT_S``, with their 429s of that time."""
        horizon = time.time() - REPORT_S
        for key in [k for k, u in self._usage.items() if u.used_at < horizon]:
            del self._usage[key]
        for usage in self._usage.values():
            while usage.throttled and usage.throttled[0] < horizon:
                usage.throttled.popleft()
        return self._usage

    def rates(self) -> dict[str, float]:
        """Buckets that throttling slowed below their limit: ``api/kind/key`` -> rate."""
        slowed: dict[str, float] = {}
        for (api, kind, key), usage in self.reports().items():
            limit = (
                self._limits.customer(api, key)
                if kind == "customer"
                else (self._limits.egress(api, key))
            )
            if limit is not None and usage.rate < limit:
                slowed[f"{api}/{kind}/{key}"] = usage.rate
        return slowed

    def interval(self, api: str, uid: str, priority: int = Priority.NORMAL) -> float:
        """Seconds between the customer's turns now: its own rate, or its share of the
        egress among the customers waiting at its priority or above."""
        lane = self._lanes.get(api)
        rate_c, rate_e = self._rates(lane, api, uid)
        sharing = {u for u, p in lane.queues if p >= priority} if lane else set()
        sharing.add(uid)
        rate = min(rate_c, rate_e / len(sharing))
        return 0.0 if rate == INF else 1.0 / rate

    def coming(self, api: str, uid: str, priority: int) -> _Coming:
        """A command admitted to wait here, on its way (being claimed): it counts as held, so
        that a burst read at once cannot slip more than the hold window past the decision."""
        return _Coming(self._coming, (api, uid, priority))

    def held(self, api: str, uid: str, priority: int = Priority.LOW) -> int:
        """Calls of the customer waiting here (or on their way) at ``priority`` or above."""
        coming = sum(
            n for (a, u, p), n in self._coming.items() if a == api and u == uid and p >= priority
        )
        lane = self._lanes.get(api)
        if lane is None:
            return coming
        waiting = sum(len(q) for (u, p), q in lane.queues.items() if u == uid and p >= priority)
        return max(coming, waiting)

    def queued(self, api: str, uid: str, priority: int) -> tuple[list[str | None], int]:
        """The customer's calls waiting here at ``priority`` or above (their command ids), and
        how many more are on their way (not waiting yet)."""
        lane = self._lanes.get(api)
        found = [
            waiter.command_id
            for (u, p), queue in (lane.queues.items() if lane else ())
            if u == uid and p >= priority
            for waiter in queue
        ]
        return found, max(0, self.held(api, uid, priority) - len(found))

    def pace(self, api: str, uid: str) -> tuple[float, float, float]:
        """The customer's rate now, its egress's, and seconds until both buckets are ready
        (``INF`` rate: not limited)."""
        lane = self._lanes.get(api)
        rate_c, rate_e = self._rates(lane, api, uid)
        return rate_c, rate_e, self._ready_in(lane, uid)

    def _rates(self, lane: _Lane | None, api: str, uid: str) -> tuple[float, float]:
        """The customer's rate now and its egress's: the limits in force, or lower where
        throttling slowed the bucket."""
        limit_c = self._limits.customer(api, uid) or INF
        limit_e = self._limits.egress(api, self._config.egress) or INF
        if lane is None:
            return limit_c, limit_e
        return min(limit_c, lane.rates.get(uid, limit_c)), min(limit_e, lane.egress_rate)

    def _ready_in(self, lane: _Lane | None, uid: str) -> float:
        """Seconds until the customer's and the egress's buckets are both ready (0: now)."""
        if lane is None:
            return 0.0
        now = self._buckets.now()
        return max(0.0, max(lane.ready.get(uid, now), lane.egress_ready) - now)

    def backlogs(self, api: str, priority: int) -> dict[str, int]:
        """Calls waiting here (or on their way) per customer, at ``priority`` or above."""
        found: dict[str, int] = {}
        for (a, u, p), n in self._coming.items():
            if a == api and p >= priority:
                found[u] = found.get(u, 0) + n
        lane = self._lanes.get(api)
        if lane is not None:
            waiting: dict[str, int] = {}
            for (u, p), queue in lane.queues.items():
                if p >= priority:
                    waiting[u] = waiting.get(u, 0) + len(queue)
            for u, n in waiting.items():
                found[u] = max(found.get(u, 0), n)
        return found

    def expected_wait(self, api: str, uid: str, priority: int = Priority.NORMAL) -> float:
        """Seconds until a new call of the customer at ``priority`` would be sent."""
        if not self._limits.limited(api):
            return 0.0
        ready = self._ready_in(self._lanes.get(api), uid)
        return ready + self.held(api, uid, priority) * self.interval(api, uid, priority)

    def waiting(self) -> list[Waiting]:
        """Every call waiting here, with the bucket it waits for and its expected start."""
        found: list[Waiting] = []
        now, wall = self._buckets.now(), time.time()
        for api, lane in self._lanes.items():
            for (uid, priority), queue in lane.queues.items():
                ready = lane.ready.get(uid, now)
                by_egress = lane.egress_ready > ready
                kind, key = ("egress", self._config.egress) if by_egress else ("customer", uid)
                start = max(0.0, max(ready, lane.egress_ready) - now)
                interval = self.interval(api, uid, priority)
                for ahead, waiter in enumerate(queue):
                    expected = wall + start + ahead * interval
                    found.append(
                        Waiting(
                            waiter.command_id, api, kind, key, priority, waiter.since, expected, uid
                        )
                    )
        return found

    async def aclose(self) -> None:
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if self._flusher is not None:
            tasks.append(self._flusher)
        tasks += self._urgent
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes.values():
            for waiter in lane.waiters():
                waiter.future.cancel()
        self._lanes.clear()


class _Coming:
    """``Dispatcher.coming``: a plain context manager (one per command; a generator-based
    one costs a generator and its frame)."""

    __slots__ = ("_counts", "_key")

    def __init__(self, counts: Counter[tuple[str, str, int]], key: tuple[str, str, int]) -> None:
        self._counts = counts
        self._key = key

    def __enter__(self) -> None:
        self._counts[self._key] += 1

    def __exit__(self, *_: object) -> None:
        counts, key = self._counts, self._key
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]
