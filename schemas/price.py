"""The ``inquire_price`` command family: price quotes, one mode per API inquiry.

``mode`` selects the API: ``on_demand`` → ``list_on_demand_resource_ratings``, ``period`` →
``list_rate_on_period_detail``, ``renewal`` → ``list_renew_rate_on_period``. Product fields keep
the API's names so a handler copies them across without a mapping table.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.common import (
    DECIMAL_PATTERN,
    CustomerId,
    FailedResource,
    Identifier,
    Money,
    PeriodType,
    ResourceIds,
    StrictModel,
    check_period,
    check_wire_safe,
)

__all__ = [
    "InquirePricePayload",
    "OnDemandInquiry",
    "OnDemandProduct",
    "PeriodInquiry",
    "PeriodProduct",
    "PriceItem",
    "PriceResult",
    "RenewalInquiry",
]

NonEmpty = Annotated[str, Field(min_length=1)]

UsageValue = Annotated[
    Decimal,
    Field(gt=0, allow_inf_nan=False),
    AfterValidator(check_wire_safe),  # the API takes it as a JSON number (see schemas.common)
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DECIMAL_PATTERN},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "examples": ["1"],
        }
    ),
]


class _Product(StrictModel):
    """Fields every priced product has; the API matches on service, resource type, region, spec."""

    id: NonEmpty
    """The caller's id for this line, unique within the request; echoed in the result items."""
    cloud_service_type: NonEmpty
    """e.g. ``hws.service.type.ebs``."""
    resource_type: NonEmpty
    """e.g. ``hws.resource.type.volume``."""
    resource_spec: NonEmpty
    """e.g. ``s2.small.1.linux``, ``SSD``, ``19_bgp``."""
    region: NonEmpty
    """e.g. ``cn-north-4``."""
    available_zone: str | None = None
    resource_size: StrictInt | None = Field(default=None, ge=1)
    """Size of a linear product (disk GB, bandwidth Mbit/s); with ``size_measure_id``."""
    size_measure_id: StrictInt | None = None
    """Unit of ``resource_size`` (15 Mbit/s, 17 GB, 14 count); with ``resource_size``."""
    subscription_num: StrictInt = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _size_with_unit(self) -> Self:
        if (self.resource_size is None) != (self.size_measure_id is None):
            raise PydanticCustomError(
                "size_without_unit",
                "resource_size and size_measure_id must be given together or not at all",
            )
        return self


class OnDemandProduct(_Product):
    usage_factor: NonEmpty
    """Usage factor code, e.g. ``Duration`` or ``upflow``."""
    usage_value: UsageValue
    """How much usage to price: > 0, at most 15 significant digits; a decimal string (a JSON
    number is accepted too)."""
    usage_measure_id: StrictInt
    """Unit of ``usage_value`` (e.g. 4 = hour)."""


class PeriodProduct(_Product):
    period_type: Literal["day", "month", "year", "hour"]
    period_num: StrictInt = Field(ge=1)


_P = TypeVar("_P", bound=_Product)


def _unique_product_ids(products: list[_P]) -> list[_P]:
    seen: set[str] = set()
    for product in products:
        if product.id in seen:
            raise PydanticCustomError(
                "duplicate_product_id",
                "product ids must be unique within a request; '{id}' is used twice",
                {"id": product.id},
            )
        seen.add(product.id)
    return products


_PRODUCTS_RULES = Field(min_length=1, max_length=100)  # the API prices at most 100 per call


class _Inquiry(StrictModel):
    customer_id: CustomerId
    """Whose prices (and discounts): the inquiry is signed with this customer's credentials."""


class OnDemandInquiry(_Inquiry):
    """Price pay-per-use products."""

    mode: Literal["on_demand"]
    project_id: Identifier
    """The customer's project id in the priced region."""
    products: Annotated[list[OnDemandProduct], _PRODUCTS_RULES, AfterValidator(_unique_product_ids)]


class PeriodInquiry(_Inquiry):
    """Price new yearly/monthly subscriptions."""

    mode: Literal["period"]
    project_id: Identifier
    products: Annotated[list[PeriodProduct], _PRODUCTS_RULES, AfterValidator(_unique_product_ids)]


class RenewalInquiry(_Inquiry):
    """Price renewing existing yearly/monthly resources."""

    mode: Literal["renewal"]
    resource_ids: ResourceIds
    period_type: PeriodType
    period_num: StrictInt = Field(ge=1)
    """Months 1-11 or years 1-3, as for ``renew``."""
    include_related: StrictBool = False
    """Also price the resources attached to each primary one."""

    @model_validator(mode="after")
    def _period_in_range(self) -> Self:
        check_period(self.period_type, self.period_num)
        return self


InquirePricePayload = Annotated[
    OnDemandInquiry | PeriodInquiry | RenewalInquiry, Field(discriminator="mode")
]


class PriceItem(StrictModel):
    """One priced line: a product (by the request's ``id``) or a resource (by resource id)."""

    id: str
    amount: Money
    """Price after discounts."""
    official_amount: Money | None = None
    """List price, where the API reports it per line."""
    discount_amount: Money | None = None


class PriceResult(StrictModel):
    """The quote; all amounts in ``currency``, as decimal strings."""

    currency: str
    amount: Money
    """Total after discounts."""
    official_amount: Money
    """Total list price."""
    discount_amount: Money
    items: list[PriceItem]
    failed_resources: list[FailedResource] = []
    """Resources the renewal inquiry could not price (``renewal`` mode only)."""
