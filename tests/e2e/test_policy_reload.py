"""``bss-relay serve`` as a real process: the policy file is validated at start, and SIGHUP
re-reads it without stopping work; a broken file keeps the policy in force."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from service.broker.topology import (
    COMMANDS_EXCHANGE,
    DELAY_LEVELS_MS,
    DLQ,
    EVENTS_EXCHANGE,
    Topology,
)
from tests.conftest import unique_name
from tests.e2e.conftest import Sandbox, new_id
from tests.sandbox import demo_ids as ids

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


class Serve:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))
            self.changed.set()

    async def wait_log(self, event: str, *, after: int = 0, within: float = 30.0) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                for line in self.lines[after:]:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if record.get("event") == event:
                        return dict(record)
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(find(), within)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await self._reader
        return code


def serve_env(
    amqp_url: str, bss: Sandbox, tmp_path: Path, prefix: str, policy: Path
) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AMQP_URL": amqp_url,
        "BSS_ENDPOINT": bss.url,
        "IAM_ENDPOINT": bss.url,
        "BSS_PARTNER_ID": ids.PARTNER_ID,
        "BSS_ACCESS_KEY": ids.PARTNER_AK,
        "BSS_SECRET_KEY": ids.PARTNER_SK,
        "BSS_AGENCY_NAME": ids.AGENCY,
        "STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "RELAY_QUEUE_PREFIX": prefix,
        "RELAY_POLICY_FILE": str(policy),
        "RELAY_LOG_LEVEL": "INFO",
    }


async def start_serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, str]]:
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    prefix = unique_name("relay", length=8)
    yield channel, prefix
    topology = Topology(prefix)
    for name in [topology.work_queue, *(topology.delay_queue(ms) for ms in DELAY_LEVELS_MS)]:
        await channel.queue_delete(name)
    await channel.queue_delete(DLQ)  # shared by the session's vhost: leave it empty
    await connection.close()


def coupon(face: str) -> dict[str, Any]:
    return {
        "command_id": new_id("coupon"),
        "type": "issue_coupon",
        "payload": {"quota_id": ids.QUOTA_MAIN, "customer_ids": [ids.ACME], "face_value": face},
    }


async def test_sighup_reloads_the_policy_and_a_broken_file_keeps_the_old_one(
    amqp_url: str,
    bss: Sandbox,
    tmp_path: Path,
    broker: tuple[aio_pika.abc.AbstractChannel, str],
) -> None:
    channel, prefix = broker
    policy = tmp_path / "policy.yaml"
    policy.write_text('issue_coupon:\n  max_face_value: "20.00"\n')
    events: dict[str, dict[str, Any]] = {}
    arrived = asyncio.Event()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    exchange = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await queue.bind(exchange, routing_key="#")

    async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = json.loads(message.body)
            events[event["command_id"]] = event
            arrived.set()

    await queue.consume(on_event)

    async def outcome_of(command: dict[str, Any]) -> dict[str, Any]:
        commands = await channel.get_exchange(COMMANDS_EXCHANGE)
        await commands.publish(
            aio_pika.Message(json.dumps(command).encode(), content_type="application/json"),
            routing_key="command.issue_coupon",
        )
        while command["command_id"] not in events:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 30)
        return events[command["command_id"]]

    serve = Serve(await start_serve(serve_env(amqp_url, bss, tmp_path, prefix, policy)))
    try:
        await serve.wait_log("service_started")
        assert (await outcome_of(coupon("25.00")))["outcome"] == "rejected"

        mark = len(serve.lines)
        policy.write_text('issue_coupon:\n  max_face_value: "30.00"\n  per_day: "1.00"\n')
        serve.proc.send_signal(signal.SIGHUP)
        failed = await serve.wait_log("policy_reload_failed_keeping_old", after=mark)
        assert "line 3, key issue_coupon.per_day" in failed["error"]
        event = await outcome_of(coupon("25.00"))  # the old policy still holds
        assert event["error"]["code"] == "RELAY.POLICY_DENIED"
        assert "issue_coupon.max_face_value" in event["error"]["message"]

        mark = len(serve.lines)
        policy.write_text('issue_coupon:\n  max_face_value: "30.00"\n')
        serve.proc.send_signal(signal.SIGHUP)
        await serve.wait_log("policy_reloaded", after=mark)
        assert (await outcome_of(coupon("25.00")))["outcome"] == "succeeded"
        assert serve.proc.returncode is None  # the reloads stopped nothing
    finally:
        assert await serve.stop() == 0


async def test_serve_refuses_to_start_with_a_broken_policy_file(
    amqp_url: str, bss: Sandbox, tmp_path: Path, broker: tuple[aio_pika.abc.AbstractChannel, str]
) -> None:
    _, prefix = broker
    policy = tmp_path / "policy.yaml"
    policy.write_text("renew:\n  same_resource_within: 1 day\n")

    proc = await start_serve(serve_env(amqp_url, bss, tmp_path, prefix, policy))
    _, err = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 2
    assert "line 2, key renew.same_resource_within" in err.decode()
