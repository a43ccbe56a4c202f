"""Partner coupons: quota balance, per-customer failures, memo as the reconciliation key."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from service.api.signer import QueryValue
from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control


def issue(
    quota: str = ids.QUOTA_MAIN, *customers: str, face: Any = Decimal("50.00"), **extra: Any
) -> dict[str, Any]:
    return {
        "quota_id": quota,
        "customer_ids": list(customers) or [ids.ACME],
        "face_value": face,
        **extra,
    }


async def test_issue_takes_face_value_from_the_quota(
    partner: SignedClient, control: Control
) -> None:
    answer = await partner.op(
        "create_partner_coupons", body=issue(ids.QUOTA_MAIN, ids.ACME, ids.GLOBEX, memo="cmd-42")
    )
    assert answer.status == 200
    assert answer.body["error_details"] == []
    assert [c["id"] for c in answer.body["coupon_infos"]] == [ids.ACME, ids.GLOBEX]
    assert (await control.quota(ids.QUOTA_MAIN))["balance"] == "9900.00"
    state = await control.state()
    issued = {c["coupon_id"]: c for c in state["coupons"]}
    coupon = issued[answer.body["coupon_infos"][0]["coupon_id"]]
    assert (coupon["customer_id"], coupon["quota_id"], coupon["face_value"], coupon["memo"]) == (
        ids.ACME, ids.QUOTA_MAIN, "50.00", "cmd-42",
    )  # fmt: skip


async def test_memo_is_the_records_remark(partner: SignedClient) -> None:
    created = await partner.op("create_partner_coupons", body=issue(memo="cmd-7"))
    coupon_id = created.body["coupon_infos"][0]["coupon_id"]
    query: list[tuple[str, QueryValue]] = [
        ("operation_types", ["1", "2"]),
        ("customer_id", ids.ACME),
        ("limit", 5),
    ]
    answer = await partner.op("list_partner_coupons_record", query=query)
    assert answer.status == 200
    newest = answer.body["records"][0]
    assert (newest["coupon_id"], newest["remark"], newest["operation_type"], newest["result"]) == (
        coupon_id,
        "cmd-7",
        "1",
        "0",
    )
    assert newest["operation_amount"] == Decimal("50.00")
    assert answer.body["total_count"] == 2


async def test_insufficient_balance_is_reported_per_customer(
    partner: SignedClient, control: Control
) -> None:
    answer = await partner.op(
        "create_partner_coupons",
        body=issue(ids.QUOTA_LOW, ids.ACME, ids.GLOBEX, face=Decimal("10.00")),
    )
    assert answer.status == 200
    assert [c["id"] for c in answer.body["coupon_infos"]] == [ids.ACME]
    assert answer.body["error_details"] == [
        {
            "error_code": "CBC.99000013",
            "error_msg": "The coupon quota balance is insufficient.",
            "id": ids.GLOBEX,
        }
    ]
    assert (await control.quota(ids.QUOTA_LOW))["balance"] == "5.00"
    failed = await partner.op(
        "list_partner_coupons_record", query=[("customer_id", ids.GLOBEX), ("result", "-1")]
    )
    assert failed.body["total_count"] == 1


async def test_customers_that_cannot_receive(partner: SignedClient) -> None:
    answer = await partner.op(
        "create_partner_coupons", body=issue(ids.QUOTA_MAIN, ids.STARK, ids.HOOLI, "nobody")
    )
    codes = {e["id"]: e["error_code"] for e in answer.body["error_details"]}
    assert codes == {ids.STARK: "CBC.99000035", "nobody": "CBC.99000035", ids.HOOLI: "CBC.99000014"}
    assert answer.body["coupon_infos"] == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (issue(face=Decimal("0")), "CBC.0100"),
        (issue(face=Decimal("-5")), "CBC.0100"),
        (issue(face=Decimal("10.005")), "CBC.0100"),
        (issue(face="10.00"), "CBC.0100"),
        (issue(face=Decimal("0.50")), "CBC.99000018"),
        (issue(face=Decimal("5000.01")), "CBC.99000019"),
        (issue(ids.QUOTA_EXPIRED), "CBC.99000017"),
        (issue(ids.QUOTA_FROZEN), "CBC.99000012"),
        (issue(ids.QUOTA_OTHER), "CBC.99000012"),
        (issue("no-such-quota"), "CBC.99000012"),
        (issue(memo="x" * 257), "CBC.0100"),
        (issue(cloud_service_types=[f"t{i}" for i in range(11)]), "CBC.0100"),
        ({"quota_id": ids.QUOTA_MAIN, "customer_ids": [], "face_value": 1}, "CBC.0100"),
    ],
)
async def test_request_level_errors(
    partner: SignedClient, control: Control, body: dict[str, Any], code: str
) -> None:
    answer = await partner.op("create_partner_coupons", body=body)
    assert (answer.status, answer.error_code) == (400, code)
    assert (await control.quota(ids.QUOTA_MAIN))["balance"] == "10000.00"


async def test_customer_credentials_cannot_issue(acme: SignedClient) -> None:
    answer = await acme.op("create_partner_coupons", body=issue())
    assert (answer.status, answer.error_code) == (403, "CBC.0151")


async def test_reclaim_returns_the_balance(partner: SignedClient, control: Control) -> None:
    answer = await partner.op("reclaim_partner_coupons", body={"coupon_id": "CP2601021000ACM01"})
    assert (answer.status, answer.body) == (204, None)
    assert (await control.quota(ids.QUOTA_MAIN))["balance"] == "10100.00"
    again = await partner.op("reclaim_partner_coupons", body={"coupon_id": "CP2601021000ACM01"})
    assert (again.status, again.error_code) == (400, "CBC.0100")
    records = await partner.op("list_partner_coupons_record", query=[("operation_types", "2")])
    assert records.body["records"][0]["operation_amount"] == Decimal("100.00")


async def test_issued_coupons_list(partner: SignedClient) -> None:
    await partner.op("create_partner_coupons", body=issue(ids.QUOTA_MAIN, ids.GLOBEX))
    everyone = await partner.op("list_issued_partner_coupons", query=[("limit", 10)])
    assert everyone.body["total_count"] == 2
    acme_only = await partner.op("list_issued_partner_coupons", query=[("customer_id", ids.ACME)])
    [coupon] = acme_only.body["user_coupons"]
    assert (coupon["coupon_id"], coupon["status"], coupon["face_value"], coupon["is_frozen"]) == (
        "CP2601021000ACM01", 2, Decimal("100.00"), "0",
    )  # fmt: skip
    paged = await partner.op("list_issued_partner_coupons", query=[("offset", 1), ("limit", 1)])
    assert (paged.body["total_count"], len(paged.body["user_coupons"])) == (2, 1)
    foreign = await partner.op("list_issued_partner_coupons", query=[("customer_id", ids.STARK)])
    assert (foreign.status, foreign.error_code) == (403, "CBC.0151")


async def test_quota_list(partner: SignedClient, other_partner: SignedClient) -> None:
    answer = await partner.op("list_quota_coupons", body={"quota_status_list": [0], "limit": 10})
    quotas = {q["quota_id"]: q for q in answer.body["quotas"]}
    assert set(quotas) == {ids.QUOTA_MAIN, ids.QUOTA_LOW, ids.QUOTA_EXPIRED}
    assert quotas[ids.QUOTA_MAIN]["balance"] == Decimal("10000.00")
    others = await other_partner.op(
        "list_quota_coupons", body={"quota_ids": [ids.QUOTA_MAIN, ids.QUOTA_OTHER]}
    )
    assert [q["quota_id"] for q in others.body["quotas"]] == [ids.QUOTA_OTHER]
