"""The ``renew`` command family: renew yearly/monthly resources (API ``renewal_resources``).

Renewal moves money and the API has no idempotency key, so the payload is held to the API's own
ranges here: a command the API would refuse is rejected before anything is sent.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, StrictBool, StrictInt, model_validator

from schemas.common import (
    CustomerId,
    FailedResource,
    PeriodType,
    ResourceIds,
    StrictModel,
    check_period,
)

__all__ = ["FailedResource", "RenewPayload", "RenewResult"]


class RenewPayload(StrictModel):
    """Renew 1-10 primary resources of one customer by a number of months or years."""

    customer_id: CustomerId
    """The customer's account (domain) id; the call is signed with this customer's credentials."""
    resource_ids: ResourceIds
    """1-10 distinct *primary* resource ids; attached resources are renewed with them."""
    period_type: PeriodType
    period_num: StrictInt = Field(ge=1)
    """Months 1-11 or years 1-3."""
    auto_pay: StrictBool = True
    """Pay the renewal order in the same call; false leaves an unpaid order."""
    allow_repeat: StrictBool = False
    """Renew even a resource another command renewed successfully within the policy's
    ``renew.same_resource_within`` window (``RELAY_POLICY_FILE``). Without it such a command is
    rejected with ``RELAY.POLICY_DENIED``: the guard against a producer re-sending a renewal
    under a new ``command_id``. Set it only when a second renewal is really intended."""

    @model_validator(mode="after")
    def _period_in_range(self) -> Self:
        check_period(self.period_type, self.period_num)
        return self


class RenewResult(StrictModel):
    """What the API did: the orders it created and the resources it refused."""

    order_ids: list[str]
    failed_resources: list[FailedResource] = []
