"""Shared rate-limit buckets on real PostgreSQL: several replicas (each its own store, pool and
limiter on one schema) keep one quota per (API, ParentUid) and per (API, egress)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from bench.measures import busiest_window as max_in_any_window
from handlers.errors import StoreUnavailable
from service.pacing.limiter import Grant
from service.pacing.scheduler import FairScheduler
from service.pacing.shared import GIVE_BACK_WITHIN_S, SharedBuckets
from service.store.postgres import PostgresCommandStore
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

pytestmark = pytest.mark.timing  # slots and waits on the real clock

OpenBuckets = Callable[..., Awaitable[SharedBuckets]]


@pytest.fixture
async def open_buckets() -> AsyncIterator[OpenBuckets]:
    """A replica's limiter: its own store (pool) on one schema shared by the test's replicas."""
    schema = postgres_schema()
    try:
        async with AsyncExitStack() as stack:

            async def open_one(**options: object) -> SharedBuckets:
                store = await stack.enter_async_context(
                    PostgresCommandStore(POSTGRES_URL, schema=schema)
                )
                limiter = SharedBuckets(store.pool, {"op": 10}, **options)  # type: ignore[arg-type]
                return await stack.enter_async_context(limiter)

            yield open_one
    finally:
        await drop_schema(schema)


async def grab(buckets: SharedBuckets, uid: str, count: int) -> list[float]:
    """Take ``count`` slots for ``uid`` the way the dispatcher does; their server instants."""
    slots: list[float] = []
    while len(slots) < count:
        grant = await buckets.acquire("op", uid, within=0.02)
        if grant.granted:
            slots.append(grant.at)
            await asyncio.sleep(grant.wait)
        else:
            await asyncio.sleep(max(0.0, grant.wait - 0.01))
    return slots


async def test_two_replicas_share_one_customer_bucket(open_buckets: OpenBuckets) -> None:
    one = await open_buckets(egress="a", guard_s=0.001)
    two = await open_buckets(egress="b", guard_s=0.001)  # distinct egresses: the uid binds
    slots = list(itertools.chain(*await asyncio.gather(grab(one, "c1", 12), grab(two, "c1", 12))))
    assert max_in_any_window(slots) <= 10
    gaps = [b - a for a, b in itertools.pairwise(sorted(slots))]
    assert min(gaps) >= 0.1001 - 1e-6  # evenly spaced across replicas, no burst at start
    assert 24 / (max(slots) - min(slots) + 0.1) > 9.5  # and the quota used, not halved


async def test_replicas_with_one_egress_name_share_its_bucket(open_buckets: OpenBuckets) -> None:
    one = await open_buckets(egress="nat", guard_s=0.001)
    two = await open_buckets(egress="nat", guard_s=0.001)
    results = await asyncio.gather(grab(one, "c1", 8), grab(two, "c2", 8))
    slots = list(itertools.chain(*results))
    assert max_in_any_window(slots) <= 10  # two customers, one egress: 10/s in total


async def test_a_429_seen_by_one_replica_lowers_the_rate_for_all(
    open_buckets: OpenBuckets,
) -> None:
    one = await open_buckets(egress="a")
    two = await open_buckets(egress="b")
    assert await one.report_throttled("op", "c1", pause_s=0.0) is False  # lone: guard widens
    halving = time.monotonic()
    assert await one.report_throttled("op", "c1", pause_s=0.0) is True  # another: halved
    grant = await two.acquire("op", "c1", within=5.0)  # the other replica
    since = time.monotonic() - halving
    assert grant.granted
    # 10/s halved, then given back at ceiling x recovery (10 x 0.1 per second) for however long
    # the two round trips took (was: within 0.1 of 5.0, which a loaded PostgreSQL overran)
    assert 5.0 - 1e-6 <= two.current_rate("op", "c1") <= 5.0 + since * 10 * 0.1 + 1e-6
    assert "op/uid/c1" in two.rates()
    # the guard is per egress: a lone 429 on the other egress widens its guard, no halving
    assert await two.report_throttled("op", "c2", pause_s=0.0) is False


CLOCK_SLACK_S = 0.005  # how far the estimate of the server's clock may move between answers


async def acquire_timed(
    buckets: SharedBuckets, uid: str, within: float
) -> tuple[Grant, float, float]:
    """The grant, and the server's clock (estimated) just before and just after the call."""
    before = buckets.now()
    grant = await buckets.acquire("op", uid, within=within)
    return grant, before, buckets.now()


def waited_from_the_call(wait: float, instant: float, before: float, after: float) -> bool:
    """``wait`` is what remained until ``instant`` when the server answered, some time during
    the call: true however long the round trip took."""
    return before - CLOCK_SLACK_S <= instant - wait <= after + CLOCK_SLACK_S


async def test_far_slots_are_not_reserved(open_buckets: OpenBuckets) -> None:
    buckets = await open_buckets()
    first = await buckets.acquire("op", "c1", within=0.0)
    assert first.granted
    # the egress's next slot, one interval on, is taken for a caller that came for the slot
    # another replica on its egress just took (asking once more would be a wasted round trip)
    second, before, after = await acquire_timed(buckets, "c1", within=0.0)
    assert second.granted
    assert second.at - first.at == pytest.approx(0.101, abs=1e-6)  # one interval, guard included
    assert waited_from_the_call(second.wait, second.at, before, after)
    refused, before, after = await acquire_timed(buckets, "c1", within=0.0)
    assert not refused.granted  # two intervals away: nothing reserved
    assert waited_from_the_call(refused.uid_wait, first.at + 2 * 0.101, before, after)
    # known without I/O: what the refusal said, less the microseconds since
    assert buckets.delay("op", "c1") == pytest.approx(refused.uid_wait, abs=0.002)
    granted, before, after = await acquire_timed(buckets, "c1", within=0.3)
    assert granted.granted
    assert granted.at - first.at == pytest.approx(2 * 0.101, abs=1e-6)
    assert waited_from_the_call(granted.wait, granted.at, before, after)


async def test_store_unreachable_grants_nothing(open_buckets: OpenBuckets) -> None:
    buckets = await open_buckets()
    await buckets._pool.close()  # the store is gone
    with pytest.raises(StoreUnavailable) as raised:
        await buckets.acquire("op", "c1", within=1.0)
    assert raised.value.code == "RELAY.STORE_UNAVAILABLE"
    scheduler = FairScheduler(buckets)
    with pytest.raises(StoreUnavailable):  # waiters learn it, nothing is sent
        await asyncio.wait_for(scheduler.turn("op", "c1"), 5)


async def test_schedulers_of_three_replicas_keep_every_window(open_buckets: OpenBuckets) -> None:
    """Three replicas (two on one egress), four customers, one bursting: per window, per
    customer and per egress, never above the limit; customers served round-robin."""
    replicas = [
        await open_buckets(egress="nat-a"),
        await open_buckets(egress="nat-a"),
        await open_buckets(egress="nat-b"),
    ]
    schedulers = [FairScheduler(r) for r in replicas]
    sent: list[tuple[float, str, str]] = []

    async def call(i: int, uid: str) -> None:
        await schedulers[i].turn("op", uid)
        sent.append((replicas[i].now(), uid, "nat-a" if i < 2 else "nat-b"))

    calls = [call(i % 3, "hot") for i in range(24)]
    calls += [call(i % 3, f"light{i % 3}") for i in range(12)]
    await asyncio.wait_for(asyncio.gather(*calls), 30)
    # instants recorded here are local estimates of the server's clock, a few ms noisy; the
    # slots themselves are checked exactly above (grant.at)
    for uid in ("hot", "light0", "light1", "light2"):
        assert max_in_any_window([t for t, u, _ in sent if u == uid], 0.99) <= 10
    for egress in ("nat-a", "nat-b"):
        assert max_in_any_window([t for t, _, e in sent if e == egress], 0.99) <= 10
    first = Counter(u for _, u, _ in sorted(sent)[:12])
    assert first["hot"] <= 8  # the burst does not take every early slot
    trips = sum(r.round_trips for r in replicas)
    assert trips <= 3 * len(sent)


async def test_parking_tickets_follow_the_key_across_replicas(open_buckets: OpenBuckets) -> None:
    """Two replicas park commands of one key: their tickets never land closer than the
    interval, so the key's parked commands come back at its rate, not twice it."""
    one = await open_buckets(egress="a")
    two = await open_buckets(egress="b")
    now = one.now()
    tickets = []
    for _ in range(20):
        tickets.append((await one.ticket("op", "c1", earliest=now + 5, interval=0.1))[0])
        tickets.append((await two.ticket("op", "c1", earliest=now + 5, interval=0.1))[0])
    ordered = sorted(tickets)
    assert min(b - a for a, b in itertools.pairwise(ordered)) >= 0.1 - 1e-6
    assert len(set(tickets)) == 40
    assert one.round_trips + two.round_trips <= 4  # taken in blocks, not one trip each


async def test_idle_rows_are_pruned(open_buckets: OpenBuckets) -> None:
    buckets = await open_buckets()
    await buckets.acquire("op", "c1", within=1.0)
    assert await buckets.prune() == 0  # used just now
    async with buckets._pool.acquire() as conn:
        await conn.execute("UPDATE relay_buckets SET used_at = used_at - 7200, tat = 0")
    assert await buckets.prune() == 2  # the customer's and the egress's rows; the guard stays


async def test_ticket_spacing_is_the_keys_share_of_every_egress(open_buckets: OpenBuckets) -> None:
    """Six customers active over four egresses at 10/s: a key's parked commands come back
    every 6 / 40 s, not at the spacing one replica sees (6 keys on its one egress: 0.6 s)."""
    replicas = [await open_buckets(egress=f"e{i}") for i in range(4)]
    for n in range(6):
        assert (await replicas[n % 4].acquire("op", f"c{n}", within=5.0)).granted
    for r in replicas[:2]:
        assert (await r.acquire("op", "c0", within=5.0)).granted
    _, spacing = await replicas[0].ticket("op", "c0", earliest=replicas[0].now(), interval=0.6)
    assert spacing == pytest.approx(6 / 40)


async def test_a_customer_bucket_is_spaced_by_the_widest_guard(open_buckets: OpenBuckets) -> None:
    one = await open_buckets(egress="a")  # shared buckets: the guard starts at 10 ms
    two = await open_buckets(egress="b")
    assert await one.report_throttled("op", "c0", pause_s=0.0) is False  # a's: 20 ms, the widest
    first = await two.acquire("op", "c1", within=5.0)
    second = await two.acquire("op", "c1", within=5.0)
    assert second.at - first.at == pytest.approx(0.102, abs=1e-6)  # c1: the widest guard
    third = await two.acquire("op", "c2", within=5.0)
    assert third.at - second.at == pytest.approx(0.101, abs=1e-6)  # egress b: its own


async def test_a_late_send_moves_the_shared_rows_for_every_replica(
    open_buckets: OpenBuckets,
) -> None:
    """Replica one sends 60 ms after its slot: both rows it spent from (the customer's, which
    replica two shares, and its egress's) move on by the lateness beyond its tolerance (the
    10 ms guard over 4: 2.5 ms), in a statement of its own when no reservation of its
    own carries it within 0.25 s."""
    one = await open_buckets(egress="a")
    two = await open_buckets(egress="a")
    first = await one.acquire("op", "c1", within=5.0)
    assert first.granted
    excess = one.late("op", "c1", slot=first.at, sent_at=first.at + 0.060)
    assert excess == pytest.approx(0.0575, abs=1e-6)  # noted at once, the request waits not
    assert one.trips["late"] == 0
    await asyncio.sleep(GIVE_BACK_WITHIN_S + 0.2)  # no reservation of one's came meanwhile
    assert one.trips["late"] == 1
    rows = await two._pool.fetch("SELECT kind, tat FROM relay_buckets WHERE kind <> 'guard'")
    tats = {row["kind"]: row["tat"] for row in rows}  # the rows replica two reserves from
    assert tats["uid"] - first.at == pytest.approx(0.101 + 0.0575, abs=1e-6)
    assert tats["egress"] - first.at == pytest.approx(0.101 + 0.0575, abs=1e-6)
    assert one.late("op", "c1", slot=first.at, sent_at=first.at + 0.002) == 0.0


async def test_the_next_reservation_carries_the_lateness_back(open_buckets: OpenBuckets) -> None:
    one = await open_buckets(egress="a")
    first = await one.acquire("op", "c1", within=5.0)
    late = one.late("op", "c1", slot=first.at, sent_at=first.at + 0.030)  # noted ...
    assert late == pytest.approx(0.0275, abs=1e-6)
    second = await one.acquire("op", "c2", within=5.0)  # ... and rides on this statement
    assert second.at - first.at == pytest.approx(0.101 + 0.0275, abs=1e-6)  # the egress moved
    third = await one.acquire("op", "c1", within=5.0)
    assert third.at - first.at == pytest.approx(2 * 0.101 + 0.0275, abs=1e-6)
    assert one.trips["late"] == 0  # no statement of its own


async def test_a_shared_guard_narrows_back_after_a_quiet_minute(open_buckets: OpenBuckets) -> None:
    one = await open_buckets(egress="a")
    assert await one.report_throttled("op", "c0", pause_s=0.0) is False  # 10 -> 20 ms

    async def spacing(uid: str) -> float:
        first = await one.acquire("op", uid, within=5.0)
        second = await one.acquire("op", uid, within=5.0)
        return second.at - first.at

    assert await spacing("c1") == pytest.approx(0.102, abs=1e-6)
    # a minute without a 429 (the row's instants moved back rather than waiting for it)
    await one._pool.execute(
        "UPDATE relay_buckets SET throttled_at = throttled_at - 61, "
        "widened_at = widened_at - 61, adjusted_at = adjusted_at - 61 WHERE kind = 'guard'"
    )
    assert await spacing("c2") == pytest.approx(0.101, abs=1e-6)  # halved: back to 10 ms
    [row] = await one._pool.fetch("SELECT guard FROM relay_buckets WHERE kind = 'guard'")
    assert row["guard"] == pytest.approx(0.010)


def test_the_server_clock_estimate_keeps_the_answer_read_soonest() -> None:
    """An answer read 50 ms late must not make the replica think the server's clock is 50 ms
    behind: its requests would leave late for their slots while looking on time."""
    local = [0.0]
    buckets = SharedBuckets(None, {"op": 5}, clock=lambda: local[0])
    buckets._learn(1000.0, asked=0.0)  # read at once
    assert buckets.now() == pytest.approx(1000.0)
    local[0] = 1.05
    buckets._learn(1001.0, asked=1.0)  # server time 1001.0, read at local 1.05: 50 ms late
    assert buckets.now() == pytest.approx(1001.05, abs=0.002)  # not 1001.0
    local[0] = 2.0
    buckets._learn(1002.01, asked=2.0)  # the server's clock gained 10 ms: taken at once
    assert buckets.now() == pytest.approx(1002.01)
    local[0] = 12.0
    buckets._learn(1011.995, asked=11.99)  # it lost 15 ms: yielded at 1 ms/s
    assert buckets.now() == pytest.approx(1012.0, abs=1e-6)


def test_the_server_clock_estimate_never_passes_what_an_answer_allows() -> None:
    """The server read its clock after the statement was sent: the offset can be no larger
    than server_now - asked, whatever an earlier sample said."""
    local = [5.0]
    buckets = SharedBuckets(None, {"op": 5}, clock=lambda: local[0])
    buckets._learn(1005.0, asked=5.0)
    local[0] = 6.0
    buckets._learn(1005.97, asked=5.99)  # the server's clock stepped back 30 ms
    assert buckets.now() == pytest.approx(1005.98, abs=1e-6)
