"""The ``set_auto_renew`` command family: switch auto-renew on or off for one resource.

Enabling maps to ``auto_renewal_resources``, disabling to ``cancel_auto_renewal_resources``, which
takes no options; hence ``times`` is only meaningful (and only allowed) when enabling.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, StrictBool, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from schemas.common import CustomerId, PeriodType, ResourceId, StrictModel

__all__ = ["SetAutoRenewPayload", "SetAutoRenewResult"]


class SetAutoRenewPayload(StrictModel):
    """Desired auto-renew state of one resource (and, through the API, its attached ones)."""

    customer_id: CustomerId
    resource_id: ResourceId
    enabled: StrictBool
    period_type: PeriodType | None = None
    """Renewal period when enabling; absent = the API's default (the last order's period)."""
    times: StrictInt | None = Field(default=None, ge=0, le=99)
    """How many automatic renewals, 0 = unlimited; only with ``enabled: true``."""

    @model_validator(mode="after")
    def _times_only_when_enabling(self) -> Self:
        if self.times is not None and not self.enabled:
            raise PydanticCustomError(
                "times_without_enable",
                "times is only allowed with enabled: true (cancelling auto-renew takes no count)",
            )
        return self


class SetAutoRenewResult(StrictModel):
    """The state the resource is in now; asking for the state it already had is a success."""

    resource_id: str
    enabled: bool
