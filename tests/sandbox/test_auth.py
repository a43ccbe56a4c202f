"""The gateway's AK/SK check: partner keys, temporary keys, tampering, skew, expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from service.api.signer import Signer
from service.sandbox.signed_client import Answer, Prepared, SignedClient
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control

QUOTAS = ("POST", "/v2/partners/coupon-quotas/query")


def assert_refused(answer: Answer, reason: str) -> None:
    assert answer.status == 401
    assert answer.body["error_code"] == "APIGW.0301"
    assert reason in answer.body["error_msg"]
    assert answer.body["request_id"] == answer.headers["X-Request-Id"]


def flip(text: str, index: int = -1) -> str:
    chars = list(text)
    chars[index] = "0" if chars[index] != "0" else "1"
    return "".join(chars)


async def test_partner_signature_is_accepted(partner: SignedClient) -> None:
    answer = await partner.call(*QUOTAS, body={})
    assert answer.status == 200
    assert answer.headers["X-Request-Id"]


async def test_flipped_signature_byte_is_refused(partner: SignedClient) -> None:
    prepared = partner.prepare(*QUOTAS, body={})
    auth = prepared.headers["Authorization"]
    tampered = Prepared(
        prepared.method,
        prepared.url,
        {**prepared.headers, "Authorization": flip(auth)},
        prepared.body,
    )
    assert_refused(await partner.send(tampered), "signature")


async def test_body_changed_after_signing_is_refused(partner: SignedClient) -> None:
    prepared = partner.prepare(*QUOTAS, body={"limit": 10})
    tampered = Prepared(
        prepared.method, prepared.url, prepared.headers, prepared.body.replace(b"10", b"11")
    )
    assert_refused(await partner.send(tampered), "signature")


async def test_query_changed_after_signing_is_refused(partner: SignedClient) -> None:
    prepared = partner.prepare("GET", "/v2/orders/customer-orders", query=[("limit", 10)])
    url = prepared.url.with_query("limit=11")
    assert_refused(await partner.send(Prepared("GET", url, prepared.headers, b"")), "signature")


async def test_unknown_access_key_is_refused(
    partner: SignedClient, http: object, sandbox: object
) -> None:
    stranger = SignedClient(
        partner._session, str(partner._base), Signer("HPUAUNKNOWNKEY000000", ids.PARTNER_SK)
    )
    assert_refused(await stranger.call(*QUOTAS, body={}), "access key does not exist")


async def test_missing_authorization_is_refused(partner: SignedClient) -> None:
    prepared = partner.prepare(*QUOTAS, body={})
    headers = {k: v for k, v in prepared.headers.items() if k != "Authorization"}
    assert_refused(
        await partner.send(Prepared("POST", prepared.url, headers, prepared.body)), "missing"
    )


async def test_clock_skew_over_15_minutes_is_refused(partner: SignedClient) -> None:
    late = datetime.now(UTC) - timedelta(minutes=16)
    assert_refused(await partner.call(*QUOTAS, body={}, now=late), "15 minutes")
    early = datetime.now(UTC) + timedelta(minutes=16)
    assert_refused(await partner.call(*QUOTAS, body={}, now=early), "15 minutes")


async def test_clock_skew_within_15_minutes_is_accepted(partner: SignedClient) -> None:
    answer = await partner.call(*QUOTAS, body={}, now=datetime.now(UTC) - timedelta(minutes=14))
    assert answer.status == 200


async def test_temporary_keys_are_accepted_with_their_token(acme: SignedClient) -> None:
    answer = await acme.op("list_pay_per_use_customer_resources", body={})
    assert answer.status == 200
    assert answer.body["total_count"] > 0


async def test_temporary_keys_without_token_are_refused(acme: SignedClient) -> None:
    assert acme.signer.security_token is not None
    no_token = SignedClient(
        acme._session, str(acme._base), Signer(acme.signer.access_key, acme.signer.secret_key)
    )
    answer = await no_token.op("list_pay_per_use_customer_resources", body={})
    assert_refused(answer, "X-Security-Token")


async def test_wrong_token_is_refused(acme: SignedClient) -> None:
    assert acme.signer.security_token is not None
    wrong = Signer(
        acme.signer.access_key, acme.signer.secret_key, flip(acme.signer.security_token, 5)
    )
    answer = await SignedClient(acme._session, str(acme._base), wrong).op(
        "list_pay_per_use_customer_resources", body={}
    )
    assert_refused(answer, "does not match")


async def test_expired_token_is_refused(partner: SignedClient, control: Control) -> None:
    await control.put("faults", {"token_ttl_seconds": 0.3})
    short = await partner.assume(ids.AGENCY, ids.ACME)
    assert (await short.op("list_pay_per_use_customer_resources", body={})).status == 200
    await asyncio.sleep(0.4)
    answer = await short.op("list_pay_per_use_customer_resources", body={})
    assert_refused(answer, "expired")


async def test_rejections_are_counted(partner: SignedClient, control: Control) -> None:
    prepared = partner.prepare(*QUOTAS, body={})
    bad = {**prepared.headers, "Authorization": flip(prepared.headers["Authorization"])}
    await partner.send(Prepared("POST", prepared.url, bad, prepared.body))
    counters = await control.get("counters")
    assert counters["rejected_signature"] == 1
    assert counters["per_api"]["list_quota_coupons"]["rejected_signature"] == 1
    [entry] = await control.get("requests")
    assert (entry["status"], entry["parent_uid"], entry["api"]) == (401, None, "list_quota_coupons")
