"""Throttling per (API, ParentUid) and per (API, source address): the published limits answer 429
APIG.0308."""

from __future__ import annotations

import asyncio

import aiohttp

from service.api.signer import Signer
from service.sandbox.ratelimit import RateLimiter
from service.sandbox.server import SandboxServer
from service.sandbox.signed_client import Answer, SignedClient
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control


async def burst(client: SignedClient, count: int) -> list[Answer]:
    return list(
        await asyncio.gather(*(client.op("list_quota_coupons", body={}) for _ in range(count)))
    )


async def test_eleventh_request_in_a_second_is_throttled(
    partner: SignedClient, other_partner: SignedClient, control: Control
) -> None:
    await control.put("limits", {})  # back to the published table: 10/s for this API
    answers = await burst(partner, 11)
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 10 + [429]
    refused = next(a for a in answers if a.status == 429)
    assert refused.body["error_code"] == "APIG.0308"
    assert "limit:10,time:1 second" in refused.body["error_msg"]
    assert refused.body["request_id"] == refused.headers["X-Request-Id"]
    # another ParentUid, but the same source address: its (API, source) window is full too
    assert (await other_partner.op("list_quota_coupons", body={})).status == 429
    counters = await control.get("counters")
    assert (counters["throttled"], counters["per_api"]["list_quota_coupons"]["throttled"]) == (2, 2)
    logged = [
        e["status"] for e in await control.get("requests") if e["api"] == "list_quota_coupons"
    ]
    assert sorted(logged) == [200] * 10 + [429] * 2


async def test_limits_are_configurable_at_run_time(partner: SignedClient, control: Control) -> None:
    shown = await control.put("limits", {"list_quota_coupons": 2, "*": 50})
    assert shown["effective"]["list_quota_coupons"] == 2
    assert shown["effective"]["renewal_resources"] == 50
    assert [a.status for a in await burst(partner, 3)].count(429) == 1
    await control.put("limits", {"list_quota_coupons": None})
    assert all(a.status == 200 for a in await burst(partner, 20))


async def test_bad_limits_are_refused(control: Control) -> None:
    await control.put("limits", {"no_such_api": 1}, expect=400)
    await control.put("limits", {"renewal_resources": -1}, expect=400)
    await control.put("limits", {"renewal_resources": "10"}, expect=400)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_window_counts_accepted_requests_of_the_preceding_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"list_quota_coupons": 2}, clock=clock)
    key = ("10.0.0.1", "list_quota_coupons", "p")
    assert limiter.admit(*key) is None
    clock.now = 100.5
    assert limiter.admit(*key) is None
    assert limiter.admit(*key) is not None  # two accepted in (99.5, 100.5]
    clock.now = 101.0
    assert limiter.admit(*key) is None  # the one at 100.0 left the window (100.0, 101.0]
    assert limiter.admit(*key) is not None
    assert limiter.admit("10.0.0.2", "list_quota_coupons", "p") is not None  # p is full
    assert limiter.admit("10.0.0.2", "list_quota_coupons", "q") is None  # another source and uid


def test_fractional_limits() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"renewal_resources": 0.5, "list_quota_coupons": 2.5}, clock=clock)
    assert limiter.admit("ip", "renewal_resources", "p") is None
    clock.now += 1.9
    assert limiter.admit("ip", "renewal_resources", "p") is not None
    clock.now += 0.2
    assert limiter.admit("ip", "renewal_resources", "p") is None
    results = [limiter.admit("ip", "list_quota_coupons", "p") is None for _ in range(3)]
    assert results == [True, True, False]  # 2.5/s allows 2 per second


def test_unthrottled_operations() -> None:
    limiter = RateLimiter({"renewal_resources": 0})
    assert all(limiter.admit("ip", "renewal_resources", "p") is None for _ in range(100))
    assert all(
        limiter.admit("ip", "create_temporary_access_key_by_agency", "p") is None
        for _ in range(100)
    )


async def test_two_sources_cannot_each_send_one_customer_the_full_limit(
    sandbox: SandboxServer, control: Control
) -> None:
    """Strict reading (CONTRACT §6): the (API, ParentUid) window counts every source address."""
    await control.put("limits", {"list_quota_coupons": 10})
    answers: list[Answer] = []
    for source in ("127.0.0.2", "127.0.0.3"):
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            client = SignedClient(session, sandbox.url, Signer(ids.PARTNER_AK, ids.PARTNER_SK))
            answers += await burst(client, 10)
    assert sorted(a.status for a in answers) == [200] * 10 + [429] * 10
    logged = [e for e in await control.get("requests") if e["api"] == "list_quota_coupons"]
    assert {e["source"] for e in logged} == {"127.0.0.2", "127.0.0.3"}


async def test_one_source_cannot_send_two_customers_more_than_the_limit(
    acme: SignedClient, globex: SignedClient, control: Control
) -> None:
    """The (API, source address) window counts every caller from that address."""
    api = "list_pay_per_use_customer_resources"
    await control.put("limits", {api: 10})
    answers = await asyncio.gather(
        *(client.op(api, body={}) for client in (acme, globex) for _ in range(6))
    )
    assert sorted(a.status for a in answers) == [200] * 10 + [429] * 2


def test_either_window_full_refuses_and_a_refusal_counts_in_neither() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"list_quota_coupons": 2}, clock=clock)
    api = "list_quota_coupons"
    assert limiter.admit("a", api, "p") is None
    assert limiter.admit("b", api, "p") is None
    assert limiter.admit("c", api, "p") is not None  # p's window is full, whatever the source
    assert limiter.admit("a", api, "q") is None
    assert limiter.admit("a", api, "r") is not None  # a's window is full, whatever the caller
    assert limiter.admit("c", api, "q") is None  # refusals above were not counted for c or q
