"""The pacing algorithm's rules (``service.pacing.buckets``), each on both backends, in
virtual time: what the docstring promises, checked one rule at a time."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.pacing.buckets import (
    FLOOR_RATE,
    HOLD_FIRST_S,
    NARROW_AFTER_S,
    Buckets,
    Candidate,
    Offer,
    Priority,
    Reservation,
    Throttle,
)
from service.pacing.local import LocalBuckets
from service.pacing.postgres import PACING, PostgresBuckets
from service.store import open_store
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

API = "renewal_resources"
T0 = 1_800_000_000.0
G = 0.002  # guard_min used throughout


@pytest.fixture(params=["local", "postgres"])
async def buckets(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Buckets]:
    if request.param == "local":
        yield LocalBuckets()
        return
    schema = postgres_schema()
    try:
        async with open_store(f"{POSTGRES_URL}?schema={schema}", components=(PACING,)) as store:
            yield PostgresBuckets(store.pool)  # type: ignore[attr-defined]
    finally:
        await drop_schema(schema)


def offer(
    now: float,
    *uids: str,
    limit: float = 10.0,
    egress: str = "e-1",
    within: float = 0.0,
    priority: int = Priority.NORMAL,
    api: str = API,
    owner: str = "r-1",
    customer_limit: float | None = None,
) -> Offer:
    return Offer(
        api=api,
        egress=egress,
        egress_limit=limit,
        candidates=[Candidate(u, priority, customer_limit or limit) for u in uids],
        within=within,
        owner=owner,
        guard_min=G,
        now=now,
    )


async def run_at_pace(
    b: Buckets, start: float, n: int, *uids: str, limit: float = 10.0
) -> list[float]:
    """Reserve ``n`` slots as fast as they come: each call at the last answer's next instant."""
    slots: list[float] = []
    now = start
    for _ in range(n):
        while True:
            r: Reservation = await b.reserve(offer(now, *uids, limit=limit))
            if r.granted:
                slots.append(r.slot)
                break
            now = max(now, r.slot)
    return slots


def most_in_a_second(instants: list[float]) -> int:
    window: deque[float] = deque()
    most = 0
    for at in sorted(instants):
        window.append(at)
        while window[0] <= at - 1.0:
            window.popleft()
        most = max(most, len(window))
    return most


async def test_no_burst_at_start_and_even_spacing(buckets: Buckets) -> None:
    slots = await run_at_pace(buckets, T0, 25, "c-1")
    for a, b in itertools.pairwise(slots):  # epoch seconds: a float's grain is 2e-7 s here
        assert b - a == pytest.approx((1 + G) / 10.0, abs=1e-6)
    assert most_in_a_second(slots) == 10


async def test_no_burst_after_idle(buckets: Buckets) -> None:
    await run_at_pace(buckets, T0, 10, "c-1")
    later = await run_at_pace(buckets, T0 + 500, 25, "c-1")
    assert most_in_a_second(later) == 10


async def test_customers_share_the_egress_and_apis_do_not(buckets: Buckets) -> None:
    slots = await run_at_pace(buckets, T0, 30, "c-1", "c-2")
    assert most_in_a_second(slots) == 10  # two customers, one egress bucket
    other = await run_at_pace(buckets, T0, 10, "c-1")  # another API: its own buckets
    assert other[0] == T0 or other == sorted(other)
    r = await buckets.reserve(offer(T0, "c-1", api="list_rate_on_period_detail"))
    assert r.granted == "c-1"
    assert r.slot == T0


async def test_a_customer_busy_on_its_own_bucket_is_passed_over(buckets: Buckets) -> None:
    first = await buckets.reserve(offer(T0, "slow", customer_limit=1.0))
    assert first.granted == "slow"
    now = first.egress_ready_at
    r = await buckets.reserve(offer(now, "slow", "fast", customer_limit=None))
    assert r.granted in ("slow", "fast")
    r2 = await buckets.reserve(
        Offer(
            api=API,
            egress="e-1",
            egress_limit=10.0,
            candidates=[Candidate("slow", 2, 1.0), Candidate("fast", 2, 10.0)],
            within=0.0,
            guard_min=G,
            now=now + 0.2,
        )
    )
    assert r2.granted == "fast"  # slow's own bucket is a second away; the egress slot is used
    assert r2.looked[0].uid == "slow"
    assert r2.looked[0].ready_at > now + 0.5


async def test_a_lone_429_widens_the_guard_and_a_second_cuts_the_rate(buckets: Buckets) -> None:
    slots = await run_at_pace(buckets, T0, 5, "c-1")
    t = slots[-1] + 0.05
    lone = await buckets.throttled(throttle(t, sent_at=slots[-1]))
    assert lone.explained
    assert (lone.customer_cut, lone.egress_cut, lone.customer_rate) == (False, False, 10.0)
    assert lone.guard == pytest.approx(G + 0.005)
    same_episode = await buckets.throttled(throttle(t + 0.01, sent_at=slots[-1]))
    assert same_episode.explained  # sent before the widening
    cut = await buckets.throttled(throttle(t + 0.3, sent_at=t + 0.2))
    assert (cut.explained, cut.customer_cut, cut.egress_cut) == (False, True, True)
    assert (cut.customer_rate, cut.egress_rate) == (5.0, 5.0)
    again = await buckets.throttled(throttle(t + 0.35, sent_at=t + 0.25))
    assert not again.customer_cut  # sent before the cut: the same episode
    r = await buckets.reserve(offer(t + 0.4, "c-1"))
    assert r.granted is None
    assert r.slot >= t + 0.3 + 1.0  # paused a second after the cut


def throttle(
    now: float, *, sent_at: float | None, blame: str = "both", limit: float = 10.0
) -> Throttle:
    return Throttle(
        api=API,
        uid="c-1",
        egress="e-1",
        blame=blame,  # type: ignore[arg-type]
        customer_limit=limit,
        egress_limit=limit,
        sent_at=sent_at,
        guard_min=G,
        now=now,
    )


async def test_the_rate_never_falls_below_the_floor(buckets: Buckets) -> None:
    rates = []
    t = T0
    for _ in range(8):  # each answers a request sent after the cut before it: a new episode
        t += 0.1
        answer = await buckets.throttled(throttle(t, sent_at=t - 0.01, blame="customer"))
        rates.append(answer.customer_rate)
    assert rates == [10.0, 5.0, 2.5, 1.25, 0.625, FLOOR_RATE, FLOOR_RATE, FLOOR_RATE]


class Gateway:
    """The API's strict sliding window: at most ``limit(t)`` accepted requests in any second."""

    def __init__(self) -> None:
        self.accepted: deque[float] = deque()
        self.limit = 10

    def __call__(self, at: float) -> bool:
        while self.accepted and self.accepted[0] <= at - 1.0:
            self.accepted.popleft()
        if len(self.accepted) >= self.limit:
            return False
        self.accepted.append(at)
        return True


async def test_the_api_changes_its_mind(buckets: Buckets) -> None:
    """The API lowers its limit from 10 to 5/s at 15 s and raises it back at 40 s: the 429s
    stop within 10 s of the cut, the key then runs at >= 0.85 of 5/s, and it is back at >= 0.9
    of 10/s within 30 s of the raise; no second ever holds more than the API accepts."""
    gateway = Gateway()
    sent: list[tuple[float, bool]] = []
    now = T0
    while now < T0 + 75:
        gateway.limit = 5 if T0 + 15 <= now < T0 + 40 else 10
        r = await buckets.reserve(offer(now, "c-1"))
        if not r.granted:
            now = max(now + 1e-6, r.slot)
            continue
        now = r.slot
        ok = gateway(now)
        sent.append((now, ok))
        if not ok:
            await buckets.throttled(throttle(now + 0.03, sent_at=now))

    refused = [at - T0 for at, ok in sent if not ok]
    assert refused, "the cut was never noticed"
    assert min(refused) >= 15
    assert max(refused) <= 25, f"429s went on until {max(refused):.1f} s"
    low = [at for at, ok in sent if ok and T0 + 25 <= at < T0 + 40]
    assert len(low) / 15.0 >= 0.85 * 5
    back = [at for at, ok in sent if ok and T0 + 60 <= at < T0 + 70]
    assert len(back) / 10.0 >= 0.9 * 10


async def test_a_failed_probe_holds_the_level_found(buckets: Buckets) -> None:
    t = T0
    await buckets.throttled(throttle(t, sent_at=t - 0.01))  # lone: the guard widens
    await buckets.throttled(throttle(t + 0.1, sent_at=t + 0.05))  # cut to 5, searching
    probe = await buckets.reserve(offer(t + 2.2, "c-1"))
    assert probe.looked[0].rate == pytest.approx(5.5)  # a second at 5 ran: probing above
    held = await buckets.throttled(throttle(t + 2.3, sent_at=t + 2.25))
    assert held.customer_rate == 5.0  # back to the level known good, and held there
    r = await buckets.reserve(offer(t + 2.3 + HOLD_FIRST_S - 1, "c-1"))
    assert r.looked[0].rate == 5.0  # no probing into 429s while the level holds
    r = await buckets.reserve(offer(t + 2.3 + 1 + HOLD_FIRST_S + 0.1, "c-1"))
    assert r.looked[0].rate == pytest.approx(5.5)  # then one careful step


async def test_lateness_is_given_back_and_small_lateness_absorbed(buckets: Buckets) -> None:
    first = await buckets.reserve(offer(T0, "c-1"))
    assert first.granted
    late = Offer(
        api=API,
        egress="e-1",
        egress_limit=10.0,
        candidates=[Candidate("c-1", 2, 10.0)],
        within=0.0,
        guard_min=G,
        late=[("c-1", 0.05)],
        now=T0 + 0.12,
    )
    second = await buckets.reserve(late)
    assert second.granted is None  # the give-back moved the next slot on first
    assert second.slot == pytest.approx(T0 + (1 + G) / 10 + 0.05, abs=1e-6)


async def test_a_widened_guard_narrows_back_after_a_quiet_minute(buckets: Buckets) -> None:
    t = T0
    widened = await buckets.throttled(throttle(t, sent_at=t - 0.01))
    assert widened.guard == pytest.approx(G + 0.005)
    r = await buckets.reserve(offer(t + NARROW_AFTER_S - 1, "c-1"))
    assert r.guard == pytest.approx(G + 0.005)
    r = await buckets.reserve(offer(t + NARROW_AFTER_S + 1, "c-1"))
    assert r.guard == pytest.approx(max(G, (G + 0.005) / 2))


async def test_a_customer_bucket_is_spaced_by_the_widest_guard(buckets: Buckets) -> None:
    await buckets.throttled(
        Throttle(API, "c-1", "e-2", "egress", 10.0, 10.0, T0 - 0.1, G, 0.05, T0)
    )  # e-2's guard widened to 7 ms
    r = await buckets.reserve(offer(T0 + 1, "c-1", egress="e-1"))
    assert r.granted == "c-1"
    assert r.looked[0].ready_at == pytest.approx(r.slot + (1 + G + 0.005) / 10.0)
    assert r.egress_ready_at == pytest.approx(r.slot + (1 + G) / 10.0)


async def test_a_high_want_keeps_its_slot_from_normal_and_low_ones(buckets: Buckets) -> None:
    first = await buckets.reserve(offer(T0, "bulk-1"))
    assert first.granted
    raced = await buckets.reserve(offer(T0, "bulk-2", within=0.02))  # lost the race: next slot
    assert raced.granted == "bulk-2"
    nxt = raced.egress_ready_at
    high = await buckets.reserve(offer(T0 + 0.01, "vip", priority=Priority.HIGH, owner="r-2"))
    assert high.granted is None  # the egress is busy two slots ahead: its want is left
    normal = await buckets.reserve(offer(nxt, "bulk-3", priority=Priority.NORMAL))
    assert normal.granted is None  # the slot the high one wants
    taken = await buckets.reserve(offer(nxt, "vip", priority=Priority.HIGH, owner="r-2"))
    assert taken.granted == "vip"
    after = await buckets.reserve(offer(taken.egress_ready_at, "bulk-3"))
    assert after.granted == "bulk-3"  # the want went with the grant


async def test_asking_ahead_a_replica_that_lost_the_race_takes_the_next_slot(
    buckets: Buckets,
) -> None:
    first = await buckets.reserve(offer(T0, "a"))
    assert first.granted == "a"
    when_due = await buckets.reserve(offer(T0, "b"))  # in process: asked when due
    assert when_due.granted is None
    ahead = await buckets.reserve(offer(T0, "b", within=0.02))  # a replica asking ahead
    assert ahead.granted == "b"
    assert ahead.slot == pytest.approx(first.egress_ready_at, abs=1e-6)


async def test_a_slot_that_ends_before_the_wanted_one_stays_usable(buckets: Buckets) -> None:
    await buckets.reserve(offer(T0, "vip", priority=Priority.HIGH, customer_limit=1.0))
    want = await buckets.reserve(
        offer(T0 + 0.5, "vip", priority=Priority.HIGH, customer_limit=1.0, within=0.0)
    )
    assert want.granted is None  # its own bucket is a second away: it wants T0 + 1
    low = await buckets.reserve(offer(T0 + 0.5, "background", priority=Priority.LOW))
    assert low.granted == "background"  # ends long before T0 + 1: no quota wasted


async def test_idle_buckets_are_swept_and_a_fresh_one_paces_the_same(buckets: Buckets) -> None:
    before = await run_at_pace(buckets, T0, 3, "c-1")
    assert await buckets.sweep(T0 + 10) == 0  # used lately: kept
    assert await buckets.sweep(T0 + 4000) == 2  # the customer's and the egress's
    after = await run_at_pace(buckets, T0 + 4000, 3, "c-1")
    assert [b - before[0] for b in before] == pytest.approx([a - after[0] for a in after])


async def test_a_throttled_bucket_is_not_swept(buckets: Buckets) -> None:
    await buckets.throttled(throttle(T0, sent_at=None))
    await buckets.throttled(throttle(T0 + 0.1, sent_at=None))  # cut
    assert await buckets.sweep(T0 + 1.5) == 0
    assert math.isfinite(T0)
