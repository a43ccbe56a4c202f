"""What every scenario runs on: the driver, a running sandbox with its data set, and a way to
start the service (or the baseline loop) with the settings the scenario needs.

Each ``service()`` gets its own queue prefix and SQLite store; its queues are declared before
it starts (so commands published first wait for it) and deleted after it stops, so the next
scenario starts from an empty broker. ``Sizes`` holds every number a scenario uses: the full
sizes are those of issue 5, ``QUICK`` is a smoke run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bench.dataset import BenchCustomer, BenchData
from bench.driver import Driver, SandboxControl
from bench.processes import Child, baseline_process, service_process
from service.broker.topology import Topology

__all__ = ["QUICK", "Sizes", "Stage"]

READY_TIMEOUT_S = 60.0
SHUTDOWN_GRACE_S = 2.0  # scenarios stop the service with a backlog left: do not wait for it
LIFTED: dict[str, float | None] = {"*": 0}  # every operation unlimited (sandbox and service)


@dataclass(frozen=True, slots=True)
class Sizes:
    window_s: float = 20.0  # steady-state measuring window
    warmup_s: float = 3.0  # from the first request to the window
    hot_backlog: int = 400
    many_keys: int = 50
    many_per_key: int = 10
    light_backlog: int = 5_000
    idle_probes: int = 5
    light_probes: int = 10
    probe_spacing_s: float = 2.0
    fair_customers: int = 4
    fair_burst: int = 1_000
    fair_each: int = 150
    overhead_commands: int = 3_000
    overhead_rounds: int = 5
    overhead_customers: int = 20
    light_load_commands: int = 200
    light_load_rate: float = 5.0
    light_load_customers: int = 20
    memory_keys: int = 100_000
    replicas_burst: int = 1_000  # the bursting customer's commands (replicas)
    replicas_light: int = 5  # light customers beside it (few: a share is then many requests)
    replicas_each: int = 150  # commands per light customer
    parking_light: int = 10  # commands per light customer (parking: 5 of them)
    parking_hot: int = 150  # commands per hot customer (parking: 3 of them)
    parking_adapt_s: float = 3.0  # from the light ones' last request to the window
    soak_commands: int = 50_000  # per store (soak)
    soak_rate: float = 150.0  # commands/s, steady
    soak_customers: int = 50
    parking_drain: bool = True  # wait for every parking command (the deferred estimates)
    uneven_hot: int = 90  # replicas: commands per hot customer (3 of them)
    uneven_light: int = 10  # replicas: commands per light customer (5 of them)
    quota_pg_backlog: int = 250  # quota-pg: the one customer's commands
    mind_backlog: int = 600  # api-mind: the one customer's commands
    priority_backlog: int = 5_000  # priority: normal commands over many_keys customers
    priority_high: int = 100  # priority: high commands, one customer
    calls_each: int = 40  # store-calls: commands per customer (5 of them)

    @property
    def small_customers(self) -> int:
        """Customers in the data set every scenario but ``memory`` shares."""
        return max(
            1 + self.many_keys,
            self.fair_customers,
            self.overhead_customers,
            self.light_load_customers,
            self.soak_customers,
            2,
        )

    def with_keys(self, keys: int | None) -> Sizes:
        return self if keys is None else replace(self, memory_keys=keys)


QUICK = Sizes(
    window_s=4.0,
    warmup_s=1.5,
    hot_backlog=90,
    many_per_key=3,
    light_backlog=500,
    idle_probes=2,
    light_probes=3,
    probe_spacing_s=1.0,
    fair_burst=120,
    fair_each=25,
    overhead_commands=300,
    overhead_rounds=1,
    light_load_commands=30,
    memory_keys=2_000,
    replicas_burst=150,
    replicas_each=30,
    parking_light=4,
    parking_hot=40,
    parking_adapt_s=2.0,
    soak_commands=2_000,
    soak_rate=100.0,
    soak_customers=20,
    parking_drain=False,
    uneven_hot=30,
    uneven_light=4,
    quota_pg_backlog=60,
    mind_backlog=450,
    priority_backlog=500,
    priority_high=10,
    calls_each=8,
)


@dataclass
class Stage:
    driver: Driver
    sandbox: SandboxControl
    data: BenchData
    amqp_url: str
    workdir: Path
    sizes: Sizes
    sandbox_pid: int
    compare_with: Path | None = None  # another checkout whose service runs beside ours

    @property
    def customers(self) -> tuple[BenchCustomer, ...]:
        return self.data.customers

    def say(self, text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    def settings(
        self,
        prefix: str,
        limits: Mapping[str, float | None] | None,
        store_url: str | None = None,
    ) -> dict[str, str]:
        env = {
            "AMQP_URL": self.amqp_url,
            "BSS_ENDPOINT": self.sandbox.url,
            "IAM_ENDPOINT": self.sandbox.url,
            **self.data.partner_env(),
            "STORE_URL": store_url or f"sqlite:///{self.workdir / prefix}.db",
            "RELAY_QUEUE_PREFIX": prefix,
            "RELAY_LOG_LEVEL": "WARNING",
            "RELAY_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
        }
        if limits is not None:
            env["RELAY_RATE_LIMITS"] = json.dumps(limits)
        return env

    async def _ready(self, proc: Child, queue: str) -> None:
        """Wait until ``proc`` consumes from ``queue`` (it has connected and declared)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while await self.driver.consumers(queue) < 1:
            if not proc.alive:
                raise proc.failed("exited at start")
            if loop.time() > deadline:
                raise proc.failed(f"did not consume within {READY_TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)

    @asynccontextmanager
    async def service(
        self,
        label: str,
        *,
        limits: Mapping[str, float | None] | None = None,
        preload: Sequence[tuple[str, bytes]] = (),
        store_url: str | None = None,
        other: Path | None = None,
    ) -> AsyncIterator[Child]:
        """``bss-relay serve``; ``preload`` is published before it starts. With ``other``, the
        service of that checkout (``--compare-with``), same settings and queues."""
        prefix = f"bench-{label}-{uuid.uuid4().hex[:6]}"
        await self.driver.declare_service_queues(prefix)
        try:
            await self.driver.publish_many(preload)
            log = self.workdir / f"{prefix}.log"
            env = self.settings(prefix, limits, store_url)
            async with service_process(env, log=log, other=other) as proc:
                await self._ready(proc, Topology(prefix).work_queue)
                yield proc
        finally:
            await asyncio.shield(self.driver.delete_service_queues(prefix))

    @staticmethod
    def baseline_queue(label: str) -> str:
        return f"bench-{label}-baseline-{uuid.uuid4().hex[:6]}"

    @asynccontextmanager
    async def baseline(
        self,
        queue: str,
        *,
        limits: Mapping[str, float | None] | None = None,
        preload: Sequence[tuple[str, bytes]] = (),
    ) -> AsyncIterator[Child]:
        """The baseline loop on ``queue``, with the service's settings."""
        await self.driver.declare_queue(queue)
        try:
            await self.driver.publish_many(preload, queue=queue)
            log = self.workdir / f"{queue}.log"
            env = self.settings(queue, limits)
            async with baseline_process(env, queue=queue, log=log) as proc:
                await self._ready(proc, queue)
                yield proc
        finally:
            await asyncio.shield(self.driver.delete_queue(queue))
