"""``issue_coupon``: issue cash coupons from a partner quota. Money moves; no idempotency key.

The service writes a marker with the command id into the coupon's ``memo``; the API keeps the
memo with its issue records (``remark``). After an uncertain call the handler looks for records
carrying the marker since the call started: found -> adopt them (customers without a record
were not issued); none -> provably not issued, so the call may be retried.
"""

from __future__ import annotations

from datetime import timedelta

from handlers.batch import all_refused
from handlers.errors import OutcomeUnknown
from handlers.ports import Completed, HandlerContext
from schemas.bss import CouponRecord, CreatePartnerCouponsReq, CreatePartnerCouponsResp
from schemas.commands import IssueCouponCommand
from schemas.coupon import FailedCustomer, IssueCouponResult, IssuedCoupon

__all__ = ["issue_coupon", "memo_for"]

CLOCK_MARGIN = timedelta(minutes=5)
ISSUED_OK = 0  # record ``result``: 0 success, -1 failure


def marker(command_id: str) -> str:
    return f"[bss-relay:{command_id}]"


def memo_for(command_id: str, memo: str | None) -> str:
    return f"{memo} {marker(command_id)}" if memo else marker(command_id)


async def issue_coupon(command: IssueCouponCommand, ctx: HandlerContext) -> Completed:
    if ctx.journal.uncertain_since is not None:
        adopted = await _reconcile(command, ctx)
        if adopted is not None:
            return adopted
        await ctx.journal.call_had_no_effect()
    p = command.payload
    body = CreatePartnerCouponsReq(
        quota_id=p.quota_id,
        customer_ids=list(p.customer_ids),
        face_value=p.face_value,
        valid_time=p.valid_time,
        expire_time=p.expire_time,
        cloud_service_types=list(p.cloud_service_types) if p.cloud_service_types else None,
        product_ids=list(p.product_ids) if p.product_ids else None,
        memo=memo_for(command.command_id, p.memo),
    )
    await ctx.journal.call_starting()
    try:
        answer = await ctx.api.issue_coupons(body)
    except OutcomeUnknown:
        adopted = await _reconcile(command, ctx)
        if adopted is not None:
            return adopted
        await ctx.journal.call_had_no_effect()
        raise
    return _completed(answer)


def _completed(answer: CreatePartnerCouponsResp) -> Completed:
    coupons = [IssuedCoupon(customer_id=c.id, coupon_id=c.coupon_id) for c in answer.coupon_infos]
    failed = [
        FailedCustomer(customer_id=e.id, code=e.error_code, message=e.error_msg)
        for e in answer.error_details
    ]
    if not coupons:
        raise all_refused(
            [(f.customer_id, f.code, f.message) for f in failed],
            fallback_code="RELAY.NOTHING_ISSUED",
            nothing_done="the API issued no coupon",
        )
    return Completed(IssueCouponResult(coupons=coupons, failed_customers=failed), bool(failed))


async def _reconcile(command: IssueCouponCommand, ctx: HandlerContext) -> Completed | None:
    started = ctx.journal.uncertain_since
    assert started is not None
    # Only the records this command could have made: its quota's, and its customer's when it
    # has one. Every record of the partner since the call (the whole deployment's coupons of
    # the last minutes, page after page) would be read into memory to find a handful.
    records = await ctx.api.coupon_issue_records_since(
        started - CLOCK_MARGIN,
        quota_id=command.payload.quota_id,
        customer_id=command.customer_id,
    )
    mine = [r for r in records if _is_mine(r, command.command_id)]
    if not mine:
        return None
    by_customer = {r.customer_id: r for r in mine}
    coupons = [
        IssuedCoupon(customer_id=cid, coupon_id=by_customer[cid].coupon_id or "")
        for cid in command.payload.customer_ids
        if cid in by_customer
    ]
    failed = [
        FailedCustomer(
            customer_id=cid,
            code="RELAY.NOT_ISSUED",
            message="the API's answer was lost; no issue record exists for this customer",
        )
        for cid in command.payload.customer_ids
        if cid not in by_customer
    ]
    return Completed(IssueCouponResult(coupons=coupons, failed_customers=failed), bool(failed))


def _is_mine(record: CouponRecord, command_id: str) -> bool:
    return (
        record.result in (None, ISSUED_OK, str(ISSUED_OK))
        and record.remark is not None
        # the marker is always the memo's end (memo_for): a producer's own memo that quotes
        # another command's marker must not make that command adopt this coupon
        and record.remark.endswith(marker(command_id))
    )
