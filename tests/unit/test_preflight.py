"""The preflight of a money-moving request: checked in its order right before every send."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from handlers.errors import StoreUnavailable, store_unavailable
from service.api.client import BssHttp, CallScope, Endpoints, Preflight
from service.api.operations import OPERATIONS, Operation
from service.api.signer import Signer
from tests.fakes import dispatcher

RENEW = OPERATIONS["renewal_resources"]  # mutating: money moves
QUOTE = OPERATIONS["list_renew_rate_on_period"]  # safe to repeat


class Api:
    """Answers each request with the next scripted status (then 200); counts them."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests = 0

    async def answer(self, _request: web.Request) -> web.Response:
        self.requests += 1
        status = self.statuses.pop(0) if self.statuses else 200
        body = {"error_code": "APIG.0308", "error_msg": "throttled"} if status == 429 else {}
        return web.Response(status=status, text=json.dumps(body))


@pytest.fixture
async def served() -> AsyncIterator[tuple[Api, str]]:
    api = Api(429)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield api, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def recording(steps: list[str], *, lock_lost: bool = False) -> Preflight:
    def lock_check() -> None:
        steps.append("lock")
        if lock_lost:
            raise store_unavailable("the renewal lock was lost with its connection")

    async def record_call() -> None:
        steps.append("record")

    return Preflight(lock_check=lock_check, record_call=record_call)


async def call(url: str, op: Operation, scope: CallScope) -> None:
    async with aiohttp.ClientSession() as session:
        http = BssHttp(
            session=session,
            endpoints=Endpoints(bss=url, iam=url),
            dispatcher=dispatcher({"*": 0}),  # unlimited: no quota wait in the way
        )
        await http.call(op, Signer("AK", "SK"), parent_uid="cust", body=b"{}", scope=scope)


async def test_every_send_of_a_mutating_call_checks_the_lock_then_records_it(
    served: tuple[Api, str],
) -> None:
    api, url = served
    steps: list[str] = []
    scope = CallScope(preflight=recording(steps))
    await call(url, RENEW, scope)
    assert api.requests == 2  # a 429, waited out and sent again
    assert steps == ["lock", "record", "lock", "record"]  # before each send, in this order
    assert scope.sent == 2


async def test_a_call_safe_to_repeat_has_no_preflight(served: tuple[Api, str]) -> None:
    api, url = served
    steps: list[str] = []
    await call(url, QUOTE, CallScope(preflight=recording(steps)))
    assert (api.requests, steps) == (2, [])


async def test_a_failed_check_stops_the_send(served: tuple[Api, str]) -> None:
    api, url = served
    steps: list[str] = []
    scope = CallScope(preflight=recording(steps, lock_lost=True))
    with pytest.raises(StoreUnavailable):
        await call(url, RENEW, scope)
    assert (api.requests, steps, scope.sent) == (0, ["lock"], 0)  # nothing recorded or sent
