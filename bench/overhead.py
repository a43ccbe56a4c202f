"""``overhead``: end-to-end commands per second with every limit lifted and no API latency,
the service against the baseline loop (``baseline.py``) in the same run.

Each run preloads ``overhead_commands`` commands on the broker, then starts the process, and
times the events from the first to the last: the rate is (N - 1) / that span, so process start
is not counted. A third variant, the service with an in-memory store, is a diagnostic: the
gap between it and the service shows what the durable command store costs. Rounds alternate
which goes first, and the median of the rounds is
reported, because the machine is shared and noisy. CPU seconds per command of the process
(from ``/proc``, between "consuming" and the last event) are reported beside it; they are less
sensitive to neighbours than wall time. The sandbox's CPU per command is in the detail: when it
is near a full core, the sandbox bounds both rates and the ratio understates the difference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass

from bench.dataset import auto_renew_command
from bench.processes import Child, cpu_seconds
from bench.report import Figure, Row, ratio
from bench.stage import LIFTED, Stage

__all__ = ["overhead"]

OVERHEAD_TARGET = 0.7
# Diagnostic third variant: the same service without a durable store, to show its share.
IN_MEMORY_STORE = "sqlite://:memory:"
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Run:
    rate: float  # commands/s, first to last event
    cpu_ms: float  # process CPU per command
    sandbox_cpu_ms: float
    failed: int


def _commands(stage: Stage, label: str) -> list[tuple[str, bytes]]:
    customers = stage.customers[: stage.sizes.overhead_customers]
    stamp = time.monotonic_ns()
    out = []
    for n in range(stage.sizes.overhead_commands):
        cid = f"{label}-{stamp}-{n}"
        customer = customers[n % len(customers)]
        out.append((cid, auto_renew_command(cid, customer, n // len(customers))))
    return out


async def _timed(
    stage: Stage,
    label: str,
    start: Callable[[list[tuple[str, bytes]]], AbstractAsyncContextManager[Child]],
) -> Run:
    commands = _commands(stage, label)
    batch = stage.driver.expect(cid for cid, _ in commands)
    async with start(commands) as proc:
        cpu0, sandbox0 = cpu_seconds(proc.pid), cpu_seconds(stage.sandbox_pid)
        if not await batch.wait(RUN_TIMEOUT_S):
            raise TimeoutError(f"{label}: {len(batch.arrived)} of {len(commands)} events")
        cpu1, sandbox1 = cpu_seconds(proc.pid), cpu_seconds(stage.sandbox_pid)
    stage.driver.forget(batch)
    n = len(commands)
    return Run(
        rate=(n - 1) / (batch.last - batch.first),
        cpu_ms=(cpu1 - cpu0) / n * 1000,
        sandbox_cpu_ms=(sandbox1 - sandbox0) / n * 1000,
        failed=batch.failed(),
    )


async def _ours(stage: Stage, store_url: str | None = None) -> Run:
    def start(commands: list[tuple[str, bytes]]) -> AbstractAsyncContextManager[Child]:
        return stage.service("overhead", limits=LIFTED, preload=commands, store_url=store_url)

    return await _timed(stage, "ours", start)


async def _baseline(stage: Stage) -> Run:
    def start(commands: list[tuple[str, bytes]]) -> AbstractAsyncContextManager[Child]:
        queue = stage.baseline_queue("overhead")
        return stage.baseline(queue, limits=LIFTED, preload=commands)

    return await _timed(stage, "base", start)


async def _rounds(stage: Stage) -> AsyncIterator[tuple[Run, Run, Run]]:
    for n in range(stage.sizes.overhead_rounds):
        stage.say(
            f"overhead: round {n + 1} of {stage.sizes.overhead_rounds}, "
            f"{stage.sizes.overhead_commands:,} commands each"
        )
        if n % 2 == 0:
            base = await _baseline(stage)
            ours = await _ours(stage)
            memory = await _ours(stage, IN_MEMORY_STORE)
        else:
            memory = await _ours(stage, IN_MEMORY_STORE)
            ours = await _ours(stage)
            base = await _baseline(stage)
        yield ours, base, memory


def _median(runs: list[Run]) -> tuple[float, float]:
    """Median rate and median CPU per command over the rounds."""
    return statistics.median(r.rate for r in runs), statistics.median(r.cpu_ms for r in runs)


async def overhead(stage: Stage) -> list[Row]:
    await stage.sandbox.set_limits(LIFTED)
    runs = [triple async for triple in _rounds(stage)]
    ours, base, memory = ([r[k] for r in runs] for k in range(3))
    (rate_o, cpu_o), (rate_b, cpu_b), (rate_m, cpu_m) = map(_median, (ours, base, memory))
    detail = {
        "rounds_ours": [asdict(r) for r in ours],
        "rounds_baseline": [asdict(r) for r in base],
        "rounds_in_memory_store": [asdict(r) for r in memory],
    }
    size = f"{stage.sizes.overhead_commands:,} commands, median of {stage.sizes.overhead_rounds}"
    return [
        Row(
            "overhead",
            f"commands/s, limits lifted, no API latency ({size})",
            Figure(rate_o, "/s", 0),
            Figure(rate_b, "/s", 0),
            ratio(rate_o, rate_b),
            f"≥ {OVERHEAD_TARGET}",
            rate_o / rate_b >= OVERHEAD_TARGET,
            detail,
        ),
        Row(
            "overhead",
            "CPU time per command of the relaying process",
            Figure(cpu_o, "ms", 2),
            Figure(cpu_b, "ms", 2),
            ratio(cpu_o, cpu_b),
            "(context)",
        ),
        Row(
            "overhead",
            "diagnostic: commands/s with STORE_URL=sqlite://:memory: (no durability)",
            Figure(rate_m, "/s", 0),
            Figure(rate_b, "/s", 0),
            ratio(rate_m, rate_b),
            "(context: the durable store's share)",
            None,
            {"cpu_ms": cpu_m},
        ),
    ]
