"""Order arithmetic shared by renewals, payments and the data-set loader: pure functions.

Renewing moves ``expire_time`` by calendar months (a year is 12 months); a day that does not exist
in the target month is clamped to the month's last day (31 Jan + 1 month = 28/29 Feb), and the time
of day is kept. Huawei's rule that a resource in its grace or retention period is extended from its
original expiry (not from today) falls out of always adding to ``expire_time``.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Literal

from service.sandbox.model import Order, OrderLine, Resource
from service.sandbox.pricebook import PERIOD_YEAR, PriceBook, Quote

__all__ = [
    "ORDER_CANCELLED",
    "ORDER_COMPLETED",
    "ORDER_PENDING_PAYMENT",
    "ORDER_TYPE_NEW",
    "ORDER_TYPE_RENEWAL",
    "add_months",
    "build_lines",
    "extend",
    "period_months",
]

ORDER_TYPE_NEW, ORDER_TYPE_RENEWAL = 1, 2
ORDER_CANCELLED, ORDER_COMPLETED, ORDER_PENDING_PAYMENT = 4, 5, 6
RESOURCE_IN_USE: Literal[2] = 2


def add_months(moment: datetime, months: int) -> datetime:
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def period_months(period_type: int, period_num: int) -> int:
    return period_num * 12 if period_type == PERIOD_YEAR else period_num


def build_lines(
    order_id: str,
    resources: Sequence[Resource],
    prices: PriceBook,
    *,
    period_type: int,
    period_num: int,
    rate: Decimal,
) -> list[OrderLine]:
    """One line per resource: the period it will cover from its current expiry, and its price."""
    months = period_months(period_type, period_num)
    lines = []
    for index, resource in enumerate(resources, start=1):
        entry = prices.for_resource(resource)
        quote = prices.renewal_quote(resource, period_type, period_num, rate)
        lines.append(
            OrderLine(
                order_line_item_id=f"{order_id}-{index:03d}",
                resource_id=resource.resource_id,
                service_type_code=resource.service_type_code,
                product_id=entry.product_id if entry else "",
                product_spec_desc=entry.spec_desc if entry else "",
                period_type=period_type,
                period_num=period_num,
                effective_time=resource.expire_time,
                expire_time=add_months(resource.expire_time, months),
                amount_after_discount=quote.amount,
                official_amount=quote.official,
            )
        )
    return lines


def total(lines: Sequence[OrderLine]) -> Quote:
    return Quote(
        sum((line.official_amount for line in lines), Decimal("0.00")),
        sum((line.amount_after_discount for line in lines), Decimal("0.00")),
    )


def extend(resources: Sequence[Resource], order: Order, now: datetime) -> None:
    """Apply a paid renewal: every resource of the order moves by the order's period."""
    assert order.period_type is not None
    assert order.period_num is not None
    months = period_months(order.period_type, order.period_num)
    for resource in resources:
        resource.expire_time = add_months(resource.expire_time, months)
        resource.status = RESOURCE_IN_USE
        resource.update_time = now
