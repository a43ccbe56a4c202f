"""The sandbox's records, and the data-set file that seeds them.

One set of models serves three purposes: validating a ``--data FILE`` (and the built-in
``demo-data.json``), holding the live state (records are mutated in place by the business rules),
and rendering ``GET /_sandbox/state``. A state dump is therefore itself a loadable data set.
Money is ``Decimal`` (rendered as strings in the dump); times are timezone-aware UTC.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field, model_validator

__all__ = [
    "AUTO_RENEW_POLICY",
    "Coupon",
    "CouponQuota",
    "CouponRecord",
    "Customer",
    "Dataset",
    "Order",
    "OrderLine",
    "Partner",
    "PriceEntry",
    "Resource",
]

AUTO_RENEW_POLICY = 3  # expire_policy 3 is the only value that means auto-renew is on

ResourceStatus = Literal[2, 3, 4, 5]  # 2 in use, 3 closed, 4 frozen, 5 expired (grace period)


class _Record(BaseModel):
    # Typos in a data file must fail loudly, not silently become defaults.
    model_config = ConfigDict(extra="forbid")


class Partner(_Record):
    partner_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    name: str = ""
    access_key: str = Field(min_length=1)
    secret_key: str = Field(min_length=1)
    agency_name: str = Field(min_length=1)


class Customer(_Record):
    customer_id: str = Field(min_length=1, max_length=64)
    partner_id: str | None
    account_name: str = Field(min_length=1)
    association_type: Literal[1, 2] = 2  # 1 advisory (顾问销售), 2 resale (代售)
    agency_granted: bool = True  # the customer created the agency trusting its partner
    # Fraction of the list price the customer pays: 0.90 means 10 % off (discount type 607).
    discount_rate: Decimal = Field(default=Decimal(1), gt=0, le=1)
    projects: dict[str, str] = Field(default_factory=dict)  # region code → project id


class Resource(_Record):
    resource_id: str = Field(min_length=1, max_length=64)
    customer_id: str
    resource_name: str = ""
    region_code: str
    project_id: str = ""
    service_type_code: str
    resource_type_code: str
    resource_spec_code: str
    spec_size: Decimal | None = None
    spec_size_measure_id: int | None = None
    is_main_resource: Literal[0, 1]
    parent_resource_id: str | None = None
    status: ResourceStatus = 2
    effective_time: AwareDatetime
    expire_time: AwareDatetime
    expire_policy: int = Field(default=0, ge=0, le=5)
    auto_renew_times: int = Field(default=0, ge=0, le=99)
    auto_renew_period_type: Literal["MONTH", "YEAR"] | None = None
    last_period_type: Literal[2, 3] = 2  # period type of the last order (auto-renew default)
    update_time: AwareDatetime | None = None
    # Derived from the orders when loaded; kept in the dump for inspection only.
    pending_order_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _auto_renew_shorthand(cls, data: Any) -> Any:
        # ``auto_renew`` is how the dump shows expire_policy 3; a data set may use either.
        if isinstance(data, dict) and "auto_renew" in data:
            data = dict(data)
            flag = bool(data.pop("auto_renew"))
            data.setdefault("expire_policy", AUTO_RENEW_POLICY if flag else 0)
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def auto_renew(self) -> bool:
        return self.expire_policy == AUTO_RENEW_POLICY


class OrderLine(_Record):
    order_line_item_id: str
    resource_id: str
    service_type_code: str
    product_id: str
    product_spec_desc: str = ""
    period_type: int
    period_num: int
    effective_time: AwareDatetime
    expire_time: AwareDatetime
    subscription_num: int = 1
    amount_after_discount: Decimal
    official_amount: Decimal


class Order(_Record):
    order_id: str
    customer_id: str
    order_type: int  # 1 new, 2 renewal, ...
    status: int  # 5 completed, 6 pending payment, 4 cancelled, ...
    resource_ids: list[str]
    service_type_code: str = ""
    create_time: AwareDatetime
    payment_time: AwareDatetime | None = None
    pending_payment_end_time: AwareDatetime | None = None
    period_type: Literal[2, 3] | None = None
    period_num: int | None = None
    amount_after_discount: Decimal = Decimal(0)
    official_amount: Decimal = Decimal(0)
    coupon_amount: Decimal = Decimal(0)
    currency: str = "CNY"
    measure_id: int = 1
    lines: list[OrderLine] = Field(default_factory=list)  # generated on load when empty


class CouponQuota(_Record):
    quota_id: str
    partner_id: str
    quota_type: Literal[0, 1] = 0  # 0 cash coupon (代金券), 1 flexi-purchase (现金券)
    quota_value: Decimal
    balance: Decimal
    quota_status: int = 0  # 0 normal; 3 invalid, 4 being adjusted, 5 frozen are not usable
    currency: str = "CNY"
    measure_id: int = 1
    create_time: AwareDatetime
    last_update_time: AwareDatetime | None = None
    effective_time: AwareDatetime
    expire_time: AwareDatetime
    face_value_min: Decimal = Decimal("1.00")  # below: CBC.99000018
    face_value_max: Decimal = Decimal("5000.00")  # above: CBC.99000019
    cloud_service_types: list[str] = Field(default_factory=list)  # empty: unrestricted
    product_ids: list[str] = Field(default_factory=list)


class Coupon(_Record):
    coupon_id: str
    partner_id: str
    customer_id: str
    quota_id: str
    coupon_type: int = 1  # 1 cash coupon, 4 flexi-purchase coupon
    face_value: Decimal
    balance: Decimal
    status: int = 2  # 1 not activated, 2 usable, 3 used, 4 expired, 5 reclaimed
    create_time: AwareDatetime
    effective_time: AwareDatetime
    expire_time: AwareDatetime
    memo: str | None = None
    cloud_service_types: list[str] = Field(default_factory=list)
    product_ids: list[str] = Field(default_factory=list)
    order_id: str | None = None
    last_used_time: AwareDatetime | None = None


class CouponRecord(_Record):
    id: str
    partner_id: str
    operation_type: int  # 1 issue, 2 manual reclaim, ...
    quota_id: str
    quota_type: int = 0
    coupon_id: str
    customer_id: str
    operation_amount: Decimal
    operation_time: AwareDatetime
    result: int = 0  # 0 success, -1 failure
    remark: str | None = None  # the issue call's memo


class PriceEntry(_Record):
    product_id: str
    cloud_service_type: str
    resource_type: str
    resource_spec: str
    regions: list[str] = Field(min_length=1)
    spec_desc: str = ""
    # Linear products are priced per unit of size (GB of disk, Mbit/s of bandwidth).
    linear: bool = False
    size_measure_id: int | None = None
    hourly: Decimal = Field(ge=0)
    monthly: Decimal = Field(ge=0)
    yearly: Decimal = Field(ge=0)


class Dataset(_Record):
    description: str = ""
    partners: list[Partner]
    customers: list[Customer]
    resources: list[Resource] = Field(default_factory=list)
    orders: list[Order] = Field(default_factory=list)
    coupon_quotas: list[CouponQuota] = Field(default_factory=list)
    coupons: list[Coupon] = Field(default_factory=list)
    coupon_records: list[CouponRecord] = Field(default_factory=list)
    price_book: list[PriceEntry] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _drop_dump_only_keys(cls, data: Any) -> Any:
        # A state dump carries bookkeeping that is not part of a data set.
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in _DUMP_ONLY_KEYS}
        return data


_DUMP_ONLY_KEYS = frozenset({"now", "temporary_credentials"})
