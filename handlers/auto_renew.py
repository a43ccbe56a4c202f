"""``set_auto_renew``: switch a resource's auto-renew on or off. Safe to repeat: the API sets a
state, and asking for the state a resource already has is a success."""

from __future__ import annotations

from handlers.errors import ApiRefused
from handlers.ports import Completed, HandlerContext
from schemas.auto_renew import SetAutoRenewResult
from schemas.bss import AutoRenewalResourcesReq
from schemas.commands import SetAutoRenewCommand

__all__ = ["set_auto_renew"]

ALREADY_CANCELLED = "CBC.99003605"


async def set_auto_renew(command: SetAutoRenewCommand, ctx: HandlerContext) -> Completed:
    p = command.payload
    await ctx.journal.call_starting(durable=False)  # sets a state: safe to repeat
    if p.enabled:
        body = AutoRenewalResourcesReq(
            auto_renew_times=p.times,
            period_type=p.period_type.upper() if p.period_type else None,  # type: ignore[arg-type]
        )
        await ctx.api.enable_auto_renew(p.customer_id, p.resource_id, body)
    else:
        try:
            await ctx.api.cancel_auto_renew(p.customer_id, p.resource_id)
        except ApiRefused as exc:
            if exc.code != ALREADY_CANCELLED:
                raise
    return Completed(SetAutoRenewResult(resource_id=p.resource_id, enabled=p.enabled))
