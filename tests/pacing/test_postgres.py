"""The shared buckets on real PostgreSQL, in real time: several replicas (each its own pool and
dispatcher on one schema) keep one quota per (API, customer) and per (API, egress)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from bench.measures import busiest_window as max_in_any_window
from handlers.errors import StoreUnavailable
from service.pacing.buckets import Candidate, Offer
from service.pacing.dispatcher import Dispatcher, PacingConfig
from service.pacing.limits import Limits
from service.pacing.postgres import PACING, PostgresBuckets
from service.store import open_store
from service.store.types import CommandStore
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

pytestmark = pytest.mark.timing("b")  # windows of slots on the real clock

API = "op"
OpenReplica = Callable[..., Awaitable[tuple[PostgresBuckets, Dispatcher]]]


@pytest.fixture
async def open_replica() -> AsyncIterator[OpenReplica]:
    """A replica's buckets and dispatcher: its own store (pool) on one shared schema."""
    schema = postgres_schema()
    try:
        async with AsyncExitStack() as stack:

            async def open_one(
                egress: str = "e", owner: str = "r"
            ) -> tuple[PostgresBuckets, Dispatcher]:
                store: CommandStore = await stack.enter_async_context(
                    open_store(f"{POSTGRES_URL}?schema={schema}", components=(PACING,))
                )
                buckets = PostgresBuckets(store.pool)  # type: ignore[attr-defined]
                await buckets.start()
                dispatcher = Dispatcher(
                    buckets,
                    Limits({API: 10.0}),
                    config=PacingConfig(egress=egress, owner=owner, guard_min=0.01),
                )
                stack.push_async_callback(dispatcher.aclose)
                return buckets, dispatcher

            yield open_one
    finally:
        await drop_schema(schema)


async def test_three_replicas_keep_every_window(open_replica: OpenReplica) -> None:
    """Three replicas (two on one egress), four customers, one bursting: per window, per
    customer and per egress, never above the limit; customers take turns."""
    replicas = [
        await open_replica(egress="nat-a", owner="r-1"),
        await open_replica(egress="nat-a", owner="r-2"),
        await open_replica(egress="nat-b", owner="r-3"),
    ]
    sent: list[tuple[float, str, str]] = []

    async def call(i: int, uid: str) -> None:
        _, dispatcher = replicas[i]
        slot = await dispatcher.turn(API, uid)
        assert slot is not None
        sent.append((slot, uid, "nat-a" if i < 2 else "nat-b"))

    calls = [call(i % 3, "hot") for i in range(24)]
    calls += [call(i % 3, f"light{i % 3}") for i in range(12)]
    await asyncio.wait_for(asyncio.gather(*calls), 30)
    # the slots are the server's instants, exactly as reserved
    for uid in ("hot", "light0", "light1", "light2"):
        assert max_in_any_window([t for t, u, _ in sent if u == uid], 1.0) <= 10
    for egress in ("nat-a", "nat-b"):
        assert max_in_any_window([t for t, _, e in sent if e == egress], 1.0) <= 10
    first = Counter(u for _, u, _ in sorted(sent)[:12])
    assert first["hot"] <= 8  # the burst does not take every early slot
    trips = sum(buckets.round_trips for buckets, _ in replicas)
    assert trips <= 3 * len(sent)


async def test_a_429_seen_by_one_replica_slows_the_others(open_replica: OpenReplica) -> None:
    (_, one), (two_buckets, _) = await open_replica(owner="a"), await open_replica(owner="b")
    await one.turn(API, "c-1")
    await one.throttled(API, "c-1", blame="customer", sent_at=None)  # lone: the guard widens
    await one.throttled(API, "c-1", blame="customer", sent_at=None)  # a cut, for everyone
    reservation = await two_buckets.reserve(
        Offer(API, "e", 10.0, [Candidate("c-1", 2, 10.0)], within=5.0, owner="b")
    )
    assert reservation.looked[0].rate == 5.0
    assert reservation.granted == "c-1"
    assert reservation.slot >= two_buckets.now() + 0.5  # paused after the cut, for both


async def test_a_store_out_of_reach_grants_nothing_and_every_waiter_hears(
    open_replica: OpenReplica,
) -> None:
    buckets, dispatcher = await open_replica()
    await buckets._pool.close()
    with pytest.raises(StoreUnavailable) as raised:
        await buckets.reserve(Offer(API, "e", 10.0, [Candidate("c-1", 2, 10.0)], within=1.0))
    assert raised.value.code == "RELAY.STORE_UNAVAILABLE"
    waiters = [dispatcher.turn(API, f"c-{n}") for n in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
    assert all(isinstance(r, StoreUnavailable) for r in results)


def test_the_server_clock_estimate_keeps_the_answer_read_soonest() -> None:
    """An answer read 50 ms late must not make the replica think the server's clock is 50 ms
    behind: its requests would leave late for their slots while looking on time."""
    local = [0.0]
    buckets = PostgresBuckets(None, clock=lambda: local[0])
    buckets._learn(1000.0, asked=0.0)
    assert buckets.now() == pytest.approx(1000.0)
    local[0] = 1.05
    buckets._learn(1001.0, asked=1.0)
    assert buckets.now() == pytest.approx(1001.05, abs=0.002)  # not 1001.0
    local[0] = 2.0
    buckets._learn(1002.01, asked=2.0)
    assert buckets.now() == pytest.approx(1002.01)
    local[0] = 12.0
    buckets._learn(1011.995, asked=11.99)
    assert buckets.now() == pytest.approx(1012.0, abs=1e-6)


def test_the_server_clock_estimate_never_passes_what_an_answer_allows() -> None:
    """The server read its clock after the statement was sent: the offset can be no larger
    than server_now - asked, whatever an earlier sample said."""
    local = [5.0]
    buckets = PostgresBuckets(None, clock=lambda: local[0])
    buckets._learn(1005.0, asked=5.0)
    local[0] = 6.0
    buckets._learn(1005.97, asked=5.99)
    assert buckets.now() == pytest.approx(1005.98, abs=1e-6)
