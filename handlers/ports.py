"""The small interfaces handlers depend on; ``service/`` provides them.

Handlers never see aiohttp, aio-pika or the environment: they get a partner-bound ``BssApi``,
a ``Clock`` and a ``Journal`` for the one command they carry out. The command store's types
live with the store, in :mod:`service.store.types`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel

from schemas.bss import (
    AutoRenewalResourcesReq,
    CouponRecord,
    CreatePartnerCouponsReq,
    CreatePartnerCouponsResp,
    CustomerOrder,
    CustomerResource,
    ListOnDemandResourceRatingsResp,
    ListRateOnPeriodDetailResp,
    ListRenewRateOnPeriodReq,
    ListRenewRateOnPeriodResp,
    RateOnDemandReq,
    RateOnPeriodReq,
    RenewalResourcesReq,
    RenewalResourcesResp,
)

__all__ = ["BssApi", "Clock", "Completed", "HandlerContext", "Journal"]


class BssApi(Protocol):
    """The BSS calls handlers make, bound to one partner. Customer calls are signed with the
    customer's temporary credentials; partner calls with the partner's AK/SK. Errors are
    ``handlers.errors`` classes; per-item failures inside HTTP 200 come back in the models."""

    async def renew(self, customer_id: str, body: RenewalResourcesReq) -> RenewalResourcesResp: ...

    async def enable_auto_renew(
        self, customer_id: str, resource_id: str, body: AutoRenewalResourcesReq
    ) -> None: ...

    async def cancel_auto_renew(self, customer_id: str, resource_id: str) -> None: ...

    async def rate_on_demand(
        self, customer_id: str, body: RateOnDemandReq
    ) -> ListOnDemandResourceRatingsResp: ...

    async def rate_on_period(
        self, customer_id: str, body: RateOnPeriodReq
    ) -> ListRateOnPeriodDetailResp: ...

    async def rate_renewal(
        self, customer_id: str, body: ListRenewRateOnPeriodReq
    ) -> ListRenewRateOnPeriodResp: ...

    async def issue_coupons(self, body: CreatePartnerCouponsReq) -> CreatePartnerCouponsResp: ...

    async def customer_resources(
        self, customer_id: str, resource_ids: Sequence[str]
    ) -> list[CustomerResource]: ...

    async def renewal_orders_since(self, customer_id: str, since: datetime) -> list[CustomerOrder]:
        """The customer's renewal orders (order_type 2) created since ``since``, all pages."""
        ...

    async def coupon_issue_records_since(
        self, since: datetime, *, quota_id: str, customer_id: str | None = None
    ) -> list[CouponRecord]:
        """The partner's coupon issue records since ``since`` from quota ``quota_id`` (and to
        ``customer_id`` when given), all pages."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware UTC now."""
        ...


class Journal(Protocol):
    """What a handler records about its own API calls, for reconciliation after a crash."""

    @property
    def uncertain_since(self) -> datetime | None:
        """When an earlier attempt's API call started, if it may have taken effect."""
        ...

    @property
    def note(self) -> bytes | None:
        """What the earlier attempt wrote with ``call_starting`` (e.g. expiry times before)."""
        ...

    async def call_starting(self, *, note: bytes | None = None, durable: bool = True) -> datetime:
        """Record, before a side-effecting call, that it starts now; returns that instant.

        ``durable=False`` for calls that are safe to repeat (quotes, setting auto-renew): the
        attempt is counted but nothing is written, since nobody needs to reconcile them."""
        ...

    async def call_had_no_effect(self) -> None:
        """Reconciliation proved the uncertain call did nothing: it is no longer in flight."""
        ...

    async def claim_effects(self, effect_ids: Collection[str]) -> set[str]:
        """Attribute effects (order ids) to this command; returns those another command owns."""
        ...

    async def owned_elsewhere(self, effect_ids: Collection[str]) -> set[str]:
        """Which of ``effect_ids`` other commands own already."""
        ...


@dataclass(frozen=True, slots=True)
class HandlerContext:
    command_id: str
    api: BssApi
    clock: Clock
    journal: Journal


@dataclass(frozen=True, slots=True)
class Completed:
    """A handler's result. ``partial``: the API accepted some items and refused others."""

    result: BaseModel
    partial: bool = False
