"""RELAY_SOURCE_ADDRESS: the relay's API connections leave from that local address."""

from __future__ import annotations

from service.api.client import BssHttp, Endpoints, session_from
from service.api.operations import OPERATIONS
from service.api.signer import Signer
from service.sandbox.server import SandboxServer
from service.settings import Settings
from tests.fakes import dispatcher
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control


async def test_api_calls_leave_from_the_source_address(
    sandbox: SandboxServer, control: Control
) -> None:
    for source in ("127.0.0.2", "127.0.0.3"):
        settings = Settings(bss_endpoint=sandbox.url, relay_source_address=source)
        assert settings.relay_egress == source  # it names the egress bucket too
        async with session_from(settings.api) as session:
            http = BssHttp(
                session=session,
                endpoints=Endpoints(bss=settings.bss_endpoint, iam=settings.bss_endpoint),
                dispatcher=dispatcher(egress=settings.relay_egress),
            )
            answer = await http.call(
                OPERATIONS["list_quota_coupons"],
                Signer(ids.PARTNER_AK, ids.PARTNER_SK),
                parent_uid=ids.PARTNER_ID,
                body=b"{}",
            )
            assert answer.status == 200
    logged = [e for e in await control.get("requests") if e["api"] == "list_quota_coupons"]
    assert [e["source"] for e in logged] == ["127.0.0.2", "127.0.0.3"]
