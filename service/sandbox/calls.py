"""What a business rule receives (``Call``) and returns (``Reply``); access checks they share.

Business rules are plain synchronous functions over the in-memory state: they never await, so a
request's side effect is applied atomically with respect to every other request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from multidict import MultiMapping

from service.sandbox.auth import Principal
from service.sandbox.errors import bad_request, denied
from service.sandbox.model import Customer
from service.sandbox.state import SandboxState

__all__ = ["Call", "Handler", "Reply", "fail_info", "target_customer"]


@dataclass(frozen=True, slots=True)
class Call:
    state: SandboxState
    principal: Principal
    params: Mapping[str, str]  # decoded path parameters
    query: MultiMapping[str]
    body: object  # parsed JSON (Decimals for non-integers), or None for an empty body
    now: datetime

    @property
    def customer(self) -> Customer:
        """The signing customer; only for customer-only operations (the gateway checked it)."""
        assert self.principal.customer is not None
        return self.principal.customer


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: object | None = None  # None: no body (204)


Handler = Callable[[Call], Reply]


def fail_info(resource_id: str, code: str, message: str) -> dict[str, str]:
    """One entry of ``fail_resource_infos``."""
    return {"error_code": code, "error_msg": message, "resource_id": resource_id}


def target_customer(call: Call, customer_id: str | None, *, required: bool) -> Customer | None:
    """The customer a read addresses; a partner must name one of its own customers.

    Customer credentials read their own account (``customer_id`` absent or equal to it).
    """
    principal = call.principal
    if principal.customer is not None:
        if customer_id not in (None, principal.customer.customer_id):
            raise denied("Customer credentials can only query their own account.")
        return principal.customer
    if customer_id is None:
        if required:
            raise bad_request("customer_id is required when a partner calls this API")
        return None
    if not call.state.is_partners_customer(principal.partner.partner_id, customer_id):
        raise denied("The customer is not associated with this partner.")
    return call.state.customers[customer_id]


def no_indirect_partner(value: str | None) -> None:
    """Tier-1/reseller chains are not simulated: naming a reseller is always refused."""
    if value is not None:
        raise denied("The indirect partner is not a reseller of this partner.")
