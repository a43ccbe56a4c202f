"""Read endpoints for reconciliation: a customer's yearly/monthly resources, orders, order details.

A partner reads its own customers only (``customer_id`` mandatory for the resource list, optional
for the order list); customer credentials read their own account. Orders are listed newest first
unless ``order_by=createTime``. An order that does not exist or is not visible to the caller is
``CBC.30000010`` (no hint whether it exists elsewhere).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from service.sandbox.calls import Call, Reply, no_indirect_partner, target_customer
from service.sandbox.errors import bad_request, business
from service.sandbox.fields import Fields, query_fields
from service.sandbox.model import Order, OrderLine, Resource
from service.sandbox.orders import add_months
from service.sandbox.state import SandboxState
from service.sandbox.wire import utc_text

__all__ = ["list_orders", "list_resources", "order_details"]

NAMES = {
    "hws.service.type.ec2": "Elastic Cloud Server",
    "hws.service.type.ebs": "Elastic Volume Service",
    "hws.service.type.vpc": "Virtual Private Cloud",
    "hws.resource.type.vm": "Cloud server",
    "hws.resource.type.volume": "Cloud disk",
    "hws.resource.type.ip": "Elastic IP",
    "hws.resource.type.bandwidth": "Bandwidth",
}
RESOURCE_FIELDS = {
    "resource_ids", "order_id", "only_main_resource", "status_list", "offset", "limit",
    "expire_time_begin", "expire_time_end", "service_type_code", "customer_id",
}  # fmt: skip
ORDER_QUERY = {
    "order_id", "customer_id", "create_time_begin", "create_time_end", "service_type_code",
    "status", "order_type", "limit", "offset", "order_by", "payment_time_begin",
    "payment_time_end", "indirect_partner_id", "method",
}  # fmt: skip


def _time(value: datetime | None) -> str | None:
    return utc_text(value) if value is not None else None


def resource_view(state: SandboxState, resource: Resource) -> dict[str, Any]:
    entry = state.prices.for_resource(resource)
    return {
        "id": hashlib.md5(resource.resource_id.encode(), usedforsecurity=False).hexdigest(),
        "resource_id": resource.resource_id,
        "resource_name": resource.resource_name,
        "region_code": resource.region_code,
        "service_type_code": resource.service_type_code,
        "resource_type_code": resource.resource_type_code,
        "resource_type_name": NAMES.get(resource.resource_type_code, ""),
        "service_type_name": NAMES.get(resource.service_type_code, ""),
        "resource_spec_code": resource.resource_spec_code,
        "project_id": resource.project_id,
        "product_id": entry.product_id if entry else "",
        "parent_resource_id": resource.parent_resource_id,
        "is_main_resource": resource.is_main_resource,
        "status": resource.status,
        "effective_time": utc_text(resource.effective_time),
        "expire_time": utc_text(resource.expire_time),
        "expire_policy": resource.expire_policy,
        "product_spec_desc": entry.spec_desc if entry else "",
        "spec_size": resource.spec_size,
        "spec_size_measure_id": resource.spec_size_measure_id,
        "update_time": _time(resource.update_time or resource.effective_time),
        "enterprise_project": {"id": "0", "name": "default"},
    }


def list_resources(call: Call) -> Reply:
    fields = Fields(call.body, RESOURCE_FIELDS)
    customer = target_customer(call, fields.text("customer_id"), required=True)
    assert customer is not None
    only_main = fields.integer("only_main_resource", lo=0, hi=1, default=0)
    statuses = fields.integers("status_list", choices=(2, 3, 4, 5), max_items=4)
    begin, end = fields.window("expire_time_begin", "expire_time_end")
    service = fields.text("service_type_code")
    if service == "":
        raise bad_request("service_type_code must not be empty")
    offset, limit = fields.page()
    rows = _candidates(call.state, customer.customer_id, fields, bool(only_main))
    rows = [
        r
        for r in rows
        if (statuses is None or r.status in statuses)
        and (begin is None or r.expire_time >= begin)
        and (end is None or r.expire_time <= end)
        and (service is None or r.service_type_code == service)
    ]
    page = [resource_view(call.state, r) for r in rows[offset : offset + limit]]
    return Reply(200, {"total_count": len(rows), "data": page})


def _candidates(
    state: SandboxState, customer_id: str, fields: Fields, only_main: bool
) -> list[Resource]:
    ids = fields.texts("resource_ids", max_items=50)
    order_id = fields.text("order_id", max_len=64)
    if ids is None:
        chosen = [state.resources[r] for r in state.resources_by_customer.get(customer_id, ())]
    else:
        chosen = _with_attached(state, customer_id, ids, include=not only_main)
    if only_main:
        chosen = [r for r in chosen if r.is_main_resource]
    if order_id is not None:
        order = state.orders.get(order_id)
        held = set(order.resource_ids) if order and order.customer_id == customer_id else set()
        chosen = [r for r in chosen if r.resource_id in held]
    return chosen


def _with_attached(
    state: SandboxState, customer_id: str, ids: Iterable[str], *, include: bool
) -> list[Resource]:
    out: dict[str, Resource] = {}
    for rid in ids:
        resource = state.resources.get(rid)
        if resource is None or resource.customer_id != customer_id:
            continue
        members = state.family(resource) if include and resource.is_main_resource else [resource]
        out.update((m.resource_id, m) for m in members)
    return list(out.values())


def order_view(order: Order) -> dict[str, Any]:
    discount = order.official_amount - order.amount_after_discount
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "service_type_code": order.service_type_code,
        "service_type_name": NAMES.get(order.service_type_code, ""),
        "source_type": 1,
        "status": order.status,
        "order_type": order.order_type,
        "amount_after_discount": order.amount_after_discount,
        "official_amount": order.official_amount,
        "measure_id": order.measure_id,
        "create_time": utc_text(order.create_time),
        "payment_time": _time(order.payment_time),
        "currency": order.currency,
        "contract_id": None,
        "amount_info": {
            "discounts": [{"discount_type": "607", "discount_amount": discount}]
            if discount
            else [],
            "flexipurchase_coupon_amount": 0,
            "coupon_amount": order.coupon_amount,
            "stored_card_amount": 0,
            "commission_amount": 0,
            "consumed_amount": order.amount_after_discount - order.coupon_amount,
        },
        "enterprise_projects": [],
        "sub_order_infos": [],
        "agent_pay_info": {"paying_agent_id": None, "is_agent_pay": False},
    }


def list_orders(call: Call) -> Reply:
    fields = query_fields(call.query, ORDER_QUERY)
    no_indirect_partner(fields.text("indirect_partner_id"))
    customer = target_customer(call, fields.text("customer_id"), required=False)
    wanted = _order_filter(fields)
    offset, limit = fields.page()
    newest_first = fields.text("order_by", choices=("createTime", "-createTime")) != "createTime"
    if fields.text("method", choices=("oneself", "sub_customer")) == "sub_customer":
        return Reply(200, {"total_count": 0, "order_infos": []})  # no enterprise sub-accounts
    state = call.state
    owners = (
        [customer.customer_id]
        if customer
        else state.customers_by_partner.get(call.principal.partner.partner_id, [])
    )
    rows = [
        state.orders[o]
        for c in owners
        for o in state.orders_by_customer.get(c, ())
        if wanted(state.orders[o])
    ]
    rows.sort(key=lambda o: (o.create_time, o.order_id), reverse=newest_first)
    page = [order_view(o) for o in rows[offset : offset + limit]]
    return Reply(200, {"total_count": len(rows), "order_infos": page})


def _year_window(fields: Fields, begin: str, end: str) -> tuple[datetime | None, datetime | None]:
    start, stop = fields.window(begin, end)
    if start is not None and stop is not None and add_months(start, 12) < stop:
        raise bad_request(f"{begin} and {end} must be at most one year apart")
    return start, stop


def _order_filter(fields: Fields) -> Any:
    order_id = fields.text("order_id")
    service = fields.text("service_type_code")
    status = fields.integer("status")
    order_type = fields.integer("order_type")
    created = _year_window(fields, "create_time_begin", "create_time_end")
    paid = _year_window(fields, "payment_time_begin", "payment_time_end")

    def wanted(order: Order) -> bool:
        return (
            (order_id is None or order.order_id == order_id)
            and (service is None or order.service_type_code == service)
            and (status is None or order.status == status)
            and (order_type is None or order.order_type == order_type)
            and _within(order.create_time, created)
            and (paid == (None, None) or _within(order.payment_time, paid))
        )

    return wanted


def _within(moment: datetime | None, window: tuple[datetime | None, datetime | None]) -> bool:
    begin, end = window
    if moment is None:
        return False
    return (begin is None or moment >= begin) and (end is None or moment <= end)


def line_view(line: OrderLine, order: Order) -> dict[str, Any]:
    return {
        "order_line_item_id": line.order_line_item_id,
        "service_type_code": line.service_type_code,
        "service_type_name": NAMES.get(line.service_type_code, ""),
        "product_id": line.product_id,
        "product_spec_desc": line.product_spec_desc,
        "period_type": line.period_type,
        "period_num": line.period_num,
        "effective_time": utc_text(line.effective_time),
        "expire_time": utc_text(line.expire_time),
        "subscription_num": line.subscription_num,
        "amount_after_discount": line.amount_after_discount,
        "official_amount": line.official_amount,
        "amount_info": {"discounts": [], "coupon_amount": 0, "flexipurchase_coupon_amount": 0},
        "currency": order.currency,
        "category_code": None,
        "product_owner_service": None,
        "commercial_resource": None,
        "base_product_info": None,
        "order_id": order.order_id,
    }


_V2_ONLY = frozenset(
    {"enterprise_projects", "agent_pay_info"}
)  # not in the detail's CustomerOrderV3


def order_details(call: Call) -> Reply:
    fields = query_fields(call.query, {"limit", "offset", "indirect_partner_id"})
    no_indirect_partner(fields.text("indirect_partner_id"))
    offset, limit = fields.page()
    order = call.state.orders.get(call.params["order_id"])
    principal = call.principal
    visible = order is not None and (
        order.customer_id == principal.customer.customer_id
        if principal.customer is not None
        else call.state.is_partners_customer(principal.partner.partner_id, order.customer_id)
    )
    if order is None or not visible:
        raise business("CBC.30000010", "The order does not exist.")
    customer = call.state.customers[order.customer_id]
    info = {k: v for k, v in order_view(order).items() if k not in _V2_ONLY} | {
        "user_name": customer.account_name,
        "pending_payment_end_time": _time(order.pending_payment_end_time),
    }
    lines = [line_view(line, order) for line in order.lines[offset : offset + limit]]
    return Reply(
        200, {"total_count": len(order.lines), "order_info": info, "order_line_items": lines}
    )
