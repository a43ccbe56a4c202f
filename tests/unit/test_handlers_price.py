"""``handlers.price`` against the fakes: each mode's request as the API spells it, and each answer
mapped onto one ``PriceResult`` with exact ``Decimal`` amounts."""

from __future__ import annotations

from decimal import Decimal

import pytest

from handlers.errors import ApiRefused, Disposition
from handlers.price import inquire_price
from schemas.bss import (
    DemandProductInfo,
    DemandProductRatingResult,
    FailResourceInfo,
    ListOnDemandResourceRatingsResp,
    ListRateOnPeriodDetailResp,
    ListRenewRateOnPeriodReq,
    ListRenewRateOnPeriodResp,
    OfficialWebsiteRatingResult,
    OptionalDiscountRatingResult,
    PeriodProductInfo,
    PeriodProductOfficialRatingResult,
    PeriodProductRatingResult,
    RateOnDemandReq,
    RateOnPeriodReq,
    RenewInquiryResult,
)
from schemas.commands import InquirePriceCommand
from schemas.common import FailedResource
from schemas.price import (
    OnDemandInquiry,
    OnDemandProduct,
    PeriodInquiry,
    PeriodProduct,
    PriceItem,
    PriceResult,
    RenewalInquiry,
)
from tests.fakes import World

CUSTOMER = "cust-1"
D = Decimal


@pytest.fixture
def world() -> World:
    return World()


def result_of(done: object) -> PriceResult:
    assert isinstance(done, PriceResult)
    return done


def on_demand_command() -> InquirePriceCommand:
    product = OnDemandProduct(
        id="line-1",
        cloud_service_type="hws.service.type.ec2",
        resource_type="hws.resource.type.vm",
        resource_spec="s6.small.1.linux",
        region="cn-north-4",
        available_zone="cn-north-4a",
        usage_factor="Duration",
        usage_value=D("1.5"),
        usage_measure_id=4,
    )
    return InquirePriceCommand(
        command_id="cmd-1",
        payload=OnDemandInquiry(
            mode="on_demand", customer_id=CUSTOMER, project_id="proj-1", products=[product]
        ),
    )


def period_command() -> InquirePriceCommand:
    products = [
        PeriodProduct(
            id="vm",
            cloud_service_type="hws.service.type.ec2",
            resource_type="hws.resource.type.vm",
            resource_spec="s6.small.1.linux",
            region="cn-north-4",
            period_type="year",
            period_num=1,
        ),
        PeriodProduct(
            id="disk",
            cloud_service_type="hws.service.type.ebs",
            resource_type="hws.resource.type.volume",
            resource_spec="SSD",
            region="cn-north-4",
            resource_size=40,
            size_measure_id=17,
            period_type="hour",
            period_num=5,
            subscription_num=2,
        ),
    ]
    return InquirePriceCommand(
        command_id="cmd-1",
        payload=PeriodInquiry(
            mode="period", customer_id=CUSTOMER, project_id="proj-1", products=products
        ),
    )


def renewal_command(*, include_related: bool = False) -> InquirePriceCommand:
    return InquirePriceCommand(
        command_id="cmd-1",
        payload=RenewalInquiry(
            mode="renewal",
            customer_id=CUSTOMER,
            resource_ids=["r1", "r2", "r3"],
            period_type="month",
            period_num=6,
            include_related=include_related,
        ),
    )


# --- on demand ----------------------------------------------------------------------------------


async def test_on_demand_request_and_answer(world: World) -> None:
    world.api.on_demand_quote = ListOnDemandResourceRatingsResp(
        amount=D("0.123456"),
        discount_amount=D("0.010000"),
        official_website_amount=D("0.133456"),
        currency="USD",
        product_rating_results=[
            DemandProductRatingResult(
                id="line-1",
                amount=D("0.123456"),
                discount_amount=D("0.01"),
                official_website_amount=D("0.133456"),
            )
        ],
    )
    journal = world.journal("cmd-1")
    done = await inquire_price(on_demand_command(), world.context("cmd-1", journal))

    [body] = world.api.sent("rate_on_demand", RateOnDemandReq)
    assert body == RateOnDemandReq(
        project_id="proj-1",
        product_infos=[
            DemandProductInfo(
                id="line-1",
                cloud_service_type="hws.service.type.ec2",
                resource_type="hws.resource.type.vm",
                resource_spec="s6.small.1.linux",
                region="cn-north-4",
                available_zone="cn-north-4a",
                subscription_num=1,
                usage_factor="Duration",
                usage_value=D("1.5"),
                usage_measure_id=4,
            )
        ],
    )
    assert world.api.args_of("rate_on_demand")[0][0] == CUSTOMER
    assert done.result == PriceResult(
        currency="USD",
        amount=D("0.123456"),
        official_amount=D("0.133456"),
        discount_amount=D("0.010000"),
        items=[
            PriceItem(
                id="line-1",
                amount=D("0.123456"),
                official_amount=D("0.133456"),
                discount_amount=D("0.01"),
            )
        ],
    )
    assert not done.partial
    dumped = result_of(done.result).model_dump_json()
    assert '"amount":"0.123456"' in dumped
    assert '"discount_amount":"0.010000"' in dumped
    assert journal.log == ["call_starting(not durable)"]  # read-only: nothing to reconcile
    assert not journal.in_flight


async def test_on_demand_absent_totals_are_zero_and_currency_defaults(world: World) -> None:
    world.api.on_demand_quote = ListOnDemandResourceRatingsResp()
    done = await inquire_price(on_demand_command(), world.context("cmd-1"))
    assert done.result == PriceResult(
        currency="CNY", amount=D(0), official_amount=D(0), discount_amount=D(0), items=[]
    )


# --- period -------------------------------------------------------------------------------------


def official(total: str) -> OfficialWebsiteRatingResult:
    return OfficialWebsiteRatingResult(
        official_website_amount=D(total),
        product_rating_results=[
            PeriodProductOfficialRatingResult(id="vm", official_website_amount=D("1000.00")),
            PeriodProductOfficialRatingResult(id="disk", official_website_amount=D("200.10")),
        ],
    )


def option(
    amount: str, *, best: bool = False, discount_id: str = "d"
) -> OptionalDiscountRatingResult:
    return OptionalDiscountRatingResult(
        discount_id=discount_id,
        amount=D(amount),
        best_offer=1 if best else 0,
        product_rating_results=[
            PeriodProductRatingResult(
                id="vm", amount=D(amount) - D("100.01"), official_website_amount=D("1000.00")
            ),
            PeriodProductRatingResult(id="disk", amount=D("100.01")),  # no official per line
        ],
    )


async def test_period_request_maps_the_period_codes(world: World) -> None:
    world.api.period_quote = ListRateOnPeriodDetailResp(
        official_website_rating_result=official("1")
    )
    await inquire_price(period_command(), world.context("cmd-1"))

    [body] = world.api.sent("rate_on_period", RateOnPeriodReq)
    assert body.project_id == "proj-1"
    assert body.product_infos == [
        PeriodProductInfo(
            id="vm",
            cloud_service_type="hws.service.type.ec2",
            resource_type="hws.resource.type.vm",
            resource_spec="s6.small.1.linux",
            region="cn-north-4",
            subscription_num=1,
            period_type=3,
            period_num=1,
        ),
        PeriodProductInfo(
            id="disk",
            cloud_service_type="hws.service.type.ebs",
            resource_type="hws.resource.type.volume",
            resource_spec="SSD",
            region="cn-north-4",
            resource_size=40,
            size_measure_id=17,
            subscription_num=2,
            period_type=4,
            period_num=5,
        ),
    ]


async def test_period_takes_the_offer_marked_best_even_if_another_is_cheaper(
    world: World,
) -> None:
    world.api.period_quote = ListRateOnPeriodDetailResp(
        currency="CNY",
        official_website_rating_result=official("1200.10"),
        optional_discount_rating_results=[
            option("800.00", discount_id="cheaper"),
            option("900.50", best=True, discount_id="best"),
        ],
    )
    done = await inquire_price(period_command(), world.context("cmd-1"))

    assert done.result == PriceResult(
        currency="CNY",
        amount=D("900.50"),
        official_amount=D("1200.10"),
        discount_amount=D("299.60"),
        items=[
            PriceItem(id="vm", amount=D("800.49"), official_amount=D("1000.00")),
            PriceItem(id="disk", amount=D("100.01")),
        ],
    )
    # Money leaves as the Decimal's own digits, never through a float.
    assert '"discount_amount":"299.60"' in result_of(done.result).model_dump_json()


async def test_period_without_a_marked_offer_takes_the_cheapest(world: World) -> None:
    world.api.period_quote = ListRateOnPeriodDetailResp(
        official_website_rating_result=official("1200.10"),
        optional_discount_rating_results=[
            option("950.00"),
            option("880.20"),
            OptionalDiscountRatingResult(discount_id="unpriced"),
        ],
    )
    result = result_of((await inquire_price(period_command(), world.context("cmd-1"))).result)
    assert (result.amount, result.discount_amount) == (D("880.20"), D("319.90"))
    assert result.items[0] == PriceItem(id="vm", amount=D("780.19"), official_amount=D("1000.00"))


async def test_period_without_offers_is_the_list_price(world: World) -> None:
    world.api.period_quote = ListRateOnPeriodDetailResp(
        official_website_rating_result=official("1200.10")
    )
    done = await inquire_price(period_command(), world.context("cmd-1"))

    assert done.result == PriceResult(
        currency="CNY",
        amount=D("1200.10"),
        official_amount=D("1200.10"),
        discount_amount=D("0.00"),
        items=[
            PriceItem(id="vm", amount=D("1000.00"), official_amount=D("1000.00")),
            PriceItem(id="disk", amount=D("200.10"), official_amount=D("200.10")),
        ],
    )


# --- renewal ------------------------------------------------------------------------------------


async def test_renewal_request_and_answer_with_refused_resources(world: World) -> None:
    world.api.renewal_quote = ListRenewRateOnPeriodResp(
        currency="CNY",
        renew_inquiry_results=[
            RenewInquiryResult(resource_id="r1", amount=D("300.00")),
            RenewInquiryResult(resource_id="r2", amount=D("0.1")),
        ],
        official_website_rating_result=OfficialWebsiteRatingResult(
            official_website_amount=D("330.30")
        ),
        optional_discount_rating_results=[option("300.10", best=True)],
        fail_resource_infos=[
            FailResourceInfo(resource_id="r3", error_code="CBC.99003016", error_msg="gone")
        ],
    )
    done = await inquire_price(renewal_command(include_related=True), world.context("cmd-1"))

    [body] = world.api.sent("rate_renewal", ListRenewRateOnPeriodReq)
    assert body == ListRenewRateOnPeriodReq(
        resource_ids=["r1", "r2", "r3"],
        period_type=2,
        period_num=6,
        include_relative_resources=True,
    )
    assert done.partial
    assert done.result == PriceResult(
        currency="CNY",
        amount=D("300.10"),
        official_amount=D("330.30"),
        discount_amount=D("30.20"),
        items=[
            PriceItem(id="r1", amount=D("300.00")),
            PriceItem(id="r2", amount=D("0.1")),
        ],
        failed_resources=[FailedResource(resource_id="r3", code="CBC.99003016", message="gone")],
    )


async def test_renewal_with_every_resource_priced_is_not_partial(world: World) -> None:
    world.api.renewal_quote = ListRenewRateOnPeriodResp(
        renew_inquiry_results=[RenewInquiryResult(resource_id="r1", amount=D("12.34"))],
        official_website_rating_result=OfficialWebsiteRatingResult(
            official_website_amount=D("12.34")
        ),
    )
    done = await inquire_price(renewal_command(), world.context("cmd-1"))
    assert not done.partial
    assert result_of(done.result).amount == D("12.34")
    assert (
        world.api.sent("rate_renewal", ListRenewRateOnPeriodReq)[0].include_relative_resources
        is False
    )


async def test_renewal_with_nothing_priced_fails_with_the_first_code(world: World) -> None:
    world.api.renewal_quote = ListRenewRateOnPeriodResp(
        fail_resource_infos=[
            FailResourceInfo(resource_id="r1", error_code="CBC.99003100", error_msg="unpaid"),
            FailResourceInfo(resource_id="r2", error_code="CBC.99003016", error_msg="gone"),
        ]
    )
    with pytest.raises(ApiRefused) as caught:
        await inquire_price(renewal_command(), world.context("cmd-1"))
    assert caught.value.code == "CBC.99003100"
    assert caught.value.disposition is Disposition.FAIL
    assert caught.value.message == "r1: CBC.99003100 unpaid; r2: CBC.99003016 gone"


async def test_renewal_with_no_answer_at_all_fails_as_nothing_priced(world: World) -> None:
    world.api.renewal_quote = ListRenewRateOnPeriodResp()
    with pytest.raises(ApiRefused) as caught:
        await inquire_price(renewal_command(), world.context("cmd-1"))
    assert caught.value.code == "RELAY.NOTHING_PRICED"
