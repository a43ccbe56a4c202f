"""End-to-end fixtures: a fresh RabbitMQ vhost per session (per xdist worker), the sandbox on
loopback, and the real service (``service.runtime.run``, the code ``bss-relay serve`` runs)
with its own queues and store per test. Every fixture owns its teardown.

A test marked ``own_vhost`` gets a vhost to itself as ``amqp_url``: it closes every connection
of its vhost (``rabbitmqctl close_all_connections -p``), which must reach neither the
connections other tests of its worker keep open (replay's session connection) nor another
worker's."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from bench.processes import sandbox_process
from service.broker.topology import (
    COMMANDS_EXCHANGE,
    DELAY_LEVELS_MS,
    DLQ,
    EVENTS_EXCHANGE,
    Topology,
)
from service.runtime import RunningService, start
from service.sandbox.gateway import IAM_OPERATION
from service.sandbox.journal import DEFAULT_LOG_SIZE
from service.settings import Settings
from tests.conftest import VhostFactory, unique_name
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

pytestmark = pytest.mark.e2e


@pytest.fixture
async def amqp_url(request: pytest.FixtureRequest, amqp_url: str, vhosts: VhostFactory) -> str:
    """The worker's session vhost, or one of the test's own for a test marked ``own_vhost``."""
    if request.node.get_closest_marker("own_vhost") is None:
        return amqp_url
    return await vhosts("relay-own")


@dataclass(frozen=True)
class SandboxProcess:
    url: str


@pytest.fixture(scope="session")
async def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxProcess]:
    """``bss-relay sandbox`` on its demo data, in a process of its own at a raised priority
    (as the bench runs it): it stands in for a remote gateway, whose arrival instants -- what
    its throttle counts by -- do not wait for this process's event loop, busy with the
    service and the test (in process, late stamps gave the strict windows lone 429s)."""
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    async with sandbox_process(None, log=log, log_size=DEFAULT_LOG_SIZE) as (_, url):
        yield SandboxProcess(url)


@dataclass
class Sandbox:
    url: str
    http: aiohttp.ClientSession

    async def get(self, route: str) -> Any:
        async with self.http.get(f"{self.url}/_sandbox/{route}") as resp:
            resp.raise_for_status()
            return await resp.json()

    async def put(self, route: str, body: Any) -> None:
        async with self.http.put(f"{self.url}/_sandbox/{route}", json=body) as resp:
            resp.raise_for_status()

    async def reset(self) -> None:
        async with self.http.post(f"{self.url}/_sandbox/reset") as resp:
            resp.raise_for_status()

    async def state(self) -> dict[str, Any]:
        state: dict[str, Any] = await self.get("state")
        return state

    async def requests(self, api: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.get("requests")
        return [r for r in rows if api is None or r["api"] == api]

    async def bss_requests(self) -> list[dict[str, Any]]:
        """Every BSS API request received (IAM's credential requests left out): what an
        event's ``attempts`` counts."""
        return [r for r in await self.requests() if r["api"] != IAM_OPERATION]


@pytest.fixture
async def bss(sandbox: SandboxProcess) -> AsyncIterator[Sandbox]:
    async with aiohttp.ClientSession() as http:
        api = Sandbox(sandbox.url, http)
        await api.reset()
        yield api
        await api.reset()


@dataclass
class EventLog:
    """Collects every event the service publishes, by command id."""

    by_command: dict[str | None, list[dict[str, Any]]] = field(default_factory=dict)
    routing_keys: dict[str, str] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)  # event_id -> time.monotonic()
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process():
            event = json.loads(message.body)
            self.by_command.setdefault(event["command_id"], []).append(event)
            self.routing_keys[event["event_id"]] = message.routing_key or ""
            self.received_at[event["event_id"]] = time.monotonic()
            self.changed.set()

    async def wait_for(
        self, command_id: str | None, *, count: int = 1, within: float = 30.0
    ) -> list[dict[str, Any]]:
        async def enough() -> list[dict[str, Any]]:
            while len(self.by_command.get(command_id, [])) < count:
                self.changed.clear()
                await self.changed.wait()
            return self.by_command[command_id]

        return await asyncio.wait_for(enough(), within)

    def terminal(self, command_id: str) -> list[dict[str, Any]]:
        """The command's terminal events (not re-announcements, not ``deferred`` progress)."""
        return [
            e
            for e in self.by_command.get(command_id, [])
            if not e["duplicate"] and e["outcome"] != "deferred"
        ]


@dataclass
class Relay:
    """A running service plus the broker handles a test needs."""

    settings: Settings
    channel: AbstractChannel
    events: EventLog
    topology: Topology
    service: RunningService
    stop: Callable[[], Awaitable[None]]

    async def publish(
        self,
        command: dict[str, Any] | bytes,
        *,
        routing_key: str | None = None,
        **properties: Any,
    ) -> None:
        body = command if isinstance(command, bytes) else json.dumps(command).encode()
        if routing_key is None:
            kind = command.get("type", "x") if isinstance(command, dict) else "x"
            routing_key = f"command.{kind}"
        exchange = await self.channel.get_exchange(COMMANDS_EXCHANGE)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=command.get("command_id") if isinstance(command, dict) else None,
            **properties,
        )
        await exchange.publish(message, routing_key=routing_key)

    async def dead_letters(self) -> list[AbstractIncomingMessage]:
        """Read (and requeue) what is in the DLQ now."""
        queue = await self.channel.declare_queue(DLQ, durable=True)
        seen: list[AbstractIncomingMessage] = []
        while (message := await queue.get(fail=False, no_ack=False)) is not None:
            seen.append(message)
        for message in seen:
            await message.nack(requeue=True)
        return seen


RelayFactory = Callable[..., Awaitable[Relay]]


def partner_env(state: dict[str, Any]) -> dict[str, Any]:
    partner = state["partners"][0]
    return {
        "bss_partner_id": partner["partner_id"],
        "bss_access_key": partner["access_key"],
        "bss_secret_key": partner["secret_key"],
        "bss_agency_name": partner["agency_name"],
    }


BOTH_STORES = pytest.mark.parametrize("e2e_store", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def e2e_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The service's STORE_URL: SQLite unless a module asks for both with ``BOTH_STORES``."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    schema = postgres_schema()
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        await drop_schema(schema)


@pytest.fixture
async def start_relay(amqp_url: str, bss: Sandbox, e2e_store: str) -> AsyncIterator[RelayFactory]:
    """Start the service (as many times as a test needs); everything is stopped and its
    queues deleted at teardown."""
    connection: AbstractRobustConnection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    prefix = unique_name("relay", length=8)
    events = EventLog()
    # A named queue that outlives the test's own connection: events the service publishes
    # while that connection is kicked (test_settlement, test_crash) wait there, not lost with
    # an exclusive queue. Deleted at teardown.
    events_queue = await channel.declare_queue(f"{prefix}.test-events", durable=False)
    events_exchange = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await events_queue.bind(events_exchange, routing_key="#")
    await events_queue.consume(events.on_message)
    state = await bss.state()
    running: list[AsyncExitStack] = []

    async def factory(**overrides: Any) -> Relay:
        values: dict[str, Any] = {
            "amqp_url": amqp_url,
            "bss_endpoint": bss.url,
            "iam_endpoint": bss.url,
            "store_url": e2e_store,
            "relay_queue_prefix": prefix,
            "relay_retry_base_s": 0.25,
            "relay_retry_max_s": 1.0,
            "relay_shutdown_grace_s": 5.0,
            # The jitter allowance between a send and the gateway's clock, as an operator sets
            # it for a loaded host: here the service shares pytest's event loop, beside another
            # timing lane and the other workers on 2 cores (2 ms, the default for a host of
            # its own, let lone 429s through: 11 requests in a 1-s window of arrivals).
            "relay_rate_guard_ms": 10.0,
            **partner_env(state),
        }
        values.update(overrides)
        settings = Settings(**values)
        stack = AsyncExitStack()
        service = await stack.enter_async_context(start(settings))
        running.append(stack)

        async def stop_this() -> None:
            if stack in running:
                running.remove(stack)
                await asyncio.wait_for(stack.aclose(), 30)

        return Relay(settings, channel, events, Topology(prefix), service, stop_this)

    yield factory
    for stack in reversed(running):
        await asyncio.wait_for(stack.aclose(), 30)
    topology = Topology(prefix)
    for name in [topology.work_queue, *(topology.delay_queue(ms) for ms in DELAY_LEVELS_MS)]:
        await channel.queue_delete(name)
    await channel.queue_delete(DLQ)
    await channel.queue_delete(f"{prefix}.test-events")
    await connection.close()


def new_id(prefix: str = "cmd") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], *, within: float = 30.0, step: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds."""
    for _ in range(int(within / step)):
        result = predicate()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {within}s")


# -- the service as `bss-relay serve` subprocesses ---------------------------------------


class ServeProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        handle = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            env=self.env,
            stdout=handle,
            stderr=handle,
        )
        handle.close()
        await self._wait_started()

    async def _wait_started(self) -> None:
        # up to 30 s: on a fresh clone the first `serve` of a run compiles the bytecode of
        # everything it imports (make installs without it), beside the other workers
        for _ in range(600):
            if b"service_started" in self.log.read_bytes():
                return
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(self.log.read_text())
            await asyncio.sleep(0.05)
        raise AssertionError("service did not start: " + self.log.read_text())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, within: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)


Spawn = Callable[..., ServeProcess]


@pytest.fixture
async def serve(
    amqp_url: str, bss: Sandbox, tmp_path: Path, e2e_store: str
) -> AsyncIterator[tuple[Spawn, aio_pika.abc.AbstractChannel, EventLog, str]]:
    prefix = unique_name("relay", length=8)
    state = await bss.state()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BSS_", "RELAY_"))},
        "AMQP_URL": amqp_url,
        "BSS_ENDPOINT": bss.url,
        "IAM_ENDPOINT": bss.url,
        "STORE_URL": e2e_store,
        "RELAY_QUEUE_PREFIX": prefix,
        "RELAY_LEASE_S": "2",
        "RELAY_RETRY_BASE_S": "0.25",
        "RELAY_RETRY_MAX_S": "1",
        "RELAY_LOG_LEVEL": "INFO",
        **{k.upper(): v for k, v in partner_env(state).items()},
    }
    processes: list[ServeProcess] = []

    def spawn(**overrides: str) -> ServeProcess:
        # one log per process: a second replica must not be taken as started on the first's line
        process = ServeProcess({**env, **overrides}, tmp_path / f"serve-{len(processes)}.log")
        processes.append(process)
        return process

    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    events = EventLog()
    queue = await channel.declare_queue(exclusive=True)
    exchange = await channel.declare_exchange(
        "bss.events", aio_pika.ExchangeType.TOPIC, durable=True
    )
    await queue.bind(exchange, routing_key="#")
    await queue.consume(events.on_message)
    yield spawn, channel, events, prefix
    for process in processes:
        if process.proc is not None and process.proc.returncode is None:
            process.proc.kill()
            await process.proc.wait()
    topology = Topology(prefix)
    for name in [topology.work_queue, *map(topology.delay_queue, DELAY_LEVELS_MS), DLQ]:
        await channel.queue_delete(name)
    await connection.close()


async def publish(channel: aio_pika.abc.AbstractChannel, command: dict[str, Any]) -> None:
    import json

    exchange = await channel.get_exchange("bss.commands")
    await exchange.publish(
        aio_pika.Message(
            json.dumps(command).encode(),
            message_id=command["command_id"],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
        ),
        routing_key=f"command.{command['type']}",
    )


def adopted_orders(events: EventLog, commands: list[dict[str, Any]]) -> list[str]:
    """The renewal orders the renew commands' terminal events report (one entry per report:
    an order two commands claimed shows up twice)."""
    return [
        order
        for c in commands
        if c["type"] == "renew"
        for order in (events.terminal(c["command_id"])[0]["result"] or {"order_ids": []})[
            "order_ids"
        ]
    ]
