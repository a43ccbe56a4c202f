"""One explicit table: operation name (``service.api.operations``) → the business rule serving
it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from service.sandbox import (
    autorenew,
    coupon_reads,
    coupons,
    pricing,
    queries,
    renewal_rate,
    renewals,
)
from service.sandbox.calls import Handler

__all__ = ["BSS_HANDLERS"]

BSS_HANDLERS: Mapping[str, Handler] = MappingProxyType(
    {
        "renewal_resources": renewals.renew,
        "pay_orders": renewals.pay_order,
        "cancel_customer_order": renewals.cancel_order,
        "auto_renewal_resources": autorenew.enable_auto_renew,
        "cancel_auto_renewal_resources": autorenew.cancel_auto_renew,
        "list_on_demand_resource_ratings": pricing.on_demand_rate,
        "list_rate_on_period_detail": pricing.subscription_rate,
        "list_renew_rate_on_period": renewal_rate.renewal_rate,
        "create_partner_coupons": coupons.issue_coupons,
        "reclaim_partner_coupons": coupons.reclaim_coupon,
        "list_quota_coupons": coupon_reads.list_quotas,
        "list_issued_partner_coupons": coupon_reads.list_issued,
        "list_partner_coupons_record": coupon_reads.list_records,
        "list_pay_per_use_customer_resources": queries.list_resources,
        "list_customer_orders": queries.list_orders,
        "show_customer_order_details": queries.order_details,
    }
)
