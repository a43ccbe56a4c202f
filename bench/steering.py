"""Backlogs measured over the whole run from the sandbox's request log and the events:
``quota-pg`` (one hot customer alone on the PostgreSQL store, 1 and 2 replicas, issue 17),
``api-mind`` (the sandbox lowers and raises the limit mid-run without telling the service,
issue 18 item 5) and ``priority`` (``high`` commands through a saturated egress, issue 18
item 1). ``quota-pg`` and ``api-mind`` also score the ``deferred`` events' estimates
(``bench.estimates``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench.dataset import API, BenchCustomer, auto_renew_command
from bench.estimates import estimate_rows, starts
from bench.measures import busiest_window, percentile, recovery_after, worst_window_ratio
from bench.quota import LIMIT, LOG_SETTLE_S, _backlog, _interleave
from bench.replicas import Setup, _drop_schema, _replicas
from bench.report import Figure, Row, ratio
from bench.stage import Stage

__all__ = ["api_mind", "priority", "quota_pg"]

QUOTA_PG_TARGET = 0.97
QUOTA_PG_SETUPS = (
    Setup("quota-pg, 1 replica", ("127.0.0.2",)),
    Setup("quota-pg, 2 replicas", ("127.0.0.2", "127.0.0.3")),
)
DRAIN_TIMEOUT_S = 240.0
MIND_CUT_S = 15.0  # from the first accepted request: the sandbox lowers the limit
MIND_RAISE_S = 40.0  # ... and raises it again
MIND_LOW = 5.0
MIND_STOP_S = 10.0
MIND_AFTER = 0.85
MIND_RECOVER = 0.9
MIND_RECOVER_S = 30.0
PRIORITY_SPACING_S = 0.4  # between two high commands
PRIORITY_QUIET_S = 15.0  # backlog alone, measured before the first high command


def _commands(
    label: str, customer: BenchCustomer, count: int, priority: str | None = None
) -> tuple[list[tuple[str, bytes]], dict[str, tuple[str, str]]]:
    ids = [f"{label}-{customer.customer_id[-6:]}-{n}" for n in range(count)]
    backlog = [(cid, auto_renew_command(cid, customer, n, priority)) for n, cid in enumerate(ids)]
    where = {
        cid: (customer.customer_id, customer.resource_ids[n % len(customer.resource_ids)])
        for n, cid in enumerate(ids)
    }
    return backlog, where


async def _drain(stage: Stage, ids: Sequence[str], label: str) -> Any:
    batch = stage.driver.expect(ids)
    if not await batch.wait(DRAIN_TIMEOUT_S):
        stage.say(f"{label}: {len(batch.arrived)} of {len(ids)} finished in time")
    return batch


def _accepted(rows: Sequence[dict[str, Any]], uids: set[str]) -> list[float]:
    return sorted(
        r["at"] for r in rows if r["parent_uid"] in uids and 200 <= (r["status"] or 0) < 300
    )


def _whole_run(times: Sequence[float]) -> float:
    """Requests/s from the first accepted request to the last: (N - 1) / span."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else math.nan


async def _quota_pg_setup(stage: Stage, setup: Setup, hot: BenchCustomer) -> list[Row]:
    sizes = stage.sizes
    prefix = f"bench-qpg-{uuid.uuid4().hex[:6]}"
    schema = f"bench_qpg_{uuid.uuid4().hex[:10]}"
    await stage.sandbox.reset()
    await stage.sandbox.set_limits({API: LIMIT})
    await stage.driver.declare_service_queues(prefix)
    backlog, where = _commands(f"qpg{prefix[-6:]}", hot, sizes.quota_pg_backlog)
    since = time.time()
    try:
        async with _replicas(stage, setup, schema, prefix, LIMIT):
            stage.say(f"{setup.label}: {len(backlog)} commands for one customer")
            batch = stage.driver.expect(where)
            await stage.driver.publish_many(backlog)
            if not await batch.wait(DRAIN_TIMEOUT_S):
                stage.say(f"{setup.label}: {len(batch.arrived)} of {len(where)} finished")
            await asyncio.sleep(LOG_SETTLE_S)
            rows = [r for r in await stage.sandbox.requests(since) if r["api"] == API]
    finally:
        await asyncio.shield(stage.driver.delete_service_queues(prefix))
        await asyncio.shield(_drop_schema(schema))
    rows = [r for r in rows if r["parent_uid"] == hot.customer_id]
    (stage.workdir / f"{prefix}-requests.json").write_text(json.dumps(rows))
    times = _accepted(rows, {hot.customer_id})
    whole = _whole_run(times)
    window_start = times[0] + sizes.warmup_s
    steady = sum(1 for t in times if window_start <= t < window_start + sizes.window_s)
    steady_rate = steady / sizes.window_s
    throttled = sum(1 for r in rows if r["status"] == 429)
    busiest = busiest_window([r["at"] for r in rows])
    label = setup.label
    failed = batch.failed()
    return [
        Row(
            label,
            f"accepted requests/s, whole run ({len(times)} requests, first to last)",
            Figure(whole, "req/s", 2),
            Figure(LIMIT, "req/s", 0),
            ratio(whole, LIMIT, 3),
            f"≥ {QUOTA_PG_TARGET}",
            whole / LIMIT >= QUOTA_PG_TARGET,
            {"span_s": round(times[-1] - times[0], 2) if times else None},
        ),
        Row(
            label,
            f"accepted requests/s, {sizes.window_s:g} s window from {sizes.warmup_s:g} s in",
            Figure(steady_rate, "req/s", 2),
            Figure(LIMIT, "req/s", 0),
            ratio(steady_rate, LIMIT, 3),
            f"≥ {QUOTA_PG_TARGET}",
            steady_rate / LIMIT >= QUOTA_PG_TARGET,
        ),
        Row(
            label,
            "busiest sliding 1-s window",
            Figure(busiest, "req"),
            Figure(LIMIT, "req"),
            ratio(busiest, LIMIT),
            "≤ 1",
            busiest <= LIMIT,
        ),
        Row(label, "HTTP 429 answers", Figure(throttled), Figure(0), "—", "0", throttled == 0),
        Row(label, "commands not succeeded", Figure(failed), Figure(0), "—", "0", failed == 0),
        *estimate_rows(stage, label, rows, where),
    ]


async def quota_pg(stage: Stage) -> list[Row]:
    """One hot customer alone on PostgreSQL, 1 and 2 replicas (two source addresses)."""
    rows: list[Row] = []
    for setup in QUOTA_PG_SETUPS:
        stage.say(f"quota-pg: {setup.label}")
        rows += await _quota_pg_setup(stage, setup, stage.customers[0])
    return rows


async def api_mind(stage: Stage) -> list[Row]:
    """One customer's backlog at 10/s; the sandbox cuts the limit to 5/s and raises it back."""
    hot = stage.customers[0]
    await stage.sandbox.reset()
    await stage.sandbox.set_limits({API: LIMIT})
    backlog, where = _commands(f"mind{uuid.uuid4().hex[:4]}", hot, stage.sizes.mind_backlog)
    since = time.time()
    label = "api-mind"
    async with stage.service(label):
        batch = stage.driver.expect(where)
        await stage.driver.publish_many(backlog)
        while True:
            rows = await stage.sandbox.requests(since)
            times = _accepted([r for r in rows if r["api"] == API], {hot.customer_id})
            if times:
                break
            await asyncio.sleep(0.1)
        first = times[0]
        cut, rise = first + MIND_CUT_S, first + MIND_RAISE_S
        await asyncio.sleep(max(0.0, cut - time.time()))
        await stage.sandbox.set_limits({API: MIND_LOW})
        stage.say(f"{label}: sandbox limit {MIND_LOW:g}/s")
        await asyncio.sleep(max(0.0, rise - time.time()))
        await stage.sandbox.set_limits({API: LIMIT})
        stage.say(f"{label}: sandbox limit {LIMIT:g}/s again")
        if not await batch.wait(DRAIN_TIMEOUT_S):
            stage.say(f"{label}: {len(batch.arrived)} of {len(where)} finished")
        await asyncio.sleep(LOG_SETTLE_S)
        rows = [
            r
            for r in await stage.sandbox.requests(since)
            if r["api"] == API and r["parent_uid"] == hot.customer_id
        ]
    (stage.workdir / "api-mind-requests.json").write_text(json.dumps(rows))
    times = _accepted(rows, {hot.customer_id})
    throttles = sorted(r["at"] for r in rows if r["status"] == 429)
    stopped = (throttles[-1] - cut) if throttles else 0.0
    after_from = cut + MIND_STOP_S
    low_rate = sum(1 for t in times if after_from <= t < rise) / (rise - after_from)
    recovery = recovery_after(times, rise, MIND_RECOVER * LIMIT)

    def limit_at(at: float) -> float:
        # the 1-s window ending at ``at``: held to 5/s when it lies wholly under the cut
        # limit; a window that straddles a change is held to the higher of the two
        return MIND_LOW if cut + 1.0 <= at < rise else LIMIT

    worst = worst_window_ratio([r["at"] for r in rows], limit_at)
    failed = batch.failed()
    return [
        Row(
            label,
            "HTTP 429 answers",
            Figure(len(throttles)),
            Figure(0),
            "—",
            "reported (s after the cut: "
            + ", ".join(f"{t - cut:.1f}" for t in throttles[:12])
            + ")",
            None,
        ),
        Row(
            label,
            "last 429, seconds after the cut",
            Figure(stopped, "s", 1),
            Figure(MIND_STOP_S, "s", 0),
            ratio(stopped, MIND_STOP_S),
            f"≤ {MIND_STOP_S:g} s",
            stopped <= MIND_STOP_S,
        ),
        Row(
            label,
            f"accepted requests/s from {MIND_STOP_S:g} s after the cut to the raise",
            Figure(low_rate, "req/s", 2),
            Figure(MIND_LOW, "req/s", 0),
            ratio(low_rate, MIND_LOW, 3),
            f"≥ {MIND_AFTER}",
            low_rate / MIND_LOW >= MIND_AFTER,
        ),
        Row(
            label,
            f"after the raise: seconds until 5 s hold ≥ {MIND_RECOVER} x {LIMIT:g}/s",
            Figure(recovery, "s", 1),
            Figure(MIND_RECOVER_S, "s", 0),
            ratio(recovery, MIND_RECOVER_S),
            f"≤ {MIND_RECOVER_S:g} s",
            recovery <= MIND_RECOVER_S,
        ),
        Row(
            label,
            "busiest 1-s window / limit in force",
            Figure(worst, "", 2),
            Figure(1, ""),
            ratio(worst, 1),
            "≤ 1",
            worst <= 1.0,
        ),
        Row(label, "commands not succeeded", Figure(failed), Figure(0), "—", "0", failed == 0),
        *estimate_rows(stage, label, rows, where),
    ]


async def priority(stage: Stage) -> list[Row]:
    """A ``normal`` backlog over many customers saturates the egress; ``high`` commands of
    one more customer arrive one every ``PRIORITY_SPACING_S``: their wait, and the egress's
    throughput before and while they come."""
    sizes = stage.sizes
    lane, crowd = stage.customers[0], stage.customers[1 : 1 + sizes.many_keys]
    each = max(1, sizes.priority_backlog // len(crowd))
    backlog = _interleave([_backlog("prio", c, each) for c in crowd])
    highs, where = _commands(f"high{uuid.uuid4().hex[:4]}", lane, sizes.priority_high, "high")
    label = "priority"
    await stage.sandbox.reset()
    await stage.sandbox.set_limits({API: LIMIT})
    since = time.time()
    arrivals: dict[str, float] = {}
    async with stage.service(label):
        stage.say(f"{label}: {len(backlog)} normal commands over {len(crowd)} customers")
        batch = stage.driver.expect(where)
        await stage.driver.publish_many(backlog)
        crowd_uids = {c.customer_id for c in crowd}
        while True:
            if _accepted(await stage.sandbox.requests(since), crowd_uids):
                break
            await asyncio.sleep(0.1)
        quiet_from = time.time() + sizes.warmup_s
        lane_from = quiet_from + PRIORITY_QUIET_S
        await asyncio.sleep(lane_from - time.time())
        stage.say(f"{label}: {len(highs)} high commands, one every {PRIORITY_SPACING_S:g} s")
        for cid, body in highs:
            arrivals[cid] = time.time()
            await stage.driver.publish(cid, body)
            await asyncio.sleep(PRIORITY_SPACING_S)
        lane_to = time.time()
        await batch.wait(30.0)
        await asyncio.sleep(LOG_SETTLE_S)
        rows = [r for r in await stage.sandbox.requests(since) if r["api"] == API]
    (stage.workdir / "priority-requests.json").write_text(json.dumps(rows))
    started = starts(stage, [r for r in rows if r["parent_uid"] == lane.customer_id], where)
    waits = [started[c] - arrivals[c] if c in started else math.inf for c in arrivals]
    all_uids = crowd_uids | {lane.customer_id}
    quiet = _accepted(rows, crowd_uids)
    before = sum(1 for t in quiet if quiet_from <= t < lane_from) / PRIORITY_QUIET_S
    during_all = sum(1 for t in _accepted(rows, all_uids) if lane_from <= t < lane_to)
    during = during_all / (lane_to - lane_from)
    during_normal = sum(1 for t in quiet if lane_from <= t < lane_to) / (lane_to - lane_from)
    p99 = percentile(waits, 99)
    slot = 1 / LIMIT
    throttled = sum(1 for r in rows if r["status"] == 429)
    return [
        Row(
            label,
            f"high command's request - its arrival, p99 of {len(waits)} (median "
            f"{percentile(waits, 50):.2f} s)",
            Figure(p99, "s", 2),
            Figure(2 * slot, "s", 2),
            ratio(p99, 2 * slot),
            "≤ 2 slot intervals",
            p99 <= 2 * slot,
            {"waits_s": [round(w, 3) for w in waits]},
        ),
        Row(
            label,
            "egress accepted requests/s while high ones arrive (all) vs before (backlog alone)",
            Figure(during, "req/s", 2),
            Figure(before, "req/s", 2),
            ratio(during, before, 3),
            "≥ 1 (does not drop; ≥ 0.97 read as equal)",
            during / before >= 0.97 if before else None,
            {"normal_only_during": round(during_normal, 2)},
        ),
        Row(label, "HTTP 429 answers", Figure(throttled), Figure(0), "—", "0", throttled == 0),
    ]
