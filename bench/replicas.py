"""Several replicas on one PostgreSQL store (``replicas``), and parking that follows a shrinking
set of customers in one process (``parking``). Every figure comes from the sandbox's request
log (strict limits: per (API, ParentUid) across sources, per (API, source) across callers),
except store round trips, which the replicas log (``shared_buckets_stats``).

``replicas``: setups of 1, 2 and 4 ``bss-relay serve`` processes, each with its own source
address (127.0.0.2, .3, ...: its own egress), plus 2 replicas sharing one egress name and one
source address; one PostgreSQL schema and one set of queues per setup; the sandbox's limit for
the API lowered (``REPLICAS_LIMIT``) so that CPU never binds. One customer bursts (1,000
commands) among light ones. The binding summed quota is ``limit x min(egresses, customers)``.
With two replicas or more, one is SIGKILLed after the window, and the time until the last
command it had claimed is finished by the others is measured from the store.

``parking``: one process, 5 light and 3 hot customers on one egress limited to 5/s: the hot
customers' requests/s once the light ones are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from bench.dataset import API, BenchCustomer
from bench.driver import Batch
from bench.estimates import estimate_rows, where
from bench.measures import busiest_window, per_second, shares
from bench.processes import Child, service_process
from bench.quota import FIRST_REQUEST_TIMEOUT_S, LOG_SETTLE_S, _backlog, _interleave
from bench.report import Figure, Row, ratio
from bench.stage import Stage
from service.broker.topology import Topology

__all__ = ["parking", "replicas", "replicas_steady"]

POSTGRES_URL = os.environ.get(
    "BSS_RELAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REPLICAS_LIMIT = 5.0  # requests/s for the API, per ParentUid and per source (sandbox + service)
LEASE_S = 10.0
FAILOVER_TIMEOUT_S = 120.0
UTILISATION_ONE = 0.98
UTILISATION_MANY = 0.93
SHARE_TOLERANCE = 0.10
PARKING_TARGET = 0.95


@dataclass(frozen=True, slots=True)
class Setup:
    label: str
    sources: tuple[str, ...]  # one per replica
    egress: str | None = None  # RELAY_EGRESS shared by all replicas, if set

    @property
    def egresses(self) -> int:
        return 1 if self.egress else len(set(self.sources))


SETUPS = (
    Setup("1 replica", ("127.0.0.2",)),
    Setup("2 replicas", ("127.0.0.2", "127.0.0.3")),
    Setup("4 replicas", ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")),
    Setup("2 replicas, one egress", ("127.0.0.2", "127.0.0.2"), egress="shared-nat"),
)


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@asynccontextmanager
async def _replicas(
    stage: Stage, setup: Setup, schema: str, prefix: str, limit: float = REPLICAS_LIMIT
) -> AsyncIterator[list[Child]]:
    store_url = f"{POSTGRES_URL}?schema={schema}"
    async with AsyncExitStack() as stack:
        procs: list[Child] = []
        for n, source in enumerate(setup.sources):
            env = stage.settings(prefix, {API: limit}, store_url)
            env.update(
                RELAY_SOURCE_ADDRESS=source,
                RELAY_LEASE_S=str(LEASE_S),
                RELAY_LOG_LEVEL="INFO",  # shared_buckets_stats: store round trips
            )
            if setup.egress:
                env["RELAY_EGRESS"] = setup.egress
            log = stage.workdir / f"{prefix}-{n}.log"
            procs.append(
                await stack.enter_async_context(service_process(env, log=log, name=f"replica-{n}"))
            )
        queue = Topology(prefix).work_queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while await stage.driver.consumers(queue) < len(procs):
            dead = [p for p in procs if not p.alive]
            if dead:
                raise dead[0].failed("exited at start")
            if loop.time() > deadline:
                raise procs[0].failed("replicas did not all consume within 60 s")
            await asyncio.sleep(0.1)
        yield procs


def _round_trips(procs: Sequence[Child], start: float, end: float) -> tuple[int, int]:
    """(store round trips, slots granted) inside the window ``start``..``end`` (epoch
    seconds), summed over the replicas' ``shared_buckets_stats`` lines (logged every 5 s):
    the counts of the last line in the window minus those of the first, so the parking
    tickets taken for the initial backlog, before the window, are not counted."""
    trips = grants = 0
    for proc in procs:
        inside: list[tuple[int, int]] = []
        with contextlib.suppress(OSError):
            for line in proc.log.read_text(errors="replace").splitlines():
                if "shared_buckets_stats" not in line:
                    continue
                try:
                    stats = json.loads(line)
                    at = datetime.fromisoformat(stats["timestamp"]).timestamp()
                except (ValueError, KeyError):
                    continue
                if start <= at < end:
                    inside.append((int(stats.get("round_trips", 0)), int(stats.get("grants", 0))))
        if len(inside) >= 2:
            trips += inside[-1][0] - inside[0][0]
            grants += inside[-1][1] - inside[0][1]
    return trips, grants


async def _failover(stage: Stage, victim: Child, schema: str) -> tuple[float, float]:
    """SIGKILL ``victim``; seconds until every command it held (a live claim at the kill)
    was taken over by another replica (claimed again, or finished), and until every one of
    them finished. A claim whose lease had already run out, or that was given back, is not
    the victim's any more: the command was settled to a delay queue meanwhile."""
    conn = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": schema})
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    taken = done = float("nan")
    try:
        owner = f"%:{victim.pid}:%"
        owned = [
            r["command_id"]
            for r in await conn.fetch(
                "SELECT command_id FROM relay_commands WHERE owner LIKE $1 "
                "AND status <> 'finished' AND lease_until > clock_timestamp()",
                owner,
            )
        ]
        await victim.process.wait()
        stage.say(f"SIGKILLed replica pid {victim.pid}: {len(owned)} of its commands unfinished")
        if not owned:
            return 0.0, 0.0
        while time.monotonic() - killed_at < FAILOVER_TIMEOUT_S:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status <> 'finished') AS open, "
                "count(*) FILTER (WHERE status <> 'finished' AND owner LIKE $2) AS stuck "
                "FROM relay_commands WHERE command_id = ANY($1::text[])",
                owned,
                owner,
            )
            elapsed = time.monotonic() - killed_at
            if row["stuck"] == 0 and math.isnan(taken):
                taken = elapsed
            if row["open"] == 0:
                done = elapsed
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return (
        float("inf") if math.isnan(taken) else taken,
        float("inf") if math.isnan(done) else done,
    )


async def _steady(
    stage: Stage, since: float, uids: set[str]
) -> tuple[list[dict[str, Any]], float, float]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_REQUEST_TIMEOUT_S
    while True:
        rows = [r for r in await stage.sandbox.requests(since) if r["api"] == API]
        first: dict[str, float] = {}
        for r in rows:
            if r["parent_uid"] in uids and 200 <= (r["status"] or 0) < 300:
                first.setdefault(r["parent_uid"], r["at"])
        if len(first) == len(uids):
            break
        if loop.time() > deadline:
            raise TimeoutError(f"only {len(first)} of {len(uids)} customers reached the API")
        await asyncio.sleep(0.25)
    start = max(first.values()) + stage.sizes.warmup_s
    end = start + stage.sizes.window_s
    stage.say(f"measuring {stage.sizes.window_s:g} s of steady traffic")
    await asyncio.sleep(max(0.0, end - time.time()) + LOG_SETTLE_S)
    rows = [r for r in await stage.sandbox.requests(since) if r["api"] == API]
    return rows, start, end


async def _one_setup(
    stage: Stage, setup: Setup, hot: BenchCustomer, light: Sequence[BenchCustomer]
) -> list[Row]:
    sizes = stage.sizes
    customers = [hot, *light]
    uids = {c.customer_id for c in customers}
    prefix = f"bench-replicas-{uuid.uuid4().hex[:6]}"
    schema = f"bench_replicas_{uuid.uuid4().hex[:10]}"
    await stage.sandbox.reset()
    await stage.sandbox.set_limits({API: REPLICAS_LIMIT})
    await stage.driver.declare_service_queues(prefix)
    label = setup.label
    try:
        backlog = _backlog(f"rep{prefix[-6:]}", hot, sizes.replicas_burst)
        backlog += _interleave(
            [_backlog(f"rep{prefix[-6:]}", c, sizes.replicas_each) for c in light]
        )
        since = time.time()
        async with _replicas(stage, setup, schema, prefix) as procs:
            stage.say(f"{label}: {len(backlog)} commands, {len(customers)} customers")
            await stage.driver.publish_many(backlog)
            rows, start, end = await _steady(stage, since, uids)
            taken = failover = float("nan")
            trips, grants = _round_trips(procs, start, end)  # the steady window's
            if len(procs) > 1:
                taken, failover = await _failover(stage, procs[0], schema)
    finally:
        await asyncio.shield(stage.driver.delete_service_queues(prefix))
        await asyncio.shield(_drop_schema(schema))
    ours = [r for r in rows if r["parent_uid"] in uids]
    # the sandbox's log of the setup, kept with the process logs for a closer look
    (stage.workdir / f"{prefix}-requests.json").write_text(json.dumps(ours))
    stage.say(f"{label}: request log in {prefix}-requests.json")
    accepted = [r for r in ours if 200 <= (r["status"] or 0) < 300]
    window = [r for r in accepted if start <= r["at"] < end]
    binding = REPLICAS_LIMIT * min(setup.egresses, len(customers))
    achieved = len(window) / sizes.window_s
    per_uid = max(busiest_window([r["at"] for r in ours if r["parent_uid"] == u]) for u in uids)
    sources = {r["source"] for r in ours}
    per_source = max(busiest_window([r["at"] for r in ours if r["source"] == s]) for s in sources)
    throttled = sum(1 for r in ours if r["status"] == 429)
    split = shares([r["parent_uid"] for r in window], [c.customer_id for c in customers])
    equal = 1 / len(customers)
    worst = max(abs(s / equal - 1) for s in split.values())
    target = UTILISATION_ONE if len(setup.sources) == 1 else UTILISATION_MANY
    per_call = trips / grants if grants else float("nan")
    share_detail = {
        ("hot" if uid == hot.customer_id else uid[-6:]): round(s * 100, 1)
        for uid, s in split.items()
    }
    return [
        Row(
            label,
            f"accepted requests/s vs binding summed quota ({setup.egresses} egress)",
            Figure(achieved, "req/s", 2),
            Figure(binding, "req/s", 0),
            ratio(achieved, binding, 3),
            f"≥ {target}",
            achieved / binding >= target,
            {"window_s": sizes.window_s, "replicas": len(setup.sources)},
        ),
        *_limits_held(label, per_uid, per_source, throttled, {"sources": sorted(sources)}),
        Row(
            label,
            "worst customer share vs equal share (hot + light)",
            Figure(worst * 100, "%", 1),
            Figure(0, "%"),
            "—",
            f"within ±{SHARE_TOLERANCE:.0%}",
            worst <= SHARE_TOLERANCE,
            {"shares_percent": share_detail},
        ),
        Row(
            label,
            "store round trips per API call (slot granted), steady window",
            Figure(per_call, "", 2),
            Figure(1, ""),
            ratio(per_call, 1),
            "about 1",
            None,
            {"round_trips": trips, "grants": grants},
        ),
        Row(
            label,
            "SIGKILL of one replica -> all its claimed commands taken over",
            Figure(taken, "s", 1),
            Figure(LEASE_S + 2, "s", 0),
            ratio(taken, LEASE_S + 2),
            f"≤ lease ({LEASE_S:g} s) + 2 s",
            None if math.isnan(taken) else taken <= LEASE_S + 2,
        ),
        Row(
            label,
            "SIGKILL of one replica -> last of its commands finished",
            Figure(failover, "s", 1),
            Figure(LEASE_S + 2, "s", 0),
            ratio(failover, LEASE_S + 2),
            f"≤ lease ({LEASE_S:g} s) + 2 s",
            None if math.isnan(failover) else failover <= LEASE_S + 2,
        ),
    ]


async def replicas_steady(stage: Stage) -> list[Row]:
    customers = stage.customers
    hot, light = customers[0], customers[1 : 1 + stage.sizes.replicas_light]
    rows: list[Row] = []
    for setup in SETUPS:
        stage.say(f"replicas: {setup.label}")
        rows += await _one_setup(stage, setup, hot, light)
    return rows


async def parking(stage: Stage) -> list[Row]:
    """One process, 8 customers on one egress at 5/s; the 3 hot ones once 5 light are done."""
    sizes = stage.sizes
    light = list(stage.customers[:5])
    hot = list(stage.customers[5:8])
    limit = REPLICAS_LIMIT
    await stage.sandbox.set_limits({API: limit})
    backlog = _interleave(
        [_backlog("park", c, sizes.parking_light) for c in light]
        + [_backlog("park", c, sizes.parking_hot) for c in hot]
    )
    commands: dict[str, tuple[str, str]] = {}
    for c in light:
        commands |= where("park", c, sizes.parking_light)
    for c in hot:
        commands |= where("park", c, sizes.parking_hot)
    light_uids = {c.customer_id for c in light}
    hot_uids = {c.customer_id for c in hot}
    since = time.time()
    async with stage.service("parking", limits={API: limit}):
        stage.say(f"parking: {len(backlog)} commands, 5 light and 3 hot customers at {limit:g}/s")
        batch = stage.driver.expect(commands)
        await stage.driver.publish_many(backlog)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_REQUEST_TIMEOUT_S * 2
        while True:
            rows = [r for r in await stage.sandbox.requests(since) if r["api"] == API]
            done = [
                r["at"]
                for r in rows
                if r["parent_uid"] in light_uids and 200 <= (r["status"] or 0) < 300
            ]
            if len(done) >= len(light) * sizes.parking_light:
                break
            if loop.time() > deadline:
                raise TimeoutError("the light customers did not finish")
            await asyncio.sleep(0.5)
        light_done = max(done)
        start = light_done + sizes.parking_adapt_s
        end = start + sizes.window_s
        stage.say(f"light customers done; measuring the hot ones for {sizes.window_s:g} s")
        await asyncio.sleep(max(0.0, end - time.time()) + LOG_SETTLE_S)
        if stage.sizes.parking_drain:  # the deferred estimates need every command's start
            await batch.wait(FAILOVER_TIMEOUT_S)
            await asyncio.sleep(LOG_SETTLE_S)
        rows = [r for r in await stage.sandbox.requests(since) if r["api"] == API]
    window = [
        r
        for r in rows
        if r["parent_uid"] in hot_uids
        and start <= r["at"] < end
        and 200 <= (r["status"] or 0) < 300
    ]
    achieved = len(window) / sizes.window_s
    throttled = sum(1 for r in rows if r["status"] == 429)
    return [
        Row(
            "parking",
            f"3 hot customers' requests/s from {sizes.parking_adapt_s:g} s after 5 light ones "
            "finished",
            Figure(achieved, "req/s", 2),
            Figure(limit, "req/s", 0),
            ratio(achieved, limit, 3),
            f"≥ {PARKING_TARGET}",
            achieved / limit >= PARKING_TARGET,
        ),
        Row("parking", "HTTP 429 answers", Figure(throttled), Figure(0), "—", "0", throttled == 0),
        *estimate_rows(stage, "parking", rows, commands),
    ]


UNEVEN = Setup("3 replicas, 2 sources", ("127.0.0.2", "127.0.0.3", "127.0.0.2"))
KILL_AT_S = 8.0  # from the first accepted request: replica 0 (one of the two on 127.0.0.2)


def _ok(row: dict[str, Any]) -> bool:
    return 200 <= (row["status"] or 0) < 300


async def _uneven_run(  # noqa: PLR0917 (one call site, every argument named there)
    stage: Stage,
    backlog: list[tuple[str, bytes]],
    commands: dict[str, tuple[str, str]],
    uids: set[str],
    prefix: str,
    schema: str,
) -> tuple[list[dict[str, Any]], float, float, Batch]:
    """Run the backlog on ``UNEVEN``, SIGKILL replica 0 ``KILL_AT_S`` after the first
    accepted request, wait for every event; the sandbox's log of the run."""
    label = UNEVEN.label
    since = time.time()
    try:
        async with _replicas(stage, UNEVEN, schema, prefix) as procs:
            stage.say(f"{label}: {len(backlog)} commands, 3 hot and 5 light customers")
            batch = stage.driver.expect(commands)
            await stage.driver.publish_many(backlog)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + FIRST_REQUEST_TIMEOUT_S
            while True:
                rows = await stage.sandbox.requests(since)
                ok = [r["at"] for r in rows if r["parent_uid"] in uids and _ok(r)]
                if ok:
                    break
                if loop.time() > deadline:
                    raise TimeoutError("no request accepted")
                await asyncio.sleep(0.1)
            first = min(ok)
            await asyncio.sleep(max(0.0, first + KILL_AT_S - time.time()))
            taken, failover = await _failover(stage, procs[0], schema)
            if not await batch.wait(FAILOVER_TIMEOUT_S * 2):
                stage.say(f"{label}: {len(batch.arrived)} of {len(commands)} finished")
            await asyncio.sleep(LOG_SETTLE_S)
            rows = [r for r in await stage.sandbox.requests(since) if r["api"] == API]
    finally:
        await asyncio.shield(stage.driver.delete_service_queues(prefix))
        await asyncio.shield(_drop_schema(schema))
    return rows, taken, failover, batch


async def replicas(stage: Stage) -> list[Row]:
    """Issue 17's shape: 3 replicas on 2 source addresses, 3 hot and 5 light customers, strict
    5/s; replica 0 SIGKILLed ``KILL_AT_S`` after the first request (its address keeps a
    replica, so the binding quota stays 2 x 5/s); the light ones finish first and the hot
    ones are left alone. Utilisation over the whole run, first accepted request to last."""
    sizes = stage.sizes
    hot = list(stage.customers[:3])
    light = list(stage.customers[3:8])
    customers = hot + light
    uids = {c.customer_id for c in customers}
    prefix = f"bench-replicas-{uuid.uuid4().hex[:6]}"
    schema = f"bench_replicas_{uuid.uuid4().hex[:10]}"
    label = UNEVEN.label
    await stage.sandbox.reset()
    await stage.sandbox.set_limits({API: REPLICAS_LIMIT})
    await stage.driver.declare_service_queues(prefix)
    tag = f"rep{prefix[-6:]}"
    backlog = _interleave(
        [_backlog(tag, c, sizes.uneven_hot) for c in hot]
        + [_backlog(tag, c, sizes.uneven_light) for c in light]
    )
    commands: dict[str, tuple[str, str]] = {}
    for c in hot:
        commands |= where(tag, c, sizes.uneven_hot)
    for c in light:
        commands |= where(tag, c, sizes.uneven_light)
    rows, taken, failover, batch = await _uneven_run(stage, backlog, commands, uids, prefix, schema)
    ours = [r for r in rows if r["parent_uid"] in uids]
    (stage.workdir / f"{prefix}-requests.json").write_text(json.dumps(ours))
    times = sorted(r["at"] for r in ours if 200 <= (r["status"] or 0) < 300)
    span = times[-1] - times[0]
    binding = REPLICAS_LIMIT * UNEVEN.egresses
    achieved = (len(times) - 1) / span if span > 0 else math.nan
    light_uids = {c.customer_id for c in light}
    light_done = max(r["at"] for r in ours if r["parent_uid"] in light_uids)
    tail = [t for t in times if t > light_done]
    tail_rate = (len(tail) - 1) / (tail[-1] - tail[0]) if len(tail) > 1 else math.nan
    per_uid = max(busiest_window([r["at"] for r in ours if r["parent_uid"] == u]) for u in uids)
    sources = {r["source"] for r in ours}
    per_source = max(busiest_window([r["at"] for r in ours if r["source"] == s]) for s in sources)
    throttled = sum(1 for r in ours if r["status"] == 429)
    failed = batch.failed()
    return [
        Row(
            label,
            f"accepted requests/s over the whole run ({len(times)} in {span:.1f} s, tail "
            "included) vs binding quota (2 egresses)",
            Figure(achieved, "req/s", 2),
            Figure(binding, "req/s", 0),
            ratio(achieved, binding, 3),
            f"≥ {UTILISATION_MANY}",
            achieved / binding >= UTILISATION_MANY,
            {"per_second": per_second(times)},
        ),
        Row(
            label,
            f"hot customers alone (after the light ones' last request, {len(tail)} requests)",
            Figure(tail_rate, "req/s", 2),
            Figure(binding, "req/s", 0),
            ratio(tail_rate, binding, 3),
            "reported",
            None,
        ),
        *_limits_held(label, per_uid, per_source, throttled),
        Row(label, "commands not succeeded", Figure(failed), Figure(0), "—", "0", failed == 0),
        Row(
            label,
            f"SIGKILL at {KILL_AT_S:g} s -> its claimed commands taken over / all finished",
            Figure(taken, "s", 1),
            Figure(failover, "s", 1),
            "—",
            f"reported (lease {LEASE_S:g} s)",
            None,
        ),
        *estimate_rows(stage, label, ours, commands),
    ]


def _limits_held(
    label: str, per_uid: int, per_source: int, throttled: int, detail: dict[str, Any] | None = None
) -> list[Row]:
    """The rows saying the limits held: the busiest 1-s window per (API, ParentUid) and per
    (API, source) against the limit, and the 429s."""
    return [
        Row(
            label,
            "busiest 1-s window, any (API, ParentUid)",
            Figure(per_uid, "req"),
            Figure(REPLICAS_LIMIT, "req"),
            ratio(per_uid, REPLICAS_LIMIT),
            "≤ 1",
            per_uid <= REPLICAS_LIMIT,
        ),
        Row(
            label,
            "busiest 1-s window, any (API, source)",
            Figure(per_source, "req"),
            Figure(REPLICAS_LIMIT, "req"),
            ratio(per_source, REPLICAS_LIMIT),
            "≤ 1",
            per_source <= REPLICAS_LIMIT,
            detail or {},
        ),
        Row(label, "HTTP 429 answers", Figure(throttled), Figure(0), "—", "0", throttled == 0),
    ]
