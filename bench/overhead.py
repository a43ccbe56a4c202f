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

With ``--compare-with CHECKOUT`` a fourth variant runs in every round: that checkout's own
service (``CHECKOUT/.venv/bin/bss-relay serve``, its own code and virtualenv), with the same
commands, settings, broker and sandbox, right before or after ours (alternating). Its rate
over the baseline's and its CPU per command stand beside ours, so "before and after" come from
one run on one machine state rather than from two runs minutes apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.dataset import auto_renew_command
from bench.processes import Child, cpu_seconds
from bench.report import Figure, Row, ratio
from bench.stage import LIFTED, Stage

__all__ = ["overhead"]

OVERHEAD_TARGET = 0.8  # issue 17 (0.7 in issue 5)
# Diagnostic third variant: the same service without a durable store, to show its share.
IN_MEMORY_STORE = "sqlite://:memory:"
RUN_TIMEOUT_S = 600.0
# A profile of each timed run (a development aid: py-spy is not a dependency): the path of a
# py-spy executable; each run's raw (collapsed) stacks land in the workdir beside its log.
PYSPY_ENV = "BSS_RELAY_BENCH_PYSPY"


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
    async with start(commands) as proc, _profiled(stage, proc, label):
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


@contextlib.asynccontextmanager
async def _profiled(stage: Stage, proc: Child, label: str) -> AsyncIterator[None]:
    """With ``BSS_RELAY_BENCH_PYSPY`` set: ``py-spy record`` on ``proc`` (GIL holders only,
    100 Hz) while the body runs, its stacks written to ``<workdir>/<label>-<pid>.pyspy``."""
    pyspy = os.environ.get(PYSPY_ENV)
    if not pyspy:
        yield
        return
    out = stage.workdir / f"{label}-{proc.pid}.pyspy"
    argv = [pyspy, "record", "--gil", "--format", "raw", "--pid", str(proc.pid), "-o", str(out)]
    spy = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        await spy.wait()


async def _ours(stage: Stage, store_url: str | None = None, other: Path | None = None) -> Run:
    def start(commands: list[tuple[str, bytes]]) -> AbstractAsyncContextManager[Child]:
        return stage.service(
            "overhead", limits=LIFTED, preload=commands, store_url=store_url, other=other
        )

    label = "other" if other else "memory" if store_url else "ours"
    return await _timed(stage, label, start)


async def _baseline(stage: Stage) -> Run:
    def start(commands: list[tuple[str, bytes]]) -> AbstractAsyncContextManager[Child]:
        queue = stage.baseline_queue("overhead")
        return stage.baseline(queue, limits=LIFTED, preload=commands)

    return await _timed(stage, "base", start)


@dataclass(frozen=True, slots=True)
class _Round:
    ours: Run
    base: Run
    memory: Run
    other: Run | None  # --compare-with's service


async def _rounds(stage: Stage) -> AsyncIterator[_Round]:
    """Each round runs every variant once; odd rounds in the reverse order of even ones, so
    ours and the compared service take turns at going first."""
    other = stage.compare_with
    for n in range(stage.sizes.overhead_rounds):
        stage.say(
            f"overhead: round {n + 1} of {stage.sizes.overhead_rounds}, "
            f"{stage.sizes.overhead_commands:,} commands each"
        )
        order = ["base", "ours", "other", "memory"] if other else ["base", "ours", "memory"]
        runs: dict[str, Run] = {}
        for variant in order if n % 2 == 0 else reversed(order):
            if variant == "base":
                runs[variant] = await _baseline(stage)
            elif variant == "memory":
                runs[variant] = await _ours(stage, IN_MEMORY_STORE)
            else:
                runs[variant] = await _ours(stage, other=other if variant == "other" else None)
        yield _Round(runs["ours"], runs["base"], runs["memory"], runs.get("other"))


def _median(runs: list[Run]) -> tuple[float, float]:
    """Median rate and median CPU per command over the rounds."""
    return statistics.median(r.rate for r in runs), statistics.median(r.cpu_ms for r in runs)


async def overhead(stage: Stage) -> list[Row]:
    await stage.sandbox.set_limits(LIFTED)
    rounds = [r async for r in _rounds(stage)]
    ours, base, memory = (
        [r.ours for r in rounds],
        [r.base for r in rounds],
        [r.memory for r in rounds],
    )
    (rate_o, cpu_o), (rate_b, cpu_b), (rate_m, cpu_m) = map(_median, (ours, base, memory))
    detail = {
        "rounds_ours": [asdict(r) for r in ours],
        "rounds_baseline": [asdict(r) for r in base],
        "rounds_in_memory_store": [asdict(r) for r in memory],
    }
    size = f"{stage.sizes.overhead_commands:,} commands, median of {stage.sizes.overhead_rounds}"
    rows = [
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
    others = [r.other for r in rounds if r.other is not None]
    if stage.compare_with is not None and others:
        rows += _compared(stage.compare_with, others, (rate_o, cpu_o), (rate_b, cpu_b), ours)
    return rows


def _compared(
    checkout: Path,
    others: list[Run],
    ours: tuple[float, float],
    base: tuple[float, float],
    ours_runs: list[Run],
) -> list[Row]:
    """The rows of ``--compare-with``: its overhead ratio, and our CPU per command beside its."""
    rate_x, cpu_x = _median(others)
    (rate_o, cpu_o), (rate_b, _) = ours, base
    name = checkout.name
    paired = statistics.median(o.cpu_ms / x.cpu_ms for o, x in zip(ours_runs, others, strict=True))
    return [
        Row(
            "overhead",
            f"commands/s of {name} (--compare-with), same rounds, vs the baseline loop",
            Figure(rate_x, "/s", 0),
            Figure(rate_b, "/s", 0),
            ratio(rate_x, rate_b),
            f"(context: ours {ratio(rate_o, rate_b)})",
            None,
            {"rounds_compared": [asdict(r) for r in others]},
        ),
        Row(
            "overhead",
            f"CPU time per command, ours vs {name} (--compare-with)",
            Figure(cpu_o, "ms", 3),
            Figure(cpu_x, "ms", 3),
            ratio(cpu_o, cpu_x),
            "≤ 1",
            cpu_o <= cpu_x,
            {"median_of_round_ratios": paired},
        ),
    ]
