"""``store-calls`` (issue 18 item 4): PostgreSQL transactions per granted API call, with the
replica's presence published every second and with it published once at start only
(``bench.quiet_serve``).

How they are counted: each setting gets a database of its own (created for the run, dropped
after), so ``pg_stat_database.xact_commit + xact_rollback`` of that database counts the
replica's transactions and nothing else's (the machine's other PostgreSQL users have other
databases; this scenario reads the counters from another database). The count runs from 2 s
after the replica consumes (its start-up excluded) to 2 s after the last event (a backend
reports its counts within about a second of a transaction's end); granted calls are the
sandbox's accepted requests in that span. A transaction may hold several statements (a
presence publication is one transaction): the figure is round trips that commit, not
statements. ``pg_stat_statements`` is not preloaded on this server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.dataset import API
from bench.processes import service_process
from bench.quota import LIMIT, LOG_SETTLE_S, _backlog, _interleave
from bench.replicas import POSTGRES_URL
from bench.report import Figure, Row
from bench.stage import Stage
from service.broker.topology import Topology

__all__ = ["store_calls"]

SETTLE_S = 2.0
CUSTOMERS = 5


async def _xacts(database: str) -> int:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        value = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            database,
        )
    finally:
        await conn.close()
    return int(value or 0)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _one(stage: Stage, *, presence: bool) -> tuple[int, int, float]:
    """(transactions, granted calls, seconds counted) for one replica."""
    database = f"bench_calls_{uuid.uuid4().hex[:10]}"
    await _admin(f"CREATE DATABASE {database}")
    prefix = f"bench-calls-{uuid.uuid4().hex[:6]}"
    customers = stage.customers[:CUSTOMERS]
    backlog = _interleave([_backlog(prefix[-6:], c, stage.sizes.calls_each) for c in customers])
    parts = urlsplit(POSTGRES_URL)
    store_url = urlunsplit(parts._replace(path=f"/{database}"))
    await stage.sandbox.reset()
    await stage.sandbox.set_limits({API: LIMIT})
    await stage.driver.declare_service_queues(prefix)
    try:
        env = stage.settings(prefix, {API: LIMIT}, store_url)
        log = stage.workdir / f"{prefix}.log"
        async with service_process(env, log=log, presence=presence) as proc:
            await stage._ready(proc, Topology(prefix).work_queue)
            await asyncio.sleep(SETTLE_S)
            since = time.time()
            before = await _xacts(database)
            batch = stage.driver.expect(cid for cid, _ in backlog)
            await stage.driver.publish_many(backlog)
            await batch.wait(240.0)
            await asyncio.sleep(SETTLE_S)
            after = await _xacts(database)
            span = time.time() - since
            await asyncio.sleep(LOG_SETTLE_S)
            rows = await stage.sandbox.requests(since)
    finally:
        await asyncio.shield(stage.driver.delete_service_queues(prefix))
        await asyncio.shield(_admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
    granted = sum(1 for r in rows if r["api"] == API and 200 <= (r["status"] or 0) < 300)
    return after - before, granted, span


async def store_calls(stage: Stage) -> list[Row]:
    figures = {}
    for presence in (True, False):
        stage.say(f"store-calls: presence {'every second' if presence else 'once at start'}")
        figures[presence] = await _one(stage, presence=presence)
    rows = []
    per_call = {}
    for presence, (xacts, granted, span) in figures.items():
        per_call[presence] = xacts / granted if granted else float("nan")
        rows.append(
            Row(
                "store-calls",
                f"PostgreSQL transactions per granted API call, presence "
                f"{'on (1/s)' if presence else 'off'} ({xacts} / {granted} in {span:.0f} s)",
                Figure(per_call[presence], "", 2),
                Figure(float("nan"), ""),
                "—",
                "reported",
                None,
                {"transactions": xacts, "granted": granted, "span_s": round(span, 1)},
            )
        )
    rows.append(
        Row(
            "store-calls",
            "presence's share: per call on - off",
            Figure(per_call[True] - per_call[False], "", 2),
            Figure(float("nan"), ""),
            "—",
            "reported",
            None,
        )
    )
    return rows
