"""Pacing end to end: no head-of-line blocking, fair shares, adapting to the real limit.

Bounds are loose on purpose (the machine is shared and noisy); the benchmark measures the
numbers, these tests check the behaviour.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from bench.measures import busiest_window as max_in_window
from tests.conftest import rabbitmqctl
from tests.e2e.conftest import Relay, RelayFactory, Sandbox, eventually
from tests.e2e.test_reliability import auto_renew
from tests.sandbox import demo_ids as ids

pytestmark = [pytest.mark.e2e, pytest.mark.timing]

HOT = ["acme-ecs-01", "acme-ecs-02", "acme-eip-01"]


async def publish_all(relay: Relay, commands: list[dict[str, Any]]) -> None:
    for start in range(0, len(commands), 250):
        await asyncio.gather(*(relay.publish(c) for c in commands[start : start + 250]))


async def unacked(amqp_url: str, queue: str) -> int:
    vhost = amqp_url.rsplit("/", 1)[1]
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "list_queues",
        "-q",
        "-p",
        vhost,
        "name",
        "messages_unacknowledged",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    for line in out.decode().splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


BACKLOG = 2000  # 200 s of the hot customer's quota; the bench's light-key scenario has 5,000


async def test_light_key_is_not_stuck_behind_a_2000_command_backlog(
    start_relay: RelayFactory, bss: Sandbox, amqp_url: str
) -> None:
    relay = await start_relay(relay_shutdown_grace_s=1.0)
    hot = [auto_renew(HOT[i % 3], True) for i in range(BACKLOG)]
    await publish_all(relay, hot)
    await eventually(lambda: sum(bool(relay.events.terminal(c["command_id"])) for c in hot) >= 20)

    light = auto_renew("globex-ecs-01", True, customer=ids.GLOBEX)
    sent = time.monotonic()
    await relay.publish(light)
    [event] = await relay.events.wait_for(light["command_id"], within=30)
    latency = time.monotonic() - sent
    assert event["outcome"] == "succeeded"
    hot_done = sum(bool(relay.events.terminal(c["command_id"])) for c in hot)
    assert hot_done < BACKLOG  # the light command finished while the backlog was draining
    # seconds; stuck behind the backlog it would be minutes. The light command is behind the
    # backlog in the work queue: how fast that is parked is CPU-bound (10.6 s seen behind
    # 5,000 in a loaded parallel run; the bench measures the latency on a quiet machine)
    assert latency < 10

    dispatcher = relay.service.dispatcher
    assert dispatcher.held("auto_renewal_resources", ids.ACME) <= 2 * 10 + 5  # ~hold_s of quota
    assert await unacked(amqp_url, relay.topology.work_queue) <= relay.settings.relay_prefetch
    parked = relay.service.metrics.parked.labels("auto_renewal_resources")._value.get()
    assert parked > 0  # the rest of the backlog waits on the broker, not in memory
    calls = [r for r in await bss.requests("auto_renewal_resources")]
    # a lone 429 is jitter between the send and the gateway's clock on these shared cores, as
    # in the other timing tests (seen once in a fresh-clone run); the bench holds 0
    assert sum(r["status"] == 429 for r in calls) <= 1
    uid_calls = sorted(r["at"] for r in calls if r["parent_uid"] == ids.ACME)
    assert max_in_window(uid_calls) <= 10


async def test_customers_get_equal_shares_of_a_contended_bucket(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    relay = await start_relay()
    customers = {ids.ACME: "acme", ids.GLOBEX: "globex", ids.INITECH: "initech"}
    burst = {ids.ACME: 90, ids.GLOBEX: 30, ids.INITECH: 30}  # acme bursts first, 3x bigger
    commands = [
        auto_renew(f"{name}-ecs-0{1 + i % 2}", True, customer=cid)
        for cid, name in customers.items()
        for i in range(burst[cid])
    ]
    await publish_all(relay, commands)
    for command in commands:
        await relay.events.wait_for(command["command_id"], within=60)
    calls = sorted(await bss.requests("auto_renewal_resources"), key=lambda r: r["at"])
    # the window in which all three had a backlog: from the last one's first call to the
    # first one's last call; each should get about a third of it
    first = max(min(r["at"] for r in calls if r["parent_uid"] == cid) for cid in customers)
    last = min(max(r["at"] for r in calls if r["parent_uid"] == cid) for cid in customers)
    window = [r for r in calls if first <= r["at"] <= last]
    shares = Counter(r["parent_uid"] for r in window)
    assert len(window) >= 45
    # first come, first served would give the 3x burst ~60 %; fair is a third each
    assert all(0.2 <= shares[cid] / len(window) <= 0.45 for cid in customers), shares
    # one egress bucket for all: only a refused request over it, and at most one (a lone 429
    # is jitter between the send and the gateway's clock on these shared cores)
    refused = sum(r["status"] == 429 for r in calls)
    assert refused <= 1
    assert max_in_window([r["at"] for r in calls]) <= 10 + refused


async def test_throttling_answers_lower_the_rate_and_are_never_failures(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    await bss.put("limits", {"auto_renewal_resources": 4})  # lower than the published 10/s
    relay = await start_relay()
    commands = [auto_renew(HOT[i % 3], True) for i in range(40)]
    await publish_all(relay, commands)
    for command in commands:
        [event] = await relay.events.wait_for(command["command_id"], within=60)
        assert event["outcome"] == "succeeded"
    statuses = Counter(r["status"] for r in await bss.requests("auto_renewal_resources"))
    assert statuses[200] + statuses[204] == 40
    assert statuses[429] > 0  # the API did throttle ...
    rates = relay.service.dispatcher.rates()
    key = f"auto_renewal_resources/customer/{ids.ACME}"
    assert key in rates  # ... and the key was slowed below its configured 10/s
    assert rates[key] < 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_metrics_and_health_endpoint(start_relay: RelayFactory, bss: Sandbox) -> None:
    port = free_port()
    relay = await start_relay(relay_metrics_port=port)
    command = auto_renew("acme-ecs-01", True)
    await relay.publish(command)
    await relay.events.wait_for(command["command_id"])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    assert 'bss_relay_commands_total{outcome="succeeded",type="set_auto_renew"} 1.0' in text
    assert 'bss_relay_api_requests_total{api="auto_renewal_resources",status="204"}' in text or (
        'bss_relay_api_requests_total{api="auto_renewal_resources",status="200"}' in text
    )
    assert "bss_relay_commands_inflight" in text
    assert "secret" not in text.lower()


async def test_close_all_connections_helper_is_available() -> None:
    # rabbitmqctl is what the broker-restart tests drive; fail loudly if it is missing.
    await rabbitmqctl("status")


async def test_deadline_passing_while_waiting_for_a_turn_rejects_without_calling(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    # a slow key and a long hold window: the command waits in memory, not on the broker
    relay = await start_relay(relay_rate_limits={"auto_renewal_resources": 2}, relay_hold_s=30)
    backlog = [auto_renew(HOT[i % 3], True) for i in range(8)]  # about 4 s of this key's quota
    await publish_all(relay, backlog)
    late = auto_renew("acme-ecs-01", True)  # same API and key: it queues behind the backlog
    late["deadline"] = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    await relay.publish(late)
    [event] = await relay.events.wait_for(late["command_id"], within=30)
    assert event["outcome"] == "rejected"
    assert event["error"]["code"] == "RELAY.DEADLINE_PASSED"
    for command in backlog:  # the others still run
        [done] = await relay.events.wait_for(command["command_id"], within=30)
        assert done["outcome"] == "succeeded"
    assert len(await bss.requests("auto_renewal_resources")) == len(backlog)  # never sent late
