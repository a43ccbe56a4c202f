"""Issue 12 end to end: producer permissions with real broker users, the renewal guard, coupon
caps under a 20-way race on both stores, and the audit view. RabbitMQ validates every
``user_id`` itself; the sandbox's request log proves no API call was made for a refusal."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError

from service.broker.topology import COMMANDS_EXCHANGE
from service.ops.audit import AuditFilter, read_audit
from service.store import open_store
from tests.conftest import rabbitmqctl, unique_name
from tests.e2e.conftest import BOTH_STORES, Relay, RelayFactory, Sandbox, new_id
from tests.sandbox import demo_ids as ids

pytestmark = pytest.mark.e2e


@dataclass
class BrokerUser:
    name: str
    url: str

    async def publish(
        self, command: dict[str, Any], *, user_id: str | None = None, routing_key: str = ""
    ) -> None:
        """Publish as this broker user with publisher confirms: a refusal raises."""
        connection: AbstractRobustConnection = await aio_pika.connect_robust(self.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(COMMANDS_EXCHANGE, ensure=False)
            message = aio_pika.Message(
                json.dumps(command).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=command["command_id"],
                user_id=user_id,
            )
            await exchange.publish(message, routing_key=routing_key or f"command.{command['type']}")
        finally:
            await connection.close()


BrokerUsers = Callable[[str, str], Awaitable[BrokerUser]]


@pytest.fixture
async def broker_user(amqp_url: str) -> AsyncIterator[BrokerUsers]:
    """Create real RabbitMQ users on the test vhost: write on bss.commands only, and topic
    permission for the routing keys ``pattern`` matches; deleted afterwards."""
    parts = urlsplit(amqp_url)
    vhost = parts.path.lstrip("/")
    created: list[str] = []

    async def create(role: str, pattern: str) -> BrokerUser:
        name, password = unique_name(f"t-{role}", length=8), uuid.uuid4().hex
        await rabbitmqctl("add_user", name, password)
        created.append(name)
        await rabbitmqctl("set_permissions", "-p", vhost, name, "^$", "^bss\\.commands$", "^$")
        await rabbitmqctl(
            "set_topic_permissions", "-p", vhost, name, COMMANDS_EXCHANGE, pattern, "^$"
        )
        return BrokerUser(name, f"amqp://{name}:{password}@{parts.hostname}:{parts.port}/{vhost}")

    yield create
    for name in created:
        await rabbitmqctl("delete_user", name)


def renew(resources: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "command_id": new_id("renew"),
        "type": "renew",
        "payload": {
            "customer_id": ids.ACME,
            "resource_ids": resources,
            "period_type": "month",
            "period_num": 1,
            **extra,
        },
    }


def coupon(customer: str, face: str = "10.00") -> dict[str, Any]:
    return {
        "command_id": new_id("coupon"),
        "type": "issue_coupon",
        "payload": {"quota_id": ids.QUOTA_MAIN, "customer_ids": [customer], "face_value": face},
    }


def policy_file(tmp_path: Path, policy: dict[str, Any]) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy, indent=2))
    return path


async def denied(relay: Relay, command_id: str, rule: str) -> dict[str, Any]:
    [event] = await relay.events.wait_for(command_id)
    assert event["outcome"] == "rejected", event
    assert event["error"]["code"] == "RELAY.POLICY_DENIED"
    assert rule in event["error"]["message"]
    return event


async def test_producer_permissions_with_real_broker_users(
    start_relay: RelayFactory, bss: Sandbox, broker_user: BrokerUsers, tmp_path: Path
) -> None:
    billing = await broker_user("billing", "^command\\.(renew|inquire_price)$")
    wide = await broker_user("wide", ".*")  # the broker lets it publish anything...
    marketing = await broker_user("marketing", "^command\\.issue_coupon$")
    policy = {
        "producers": {
            billing.name: {"types": ["renew", "inquire_price"], "partners": ["*"]},
            wide.name: {"types": ["inquire_price"]},  # ...the policy does not
            marketing.name: {"types": ["issue_coupon"], "partners": [ids.PARTNER_ID]},
        }
    }
    relay = await start_relay(relay_policy_file=policy_file(tmp_path, policy))

    # a permitted user succeeds
    allowed = renew(["acme-ecs-01"])
    await billing.publish(allowed, user_id=billing.name)
    [succeeded] = await relay.events.wait_for(allowed["command_id"])
    assert succeeded["outcome"] == "succeeded"
    assert succeeded["requested_by"] == billing.name
    calls = len(await bss.requests())
    assert calls > 0

    # outside its rights (by the policy; the broker let it through)
    outside = renew(["acme-ecs-01"])
    await wide.publish(outside, user_id=wide.name)
    event = await denied(relay, outside["command_id"], f"producers.{wide.name}.types")
    assert event["requested_by"] == wide.name

    # no user_id at all
    anonymous = renew(["acme-ecs-01"])
    await relay.publish(anonymous)
    event = await denied(relay, anonymous["command_id"], "producers")
    assert event["requested_by"] is None

    # a spoofed user_id: the broker itself refuses the publish (406 PRECONDITION_FAILED)
    spoofed = renew(["acme-ecs-01"])
    with pytest.raises(AMQPError, match="PRECONDITION_FAILED"):
        await billing.publish(spoofed, user_id=marketing.name)

    # the first line of defence: topic permissions refuse a routing key outside the user's
    refused = renew(["acme-ecs-01"])
    with pytest.raises(AMQPError, match="ACCESS_REFUSED"):
        await marketing.publish(refused, user_id=marketing.name)

    # refusals made no API call, and the refused-by-policy ones are dead-lettered
    await asyncio.sleep(0.5)
    assert len(await bss.requests()) == calls
    assert spoofed["command_id"] not in relay.events.by_command
    assert refused["command_id"] not in relay.events.by_command
    letters = {m.message_id: m for m in await relay.dead_letters()}
    assert {outside["command_id"], anonymous["command_id"]} <= set(letters)
    assert letters[outside["command_id"]].headers["x-relay-reason"] == "RELAY.POLICY_DENIED"

    # the audit view lists who asked and what happened
    async with open_store(relay.settings.store_url) as store:
        entries = {e.command_id: e for e in await read_audit(store, AuditFilter())}
    assert entries[allowed["command_id"]].requested_by == billing.name
    assert entries[allowed["command_id"]].outcome == "succeeded"
    assert entries[allowed["command_id"]].order_ids == succeeded["result"]["order_ids"]
    assert entries[outside["command_id"]].requested_by == wide.name
    assert entries[outside["command_id"]].outcome is None  # rejections are not stored yet
    assert spoofed["command_id"] not in entries


async def test_a_repeat_renewal_is_refused_unless_the_command_allows_it(
    start_relay: RelayFactory, bss: Sandbox, tmp_path: Path
) -> None:
    policy = {"renew": {"same_resource_within": "24h", "max_months": 12}}
    relay = await start_relay(relay_policy_file=policy_file(tmp_path, policy))

    first = renew(["acme-ecs-01"])
    await relay.publish(first)
    [event] = await relay.events.wait_for(first["command_id"])
    assert event["outcome"] == "succeeded"

    again = renew(["acme-ecs-01", "acme-ecs-02"])  # an ERP re-sending under a new command_id
    await relay.publish(again)
    event = await denied(relay, again["command_id"], "renew.same_resource_within")
    assert "acme-ecs-01" in event["error"]["message"]
    assert "allow_repeat" in event["error"]["message"]

    too_long = renew(["acme-ecs-02"], period_type="year", period_num=2)
    await relay.publish(too_long)
    await denied(relay, too_long["command_id"], "renew.max_months")

    meant = renew(["acme-ecs-01"], allow_repeat=True)
    await relay.publish(meant)
    [event] = await relay.events.wait_for(meant["command_id"])
    assert event["outcome"] == "succeeded"

    renewals = await bss.requests("renewal_resources")
    assert len(renewals) == 2, renewals
    async with open_store(relay.settings.store_url) as store:
        entries = {e.command_id: e for e in await read_audit(store, AuditFilter())}
    assert "allow_repeat" in entries[meant["command_id"]].what


@BOTH_STORES
async def test_coupon_caps_hold_when_twenty_commands_race_for_the_last_allowance(
    start_relay: RelayFactory, bss: Sandbox, tmp_path: Path
) -> None:
    policy = {
        "issue_coupon": {
            "max_face_value": "50.00",
            "per_customer_per_day": "1000.00",
            "per_partner_per_day": "100.00",
        }
    }
    path = policy_file(tmp_path, policy)
    replicas = [await start_relay(relay_policy_file=path) for _ in range(2)]
    relay = replicas[0]

    too_big = coupon(ids.ACME, face="50.01")
    await relay.publish(too_big)
    await denied(relay, too_big["command_id"], "issue_coupon.max_face_value")

    customers = [ids.ACME, ids.GLOBEX, ids.INITECH]
    commands = [coupon(customers[i % 3]) for i in range(20)]
    await asyncio.gather(*(relay.publish(c) for c in commands))
    outcomes = []
    for command in commands:
        [event] = await relay.events.wait_for(command["command_id"], within=60)
        outcomes.append(event)

    issued = [e for e in outcomes if e["outcome"] == "succeeded"]
    refused = [e for e in outcomes if e["outcome"] == "rejected"]
    assert (len(issued), len(refused)) == (10, 10)  # 10 x 10.00 = the partner's 100.00
    assert all("issue_coupon.per_partner_per_day" in e["error"]["message"] for e in refused)
    coupon_ids = {c["coupon_id"] for e in issued for c in e["result"]["coupons"]}
    state = await bss.state()
    ours = [c for c in state["coupons"] if c["coupon_id"] in coupon_ids]
    assert sum(Decimal(c["face_value"]) for c in ours) == Decimal("100.00")
    assert len(await bss.requests("create_partner_coupons")) == 10


async def test_a_retried_command_keeps_its_requester_and_a_forged_header_is_ignored(
    start_relay: RelayFactory, bss: Sandbox, broker_user: BrokerUsers, tmp_path: Path
) -> None:
    billing = await broker_user("billing", "^command\\.inquire_price$")
    policy = {"producers": {billing.name: {"types": ["inquire_price"]}}}
    relay = await start_relay(relay_policy_file=policy_file(tmp_path, policy))
    # the first quote fails with a 503: the command goes round the delay queues, as a copy
    # the service published, which cannot carry the producer's user_id
    await bss.put(
        "faults",
        {
            "rules": [
                {
                    "kind": "error",
                    "operations": ["list_renew_rate_on_period"],
                    "count": 1,
                    "status": 503,
                }
            ]
        },
    )
    quote: dict[str, Any] = {
        "command_id": new_id("price"),
        "type": "inquire_price",
        "payload": {
            "customer_id": ids.ACME,
            "mode": "renewal",
            "resource_ids": ["acme-ecs-01"],
            "period_type": "month",
            "period_num": 1,
        },
    }
    await billing.publish(quote, user_id=billing.name)
    [event] = await relay.events.wait_for(quote["command_id"])
    assert event["outcome"] == "succeeded"
    assert event["requested_by"] == billing.name  # from the copy's header
    assert len(await bss.requests("list_renew_rate_on_period")) == 2

    # a producer writing the service's header itself gains nothing
    forged: dict[str, Any] = {**quote, "command_id": new_id("price")}
    await relay.publish(forged, headers={"x-relay-requested-by": billing.name})
    await denied(relay, forged["command_id"], "producers")


@BOTH_STORES
async def test_a_renewal_resent_while_the_first_is_running_is_refused(
    start_relay: RelayFactory, bss: Sandbox, tmp_path: Path
) -> None:
    path = policy_file(tmp_path, {"renew": {"same_resource_within": "24h"}})
    replicas = [await start_relay(relay_policy_file=path) for _ in range(2)]
    # the first renewal is slow: the ERP times out and re-sends it under new command_ids
    await bss.put(
        "faults",
        {"rules": [{"kind": "latency", "operations": ["renewal_resources"], "ms": 1500}]},
    )
    sends = [renew(["acme-ecs-02"]) for _ in range(4)]
    await asyncio.gather(*(replicas[0].publish(c) for c in sends))

    events = [(await replicas[0].events.wait_for(c["command_id"]))[0] for c in sends]

    assert sorted(e["outcome"] for e in events) == ["rejected"] * 3 + ["succeeded"]
    assert len(await bss.requests("renewal_resources")) == 1
