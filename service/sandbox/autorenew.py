"""Switching auto-renew on and off (``expire_policy`` 3 ⇔ on).

Addressing either a primary or one of its attached resources switches the whole family (the
primary and every attached resource), as the reference describes for ECS and its disks.
Enabling what is already enabled succeeds (HTTP 204) and only applies the fields given; cancelling
what is not enabled is ``CBC.99003605``. Both answer 204 No Content on success.
"""

from __future__ import annotations

from service.sandbox.calls import Call, Reply
from service.sandbox.errors import bad_request, business
from service.sandbox.fields import Fields
from service.sandbox.model import AUTO_RENEW_POLICY, Resource
from service.sandbox.pricebook import PERIOD_YEAR

__all__ = ["cancel_auto_renew", "enable_auto_renew"]

NOT_IN_USE = frozenset({3, 4, 5})  # closed, frozen, expired
POLICY_AFTER_CANCEL = 0  # back to the grace period on expiry


def _resource(call: Call) -> Resource:
    rid = call.params["resource_id"]
    if not rid or len(rid) > 64:
        raise bad_request("resource_id must be 1-64 characters")
    resource = call.state.resources.get(rid)
    if resource is None or resource.customer_id != call.customer.customer_id:
        raise business("CBC.99003012", f"The resource {rid} does not exist.")
    return resource


def enable_auto_renew(call: Call) -> Reply:
    fields = Fields(call.body, {"auto_renew_times", "period_type"})
    times = fields.integer("auto_renew_times", lo=0, hi=99)
    period = fields.text("period_type", choices=("MONTH", "YEAR"))
    resource = _resource(call)
    primary = call.state.primary_of(resource)
    if resource.status in NOT_IN_USE or primary.status in NOT_IN_USE:
        raise business("CBC.99003602", "The resource has expired or is frozen.")
    for member in call.state.family(primary):
        if member.status == 3:
            continue
        first_time = not member.auto_renew
        member.expire_policy = AUTO_RENEW_POLICY
        if times is not None or first_time:
            member.auto_renew_times = times or 0  # first enablement without a count: unlimited
        if period is not None:
            member.auto_renew_period_type = period  # type: ignore[assignment]  # checked above
        elif first_time:
            member.auto_renew_period_type = (
                "YEAR" if member.last_period_type == PERIOD_YEAR else "MONTH"
            )
        member.update_time = call.now
    return Reply(204)


def cancel_auto_renew(call: Call) -> Reply:
    Fields(call.body, ())  # DELETE carries no body; anything in it is a parameter error
    resource = _resource(call)
    if not resource.auto_renew:
        raise business("CBC.99003605", "Auto-renewal has already been cancelled.")
    for member in call.state.family(call.state.primary_of(resource)):
        if member.auto_renew:
            member.expire_policy = POLICY_AFTER_CANCEL
            member.update_time = call.now
    return Reply(204)
