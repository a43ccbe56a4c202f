"""Losing a broker node: quorum queues on a three-node cluster (``scripts/rabbitmq-cluster``).

The cluster's node names, ports and data directory are fixed, and these tests stop its nodes:
under xdist they are one group (``xdist_group("cluster")``), run by one worker one after the
other, and one test session on the machine at a time runs them (an exclusive lock on
``<RELAY_CLUSTER_DIR>.tests``; another session's waits). The cluster is started for them
(about 25 s) unless it already runs, and stopped after the last of them if this session
started it. A cluster that cannot start fails the tests: it is never a reason to skip them.

The test's own connection (publishing commands, collecting events) is on relay-a; the service
is given the nodes in the order b, c, a, so it connects to relay-b, and relay-b is the node
stopped mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from service.broker.connection import open_broker
from service.broker.topology import DLQ
from tests.conftest import rabbitmqctl, unique_name
from tests.e2e.conftest import Relay, RelayFactory, Sandbox, eventually
from tests.e2e.test_crash import mixed_commands

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-cluster"
# beside the script's data directory, as the script's own lock is (which covers start and stop)
IN_USE = Path(os.environ.get("RELAY_CLUSTER_DIR", "/tmp/bss-relay-cluster").rstrip("/") + ".tests")
NODES = {5681: "relay-a@localhost", 5682: "relay-b@localhost", 5683: "relay-c@localhost"}


async def cluster_script(*args: str) -> tuple[int, str]:
    """The script, at the lowest CPU and I/O priority: the nodes it starts inherit both, so
    three nodes booting take what the tests leave (the timing lanes' first)."""
    proc = await asyncio.create_subprocess_exec(
        *("nice", "-n", "19", "ionice", "-c", "3", str(SCRIPT), *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@dataclass(frozen=True)
class Cluster:
    vhost: str

    def url(self, port: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port}/{self.vhost}"

    def urls(self, *ports: int) -> str:
        return ",".join(self.url(port) for port in ports)


@contextlib.contextmanager
def cluster_in_use() -> Iterator[int]:
    """The lock file, open; unlocked and closed at the end."""
    fd = os.open(IN_USE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)  # releases the lock


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    """Module scope: the cluster stops right after these tests (while the other workers go
    on), not at the end of the worker's session."""
    with cluster_in_use() as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)  # another session's turn
        status, _ = await cluster_script("status")
        started_here = status != 0
        if started_here:
            began = time.monotonic()
            code, out = await cluster_script("start")
            assert code == 0, f"scripts/rabbitmq-cluster start failed:\n{out}"
            print(f"\ncluster started in {time.monotonic() - began:.1f} s")
        vhost = unique_name("relay-cluster")
        node = NODES[5681]
        await rabbitmqctl("-n", node, "add_vhost", vhost)
        try:
            await rabbitmqctl("-n", node, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            yield Cluster(vhost)
        finally:
            await rabbitmqctl("-n", node, "delete_vhost", vhost)
            if started_here:
                code, out = await cluster_script("stop")  # a signal each: no boot's load
                assert code == 0, out


@pytest.fixture
def amqp_url(cluster: Cluster) -> str:
    """The test's own connection (start_relay's publisher and event collector): relay-a."""
    return cluster.url(5681)


async def service_node(vhost: str) -> str:
    """The node the service's connection is on: the one connection not on relay-a's port."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", "-n", NODES[5681], "list_connections", "--no-table-headers",
        "vhost", "port", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    ports = {
        int(port) for v, port in (line.split() for line in out.decode().splitlines()) if v == vhost
    }
    [port] = ports - {5681}
    return NODES[port]


async def record_arrivals(count: Callable[[], int], arrivals: list[float]) -> None:
    """Append the time whenever ``count`` grows (sampled every 5 ms)."""
    seen = count()
    while True:
        await asyncio.sleep(0.005)
        if (now := count()) != seen:
            arrivals.append(time.monotonic())
            seen = now


def outage(arrivals: list[float], since: float) -> tuple[float, float]:
    """The longest silence between events after ``since``: (its length, when it ended),
    seconds relative to ``since``."""
    times = [since, *(t for t in arrivals if t > since)]
    length, end = max((b - a, b) for a, b in itertools.pairwise(times))
    return length, end - since


async def dlq_depth(relay: Relay) -> int:
    queue = await relay.channel.declare_queue(DLQ, passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def all_answered(
    relay: Relay, cluster: Cluster, commands: list[dict[str, Any]], within: float
) -> None:
    """Wait until every command has an event; else fail naming the silent ones and where the
    broker holds messages."""
    ids = [c["command_id"] for c in commands]
    try:
        await eventually(lambda: all(relay.events.by_command.get(i) for i in ids), within=within)
    except AssertionError:
        missing = [i for i in ids if not relay.events.by_command.get(i)]
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-q", "-n", NODES[5681], "list_queues", "-p", cluster.vhost,
            "name", "messages_ready", "messages_unacknowledged", "consumers",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        queues, _ = await proc.communicate()
        raise AssertionError(f"no event for {missing}; queues:\n{queues.decode()}") from None


@pytest.mark.timeout(400)
async def test_losing_the_connected_node_loses_nothing_and_spends_once(
    cluster: Cluster, start_relay: RelayFactory, bss: Sandbox
) -> None:
    seeded_orders = {o["order_id"] for o in (await bss.state())["orders"]}
    seeded_coupons = {c["coupon_id"] for c in (await bss.state())["coupons"]}
    await bss.put("limits", {"*": 200})
    await bss.put("faults", {"rules": [{"kind": "latency", "ms": 40}]})
    relay = await start_relay(
        amqp_url=cluster.urls(5682, 5683, 5681),
        relay_queue_type="quorum",
        relay_rate_limits={"*": 50},
        # As in test_crash.py: a command in flight at the loss keeps its store claim until the
        # lease runs out, and its redeliveries wait for that (RELAY_LEASE_S, 10 s by default).
        relay_lease_s=2,
    )
    node = await service_node(cluster.vhost)
    assert node == NODES[5682]
    commands = mixed_commands(200)
    for command in commands:
        await relay.publish(command)

    def events() -> int:
        return sum(len(v) for v in relay.events.by_command.values())

    arrivals: list[float] = []
    recorder = asyncio.create_task(record_arrivals(events, arrivals))
    await eventually(lambda: events() >= 50, within=60)
    stopping = time.monotonic()
    try:
        await rabbitmqctl("-n", node, "stop_app")
        stopped = time.monotonic() - stopping
        await all_answered(relay, cluster, commands, within=90)
        recorder.cancel()
        silence, resumed = outage(arrivals, stopping)
        print(f"\nstop_app of {node} took {stopped:.2f} s; longest silence after it began:")
        print(f"{silence:.2f} s, events again {resumed:.2f} s after stop_app began")
        assert resumed < 30
        assert await service_node(cluster.vhost) != node
        fresh = mixed_commands(12)  # still serving after the failover
        for command in fresh:
            await relay.publish(command)
        await all_answered(relay, cluster, fresh, within=60)
    finally:
        await rabbitmqctl("-n", node, "start_app")

    everything = commands + fresh
    for command in everything:
        terminal = {e["event_id"] for e in relay.events.terminal(command["command_id"])}
        assert len(terminal) == 1, relay.events.by_command[command["command_id"]]
    outcome = {c["command_id"]: relay.events.terminal(c["command_id"])[0] for c in everything}
    assert Counter(e["outcome"] for e in outcome.values()) == Counter(
        {"succeeded": len(everything)}
    ), Counter(e["outcome"] for e in outcome.values())

    state = await bss.state()
    orders = {o["order_id"] for o in state["orders"] if o["order_type"] == 2} - seeded_orders
    reported_orders = [
        order
        for c in everything
        if c["type"] == "renew"
        for order in outcome[c["command_id"]]["result"]["order_ids"]
    ]
    assert sorted(reported_orders) == sorted(orders)  # one order per renewal, none unreported
    coupons = {c["coupon_id"] for c in state["coupons"]} - seeded_coupons
    reported_coupons = [
        row["coupon_id"]
        for c in everything
        if c["type"] == "issue_coupon"
        for row in outcome[c["command_id"]]["result"]["coupons"]
    ]
    assert sorted(reported_coupons) == sorted(coupons)
    assert await dlq_depth(relay) == 0


async def test_cluster_connection_skips_dead_nodes_and_follows_the_cluster(
    cluster: Cluster,
) -> None:
    """service.broker.connection on its own: a node that is down is skipped at connect; losing the
    node
    connected to moves the connection, its consumer and its confirms to the next node."""
    dead = "amqp://guest:guest@127.0.0.1:5999/" + cluster.vhost
    async with open_broker(f"{dead},{cluster.urls(5683, 5682)}", node_timeout_s=2) as connection:
        assert connection.url.port == 5683
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            "follow", durable=True, arguments={"x-queue-type": "quorum"}
        )
        received: list[bytes] = []

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process():
                received.append(message.body)

        await queue.consume(on_message)
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        await channel.default_exchange.publish(aio_pika.Message(b"before"), routing_key="follow")
        await rabbitmqctl("-n", NODES[5683], "stop_app")
        try:
            await asyncio.wait_for(reconnected.wait(), 30)
            assert connection.url.port == 5682  # the next node that answers, not the dead one
            confirmation = await channel.default_exchange.publish(
                aio_pika.Message(b"after"), routing_key="follow"
            )
            assert isinstance(confirmation, Basic.Ack)
            await eventually(lambda: received == [b"before", b"after"], within=10)
            await channel.queue_delete("follow")
        finally:
            await rabbitmqctl("-n", NODES[5683], "start_app")
