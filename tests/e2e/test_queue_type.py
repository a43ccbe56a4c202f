"""RELAY_QUEUE_TYPE on a real broker (the single node on 5672 holds quorum queues too): what the
quorum arguments do, and a queue of the other type stopping ``serve`` with a clear message."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from service.broker.topology import DLQ, WORK_DELIVERY_LIMIT, QueueType, Topology, declare
from tests.conftest import fresh_vhost, unique_name
from tests.e2e.conftest import Sandbox, partner_env

pytestmark = pytest.mark.e2e


@pytest.fixture
async def vhost_url() -> AsyncIterator[str]:
    """A vhost of its own: these tests declare bss.commands.dlq with either type."""
    async with fresh_vhost("relay-qtype") as url:
        yield url


@pytest.fixture
async def channel(vhost_url: str) -> AsyncIterator[AbstractChannel]:
    async with await aio_pika.connect(vhost_url) as connection:
        yield await connection.channel(publisher_confirms=True)


async def get_one(queue: AbstractQueue, within: float = 5.0) -> aio_pika.IncomingMessage:
    deadline = time.monotonic() + within
    while (message := await queue.get(fail=False, no_ack=False)) is None:
        assert time.monotonic() < deadline, f"nothing arrived in {queue.name}"
        await asyncio.sleep(0.05)
    assert isinstance(message, aio_pika.IncomingMessage)
    return message


async def test_quorum_delay_queue_expires_back_to_work_and_poison_ends_in_the_dlq(
    channel: AbstractChannel,
) -> None:
    topology = Topology("q", "quorum")
    declared = await declare(channel, topology)
    await channel.default_exchange.publish(
        aio_pika.Message(b"poison", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=topology.delay_queue(250),
    )
    message = await get_one(declared.work)  # the delay queue's TTL, then dead-lettered
    assert message.headers["x-first-death-reason"] == "expired"
    for _ in range(WORK_DELIVERY_LIMIT):  # a process that dies on it every time
        await message.nack(requeue=True)
        message = await get_one(declared.work)
    await message.nack(requeue=True)  # one delivery too many: the broker gives up on it
    dead = await get_one(declared.dlq)
    assert dead.body == b"poison"
    deaths: Any = dead.headers["x-death"]
    assert deaths[0]["reason"] == "delivery_limit"
    assert deaths[0]["queue"] == "q.work"
    assert await declared.work.get(fail=False) is None


async def serve(
    vhost_url: str, prefix: str, queue_type: str, bss: Sandbox, store: Path
) -> tuple[int, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BSS_", "RELAY_"))},
        # A node list whose first node is down: skipped, and its password never printed.
        "AMQP_URL": f"amqp://guest:other-secret@127.0.0.1:5999/x,{vhost_url}",
        "BSS_ENDPOINT": bss.url,
        "IAM_ENDPOINT": bss.url,
        "STORE_URL": f"sqlite:///{store}",
        "RELAY_QUEUE_PREFIX": prefix,
        "RELAY_QUEUE_TYPE": queue_type,
        **{k.upper(): v for k, v in partner_env(await bss.state()).items()},
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)  # never a reconnect loop
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


@pytest.mark.parametrize(("existing", "wanted"), [("classic", "quorum"), ("quorum", "classic")])
async def test_queues_of_the_other_type_stop_serve_with_what_to_do(
    channel: AbstractChannel,
    vhost_url: str,
    bss: Sandbox,
    tmp_path: Path,
    existing: QueueType,
    wanted: str,
) -> None:
    prefix = unique_name("relay", length=8)
    await declare(channel, Topology(prefix, existing))
    await channel.default_exchange.publish(
        aio_pika.Message(b"waiting", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=Topology(prefix).work_queue,
    )

    code, output = await serve(vhost_url, prefix, wanted, bss, tmp_path / "store.db")

    assert code == 2, output
    assert f"queue '{DLQ}' exists on the broker" in output
    assert f"RELAY_QUEUE_TYPE={existing}" in output  # what to do: keep the type ...
    assert "Moving between classic and quorum queues" in output  # ... or migrate
    assert "other-secret" not in output
    assert "broker_node_unavailable" in output  # the dead node was tried, masked
    assert "service_started" not in output
    work = await channel.declare_queue(Topology(prefix).work_queue, passive=True)
    assert work.declaration_result.message_count == 1  # nothing was touched
