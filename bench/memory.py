"""``memory``: the service's peak RSS after one command each for ``memory_keys`` distinct
customers (100,000 by default), against its peak after the first 10 % of them, same process.

Bounded memory means the second half of the run adds nothing per key: the per-customer state
(credential cache, limiter buckets, scheduler queues and tickets) must stay capped or be swept.
Every customer needs its own IAM credentials, then one ``auto_renewal_resources`` call. The
sandbox's limits are lifted; the service's are set far above what it can reach (so one bucket
per key is still created and swept, unlike with limits lifted, where the limiter keeps none).
RSS is read from ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) every ``SAMPLE_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.dataset import API, auto_renew_command
from bench.driver import Batch
from bench.processes import memory_kib
from bench.report import Figure, Row, ratio
from bench.stage import LIFTED, Stage

__all__ = ["memory"]

FAR_ABOVE: dict[str, float | None] = {"*": 100_000}  # requests/s: buckets exist, never bind
SAMPLE_EVERY_S = 0.25
IDLE_SETTLE_S = 1.0
EARLY_FRACTION = 0.10
BOUNDED_TARGET = 1.2  # peak at the end ≤ 1.2 x peak after the first 10 % of the keys
MIN_RATE = 20.0  # commands/s below which the run is given up on (sets the timeout)
MIB = 1024.0


@dataclass(frozen=True, slots=True)
class Sample:
    done: int
    rss_kib: int
    peak_kib: int


async def _sample(pid: int, batch: Batch, into: list[Sample]) -> None:
    while True:
        now = memory_kib(pid)
        into.append(Sample(len(batch.arrived), now.get("VmRSS", 0), now.get("VmHWM", 0)))
        await asyncio.sleep(SAMPLE_EVERY_S)


@dataclass(frozen=True, slots=True)
class Observed:
    idle_kib: int  # RSS of the started service before any command
    peak_kib: int  # VmHWM at the end
    samples: list[Sample]
    elapsed_s: float
    failed: int


async def _observe(stage: Stage, commands: list[tuple[str, bytes]]) -> Observed:
    """Start the service, note its idle RSS, feed it ``commands``, sample RSS until done."""
    batch = stage.driver.expect(cid for cid, _ in commands)
    samples: list[Sample] = []
    async with stage.service("memory", limits=FAR_ABOVE) as proc:
        await asyncio.sleep(IDLE_SETTLE_S)
        idle = memory_kib(proc.pid).get("VmRSS", 0)
        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            sampler = tasks.create_task(_sample(proc.pid, batch, samples))
            try:
                await stage.driver.publish_many(commands)
                finished = await batch.wait(len(commands) / MIN_RATE + 60)
            finally:
                sampler.cancel()
        peak = memory_kib(proc.pid).get("VmHWM", 0)
    elapsed = time.monotonic() - started
    stage.driver.forget(batch)
    if not finished:
        done = f"{len(batch.arrived):,} of {len(commands):,}"
        raise TimeoutError(f"memory: {done} events in {elapsed:.0f} s")
    return Observed(idle, peak, samples, elapsed, batch.failed())


async def memory(stage: Stage) -> list[Row]:
    keys = min(stage.sizes.memory_keys, len(stage.customers))
    await stage.sandbox.set_limits(LIFTED)
    commands = [
        (f"mem-{n}", auto_renew_command(f"mem-{n}", c))
        for n, c in enumerate(stage.customers[:keys])
    ]
    stage.say(f"memory: one command each for {keys:,} customers")
    seen = await _observe(stage, commands)
    early_mark = keys * EARLY_FRACTION
    early = next((s.peak_kib for s in seen.samples if s.done >= early_mark), seen.peak_kib)
    every = max(1, len(seen.samples) // 40)
    detail = {
        "keys": keys,
        "idle_rss_kib": seen.idle_kib,
        "commands_per_s": keys / seen.elapsed_s,
        "failed_events": seen.failed,
        "throttled": await stage.sandbox.throttled(API),
        "samples_done_rss_peak_kib": [
            (s.done, s.rss_kib, s.peak_kib) for s in seen.samples[::every]
        ],
    }
    peak = seen.peak_kib
    return [
        Row(
            "memory",
            f"peak RSS of the service after {keys:,} distinct keys vs after the first "
            f"{early_mark:,.0f} (same run)",
            Figure(peak / MIB, "MiB", 1),
            Figure(early / MIB, "MiB", 1),
            ratio(peak, early),
            f"≤ {BOUNDED_TARGET} (bounded)",
            peak / early <= BOUNDED_TARGET,
            detail,
        ),
        Row(
            "memory",
            f"peak RSS after {keys:,} keys vs the idle service at start",
            Figure(peak / MIB, "MiB", 1),
            Figure(seen.idle_kib / MIB, "MiB", 1),
            ratio(peak, seen.idle_kib),
            "(context)",
            None,
        ),
    ]
