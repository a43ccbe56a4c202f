"""Parking is work-conserving: when fewer customers wait than when tickets were issued, the
freed capacity is used within a few seconds (issue 10: 8 customers on one egress; once the 5
light ones finished, the 3 hot ones got 2.3 requests/s of 5 because their parked commands came
back on tickets spaced for 8).

A scheduler-level run in real time, scaled (20 requests/s, delays a quarter of the service's):
the real FairScheduler and admission decisions, and a stand-in for the broker's delay queues
(the topology's fixed steps, a command parked for ``s`` comes back after the largest step not
above ``s``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from service.broker.topology import Topology
from service.pacing.limiter import RateLimiter
from service.pacing.parking import park_decision
from service.pacing.scheduler import FairScheduler

SCALE = 4.0  # the run is this many times faster than the service's delays
LIMIT = 20.0  # requests/s on the one egress (and per customer)


@pytest.mark.timing
async def test_hot_customers_take_the_freed_capacity_within_seconds() -> None:
    limiter = RateLimiter({"op": LIMIT}, guard_s=0.001)
    scheduler = FairScheduler(limiter, hold_s=2.0 / SCALE)
    served: list[tuple[float, str]] = []
    light_finished = asyncio.Event()
    start = time.monotonic()

    async def deliver(uid: str, ticket: float | None = None) -> None:
        while True:
            park = park_decision(scheduler, ("op", uid), ticket)
            if park is None:
                break
            ticket = park.ticket
            await asyncio.sleep(Topology.delay_for(park.seconds * SCALE) / 1000 / SCALE)
        with scheduler.holding("op", uid):
            await scheduler.turn("op", uid)
            served.append((time.monotonic() - start, uid))
            if sum(u.startswith("light") for _, u in served) == 60:
                light_finished.set()

    light = [f"light{i}" for i in range(5)]
    hot = [f"hot{i}" for i in range(3)]
    backlog = [uid for _ in range(12) for uid in light] + [uid for _ in range(150) for uid in hot]
    tasks = [asyncio.create_task(deliver(uid)) for uid in backlog]
    try:
        await asyncio.wait_for(light_finished.wait(), 30)
        light_done = time.monotonic() - start
        await asyncio.sleep(2.0 + 3.0)  # a few seconds to adapt, then three measured
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await scheduler.aclose()
    window = [u for t, u in served if light_done + 2.0 <= t < light_done + 5.0]
    rate = len(window) / 3.0
    # the defect this guards against left the hot customers 0.46 of the limit; a loaded CI
    # machine has measured 0.80 of it on correct code (a real-time test at 4x speed)
    assert rate >= 0.7 * LIMIT, f"hot customers got {rate:.1f}/s of {LIMIT}"
    shares = Counter(window)
    assert min(shares[u] for u in hot) >= 0.8 * max(shares.values())  # and fairly
