"""Reading partner coupons back: quotas, issued coupons, and issue/reclaim records.

``list_partner_coupons_record`` is how a caller finds an issue whose answer it never saw: the
issue call's ``memo`` is the record's ``remark``. Lists page with ``offset``/``limit`` and show
the newest first; a partner sees its own customers only (``CBC.0151`` for another ``customer_id``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from service.sandbox.calls import Call, Reply, no_indirect_partner, target_customer
from service.sandbox.fields import Fields, query_fields
from service.sandbox.model import Coupon, CouponQuota, CouponRecord, Customer
from service.sandbox.wire import utc_text

__all__ = ["list_issued", "list_quotas", "list_records"]


def _time(value: datetime | None) -> str | None:
    return utc_text(value) if value is not None else None


def _partner_of(call: Call) -> str:
    return call.principal.partner.partner_id


def quota_view(quota: CouponQuota) -> dict[str, Any]:
    limits = [
        {"limit_key": key, "limit_values": [{"value1": v, "value2": None} for v in values]}
        for key, values in (
            ("CLOUD_SERVICE_TYPE", quota.cloud_service_types),
            ("PRODUCT_ID", quota.product_ids),
        )
        if values
    ]
    return {
        "quota_id": quota.quota_id,
        "quota_type": quota.quota_type,
        "create_time": utc_text(quota.create_time),
        "last_update_time": _time(quota.last_update_time or quota.create_time),
        "quota_value": quota.quota_value,
        "quota_status": quota.quota_status,
        "balance": quota.balance,
        "measure_id": quota.measure_id,
        "currency": quota.currency,
        "effective_time": utc_text(quota.effective_time),
        "expire_time": utc_text(quota.expire_time),
        "limit_infos": limits,
    }


def list_quotas(call: Call) -> Reply:
    fields = Fields(
        call.body,
        {
            "quota_ids", "quota_status_list", "quota_type", "create_time_begin", "create_time_end",
            "effective_time_begin", "effective_time_end", "expire_time_begin", "expire_time_end",
            "offset", "limit", "indirect_partner_id",
        },
    )  # fmt: skip
    no_indirect_partner(fields.text("indirect_partner_id"))
    ids = fields.texts("quota_ids", max_items=50)
    statuses = fields.integers("quota_status_list", choices=(0, 3, 4, 5), max_items=5)
    quota_type = fields.integer("quota_type", lo=0, hi=1, default=0)
    windows = [
        ("create_time", fields.window("create_time_begin", "create_time_end")),
        ("effective_time", fields.window("effective_time_begin", "effective_time_end")),
        ("expire_time", fields.window("expire_time_begin", "expire_time_end")),
    ]
    offset, limit = fields.page()
    rows = [
        q
        for q in call.state.quotas.values()
        if q.partner_id == _partner_of(call)
        and q.quota_type == quota_type
        and (ids is None or q.quota_id in ids)
        and (statuses is None or q.quota_status in statuses)
        and all(_within(getattr(q, name), window) for name, window in windows)
    ]
    page = [quota_view(q) for q in rows[offset : offset + limit]]
    return Reply(200, {"total_count": len(rows), "quotas": page})


def _within(moment: datetime | None, window: tuple[datetime | None, datetime | None]) -> bool:
    begin, end = window
    if begin is None and end is None:
        return True
    if moment is None:
        return False
    return (begin is None or moment >= begin) and (end is None or moment <= end)


def coupon_view(coupon: Coupon) -> dict[str, Any]:
    return {
        "coupon_id": coupon.coupon_id,
        "status": coupon.status,
        "customer_id": coupon.customer_id,
        "coupon_type": coupon.coupon_type,
        "measure_id": 1,
        "face_value": coupon.face_value,
        "effective_time": utc_text(coupon.effective_time),
        "expire_time": utc_text(coupon.expire_time),
        "order_id": coupon.order_id,
        "promotion_plan_id": None,
        "promotion_plan_name": None,
        "promotion_plan_desc": None,
        "media_type": None,
        "fetch_method": None,
        "use_limits": [],
        "active_time": utc_text(coupon.effective_time),
        "last_used_time": _time(coupon.last_used_time),
        "promotion_id": None,
        "create_time": utc_text(coupon.create_time),
        "balance": coupon.balance,
        "lock_order_id": None,
        "is_frozen": "0",
    }


def _owners(call: Call, customer_id: str | None) -> list[Customer]:
    customer = target_customer(call, customer_id, required=False)
    if customer is not None:
        return [customer]
    ids = call.state.customers_by_partner.get(_partner_of(call), [])
    return [call.state.customers[c] for c in ids]


ISSUED_QUERY = {
    "coupon_id", "customer_id", "order_id", "coupon_type", "status", "create_time_begin",
    "create_time_end", "effective_time_begin", "effective_time_end", "expire_time_begin",
    "expire_time_end", "offset", "limit", "indirect_partner_id",
}  # fmt: skip


def list_issued(call: Call) -> Reply:
    fields = query_fields(call.query, ISSUED_QUERY)
    no_indirect_partner(fields.text("indirect_partner_id"))
    exact = {k: fields.text(k) for k in ("coupon_id", "order_id")}
    numbers = {"coupon_type": fields.integer("coupon_type"), "status": fields.integer("status")}
    windows = {
        name: fields.window(f"{name}_begin", f"{name}_end")
        for name in ("create_time", "effective_time", "expire_time")
    }
    owners = _owners(call, fields.text("customer_id"))
    offset, limit = fields.page()
    rows = [
        c
        for owner in owners
        for c in call.state.coupons_by_customer.get(owner.customer_id, ())
        if c.partner_id == _partner_of(call)
        and all(v is None or getattr(c, k) == v for k, v in (exact | numbers).items())
        and all(_within(getattr(c, name), w) for name, w in windows.items())
    ]
    rows.sort(key=lambda c: (c.create_time, c.coupon_id), reverse=True)
    page = [coupon_view(c) for c in rows[offset : offset + limit]]
    return Reply(200, {"total_count": len(rows), "user_coupons": page})


def record_view(record: CouponRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "operation_type": str(record.operation_type),
        "quota_id": record.quota_id,
        "quota_type": record.quota_type,
        "coupon_id": record.coupon_id,
        "customer_id": record.customer_id,
        "operation_amount": record.operation_amount,
        "operation_time": utc_text(record.operation_time),
        "result": str(record.result),
        "remark": record.remark,
    }


RECORD_QUERY = {
    "operation_types", "quota_id", "quota_type", "coupon_ids", "customer_id",
    "operation_time_begin", "operation_time_end", "result", "offset", "limit",
    "indirect_partner_id",
}  # fmt: skip


def list_records(call: Call) -> Reply:
    fields = query_fields(call.query, RECORD_QUERY, multi=("operation_types", "coupon_ids"))
    no_indirect_partner(fields.text("indirect_partner_id"))
    kinds = fields.integers("operation_types", choices=range(1, 10), max_items=8)
    coupon_ids = fields.texts("coupon_ids", max_items=100)
    quota_id, quota_type = fields.text("quota_id"), fields.integer("quota_type", lo=0, hi=1)
    result = fields.integer("result", lo=-1, hi=0)
    window = fields.window("operation_time_begin", "operation_time_end")
    owners = _owners(call, fields.text("customer_id"))
    offset, limit = fields.page()
    rows = [
        r
        for r in _records_of(call, owners)
        if (kinds is None or r.operation_type in kinds)
        and (coupon_ids is None or r.coupon_id in coupon_ids)
        and (quota_id is None or r.quota_id == quota_id)
        and (quota_type is None or r.quota_type == quota_type)
        and (result is None or r.result == result)
        and _within(r.operation_time, window)
    ]
    rows.sort(key=lambda r: (r.operation_time, r.id), reverse=True)
    page = [record_view(r) for r in rows[offset : offset + limit]]
    return Reply(200, {"total_count": len(rows), "records": page})


def _records_of(call: Call, owners: Iterable[Customer]) -> list[CouponRecord]:
    partner = _partner_of(call)
    return [
        r
        for owner in owners
        for r in call.state.records_by_customer.get(owner.customer_id, ())
        if r.partner_id == partner
    ]
