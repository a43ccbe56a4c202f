"""Renewing yearly/monthly resources, and paying or cancelling the orders that creates.

``renewal_resources`` checks each requested id on its own: problems go to ``fail_resource_infos``
(HTTP 200) and the others are renewed together in ONE new renewal order (order_type 2) holding the
primaries and their attached resources. With ``is_auto_pay=1`` the order is paid at once (status 5)
and every resource's ``expire_time`` moves by the period; otherwise it waits in status 6 and its
resources refuse another renewal (``CBC.99003100``) until it is paid (``pay_orders``) or cancelled
(``cancel_customer_order``). An unpaid order lapses (status 4) after its payment deadline.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from service.sandbox.calls import Call, Reply, fail_info
from service.sandbox.errors import bad_request, business
from service.sandbox.fields import Fields
from service.sandbox.model import Coupon, Customer, Order, Resource
from service.sandbox.orders import (
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_PENDING_PAYMENT,
    ORDER_TYPE_RENEWAL,
    build_lines,
    extend,
    total,
)
from service.sandbox.pricebook import PERIOD_MONTH, PERIOD_YEAR
from service.sandbox.state import SandboxState

__all__ = ["cancel_order", "pay_order", "pending_order", "period_in_range", "renew"]

PAYMENT_WINDOW = timedelta(days=7)
RESOURCE_CLOSED = 3
MAX_PERIODS = {PERIOD_MONTH: 11, PERIOD_YEAR: 3}
NOT_FOUND = ("CBC.99003016", "The resource has expired and been deleted, or does not exist.")
NOT_PRIMARY = ("CBC.30010036", "The resource is not a primary resource and cannot be renewed.")
IN_UNPAID_ORDER = ("CBC.99003100", "The resource is in an order pending payment.")


def period_in_range(period_type: int, period_num: int) -> bool:
    return 1 <= period_num <= MAX_PERIODS[period_type]


def read_period_type(fields: Fields) -> int:
    period_type = fields.integer("period_type", required=True)
    if period_type not in MAX_PERIODS:
        raise bad_request("period_type must be 2 (month) or 3 (year)")
    return period_type


def pending_order(state: SandboxState, resource_id: str, now: datetime) -> Order | None:
    """The unpaid order holding a resource; one past its payment deadline lapses here."""
    order_id = state.pending_by_resource.get(resource_id)
    if order_id is None:
        return None
    order = state.orders[order_id]
    deadline = order.pending_payment_end_time
    if deadline is not None and deadline <= now:
        state.close_order(order, ORDER_CANCELLED, now)
        return None
    return order


def _problem(state: SandboxState, customer: Customer, rid: str, now: datetime) -> tuple[str, str]:
    resource = state.resources.get(rid)
    if resource is None or resource.customer_id != customer.customer_id:
        return NOT_FOUND
    if resource.status == RESOURCE_CLOSED:
        return NOT_FOUND
    if not resource.is_main_resource:
        return NOT_PRIMARY
    if any(pending_order(state, r.resource_id, now) for r in state.family(resource)):
        return IN_UNPAID_ORDER
    return ("", "")


def renew(call: Call) -> Reply:
    fields = Fields(
        call.body, {"resource_ids", "period_type", "period_num", "is_auto_pay", "expire_policy"}
    )
    ids = fields.texts("resource_ids", required=True, min_items=1, max_items=10)
    assert ids is not None
    period_type = read_period_type(fields)
    period_num = fields.integer("period_num", required=True)
    assert period_num is not None
    if not period_in_range(period_type, period_num):
        raise business("CBC.99000092", "Period validation failed: months 1-11, years 1-3.")
    auto_pay = fields.integer("is_auto_pay", lo=0, hi=1, default=0)
    fields.integer("expire_policy", lo=0, hi=3)  # deprecated (SDK <= 3.1.145): accepted, ignored
    failures, chosen = [], []
    for rid in ids:
        code, message = _problem(call.state, call.customer, rid, call.now)
        if code:
            failures.append(fail_info(rid, code, message))
        else:
            chosen.append(call.state.resources[rid])
    order_ids = []
    if chosen:
        order = _place(call, chosen, period_type, period_num)
        if auto_pay:
            settle(call.state, order, call.now)
        order_ids.append(order.order_id)
    return Reply(200, {"order_ids": order_ids, "fail_resource_infos": failures})


def _place(call: Call, primaries: list[Resource], period_type: int, period_num: int) -> Order:
    state, now = call.state, call.now
    order_id = state.new_id("CS", now, state.orders)
    covered = [r for p in primaries for r in state.family(p) if r.status != RESOURCE_CLOSED]
    lines = build_lines(
        order_id,
        covered,
        state.prices,
        period_type=period_type,
        period_num=period_num,
        rate=call.customer.discount_rate,
    )
    quote = total(lines)
    order = Order(
        order_id=order_id,
        customer_id=call.customer.customer_id,
        order_type=ORDER_TYPE_RENEWAL,
        status=ORDER_PENDING_PAYMENT,
        resource_ids=[r.resource_id for r in covered],
        service_type_code=primaries[0].service_type_code,
        create_time=now,
        pending_payment_end_time=now + PAYMENT_WINDOW,
        period_type=period_type,  # type: ignore[arg-type]  # checked by read_period_type
        period_num=period_num,
        amount_after_discount=quote.amount,
        official_amount=quote.official,
        lines=lines,
    )
    state.add_order(order)
    return order


def settle(state: SandboxState, order: Order, now: datetime) -> None:
    """Pay an order: its resources move by the period and are free for the next renewal."""
    extend([state.resources[r] for r in order.resource_ids], order, now)
    state.close_order(order, ORDER_COMPLETED, now)


def _customer_order(call: Call, order_id: str) -> Order:
    """The signing customer's order, still pending payment."""
    order = call.state.orders.get(order_id)
    if order is None or order.customer_id != call.customer.customer_id:
        raise business("CBC.30000010", "The order is invalid or does not exist.")
    deadline = order.pending_payment_end_time
    if order.status == ORDER_PENDING_PAYMENT and deadline is not None and deadline <= call.now:
        call.state.close_order(order, ORDER_CANCELLED, call.now)
        raise business("CBC.99003110", "The payment deadline of the order has passed.")
    if order.status != ORDER_PENDING_PAYMENT:
        raise business("CBC.99003106", "The order status has changed (paid or cancelled).")
    return order


def pay_order(call: Call) -> Reply:
    fields = Fields(
        call.body, {"order_id", "use_coupon", "use_discount", "coupon_infos", "discount_infos"}
    )
    order_id = fields.text("order_id", required=True)
    assert order_id is not None
    coupons = _infos(fields, "use_coupon", "coupon_infos", {300, 301, 302, 303}, max_items=3)
    _infos(fields, "use_discount", "discount_infos", {0, 2, 3, 609}, max_items=1)
    order = _customer_order(call, order_id)
    usable = [_usable_coupon(call, coupon_id) for coupon_id in coupons]
    for coupon in usable:
        _apply_coupon(coupon, order, call.now)
    settle(call.state, order, call.now)
    return Reply(204)


def _infos(fields: Fields, switch: str, name: str, types: set[int], *, max_items: int) -> list[str]:
    """Ids listed under ``name``; present exactly when ``switch`` is ``YES``."""
    use = fields.text(switch, required=True, choices=("YES", "NO"))
    if use == "NO":
        if fields.has(name):
            raise bad_request(f"{name} must be omitted when {switch} is NO")
        return []
    ids = []
    for raw in fields.objects(name, max_items=max_items):
        item = Fields(raw, {"id", "type"}, where=f"{name} item")
        ids.append(item.text("id", required=True) or "")
        if item.integer("type", required=True) not in types:
            raise bad_request(f"{name}.type must be one of {sorted(types)}")
    return ids


def _usable_coupon(call: Call, coupon_id: str) -> Coupon:
    coupon = call.state.coupons.get(coupon_id)
    ok = (
        coupon is not None
        and coupon.customer_id == call.customer.customer_id
        and coupon.status == 2
        and coupon.effective_time <= call.now < coupon.expire_time
    )
    if not ok or coupon is None:
        raise business("CBC.99003112", f"The coupon {coupon_id} is used up or cannot be used.")
    return coupon


def _apply_coupon(coupon: Coupon, order: Order, now: datetime) -> None:
    due = order.amount_after_discount - order.coupon_amount
    used = min(coupon.balance, max(due, Decimal(0)))
    coupon.balance -= used
    coupon.status = 3 if coupon.balance == 0 else coupon.status
    coupon.order_id, coupon.last_used_time = order.order_id, now
    order.coupon_amount += used


def cancel_order(call: Call) -> Reply:
    fields = Fields(call.body, {"order_id"})
    order_id = fields.text("order_id", required=True)
    assert order_id is not None
    order = _customer_order(call, order_id)
    call.state.close_order(order, ORDER_CANCELLED, call.now)
    return Reply(204)
