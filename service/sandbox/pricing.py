"""Price inquiries: on-demand, yearly/monthly subscription, and renewal of existing resources.

Products are matched in the price book; the customer's ``discount_rate`` is offered as a partner
discount (``discount_type`` 607). ``project_id`` must be one of the signing customer's projects and
every product's ``region`` must be that project's region (``CBC.99006073`` otherwise — stricter
than the reference, which only says the project is the priced region's). On-demand and
subscription amounts are JSON numbers; renewal amounts are strings, as the SDK types them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.sandbox.calls import Call, Reply
from service.sandbox.errors import bad_request, business
from service.sandbox.fields import Fields
from service.sandbox.model import Customer, PriceEntry
from service.sandbox.pricebook import ZERO_QUOTE, Quote, discounted

__all__ = ["DISCOUNT_TYPE_PARTNER", "on_demand_rate", "subscription_rate", "trim"]

DISCOUNT_TYPE_PARTNER = 607
MEASURE_YUAN = 1
HOUR_MEASURE_ID = 4
PERIOD_BOUNDS = {0: 31, 2: 11, 3: 3, 4: 744}  # day, month, year, hour → max period_num

_PRODUCT_KEYS = {"id", "cloud_service_type", "resource_type", "resource_spec", "region"}
_PRODUCT_KEYS |= {"available_zone", "resource_size", "size_measure_id", "subscription_num"}
ON_DEMAND_KEYS = _PRODUCT_KEYS | {"usage_factor", "usage_value", "usage_measure_id"}
PERIOD_KEYS = _PRODUCT_KEYS | {"period_type", "period_num", "fee_installment_mode"}


def trim(value: Decimal) -> Decimal:
    """Drop trailing zeros past the cents: 0.220000 → 0.22, 0.000700 → 0.0007, 5 → 5.00."""
    reduced = value.normalize()
    return reduced if reduced.as_tuple().exponent < -2 else value.quantize(Decimal("0.01"))  # type: ignore[operator]


def discount_id(customer: Customer) -> str:
    return f"PD-{customer.customer_id[:16]}"


def _project_region(customer: Customer, project_id: str) -> str:
    for region, project in customer.projects.items():
        if project == project_id:
            return region
    raise business("CBC.99006073", f"The project {project_id} does not exist.")


def _product(call: Call, item: Fields, region: str) -> PriceEntry:
    service = item.text("cloud_service_type", required=True)
    resource_type = item.text("resource_type", required=True)
    spec = item.text("resource_spec", required=True, max_len=128)
    product_region = item.text("region", required=True)
    item.text("available_zone")
    if product_region != region:
        raise business("CBC.99006073", f"The project does not exist in region {product_region}.")
    assert service is not None
    assert resource_type is not None
    assert spec is not None
    entry = call.state.prices.find(service, resource_type, region, spec)
    if entry is None:
        raise business(
            "CBC.99006006", f"The product {service}/{resource_type}/{spec} is not found."
        )
    return entry


def _size(item: Fields, entry: PriceEntry) -> Decimal | None:
    size = item.integer("resource_size", lo=1)
    measure = item.integer("size_measure_id")
    if not entry.linear:
        return None
    if size is None or measure is None:
        raise bad_request("resource_size and size_measure_id are required for linear products")
    if measure != entry.size_measure_id:
        raise business("CBC.99006050", f"size_measure_id must be {entry.size_measure_id}.")
    return Decimal(size)


def _items(call: Call, fields: Fields, keys: set[str]) -> list[Fields]:
    items = [
        Fields(raw, keys, where="product_infos item")
        for raw in fields.objects("product_infos", max_items=100)
    ]
    ids = [item.text("id", required=True) for item in items]
    if len(set(ids)) != len(ids):
        raise bad_request("product_infos ids must be unique")
    return items


def _discounts(customer: Customer, quote: Quote) -> list[dict[str, Any]]:
    if customer.discount_rate == 1:
        return []
    return [
        {
            "discount_id": discount_id(customer),
            "discount_type": DISCOUNT_TYPE_PARTNER,
            "amount": quote.discount,
            "measure_id": MEASURE_YUAN,
            "discount_name": "Partner discount rate",
        }
    ]


def on_demand_rate(call: Call) -> Reply:
    fields = Fields(call.body, {"project_id", "inquiry_precision", "product_infos"})
    project_id = fields.text("project_id", required=True)
    places = 10 if fields.integer("inquiry_precision", lo=0, hi=1, default=0) else 6
    assert project_id is not None
    region = _project_region(call.customer, project_id)
    results, overall = [], ZERO_QUOTE
    for item in _items(call, fields, ON_DEMAND_KEYS):
        entry = _product(call, item, region)
        size = _size(item, entry)
        hours = _usage_hours(item)
        count = item.integer("subscription_num", required=True, lo=1) or 1
        listed = call.state.prices.hourly_list_price(entry, hours, size) * count
        quote = discounted(listed, call.customer.discount_rate, places)
        overall = overall + quote
        results.append(_on_demand_result(item, entry, call.customer, quote))
    body = _amounts(overall) | {"measure_id": MEASURE_YUAN, "currency": "CNY"}
    return Reply(200, body | {"product_rating_results": results})


def _usage_hours(item: Fields) -> Decimal:
    factor = item.text("usage_factor", required=True)
    value = item.decimal("usage_value", required=True)
    measure = item.integer("usage_measure_id", required=True)
    if (factor or "").lower() != "duration" or measure != HOUR_MEASURE_ID:
        raise business("CBC.99006050", "Only usage_factor Duration in hours (4) is priced.")
    if value is None or value <= 0:
        raise bad_request("usage_value must be greater than 0")
    return value


def _amounts(quote: Quote) -> dict[str, Decimal]:
    return {
        "amount": trim(quote.amount),
        "discount_amount": trim(quote.discount),
        "official_website_amount": trim(quote.official),
    }


def _on_demand_result(
    item: Fields, entry: PriceEntry, customer: Customer, quote: Quote
) -> dict[str, Any]:
    return {
        "id": item.text("id"),
        "product_id": entry.product_id,
        **_amounts(quote),
        "measure_id": MEASURE_YUAN,
        "discount_rating_results": _discounts(customer, quote),
    }


def subscription_rate(call: Call) -> Reply:
    fields = Fields(call.body, {"project_id", "product_infos"})
    project_id = fields.text("project_id", required=True)
    assert project_id is not None
    region = _project_region(call.customer, project_id)
    rated: Rated = []
    for item in _items(call, fields, PERIOD_KEYS):
        entry = _product(call, item, region)
        size = _size(item, entry)
        period_type, period_num = _period(item)
        item.text("fee_installment_mode", choices=("HALF_PAY", "ZERO_PAY", "NA"))
        count = item.integer("subscription_num", required=True, lo=1) or 1
        listed = call.state.prices.period_list_price(entry, period_type, period_num, size) * count
        rated.append(
            (item.text("id") or "", entry, discounted(listed, call.customer.discount_rate))
        )
    return Reply(200, _subscription_body(call.customer, rated))


def _period(item: Fields) -> tuple[int, int]:
    period_type = item.integer("period_type", required=True)
    if period_type not in PERIOD_BOUNDS:
        raise bad_request("period_type must be 0 (day), 2 (month), 3 (year) or 4 (hour)")
    period_num = item.integer("period_num", required=True, lo=1, hi=PERIOD_BOUNDS[period_type])
    assert period_num is not None
    return period_type, period_num


Rated = list[tuple[str, PriceEntry, Quote]]  # (product_infos id, product, quote)


def _subscription_body(customer: Customer, rated: Rated) -> dict[str, Any]:
    overall = sum((quote for _, _, quote in rated), ZERO_QUOTE)
    official = {
        "official_website_amount": overall.official,
        "measure_id": MEASURE_YUAN,
        "product_rating_results": [
            {"id": pid, "product_id": e.product_id, "official_website_amount": q.official,
             "measure_id": MEASURE_YUAN}
            for pid, e, q in rated
        ],
    }  # fmt: skip
    offers = [] if customer.discount_rate == 1 else [_partner_offer(customer, overall, rated)]
    return {
        "official_website_rating_result": official,
        "optional_discount_rating_results": offers,
        "currency": "CNY",
    }


def _partner_offer(customer: Customer, overall: Quote, rated: Rated) -> dict[str, Any]:
    return {
        "discount_id": discount_id(customer),
        **_amounts(overall),
        "measure_id": MEASURE_YUAN,
        "discount_type": DISCOUNT_TYPE_PARTNER,
        "discount_name": "Partner discount rate",
        "best_offer": 1,
        "product_rating_results": [
            {"id": pid, "product_id": e.product_id, **_amounts(q), "measure_id": MEASURE_YUAN}
            for pid, e, q in rated
        ],
    }
