"""``PartnerApi``: the handlers' ``BssApi`` port for one partner account.

Customer calls (renew, auto-renew, price inquiries) are signed with the customer's temporary
credentials and spend the customer's rate limit (ParentUid = customer); partner calls
(coupons, partner queries) are signed with the partner's AK/SK and spend the partner's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from handlers.errors import ApiRefused
from schemas.bss import (
    AutoRenewalResourcesReq,
    CouponRecord,
    CreatePartnerCouponsReq,
    CreatePartnerCouponsResp,
    CustomerOrder,
    CustomerResource,
    ListCustomerOrdersResp,
    ListOnDemandResourceRatingsResp,
    ListPartnerCouponsRecordResp,
    ListPayPerUseCustomerResourcesResp,
    ListRateOnPeriodDetailResp,
    ListRenewRateOnPeriodReq,
    ListRenewRateOnPeriodResp,
    QueryResourcesReq,
    RateOnDemandReq,
    RateOnPeriodReq,
    RenewalResourcesReq,
    RenewalResourcesResp,
    parse_wire,
    wire_json,
)
from service.api.client import BssHttp, CallScope, Response
from service.api.credentials import CredentialCache, partner_signer
from service.api.operations import OPERATIONS
from service.api.signer import QueryValue
from service.settings import PartnerAccount

__all__ = ["PartnerApi"]

_M = TypeVar("_M", bound=BaseModel)
PAGE = 100
RENEWAL_ORDER = "2"
ISSUE_OPERATION = "1"
AUTH_FAILED_STATUS = 401


def _bss_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PartnerApi:
    def __init__(
        self,
        *,
        http: BssHttp,
        partner: PartnerAccount,
        credentials: CredentialCache,
        scope: CallScope | None = None,
    ) -> None:
        self._http = http
        self._partner = partner
        self._signer = partner_signer(partner)
        self._credentials = credentials
        self._scope = scope

    def scoped(self, scope: CallScope) -> PartnerApi:
        """This partner's API for one command: every request is counted in ``scope``, and
        the command's start deadline and journal are applied before each send."""
        scoped = object.__new__(PartnerApi)  # once per command: copy.copy costs 4x this
        scoped.__dict__.update(self.__dict__)
        scoped._scope = scope
        return scoped

    @property
    def partner_id(self) -> str:
        return self._partner.partner_id

    async def _as_customer(
        self,
        operation: str,
        customer_id: str,
        *,
        body: BaseModel | None = None,
        path_params: dict[str, str] | None = None,
    ) -> Response:
        """A customer call; a token the API no longer accepts is fetched anew once."""
        op = OPERATIONS[operation]
        for fresh in (False, True):
            signer = await self._credentials.signer_for(customer_id)
            try:
                return await self._http.call(
                    op,
                    signer,
                    parent_uid=customer_id,
                    domain_id=customer_id,
                    path_params=path_params,
                    body=wire_json(body) if body is not None else None,
                    scope=self._scope,
                )
            except ApiRefused as exc:
                if exc.http_status != AUTH_FAILED_STATUS or fresh:
                    raise
                self._credentials.invalidate(customer_id)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _as_partner(
        self,
        operation: str,
        *,
        body: BaseModel | None = None,
        query: Sequence[tuple[str, QueryValue | None]] = (),
    ) -> Response:
        return await self._http.call(
            OPERATIONS[operation],
            self._signer,
            parent_uid=self._partner.partner_id,
            domain_id=self._partner.partner_id,
            query=query,
            body=wire_json(body) if body is not None else None,
            scope=self._scope,
        )

    async def renew(self, customer_id: str, body: RenewalResourcesReq) -> RenewalResourcesResp:
        response = await self._as_customer("renewal_resources", customer_id, body=body)
        return parse_wire(RenewalResourcesResp, response.body)

    async def enable_auto_renew(
        self, customer_id: str, resource_id: str, body: AutoRenewalResourcesReq
    ) -> None:
        await self._as_customer(
            "auto_renewal_resources",
            customer_id,
            body=body,
            path_params={"resource_id": resource_id},
        )

    async def cancel_auto_renew(self, customer_id: str, resource_id: str) -> None:
        await self._as_customer(
            "cancel_auto_renewal_resources", customer_id, path_params={"resource_id": resource_id}
        )

    async def rate_on_demand(
        self, customer_id: str, body: RateOnDemandReq
    ) -> ListOnDemandResourceRatingsResp:
        response = await self._as_customer(
            "list_on_demand_resource_ratings", customer_id, body=body
        )
        return parse_wire(ListOnDemandResourceRatingsResp, response.body)

    async def rate_on_period(
        self, customer_id: str, body: RateOnPeriodReq
    ) -> ListRateOnPeriodDetailResp:
        response = await self._as_customer("list_rate_on_period_detail", customer_id, body=body)
        return parse_wire(ListRateOnPeriodDetailResp, response.body)

    async def rate_renewal(
        self, customer_id: str, body: ListRenewRateOnPeriodReq
    ) -> ListRenewRateOnPeriodResp:
        response = await self._as_customer("list_renew_rate_on_period", customer_id, body=body)
        return parse_wire(ListRenewRateOnPeriodResp, response.body)

    async def issue_coupons(self, body: CreatePartnerCouponsReq) -> CreatePartnerCouponsResp:
        response = await self._as_partner("create_partner_coupons", body=body)
        return parse_wire(CreatePartnerCouponsResp, response.body)

    async def customer_resources(
        self, customer_id: str, resource_ids: Sequence[str]
    ) -> list[CustomerResource]:
        """The resources' current state, read as the partner (current Partner Center doc)."""
        body = QueryResourcesReq(
            customer_id=customer_id, resource_ids=list(resource_ids), limit=PAGE
        )
        response = await self._as_partner("list_pay_per_use_customer_resources", body=body)
        return list(parse_wire(ListPayPerUseCustomerResourcesResp, response.body).data)

    async def renewal_orders_since(self, customer_id: str, since: datetime) -> list[CustomerOrder]:
        query: list[tuple[str, QueryValue | None]] = [
            ("customer_id", customer_id),
            ("order_type", RENEWAL_ORDER),
            ("create_time_begin", _bss_time(since)),
        ]

        async def page(offset: int) -> tuple[int, list[CustomerOrder]]:
            paged = [*query, ("offset", offset), ("limit", PAGE)]
            response = await self._as_partner("list_customer_orders", query=paged)
            answer = parse_wire(ListCustomerOrdersResp, response.body)
            return answer.total_count or 0, list(answer.order_infos)

        return await _all_pages(page, key=lambda o: o.order_id)

    async def coupon_issue_records_since(
        self, since: datetime, *, quota_id: str, customer_id: str | None = None
    ) -> list[CouponRecord]:
        query: list[tuple[str, QueryValue | None]] = [
            ("operation_types", [ISSUE_OPERATION]),
            ("operation_time_begin", _bss_time(since)),
            ("quota_id", quota_id),
            ("customer_id", customer_id),
        ]

        async def page(offset: int) -> tuple[int, list[CouponRecord]]:
            paged = [*query, ("offset", offset), ("limit", PAGE)]
            response = await self._as_partner("list_partner_coupons_record", query=paged)
            answer = parse_wire(ListPartnerCouponsRecordResp, response.body)
            return answer.total_count or 0, list(answer.records)

        return await _all_pages(page, key=lambda r: (r.id, r.coupon_id))


async def _all_pages(page: Any, *, key: Any) -> list[Any]:
    """Offset paging until ``offset >= total``; rows that shift between pages are deduplicated."""
    seen: dict[Any, Any] = {}
    offset = 0
    while True:
        total, rows = await page(offset)
        for row in rows:
            seen.setdefault(key(row), row)
        offset += len(rows)
        if not rows or offset >= total:
            return list(seen.values())
