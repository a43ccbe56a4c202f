"""``handlers.renew`` against the fakes: the answer, the refusals, and above all reconciliation
of a renewal whose answer was lost (money moved at most once, never a second call on doubt)."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import timedelta

import pytest

from handlers.errors import (
    ApiRefused,
    ApiUnavailable,
    CallTimeout,
    Disposition,
    NotSent,
    OutcomeUndecidable,
    OutcomeUnknown,
)
from handlers.renew import CLOCK_MARGIN, renew
from schemas.bss import RenewalResourcesReq
from schemas.commands import RenewCommand
from schemas.common import FailedResource
from schemas.renew import RenewPayload, RenewResult
from tests.fakes import T0, EffectLedger, Fault, MemoryJournal, SimulatedCrash, World

CUSTOMER = "cust-1"
EXPIRES = T0 + timedelta(days=10)
MONTH = timedelta(days=30)  # the fake's month


def command(
    *resource_ids: str, command_id: str = "cmd-1", auto_pay: bool = True, months: int = 1
) -> RenewCommand:
    return RenewCommand(
        command_id=command_id,
        payload=RenewPayload(
            customer_id=CUSTOMER,
            resource_ids=list(resource_ids or ("r1",)),
            period_type="month",
            period_num=months,
            auto_pay=auto_pay,
        ),
    )


def timeout() -> CallTimeout:
    return CallTimeout("RELAY.TIMEOUT", "no answer in time")


@pytest.fixture
def world() -> World:
    w = World()
    for rid in ("r1", "r2", "r3"):
        w.api.add_resource(rid, CUSTOMER, expire=EXPIRES)
    return w


def result_of(done: object) -> RenewResult:
    assert isinstance(done, RenewResult)
    return done


# --- straightforward answers --------------------------------------------------------------------


async def test_success_renews_once_and_owns_its_order(world: World) -> None:
    journal = world.journal("cmd-1")
    done = await renew(command("r1", "r2", months=2), world.context("cmd-1", journal))

    [order] = world.api.orders_of(CUSTOMER)
    assert result_of(done.result) == RenewResult(order_ids=[order.order_id])
    assert not done.partial
    assert world.api.count("renew") == 1
    [(customer, _)] = world.api.args_of("renew")
    assert customer == CUSTOMER
    [body] = world.api.sent("renew", RenewalResourcesReq)
    assert body.model_dump() == {
        "resource_ids": ["r1", "r2"],
        "period_type": 2,
        "period_num": 2,
        "is_auto_pay": 1,
    }
    assert world.api.resources["r1"].expire_time == EXPIRES + 2 * MONTH
    assert world.ledger.owners == {order.order_id: "cmd-1"}
    # The baseline was journaled durably before the money-moving call.
    assert journal.log == ["call_starting", "claim_effects"]
    assert journal.attempts == 1
    note = json.loads(journal.note or b"")
    assert note == {
        "expire_times": {"r1": EXPIRES.isoformat(), "r2": EXPIRES.isoformat()},
        "existing_orders": [],
    }
    assert world.api.ops().index("customer_resources") < world.api.ops().index("renew")


async def test_year_period_and_no_auto_pay_are_sent_as_the_api_codes(world: World) -> None:
    payload = RenewPayload(
        customer_id=CUSTOMER, resource_ids=["r1"], period_type="year", period_num=3, auto_pay=False
    )
    await renew(RenewCommand(command_id="cmd-y", payload=payload), world.context("cmd-y"))

    [body] = world.api.sent("renew", RenewalResourcesReq)
    assert body.model_dump() == {
        "resource_ids": ["r1"],
        "period_type": 3,
        "period_num": 3,
        "is_auto_pay": 0,
    }
    assert world.api.resources["r1"].expire_time == EXPIRES  # unpaid: expiry did not move


async def test_some_resources_refused_is_partial_with_the_apis_codes(world: World) -> None:
    world.api.refused["r2"] = ("CBC.30010036", "not a primary resource")
    done = await renew(command("r1", "r2", "nope"), world.context("cmd-1"))

    [order] = world.api.orders_of(CUSTOMER)
    assert done.partial
    assert result_of(done.result) == RenewResult(
        order_ids=[order.order_id],
        failed_resources=[
            FailedResource(resource_id="r2", code="CBC.30010036", message="not a primary resource"),
            FailedResource(
                resource_id="nope",
                code="CBC.99003016",
                message="The resource has expired and been deleted, or does not exist.",
            ),
        ],
    )
    assert order.resource_ids == ["r1"]


async def test_all_refused_fails_with_the_first_items_code_and_every_reason(world: World) -> None:
    world.api.add_order(CUSTOMER, ["r1"], paid=False)  # r1 waits in an unpaid order
    with pytest.raises(ApiRefused) as caught:
        await renew(command("r1", "gone"), world.context("cmd-1"))

    assert caught.value.code == "CBC.99003100"
    assert caught.value.disposition is Disposition.FAIL
    assert "r1: CBC.99003100" in caught.value.message
    assert "gone: CBC.99003016" in caught.value.message
    assert len(world.api.orders_of(CUSTOMER)) == 1  # only the pre-existing one
    assert world.ledger.owners == {}


# --- reconciliation after a lost answer ---------------------------------------------------------


async def test_answer_lost_after_renewal_adopts_the_one_new_order(world: World) -> None:
    older = world.api.add_order(CUSTOMER, ["r3"])  # before the baseline: never a candidate
    world.api.add_order(CUSTOMER, ["r2"], paid=False)  # r2 is held: refused, expiry stays
    world.clock.advance(timedelta(minutes=1))
    world.api.script("renew", Fault(timeout(), after_effect=True))
    journal = world.journal("cmd-1")

    done = await renew(command("r1", "r2"), world.context("cmd-1", journal))

    assert world.api.count("renew") == 1  # reconciled, never sent again
    mine = [o for o in world.api.orders_of(CUSTOMER) if o.create_time == world.clock.now()]
    [order] = mine
    assert done.partial
    assert result_of(done.result) == RenewResult(
        order_ids=[order.order_id],
        failed_resources=[
            FailedResource(
                resource_id="r2",
                code="RELAY.NOT_RENEWED",
                message="the API's answer was lost; this resource's expiry did not move",
            )
        ],
    )
    assert world.ledger.owners == {order.order_id: "cmd-1"}
    assert older.order_id not in world.ledger.owners
    assert "call_had_no_effect" not in journal.log


async def test_answer_lost_with_every_resource_moved_is_a_plain_success(world: World) -> None:
    world.api.script("renew", Fault(OutcomeUnknown("RELAY.CONNECTION", "reset"), after_effect=True))
    done = await renew(command("r1", "r2"), world.context("cmd-1"))

    [order] = world.api.orders_of(CUSTOMER)
    assert result_of(done.result) == RenewResult(order_ids=[order.order_id])
    assert not done.partial
    assert world.api.count("renew") == 1


async def test_unpaid_order_adopted_reports_no_failed_resources(world: World) -> None:
    world.api.script("renew", Fault(timeout(), after_effect=True))
    done = await renew(command("r1", "r2", auto_pay=False), world.context("cmd-1"))

    [order] = world.api.orders_of(CUSTOMER)
    assert result_of(done.result) == RenewResult(order_ids=[order.order_id])
    assert not done.partial  # an unpaid order moves no expiry; that is not a refusal
    assert world.api.resources["r1"].expire_time == EXPIRES
    assert world.ledger.owners == {order.order_id: "cmd-1"}


async def test_timeout_before_any_effect_is_proven_and_retried(world: World) -> None:
    world.api.script("renew", Fault(timeout()))
    journal = world.journal("cmd-1")

    with pytest.raises(CallTimeout):
        await renew(command("r1"), world.context("cmd-1", journal))

    assert world.api.orders_of(CUSTOMER) == []
    assert journal.log == ["call_starting", "call_had_no_effect"]
    assert not journal.in_flight  # the next attempt starts from a fresh baseline
    assert world.api.count("renew") == 1

    done = await renew(command("r1"), world.context("cmd-1", journal))  # the retry

    [order] = world.api.orders_of(CUSTOMER)
    assert result_of(done.result).order_ids == [order.order_id]
    assert world.api.count("renew") == 2
    assert world.api.resources["r1"].expire_time == EXPIRES + MONTH  # renewed exactly once


async def test_an_error_that_is_not_an_unknown_outcome_is_not_reconciled(world: World) -> None:
    world.api.script("renew", Fault(NotSent("RELAY.CONNECT", "refused")))
    with pytest.raises(NotSent):
        await renew(command("r1"), world.context("cmd-1"))

    assert world.api.ops() == ["customer_resources", "renewal_orders_since", "renew"]


async def test_new_order_owned_by_another_command_is_not_adopted(world: World) -> None:
    def other_command_renews() -> None:
        theirs = world.api.add_order(CUSTOMER, ["r3"])
        world.ledger.claim("cmd-other", [theirs.order_id])

    world.api.script("renew", Fault(timeout(), meanwhile=other_command_renews))
    journal = world.journal("cmd-1")

    with pytest.raises(CallTimeout):
        await renew(command("r1"), world.context("cmd-1", journal))

    [theirs] = world.api.orders_of(CUSTOMER)
    assert world.ledger.owners == {theirs.order_id: "cmd-other"}
    assert journal.log == ["call_starting", "call_had_no_effect"]
    assert world.api.count("renew") == 1


async def test_own_order_found_beside_another_commands_order_is_adopted(world: World) -> None:
    def other_command_renews() -> None:
        theirs = world.api.add_order(CUSTOMER, ["r3"])
        world.ledger.claim("cmd-other", [theirs.order_id])

    world.api.script("renew", Fault(timeout(), after_effect=True, meanwhile=other_command_renews))
    done = await renew(command("r1"), world.context("cmd-1"))

    theirs, mine = world.api.orders_of(CUSTOMER)
    assert result_of(done.result).order_ids == [mine.order_id]
    assert world.ledger.owners == {theirs.order_id: "cmd-other", mine.order_id: "cmd-1"}


async def test_two_unowned_new_orders_are_undecidable_and_never_renewed_again(
    world: World,
) -> None:
    def another_system_renews() -> None:
        world.api.add_order(CUSTOMER, ["r3"])  # nobody in our ledger owns it

    world.api.script("renew", Fault(timeout(), after_effect=True, meanwhile=another_system_renews))
    journal = world.journal("cmd-1")

    with pytest.raises(OutcomeUndecidable) as caught:
        await renew(command("r1"), world.context("cmd-1", journal))

    assert caught.value.code == "RELAY.OUTCOME_UNKNOWN"
    assert caught.value.disposition is Disposition.UNKNOWN
    assert "2 renewal orders" in caught.value.message
    assert world.api.count("renew") == 1
    assert world.ledger.owners == {}  # neither order is claimed on a guess
    assert "call_had_no_effect" not in journal.log


async def test_a_single_foreign_order_is_taken_for_ours_the_documented_limit(
    world: World,
) -> None:
    """renew.py's stated limit: another *system* renewing the same customer during our lost
    call leaves one order nobody owns, indistinguishable from ours, and it is adopted. What must
    still hold: no second renewal, and the resources whose expiry did not move are reported."""

    def another_system_renews() -> None:
        world.api.add_order(CUSTOMER, ["r3"])

    world.api.script("renew", Fault(timeout(), meanwhile=another_system_renews))
    done = await renew(command("r1"), world.context("cmd-1"))

    [order] = world.api.orders_of(CUSTOMER)
    assert world.api.count("renew") == 1
    assert world.ledger.owners == {order.order_id: "cmd-1"}
    # r1's expiry did not move: the adoption says so instead of claiming a renewal of r1.
    assert done.partial
    assert [f.resource_id for f in result_of(done.result).failed_resources] == ["r1"]


# --- a crash found the command in flight --------------------------------------------------------


async def test_crash_after_the_renewal_is_reconciled_before_any_new_call(world: World) -> None:
    world.api.script("renew", Fault(SimulatedCrash(), after_effect=True))
    first = world.journal("cmd-1")
    with pytest.raises(SimulatedCrash):
        await renew(command("r1", "r2"), world.context("cmd-1", first))
    calls_before = len(world.api.calls)
    world.clock.advance(timedelta(seconds=40))  # the successor claims it after the lease

    successor = first.after_crash()
    assert successor.uncertain_since is not None
    done = await renew(command("r1", "r2"), world.context("cmd-1", successor))

    [order] = world.api.orders_of(CUSTOMER)
    assert result_of(done.result) == RenewResult(order_ids=[order.order_id])
    assert world.api.count("renew") == 1
    assert world.api.ops()[calls_before:] == ["renewal_orders_since", "customer_resources"]
    [(_, since)] = world.api.args_of("renewal_orders_since")[-1:]
    assert since == successor.uncertain_since - CLOCK_MARGIN
    assert world.ledger.owners == {order.order_id: "cmd-1"}


async def test_crash_before_the_request_left_renews_exactly_once_after(world: World) -> None:
    world.api.script("renew", Fault(SimulatedCrash()))
    first = world.journal("cmd-1")
    with pytest.raises(SimulatedCrash):
        await renew(command("r1"), world.context("cmd-1", first))
    assert first.in_flight

    successor = first.after_crash()
    done = await renew(command("r1"), world.context("cmd-1", successor))

    [order] = world.api.orders_of(CUSTOMER)
    assert result_of(done.result).order_ids == [order.order_id]
    assert successor.log == ["call_had_no_effect", "call_starting", "claim_effects"]
    assert successor.attempts == 2
    assert world.api.count("renew") == 2  # the first never reached the API (no order)
    assert world.api.resources["r1"].expire_time == EXPIRES + MONTH


async def test_in_flight_without_a_baseline_is_undecidable_without_calling(world: World) -> None:
    journal = world.journal("cmd-1", uncertain_since=T0 - timedelta(minutes=1), note=None)
    with pytest.raises(OutcomeUndecidable) as caught:
        await renew(command("r1"), world.context("cmd-1", journal))

    assert caught.value.code == "RELAY.OUTCOME_UNKNOWN"
    assert world.api.calls == []


async def test_in_flight_note_orders_are_excluded_from_candidates(world: World) -> None:
    """The journaled ``existing_orders`` are the baseline even when read by a successor."""
    before = world.api.add_order(CUSTOMER, ["r3"])
    note = json.dumps(
        {"expire_times": {"r1": EXPIRES.isoformat()}, "existing_orders": [before.order_id]}
    ).encode()
    journal = MemoryJournal(
        "cmd-1", clock=world.clock, ledger=world.ledger, uncertain_since=T0, note=note
    )
    done = await renew(command("r1"), world.context("cmd-1", journal))

    # No new order: proven not renewed, so the handler renewed now, once.
    orders = world.api.orders_of(CUSTOMER)
    assert len(orders) == 2
    assert result_of(done.result).order_ids == [orders[1].order_id]
    assert journal.log[0] == "call_had_no_effect"
    assert world.api.count("renew") == 1
    assert before.order_id not in world.ledger.owners


# --- reconciliation that cannot finish, or loses a race -----------------------------------------


async def test_a_failed_reconciliation_read_leaves_it_in_flight_never_renewed_twice(
    world: World,
) -> None:
    world.api.script("renew", Fault(timeout(), after_effect=True))
    # The first read is the baseline before the call; the second, reconciliation's, fails.
    world.api.script("renewal_orders_since", None, Fault(ApiUnavailable("CBC.0999", "later")))
    first = world.journal("cmd-1")
    with pytest.raises(ApiUnavailable):
        await renew(command("r1"), world.context("cmd-1", first))
    assert first.in_flight
    assert "call_had_no_effect" not in first.log

    done = await renew(command("r1"), world.context("cmd-1", first))  # the retry

    [order] = world.api.orders_of(CUSTOMER)
    assert result_of(done.result) == RenewResult(order_ids=[order.order_id])
    assert world.api.count("renew") == 1
    assert world.api.resources["r1"].expire_time == EXPIRES + MONTH


async def test_losing_the_atomic_claim_of_the_one_candidate_is_undecidable() -> None:
    """Between "nobody owns it" and claiming it, another command claimed the order: never
    adopt it, never renew again."""

    class RacingLedger(EffectLedger):
        def claim(self, command_id: str, effect_ids: Collection[str]) -> dict[str, str]:
            for effect in effect_ids:
                self.owners.setdefault(effect, "cmd-racer")
            return super().claim(command_id, effect_ids)

    world = World(ledger=RacingLedger())
    world.api.add_resource("r1", CUSTOMER, expire=EXPIRES)
    world.api.script("renew", Fault(timeout(), after_effect=True))

    with pytest.raises(OutcomeUndecidable):
        await renew(command("r1"), world.context("cmd-1"))

    [order] = world.api.orders_of(CUSTOMER)
    assert world.ledger.owners == {order.order_id: "cmd-racer"}
    assert world.api.count("renew") == 1
