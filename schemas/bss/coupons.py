"""Partner coupon bodies (``reference/bss-api.md`` §9d): quotas, issuing, records, issued list.

Issuing has no idempotency key; the records and issued-coupon lists are what reconciliation
reads after a call whose outcome is unknown, so their ids, amounts and times are typed.
"""

from __future__ import annotations

from pydantic import Field

from schemas.bss.wire import ApiDateTime, ApiNumber, WireDecimal, WireRequest, WireResponse

__all__ = [
    "CouponInfo",
    "CouponQuota",
    "CouponRecord",
    "CouponUseLimit",
    "CreatePartnerCouponsReq",
    "CreatePartnerCouponsResp",
    "ErrorDetail",
    "IssuedPartnerCoupon",
    "ListIssuedPartnerCouponsResp",
    "ListPartnerCouponsRecordResp",
    "ListQuotaCouponsReq",
    "ListQuotaCouponsResp",
    "QuotaLimitInfo",
    "QuotaLimitValue",
]


class CreatePartnerCouponsReq(WireRequest):
    """``POST /v2/promotions/benefits/partner-coupons`` (partner credentials)."""

    quota_id: str = Field(max_length=64)
    customer_ids: list[str] = Field(min_length=1, max_length=100)
    face_value: WireDecimal = Field(gt=0)
    """Sent as a JSON number; exact because it has at most 15 significant digits."""
    valid_time: ApiDateTime | None = None
    expire_time: ApiDateTime | None = None
    cloud_service_types: list[str] | None = Field(default=None, max_length=10)
    product_ids: list[str] | None = Field(default=None, max_length=10)
    memo: str | None = None
    indirect_partner_id: str | None = None


class CouponInfo(WireResponse):
    id: str
    """The customer id the coupon went to."""
    coupon_id: str


class ErrorDetail(WireResponse):
    error_code: str
    error_msg: str = ""
    id: str
    """The customer id the API refused."""


class CreatePartnerCouponsResp(WireResponse):
    coupon_infos: list[CouponInfo] = []
    error_details: list[ErrorDetail] = []


class CouponRecord(WireResponse):
    """One issue/reclaim operation (``list_partner_coupons_record``)."""

    id: str | None = None
    operation_type: str | None = None
    """``1`` issue, ``2`` manual reclaim, ... (``reference/bss-api.md`` §9d-4)."""
    quota_id: str | None = None
    quota_type: int | None = None
    coupon_id: str | None = None
    customer_id: str | None = None
    operation_amount: ApiNumber | None = None
    """Face value on issue; the amount taken back on reclaim."""
    operation_time: ApiDateTime | None = None
    result: str | None = None
    """``0`` success, ``-1`` failure."""
    remark: str | None = None


class ListPartnerCouponsRecordResp(WireResponse):
    total_count: int = 0
    records: list[CouponRecord] = []


class CouponUseLimit(WireResponse):
    use_limiti_info_id: str | None = None  # sic: the API's spelling
    limit_key: str | None = None
    value1: str | None = None
    value2: str | None = None
    value_unit: str | None = None
    limit_type: str | None = None
    promotion_plan_id: str | None = None


class IssuedPartnerCoupon(WireResponse):
    """A coupon the partner issued (``list_issued_partner_coupons``)."""

    coupon_id: str
    status: int | None = None
    """1 not activated, 2 usable, 3 used, 4 expired, 5 reclaimed."""
    customer_id: str | None = None
    coupon_type: int | None = None
    measure_id: int | None = None
    face_value: ApiNumber | None = None
    effective_time: ApiDateTime | None = None
    expire_time: ApiDateTime | None = None
    order_id: str | None = None
    promotion_plan_id: str | None = None
    promotion_plan_name: str | None = None
    promotion_plan_desc: str | None = None
    media_type: int | None = None
    fetch_method: int | None = None
    use_limits: list[CouponUseLimit] = []
    active_time: ApiDateTime | None = None
    last_used_time: ApiDateTime | None = None
    promotion_id: str | None = None
    create_time: ApiDateTime | None = None
    balance: ApiNumber | None = None
    lock_order_id: str | None = None
    is_frozen: str | None = None


class ListIssuedPartnerCouponsResp(WireResponse):
    total_count: int = 0
    user_coupons: list[IssuedPartnerCoupon] = []


class ListQuotaCouponsReq(WireRequest):
    """``POST /v2/partners/coupon-quotas/query``; every field optional."""

    quota_ids: list[str] | None = Field(default=None, max_length=50)
    quota_status_list: list[int] | None = Field(default=None, max_length=5)
    quota_type: int | None = None
    create_time_begin: ApiDateTime | None = None
    create_time_end: ApiDateTime | None = None
    effective_time_begin: ApiDateTime | None = None
    effective_time_end: ApiDateTime | None = None
    expire_time_begin: ApiDateTime | None = None
    expire_time_end: ApiDateTime | None = None
    offset: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=1)
    indirect_partner_id: str | None = None


class QuotaLimitValue(WireResponse):
    value1: str | None = None
    value2: str | None = None


class QuotaLimitInfo(WireResponse):
    limit_key: str | None = None
    limit_values: list[QuotaLimitValue] = []


class CouponQuota(WireResponse):
    quota_id: str
    quota_type: int | None = None
    create_time: ApiDateTime | None = None
    last_update_time: ApiDateTime | None = None
    quota_value: ApiNumber | None = None
    quota_status: int | None = None
    """0 normal, 3 invalid, 4 being adjusted, 5 frozen."""
    balance: ApiNumber | None = None
    """What is left to issue."""
    measure_id: int | None = None
    currency: str | None = None
    effective_time: ApiDateTime | None = None
    expire_time: ApiDateTime | None = None
    limit_infos: list[QuotaLimitInfo] = []


class ListQuotaCouponsResp(WireResponse):
    total_count: int = 0
    quotas: list[CouponQuota] = []
