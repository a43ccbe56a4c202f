"""Fair admission with a controlled clock: the dispatcher's sleeps advance a fake clock."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence

import asyncpg
import pytest

from handlers.errors import StoreUnavailable
from service.pacing.limiter import Grant, Pick, RateLimiter
from service.pacing.scheduler import FairScheduler


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


def make(
    limits: dict[str, float], hold_s: float = 2.0
) -> tuple[FairScheduler, RateLimiter, FakeTime]:
    clock = FakeTime()
    limiter = RateLimiter(limits, guard_s=0.0, clock=clock)
    scheduler = FairScheduler(limiter, hold_s=hold_s, clock=clock, wall=clock, sleep=clock.sleep)
    return scheduler, limiter, clock


async def served_order(scheduler: FairScheduler, calls: list[tuple[str, str]]) -> list[str]:
    order: list[str] = []

    async def call(api: str, uid: str) -> None:
        await scheduler.turn(api, uid)
        order.append(uid)

    # created in order, all waiting before the dispatcher's first step
    tasks = [asyncio.create_task(call(api, uid)) for api, uid in calls]
    await asyncio.gather(*tasks)
    return order


async def test_burst_of_one_customer_does_not_starve_another() -> None:
    scheduler, _, _ = make({"op": 10})
    calls = [("op", "hot")] * 20 + [("op", "light")]
    order = await served_order(scheduler, calls)
    # the light customer arrived last but is served within the first few turns
    assert order.index("light") <= 2


async def test_equal_shares_on_a_contended_egress_bucket() -> None:
    scheduler, _, _ = make({"op": 10})
    calls = [("op", f"c{i % 4}") for i in range(80)]
    order = await served_order(scheduler, calls)
    first_40 = Counter(order[:40])
    assert set(first_40.values()) == {10}  # four customers, ten turns each


async def test_customer_bucket_bottleneck_does_not_idle_the_egress() -> None:
    # per-customer 2/s, egress 10/s: five customers can use the whole egress rate
    scheduler, limiter, clock = make({"op": 10})
    limiter._limits["op"] = 10  # egress and uid share the op limit; lower one uid's rate
    for _ in range(3):
        limiter.throttled("op", "slow", pause_s=0.0)  # 10 -> 1.25/s
    start = clock.t
    calls = [("op", "slow")] * 3 + [("op", f"fast{i % 3}") for i in range(30)]
    order = await served_order(scheduler, calls)
    elapsed = clock.t - start
    assert len(order) == 33
    assert elapsed < 3.5  # ~33 slots at 10/s; the slow customer never holds the egress back


async def test_estimate_within_hold_has_no_ticket() -> None:
    scheduler, _, _ = make({"op": 10}, hold_s=2.0)
    turn = scheduler.estimate("op", "c1")
    assert turn.ticket is None
    assert turn.wait_s == 0.0


async def test_tickets_are_spaced_by_the_fair_interval() -> None:
    scheduler, limiter, clock = make({"op": 10}, hold_s=1.0)
    for _ in range(15):  # 1.5 s of this key's quota already reserved
        limiter.reserve("op", "hot")
    tickets = [scheduler.estimate("op", "hot").ticket for _ in range(5)]
    assert all(t is not None for t in tickets)
    gaps = [b - a for a, b in itertools.pairwise(tickets)]  # type: ignore[operator]
    assert all(abs(g - 0.1) < 1e-9 for g in gaps)
    assert tickets[0] is not None
    assert tickets[0] >= clock.t + 1.4


async def test_ticket_due_inside_hold_window() -> None:
    scheduler, _, clock = make({"op": 10}, hold_s=2.0)
    assert scheduler.ticket_due(clock.t + 1.9)
    assert not scheduler.ticket_due(clock.t + 2.5)


async def test_unlimited_api_never_waits() -> None:
    scheduler, _, _ = make({"op": 0})
    await asyncio.wait_for(scheduler.turn("op", "c"), 1)
    assert scheduler.estimate("op", "c").wait_s == 0.0


async def test_cancelled_waiter_leaves_no_trace() -> None:
    scheduler, limiter, _ = make({"op": 1})
    limiter.reserve("op", "c1")  # the next slot is a second away
    task = asyncio.create_task(scheduler.turn("op", "c2"))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert scheduler.waiting() == 0


async def test_idle_tickets_are_forgotten() -> None:
    scheduler, limiter, clock = make({"op": 10}, hold_s=0.5)
    for i in range(1000):
        for _ in range(10):
            limiter.reserve("op", f"k{i}")
        scheduler.estimate("op", f"k{i}")
    clock.t += 3600
    assert scheduler.forget_idle() > 0
    assert scheduler.forget_idle() == 0


async def test_past_tickets_are_swept_while_issuing_new_ones() -> None:
    from service.pacing.scheduler import SWEEP_EVERY

    scheduler, limiter, clock = make({"op": 10}, hold_s=0.1)
    for i in range(SWEEP_EVERY):
        limiter.reserve("op", f"k{i}")
        limiter.reserve("op", f"k{i}")
        assert scheduler.estimate("op", f"k{i}").ticket is not None
        clock.t += 0.001
    clock.t += 3600  # all those tickets are in the past now
    limiter.reserve("op", "last")
    limiter.reserve("op", "last")
    for _ in range(SWEEP_EVERY):  # one more round of issuing tickets triggers a sweep
        scheduler.estimate("op", "last")
    assert len(scheduler._horizons) == 1


async def test_backlog_counts_held_commands_at_the_fair_interval() -> None:
    scheduler, _, _ = make({"op": 10}, hold_s=2.0)
    assert scheduler.backlog_s("op", "c1") == 0.0
    for _ in range(25):
        scheduler._held[("op", "c1")] += 1
    assert abs(scheduler.backlog_s("op", "c1") - 2.5) < 1e-9  # 25 calls at 10/s: over 2 s


async def test_park_decision_keeps_a_due_ticket_in_its_place() -> None:
    from service.pacing.parking import park_decision

    scheduler, _, clock = make({"op": 10}, hold_s=2.0)
    assert park_decision(scheduler, ("op", "c1"), None, wall=clock) is None  # room: hold it
    for _ in range(30):  # 3 s of this key's work is already held
        scheduler._held[("op", "c1")] += 1
    fresh = park_decision(scheduler, ("op", "c1"), None, wall=clock)
    assert fresh is not None
    assert fresh.ticket >= clock.t + 3.0
    due = park_decision(scheduler, ("op", "c1"), clock.t + 0.5, wall=clock)
    assert due is not None
    assert due.ticket == clock.t + 0.5  # same ticket: it keeps its place in line
    assert abs(due.seconds - (3.0 - 1.0)) < 1e-9  # waits until the held work fits the window
    later = park_decision(scheduler, ("op", "c1"), clock.t + 10, wall=clock)
    assert later is not None
    assert abs(later.seconds - 5.0) < 1e-9  # not due: back to the broker, looked at half-way
    soon = park_decision(scheduler, ("op", "c1"), clock.t + 3.5, wall=clock)
    assert soon is not None
    assert abs(soon.seconds - 2.5) < 1e-9  # within twice the window: until shortly before


async def test_a_starving_key_takes_a_parked_command_before_its_ticket() -> None:
    from service.pacing.parking import Ticket, park_decision

    scheduler, _, clock = make({"op": 10}, hold_s=2.0)
    early = park_decision(scheduler, ("op", "c1"), clock.t + 30, wall=clock)
    assert early is None  # nothing of c1 in memory: its turn is now, whatever the ticket said
    for _ in range(30):
        scheduler._held[("op", "c1")] += 1
    # issued at 1.6 s apart (8 keys); c1 alone now (0.1 s): the remaining wait shrinks 16-fold
    parked = park_decision(scheduler, ("op", "c1"), Ticket(clock.t + 32, 1.6), wall=clock)
    assert parked is not None
    assert abs(parked.ticket - (clock.t + 2.0)) < 1e-9
    assert parked.ticket.interval == 0.1


class _BrokenShared:
    """A shared limiter (the ``Limiter`` protocol) whose every reservation raises ``error``."""

    shared = True

    def __init__(self, error: BaseException, *, busy_s: float = 0.0) -> None:
        self.error = error
        self.busy_s = busy_s

    def limit(self, api: str) -> float | None:
        return 10.0

    def now(self) -> float:
        return 0.0

    def delay(self, api: str, parent_uid: str) -> float:
        return self.busy_s

    def egress_delay(self, api: str) -> float:
        return 0.0

    def current_rate(self, api: str, parent_uid: str) -> float:
        return 10.0

    def rates(self) -> dict[str, float]:
        return {}

    async def acquire(self, api: str, parent_uid: str, *, within: float) -> Grant:
        raise self.error

    async def acquire_any(self, api: str, uids: Sequence[str], *, within: float) -> Pick:
        raise self.error

    def tolerance(self, api: str) -> float:
        return 0.0

    def late(self, api: str, parent_uid: str, *, slot: float, sent_at: float) -> float:
        return 0.0

    async def report_throttled(
        self, api: str, parent_uid: str, *, pause_s: float = 1.0, sent_at: float | None = None
    ) -> bool:
        raise NotImplementedError

    async def ticket(
        self, api: str, parent_uid: str, *, earliest: float, interval: float
    ) -> tuple[float, float]:
        raise self.error


async def test_shared_dispatcher_answers_every_waiter_whatever_the_store_raised() -> None:
    """asyncpg raises InternalClientError on a connection killed mid-statement (asyncpg#1069):
    the waiters get StoreUnavailable (the command waits, no attempt spent), never a hang."""
    scheduler = FairScheduler(_BrokenShared(asyncpg.InternalClientError("cannot switch")))
    turns = [asyncio.create_task(scheduler.turn("op", uid)) for uid in ("a", "b", "a")]
    results = await asyncio.wait_for(asyncio.gather(*turns, return_exceptions=True), 2)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    first = results[0]
    assert isinstance(first, StoreUnavailable)
    assert isinstance(first.__cause__, asyncpg.InternalClientError)


async def test_shared_dispatcher_hands_a_bug_to_its_waiters() -> None:
    scheduler = FairScheduler(_BrokenShared(KeyError("bug")))
    turns = [asyncio.create_task(scheduler.turn("op", uid)) for uid in ("a", "b")]
    results = await asyncio.wait_for(asyncio.gather(*turns, return_exceptions=True), 2)
    assert all(isinstance(r, KeyError) for r in results), results


async def test_a_shared_ticket_the_store_cannot_give_is_store_unavailable() -> None:
    """Parking needs a ticket from the shared horizon: the command waits (no attempt spent)."""
    broken = _BrokenShared(asyncpg.InternalClientError("cannot switch"), busy_s=5.0)
    scheduler = FairScheduler(broken, hold_s=2.0)
    with pytest.raises(StoreUnavailable) as raised:
        await scheduler.ticket("op", "a")
    assert isinstance(raised.value.__cause__, asyncpg.InternalClientError)
