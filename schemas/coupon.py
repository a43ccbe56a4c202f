"""The ``issue_coupon`` command family: issue cash coupons from a partner quota.

Issuing moves money and the API has no idempotency key, so the face value is held to what the
API and the wire encoding can carry exactly (see ``FaceValue``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Self

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from schemas.common import (
    CustomerId,
    Identifier,
    PlainDecimalText,
    StrictModel,
    UtcDateTime,
    check_wire_safe,
    decimal_text,
    trimmed_digits,
    unique_items,
)

__all__ = [
    "MEMO_MAX_LENGTH",
    "FaceValue",
    "FailedCustomer",
    "IssueCouponPayload",
    "IssueCouponResult",
    "IssuedCoupon",
]

# The service appends its own command marker to the memo (to find the coupon again when a call's
# outcome is unknown) and the API documents no maximum memo length, so the producer's part is
# kept short enough that memo plus marker stays a modest string.
MEMO_MAX_LENGTH = 200


def _check_face_value(value: Decimal) -> Decimal:
    """At most 2 decimal places (the API prices in cents) and at most 15 significant digits.

    The second rule is the wire invariant: ``face_value`` goes to the API as a JSON number, and a
    decimal of at most 15 significant digits survives ``float`` unchanged.
    """
    if trimmed_digits(value)[1] < -2:
        raise PydanticCustomError(
            "face_value_decimals",
            "face_value must have at most 2 decimal places, got {value}",
            {"value": decimal_text(value)},
        )
    return check_wire_safe(value)


# At most 2 significant decimal places; trailing zeros ("10.500") change nothing.
FACE_VALUE_PATTERN = r"^[0-9]+(\.[0-9]{1,2}0*)?$"

FaceValue = Annotated[
    Decimal,
    Field(gt=0, allow_inf_nan=False),
    PlainDecimalText,
    AfterValidator(_check_face_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": FACE_VALUE_PATTERN},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "examples": ["10.50"],
        }
    ),
]

ShortList = Annotated[list[Identifier], Field(max_length=10)]


class IssueCouponPayload(StrictModel):
    """Issue one coupon of ``face_value`` to each of 1-100 customers from one quota."""

    quota_id: Identifier
    """The partner's coupon quota to draw from."""
    customer_ids: Annotated[
        list[CustomerId], Field(min_length=1, max_length=100), AfterValidator(unique_items)
    ]
    """1-100 distinct resale customers; each gets one coupon."""
    face_value: FaceValue
    """Value of each coupon, e.g. ``"10.50"``: > 0, at most 2 decimal places and 15 significant
    digits. A decimal string; a JSON number is accepted too."""
    valid_time: UtcDateTime | None = None
    """When the coupons become usable; absent = the quota's validity."""
    expire_time: UtcDateTime | None = None
    """When the coupons expire; absent = the quota's validity."""
    cloud_service_types: ShortList | None = None
    """Restrict use to these services (at most 10); absent = the quota's restriction."""
    product_ids: ShortList | None = None
    """Restrict use to these products (at most 10); absent = the quota's restriction."""
    memo: Annotated[str, Field(max_length=MEMO_MAX_LENGTH)] | None = None
    """Free text stored with the issue record (at most 200 characters)."""

    @model_validator(mode="after")
    def _valid_before_expire(self) -> Self:
        if self.valid_time and self.expire_time and self.valid_time >= self.expire_time:
            raise PydanticCustomError(
                "valid_after_expire", "valid_time must be earlier than expire_time"
            )
        return self


class IssuedCoupon(StrictModel):
    customer_id: str
    coupon_id: str


class FailedCustomer(StrictModel):
    """A customer the API refused to issue to, with the API's own code (e.g. ``CBC.99000013``)."""

    customer_id: str
    code: str
    message: str


class IssueCouponResult(StrictModel):
    coupons: list[IssuedCoupon]
    failed_customers: list[FailedCustomer] = []
