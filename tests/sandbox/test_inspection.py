"""The /_sandbox/ routes that tests and the benchmark read."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from service.api.signer import Signer
from service.sandbox.server import SandboxServer
from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control


async def test_state_has_the_contract_fields(control: Control) -> None:
    state = await control.state()
    required = {
        "partners": {"partner_id", "access_key", "secret_key", "agency_name"},
        "customers": {"customer_id", "partner_id"},
        "resources": {
            "resource_id",
            "customer_id",
            "is_main_resource",
            "expire_time",
            "auto_renew",
        },
        "orders": {"order_id", "customer_id", "order_type", "status", "resource_ids"},
        "coupon_quotas": {"quota_id", "partner_id", "balance"},
        "coupons": {"coupon_id", "customer_id", "quota_id", "face_value", "memo"},
    }
    for section, fields in required.items():
        assert state[section], section
        assert all(fields <= set(item) for item in state[section]), section
    quota = next(q for q in state["coupon_quotas"] if q["quota_id"] == ids.QUOTA_MAIN)
    assert quota["balance"] == "10000.00"  # money as decimal strings


async def test_request_log_and_since(partner: SignedClient, control: Control) -> None:
    await partner.op("list_quota_coupons", body={})
    middle = time.time()
    await partner.op("list_customer_orders", query=[("limit", 1)])
    entries = await control.get("requests")
    assert [e["api"] for e in entries] == ["list_quota_coupons", "list_customer_orders"]
    first = entries[0]
    assert set(first) >= {"at", "method", "path", "api", "parent_uid", "source", "status"}
    assert (first["method"], first["path"], first["status"]) == (
        "POST",
        "/v2/partners/coupon-quotas/query",
        200,
    )
    assert (first["parent_uid"], first["source"]) == (ids.PARTNER_ID, "127.0.0.1")
    later = await control.get("requests", since=str(middle))
    assert [e["api"] for e in later] == ["list_customer_orders"]


async def test_request_log_says_when_each_answer_was_ready(
    partner: SignedClient, control: Control
) -> None:
    await control.put(
        "faults",
        {"rules": [{"kind": "latency", "ms": 300, "operations": ["list_customer_orders"]}]},
    )
    await partner.op("list_quota_coupons", body={})
    await partner.op("list_customer_orders", query=[("limit", 1)])
    quick, slow = await control.get("requests")
    assert quick["at"] <= quick["checked_at"] <= quick["done_at"] < slow["at"]
    assert slow["done_at"] - slow["at"] >= 0.3  # the injected latency: the API was busy


async def test_unknown_api_path(partner: SignedClient, control: Control) -> None:
    answer = await partner.call("GET", "/v2/no/such/api")
    assert (answer.status, answer.body["error_code"]) == (404, "APIGW.0101")
    assert answer.body["request_id"] == answer.headers["X-Request-Id"]
    assert (await control.get("counters"))["not_found"] == 1


async def test_reset_restores_data_and_empties_log(acme: SignedClient, control: Control) -> None:
    await acme.op("cancel_auto_renewal_resources", params={"resource_id": "acme-ecs-02"})
    assert not (await control.resource("acme-ecs-02"))["auto_renew"]
    await control.reset()
    assert (await control.resource("acme-ecs-02"))["auto_renew"]
    assert await control.get("requests") == []
    counters = await control.get("counters")
    assert (counters["accepted"], counters["per_api"]) == (0, {})
    assert (
        await acme.op("list_pay_per_use_customer_resources", body={})
    ).status == 200  # keys survive


async def test_counters(partner: SignedClient, acme: SignedClient, control: Control) -> None:
    await partner.op("list_quota_coupons", body={})
    await partner.op("renewal_resources", body={})
    counters = await control.get("counters")
    assert counters["accepted"] == 3  # assume_role (fixture), the list, the refused renewal
    assert counters["by_status"] == {"201": 1, "200": 1, "403": 1}
    assert counters["per_api"]["renewal_resources"] == {"accepted": 1, "403": 1}


async def test_ring_buffer_keeps_the_newest(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(log_size=3) as small:
        client = SignedClient(http, small.url, Signer(ids.PARTNER_AK, ids.PARTNER_SK))
        for limit in range(1, 6):
            await client.op("list_customer_orders", query=[("limit", limit)])
        async with http.get(f"{small.url}/_sandbox/requests") as resp:
            entries = await resp.json()
    assert [e["query"] for e in entries] == ["limit=3", "limit=4", "limit=5"]


async def test_every_response_has_a_request_id(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sandbox.url}/_sandbox/health") as resp:
        assert resp.headers["X-Request-Id"]


async def test_state_narrowed_to_customers_and_sections(
    sandbox: SandboxServer, http: aiohttp.ClientSession, control: Control
) -> None:
    url = f"{sandbox.url}/_sandbox/state?customer_id={ids.ACME}&section=resources&section=orders"
    async with http.get(url) as resp:
        state = await resp.json()
    assert set(state) == {"now", "resources", "orders"}
    assert {r["customer_id"] for r in state["resources"]} == {ids.ACME}
    assert len(state["resources"]) == 10
    assert [o["order_id"] for o in state["orders"]] == ["CS2503151600ACM01", "CS2601051000ACM02"]
    async with http.get(f"{sandbox.url}/_sandbox/state?section=nope") as resp:
        assert resp.status == 400


async def test_log_is_by_arrival_even_when_a_request_finishes_late(
    partner: SignedClient, control: Control
) -> None:
    await control.put(
        "faults", {"rules": [{"kind": "latency", "operations": ["list_quota_coupons"], "ms": 200}]}
    )
    slow = asyncio.create_task(partner.op("list_quota_coupons", body={}))
    await asyncio.sleep(0.05)
    middle = time.time()
    await partner.op("list_customer_orders", query=[("limit", 1)])
    await slow
    entries = await control.get("requests")
    assert [e["api"] for e in entries] == ["list_quota_coupons", "list_customer_orders"]
    later = await control.get("requests", since=str(middle))
    assert [e["api"] for e in later] == ["list_customer_orders"]
