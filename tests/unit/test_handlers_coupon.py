"""``handlers.coupon`` against the fakes: issuing, refusals, and reconciliation of an issue whose
answer was lost, by the command's marker in the memo (a coupon is issued at most once)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from handlers.coupon import CLOCK_MARGIN, issue_coupon, memo_for
from handlers.errors import ApiRefused, ApiUnavailable, CallTimeout, Disposition, OutcomeUnknown
from schemas.bss import CreatePartnerCouponsReq
from schemas.commands import IssueCouponCommand
from schemas.coupon import FailedCustomer, IssueCouponPayload, IssueCouponResult, IssuedCoupon
from tests.fakes import T0, Fault, SimulatedCrash, World

QUOTA = "quota-1"
FACE = Decimal("10.50")


def command(
    *customers: str, command_id: str = "cmd-1", memo: str | None = None
) -> IssueCouponCommand:
    return IssueCouponCommand(
        command_id=command_id,
        payload=IssueCouponPayload(
            quota_id=QUOTA, customer_ids=list(customers or ("c1",)), face_value=FACE, memo=memo
        ),
    )


def timeout() -> CallTimeout:
    return CallTimeout("RELAY.TIMEOUT", "no answer in time")


@pytest.fixture
def world() -> World:
    w = World()
    w.api.customers.update({"c1", "c2", "c3"})
    w.api.add_quota(QUOTA, Decimal("100.00"))
    return w


def result_of(done: object) -> IssueCouponResult:
    assert isinstance(done, IssueCouponResult)
    return done


def issued(world: World) -> list[IssuedCoupon]:
    return [
        IssuedCoupon(customer_id=customer, coupon_id=coupon)
        for coupon, customer in world.api.coupon_owner.items()
    ]


async def test_success_sends_the_payload_and_the_marker_and_reports_each_coupon(
    world: World,
) -> None:
    journal = world.journal("cmd-1")
    valid = T0 + timedelta(days=1)
    payload = IssueCouponPayload(
        quota_id=QUOTA,
        customer_ids=["c1", "c2"],
        face_value=FACE,
        valid_time=valid,
        expire_time=valid + timedelta(days=30),
        cloud_service_types=["hws.service.type.ebs"],
        memo="spring promo",
    )
    done = await issue_coupon(
        IssueCouponCommand(command_id="cmd-1", payload=payload), world.context("cmd-1", journal)
    )

    assert result_of(done.result) == IssueCouponResult(coupons=issued(world))
    assert len(issued(world)) == 2
    assert not done.partial
    [body] = world.api.sent("issue_coupons", CreatePartnerCouponsReq)
    assert body == CreatePartnerCouponsReq(
        quota_id=QUOTA,
        customer_ids=["c1", "c2"],
        face_value=Decimal("10.50"),
        valid_time=valid,
        expire_time=valid + timedelta(days=30),
        cloud_service_types=["hws.service.type.ebs"],
        product_ids=None,
        memo="spring promo [bss-relay:cmd-1]",
    )
    assert world.api.quotas[QUOTA].balance == Decimal("79.00")
    assert journal.log == ["call_starting"]  # durable: a lost answer must be reconciled
    assert journal.in_flight


def test_memo_without_a_producer_memo_is_the_marker_alone() -> None:
    assert memo_for("cmd-9", None) == "[bss-relay:cmd-9]"
    assert memo_for("cmd-9", "") == "[bss-relay:cmd-9]"


async def test_some_customers_refused_is_partial_with_the_apis_codes(world: World) -> None:
    done = await issue_coupon(command("c1", "stranger"), world.context("cmd-1"))

    assert done.partial
    assert result_of(done.result) == IssueCouponResult(
        coupons=issued(world),
        failed_customers=[
            FailedCustomer(
                customer_id="stranger",
                code="CBC.99000035",
                message="The customer is not associated with the partner.",
            )
        ],
    )
    assert [c.customer_id for c in issued(world)] == ["c1"]


async def test_every_customer_refused_fails_with_the_first_code(world: World) -> None:
    world.api.quotas[QUOTA].balance = Decimal("1.00")
    with pytest.raises(ApiRefused) as caught:
        await issue_coupon(command("c1", "stranger"), world.context("cmd-1"))

    assert caught.value.code == "CBC.99000013"
    assert caught.value.disposition is Disposition.FAIL
    assert "stranger: CBC.99000035" in caught.value.message
    assert issued(world) == []


async def test_a_refused_call_goes_up_unchanged(world: World) -> None:
    no_quota = IssueCouponCommand(
        command_id="cmd-1",
        payload=IssueCouponPayload(quota_id="missing", customer_ids=["c1"], face_value=FACE),
    )
    with pytest.raises(ApiRefused) as caught:
        await issue_coupon(no_quota, world.context("cmd-1"))
    assert caught.value.code == "CBC.99000012"
    assert world.api.ops() == ["issue_coupons"]  # a refusal is not reconciled


# --- reconciliation after a lost answer ---------------------------------------------------------


async def test_answer_lost_after_issuing_adopts_the_records_with_the_marker(world: World) -> None:
    world.api.quotas[QUOTA].balance = FACE  # enough for c1 only: c2 gets a result -1 record
    world.api.script("issue_coupons", Fault(timeout(), after_effect=True))
    journal = world.journal("cmd-1")

    done = await issue_coupon(command("c1", "c2", "c3"), world.context("cmd-1", journal))

    assert world.api.count("issue_coupons") == 1  # reconciled, never sent again
    [coupon] = issued(world)
    assert coupon.customer_id == "c1"
    assert done.partial
    lost = "the API's answer was lost; no issue record exists for this customer"
    assert result_of(done.result) == IssueCouponResult(
        coupons=[coupon],
        failed_customers=[
            FailedCustomer(customer_id="c2", code="RELAY.NOT_ISSUED", message=lost),
            FailedCustomer(customer_id="c3", code="RELAY.NOT_ISSUED", message=lost),
        ],
    )
    [since] = world.api.args_of("coupon_issue_records_since")
    assert since == (T0 - CLOCK_MARGIN, QUOTA, None)  # several customers: the quota's records
    assert "call_had_no_effect" not in journal.log


async def test_reconciliation_reads_only_the_records_of_the_commands_quota_and_customer(
    world: World,
) -> None:
    """Issue 17 (memory): reconciling read every issue record of the partner since the call,
    page after page -- on a busy deployment the coupons of every command of the last minutes,
    held in memory to find one. It reads those of the command's quota and customer only."""
    world.api.add_quota("quota-other", Decimal("100.00"))
    for n, (quota, customer) in enumerate([("quota-other", "c1"), (QUOTA, "c2")]):
        other = IssueCouponPayload(quota_id=quota, customer_ids=[customer], face_value=FACE)
        await issue_coupon(
            IssueCouponCommand(command_id=f"busy-{n}", payload=other),
            world.context(f"busy-{n}"),
        )
    world.api.script("issue_coupons", Fault(timeout(), after_effect=True))

    done = await issue_coupon(command("c1"), world.context("cmd-1"))

    assert [c.customer_id for c in result_of(done.result).coupons] == ["c1"]
    [asked] = world.api.args_of("coupon_issue_records_since")
    assert asked[1:] == (QUOTA, "c1")
    assert world.api.count("issue_coupons") == 3  # the lost one adopted, not sent again


async def test_answer_lost_with_every_customer_issued_is_a_plain_success(world: World) -> None:
    world.api.script(
        "issue_coupons", Fault(OutcomeUnknown("RELAY.CONNECTION", "reset"), after_effect=True)
    )
    done = await issue_coupon(command("c1", "c2", memo="promo"), world.context("cmd-1"))

    assert result_of(done.result) == IssueCouponResult(coupons=issued(world))
    assert len(issued(world)) == 2
    assert not done.partial


async def test_no_record_proves_nothing_was_issued_and_the_issue_is_retried(
    world: World,
) -> None:
    world.api.script("issue_coupons", Fault(timeout()))
    journal = world.journal("cmd-1")

    with pytest.raises(CallTimeout):
        await issue_coupon(command("c1"), world.context("cmd-1", journal))

    assert issued(world) == []
    assert journal.log == ["call_starting", "call_had_no_effect"]
    assert not journal.in_flight

    done = await issue_coupon(command("c1"), world.context("cmd-1", journal))  # the retry
    assert result_of(done.result) == IssueCouponResult(coupons=issued(world))
    assert len(issued(world)) == 1  # issued exactly once
    assert world.api.count("issue_coupons") == 2


async def test_records_of_another_commands_marker_are_ignored(world: World) -> None:
    def other_command_issues() -> None:  # same quota, same customer, same face value
        world.api.issue_elsewhere(QUOTA, ["c1"], FACE, memo=memo_for("cmd-2", None))

    world.api.script("issue_coupons", Fault(timeout(), meanwhile=other_command_issues))
    journal = world.journal("cmd-1")

    with pytest.raises(CallTimeout):
        await issue_coupon(command("c1"), world.context("cmd-1", journal))

    assert journal.log == ["call_starting", "call_had_no_effect"]
    assert len(issued(world)) == 1  # cmd-2's coupon, not adopted


async def test_a_marker_that_is_a_prefix_of_another_commands_does_not_match(
    world: World,
) -> None:
    def other_command_issues() -> None:
        world.api.issue_elsewhere(QUOTA, ["c1"], FACE, memo=memo_for("cmd-10", None))

    world.api.script("issue_coupons", Fault(timeout(), meanwhile=other_command_issues))
    journal = world.journal("cmd-1")
    with pytest.raises(CallTimeout):
        await issue_coupon(command("c1", command_id="cmd-1"), world.context("cmd-1", journal))
    assert journal.log == ["call_starting", "call_had_no_effect"]


async def test_another_commands_memo_quoting_our_marker_is_not_adopted(world: World) -> None:
    """The producer's memo is free text; a memo that quotes another command's marker (say
    "re-issue of [bss-relay:cmd-1]") must not make cmd-1 adopt that command's coupon.

    Fails on today's handler: ``_is_mine`` looks for the marker anywhere in the remark. Our
    marker is always the remark's last token (``memo_for``), so matching it at the end is exact.
    """

    def other_command_issues() -> None:
        quoted = memo_for("cmd-2", "re-issue of [bss-relay:cmd-1]")
        world.api.issue_elsewhere(QUOTA, ["c1"], FACE, memo=quoted)

    world.api.script("issue_coupons", Fault(timeout(), meanwhile=other_command_issues))
    journal = world.journal("cmd-1")

    with pytest.raises(CallTimeout):  # nothing of ours was issued: retry, do not adopt
        await issue_coupon(command("c1"), world.context("cmd-1", journal))
    assert journal.log == ["call_starting", "call_had_no_effect"]


async def test_failed_issue_records_of_ours_are_not_adopted_as_coupons(world: World) -> None:
    world.api.quotas[QUOTA].balance = Decimal("1.00")  # every customer refused, result -1 records
    world.api.script("issue_coupons", Fault(timeout(), after_effect=True))
    journal = world.journal("cmd-1")

    with pytest.raises(CallTimeout):
        await issue_coupon(command("c1", "c2"), world.context("cmd-1", journal))

    assert len(world.api.records) == 2
    assert {r.result for r in world.api.records} == {"-1"}
    assert journal.log == ["call_starting", "call_had_no_effect"]


async def test_a_failed_reconciliation_read_leaves_it_in_flight_never_issued_twice(
    world: World,
) -> None:
    world.api.script("issue_coupons", Fault(timeout(), after_effect=True))
    world.api.script("coupon_issue_records_since", Fault(ApiUnavailable("CBC.0999", "later")))
    journal = world.journal("cmd-1")
    with pytest.raises(ApiUnavailable):
        await issue_coupon(command("c1"), world.context("cmd-1", journal))
    assert journal.in_flight

    done = await issue_coupon(command("c1"), world.context("cmd-1", journal))  # the retry

    assert world.api.count("issue_coupons") == 1
    assert result_of(done.result) == IssueCouponResult(coupons=issued(world))
    assert len(issued(world)) == 1


# --- a crash found the command in flight --------------------------------------------------------


async def test_crash_after_issuing_is_reconciled_before_any_new_call(world: World) -> None:
    world.api.script("issue_coupons", Fault(SimulatedCrash(), after_effect=True))
    first = world.journal("cmd-1")
    with pytest.raises(SimulatedCrash):
        await issue_coupon(command("c1", "c2"), world.context("cmd-1", first))
    calls_before = len(world.api.calls)
    world.clock.advance(timedelta(seconds=40))

    successor = first.after_crash()
    done = await issue_coupon(command("c1", "c2"), world.context("cmd-1", successor))

    assert world.api.ops()[calls_before:] == ["coupon_issue_records_since"]
    assert world.api.count("issue_coupons") == 1
    assert result_of(done.result) == IssueCouponResult(coupons=issued(world))
    assert len(issued(world)) == 2
    assert world.api.quotas[QUOTA].balance == Decimal("79.00")


async def test_crash_before_the_request_left_issues_exactly_once_after(world: World) -> None:
    world.api.script("issue_coupons", Fault(SimulatedCrash()))
    first = world.journal("cmd-1")
    with pytest.raises(SimulatedCrash):
        await issue_coupon(command("c1"), world.context("cmd-1", first))

    successor = first.after_crash()
    done = await issue_coupon(command("c1"), world.context("cmd-1", successor))

    assert world.api.ops() == ["issue_coupons", "coupon_issue_records_since", "issue_coupons"]
    assert successor.log == ["call_had_no_effect", "call_starting"]
    assert result_of(done.result) == IssueCouponResult(coupons=issued(world))
    assert len(issued(world)) == 1
