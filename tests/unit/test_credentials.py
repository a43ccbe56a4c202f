"""Customer credential cache: expiry, refresh, one IAM call under concurrency, failures.

IAM is faked at the HTTP seam with a real aiohttp server, so the client code is the real one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from handlers.errors import ApiRefused, CredentialsUnavailable
from service.api.client import BssHttp, Endpoints
from service.api.credentials import FAILURE_TTL_S, CredentialCache
from service.settings import PartnerAccount
from tests.fakes import dispatcher

PARTNER = PartnerAccount(
    partner_id="p1", access_key="AK", secret_key=SecretStr("SK"), agency_name="relay-agency"
)


@dataclass
class FakeIam:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 24, 8, tzinfo=UTC))
    calls: list[dict[str, object]] = field(default_factory=list)
    status: int = 201
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        await asyncio.sleep(self.delay)
        if self.status != 201:
            return web.json_response(
                {"error": {"code": "IAM.0001", "message": "no"}}, status=self.status
            )
        n = len(self.calls)
        expires = self.now + timedelta(
            seconds=body["auth"]["identity"]["assume_role"]["duration_seconds"]
        )
        return web.json_response(
            {
                "credential": {
                    "access": f"TMPAK{n}",
                    "secret": f"TMPSK{n}",
                    "securitytoken": f"TOKEN{n}",
                    "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                }
            },
            status=201,
        )


@pytest.fixture
async def iam() -> AsyncIterator[tuple[FakeIam, str]]:
    fake = FakeIam()
    app = web.Application()
    app.router.add_post("/v3.0/OS-CREDENTIAL/securitytokens", fake.handle)
    server = TestServer(app)
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_cache(
    session: aiohttp.ClientSession, url: str, clock: list[datetime], **kwargs: int
) -> CredentialCache:
    http = BssHttp(session=session, endpoints=Endpoints(bss=url, iam=url), dispatcher=dispatcher())
    return CredentialCache(http=http, partner=PARTNER, clock=lambda: clock[0], **kwargs)


async def test_one_iam_call_for_many_concurrent_commands(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    fake, url = iam
    fake.delay = 0.05
    cache = make_cache(session, url, [fake.now])
    signers = await asyncio.gather(*(cache.signer_for("c1") for _ in range(50)))
    assert len(fake.calls) == 1
    assert {s.access_key for s in signers} == {"TMPAK1"}
    assert signers[0].security_token == "TOKEN1"
    assert fake.calls[0]["auth"]["identity"]["assume_role"] == {  # type: ignore[index]
        "agency_name": "relay-agency",
        "domain_id": "c1",
        "duration_seconds": 3600,
    }


async def test_cached_until_refresh_margin_then_refreshed(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    fake, url = iam
    clock = [fake.now]
    cache = make_cache(session, url, clock, duration_s=3600, refresh_margin_s=300)
    first = await cache.signer_for("c1")
    clock[0] = fake.now + timedelta(seconds=3299)
    assert await cache.signer_for("c1") is first
    clock[0] = fake.now + timedelta(seconds=3300)  # inside the margin: fetch anew
    second = await cache.signer_for("c1")
    assert second.access_key == "TMPAK2"
    assert len(fake.calls) == 2


async def test_customers_are_cached_separately_and_bounded(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    fake, url = iam
    cache = make_cache(session, url, [fake.now], max_entries=3)
    for customer in ("a", "b", "c", "d"):
        await cache.signer_for(customer)
    assert len(cache) == 3
    await cache.signer_for("a")  # evicted first (least recently used): fetched again
    assert len(fake.calls) == 5


async def test_invalidate_forces_a_new_fetch(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    fake, url = iam
    cache = make_cache(session, url, [fake.now])
    await cache.signer_for("c1")
    cache.invalidate("c1")
    assert (await cache.signer_for("c1")).access_key == "TMPAK2"


async def test_iam_refusal_is_permanent_and_outage_is_retryable(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    fake, url = iam
    clock = [fake.now]
    cache = make_cache(session, url, clock)
    fake.status = 403
    with pytest.raises(ApiRefused) as refused:
        await cache.signer_for("c1")
    assert refused.value.code == "IAM.0001"
    fake.status = 503
    clock[0] += timedelta(seconds=2)
    with pytest.raises(CredentialsUnavailable):
        await cache.signer_for("c2")


async def test_failure_is_remembered_briefly_for_waiters(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    fake, url = iam
    fake.status = 503
    fake.delay = 0.05
    cache = make_cache(session, url, [fake.now])
    results = await asyncio.gather(
        *(cache.signer_for("c1") for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, CredentialsUnavailable) for r in results)
    assert len(fake.calls) == 1


async def test_a_remembered_failure_says_when_a_retry_can_succeed(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    fake, url = iam
    fake.status = 503
    clock = [fake.now]
    cache = make_cache(session, url, clock)
    with pytest.raises(CredentialsUnavailable) as first:
        await cache.signer_for("c1")
    assert first.value.retry_after is None  # the real answer: the usual backoff applies
    clock[0] += timedelta(seconds=FAILURE_TTL_S / 4)
    with pytest.raises(CredentialsUnavailable) as remembered:
        await cache.signer_for("c1")
    assert remembered.value.retry_after == pytest.approx(FAILURE_TTL_S * 3 / 4)
    assert len(fake.calls) == 1
    fake.status = 201
    clock[0] += timedelta(seconds=FAILURE_TTL_S)
    assert await cache.signer_for("c1") is not None  # asked again once it expired
    assert len(fake.calls) == 2


def _depth(error: BaseException) -> int:
    depth, tb = 0, error.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


async def test_a_remembered_refusal_is_raised_anew_not_grown(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    """Issue 17 (memory): the remembered exception itself was raised to every waiter, and
    each raise chained the waiter's frames (its command's journal, scope, message) onto its
    traceback, kept with the entry. Each waiter gets an exception of its own."""
    fake, url = iam
    fake.status = 403
    cache = make_cache(session, url, [fake.now])
    raised: list[ApiRefused] = []
    for _ in range(5):
        with pytest.raises(ApiRefused) as refused:
            await cache.signer_for("c1")
        raised.append(refused.value)
    assert len(fake.calls) == 1  # remembered
    assert len({id(e) for e in raised}) == len(raised)
    assert {_depth(e) for e in raised[1:]} == {_depth(raised[1])}
    assert {(e.code, e.http_status) for e in raised} == {("IAM.0001", 403)}


async def test_expired_failures_are_swept(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    """A failure is kept for FAILURE_TTL_S, not until its customer is asked for again: memory
    follows the failures of the last second, not every customer that ever failed."""
    fake, url = iam
    fake.status = 503
    clock = [fake.now]
    cache = make_cache(session, url, clock)
    for customer in ("a", "b", "c"):
        with pytest.raises(CredentialsUnavailable):
            await cache.signer_for(customer)
    clock[0] += timedelta(seconds=FAILURE_TTL_S)
    with pytest.raises(CredentialsUnavailable):
        await cache.signer_for("d")
    assert list(cache._failures) == ["d"]


async def test_request_is_signed_by_the_partner(
    iam: tuple[FakeIam, str], session: aiohttp.ClientSession
) -> None:
    fake, url = iam
    cache = make_cache(session, url, [fake.now])
    await cache.signer_for("c1")
    assert json.dumps(fake.calls[0])  # body arrived as JSON
