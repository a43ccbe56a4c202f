"""``renew``: renew yearly/monthly resources. Money moves; the API has no idempotency key.

Before the call the handler journals each resource's ``expire_time``. If the call's outcome is
uncertain (no answer, connection lost, 5xx, or a crash found the command in flight), it
reconciles before anything else, from the customer's renewal orders created since the call
started and the resources' expiry now:

* no renewal order since, no expiry moved        -> provably not renewed: the call may be retried;
* exactly one order since, and the expiries tell which resources it renewed -> adopt it;
* anything else (several orders, no baseline, expiry moved without an order) -> undecidable:
  ``unknown`` with RELAY.OUTCOME_UNKNOWN, never a second call.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from handlers.batch import all_refused
from handlers.errors import OutcomeUndecidable, OutcomeUnknown
from handlers.ports import Completed, HandlerContext
from schemas.bss import CustomerOrder, CustomerResource, RenewalResourcesReq, RenewalResourcesResp
from schemas.commands import RenewCommand
from schemas.common import FailedResource
from schemas.renew import RenewResult

__all__ = ["renew"]

PERIOD_TYPE = {"month": 2, "year": 3}
PENDING_PAYMENT = 6
# Orders are looked up from this long before our own clock said the call started, so a
# modest clock difference between us and the API cannot hide an order.
CLOCK_MARGIN = timedelta(minutes=5)


async def renew(command: RenewCommand, ctx: HandlerContext) -> Completed:
    if ctx.journal.uncertain_since is not None:
        adopted = await _reconcile(command, ctx)
        if adopted is not None:
            return adopted
    p = command.payload
    before = await ctx.api.customer_resources(p.customer_id, p.resource_ids)
    await ctx.journal.call_starting(note=_expiry_note(before))
    body = RenewalResourcesReq(
        resource_ids=list(p.resource_ids),
        period_type=PERIOD_TYPE[p.period_type],
        period_num=p.period_num,
        is_auto_pay=1 if p.auto_pay else 0,
    )
    try:
        answer = await ctx.api.renew(p.customer_id, body)
    except OutcomeUnknown:
        adopted = await _reconcile(command, ctx)
        if adopted is not None:
            return adopted
        raise  # provably not renewed: retried later, reconciled again first
    return _completed(answer)


def _expiry_note(resources: list[CustomerResource]) -> bytes:
    return json.dumps(
        {r.resource_id: r.expire_time.isoformat() for r in resources if r.expire_time}
    ).encode()


def _completed(answer: RenewalResourcesResp) -> Completed:
    failed = [
        FailedResource(resource_id=f.resource_id, code=f.error_code, message=f.error_msg)
        for f in answer.fail_resource_infos
    ]
    if not answer.order_ids:
        raise all_refused(
            [(f.resource_id, f.code, f.message) for f in failed],
            fallback_code="RELAY.NOTHING_RENEWED",
            nothing_done="the API created no renewal order",
        )
    result = RenewResult(order_ids=list(answer.order_ids), failed_resources=failed)
    return Completed(result, partial=bool(failed))


async def _reconcile(command: RenewCommand, ctx: HandlerContext) -> Completed | None:
    """Adopt the uncertain call's effect, or None if it provably had none."""
    p = command.payload
    started = ctx.journal.uncertain_since
    assert started is not None
    orders = await ctx.api.renewal_orders_since(p.customer_id, started - CLOCK_MARGIN)
    now = {
        r.resource_id: r for r in await ctx.api.customer_resources(p.customer_id, p.resource_ids)
    }
    before = _read_note(ctx.journal.note)
    moved = {rid for rid, r in now.items() if _moved(before.get(rid), r.expire_time)}
    if not orders and not moved:
        return None
    if len(orders) == 1 and before and (moved or not p.auto_pay):
        return _adopt(orders[0], p.resource_ids, moved, auto_pay=p.auto_pay)
    raise OutcomeUndecidable(
        "RELAY.OUTCOME_UNKNOWN",
        f"renewal may or may not have happened: {len(orders)} renewal order(s) since "
        f"{started.isoformat()}, {len(moved)} of {len(p.resource_ids)} expiry time(s) moved",
    )


def _adopt(
    order: CustomerOrder, wanted: list[str], moved: set[str], *, auto_pay: bool
) -> Completed:
    if not auto_pay:  # an unpaid order moves no expiry; the order itself is the effect
        if order.status != PENDING_PAYMENT:
            raise OutcomeUndecidable(
                "RELAY.OUTCOME_UNKNOWN", f"order {order.order_id} is not pending"
            )
        return Completed(RenewResult(order_ids=[order.order_id]))
    failed = [
        FailedResource(
            resource_id=rid,
            code="RELAY.NOT_RENEWED",
            message="the API's answer was lost; this resource's expiry did not move",
        )
        for rid in wanted
        if rid not in moved
    ]
    return Completed(RenewResult(order_ids=[order.order_id], failed_resources=failed), bool(failed))


def _read_note(note: bytes | None) -> dict[str, datetime]:
    if not note:
        return {}
    return {rid: datetime.fromisoformat(text) for rid, text in json.loads(note).items()}


def _moved(before: datetime | None, now: datetime | None) -> bool:
    return before is not None and now is not None and now > before
