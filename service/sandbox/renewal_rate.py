"""Renewal price inquiry (``list_renew_rate_on_period``): what renewing existing resources costs.

Per-resource problems are reported inside ``fail_resource_infos`` with HTTP 200, using the inquiry's
own codes (``CBC.30050007`` not primary, ``…08`` period not available, ``…09`` expired-deleted or
not found, ``…10`` in an unpaid order); a repeated id fails the whole request (``CBC.30050012``).
Amounts are strings. ``renew_inquiry_results[].amount`` is what that resource costs after the
customer's discount (with its attached resources when ``include_relative_resources`` is true).
"""

from __future__ import annotations

from typing import Any

from service.sandbox.calls import Call, Reply, fail_info
from service.sandbox.errors import business
from service.sandbox.fields import Fields
from service.sandbox.model import Resource
from service.sandbox.pricebook import ZERO_QUOTE, Quote
from service.sandbox.pricing import DISCOUNT_TYPE_PARTNER, discount_id
from service.sandbox.renewals import (
    RESOURCE_CLOSED,
    pending_order,
    period_in_range,
    read_period_type,
)
from service.sandbox.wire import plain

__all__ = ["renewal_rate"]

NOT_PRIMARY = ("CBC.30050007", "The resource is not a primary resource.")
BAD_PERIOD = ("CBC.30050008", "The period type or number is not available for this resource.")
NOT_FOUND = ("CBC.30050009", "The resource has expired and been deleted, or does not exist.")
IN_UNPAID_ORDER = ("CBC.30050010", "The resource is in an order pending payment.")


def _ids(fields: Fields) -> list[str]:
    raw = fields.object("resource_ids")
    if isinstance(raw, list) and len(set(map(str, raw))) != len(raw):
        raise business("CBC.30050012", "resource_ids contains duplicate ids.")
    ids = fields.texts("resource_ids", required=True, min_items=1, max_items=10)
    assert ids is not None
    return ids


def _problem(call: Call, rid: str, period_ok: bool) -> tuple[str, str]:
    resource = call.state.resources.get(rid)
    if resource is None or resource.customer_id != call.customer.customer_id:
        return NOT_FOUND
    if resource.status == RESOURCE_CLOSED:
        return NOT_FOUND
    if not resource.is_main_resource:
        return NOT_PRIMARY
    if not period_ok:
        return BAD_PERIOD
    if any(pending_order(call.state, r.resource_id, call.now) for r in call.state.family(resource)):
        return IN_UNPAID_ORDER
    return ("", "")


def renewal_rate(call: Call) -> Reply:
    fields = Fields(
        call.body, {"resource_ids", "period_type", "period_num", "include_relative_resources"}
    )
    ids = _ids(fields)
    period_type = read_period_type(fields)
    period_num = fields.integer("period_num", required=True)
    assert period_num is not None
    related = bool(fields.flag("include_relative_resources"))
    period_ok = period_in_range(period_type, period_num)
    failures, results, overall = [], [], ZERO_QUOTE
    for rid in ids:
        code, message = _problem(call, rid, period_ok)
        if code:
            failures.append(fail_info(rid, code, message))
            continue
        quote = _quote(call, call.state.resources[rid], period_type, period_num, related)
        overall = overall + quote
        results.append({"resource_id": rid, "amount": plain(quote.amount)})
    return Reply(200, _body(call, results, overall, failures))


def _quote(
    call: Call, primary: Resource, period_type: int, period_num: int, related: bool
) -> Quote:
    members = call.state.family(primary) if related else [primary]
    rate = call.customer.discount_rate
    quote = ZERO_QUOTE
    for member in members:
        if member.status != RESOURCE_CLOSED:
            quote = quote + call.state.prices.renewal_quote(member, period_type, period_num, rate)
    return quote


def _body(
    call: Call, results: list[dict[str, str]], overall: Quote, failures: list[dict[str, str]]
) -> dict[str, Any]:
    offers = []
    if call.customer.discount_rate != 1 and results:
        offers.append(
            {
                "discount_id": discount_id(call.customer),
                "amount": plain(overall.amount),
                "official_website_amount": plain(overall.official),
                "discount_amount": plain(overall.discount),
                "discount_type": DISCOUNT_TYPE_PARTNER,
                "discount_name": "Partner discount rate",
                "best_offer": 1,
            }
        )
    return {
        "currency": "CNY",
        "renew_inquiry_results": results,
        "official_website_rating_result": {"official_website_amount": plain(overall.official)},
        "optional_discount_rating_results": offers,
        "fail_resource_infos": failures,
    }
