"""Reads used to reconcile: resources, orders and order details, for partners and customers."""

from __future__ import annotations

from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids


async def test_partner_reads_a_customers_resources(partner: SignedClient) -> None:
    answer = await partner.op(
        "list_pay_per_use_customer_resources", body={"customer_id": ids.ACME, "limit": 100}
    )
    assert answer.status == 200
    assert answer.body["total_count"] == 10
    first = answer.body["data"][0]
    assert first["resource_id"] == "acme-ecs-01"
    assert (first["is_main_resource"], first["expire_policy"], first["expire_time"]) == (
        1,
        0,
        "2027-03-15T16:00:00Z",
    )
    assert first["enterprise_project"] == {"id": "0", "name": "default"}


async def test_resource_filters(partner: SignedClient) -> None:
    base = {"customer_id": ids.ACME}
    with_attached = await partner.op(
        "list_pay_per_use_customer_resources", body=base | {"resource_ids": ["acme-ecs-01"]}
    )
    assert [r["resource_id"] for r in with_attached.body["data"]] == ["acme-ecs-01", "acme-evs-01"]
    main_only = await partner.op(
        "list_pay_per_use_customer_resources",
        body=base | {"resource_ids": ["acme-ecs-01"], "only_main_resource": 1},
    )
    assert main_only.body["total_count"] == 1
    frozen = await partner.op(
        "list_pay_per_use_customer_resources", body=base | {"status_list": [4]}
    )
    assert [r["resource_id"] for r in frozen.body["data"]] == ["acme-ecs-frozen"]
    window = {
        "expire_time_begin": "2027-01-01T00:00:00Z",
        "expire_time_end": "2027-02-01T00:00:00Z",
    }
    expiring = await partner.op("list_pay_per_use_customer_resources", body=base | window)
    assert {r["resource_id"] for r in expiring.body["data"]} == {"acme-ecs-02", "acme-evs-02"}
    in_order = await partner.op(
        "list_pay_per_use_customer_resources", body=base | {"order_id": "CS2601051000ACM02"}
    )
    assert in_order.body["total_count"] == 2
    paged = await partner.op(
        "list_pay_per_use_customer_resources", body=base | {"offset": 9, "limit": 5}
    )
    assert (paged.body["total_count"], len(paged.body["data"])) == (10, 1)


async def test_resource_access_rules(partner: SignedClient, acme: SignedClient) -> None:
    missing = await partner.op("list_pay_per_use_customer_resources", body={})
    assert (missing.status, missing.error_code) == (400, "CBC.0100")
    foreign = await partner.op(
        "list_pay_per_use_customer_resources", body={"customer_id": ids.STARK}
    )
    assert (foreign.status, foreign.error_code) == (403, "CBC.0151")
    own = await acme.op("list_pay_per_use_customer_resources", body={})
    assert own.body["total_count"] == 10
    other = await acme.op("list_pay_per_use_customer_resources", body={"customer_id": ids.GLOBEX})
    assert other.error_code == "CBC.0151"
    too_many = await partner.op(
        "list_pay_per_use_customer_resources", body={"customer_id": ids.ACME, "limit": 101}
    )
    assert too_many.error_code == "CBC.0100"


async def test_orders_list_and_filters(partner: SignedClient, acme: SignedClient) -> None:
    renewed = await acme.op(
        "renewal_resources",
        body={"resource_ids": ["acme-ecs-01"], "period_type": 2, "period_num": 1, "is_auto_pay": 1},
    )
    [order_id] = renewed.body["order_ids"]
    every = await partner.op("list_customer_orders", query=[("limit", 100)])
    assert every.body["total_count"] == 7  # 6 in the data set + the new one
    assert every.body["order_infos"][0]["order_id"] == order_id  # newest first
    mine = await partner.op(
        "list_customer_orders", query=[("customer_id", ids.ACME), ("order_type", 2), ("status", 5)]
    )
    assert [o["order_id"] for o in mine.body["order_infos"]] == [order_id]
    pending = await acme.op("list_customer_orders", query=[("status", 6)])
    assert [o["order_id"] for o in pending.body["order_infos"]] == ["CS2601051000ACM02"]
    window = [
        ("customer_id", ids.ACME),
        ("create_time_begin", "2026-01-01T00:00:00Z"),
        ("create_time_end", "2026-02-01T00:00:00Z"),
    ]
    january = await partner.op("list_customer_orders", query=window)
    assert [o["order_id"] for o in january.body["order_infos"]] == ["CS2601051000ACM02"]
    oldest = await partner.op(
        "list_customer_orders", query=[("order_by", "createTime"), ("limit", 1)]
    )
    assert oldest.body["order_infos"][0]["create_time"] == "2025-03-15T15:50:00Z"


async def test_orders_parameter_errors(partner: SignedClient) -> None:
    too_long = [
        ("create_time_begin", "2025-01-01T00:00:00Z"),
        ("create_time_end", "2026-06-01T00:00:00Z"),
    ]
    assert (await partner.op("list_customer_orders", query=too_long)).error_code == "CBC.0100"
    bad_time = [("create_time_begin", "2025-01-01 00:00:00")]
    assert (await partner.op("list_customer_orders", query=bad_time)).error_code == "CBC.0100"
    repeated = [("status", ["5", "6"])]
    assert (await partner.op("list_customer_orders", query=repeated)).error_code == "CBC.0100"
    foreign = [("customer_id", ids.STARK)]
    assert (await partner.op("list_customer_orders", query=foreign)).error_code == "CBC.0151"


async def test_order_details(
    partner: SignedClient, acme: SignedClient, other_partner: SignedClient
) -> None:
    answer = await partner.op(
        "show_customer_order_details", params={"order_id": "CS2601051000ACM02"}
    )
    assert answer.status == 200
    info = answer.body["order_info"]
    assert (info["status"], info["order_type"], info["user_name"]) == (6, 2, "acme")
    assert info["pending_payment_end_time"] == "2027-12-31T16:00:00Z"
    assert answer.body["total_count"] == 2
    line = answer.body["order_line_items"][0]
    covered = (line["period_type"], line["period_num"], line["effective_time"], line["expire_time"])
    assert covered == (
        2, 1, "2027-02-28T16:00:00Z", "2027-03-28T16:00:00Z",
    )  # fmt: skip
    assert (
        await acme.op("show_customer_order_details", params={"order_id": "CS2601051000ACM02"})
    ).status == 200
    hidden = await other_partner.op(
        "show_customer_order_details", params={"order_id": "CS2601051000ACM02"}
    )
    assert (hidden.status, hidden.error_code) == (400, "CBC.30000010")
