"""Fixtures: a sandbox on loopback for each test (limits off unless a test sets them; of its
own, so that no request another test left in flight lands in its log -- starting one takes
about 2 ms), and signed clients for the demo partner and its customers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from service.api.signer import Signer
from service.sandbox.server import SandboxServer
from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(limits={"*": None}, log_size=5000) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Control:
    """The unsigned ``/_sandbox/`` routes."""

    url: str
    http: aiohttp.ClientSession

    async def get(self, route: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}/_sandbox/{route}", params=params) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def put(self, route: str, body: Any, *, expect: int = 200) -> Any:
        async with self.http.put(f"{self.url}/_sandbox/{route}", json=body) as resp:
            assert resp.status == expect, await resp.text()
            return await resp.json()

    async def reset(self) -> None:
        async with self.http.post(f"{self.url}/_sandbox/reset") as resp:
            assert resp.status == 200

    async def state(self) -> dict[str, Any]:
        state: dict[str, Any] = await self.get("state")
        return state

    async def resource(self, resource_id: str) -> dict[str, Any]:
        state = await self.state()
        return next(r for r in state["resources"] if r["resource_id"] == resource_id)

    async def order(self, order_id: str) -> dict[str, Any]:
        state = await self.state()
        return next(o for o in state["orders"] if o["order_id"] == order_id)

    async def quota(self, quota_id: str) -> dict[str, Any]:
        state = await self.state()
        return next(q for q in state["coupon_quotas"] if q["quota_id"] == quota_id)


@pytest.fixture
async def control(sandbox: SandboxServer, http: aiohttp.ClientSession) -> AsyncIterator[Control]:
    ctl = Control(sandbox.url, http)
    await ctl.reset()
    yield ctl
    await ctl.reset()


@pytest.fixture
def partner(sandbox: SandboxServer, http: aiohttp.ClientSession, control: Control) -> SignedClient:
    return SignedClient(http, sandbox.url, Signer(ids.PARTNER_AK, ids.PARTNER_SK))


@pytest.fixture
def other_partner(
    sandbox: SandboxServer, http: aiohttp.ClientSession, control: Control
) -> SignedClient:
    return SignedClient(http, sandbox.url, Signer(ids.OTHER_AK, ids.OTHER_SK))


@pytest.fixture
async def acme(partner: SignedClient) -> SignedClient:
    return await partner.assume(ids.AGENCY, ids.ACME)


@pytest.fixture
async def globex(partner: SignedClient) -> SignedClient:
    return await partner.assume(ids.AGENCY, ids.GLOBEX)
