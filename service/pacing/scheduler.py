"""Fair admission of API calls, and the estimate that decides what waits in memory.

Every API call waits for its turn here. Per API (all of whose calls share the one
``(API, egress)`` bucket) callers queue per ParentUid, and one dispatcher serves the queues
round-robin: it offers the next joint slot (``RateLimiter.reserve``) to the next ParentUid in
turn whose own bucket is ready by then, so one customer's burst gets one slot in N when N
customers wait, never the whole egress quota. A ParentUid whose own bucket is the bottleneck
is skipped rather than letting the egress slot go unused.

The processor asks ``estimate`` before it holds a command in memory: if the command's turn is
further away than ``hold_s``, it is parked on the broker (a delay queue) with a *ticket*, the
instant its turn is expected. Tickets of one key are spaced by the key's fair interval, so
parked commands come back in order and at the rate they can be served, instead of all at once
(which would only park them again). Memory per key is therefore about ``hold_s`` of its quota,
whatever the backlog.

With buckets shared by replicas (``service.pacing.shared``, a PostgreSQL store) the dispatcher
asks the store for a slot only when it is nearly due (one round trip per attempt): a ParentUid
whose own bucket is busy is skipped until it is ready, a busy egress is waited for, and a store
that cannot grant slots fails the waiters with ``StoreUnavailable`` (no call is sent blind).
Estimates then use what the store's last answers said, and new tickets come from the key's
horizon shared by every replica (``ticket``).

Invariants: the dispatcher of an API exists only while someone waits on it; a ParentUid queue
exists only while non-empty; tickets of idle keys are dropped, so memory follows the keys
that are active now, not every key ever seen.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog

from handlers.errors import RelayError, StoreUnavailable, store_unavailable
from service.pacing.limiter import Limiter, Pick, RateLimiter
from service.store.errors import STORE_ERRORS

__all__ = ["FairScheduler", "Turn"]

log = structlog.get_logger(__name__)

SWEEP_EVERY = 4096  # tickets issued between sweeps of past tickets
NEARLY_DUE_S = 0.02  # a shared slot is asked for when it is at most this far away (at least)
LOCKED_RETRY_S = 0.002  # every candidate's row was being reserved on by another replica


def _unavailable(exc: BaseException) -> StoreUnavailable:
    """A driver error the shared buckets let through untranslated (asyncpg's
    ``InternalClientError`` on a connection killed mid-statement): the store is away."""
    unavailable = store_unavailable(f"shared rate-limit buckets: {type(exc).__name__}")
    unavailable.__cause__ = exc
    return unavailable


@dataclass(slots=True)
class _ApiQueue:
    """Waiters of one API, per ParentUid, in round-robin order (least recently served first)."""

    waiters: OrderedDict[str, deque[asyncio.Future[float]]] = field(default_factory=OrderedDict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(len(q) for q in self.waiters.values())


@dataclass(frozen=True, slots=True)
class Turn:
    """Where a new call would stand: seconds until its turn, and the ticket if parked."""

    wait_s: float
    ticket: float | None  # clock instant of the expected turn, set when it should be parked
    interval: float | None = None  # the key's ticket spacing, when a shared horizon set it


class FairScheduler:
    def __init__(
        self,
        limiter: Limiter,
        *,
        hold_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limiter = limiter
        self._hold_s = hold_s
        self._clock = clock
        self._wall = wall  # tickets travel in message headers: wall-clock seconds
        self._sleep = sleep
        self._apis: dict[str, _ApiQueue] = {}
        self._horizons: dict[tuple[str, str], float] = {}  # last ticket per (api, uid), wall
        self._held: Counter[tuple[str, str]] = Counter()  # commands held in memory per key
        self._since_sweep = 0

    @property
    def hold_s(self) -> float:
        return self._hold_s

    @contextmanager
    def holding(self, api: str, uid: str) -> Iterator[None]:
        """Count a command as held in memory for ``(api, uid)`` while the block runs."""
        key = (api, uid)
        self._held[key] += 1
        try:
            yield
        finally:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]

    def held(self, api: str, uid: str) -> int:
        return self._held.get((api, uid), 0)

    def waiting(self, api: str | None = None) -> int:
        queues = [self._apis[api]] if api in self._apis else [] if api else self._apis.values()
        return sum(len(q) for q in queues)

    # -- estimate and tickets ------------------------------------------------------------------

    def _fair_interval(self, api: str, uid: str, queue: _ApiQueue | None) -> float:
        limit = self._limiter.limit(api)
        if limit is None:
            return 0.0
        active = len(queue.waiters) if queue else 0
        if queue is None or uid not in queue.waiters:
            active += 1
        return max(1.0 / self._limiter.current_rate(api, uid), active / limit)

    def fair_interval(self, api: str, uid: str) -> float:
        """Seconds between the key's turns now: its own rate, or its share of the API's."""
        return self._fair_interval(api, uid, self._apis.get(api))

    def estimate(self, api: str, uid: str) -> Turn:
        """Seconds until a new call of ``uid`` would be served; a ticket when beyond hold."""
        interval = self._fair_interval(api, uid, self._apis.get(api))
        if interval == 0.0:
            return Turn(0.0, None)
        ahead = self._held.get((api, uid), 0)
        wait = self._limiter.delay(api, uid) + ahead * interval
        now = self._wall()
        horizon = self._horizons.get((api, uid), 0.0)
        if wait <= self._hold_s and horizon <= now + wait:
            return Turn(wait, None)
        ticket = max(now + wait, horizon + interval)
        self._horizons[(api, uid)] = ticket
        self._since_sweep += 1
        if self._since_sweep >= SWEEP_EVERY:  # amortised: memory follows the active keys
            self._since_sweep = 0
            self.forget_idle()
        return Turn(ticket - now, ticket)

    async def ticket(self, api: str, uid: str) -> Turn:
        """``estimate``, except that with a shared limiter a ticket is taken from the key's
        horizon shared by every replica (spaced by the key's fair interval across replicas)."""
        limiter = self._limiter
        if isinstance(limiter, RateLimiter) or not limiter.shared:
            return self.estimate(api, uid)
        interval = self._fair_interval(api, uid, self._apis.get(api))
        if interval == 0.0:
            return Turn(0.0, None)
        wait = limiter.delay(api, uid) + self._held.get((api, uid), 0) * interval
        now = self._wall()
        horizon = self._horizons.get((api, uid), 0.0)  # the last shared ticket seen here
        if wait <= self._hold_s and horizon <= now + wait:
            return Turn(wait, None)
        try:
            shared, spacing = await limiter.ticket(
                api, uid, earliest=limiter.now() + wait, interval=interval
            )
        except STORE_ERRORS as exc:
            raise _unavailable(exc) from exc
        ticket = shared - limiter.now() + now  # the server's clock -> this host's wall clock
        self._horizons[(api, uid)] = ticket
        return Turn(ticket - now, ticket, spacing)

    def starving(self, api: str, uid: str) -> bool:
        """The key's work in memory does not fill the hold window: a parked command of it may
        come in before its ticket (work-conserving when fewer keys wait than when its ticket
        was issued; the round-robin, not the ticket, keeps the shares fair)."""
        return self.backlog_s(api, uid) <= self._hold_s

    def ticket_due(self, ticket: float) -> bool:
        """A parked call is let in once its ticket is within the hold window."""
        return ticket - self._wall() <= self._hold_s

    def backlog_s(self, api: str, uid: str) -> float:
        """Seconds of work already held in memory for the key (its turn would be this far)."""
        interval = self._fair_interval(api, uid, self._apis.get(api))
        return self._limiter.delay(api, uid) + self._held.get((api, uid), 0) * interval

    def forget_idle(self) -> int:
        """Drop tickets whose time has passed (their keys are idle or caught up)."""
        now = self._wall()
        stale = [key for key, ticket in self._horizons.items() if ticket < now]
        for key in stale:
            del self._horizons[key]
        return len(stale)

    # -- waiting for a turn --------------------------------------------------------------------

    async def turn(self, api: str, uid: str) -> float | None:
        """Return when this call may be sent: its joint slot has come, in fair order. The
        answer is the slot's instant in the limiter's clock (None for an unlimited API): a
        call sent late gives the lateness back (``Limiter.late``)."""
        if self._limiter.limit(api) is None:
            return None
        queue = self._apis.get(api)
        if queue is None:
            queue = self._apis[api] = _ApiQueue()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        queue.waiters.setdefault(uid, deque()).append(future)
        queue.wakeup.set()
        if queue.task is None or queue.task.done():
            queue.task = asyncio.create_task(self._dispatch(api, queue))
        try:
            return await future
        except asyncio.CancelledError:
            self._discard(queue, uid, future)
            raise

    def _discard(self, queue: _ApiQueue, uid: str, future: asyncio.Future[float]) -> None:
        waiting = queue.waiters.get(uid)
        if waiting is not None and future in waiting:
            waiting.remove(future)
            if not waiting:
                del queue.waiters[uid]

    def _pick(self, api: str, queue: _ApiQueue) -> str:
        """The first ParentUid in round-robin order whose own bucket is ready no later than
        any other's; ties go to the one served least recently."""
        best_uid, best_delay = "", float("inf")
        for uid in queue.waiters:
            delay = self._limiter.delay(api, uid)
            if delay < best_delay - 1e-9:
                best_uid, best_delay = uid, delay
        return best_uid

    async def _dispatch(self, api: str, queue: _ApiQueue) -> None:
        if isinstance(self._limiter, RateLimiter):
            await self._dispatch_local(api, queue, self._limiter)
        else:
            await self._dispatch_shared(api, queue)

    async def _dispatch_shared(self, api: str, queue: _ApiQueue) -> None:
        """Serve one API's waiters on buckets shared with other replicas (one store round
        trip per attempt). Round-robin over ParentUids: a slot is asked for only when it is
        nearly due, offered to the waiting ParentUids in rotation order in one statement; one
        whose own bucket is busy is passed over until it is ready (the next customer is
        served meanwhile); when the egress bucket is busy, wait for it.
        If the store cannot grant slots, every waiter of the API gets the error."""
        limiter = self._limiter
        # Nearly due: within 20 ms, or half an egress interval (a customer whose own bucket
        # frees a little after the egress slot still takes it rather than skipping its turn).
        near = max(NEARLY_DUE_S, 0.5 / (limiter.limit(api) or 1.0))
        busy: dict[str, float] = {}  # ParentUid -> local instant its own bucket is ready
        try:
            while queue.waiters:
                egress_wait = limiter.egress_delay(api)
                if egress_wait > near:
                    await self._idle(queue, egress_wait - near / 2)
                    continue
                now = self._clock()
                candidates = [u for u in queue.waiters if busy.get(u, 0.0) <= now + near]
                if not candidates:
                    soonest = min(busy.get(u, now) for u in queue.waiters)
                    await self._idle(queue, max(0.0, soonest - now - near / 2))
                    continue
                pick = await self._acquire_shared(api, candidates, near, queue)
                if pick is None:
                    return
                now = self._clock()
                for uid, wait in pick.busy.items():
                    busy[uid] = now + wait  # serve the next customer meanwhile
                if pick.uid is None:
                    if not pick.busy and pick.grant.wait <= 0:
                        await self._sleep(LOCKED_RETRY_S)  # others were reserving on them
                    continue  # or the egress is busy: the next pass waits for it
                busy.pop(pick.uid, None)
                # the slot is ours: keep it in order, on time even if the answer came late
                wait = pick.grant.at - limiter.now()
                if wait > 0:
                    await self._sleep(wait)
                if pick.uid in queue.waiters:
                    self._serve(queue, pick.uid, pick.grant.at)
                for gone in [u for u in busy if u not in queue.waiters]:
                    del busy[gone]
        finally:
            if self._apis.get(api) is queue and not queue.waiters:
                del self._apis[api]

    async def _acquire_shared(
        self, api: str, candidates: list[str], near: float, queue: _ApiQueue
    ) -> Pick | None:
        """``acquire_any`` on the shared buckets; None when it failed, every waiter of the
        API then failed with the error -- whatever it is, as a dispatcher that died with
        waiters left would hold their messages for ever."""
        try:
            return await self._limiter.acquire_any(api, candidates, within=near)
        except RelayError as exc:
            self._fail_all(queue, exc)
        except STORE_ERRORS as exc:
            self._fail_all(queue, _unavailable(exc))
        except Exception as exc:  # a bug: logged, and the waiters still get an answer
            log.exception("shared_slot_failed", api=api)
            self._fail_all(queue, exc)
        return None

    @staticmethod
    def _fail_all(queue: _ApiQueue, exc: BaseException) -> None:
        for waiting in queue.waiters.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
        queue.waiters.clear()

    async def _dispatch_local(self, api: str, queue: _ApiQueue, limiter: RateLimiter) -> None:
        """Serve one API's waiters until none is left. Owned by ``turn``; ends by itself.

        It never reserves a slot ahead of time: it waits until the best candidate's slot is
        due (or a new waiter arrives) and picks again, so a customer arriving meanwhile can
        take an egress slot that a slower customer's own bucket would have left unused."""
        try:
            while queue.waiters:
                uid = self._pick(api, queue)
                delay = self._limiter.delay(api, uid)
                if delay > 0:
                    await self._idle(queue, delay)
                    continue
                wait = limiter.reserve(api, uid)
                self._serve(queue, uid, limiter.now() + wait)
        finally:
            if self._apis.get(api) is queue and not queue.waiters:
                del self._apis[api]

    async def _idle(self, queue: _ApiQueue, delay: float) -> None:
        queue.wakeup.clear()
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(queue.wakeup.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    @staticmethod
    def _serve(queue: _ApiQueue, uid: str, slot: float) -> None:
        waiting = queue.waiters[uid]
        future = waiting.popleft()
        if waiting:
            queue.waiters.move_to_end(uid)  # served: to the back of the rotation
        else:
            del queue.waiters[uid]
        if not future.done():
            future.set_result(slot)

    async def aclose(self) -> None:
        tasks = [q.task for q in self._apis.values() if q.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for queue in self._apis.values():
            for waiting in queue.waiters.values():
                for future in waiting:
                    future.cancel()
        self._apis.clear()
