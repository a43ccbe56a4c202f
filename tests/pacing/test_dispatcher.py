"""The dispatcher (``service.pacing.dispatcher``) on the in-process buckets, in virtual time:
who gets each slot -- priority first, then round-robin -- pauses, give-backs, 429s."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from handlers.errors import Paused
from service.pacing.buckets import Priority
from service.pacing.dispatcher import Dispatcher, PacingConfig
from service.pacing.limits import Limits, LiveLimit
from service.pacing.local import LocalBuckets
from service.pacing.steering import PauseState, SteeringPoller
from service.store import open_store

API = "renewal_resources"


class VirtualTime:
    """A clock that moves only when every task sleeps: then it jumps to the soonest wake-up.
    Slots come without waiting for them, and concurrent sleepers keep their order."""

    SETTLE = 20  # event-loop turns that let every ready task run before time moves

    def __init__(self) -> None:
        self.t = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0
        self._driver: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self.t + max(delay, 0.0), self._count, future))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        await future

    async def _drive(self) -> None:
        while self._sleepers:
            for _ in range(self.SETTLE):
                await asyncio.sleep(0)
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():  # its sleeper was cancelled
                continue
            self.t = max(self.t, deadline)
            future.set_result(None)


def make(
    limit: float = 10.0,
    *,
    time: VirtualTime | None = None,
    is_paused: Callable[[str, str], bool] = lambda _a, _u: False,
) -> tuple[Dispatcher, VirtualTime, Limits]:
    time = time or VirtualTime()
    limits = Limits({API: limit, "unlimited_api": None})
    dispatcher = Dispatcher(
        LocalBuckets(clock=time.now),
        limits,
        config=PacingConfig(egress="e-1", owner="r-1", guard_min=0.0),
        is_paused=is_paused,
        sleep=time.sleep,
    )
    return dispatcher, time, limits


async def served_in_order(
    dispatcher: Dispatcher, calls: Sequence[tuple[str, int]]
) -> list[tuple[int, str, int]]:
    """Start every call at once; (slot index, uid, priority) in the order they were served."""
    order: list[tuple[str, int]] = []

    async def call(uid: str, priority: int) -> None:
        await dispatcher.turn(API, uid, priority=priority)
        order.append((uid, priority))

    await asyncio.gather(*(call(u, p) for u, p in calls))
    return [(n, u, p) for n, (u, p) in enumerate(order)]


async def test_customers_of_one_priority_take_turns() -> None:
    dispatcher, _, _ = make()
    calls = [(f"c-{k}", Priority.NORMAL) for _ in range(5) for k in range(4)]
    order = await served_in_order(dispatcher, calls)
    first_rounds = [uid for _, uid, _ in order[:8]]
    assert sorted(first_rounds) == sorted([f"c-{k}" for k in range(4)] * 2)
    await dispatcher.aclose()


async def test_a_high_command_is_served_before_the_normal_backlog() -> None:
    dispatcher, time, _ = make()
    served: list[tuple[str, float]] = []

    async def call(uid: str, priority: int) -> None:
        await dispatcher.turn(API, uid, priority=priority)
        served.append((uid, time.now()))

    backlog = [asyncio.create_task(call(f"bulk-{n % 5}", Priority.NORMAL)) for n in range(40)]
    await time.sleep(1.0)  # ten slots of the backlog go by
    assert 9 <= len(served) <= 11
    arrived = time.now()
    await call("sales", Priority.HIGH)
    waited = served[-1][1] - arrived
    assert waited <= 2 * (1.0 / 10.0) + 1e-9  # within two slot intervals of its arrival
    assert len(served) <= 12  # at most the slot already due went before it
    await asyncio.gather(*backlog)
    await dispatcher.aclose()


async def test_a_high_command_on_one_of_two_replicas_asking_ahead_waits_two_slots_at_most() -> None:
    """Replicas on shared rows ask for a slot a little ahead (half an interval here) and keep
    it until its instant. A high command arriving meanwhile must still leave its want at once,
    or the other replica books the egress's next slot meanwhile (0.29 s seen, 2.9 intervals).
    What was booked before it came goes first: up to the lookahead and two intervals."""
    time = VirtualTime()
    buckets = LocalBuckets(clock=time.now)
    limits = Limits({API: 10.0})
    replicas = [
        Dispatcher(
            buckets,
            limits,
            config=PacingConfig(egress="e-1", owner=f"r-{n}", guard_min=0.0, ahead_s=0.02),
            sleep=time.sleep,
        )
        for n in (1, 2)
    ]
    backlog = [asyncio.create_task(replicas[n % 2].turn(API, f"bulk-{n % 6}")) for n in range(120)]
    waited = []
    for k in range(10):
        await time.sleep(1.0 + 0.037 * k)  # arrivals at every phase of the slots
        arrived = time.now()
        slot = await replicas[0].turn(API, f"bulk-{k % 6}", priority=Priority.HIGH)
        assert slot is not None
        waited.append(slot - arrived)
    assert max(waited) <= (0.5 + 2) * (1.0 / 10.0) + 1e-9, waited
    for replica in replicas:
        await replica.aclose()
    await asyncio.gather(*backlog, return_exceptions=True)


async def test_low_takes_only_slots_no_higher_command_wants() -> None:
    dispatcher, _, limits = make(limit=10.0)
    limits.replace_live([LiveLimit(API, "customer", "slow", 1.0)])  # 1/s for one customer
    calls = [("slow", Priority.NORMAL)] * 3 + [("background", Priority.LOW)] * 20
    order = await served_in_order(dispatcher, calls)
    slow_at = [n for n, uid, _ in order if uid == "slow"]
    assert len(slow_at) == 3
    # the low customer filled the egress between the slow customer's turns, which came at
    # its own rate (one a second = every tenth egress slot), never delayed by the low ones
    assert slow_at[0] == 0
    assert all(b - a <= 11 for a, b in itertools.pairwise(slow_at))
    await dispatcher.aclose()


async def test_a_paused_customer_is_refused_and_the_others_go_on() -> None:
    paused_now: set[str] = set()
    dispatcher, _, _ = make(is_paused=lambda _api, uid: uid in paused_now)
    outcomes: dict[str, str] = {}

    async def call(name: str, uid: str) -> None:
        try:
            await dispatcher.turn(API, uid)
            outcomes[name] = "sent"
        except Paused as exc:
            outcomes[name] = exc.code

    tasks = [asyncio.create_task(call(f"{uid}-{n}", uid)) for n in range(6) for uid in "ab"]
    await asyncio.sleep(0)
    paused_now.add("a")
    dispatcher.steering_changed()
    await asyncio.gather(*tasks)
    assert {name: how for name, how in outcomes.items() if name.startswith("b")} == {
        f"b-{n}": "sent" for n in range(6)
    }
    assert "RELAY.PAUSED" in {outcomes[f"a-{n}"] for n in range(6)}
    with pytest.raises(Paused):
        await dispatcher.turn(API, "a")
    await dispatcher.aclose()


async def test_an_unlimited_api_is_not_paced() -> None:
    dispatcher, time, _ = make()
    before = time.now()
    assert await dispatcher.turn("unlimited_api", "c-1") is None
    assert time.now() == before


async def test_lateness_moves_the_next_slot_on() -> None:
    dispatcher, _, _ = make(limit=10.0)
    slot = await dispatcher.turn(API, "c-1")
    assert slot is not None
    excess = dispatcher.late(API, "c-1", slot=slot, sent_at=slot + 0.05)
    assert excess == pytest.approx(0.05)
    following = await dispatcher.turn(API, "c-1")
    assert following == pytest.approx(slot + 0.1 + 0.05)
    await dispatcher.aclose()


async def test_a_429_cuts_the_blamed_buckets_and_is_reported() -> None:
    dispatcher, time, _ = make(limit=10.0)
    slot = await dispatcher.turn(API, "c-1")
    assert slot is not None
    first = await dispatcher.throttled(API, "c-1", blame="both", sent_at=slot)
    assert first.explained  # a lone 429: the guard widens, the rate stays
    time.t += 0.5
    second = await dispatcher.throttled(API, "c-1", blame="both", sent_at=time.now() - 0.1)
    assert (second.customer_cut, second.egress_cut) == (True, True)
    assert (second.customer_rate, second.egress_rate) == (5.0, 5.0)
    reports = dispatcher.reports()
    assert len(reports[(API, "customer", "c-1")].throttled) == 2
    assert dispatcher.rates() == {f"{API}/customer/c-1": 5.0, f"{API}/egress/e-1": 5.0}
    await dispatcher.aclose()


async def test_the_expected_wait_grows_with_the_queue() -> None:
    dispatcher, _, _ = make(limit=2.0)
    assert dispatcher.expected_wait(API, "c-1") == 0.0
    tasks = [asyncio.create_task(dispatcher.turn(API, "c-1")) for _ in range(6)]
    await asyncio.sleep(0)
    assert dispatcher.held(API, "c-1") == 6
    assert dispatcher.expected_wait(API, "c-1") == pytest.approx(3.0, abs=0.6)
    waiting = dispatcher.waiting()
    assert len(waiting) == 6
    assert [w.expected_at for w in waiting] == sorted(w.expected_at for w in waiting)
    await asyncio.gather(*tasks)
    await dispatcher.aclose()


async def test_live_limits_and_pauses_reach_the_dispatcher(tmp_path: Path) -> None:
    """What ``quota set`` and ``pause`` write, the poller reads into the limits in force and
    the paused set, and the dispatcher is told."""
    async with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        limits = Limits({API: 10.0})
        told: list[bool] = []
        poller = SteeringPoller(
            store.steering, limits, PauseState(), on_change=lambda: told.append(True)
        )
        assert not await poller.refresh()

        await store.steering.set_limit(API, "customer", "c-1", 2.0, actor="alice")
        await store.steering.pause("c-2", API, actor="alice")
        assert await poller.refresh()
        assert (limits.customer(API, "c-1"), limits.customer(API, "c-3")) == (2.0, 10.0)
        assert poller.paused(API, "c-2")
        assert not poller.paused("other_api", "c-2")
        assert not await poller.refresh()  # nothing new
        assert told == [True]

        await store.steering.resume("c-2", API, actor="bob")
        await store.steering.reset_limit(API, "customer", "c-1", actor="bob")
        assert await poller.refresh()
        assert limits.customer(API, "c-1") == 10.0
        assert not poller.paused(API, "c-2")


async def test_a_429_is_the_customers_unless_another_customer_of_the_egress_got_one() -> None:
    dispatcher, _, _ = make()
    assert dispatcher.blame(API, "c-1") == "customer"
    assert dispatcher.blame(API, "c-1") == "customer"  # the same customer again: still its own
    assert dispatcher.blame(API, "c-2") == "both"  # two customers at once: the egress's window
    assert dispatcher.blame("other_api", "c-3") == "customer"


class SpyBuckets(LocalBuckets):
    """In-process buckets that note when each give-back arrived."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.given_back_at: list[float] = []

    async def give_back(self, api: str, egress: str, late: Sequence[tuple[str, float]]) -> None:
        self.given_back_at.append(self._clock())
        await super().give_back(api, egress, late)


@pytest.mark.parametrize(("late_by", "at_once"), [(0.05, True), (0.004, False)])
async def test_on_shared_rows_a_send_late_by_half_the_guard_is_given_back_at_once(
    late_by: float, at_once: bool
) -> None:
    """Another replica reserves the bucket's next slot ``ahead_s`` before it. Lateness held
    back to ride on this replica's next reservation (or for ``GIVE_BACK_WITHIN_S``) may come
    after that: the other replica's slot was not moved on, and a window held one request too
    many (three replicas in one lane of the parallel suite, with a 40 ms guard)."""
    time = VirtualTime()
    buckets = SpyBuckets(time.now)
    dispatcher = Dispatcher(
        buckets,
        Limits({API: 5.0}),
        config=PacingConfig(egress="e-1", owner="r-1", guard_min=0.010, ahead_s=0.02),
        sleep=time.sleep,
    )
    slot = await dispatcher.turn(API, "c-1")
    assert slot is not None
    dispatcher.late(API, "c-1", slot=slot, sent_at=slot + dispatcher.tolerance(API) + late_by)
    for _ in range(3):  # a task's turn or two: fewer than virtual time needs to move
        await asyncio.sleep(0)
    assert (buckets.given_back_at == [slot]) is at_once
    await dispatcher.aclose()
