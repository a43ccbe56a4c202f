"""A --data file: lapsed payment deadlines and restricted quotas (beyond the demo set)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import service.sandbox as sandbox_package
from service.api.signer import Signer
from service.sandbox.server import SandboxServer
from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids


def custom_data(tmp_path: Path) -> Path:
    data: dict[str, Any] = json.loads(
        (Path(sandbox_package.__file__).parent / "demo-data.json").read_text()
    )
    for order in data["orders"]:
        if order["order_id"] == "CS2601051000ACM02":
            order["pending_payment_end_time"] = "2026-01-12T10:00:00Z"  # long past
    for quota in data["coupon_quotas"]:
        if quota["quota_id"] == ids.QUOTA_MAIN:
            quota["cloud_service_types"] = ["hws.service.type.ec2"]
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
async def partner(tmp_path: Path) -> AsyncIterator[SignedClient]:
    async with SandboxServer(data=custom_data(tmp_path)) as server, aiohttp.ClientSession() as http:
        yield SignedClient(http, server.url, Signer(ids.PARTNER_AK, ids.PARTNER_SK))


async def test_payment_deadline_passed(partner: SignedClient) -> None:
    acme = await partner.assume(ids.AGENCY, ids.ACME)
    body = {"order_id": "CS2601051000ACM02", "use_coupon": "NO", "use_discount": "NO"}
    answer = await acme.op("pay_orders", body=body)
    assert (answer.status, answer.error_code) == (400, "CBC.99003110")
    again = await acme.op("pay_orders", body=body)
    assert again.error_code == "CBC.99003106"  # the order lapsed (status 4)


async def test_a_lapsed_order_no_longer_blocks_renewal(partner: SignedClient) -> None:
    acme = await partner.assume(ids.AGENCY, ids.ACME)
    body = {
        "resource_ids": ["acme-ecs-pending"],
        "period_type": 2,
        "period_num": 1,
        "is_auto_pay": 1,
    }
    answer = await acme.op("renewal_resources", body=body)
    assert answer.body["fail_resource_infos"] == []


async def test_restrictions_beyond_the_quota(partner: SignedClient) -> None:
    body = {
        "quota_id": ids.QUOTA_MAIN, "customer_ids": [ids.ACME], "face_value": 10,
        "cloud_service_types": ["hws.service.type.ebs"],
    }  # fmt: skip
    answer = await partner.op("create_partner_coupons", body=body)
    assert (answer.status, answer.error_code) == (400, "CBC.99000023")
    inside = await partner.op(
        "create_partner_coupons", body=body | {"cloud_service_types": ["hws.service.type.ec2"]}
    )
    assert inside.status == 200
    assert inside.body["error_details"] == []
