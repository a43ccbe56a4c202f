"""``soak``: does the service's memory stay flat under steady load? (issue 17, item 9)

``soak_commands`` mixed commands (``bench.dataset.mixed_command``: enabling auto-renew,
renewals, price inquiries, coupons) for ``soak_customers`` customers in turn, published at a
steady ``soak_rate`` per second, limits lifted in the sandbox and the service; once on the
SQLite store and once on PostgreSQL (a fresh schema at ``BSS_RELAY_BENCH_POSTGRES_URL``,
dropped afterwards). The service's ``VmRSS`` (``/proc/<pid>/status``) is sampled every
``SAMPLE_EVERY_S`` with the number of events received so far.

Growth is measured after warm-up: from RSS when ``WARMUP_FRACTION`` of the commands are done
(caches filled, every customer seen, pools open) to RSS at the end (the median of the last
samples, so one transient does not decide), and as the least-squares slope of RSS over
commands done after warm-up, per 10,000 commands. What a command leaves behind shows as a
slope; a bounded cache as a step before warm-up. Target: ≤ ``GROWTH_TARGET_MIB`` on both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import uuid
from dataclasses import dataclass

import asyncpg

from bench.dataset import mixed_command
from bench.driver import Batch
from bench.processes import TRACE_DIR, memory_kib
from bench.report import Figure, Row
from bench.stage import LIFTED, Stage

__all__ = ["POSTGRES_URL", "soak"]

POSTGRES_URL = os.environ.get(
    "BSS_RELAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# Both by default; one of them for a debugging run.
STORES = os.environ.get("BSS_RELAY_BENCH_SOAK_STORES", "sqlite,postgresql").lower().split(",")
SAMPLE_EVERY_S = 1.0
TICK_S = 0.1  # commands are published in a batch every tick: rate x tick each
WARMUP_FRACTION = 0.20
END_SAMPLES = 5  # the end figure: the median of the last samples
GROWTH_TARGET_MIB = 5.0
DRAIN_TIMEOUT_S = 300.0  # after the last publish, for the last events
MIB = 1024.0
PER = 10_000  # commands per slope unit


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds since the first publish
    published: int
    done: int
    rss_kib: int


@dataclass(frozen=True, slots=True)
class Soaked:
    store: str
    commands: int
    idle_kib: int
    samples: list[Sample]
    elapsed_s: float
    failed: int
    done: int  # events received; fewer than ``commands``: the run did not keep up

    def _after_warmup(self) -> list[Sample]:
        mark = self.commands * WARMUP_FRACTION
        return [s for s in self.samples if s.done >= mark]

    @property
    def warm_kib(self) -> float:
        after = self._after_warmup()
        return float(after[0].rss_kib) if after else float("nan")

    @property
    def end_kib(self) -> float:
        return float(statistics.median(s.rss_kib for s in self.samples[-END_SAMPLES:]))

    @property
    def slope_kib(self) -> float:
        """KiB of RSS per ``PER`` commands after warm-up (least squares)."""
        after = self._after_warmup()
        if len(after) < 3:
            return float("nan")
        xs = [float(s.done) for s in after]
        ys = [float(s.rss_kib) for s in after]
        if max(xs) == min(xs):
            return float("nan")
        return statistics.linear_regression(xs, ys).slope * PER


async def _sample(pid: int, batch: Batch, sent: list[int], into: list[Sample], t0: float) -> None:
    reported = 0.0  # under bench.traced: a memory report at each fifth of the run
    while True:
        rss = memory_kib(pid).get("VmRSS", 0)
        into.append(Sample(time.monotonic() - t0, sent[0], len(batch.arrived), rss))
        if TRACE_DIR and len(batch.arrived) >= (reported + 0.2) * len(batch.ids):
            reported += 0.2
            os.kill(pid, signal.SIGUSR1)
        await asyncio.sleep(SAMPLE_EVERY_S)


async def _publish_steadily(
    stage: Stage, commands: list[tuple[str, bytes]], rate: float, sent: list[int]
) -> None:
    """``rate`` commands a second, in one batch per tick, catching up after a slow tick."""
    start = time.monotonic()
    while sent[0] < len(commands):
        due = min(len(commands), int((time.monotonic() - start) * rate) + 1)
        if due > sent[0]:
            await stage.driver.publish_many(commands[sent[0] : due])
            sent[0] = due
        await asyncio.sleep(TICK_S)


def _commands(stage: Stage, label: str, count: int, customers: int) -> list[tuple[str, bytes]]:
    pool = stage.customers[:customers]
    out = []
    for n in range(count):
        cid = f"soak-{label}-{n}"
        # the customer cycles every command, the type once per round: each gets every type
        out.append((cid, mixed_command(cid, pool[n % len(pool)], n + n // len(pool), stage.data)))
    return out


async def _soak_on(stage: Stage, store: str, store_url: str | None) -> Soaked:
    sizes = stage.sizes
    label = store.lower()
    commands = _commands(stage, label, sizes.soak_commands, sizes.soak_customers)
    batch = stage.driver.expect(cid for cid, _ in commands)
    samples: list[Sample] = []
    sent = [0]
    stage.say(
        f"soak on {store}: {len(commands):,} commands at {sizes.soak_rate:g}/s "
        f"over {sizes.soak_customers} customers"
    )
    async with stage.service(f"soak-{label}", limits=LIFTED, store_url=store_url) as proc:
        await asyncio.sleep(1.0)
        idle = memory_kib(proc.pid).get("VmRSS", 0)
        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            sampler = tasks.create_task(_sample(proc.pid, batch, sent, samples, started))
            try:
                await _publish_steadily(stage, commands, sizes.soak_rate, sent)
                finished = await batch.wait(DRAIN_TIMEOUT_S)
                await asyncio.sleep(SAMPLE_EVERY_S * END_SAMPLES)  # the end samples, at rest
            finally:
                sampler.cancel()
        if TRACE_DIR:  # a last report, after a full collection
            os.kill(proc.pid, signal.SIGUSR2)
            await asyncio.sleep(2.0)
        if not proc.alive:
            raise proc.failed("exited during the soak")
    stage.driver.forget(batch)
    elapsed = (batch.last if batch.arrived else time.monotonic()) - started
    if not finished:  # reported, not raised: the other store's figures still count
        stage.say(f"soak on {store}: {len(batch.arrived):,} of {len(commands):,} events")
    return Soaked(store, len(commands), idle, samples, elapsed, batch.failed(), len(batch.arrived))


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def _rows(seen: Soaked) -> list[Row]:
    growth = (seen.end_kib - seen.warm_kib) / MIB
    every = max(1, len(seen.samples) // 60)
    detail = {
        "store": seen.store,
        "commands": seen.commands,
        "commands_per_s": seen.commands / seen.elapsed_s,
        "failed_events": seen.failed,
        "events": seen.done,
        "idle_rss_kib": seen.idle_kib,
        "warm_rss_kib": seen.warm_kib,
        "end_rss_kib": seen.end_kib,
        "slope_kib_per_10k": seen.slope_kib,
        "samples_s_published_done_rss_kib": [
            (round(s.at, 1), s.published, s.done, s.rss_kib) for s in seen.samples[::every]
        ],
    }
    mark = f"{seen.commands * WARMUP_FRACTION:,.0f}"
    complete = seen.done == seen.commands
    lag = "" if complete else f" (INCOMPLETE: {seen.done:,} events within the drain time)"
    return [
        Row(
            "soak",
            f"{seen.store}: RSS after {seen.commands:,} mixed commands vs after {mark} "
            f"(warm-up), same process{lag}",
            Figure(seen.end_kib / MIB, "MiB", 1),
            Figure(seen.warm_kib / MIB, "MiB", 1),
            f"{growth:+.1f} MiB",
            f"≤ +{GROWTH_TARGET_MIB:g} MiB",
            complete and growth <= GROWTH_TARGET_MIB,
            detail,
        ),
        Row(
            "soak",
            f"{seen.store}: RSS slope after warm-up, per {PER:,} commands (least squares); "
            f"{seen.failed} events not succeeded",
            Figure(seen.slope_kib / MIB, "MiB", 2),
            Figure(seen.idle_kib / MIB, "MiB", 1),
            f"{seen.commands / seen.elapsed_s:,.0f} cmd/s",
            "(context; baseline: idle RSS at start)",
            None,
        ),
    ]


async def soak(stage: Stage) -> list[Row]:
    rows: list[Row] = []
    if "sqlite" in STORES:
        await stage.sandbox.set_limits(LIFTED)
        rows += _rows(await _soak_on(stage, "SQLite", None))
        await stage.sandbox.reset()
    if "postgresql" in STORES:
        await stage.sandbox.set_limits(LIFTED)
        schema = f"bench_soak_{uuid.uuid4().hex[:10]}"
        try:
            rows += _rows(await _soak_on(stage, "PostgreSQL", f"{POSTGRES_URL}?schema={schema}"))
        finally:
            await asyncio.shield(_drop_schema(schema))
    return rows
