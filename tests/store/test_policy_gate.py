"""The policy gate against a real store (both backends): verdicts, reservations, releases."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from handlers.errors import ApiRefused, CommandRejected
from schemas.commands import Command, parse_command
from service.guardrails.gate import PolicyDenied, PolicyGate
from service.guardrails.policy import Policy, PolicyHolder
from service.store.types import CommandStore, CouponCaps

LEASE = timedelta(seconds=30)
POLICY = Policy.model_validate(
    {
        "producers": {"erp": {"types": ["renew", "issue_coupon"]}},
        "renew": {"same_resource_within": "24h", "max_months": 6},
        "issue_coupon": {"per_customer_per_day": "100.00"},
    }
)


def coupon(command_id: str, face: str = "100.00") -> Command:
    return parse_command(
        b'{"command_id":"%s","type":"issue_coupon","payload":{"quota_id":"q",'
        b'"customer_ids":["cu-1"],"face_value":"%s"}}' % (command_id.encode(), face.encode())
    )


def renewal(command_id: str, extra: str = "") -> Command:
    return parse_command(
        b'{"command_id":"%s","type":"renew","payload":{"customer_id":"cu-1",'
        b'"resource_ids":["r-1"],"period_type":"month","period_num":1%s}}'
        % (command_id.encode(), extra.encode())
    )


async def admit(
    gate: PolicyGate, store: CommandStore, command: Command, *, user: str | None = "erp", **kw: bool
) -> None:
    await store.claim(command.command_id, command.type, owner="a", lease=LEASE)
    async with gate.admitted(command, requested_by=user, partner_id="p-1", **kw):
        pass


async def test_a_refusal_names_the_rule(store: CommandStore) -> None:
    gate = PolicyGate(PolicyHolder(None, POLICY), store)

    with pytest.raises(PolicyDenied) as caught:
        await admit(gate, store, renewal("r-1"), user="mallory")

    assert caught.value.code == "RELAY.POLICY_DENIED"
    assert caught.value.denial.rule == "producers"
    assert "policy rule producers" in caught.value.message


async def test_a_rejection_inside_gives_the_reservations_back(store: CommandStore) -> None:
    gate = PolicyGate(PolicyHolder(None, POLICY), store)
    first = coupon("c-1")
    await store.claim("c-1", "issue_coupon", owner="a", lease=LEASE)
    with pytest.raises(CommandRejected):
        async with gate.admitted(first, requested_by="erp", partner_id="p-1"):
            raise CommandRejected("CBC.0005", "the API says the command is malformed")

    await admit(gate, store, coupon("c-2"))  # the allowance is free again

    with pytest.raises(PolicyDenied) as caught:
        await admit(gate, store, coupon("c-3", "0.01"))
    assert caught.value.denial.rule == "issue_coupon.per_customer_per_day"


async def test_any_other_error_keeps_the_reservation_for_finish_to_settle(
    store: CommandStore,
) -> None:
    gate = PolicyGate(PolicyHolder(None, POLICY), store)
    await store.claim("r-1", "renew", owner="a", lease=LEASE)
    with pytest.raises(ApiRefused):
        async with gate.admitted(renewal("r-1"), requested_by="erp", partner_id="p-1"):
            raise ApiRefused("CBC.1", "no")

    with pytest.raises(PolicyDenied) as caught:
        await admit(gate, store, renewal("r-2"))
    assert caught.value.denial.rule == "renew.same_resource_within"
    assert "r-1 (by r-1)" in caught.value.message
    await admit(gate, store, renewal("r-3", ',"allow_repeat":true'))


async def test_an_uncertain_command_and_no_policy_pass_unjudged(store: CommandStore) -> None:
    ungated = PolicyGate(PolicyHolder(None, None), store)
    await admit(ungated, store, coupon("c-1", "500.00"), user=None)
    gate = PolicyGate(PolicyHolder(None, POLICY), store)
    await admit(gate, store, coupon("c-2", "500.00"), user=None, uncertain=True)
    assert (
        await store.reserve_coupons(
            "c-9",
            partner_id="p-1",
            customer_ids=["cu-1"],
            face_value=Decimal("100.00"),
            caps=CouponCaps(per_customer=Decimal("100.00")),
        )
        is None
    )  # neither reserved anything


async def test_a_reload_applies_to_the_next_command(store: CommandStore) -> None:
    holder = PolicyHolder(None, POLICY)
    gate = PolicyGate(holder, store)
    with pytest.raises(PolicyDenied):
        await admit(gate, store, renewal("r-1"), user="other")

    holder.current = Policy()

    await admit(gate, store, renewal("r-2"), user="other")
