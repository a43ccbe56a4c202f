"""Each command type end to end: real broker, real service, the sandbox's state shows the effect."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import aio_pika
import pytest

from tests.e2e.conftest import RelayFactory, Sandbox, new_id
from tests.sandbox import demo_ids as ids

pytestmark = pytest.mark.e2e


def renew(customer: str, resources: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "command_id": new_id("renew"),
        "type": "renew",
        "payload": {
            "customer_id": customer,
            "resource_ids": resources,
            "period_type": "month",
            "period_num": 1,
            **extra,
        },
    }


def by_id(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in rows}


def month_later(before: str, after: str) -> bool:
    b, a = datetime.fromisoformat(before), datetime.fromisoformat(after)
    months = (a.year - b.year) * 12 + a.month - b.month
    return months == 1 and a.day == b.day


async def test_renew_moves_expiry_and_event_has_the_contract_fields(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    relay = await start_relay()
    before = by_id((await bss.state())["resources"], "resource_id")
    reply = await relay.channel.declare_queue(exclusive=True)
    command = renew(ids.ACME, ["acme-ecs-01"])
    await relay.publish(command, correlation_id="erp-corr-1", reply_to=reply.name)

    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "succeeded"
    assert event["type"] == "renew"
    assert event["partner_id"] is None  # not given: the one configured partner was used
    assert event["customer_id"] == ids.ACME
    # every API request it sent: the two reads that journal the baseline, then the renewal
    assert event["attempts"] == len(await bss.bss_requests()) == 3
    assert event["duplicate"] is False
    assert event["conflict"] is False
    assert event["requested_by"] is None
    assert event["error"] is None
    assert len(event["result"]["order_ids"]) == 1
    assert relay.events.routing_keys[event["event_id"]] == "renew.succeeded"

    after = by_id((await bss.state())["resources"], "resource_id")
    for rid in ("acme-ecs-01", "acme-evs-01"):  # the attached disk is renewed with its ECS
        assert month_later(before[rid]["expire_time"], after[rid]["expire_time"])
    orders = by_id((await bss.state())["orders"], "order_id")
    assert orders[event["result"]["order_ids"][0]]["order_type"] == 2

    replied = await reply.get(timeout=5)
    assert replied.correlation_id == "erp-corr-1"
    assert replied.message_id == event["event_id"]


async def test_partial_batch(start_relay: RelayFactory, bss: Sandbox) -> None:
    relay = await start_relay()
    command = renew(ids.ACME, ["acme-ecs-01", "acme-ecs-pending"])
    await relay.publish(command)
    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "partial"
    assert len(event["result"]["order_ids"]) == 1
    [failed] = event["result"]["failed_resources"]
    assert failed["resource_id"] == "acme-ecs-pending"
    assert failed["code"] == "CBC.99003100"  # already in an unpaid order


async def test_api_refusal_fails_with_the_api_code(start_relay: RelayFactory, bss: Sandbox) -> None:
    relay = await start_relay()
    command = renew(ids.ACME, ["acme-evs-01"])  # an attached resource cannot be renewed alone
    await relay.publish(command)
    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "failed"
    assert event["result"] is None
    assert event["error"]["code"] == "CBC.30010036"
    assert event["error"]["retryable"] is False


async def test_customer_without_agency_fails_at_iam(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    relay = await start_relay()
    command = renew(ids.UMBRELLA, ["umbrella-ecs-01"])
    await relay.publish(command)
    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "failed"
    assert event["error"]["code"].startswith("IAM.")
    assert 400 <= event["error"]["http_status"] < 500
    assert await bss.requests("renewal_resources") == []


async def test_set_auto_renew_on_and_off_idempotently(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    relay = await start_relay()
    on: dict[str, Any] = {
        "command_id": new_id("ar"),
        "type": "set_auto_renew",
        "payload": {
            "customer_id": ids.ACME,
            "resource_id": "acme-ecs-01",
            "enabled": True,
            "times": 3,
        },
    }
    off_twice: list[dict[str, Any]] = [
        {
            "command_id": new_id("ar"),
            "type": "set_auto_renew",
            "payload": {"customer_id": ids.ACME, "resource_id": "acme-eip-01", "enabled": False},
        }
        for _ in range(2)
    ]
    await relay.publish(on)
    [event] = await relay.events.wait_for(on["command_id"])
    assert event["outcome"] == "succeeded"
    assert event["result"] == {"resource_id": "acme-ecs-01", "enabled": True}
    resources = by_id((await bss.state())["resources"], "resource_id")
    assert resources["acme-ecs-01"]["auto_renew"] is True
    assert resources["acme-evs-01"]["auto_renew"] is True
    for command in off_twice:  # already off: asking for the state it has is a success
        await relay.publish(command)
        [event] = await relay.events.wait_for(command["command_id"])
        assert event["outcome"] == "succeeded"
        assert event["result"]["enabled"] is False


PRODUCT = {
    "id": "p1",
    "cloud_service_type": "hws.service.type.ec2",
    "resource_type": "hws.resource.type.vm",
    "resource_spec": "s6.small.1.linux",
    "region": "cn-north-4",
}


def period_quote(**product: Any) -> dict[str, Any]:
    """An ``inquire_price`` command in ``period`` mode for ACME, one product (overridable)."""
    return {
        "command_id": new_id("price"),
        "type": "inquire_price",
        "payload": {
            "customer_id": ids.ACME,
            "mode": "period",
            "project_id": ids.ACME_PROJECT_NORTH,
            "products": [{**PRODUCT, "period_type": "month", "period_num": 1, **product}],
        },
    }


@pytest.mark.parametrize(
    "payload",
    [
        {
            "mode": "on_demand",
            "project_id": ids.ACME_PROJECT_NORTH,
            "products": [
                {**PRODUCT, "usage_factor": "Duration", "usage_value": "1", "usage_measure_id": 4}
            ],
        },
        {
            "mode": "period",
            "project_id": ids.ACME_PROJECT_NORTH,
            "products": [{**PRODUCT, "period_type": "month", "period_num": 1}],
        },
        {
            "mode": "renewal",
            "resource_ids": ["acme-ecs-01"],
            "period_type": "year",
            "period_num": 1,
        },
    ],
    ids=["on_demand", "period", "renewal"],
)
async def test_price_quotes_apply_the_customer_discount(
    start_relay: RelayFactory, bss: Sandbox, payload: dict[str, Any]
) -> None:
    relay = await start_relay()
    command: dict[str, Any] = {
        "command_id": new_id("price"),
        "type": "inquire_price",
        "payload": {"customer_id": ids.ACME, **payload},
    }
    await relay.publish(command)
    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "succeeded", event
    result = event["result"]
    amount, official = Decimal(result["amount"]), Decimal(result["official_amount"])
    assert isinstance(result["amount"], str)  # money is a decimal string, never a float
    assert official > 0
    assert amount == (official * Decimal("0.90")).quantize(amount)  # ACME pays 90 %
    assert Decimal(result["discount_amount"]) == official - amount
    assert result["currency"] == "CNY"
    assert len(result["items"]) == 1


async def test_price_of_unknown_product_fails(start_relay: RelayFactory, bss: Sandbox) -> None:
    relay = await start_relay()
    command = period_quote(resource_spec="nope.linux")
    await relay.publish(command)
    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "failed"
    assert event["error"]["code"] == "CBC.99006006"


def coupon(
    customers: list[str], quota: str = ids.QUOTA_MAIN, face: str = "25.50"
) -> dict[str, Any]:
    return {
        "command_id": new_id("coupon"),
        "type": "issue_coupon",
        "payload": {
            "quota_id": quota,
            "customer_ids": customers,
            "face_value": face,
            "memo": "goodwill",
        },
    }


async def test_issue_coupon_spends_the_quota(start_relay: RelayFactory, bss: Sandbox) -> None:
    relay = await start_relay()
    command = coupon([ids.ACME, ids.GLOBEX])
    await relay.publish(command)
    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "succeeded"
    assert {c["customer_id"] for c in event["result"]["coupons"]} == {ids.ACME, ids.GLOBEX}
    state = await bss.state()
    quota = by_id(state["coupon_quotas"], "quota_id")[ids.QUOTA_MAIN]
    assert Decimal(quota["balance"]) == Decimal("10000.00") - 2 * Decimal("25.50")
    issued = [
        c
        for c in state["coupons"]
        if c["coupon_id"] in {x["coupon_id"] for x in event["result"]["coupons"]}
    ]
    assert {Decimal(c["face_value"]) for c in issued} == {Decimal("25.50")}
    assert all(command["command_id"] in c["memo"] for c in issued)  # the reconciliation marker


async def test_issue_coupon_partial_and_failed(start_relay: RelayFactory, bss: Sandbox) -> None:
    relay = await start_relay()
    mixed = coupon([ids.ACME, ids.STARK])  # STARK belongs to the other partner
    low = coupon([ids.ACME], quota=ids.QUOTA_LOW, face="50.00")  # balance 15.00
    await relay.publish(mixed)
    await relay.publish(low)
    [event] = await relay.events.wait_for(mixed["command_id"])
    assert event["outcome"] == "partial"
    [failed] = event["result"]["failed_customers"]
    assert (failed["customer_id"], failed["code"]) == (ids.STARK, "CBC.99000035")
    [event] = await relay.events.wait_for(low["command_id"])
    assert event["outcome"] == "failed"
    assert event["error"]["code"] == "CBC.99000013"


async def test_money_is_exact_in_events(start_relay: RelayFactory, bss: Sandbox) -> None:
    relay = await start_relay()
    command = coupon([ids.INITECH], face="1.10")
    await relay.publish(command)
    [event] = await relay.events.wait_for(command["command_id"])
    assert event["outcome"] == "succeeded"
    quota = by_id((await bss.state())["coupon_quotas"], "quota_id")[ids.QUOTA_MAIN]
    assert quota["balance"] == "9998.90"


async def test_events_carry_correlation_id_else_command_id(
    start_relay: RelayFactory, bss: Sandbox
) -> None:
    relay = await start_relay()
    queue = await relay.channel.declare_queue(exclusive=True)
    exchange = await relay.channel.get_exchange("bss.events")
    await queue.bind(exchange, routing_key="set_auto_renew.*")
    command: dict[str, Any] = {
        "command_id": new_id("ar"),
        "type": "set_auto_renew",
        "payload": {"customer_id": ids.GLOBEX, "resource_id": "globex-ecs-01", "enabled": True},
    }
    await relay.publish(command)
    message = await _get(queue)
    assert message.correlation_id == command["command_id"]
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def _get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    import asyncio

    for _ in range(100):
        message = await queue.get(fail=False, no_ack=True)
        if message is not None:
            return message
        await asyncio.sleep(0.1)
    raise AssertionError("no event arrived")
