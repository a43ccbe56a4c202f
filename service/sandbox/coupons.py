"""Issuing and reclaiming partner coupons (the reads are in ``coupon_reads``).

Issuing takes ``face_value`` from the quota's balance once per customer, in the order given; a
customer that cannot receive one is reported in ``error_details`` (HTTP 200) while the others get
theirs. The call's ``memo`` is stored on the coupon and as the ``remark`` of its issue record
(operation_type "1"), which is how a caller finds an issue whose answer it never saw. Failed
per-customer issues of the partner's own customers are recorded too, with result "-1" (stricter:
a reconciler must check ``result``). Reclaiming returns the coupon's remaining balance to its quota.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.sandbox.calls import Call, Reply, no_indirect_partner
from service.sandbox.errors import bad_request, business
from service.sandbox.fields import Fields
from service.sandbox.model import Coupon, CouponQuota, CouponRecord
from service.sandbox.pricebook import CENT

__all__ = ["issue_coupons", "reclaim_coupon"]

MEMO_MAX = 256  # not documented; a stricter cap than a real limit is likely to be
OP_ISSUE, OP_RECLAIM = 1, 2
QUOTA_NORMAL = 0
COUPON_USABLE, COUPON_NOT_ACTIVE, COUPON_RECLAIMED = 2, 1, 5


def issue_coupons(call: Call) -> Reply:
    fields = Fields(
        call.body,
        {
            "quota_id", "customer_ids", "face_value", "valid_time", "expire_time",
            "cloud_service_types", "product_ids", "memo", "indirect_partner_id",
        },
    )  # fmt: skip
    no_indirect_partner(fields.text("indirect_partner_id", max_len=100))
    quota_id = fields.text("quota_id", required=True)
    customer_ids = fields.texts("customer_ids", required=True, min_items=1, max_items=100)
    face = _face_value(fields)
    memo = fields.text("memo", max_len=MEMO_MAX)
    assert quota_id is not None
    assert customer_ids is not None
    quota = _usable_quota(call, quota_id, face)
    template = _coupon_template(call, fields, quota)
    issued, failed = [], []
    for customer_id in customer_ids:
        code, message = _refusal(call, quota, customer_id, face)
        if code:
            failed.append({"error_code": code, "error_msg": message, "id": customer_id})
            _record_failure(call, quota, failed[-1], face, memo)
            continue
        coupon = _issue_one(call, quota, customer_id, face=face, memo=memo, template=template)
        issued.append({"id": customer_id, "coupon_id": coupon.coupon_id})
    return Reply(200, {"coupon_infos": issued, "error_details": failed})


def _face_value(fields: Fields) -> Decimal:
    face = fields.decimal("face_value", required=True)
    assert face is not None
    if face <= 0 or face != face.quantize(CENT):
        raise bad_request("face_value must be greater than 0 with at most 2 decimals")
    return face


def _usable_quota(call: Call, quota_id: str, face: Decimal) -> CouponQuota:
    quota = call.state.quotas.get(quota_id)
    if (
        quota is None
        or quota.partner_id != call.principal.partner.partner_id
        or quota.quota_status != QUOTA_NORMAL
    ):
        raise business("CBC.99000012", "The coupon quota does not exist or its status is abnormal.")
    if not quota.effective_time <= call.now < quota.expire_time:
        raise business("CBC.99000017", "The coupon quota is not effective or has expired.")
    if face < quota.face_value_min:
        raise business(
            "CBC.99000018", f"The face value is below the minimum {quota.face_value_min}."
        )
    if face > quota.face_value_max:
        raise business(
            "CBC.99000019", f"The face value exceeds the maximum {quota.face_value_max}."
        )
    return quota


def _coupon_template(call: Call, fields: Fields, quota: CouponQuota) -> dict[str, Any]:
    """Validity and restrictions shared by every coupon of one call."""
    valid, expire = fields.window("valid_time", "expire_time")
    valid, expire = valid or max(call.now, quota.effective_time), expire or quota.expire_time
    if valid < quota.effective_time or expire > quota.expire_time or valid >= expire:
        raise bad_request("valid_time/expire_time must lie within the quota's validity")
    services = fields.texts("cloud_service_types", max_items=10, max_len=128)
    products = fields.texts("product_ids", max_items=10, max_len=128)
    for wanted, allowed in ((services, quota.cloud_service_types), (products, quota.product_ids)):
        if wanted is not None and allowed and not set(wanted) <= set(allowed):
            raise business("CBC.99000023", "The restrictions exceed the quota's restrictions.")
    return {
        "effective_time": valid,
        "expire_time": expire,
        "cloud_service_types": services
        if services is not None
        else list(quota.cloud_service_types),
        "product_ids": products if products is not None else list(quota.product_ids),
    }


def _refusal(call: Call, quota: CouponQuota, customer_id: str, face: Decimal) -> tuple[str, str]:
    customer = call.state.customers.get(customer_id)
    if customer is None or customer.partner_id != quota.partner_id:
        return ("CBC.99000035", "The customer is not associated with the partner.")
    if customer.association_type != 2:
        return ("CBC.99000014", "Coupons can only be issued to resale customers.")
    if quota.balance < face:
        return ("CBC.99000013", "The coupon quota balance is insufficient.")
    return ("", "")


def _issue_one(
    call: Call, quota: CouponQuota, customer_id: str, *, face: Decimal, memo: str | None,
    template: dict[str, Any],
) -> Coupon:  # fmt: skip
    state, now = call.state, call.now
    coupon = Coupon(
        coupon_id=state.new_id("CP", now, state.coupons),
        partner_id=quota.partner_id,
        customer_id=customer_id,
        quota_id=quota.quota_id,
        coupon_type=1 if quota.quota_type == 0 else 4,
        face_value=face,
        balance=face,
        status=COUPON_USABLE if template["effective_time"] <= now else COUPON_NOT_ACTIVE,
        create_time=now,
        memo=memo,
        **template,
    )
    quota.balance -= face
    quota.last_update_time = now
    state.add_coupon(coupon)
    _record(
        call, quota, coupon_id=coupon.coupon_id, customer_id=customer_id, operation=OP_ISSUE,
        amount=face, remark=memo,
    )  # fmt: skip
    return coupon


def _record(
    call: Call, quota: CouponQuota, *, coupon_id: str, customer_id: str, operation: int,
    amount: Decimal, remark: str | None, result: int = 0,
) -> None:  # fmt: skip
    call.state.add_record(
        CouponRecord(
            id=call.state.new_id("CR", call.now),
            partner_id=quota.partner_id,
            operation_type=operation,
            quota_id=quota.quota_id,
            quota_type=quota.quota_type,
            coupon_id=coupon_id,
            customer_id=customer_id,
            operation_amount=amount,
            operation_time=call.now,
            result=result,
            remark=remark,
        )
    )


def _record_failure(
    call: Call, quota: CouponQuota, failure: dict[str, str], face: Decimal, memo: str | None
) -> None:
    if failure["error_code"] != "CBC.99000035":  # not the partner's customer: nothing to record
        _record(
            call, quota, coupon_id="", customer_id=failure["id"], operation=OP_ISSUE,
            amount=face, remark=memo, result=-1,
        )  # fmt: skip


def reclaim_coupon(call: Call) -> Reply:
    fields = Fields(call.body, {"coupon_id", "indirect_partner_id"})
    indirect = fields.text("indirect_partner_id", max_len=100)
    if indirect == "":
        raise bad_request("indirect_partner_id must not be an empty string")
    no_indirect_partner(indirect)
    coupon_id = fields.text("coupon_id", required=True)
    coupon = call.state.coupons.get(coupon_id or "")
    if coupon is None or coupon.partner_id != call.principal.partner.partner_id:
        raise bad_request(f"the coupon {coupon_id} does not exist")
    if coupon.status == COUPON_RECLAIMED:
        raise bad_request(f"the coupon {coupon_id} has already been reclaimed")
    quota = call.state.quotas[coupon.quota_id]
    amount, coupon.balance, coupon.status = coupon.balance, Decimal("0.00"), COUPON_RECLAIMED
    quota.balance += amount
    quota.last_update_time = call.now
    _record(
        call, quota, coupon_id=coupon.coupon_id, customer_id=coupon.customer_id,
        operation=OP_RECLAIM, amount=amount, remark=None,
    )  # fmt: skip
    return Reply(204)
