"""``bss-relay demo``: the sandbox and the service in one process, on the local broker.

It publishes one command of each type (the price inquiry in its three modes) and one
malformed message, prints each event as it arrives, shows what changed in the sandbox, and
exits 0 once every command has its event. The service runs with its own queue prefix and a
throw-away store, and its queues are deleted at the end, so the demo leaves the broker as it
found it (apart from the contract's durable exchanges and dead-letter queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from service.broker.connection import connect_broker, mask_url
from service.broker.topology import COMMANDS_EXCHANGE, DELAY_LEVELS_MS, EVENTS_EXCHANGE, Topology
from service.runtime import start
from service.sandbox.server import SandboxServer
from service.settings import Settings
from service.telemetry.logging import configure_logging

__all__ = ["DemoTargets", "demo_commands", "run_demo"]

IN_USE = 2


@dataclass(frozen=True, slots=True)
class DemoTargets:
    """What the demo acts on, chosen from the sandbox's state by attributes, not by id."""

    partner: dict[str, Any]
    customer_id: str
    project_id: str
    region: str
    renew_resource: str
    auto_renew_resource: str
    product: dict[str, Any]
    quota_id: str

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DemoTargets:
        partner = state["partners"][0]
        pid = partner["partner_id"]
        customers = [
            c
            for c in state["customers"]
            if c["partner_id"] == pid and c.get("agency_granted", True) and c.get("projects")
        ]
        for customer in customers:
            usable = [
                r
                for r in state["resources"]
                if r["customer_id"] == customer["customer_id"]
                and r["is_main_resource"] == 1
                and r["status"] == IN_USE
                and not r.get("pending_order_id")
            ]
            region, project = next(iter(customer["projects"].items()))
            products = [
                p for p in state["price_book"] if region in p["regions"] and not p["linear"]
            ]
            off = [r for r in usable[1:] if not r["auto_renew"]]
            if len(usable) >= 2 and off and products:
                quota = max(
                    (q for q in state["coupon_quotas"] if q["partner_id"] == pid),
                    key=lambda q: float(q["balance"]),
                )
                return cls(
                    partner,
                    customer["customer_id"],
                    project,
                    region,
                    usable[0]["resource_id"],
                    off[0]["resource_id"],
                    products[0],
                    quota["quota_id"],
                )
        raise LookupError("the sandbox data set has no customer the demo can use")


def demo_commands(t: DemoTargets, run_id: str) -> Iterator[dict[str, Any]]:
    product = {
        "id": "1",
        "cloud_service_type": t.product["cloud_service_type"],
        "resource_type": t.product["resource_type"],
        "resource_spec": t.product["resource_spec"],
        "region": t.region,
    }
    customer = {"customer_id": t.customer_id}
    yield {
        "type": "renew",
        "payload": {
            **customer,
            "resource_ids": [t.renew_resource],
            "period_type": "month",
            "period_num": 1,
        },
    }
    yield {
        "type": "set_auto_renew",
        "payload": {
            **customer,
            "resource_id": t.auto_renew_resource,
            "enabled": True,
            "period_type": "month",
        },
    }
    yield {
        "type": "inquire_price",
        "payload": {
            **customer,
            "mode": "on_demand",
            "project_id": t.project_id,
            "products": [
                {**product, "usage_factor": "Duration", "usage_value": "1", "usage_measure_id": 4}
            ],
        },
    }
    yield {
        "type": "inquire_price",
        "payload": {
            **customer,
            "mode": "period",
            "project_id": t.project_id,
            "products": [{**product, "period_type": "year", "period_num": 1}],
        },
    }
    yield {
        "type": "inquire_price",
        "payload": {
            **customer,
            "mode": "renewal",
            "resource_ids": [t.renew_resource],
            "period_type": "year",
            "period_num": 1,
        },
    }
    yield {
        "type": "issue_coupon",
        "payload": {
            "quota_id": t.quota_id,
            "customer_ids": [t.customer_id],
            "face_value": "50.00",
            "memo": "demo goodwill credit",
        },
    }


def _line(event: dict[str, Any]) -> str:
    kind = f"{event['type']}.{event['outcome']}"
    detail = event["result"] if event["result"] is not None else event["error"]
    return f"  {kind:<26} {event['command_id'] or '-':<34} {json.dumps(detail)}"


async def _publish(channel: AbstractChannel, body: bytes, key: str, command_id: str | None) -> None:
    exchange = await channel.get_exchange(COMMANDS_EXCHANGE)
    await exchange.publish(
        aio_pika.Message(
            body,
            content_type="application/json",
            message_id=command_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=key,
    )


async def _sandbox_state(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/_sandbox/state") as resp:
        resp.raise_for_status()
        state: dict[str, Any] = await resp.json()
        return state


def _print_effects(before: dict[str, Any], after: dict[str, Any], t: DemoTargets) -> None:
    res = {r["resource_id"]: r for r in before["resources"]}
    now = {r["resource_id"]: r for r in after["resources"]}
    print("\nWhat changed in the sandbox:")
    r = t.renew_resource
    print(f"  {r}: expire_time {res[r]['expire_time']} -> {now[r]['expire_time']}")
    a = t.auto_renew_resource
    print(f"  {a}: auto_renew {res[a]['auto_renew']} -> {now[a]['auto_renew']}")
    quota = {q["quota_id"]: q for q in before["coupon_quotas"]}[t.quota_id]
    quota_after = {q["quota_id"]: q for q in after["coupon_quotas"]}[t.quota_id]
    print(f"  quota {t.quota_id}: balance {quota['balance']} -> {quota_after['balance']}")
    print(f"  coupons: {len(before['coupons'])} -> {len(after['coupons'])}")


async def run_demo(stop: asyncio.Event, *, amqp_url: str, timeout_s: float = 60.0) -> int:
    configure_logging("ERROR")  # the demo shows events; warnings (the rejection) are expected
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        async with SandboxServer() as sandbox, aiohttp.ClientSession() as http:
            before = await _sandbox_state(http, sandbox.url)
            targets = DemoTargets.from_state(before)
            partner = targets.partner
            settings = Settings(
                amqp_url=amqp_url,
                bss_endpoint=sandbox.url,
                iam_endpoint=sandbox.url,
                bss_partner_id=partner["partner_id"],
                bss_access_key=partner["access_key"],
                bss_secret_key=partner["secret_key"],
                bss_agency_name=partner["agency_name"],
                store_url=f"sqlite:///{tmp}/demo.db",
                relay_queue_prefix=f"bss-relay-demo-{run_id}",
            )
            broker = mask_url(amqp_url)
            print(f"sandbox: {sandbox.url}   broker: {broker}   partner: {partner['partner_id']}")
            ok = await _drive(settings, targets, run_id, stop, timeout_s)
            _print_effects(before, await _sandbox_state(http, sandbox.url), targets)
    return 0 if ok else 1


async def _drive(
    settings: Settings, targets: DemoTargets, run_id: str, stop: asyncio.Event, timeout_s: float
) -> bool:
    connection = await connect_broker(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_event(message: AbstractIncomingMessage) -> None:
            async with message.process():
                await events.put(json.loads(message.body))

        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await queue.bind(exchange, routing_key="#")
        await queue.consume(on_event)
        try:
            async with start(settings):
                return await _exchange(
                    channel, events, targets=targets, run_id=run_id, stop=stop, timeout_s=timeout_s
                )
        finally:
            topology = Topology(settings.relay_queue_prefix)
            for name in [topology.work_queue, *map(topology.delay_queue, DELAY_LEVELS_MS)]:
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)


async def _exchange(
    channel: AbstractChannel,
    events: asyncio.Queue[dict[str, Any]],
    *,
    targets: DemoTargets,
    run_id: str,
    stop: asyncio.Event,
    timeout_s: float,
) -> bool:
    expected: set[str] = set()
    print("\nPublished to bss.commands:")
    for n, command in enumerate(demo_commands(targets, run_id), 1):
        command["command_id"] = f"demo-{run_id}-{n}-{command['type']}"
        command["issued_at"] = datetime.now(UTC).isoformat()
        expected.add(command["command_id"])
        print(f"  command.{command['type']:<15} {command['command_id']}")
        await _publish(
            channel,
            json.dumps(command).encode(),
            f"command.{command['type']}",
            command["command_id"],
        )
    await _publish(
        channel, b'{"command_id": "demo-%s-bad", "type": ' % run_id.encode(), "command.renew", None
    )
    print("  command.renew           (malformed JSON)")
    print("\nEvents from bss.events as they arrive:")
    deadline = asyncio.get_running_loop().time() + timeout_s
    malformed_seen = False
    while (expected or not malformed_seen) and not stop.is_set():
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            print(f"timed out waiting for: {sorted(expected)}")
            return False
        try:
            event = await asyncio.wait_for(events.get(), remaining)
        except TimeoutError:
            continue
        if event["command_id"] in expected:
            expected.discard(event["command_id"])
        elif event["type"] == "invalid" and not malformed_seen:
            malformed_seen = True
        else:
            continue
        print(_line(event))
    return not expected
