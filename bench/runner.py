"""One benchmark run: a fresh vhost, the sandbox as a subprocess, each scenario in turn, one
report. Everything started is stopped, and the vhost deleted, however the run ends.

Every scenario but ``memory`` shares one sandbox and one small data set (reset between
scenarios: data, limits, request log and counters); ``memory`` gets a sandbox of its own with a
data set of ``memory_keys`` customers. A scenario that cannot finish (a process died, events
did not come) is reported in the notes and the run goes on with the next.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aio_pika.exceptions import AMQPError

from bench.dataset import generate
from bench.driver import Driver, SandboxControl, driver
from bench.latency import light_key, light_load
from bench.machine import describe_machine
from bench.memory import memory
from bench.overhead import overhead
from bench.processes import ProcessFailed, sandbox_process, vhost
from bench.quota import fair_share, hot_key, many_keys
from bench.replicas import parking, replicas, replicas_steady
from bench.report import Report, Row
from bench.soak import soak
from bench.stage import Sizes, Stage
from bench.steering import api_mind, priority, quota_pg
from bench.storecalls import store_calls

__all__ = ["SCENARIOS", "Options", "run_bench"]

Scenario = Callable[[Stage], Awaitable[list[Row]]]

SCENARIOS: dict[str, Scenario] = {
    "hot-key": hot_key,
    "many-keys": many_keys,
    "fair-share": fair_share,
    "light-key": light_key,
    "overhead": overhead,
    "light-load": light_load,
    "parking": parking,
    "memory": memory,
    "replicas": replicas,
    "soak": soak,
    "replicas-steady": replicas_steady,
    "quota-pg": quota_pg,
    "api-mind": api_mind,
    "priority": priority,
    "store-calls": store_calls,
}
OWN_SANDBOX = frozenset({"memory"})
SHARED_LOG_SIZE = 100_000  # sandbox request log entries: enough for every shared scenario
MEMORY_LOG_SIZE = 1_000  # the memory scenario reads counters, not the log
# What a scenario may fail with without stopping the run; anything else is a bug and raises.
SCENARIO_FAILURES = (TimeoutError, ProcessFailed, aiohttp.ClientError, AMQPError, OSError)


@dataclass(frozen=True, slots=True)
class Options:
    scenarios: Sequence[str]
    sizes: Sizes
    amqp_url: str
    command: str
    workdir: Path | None = None  # kept afterwards (logs, data sets, stores); else a temp dir
    compare_with: Path | None = None  # another checkout's service beside ours (overhead)


@dataclass(frozen=True, slots=True)
class _Run:
    """What the stages of one run share."""

    options: Options
    workdir: Path
    driver: Driver
    amqp_url: str
    http: aiohttp.ClientSession


@asynccontextmanager
async def _stage(run: _Run, customers: int, *, name: str, log_size: int) -> AsyncIterator[Stage]:
    print(f"generating a data set of {customers:,} customers", file=sys.stderr, flush=True)
    data = generate(customers, run.workdir / f"{name}.json")
    log = run.workdir / f"sandbox-{name}.log"
    async with sandbox_process(data.path, log=log, log_size=log_size) as (proc, url):
        yield Stage(
            driver=run.driver,
            sandbox=SandboxControl(url, run.http),
            data=data,
            amqp_url=run.amqp_url,
            workdir=run.workdir,
            sizes=run.options.sizes,
            sandbox_pid=proc.pid,
            compare_with=run.options.compare_with,
        )


async def _scenario(stage: Stage, name: str, report: Report) -> None:
    print(f"== {name}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        await stage.sandbox.reset()
        report.extend(await SCENARIOS[name](stage))
    except SCENARIO_FAILURES as exc:
        report.failed.append(name)
        report.notes.append(f"{name} did not complete: {type(exc).__name__}: {exc}")
    print(f"   {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


async def run_bench(options: Options) -> Report:
    report = Report(options.command, await describe_machine(options.compare_with))
    started = time.monotonic()
    shared = [s for s in options.scenarios if s not in OWN_SANDBOX]
    alone = [s for s in options.scenarios if s in OWN_SANDBOX]
    name = f"bss-relay-bench-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as files:
        tmp = options.workdir or Path(
            files.enter_context(tempfile.TemporaryDirectory(prefix="bss-relay-bench-"))
        )
        tmp.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            amqp_url = await stack.enter_async_context(vhost(options.amqp_url, name))
            drv = await stack.enter_async_context(driver(amqp_url))
            http = await stack.enter_async_context(aiohttp.ClientSession())
            run = _Run(options, tmp, drv, amqp_url, http)
            if shared:
                size = options.sizes.small_customers
                async with _stage(run, size, name="shared", log_size=SHARED_LOG_SIZE) as stage:
                    for scenario in shared:
                        await _scenario(stage, scenario, report)
            for scenario in alone:
                size = options.sizes.memory_keys
                async with _stage(run, size, name=scenario, log_size=MEMORY_LOG_SIZE) as stage:
                    await _scenario(stage, scenario, report)
    report.notes.append(f"run time {time.monotonic() - started:.0f} s")
    return report
