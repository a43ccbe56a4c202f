"""Renewal and auto-renew bodies (``reference/bss-api.md`` §9a, §9b)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.bss.wire import WireRequest, WireResponse

__all__ = [
    "AutoRenewalResourcesReq",
    "FailResourceInfo",
    "RenewalResourcesReq",
    "RenewalResourcesResp",
]


class RenewalResourcesReq(WireRequest):
    """``POST /v2/orders/subscriptions/resources/renew`` (customer credentials)."""

    resource_ids: list[str] = Field(min_length=1, max_length=10)
    period_type: int = Field(ge=2, le=3)
    """2 = month, 3 = year."""
    period_num: int = Field(ge=1)
    is_auto_pay: int | None = Field(default=None, ge=0, le=1)
    """1 = pay in the same call; 0 or absent = leave an unpaid order."""


class FailResourceInfo(WireResponse):
    """A resource the API refused inside an HTTP 200 answer."""

    error_code: str
    error_msg: str = ""
    resource_id: str


class RenewalResourcesResp(WireResponse):
    order_ids: list[str] = []
    fail_resource_infos: list[FailResourceInfo] = []


class AutoRenewalResourcesReq(WireRequest):
    """``POST /v2/orders/subscriptions/resources/autorenew/{resource_id}``; every field optional."""

    auto_renew_times: int | None = Field(default=None, ge=0, le=99)
    """0 = unlimited."""
    period_type: Literal["MONTH", "YEAR"] | None = None
