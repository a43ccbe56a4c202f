"""Fault injection: targeted, counted and seeded; apply-then-drop leaves an unknown outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from service.sandbox.faults import FaultPlan
from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control

RENEW = {"resource_ids": ["acme-ecs-01"], "period_type": 2, "period_num": 1, "is_auto_pay": 1}


def rule(kind: str, *operations: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "operations": list(operations) or None, **fields}


async def test_error_fault_hits_only_the_next_matching_request(
    acme: SignedClient, control: Control
) -> None:
    await control.put("faults", {"rules": [rule("error", "renewal_resources", count=1)]})
    assert (await acme.op("list_pay_per_use_customer_resources", body={})).status == 200
    failed = await acme.op("renewal_resources", body=RENEW)
    assert (failed.status, failed.body["error_code"]) == (500, "CBC.0999")
    assert (await control.resource("acme-ecs-01"))[
        "expire_time"
    ] == "2027-03-15T16:00:00Z"  # no effect
    assert (await acme.op("renewal_resources", body=RENEW)).status == 200
    shown = await control.get("faults")
    assert shown["rules"][0]["remaining"] == 0
    assert (await control.get("counters"))["faults"] == {"error": 1}


async def test_fixed_latency(partner: SignedClient, control: Control) -> None:
    await control.put("faults", {"rules": [rule("latency", "list_quota_coupons", ms=150)]})
    started = time.monotonic()
    assert (await partner.op("list_quota_coupons", body={})).status == 200
    assert time.monotonic() - started >= 0.15


async def test_drop_after_apply_changes_state_but_answers_nothing(
    acme: SignedClient, control: Control
) -> None:
    await control.put("faults", {"rules": [rule("drop_after_apply", "renewal_resources", count=1)]})
    with pytest.raises(aiohttp.ClientConnectionError):
        await acme.op("renewal_resources", body=RENEW)
    assert (await control.resource("acme-ecs-01"))["expire_time"] == "2027-04-15T16:00:00Z"
    orders = [
        o for o in (await control.state())["orders"] if o["order_type"] == 2 and o["status"] == 5
    ]
    assert [o["resource_ids"] for o in orders] == [["acme-ecs-01", "acme-evs-01"]]
    [entry] = [e for e in await control.get("requests") if e["api"] == "renewal_resources"]
    assert (entry["status"], entry["would_status"], entry["faults"]) == (
        None,
        200,
        ["drop_after_apply"],
    )


async def test_drop_after_apply_for_coupons(partner: SignedClient, control: Control) -> None:
    await control.put(
        "faults", {"rules": [rule("drop_after_apply", "create_partner_coupons", count=1)]}
    )
    body = {
        "quota_id": ids.QUOTA_MAIN,
        "customer_ids": [ids.ACME],
        "face_value": 20,
        "memo": "cmd-drop",
    }
    with pytest.raises(aiohttp.ClientConnectionError):
        await partner.op("create_partner_coupons", body=body)
    records = await partner.op("list_partner_coupons_record", query=[("customer_id", ids.ACME)])
    assert records.body["records"][0]["remark"] == "cmd-drop"
    assert (await control.quota(ids.QUOTA_MAIN))["balance"] == "9980.00"


async def test_hang_holds_the_request_without_effect(acme: SignedClient, control: Control) -> None:
    await control.put("faults", {"rules": [rule("hang", "renewal_resources", seconds=5, count=1)]})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(acme.op("renewal_resources", body=RENEW), 0.3)
    assert (await control.resource("acme-ecs-01"))["expire_time"] == "2027-03-15T16:00:00Z"


async def test_hang_after_apply_then_connection_closed(
    acme: SignedClient, control: Control
) -> None:
    await control.put(
        "faults", {"rules": [rule("hang", "renewal_resources", seconds=0.2, after_apply=True)]}
    )
    started = time.monotonic()
    with pytest.raises(aiohttp.ClientConnectionError):
        await acme.op("renewal_resources", body=RENEW)
    assert time.monotonic() - started >= 0.2
    assert (await control.resource("acme-ecs-01"))["expire_time"] == "2027-04-15T16:00:00Z"


async def test_reset_clears_faults(partner: SignedClient, control: Control) -> None:
    await control.put("faults", {"rules": [rule("error")]})
    assert (await partner.op("list_quota_coupons", body={})).status == 500
    await control.reset()
    assert (await partner.op("list_quota_coupons", body={})).status == 200


async def test_invalid_faults_are_refused(control: Control) -> None:
    await control.put("faults", {"rules": [rule("latency")]}, expect=400)  # no delay given
    await control.put("faults", {"rules": [rule("error", "no_such_api")]}, expect=400)
    await control.put("faults", {"rules": [rule("explode")]}, expect=400)
    await control.put("faults", {"rules": [rule("error", rate=1.5)]}, expect=400)
    await control.put("faults", [], expect=400)


def test_seeded_rates_are_reproducible() -> None:
    settings = {"seed": 42, "rules": [rule("error", rate=0.3), rule("latency", min_ms=1, max_ms=9)]}
    first, second = FaultPlan.parse(settings), FaultPlan.parse(settings)
    draws = [first.draw("renewal_resources") for _ in range(200)]
    assert draws == [second.draw("renewal_resources") for _ in range(200)]
    errors = sum(1 for d in draws if d.action is not None)
    assert 40 < errors < 80
    assert all(0.001 <= d.latency <= 0.009 for d in draws)


def test_terminal_rules_do_not_stack() -> None:
    plan = FaultPlan.parse({"rules": [rule("error", count=1), rule("hang", count=1)]})
    assert plan.draw("x").kinds == ["error"]
    assert plan.draw("x").kinds == ["hang"]
    assert plan.draw("x").kinds == []


def test_normal_latency_is_never_negative() -> None:
    plan = FaultPlan.parse({"seed": 1, "rules": [rule("latency", mean_ms=1, stddev_ms=50)]})
    assert all(plan.draw("x").latency >= 0 for _ in range(100))
