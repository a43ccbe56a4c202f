"""Publish → event latency, measured by the benchmark (one monotonic clock):

* ``light-key`` — a customer's single commands while another customer's 5,000-command backlog
  drains through the same (API, egress) bucket, against the same commands on the idle service
  moments before (baseline). Probes are published on a fixed schedule, not one after another's
  event, so a slow probe does not space the others out.
* ``light-load`` — a steady trickle of commands spread over many customers, limits in force
  but not reached, through the service and through the baseline loop (``baseline.py``); the
  difference is the latency the service adds per command.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

from bench.dataset import BenchCustomer, auto_renew_command
from bench.measures import percentile
from bench.report import Figure, Row, difference_ms
from bench.stage import Stage

__all__ = ["light_key", "light_load"]

ADDED_TARGET_S = 1.0  # issue 5: at most ~1 s beyond the command's own API time
WARM_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 180.0


async def _paced(
    stage: Stage,
    commands: Sequence[tuple[str, bytes]],
    *,
    every_s: float,
    timeout_s: float,
    queue: str | None = None,
) -> list[float]:
    """Publish ``commands`` one per ``every_s``; the latency of each (inf if none came)."""
    batch = stage.driver.expect(cid for cid, _ in commands)
    published: dict[str, float] = {}
    start = time.monotonic()
    for n, (cid, body) in enumerate(commands):
        await asyncio.sleep(max(0.0, start + n * every_s - time.monotonic()))
        published[cid] = await stage.driver.publish(cid, body, queue=queue)
    await batch.wait(timeout_s)
    stage.driver.forget(batch)
    return [batch.arrived.get(cid, math.inf) - published[cid] for cid, _ in commands]


async def _warm(stage: Stage, customers: Sequence[BenchCustomer], queue: str | None) -> None:
    """One command per customer first: the credential fetch is not what is measured."""
    commands = [(f"warm-{time.monotonic_ns()}-{n}", c) for n, c in enumerate(customers)]
    batch = stage.driver.expect(cid for cid, _ in commands)
    for cid, customer in commands:
        await stage.driver.publish(cid, auto_renew_command(cid, customer), queue=queue)
    if not await batch.wait(WARM_TIMEOUT_S):
        raise TimeoutError("warm-up commands got no event")
    stage.driver.forget(batch)


def _probes(label: str, customer: BenchCustomer, count: int) -> list[tuple[str, bytes]]:
    ids = [f"{label}-{time.monotonic_ns()}-{n}" for n in range(count)]
    return [(cid, auto_renew_command(cid, customer, n)) for n, cid in enumerate(ids)]


async def _probe(stage: Stage, light: BenchCustomer, label: str, count: int) -> list[float]:
    probes = _probes(label, light, count)
    every = stage.sizes.probe_spacing_s
    return await _paced(stage, probes, every_s=every, timeout_s=PROBE_TIMEOUT_S)


async def light_key(stage: Stage) -> list[Row]:
    sizes = stage.sizes
    hot, light = stage.customers[0], stage.customers[1]
    backlog = [
        (f"backlog-{n}", auto_renew_command(f"backlog-{n}", hot, n))
        for n in range(sizes.light_backlog)
    ]
    async with stage.service("light-key"):
        await _warm(stage, [hot, light], None)
        stage.say(f"light-key: {sizes.idle_probes} probes on the idle service")
        idle = await _probe(stage, light, "idle", sizes.idle_probes)
        stage.say(f"light-key: {len(backlog):,} commands for another customer, then probes")
        hot_batch = stage.driver.expect(cid for cid, _ in backlog)
        await stage.driver.publish_many(backlog)
        await asyncio.wait_for(hot_batch.started.wait(), PROBE_TIMEOUT_S)
        await asyncio.sleep(sizes.probe_spacing_s)
        busy = await _probe(stage, light, "busy", sizes.light_probes)
        drained = len(hot_batch.arrived)
        stage.driver.forget(hot_batch)
    detail = {
        "idle_s": idle,
        "busy_s": busy,
        "backlog_events_by_then": drained,
        "probe_spacing_s": sizes.probe_spacing_s,
    }
    return _light_key_rows(busy, idle, f"{len(backlog):,}-command backlog", detail)


def _light_key_rows(
    busy: list[float], idle: list[float], backlog: str, detail: dict[str, object]
) -> list[Row]:
    rows = []
    for name, pick in (("median", 50.0), ("worst", 100.0)):
        ours, base = percentile(busy, pick), percentile(idle, pick)
        rows.append(
            Row(
                "light key",
                f"{name} latency of a light key's command, {backlog} on another key "
                f"({len(busy)} probes)",
                Figure(ours * 1000, "ms"),
                Figure(base * 1000, "ms"),
                difference_ms(ours, base),
                f"≤ +{ADDED_TARGET_S * 1000:,.0f} ms",
                ours - base <= ADDED_TARGET_S,
                detail if name == "median" else {},
            )
        )
    return rows


def _trickle(label: str, customers: Sequence[BenchCustomer], count: int) -> list[tuple[str, bytes]]:
    ids = [f"{label}-{time.monotonic_ns()}-{n}" for n in range(count)]
    return [
        (cid, auto_renew_command(cid, customers[n % len(customers)], n // len(customers)))
        for n, cid in enumerate(ids)
    ]


async def _trickle_through(stage: Stage, label: str, queue: str | None) -> list[float]:
    """Warm up, then publish the light load at its rate (to ``queue``, else the service)."""
    sizes = stage.sizes
    customers = stage.customers[: sizes.light_load_customers]
    every = 1 / sizes.light_load_rate
    await _warm(stage, customers, queue)
    return await _paced(
        stage,
        _trickle(label, customers, sizes.light_load_commands),
        every_s=every,
        timeout_s=sizes.light_load_commands * every + PROBE_TIMEOUT_S,
        queue=queue,
    )


async def light_load(stage: Stage) -> list[Row]:
    sizes = stage.sizes
    stage.say(f"light-load: {sizes.light_load_commands} commands at {sizes.light_load_rate:g}/s")
    queue = stage.baseline_queue("light-load")
    async with stage.baseline(queue):
        base = await _trickle_through(stage, "base", queue)
    async with stage.service("light-load"):
        ours = await _trickle_through(stage, "ours", None)
    load = f"{sizes.light_load_rate:g} commands/s over {sizes.light_load_customers} customers"
    rows = []
    for name, q in (("p50", 50.0), ("p99", 99.0)):
        o, b = percentile(ours, q), percentile(base, q)
        rows.append(
            Row(
                "light load",
                f"{name} publish → event latency, {load}",
                Figure(o * 1000, "ms", 1),
                Figure(b * 1000, "ms", 1),
                difference_ms(o, b, digits=1),
                "added latency (no target)",
                None,
                {"ours_s": ours, "baseline_s": base} if name == "p50" else {},
            )
        )
    return rows
