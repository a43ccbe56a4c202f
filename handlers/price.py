"""``inquire_price``: on-demand, yearly/monthly or renewal price quotes. Read-only, safe to repeat.

All three API answers are mapped onto one ``PriceResult``: totals after discount, list price and
discount, plus one item per product (or per resource for renewals). For period and renewal
quotes the API lists discount options; the one it marks ``best_offer`` is taken, else the
cheapest, else the list price.
"""

from __future__ import annotations

from decimal import Decimal

from handlers.batch import all_refused, failed_resources
from handlers.ports import Completed, HandlerContext
from schemas.bss import (
    DemandProductInfo,
    ListOnDemandResourceRatingsResp,
    ListRateOnPeriodDetailResp,
    ListRenewRateOnPeriodReq,
    ListRenewRateOnPeriodResp,
    OptionalDiscountRatingResult,
    PeriodProductInfo,
    RateOnDemandReq,
    RateOnPeriodReq,
)
from schemas.commands import InquirePriceCommand
from schemas.price import OnDemandInquiry, PeriodInquiry, PriceItem, PriceResult, RenewalInquiry

__all__ = ["inquire_price"]

DEFAULT_CURRENCY = "CNY"  # the API documents a null currency as CNY
ZERO = Decimal(0)
PERIOD_CODES = {"day": 0, "month": 2, "year": 3, "hour": 4}
RENEW_PERIOD_CODES = {"month": 2, "year": 3}


async def inquire_price(command: InquirePriceCommand, ctx: HandlerContext) -> Completed:
    p = command.payload
    await ctx.journal.call_starting(durable=False)  # read-only: safe to repeat
    if isinstance(p, OnDemandInquiry):
        body = RateOnDemandReq(
            project_id=p.project_id,
            product_infos=[DemandProductInfo(**product.model_dump()) for product in p.products],
        )
        return Completed(_on_demand(await ctx.api.rate_on_demand(p.customer_id, body)))
    if isinstance(p, PeriodInquiry):
        period_body = RateOnPeriodReq(
            project_id=p.project_id,
            product_infos=[
                PeriodProductInfo(
                    **product.model_dump(exclude={"period_type"}),
                    period_type=PERIOD_CODES[product.period_type],
                )
                for product in p.products
            ],
        )
        return Completed(_period(await ctx.api.rate_on_period(p.customer_id, period_body)))
    assert isinstance(p, RenewalInquiry)
    renew_body = ListRenewRateOnPeriodReq(
        resource_ids=list(p.resource_ids),
        period_type=RENEW_PERIOD_CODES[p.period_type],
        period_num=p.period_num,
        include_relative_resources=p.include_related,
    )
    return _renewal(await ctx.api.rate_renewal(p.customer_id, renew_body))


def _on_demand(answer: ListOnDemandResourceRatingsResp) -> PriceResult:
    items = [
        PriceItem(
            id=r.id,
            amount=r.amount,
            official_amount=r.official_website_amount,
            discount_amount=r.discount_amount,
        )
        for r in answer.product_rating_results
    ]
    return PriceResult(
        currency=answer.currency or DEFAULT_CURRENCY,
        amount=answer.amount or ZERO,
        official_amount=answer.official_website_amount or ZERO,
        discount_amount=answer.discount_amount or ZERO,
        items=items,
    )


def _best(options: list[OptionalDiscountRatingResult]) -> OptionalDiscountRatingResult | None:
    marked = [o for o in options if o.best_offer == 1]
    if marked:
        return marked[0]
    priced = [o for o in options if o.amount is not None]
    return min(priced, key=lambda o: o.amount or ZERO) if priced else None


def _period(answer: ListRateOnPeriodDetailResp) -> PriceResult:
    official = answer.official_website_rating_result
    official_amount = (official.official_website_amount if official else None) or ZERO
    best = _best(answer.optional_discount_rating_results)
    rated = (
        best.product_rating_results
        if best
        else (official.product_rating_results if official else [])
    )
    items = [
        PriceItem(id=r.id, amount=_item_amount(r), official_amount=r.official_website_amount)
        for r in rated
    ]
    amount = best.amount if best and best.amount is not None else official_amount
    return PriceResult(
        currency=answer.currency or DEFAULT_CURRENCY,
        amount=amount,
        official_amount=official_amount,
        discount_amount=official_amount - amount,
        items=items,
    )


def _item_amount(rating: object) -> Decimal:
    amount = getattr(rating, "amount", None)
    official = getattr(rating, "official_website_amount", None)
    value = amount if amount is not None else official
    return value if isinstance(value, Decimal) else ZERO


def _renewal(answer: ListRenewRateOnPeriodResp) -> Completed:
    failed = failed_resources(answer.fail_resource_infos)
    if not answer.renew_inquiry_results:
        raise all_refused(
            [(f.resource_id, f.code, f.message) for f in failed],
            fallback_code="RELAY.NOTHING_PRICED",
            nothing_done="the API priced no resource",
        )
    official = answer.official_website_rating_result
    official_amount = (official.official_website_amount if official else None) or ZERO
    best = _best(answer.optional_discount_rating_results)
    amount = best.amount if best and best.amount is not None else official_amount
    result = PriceResult(
        currency=answer.currency or DEFAULT_CURRENCY,
        amount=amount,
        official_amount=official_amount,
        discount_amount=official_amount - amount,
        items=[PriceItem(id=r.resource_id, amount=r.amount) for r in answer.renew_inquiry_results],
        failed_resources=failed,
    )
    return Completed(result, partial=bool(failed))
