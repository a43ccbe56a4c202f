"""``renew``: renew yearly/monthly resources. Money moves; the API has no idempotency key.

Before the call the handler journals each resource's ``expire_time`` and the customer's
renewal orders that already exist in the look-back window. If the call's outcome is uncertain
(no answer, connection lost, 5xx, or a crash found the command in flight), it reconciles before
anything else, from the renewal orders that are *new* since then and the resources' expiry now:

* no new renewal order that no other command owns -> provably not renewed: may be retried;
* exactly one such order -> adopt it (claimed atomically in the effect ledger); resources whose
  expiry did not move are reported as not renewed;
* several, or no baseline journaled -> undecidable: ``unknown`` with RELAY.OUTCOME_UNKNOWN,
  never a second call.

Orders that existed before the call, and orders another command owns (the store's effect
ledger: a renewal records its order ids, and adopting one claims it atomically), are excluded,
so another command's renewal of the same customer is never mistaken for this one's. Renewals
of a customer run one at a time (the message path's run step holds the customer's renewal
lock), so a new order in the window is this command's unless another system renewed the same
customer meanwhile, which makes it undecidable.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from handlers.batch import all_refused, failed_resources
from handlers.errors import OutcomeUndecidable, OutcomeUnknown
from handlers.ports import Completed, HandlerContext
from schemas.bss import CustomerOrder, CustomerResource, RenewalResourcesReq, RenewalResourcesResp
from schemas.commands import RenewCommand
from schemas.common import FailedResource
from schemas.renew import RenewResult

__all__ = ["renew"]

PERIOD_TYPE = {"month": 2, "year": 3}
# Orders are looked up from this long before our own clock said the call started, so a
# modest clock difference between us and the API cannot hide an order.
CLOCK_MARGIN = timedelta(minutes=5)


async def renew(command: RenewCommand, ctx: HandlerContext) -> Completed:
    if ctx.journal.uncertain_since is not None:
        adopted = await _reconcile(command, ctx)
        if adopted is not None:
            return adopted
        await ctx.journal.call_had_no_effect()
    p = command.payload
    before = await ctx.api.customer_resources(p.customer_id, p.resource_ids)
    window = ctx.clock.now() - CLOCK_MARGIN
    existing = await ctx.api.renewal_orders_since(p.customer_id, window)
    await ctx.journal.call_starting(note=_note(before, existing))
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
        await ctx.journal.call_had_no_effect()
        raise  # provably not renewed: retried later from a fresh baseline
    done = _completed(answer)
    await ctx.journal.claim_effects(answer.order_ids)  # orders are this command's, for good
    return done


def _note(resources: list[CustomerResource], existing: list[CustomerOrder]) -> bytes:
    return json.dumps(
        {
            "expire_times": {
                r.resource_id: r.expire_time.isoformat() for r in resources if r.expire_time
            },
            "existing_orders": sorted(o.order_id for o in existing),
        }
    ).encode()


def _completed(answer: RenewalResourcesResp) -> Completed:
    failed = failed_resources(answer.fail_resource_infos)
    if not answer.order_ids:
        raise all_refused(
            [(f.resource_id, f.code, f.message) for f in failed],
            fallback_code="RELAY.NOTHING_RENEWED",
            nothing_done="the API created no renewal order",
        )
    result = RenewResult(order_ids=list(answer.order_ids), failed_resources=failed)
    return Completed(result, partial=bool(failed))


async def _reconcile(command: RenewCommand, ctx: HandlerContext) -> Completed | None:
    """Adopt the uncertain call's effect, or None if it provably had none.

    A renewal always creates an order, listed at once. The candidates are the customer's
    renewal orders created since the call (less the look-back margin) that did not exist
    before it (journaled) and that no other command owns (the effect ledger). Every other
    renewal of this customer in this process ran before or after this call, and read the
    existing orders before its own call, so it can neither own nor adopt this call's order.
    No candidate: the call did nothing. One: it is this call's. More: another system renewed
    the same customer meanwhile, and nobody can say which order is whose.
    """
    p = command.payload
    started = ctx.journal.uncertain_since
    assert started is not None
    before, existing = _read_note(ctx.journal.note)
    if ctx.journal.note is None:
        raise OutcomeUndecidable("RELAY.OUTCOME_UNKNOWN", "no baseline was journaled")
    new = [
        order
        for order in await ctx.api.renewal_orders_since(p.customer_id, started - CLOCK_MARGIN)
        if order.order_id not in existing
    ]
    taken = await _owned_elsewhere(ctx, new)
    mine = [order for order in new if order.order_id not in taken]
    if not mine:
        return None
    if len(mine) == 1 and not await ctx.journal.claim_effects([mine[0].order_id]):
        now = await ctx.api.customer_resources(p.customer_id, p.resource_ids)
        moved = {r.resource_id for r in now if _moved(before.get(r.resource_id), r.expire_time)}
        return _adopt(mine[0], p.resource_ids, moved, auto_pay=p.auto_pay)
    raise OutcomeUndecidable(
        "RELAY.OUTCOME_UNKNOWN",
        f"renewal may or may not have happened: {len(mine)} renewal orders since "
        f"{started.isoformat()} that no command of ours owns",
    )


def _adopt(
    order: CustomerOrder, wanted: list[str], moved: set[str], *, auto_pay: bool
) -> Completed:
    if not auto_pay:  # an unpaid order moves no expiry; the order itself is the effect
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


async def _owned_elsewhere(ctx: HandlerContext, orders: list[CustomerOrder]) -> set[str]:
    return await ctx.journal.owned_elsewhere([o.order_id for o in orders]) if orders else set()


def _read_note(note: bytes | None) -> tuple[dict[str, datetime], set[str]]:
    """Expiry times and pre-existing renewal order ids journaled before the call."""
    if not note:
        return {}, set()
    data = json.loads(note)
    expire_times = {rid: datetime.fromisoformat(t) for rid, t in data["expire_times"].items()}
    return expire_times, set(data["existing_orders"])


def _moved(before: datetime | None, now: datetime | None) -> bool:
    return before is not None and now is not None and now > before
