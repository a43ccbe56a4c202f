"""The BSS and IAM operations bss-relay uses: one row each, shared by client, limiter and sandbox.

Names are the official SDK method names; they are also the operation names the sandbox logs in
``/_sandbox/requests`` and accepts in ``PUT /_sandbox/limits``. Limits are requests per second per
(source IP, API, ParentUid) from ``reference/bss-api.md`` §7; where two captures disagree the lower
value is used, and rows that were not readable take the page default of 10/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from urllib.parse import quote, unquote

__all__ = ["OPERATIONS", "PUBLISHED_LIMITS", "Caller", "Operation", "match"]

DEFAULT_LIMIT_PER_SECOND = 10


class Caller(StrEnum):
    """Whose credentials may sign a call (``reference/bss-api.md`` §2)."""

    PARTNER = "partner"
    CUSTOMER = "customer"
    EITHER = "either"


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    method: str
    path: str  # template; ``{name}`` marks a path parameter
    caller: Caller
    mutating: bool
    limit_per_second: int | None = DEFAULT_LIMIT_PER_SECOND  # None: not a BSS-throttled API
    service: str = "bss"  # which base URL serves it: "bss" (BSS_ENDPOINT) or "iam" (IAM_ENDPOINT)

    def render(self, **params: str) -> str:
        return self.path.format(**{k: quote(v, safe="") for k, v in params.items()})


_ROWS = (
    Operation(
        "create_temporary_access_key_by_agency",
        "POST",
        "/v3.0/OS-CREDENTIAL/securitytokens",
        Caller.PARTNER,
        mutating=False,
        limit_per_second=None,
        service="iam",
    ),
    Operation(
        "renewal_resources",
        "POST",
        "/v2/orders/subscriptions/resources/renew",
        Caller.CUSTOMER,
        mutating=True,
    ),
    Operation(
        "auto_renewal_resources",
        "POST",
        "/v2/orders/subscriptions/resources/autorenew/{resource_id}",
        Caller.CUSTOMER,
        mutating=True,
    ),
    Operation(
        "cancel_auto_renewal_resources",
        "DELETE",
        "/v2/orders/subscriptions/resources/autorenew/{resource_id}",
        Caller.CUSTOMER,
        mutating=True,
    ),
    Operation(
        "list_on_demand_resource_ratings",
        "POST",
        "/v2/bills/ratings/on-demand-resources",
        Caller.CUSTOMER,
        mutating=False,
    ),
    Operation(
        "list_rate_on_period_detail",
        "POST",
        "/v2/bills/ratings/period-resources/subscribe-rate",
        Caller.CUSTOMER,
        mutating=False,
        limit_per_second=30,
    ),
    Operation(
        "list_renew_rate_on_period",
        "POST",
        "/v2/bills/ratings/period-resources/renew-rate",
        Caller.CUSTOMER,
        mutating=False,
    ),
    Operation(
        "create_partner_coupons",
        "POST",
        "/v2/promotions/benefits/partner-coupons",
        Caller.PARTNER,
        mutating=True,
    ),
    Operation(
        "reclaim_partner_coupons",
        "POST",
        "/v2/promotions/benefits/partner-coupons/reclaim",
        Caller.PARTNER,
        mutating=True,
    ),
    Operation(
        "list_pay_per_use_customer_resources",
        "POST",
        "/v2/orders/suscriptions/resources/query",  # sic: the real path is misspelled
        Caller.EITHER,
        mutating=False,
        limit_per_second=30,
    ),
    Operation(
        "list_customer_orders",
        "GET",
        "/v2/orders/customer-orders",
        Caller.EITHER,
        mutating=False,
        limit_per_second=20,
    ),
    Operation(
        "show_customer_order_details",
        "GET",
        "/v2/orders/customer-orders/details/{order_id}",
        Caller.EITHER,
        mutating=False,
    ),
    Operation(
        "pay_orders",
        "POST",
        "/v3/orders/customer-orders/pay",
        Caller.CUSTOMER,
        mutating=True,
    ),
    Operation(
        "cancel_customer_order",
        "PUT",
        "/v2/orders/customer-orders/cancel",
        Caller.CUSTOMER,
        mutating=True,
    ),
    Operation(
        "list_quota_coupons",
        "POST",
        "/v2/partners/coupon-quotas/query",
        Caller.PARTNER,
        mutating=False,
    ),
    Operation(
        "list_issued_partner_coupons",
        "GET",
        "/v2/promotions/benefits/partner-coupons",
        Caller.PARTNER,
        mutating=False,
    ),
    Operation(
        "list_partner_coupons_record",
        "GET",
        "/v2/promotions/benefits/partner-coupons/records/query",
        Caller.PARTNER,
        mutating=False,
    ),
)

OPERATIONS: MappingProxyType[str, Operation] = MappingProxyType({op.name: op for op in _ROWS})

# The published limits (requests/s; None: not throttled), the table pacing starts from. Pacing
# sits below the API client in the tree, so it is handed this table rather than importing it.
PUBLISHED_LIMITS: MappingProxyType[str, int | None] = MappingProxyType(
    {op.name: op.limit_per_second for op in _ROWS}
)


def match(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    """The operation a (method, raw path) pair addresses, with its decoded path parameters."""
    parts = path.rstrip("/").split("/")
    for op in _ROWS:
        if op.method != method.upper():
            continue
        template = op.path.split("/")
        if len(template) != len(parts):
            continue
        params: dict[str, str] = {}
        for want, got in zip(template, parts, strict=True):
            if want.startswith("{") and want.endswith("}"):
                params[want[1:-1]] = unquote(got)
            elif want != got:
                break
        else:
            return op, params
    return None
