"""Price inquiries: deterministic prices, the customer's discount, exact decimals, error codes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids

ECS = {"cloud_service_type": "hws.service.type.ec2", "resource_type": "hws.resource.type.vm"}
EVS = {"cloud_service_type": "hws.service.type.ebs", "resource_type": "hws.resource.type.volume"}


def on_demand(**product: Any) -> dict[str, Any]:
    item = {"id": "1", **ECS, "resource_spec": "s6.large.2.linux", "region": "cn-north-4",
            "usage_factor": "Duration", "usage_value": 1, "usage_measure_id": 4,
            "subscription_num": 1}  # fmt: skip
    return {"project_id": ids.ACME_PROJECT_NORTH, "product_infos": [item | product]}


def period(**product: Any) -> dict[str, Any]:
    item = {"id": "a", **EVS, "resource_spec": "SAS", "region": "cn-north-4",
            "resource_size": 100, "size_measure_id": 17, "period_type": 2, "period_num": 3,
            "subscription_num": 2}  # fmt: skip
    return {"project_id": ids.ACME_PROJECT_NORTH, "product_infos": [item | product]}


async def test_on_demand_price_with_discount(acme: SignedClient) -> None:
    answer = await acme.op(
        "list_on_demand_resource_ratings", body=on_demand(usage_value=Decimal("10"))
    )
    assert answer.status == 200
    body = answer.body
    assert (body["official_website_amount"], body["amount"], body["discount_amount"]) == (
        Decimal("6.70"), Decimal("6.03"), Decimal("0.67"),
    )  # fmt: skip
    assert (body["currency"], body["measure_id"]) == ("CNY", 1)
    [result] = body["product_rating_results"]
    assert (result["id"], result["product_id"]) == ("1", "OFFI-ECS-S6-LARGE-2-LINUX")
    [discount] = result["discount_rating_results"]
    assert (discount["discount_type"], discount["amount"]) == (607, Decimal("0.67"))


async def test_amounts_are_exact_json_numbers(acme: SignedClient) -> None:
    # 0.0007 per GB-hour x 3 GB x 0.1 h: a binary float would print 0.00021000000000000001
    body = on_demand(
        **EVS, resource_spec="SAS", resource_size=3, size_measure_id=17, usage_value=Decimal("0.1")
    )
    prepared = acme.prepare("POST", "/v2/bills/ratings/on-demand-resources", body=body)
    async with acme._session.post(
        prepared.url, data=prepared.body, headers=prepared.headers
    ) as resp:
        text = await resp.text()
    assert '"official_website_amount":0.00021,' in text


async def test_subscription_price(globex: SignedClient) -> None:
    body = period() | {"project_id": ids.GLOBEX_PROJECT_NORTH}
    answer = await globex.op("list_rate_on_period_detail", body=body)
    assert answer.status == 200
    official = answer.body["official_website_rating_result"]
    assert official["official_website_amount"] == Decimal("210.00")  # 0.35 x 100 GB x 3 months x 2
    [offer] = answer.body["optional_discount_rating_results"]
    assert (offer["amount"], offer["discount_amount"], offer["best_offer"]) == (
        Decimal("178.50"),
        Decimal("31.50"),
        1,
    )
    assert offer["product_rating_results"][0]["id"] == "a"


async def test_no_discount_no_offer(partner: SignedClient) -> None:
    initech = await partner.assume(ids.AGENCY, ids.INITECH)
    state_project = "72f0550b9c006c986bdd1ef848200770"
    answer = await initech.op(
        "list_rate_on_period_detail", body=period() | {"project_id": state_project}
    )
    assert answer.body["optional_discount_rating_results"] == []


async def test_renewal_price_amounts_are_strings(acme: SignedClient) -> None:
    body = {"resource_ids": ["acme-ecs-01", "acme-evs-01", "acme-ecs-closed", "acme-ecs-pending"],
            "period_type": 3, "period_num": 1, "include_relative_resources": True}  # fmt: skip
    answer = await acme.op("list_renew_rate_on_period", body=body)
    assert answer.status == 200
    assert answer.body["renew_inquiry_results"] == [
        {"resource_id": "acme-ecs-01", "amount": "1377.00"}
    ]
    assert answer.body["official_website_rating_result"] == {"official_website_amount": "1530.00"}
    assert answer.body["optional_discount_rating_results"][0]["discount_amount"] == "153.00"
    codes = {f["resource_id"]: f["error_code"] for f in answer.body["fail_resource_infos"]}
    assert codes == {
        "acme-evs-01": "CBC.30050007",
        "acme-ecs-closed": "CBC.30050009",
        "acme-ecs-pending": "CBC.30050010",
    }


async def test_renewal_price_without_related_resources(acme: SignedClient) -> None:
    body = {"resource_ids": ["acme-ecs-01"], "period_type": 2, "period_num": 1}
    answer = await acme.op("list_renew_rate_on_period", body=body)
    assert answer.body["official_website_rating_result"]["official_website_amount"] == "115.00"


async def test_renewal_price_period_out_of_range_is_per_resource(acme: SignedClient) -> None:
    body = {"resource_ids": ["acme-ecs-01"], "period_type": 2, "period_num": 12}
    answer = await acme.op("list_renew_rate_on_period", body=body)
    assert answer.body["fail_resource_infos"][0]["error_code"] == "CBC.30050008"


async def test_renewal_price_duplicate_ids(acme: SignedClient) -> None:
    body = {"resource_ids": ["acme-ecs-01", "acme-ecs-01"], "period_type": 2, "period_num": 1}
    answer = await acme.op("list_renew_rate_on_period", body=body)
    assert (answer.status, answer.error_code) == (400, "CBC.30050012")


async def test_unknown_product(acme: SignedClient) -> None:
    answer = await acme.op(
        "list_on_demand_resource_ratings", body=on_demand(resource_spec="x9.huge.linux")
    )
    assert (answer.status, answer.error_code) == (400, "CBC.99006006")


async def test_project_must_be_the_customers(acme: SignedClient) -> None:
    foreign = on_demand() | {"project_id": ids.GLOBEX_PROJECT_NORTH}
    assert (
        await acme.op("list_on_demand_resource_ratings", body=foreign)
    ).error_code == "CBC.99006073"
    wrong_region = on_demand() | {"project_id": ids.ACME_PROJECT_SOUTH}
    assert (
        await acme.op("list_on_demand_resource_ratings", body=wrong_region)
    ).error_code == "CBC.99006073"


async def test_usage_unit_and_parameters(acme: SignedClient) -> None:
    assert (
        await acme.op("list_on_demand_resource_ratings", body=on_demand(usage_measure_id=10))
    ).error_code == "CBC.99006050"
    missing_size = on_demand(**EVS, resource_spec="SAS")
    assert (
        await acme.op("list_on_demand_resource_ratings", body=missing_size)
    ).error_code == "CBC.0100"
    assert (
        await acme.op("list_rate_on_period_detail", body=period(period_type=1))
    ).error_code == "CBC.0100"


async def test_partner_credentials_cannot_inquire(partner: SignedClient) -> None:
    answer = await partner.op("list_on_demand_resource_ratings", body=on_demand())
    assert (answer.status, answer.error_code) == (403, "CBC.0151")
