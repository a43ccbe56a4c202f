"""Auto-renew on and off, for a primary and its attached resources."""

from __future__ import annotations

from service.sandbox.signed_client import SignedClient
from tests.sandbox.conftest import Control


async def test_enable_sets_the_whole_family(acme: SignedClient, control: Control) -> None:
    answer = await acme.op(
        "auto_renewal_resources",
        params={"resource_id": "acme-ecs-01"},
        body={"auto_renew_times": 3, "period_type": "YEAR"},
    )
    assert (answer.status, answer.body) == (204, None)
    for rid in ("acme-ecs-01", "acme-evs-01"):
        resource = await control.resource(rid)
        assert (resource["auto_renew"], resource["expire_policy"]) == (True, 3)
        assert (resource["auto_renew_times"], resource["auto_renew_period_type"]) == (3, "YEAR")


async def test_enable_without_body_and_again_succeeds(acme: SignedClient, control: Control) -> None:
    first = await acme.op("auto_renewal_resources", params={"resource_id": "acme-evs-01"})
    again = await acme.op("auto_renewal_resources", params={"resource_id": "acme-ecs-01"})
    assert (first.status, again.status) == (204, 204)
    primary = await control.resource("acme-ecs-01")
    assert (
        primary["auto_renew"],
        primary["auto_renew_times"],
        primary["auto_renew_period_type"],
    ) == (True, 0, "MONTH")


async def test_cancel_then_cancel_again(acme: SignedClient, control: Control) -> None:
    first = await acme.op("cancel_auto_renewal_resources", params={"resource_id": "acme-ecs-02"})
    assert first.status == 204
    assert not (await control.resource("acme-evs-02"))["auto_renew"]
    again = await acme.op("cancel_auto_renewal_resources", params={"resource_id": "acme-ecs-02"})
    assert (again.status, again.error_code) == (400, "CBC.99003605")


async def test_unknown_and_frozen_resources(acme: SignedClient) -> None:
    unknown = await acme.op("auto_renewal_resources", params={"resource_id": "no-such"})
    assert (unknown.status, unknown.error_code) == (400, "CBC.99003012")
    foreign = await acme.op(
        "cancel_auto_renewal_resources", params={"resource_id": "globex-ecs-02"}
    )
    assert foreign.error_code == "CBC.99003012"
    frozen = await acme.op("auto_renewal_resources", params={"resource_id": "acme-ecs-frozen"})
    assert frozen.error_code == "CBC.99003602"
    closed = await acme.op("auto_renewal_resources", params={"resource_id": "acme-ecs-closed"})
    assert closed.error_code == "CBC.99003602"


async def test_parameter_errors(acme: SignedClient) -> None:
    path = {"resource_id": "acme-ecs-01"}
    for body in ({"period_type": "WEEK"}, {"auto_renew_times": 100}, {"auto_renew_times": "1"}):
        answer = await acme.op("auto_renewal_resources", params=path, body=body)
        assert (answer.status, answer.error_code) == (400, "CBC.0100"), body


async def test_partner_credentials_cannot_switch_auto_renew(partner: SignedClient) -> None:
    answer = await partner.op(
        "cancel_auto_renewal_resources", params={"resource_id": "acme-ecs-02"}
    )
    assert (answer.status, answer.error_code) == (403, "CBC.0151")
