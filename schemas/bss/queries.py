"""Resource and order queries (``reference/bss-api.md`` §9e-1..3): what renewal reconciles with.

After a renewal whose outcome is unknown, the handler re-reads each resource's ``expire_time``
and looks for recent renewal orders; those fields are typed, the rest kept loosely.
"""

from __future__ import annotations

from pydantic import Field

from schemas.bss.wire import ApiDateTime, ApiNumber, WireRequest, WireResponse

__all__ = [
    "AgentPayInfo",
    "AmountInfo",
    "CustomerOrder",
    "CustomerResource",
    "DiscountItem",
    "EnterpriseProject",
    "ListCustomerOrdersResp",
    "ListPayPerUseCustomerResourcesResp",
    "OrderLineItem",
    "QueryResourcesReq",
    "ShowCustomerOrderDetailsResp",
]


class QueryResourcesReq(WireRequest):
    """``POST /v2/orders/suscriptions/resources/query`` (sic); every field optional."""

    resource_ids: list[str] | None = Field(default=None, max_length=50)
    order_id: str | None = Field(default=None, max_length=64)
    only_main_resource: int | None = Field(default=None, ge=0, le=1)
    """0 primary and attached (default), 1 primary only."""
    status_list: list[int] | None = None
    """2 in use, 3 closed, 4 frozen, 5 expired."""
    offset: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=1)
    expire_time_begin: ApiDateTime | None = None
    expire_time_end: ApiDateTime | None = None
    service_type_code: str | None = Field(default=None, min_length=1)
    customer_id: str | None = Field(default=None, max_length=64)
    """Required when the partner queries."""


class EnterpriseProject(WireResponse):
    id: str | None = None
    name: str | None = None


class CustomerResource(WireResponse):
    id: str | None = None
    resource_id: str
    resource_name: str | None = None
    region_code: str | None = None
    service_type_code: str | None = None
    resource_type_code: str | None = None
    resource_type_name: str | None = None
    service_type_name: str | None = None
    resource_spec_code: str | None = None
    project_id: str | None = None
    product_id: str | None = None
    parent_resource_id: str | None = None
    is_main_resource: int | None = None
    """1 = primary."""
    status: int | None = None
    effective_time: ApiDateTime | None = None
    expire_time: ApiDateTime | None = None
    expire_policy: int | None = None
    """Only 3 means auto-renew is on."""
    product_spec_desc: str | None = None
    spec_size: ApiNumber | None = None
    spec_size_measure_id: int | None = None
    update_time: ApiDateTime | None = None
    enterprise_project: EnterpriseProject | None = None


class ListPayPerUseCustomerResourcesResp(WireResponse):
    total_count: int = 0
    data: list[CustomerResource] = []


class DiscountItem(WireResponse):
    discount_type: str | None = None
    discount_amount: ApiNumber | None = None


class AmountInfo(WireResponse):
    discounts: list[DiscountItem] = []
    flexipurchase_coupon_amount: ApiNumber | None = None
    coupon_amount: ApiNumber | None = None
    stored_card_amount: ApiNumber | None = None
    commission_amount: ApiNumber | None = None
    consumed_amount: ApiNumber | None = None


class AgentPayInfo(WireResponse):
    paying_agent_id: str | None = None
    is_agent_pay: bool | None = None


class CustomerOrder(WireResponse):
    """An order as listed (``list_customer_orders``) or shown (``order_info`` of the details)."""

    order_id: str
    customer_id: str | None = None
    service_type_code: str | None = None
    service_type_name: str | None = None
    source_type: int | None = None
    status: int | None = None
    """1 pending approval, 3 processing, 4 cancelled, 5 completed, 6 pending payment, ..."""
    order_type: int | None = None
    """1 new, 2 renewal, 3 change, 4 unsubscribe, ..."""
    amount_after_discount: ApiNumber | None = None
    official_amount: ApiNumber | None = None
    measure_id: int | None = None
    create_time: ApiDateTime | None = None
    payment_time: ApiDateTime | None = None
    currency: str | None = None
    contract_id: str | None = None
    amount_info: AmountInfo | None = None
    enterprise_projects: list[EnterpriseProject] = []
    agent_pay_info: AgentPayInfo | None = None
    user_name: str | None = None
    """Details only."""
    pending_payment_end_time: ApiDateTime | None = None
    """Details only: pay before this."""


class ListCustomerOrdersResp(WireResponse):
    total_count: int = 0
    order_infos: list[CustomerOrder] = []


class OrderLineItem(WireResponse):
    order_line_item_id: str | None = None
    service_type_code: str | None = None
    service_type_name: str | None = None
    product_id: str | None = None
    product_spec_desc: str | None = None
    period_type: int | None = None
    period_num: int | None = None
    effective_time: ApiDateTime | None = None
    expire_time: ApiDateTime | None = None
    subscription_num: int | None = None
    amount_after_discount: ApiNumber | None = None
    official_amount: ApiNumber | None = None
    amount_info: AmountInfo | None = None
    currency: str | None = None
    category_code: str | None = None
    product_owner_service: str | None = None
    commercial_resource: str | None = None
    order_id: str | None = None


class ShowCustomerOrderDetailsResp(WireResponse):
    total_count: int = 0
    order_info: CustomerOrder | None = None
    order_line_items: list[OrderLineItem] = []
