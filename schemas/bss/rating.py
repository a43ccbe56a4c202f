"""Price inquiry bodies (``reference/bss-api.md`` §9c): on-demand, yearly/monthly, renewal.

Amounts are ``Decimal``. The on-demand and period inquiries send them as JSON numbers
(``ApiNumber``); the renewal inquiry sends strings (``ApiDecimalString``).
"""

from __future__ import annotations

from pydantic import Field

from schemas.bss.renewal import FailResourceInfo
from schemas.bss.wire import ApiDecimalString, ApiNumber, WireDecimal, WireRequest, WireResponse

__all__ = [
    "DemandDiscountRatingResult",
    "DemandProductInfo",
    "DemandProductRatingResult",
    "ListOnDemandResourceRatingsResp",
    "ListRateOnPeriodDetailResp",
    "ListRenewRateOnPeriodReq",
    "ListRenewRateOnPeriodResp",
    "OfficialWebsiteRatingResult",
    "OptionalDiscountRatingResult",
    "PeriodProductInfo",
    "PeriodProductOfficialRatingResult",
    "PeriodProductRatingResult",
    "RateOnDemandReq",
    "RateOnPeriodReq",
    "RenewInquiryResult",
]


class _ProductInfo(WireRequest):
    id: str
    cloud_service_type: str
    resource_type: str
    resource_spec: str
    region: str
    available_zone: str | None = None
    resource_size: int | None = None
    size_measure_id: int | None = None
    subscription_num: int = Field(ge=1)


class DemandProductInfo(_ProductInfo):
    usage_factor: str
    usage_value: WireDecimal
    usage_measure_id: int


class RateOnDemandReq(WireRequest):
    """``POST /v2/bills/ratings/on-demand-resources``."""

    project_id: str
    inquiry_precision: int | None = None
    """0 (default): up to 6 decimals; 1: up to 10 decimals."""
    product_infos: list[DemandProductInfo] = Field(min_length=1, max_length=100)


class DemandDiscountRatingResult(WireResponse):
    discount_id: str | None = None
    discount_type: int | None = None
    amount: ApiNumber | None = None
    measure_id: int | None = None
    discount_name: str | None = None


class DemandProductRatingResult(WireResponse):
    id: str
    """The request's product ``id``."""
    product_id: str | None = None
    amount: ApiNumber
    discount_amount: ApiNumber | None = None
    official_website_amount: ApiNumber | None = None
    measure_id: int | None = None
    discount_rating_results: list[DemandDiscountRatingResult] = []


class ListOnDemandResourceRatingsResp(WireResponse):
    amount: ApiNumber | None = None
    """Total after discounts."""
    discount_amount: ApiNumber | None = None
    official_website_amount: ApiNumber | None = None
    """Total list price."""
    measure_id: int | None = None
    """1 = yuan."""
    currency: str | None = None
    """``CNY`` when null on the CN site."""
    product_rating_results: list[DemandProductRatingResult] = []


class PeriodProductInfo(_ProductInfo):
    period_type: int
    """0 day, 2 month, 3 year, 4 hour."""
    period_num: int = Field(ge=1)
    fee_installment_mode: str | None = None


class RateOnPeriodReq(WireRequest):
    """``POST /v2/bills/ratings/period-resources/subscribe-rate``."""

    project_id: str
    product_infos: list[PeriodProductInfo] = Field(min_length=1, max_length=100)


class PeriodProductOfficialRatingResult(WireResponse):
    id: str
    product_id: str | None = None
    official_website_amount: ApiNumber | None = None
    measure_id: int | None = None
    installment_official_website_amount: str | None = None
    installment_period_type: int | None = None


class OfficialWebsiteRatingResult(WireResponse):
    official_website_amount: ApiNumber | None = None
    installment_official_website_amount: str | None = None
    installment_period_type: int | None = None
    measure_id: int | None = None
    product_rating_results: list[PeriodProductOfficialRatingResult] = []


class PeriodProductRatingResult(WireResponse):
    id: str
    product_id: str | None = None
    amount: ApiNumber | None = None
    official_website_amount: ApiNumber | None = None
    discount_amount: ApiNumber | None = None
    measure_id: int | None = None
    installment_official_website_amount: str | None = None
    installment_official_discount_amount: str | None = None
    installment_amount: str | None = None
    installment_period_type: int | None = None


class OptionalDiscountRatingResult(WireResponse):
    discount_id: str | None = None
    amount: ApiNumber | None = None
    """List price minus this discount."""
    official_website_amount: ApiNumber | None = None
    discount_amount: ApiNumber | None = None
    measure_id: int | None = None
    discount_type: int | None = None
    """605 business contract, 606 distributor contract, 607 partner-set rate."""
    discount_name: str | None = None
    best_offer: int | None = None
    """1 = the best of the business/partner discounts."""
    product_rating_results: list[PeriodProductRatingResult] = []
    installment_official_website_amount: str | None = None
    installment_official_discount_amount: str | None = None
    installment_amount: str | None = None
    installment_period_type: int | None = None


class ListRateOnPeriodDetailResp(WireResponse):
    official_website_rating_result: OfficialWebsiteRatingResult | None = None
    optional_discount_rating_results: list[OptionalDiscountRatingResult] = []
    currency: str | None = None


class ListRenewRateOnPeriodReq(WireRequest):
    """``POST /v2/bills/ratings/period-resources/renew-rate`` (customer credentials)."""

    resource_ids: list[str] = Field(min_length=1, max_length=10)
    period_type: int = Field(ge=2, le=3)
    """2 = month, 3 = year."""
    period_num: int = Field(ge=1)
    include_relative_resources: bool | None = None


class RenewInquiryResult(WireResponse):
    resource_id: str
    amount: ApiDecimalString


class ListRenewRateOnPeriodResp(WireResponse):
    """The renewal quote. Its rating results are the period inquiry's shapes without the
    per-product lists, and its amounts are strings; both parse into the same ``Decimal``s."""

    currency: str | None = None
    renew_inquiry_results: list[RenewInquiryResult] = []
    official_website_rating_result: OfficialWebsiteRatingResult | None = None
    optional_discount_rating_results: list[OptionalDiscountRatingResult] = []
    fail_resource_infos: list[FailResourceInfo] = []
