"""IAM assume_role: who may get a customer's temporary credentials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control


def assume(agency: str = ids.AGENCY, duration: Any = 3600, **target: str) -> dict[str, Any]:
    role = {
        "agency_name": agency,
        "duration_seconds": duration,
        **(target or {"domain_id": ids.ACME}),
    }
    return {"auth": {"identity": {"methods": ["assume_role"], "assume_role": role}}}


async def test_credentials_shape(partner: SignedClient) -> None:
    answer = await partner.op("create_temporary_access_key_by_agency", body=assume())
    assert answer.status == 201
    credential = answer.body["credential"]
    assert set(credential) == {"access", "secret", "securitytoken", "expires_at"}
    assert len(credential["access"]) == 20
    assert credential["access"].isupper() or credential["access"].isalnum()
    expires = datetime.strptime(credential["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC
    )
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=1))) < timedelta(seconds=30)


async def test_by_domain_name(partner: SignedClient) -> None:
    answer = await partner.op(
        "create_temporary_access_key_by_agency", body=assume(domain_name="globex")
    )
    assert answer.status == 201


async def test_customer_that_did_not_grant_the_agency(partner: SignedClient) -> None:
    answer = await partner.op(
        "create_temporary_access_key_by_agency", body=assume(domain_id=ids.UMBRELLA)
    )
    assert (answer.status, answer.error_code) == (404, "IAM.0004")


async def test_wrong_agency_name(partner: SignedClient) -> None:
    answer = await partner.op(
        "create_temporary_access_key_by_agency", body=assume(ids.OTHER_AGENCY)
    )
    assert (answer.status, answer.error_code) == (404, "IAM.0004")


async def test_another_partners_customer(partner: SignedClient) -> None:
    answer = await partner.op(
        "create_temporary_access_key_by_agency", body=assume(domain_id=ids.STARK)
    )
    assert (answer.status, answer.error_code) == (403, "IAM.0003")


async def test_duration_range(partner: SignedClient) -> None:
    for duration in (899, 86401, "900"):
        answer = await partner.op(
            "create_temporary_access_key_by_agency", body=assume(duration=duration)
        )
        assert (answer.status, answer.error_code) == (400, "IAM.0011"), duration
    for duration in (900, 86400):
        answer = await partner.op(
            "create_temporary_access_key_by_agency", body=assume(duration=duration)
        )
        assert answer.status == 201


async def test_customer_keys_cannot_assume(acme: SignedClient) -> None:
    answer = await acme.op("create_temporary_access_key_by_agency", body=assume())
    assert (answer.status, answer.error_code) == (403, "IAM.0003")


async def test_parent_uid_is_the_customer_for_temporary_keys(
    acme: SignedClient, control: Control
) -> None:
    await acme.op("list_pay_per_use_customer_resources", body={})
    entries = {e["api"]: e["parent_uid"] for e in await control.get("requests")}
    assert entries == {
        "create_temporary_access_key_by_agency": ids.PARTNER_ID,
        "list_pay_per_use_customer_resources": ids.ACME,
    }


async def test_not_throttled_by_default(
    sandbox: Any, partner: SignedClient, control: Control
) -> None:
    await control.put("limits", {})
    for _ in range(15):
        assert (
            await partner.op("create_temporary_access_key_by_agency", body=assume())
        ).status == 201
