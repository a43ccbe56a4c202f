"""Renewing: per-resource failures, one order per call, auto-pay, pending orders, pay and cancel."""

from __future__ import annotations

from typing import Any

import pytest

from service.sandbox.signed_client import SignedClient
from tests.sandbox.conftest import Control


def renew_body(
    *ids: str, period_type: int = 2, period_num: int = 1, auto_pay: int = 1
) -> dict[str, Any]:
    return {
        "resource_ids": list(ids),
        "period_type": period_type,
        "period_num": period_num,
        "is_auto_pay": auto_pay,
    }


async def test_auto_paid_renewal_moves_expiry_of_primary_and_attached(
    acme: SignedClient, control: Control
) -> None:
    answer = await acme.op("renewal_resources", body=renew_body("acme-ecs-01", period_num=2))
    assert answer.status == 200
    assert answer.body["fail_resource_infos"] == []
    [order_id] = answer.body["order_ids"]
    assert (await control.resource("acme-ecs-01"))["expire_time"] == "2027-05-15T16:00:00Z"
    assert (await control.resource("acme-evs-01"))["expire_time"] == "2027-05-15T16:00:00Z"
    order = await control.order(order_id)
    assert (order["order_type"], order["status"]) == (2, 5)
    assert order["resource_ids"] == ["acme-ecs-01", "acme-evs-01"]
    # s6.large.2 115.00/month + 100 GB SAS at 0.35 → 150.00 x 2 months, 10 % off
    assert (order["official_amount"], order["amount_after_discount"]) == ("300.00", "270.00")


async def test_month_arithmetic_clamps_to_the_end_of_month(
    acme: SignedClient, control: Control
) -> None:
    await acme.op("renewal_resources", body=renew_body("acme-ecs-02"))
    assert (await control.resource("acme-ecs-02"))["expire_time"] == "2027-02-28T16:00:00Z"


async def test_yearly_renewal(acme: SignedClient, control: Control) -> None:
    await acme.op("renewal_resources", body=renew_body("acme-eip-01", period_type=3, period_num=3))
    assert (await control.resource("acme-bw-01"))["expire_time"] == "2030-06-30T16:00:00Z"


async def test_per_resource_failures_do_not_stop_the_others(
    acme: SignedClient, control: Control
) -> None:
    ids = (
        "acme-ecs-01",
        "acme-evs-01",
        "acme-ecs-closed",
        "acme-ecs-pending",
        "no-such",
        "globex-ecs-01",
    )
    answer = await acme.op("renewal_resources", body=renew_body(*ids))
    assert answer.status == 200
    assert len(answer.body["order_ids"]) == 1
    codes = {f["resource_id"]: f["error_code"] for f in answer.body["fail_resource_infos"]}
    assert codes == {
        "acme-evs-01": "CBC.30010036",
        "acme-ecs-closed": "CBC.99003016",
        "acme-ecs-pending": "CBC.99003100",
        "no-such": "CBC.99003016",
        "globex-ecs-01": "CBC.99003016",  # another customer's resource is not found
    }
    assert all(
        set(f) == {"error_code", "error_msg", "resource_id"}
        for f in answer.body["fail_resource_infos"]
    )


async def test_all_failing_creates_no_order(acme: SignedClient) -> None:
    answer = await acme.op("renewal_resources", body=renew_body("acme-ecs-closed"))
    assert answer.status == 200
    assert answer.body["order_ids"] == []


async def test_unpaid_renewal_blocks_the_next_until_paid(
    acme: SignedClient, control: Control
) -> None:
    first = await acme.op("renewal_resources", body=renew_body("acme-ecs-01", auto_pay=0))
    [order_id] = first.body["order_ids"]
    order = await control.order(order_id)
    assert order["status"] == 6
    assert (await control.resource("acme-ecs-01"))["expire_time"] == "2027-03-15T16:00:00Z"
    assert (await control.resource("acme-evs-01"))["pending_order_id"] == order_id
    second = await acme.op("renewal_resources", body=renew_body("acme-ecs-01"))
    assert second.body["fail_resource_infos"][0]["error_code"] == "CBC.99003100"
    paid = await acme.op(
        "pay_orders", body={"order_id": order_id, "use_coupon": "NO", "use_discount": "NO"}
    )
    assert paid.status == 204
    assert (await control.order(order_id))["status"] == 5
    assert (await control.resource("acme-ecs-01"))["expire_time"] == "2027-04-15T16:00:00Z"
    third = await acme.op("renewal_resources", body=renew_body("acme-ecs-01"))
    assert third.body["fail_resource_infos"] == []


async def test_paying_twice_is_refused(acme: SignedClient) -> None:
    body = {"order_id": "CS2601051000ACM02", "use_coupon": "NO", "use_discount": "NO"}
    assert (await acme.op("pay_orders", body=body)).status == 204
    again = await acme.op("pay_orders", body=body)
    assert (again.status, again.error_code) == (400, "CBC.99003106")


async def test_paying_with_a_coupon(acme: SignedClient, control: Control) -> None:
    body = {
        "order_id": "CS2601051000ACM02",
        "use_coupon": "YES",
        "coupon_infos": [{"id": "CP2601021000ACM01", "type": 301}],
        "use_discount": "NO",
    }
    assert (await acme.op("pay_orders", body=body)).status == 204
    state = await control.state()
    coupon = next(c for c in state["coupons"] if c["coupon_id"] == "CP2601021000ACM01")
    assert coupon["balance"] == "58.42"  # 100.00 - 41.58 (the order's discounted amount)
    assert (await control.order("CS2601051000ACM02"))["coupon_amount"] == "41.58"


async def test_pay_parameter_rules(acme: SignedClient) -> None:
    coupons_with_no = {
        "order_id": "CS2601051000ACM02",
        "use_coupon": "NO",
        "use_discount": "NO",
        "coupon_infos": [],
    }
    assert (await acme.op("pay_orders", body=coupons_with_no)).error_code == "CBC.0100"
    unknown = {"order_id": "CS-nope", "use_coupon": "NO", "use_discount": "NO"}
    assert (await acme.op("pay_orders", body=unknown)).error_code == "CBC.30000010"
    bad_coupon = {
        "order_id": "CS2601051000ACM02", "use_coupon": "YES", "use_discount": "NO",
        "coupon_infos": [{"id": "CP-nope", "type": 301}],
    }  # fmt: skip
    assert (await acme.op("pay_orders", body=bad_coupon)).error_code == "CBC.99003112"


async def test_cancelling_the_pending_order_frees_the_resource(
    acme: SignedClient, control: Control
) -> None:
    answer = await acme.op("cancel_customer_order", body={"order_id": "CS2601051000ACM02"})
    assert answer.status == 204
    assert (await control.order("CS2601051000ACM02"))["status"] == 4
    renewed = await acme.op("renewal_resources", body=renew_body("acme-ecs-pending"))
    assert renewed.body["fail_resource_infos"] == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (renew_body("acme-ecs-01", period_num=12), "CBC.99000092"),
        (renew_body("acme-ecs-01", period_type=3, period_num=4), "CBC.99000092"),
        (renew_body("acme-ecs-01", period_num=0), "CBC.99000092"),
        (renew_body("acme-ecs-01", period_type=1), "CBC.0100"),
        (renew_body("acme-ecs-01", auto_pay=2), "CBC.0100"),
        (renew_body(*[f"r{i}" for i in range(11)]), "CBC.0100"),
        (renew_body(), "CBC.0100"),
        (renew_body("acme-ecs-01", "acme-ecs-01"), "CBC.0100"),
        ({"resourceIds": ["acme-ecs-01"], "period_type": 2, "period_num": 1}, "CBC.0100"),
        ({"resource_ids": ["acme-ecs-01"], "period_type": "2", "period_num": 1}, "CBC.0100"),
    ],
)
async def test_request_level_errors(
    acme: SignedClient, control: Control, body: dict[str, Any], code: str
) -> None:
    before = len((await control.state())["orders"])
    answer = await acme.op("renewal_resources", body=body)
    assert (answer.status, answer.error_code) == (400, code)
    assert set(answer.body) == {"error_code", "error_msg"}
    assert len((await control.state())["orders"]) == before


async def test_deprecated_expire_policy_is_accepted(acme: SignedClient) -> None:
    body = {**renew_body("acme-ecs-01"), "expire_policy": 0}
    assert (await acme.op("renewal_resources", body=body)).status == 200


async def test_partner_credentials_cannot_renew(partner: SignedClient) -> None:
    answer = await partner.op("renewal_resources", body=renew_body("acme-ecs-01"))
    assert (answer.status, answer.error_code) == (403, "CBC.0151")
