"""``handlers.auto_renew`` against the fakes: it sets a state, so asking for the state a resource
already has is a success, and only the API's "already cancelled" refusal is forgiven."""

from __future__ import annotations

import pytest

from handlers.auto_renew import set_auto_renew
from handlers.errors import ApiRefused, CallTimeout, Disposition, Throttled
from schemas.auto_renew import SetAutoRenewPayload, SetAutoRenewResult
from schemas.bss import AutoRenewalResourcesReq
from schemas.commands import SetAutoRenewCommand
from schemas.common import PeriodType
from tests.fakes import T0, Fault, World

CUSTOMER = "cust-1"


def command(
    enabled: bool,
    *,
    resource_id: str = "r1",
    period_type: PeriodType | None = None,
    times: int | None = None,
) -> SetAutoRenewCommand:
    return SetAutoRenewCommand(
        command_id="cmd-1",
        payload=SetAutoRenewPayload(
            customer_id=CUSTOMER,
            resource_id=resource_id,
            enabled=enabled,
            period_type=period_type,
            times=times,
        ),
    )


@pytest.fixture
def world() -> World:
    w = World()
    w.api.add_resource("r1", CUSTOMER, expire=T0)
    w.api.add_resource("r-on", CUSTOMER, expire=T0, auto_renew=True)
    w.api.add_resource("r-theirs", "cust-2", expire=T0)
    return w


async def test_enable_sends_the_options_as_the_api_spells_them(world: World) -> None:
    journal = world.journal("cmd-1")
    done = await set_auto_renew(
        command(True, period_type="year", times=3), world.context("cmd-1", journal)
    )

    assert done.result == SetAutoRenewResult(resource_id="r1", enabled=True)
    assert not done.partial
    assert world.api.resources["r1"].auto_renew
    [(customer, resource_id, _)] = world.api.args_of("enable_auto_renew")
    assert (customer, resource_id) == (CUSTOMER, "r1")
    assert world.api.sent("enable_auto_renew", AutoRenewalResourcesReq) == [
        AutoRenewalResourcesReq(auto_renew_times=3, period_type="YEAR")
    ]
    # Safe to repeat: the attempt is counted, nothing is left in flight to reconcile.
    assert journal.log == ["call_starting(not durable)"]
    assert journal.attempts == 1
    assert not journal.in_flight


async def test_enable_without_options_leaves_them_to_the_api(world: World) -> None:
    await set_auto_renew(command(True), world.context("cmd-1"))
    assert world.api.sent("enable_auto_renew", AutoRenewalResourcesReq) == [
        AutoRenewalResourcesReq(auto_renew_times=None, period_type=None)
    ]


async def test_enable_what_is_already_enabled_is_a_success(world: World) -> None:
    done = await set_auto_renew(command(True, resource_id="r-on"), world.context("cmd-1"))
    assert done.result == SetAutoRenewResult(resource_id="r-on", enabled=True)
    assert world.api.resources["r-on"].auto_renew


async def test_disable_cancels_auto_renew(world: World) -> None:
    done = await set_auto_renew(command(False, resource_id="r-on"), world.context("cmd-1"))

    assert done.result == SetAutoRenewResult(resource_id="r-on", enabled=False)
    assert not world.api.resources["r-on"].auto_renew
    assert world.api.ops() == ["cancel_auto_renew"]
    assert world.api.args_of("cancel_auto_renew") == [(CUSTOMER, "r-on")]


async def test_disable_what_is_already_disabled_is_a_success(world: World) -> None:
    done = await set_auto_renew(command(False), world.context("cmd-1"))

    assert done.result == SetAutoRenewResult(resource_id="r1", enabled=False)
    assert world.api.ops() == ["cancel_auto_renew"]  # refused CBC.99003605, forgiven


@pytest.mark.parametrize("enabled", [True, False])
async def test_other_refusals_go_up_as_failures(world: World, enabled: bool) -> None:
    with pytest.raises(ApiRefused) as caught:
        await set_auto_renew(command(enabled, resource_id="r-theirs"), world.context("cmd-1"))

    assert caught.value.code == "CBC.99003012"
    assert caught.value.disposition is Disposition.FAIL
    assert not world.api.resources["r-theirs"].auto_renew


@pytest.mark.parametrize(
    ("enabled", "op"), [(True, "enable_auto_renew"), (False, "cancel_auto_renew")]
)
@pytest.mark.parametrize(
    "error",
    [
        Throttled("APIG.0308", "slow down", http_status=429),
        CallTimeout("RELAY.TIMEOUT", "no answer in time"),
        ApiRefused("CBC.0151", "access denied", http_status=403),
    ],
)
async def test_transport_and_api_errors_go_up_unchanged(
    world: World, enabled: bool, op: str, error: Exception
) -> None:
    world.api.script(op, Fault(error))
    with pytest.raises(type(error)) as caught:
        await set_auto_renew(command(enabled, resource_id="r-on"), world.context("cmd-1"))
    assert caught.value is error
    assert world.api.count(op) == 1  # no retry or reconcile inside the handler
