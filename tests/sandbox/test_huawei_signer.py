"""Requests signed by Huawei's official signer (huaweicloudsdkcore, test-only) are accepted."""

from __future__ import annotations

import json

import aiohttp
from huaweicloudsdkcore.auth.credentials import GlobalCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer as HuaweiSigner
from yarl import URL

from service.api.signer import Signer
from service.sandbox.server import SandboxServer
from service.sandbox.signed_client import SignedClient
from tests.sandbox import demo_ids as ids
from tests.sandbox.conftest import Control


def huawei_signed(
    sandbox: SandboxServer,
    method: str,
    path: str,
    query: list[tuple[str, object]],
    body: str | None,
) -> SdkRequest:
    host = URL(sandbox.url).raw_authority
    request = SdkRequest(
        method,
        schema="http",
        host=host,
        resource_path=path,
        query_params=query,
        header_params={
            "Content-Type": "application/json",
            "User-Agent": "huaweicloud-usdk-python/3.0",
        },
        body=body,
    )
    # What GlobalCredentials.sign_request does for a partner key: add X-Domain-Id, then sign.
    request.header_params["X-Domain-Id"] = ids.PARTNER_ID
    signed: SdkRequest = HuaweiSigner(GlobalCredentials(ids.PARTNER_AK, ids.PARTNER_SK)).sign(
        request
    )
    return signed


async def send(
    http: aiohttp.ClientSession, sandbox: SandboxServer, request: SdkRequest
) -> aiohttp.ClientResponse:
    url = URL(f"{sandbox.url}{request.uri}", encoded=True)
    # The signer replaces a str body by its UTF-8 bytes: send exactly the bytes it hashed.
    body = request.body
    data = body if isinstance(body, bytes) else (body or "").encode()
    async with http.request(
        request.method, url, headers=request.header_params, data=data
    ) as response:
        await response.read()
        return response


async def test_official_signer_post_is_accepted(
    sandbox: SandboxServer, http: aiohttp.ClientSession, control: Control
) -> None:
    body = json.dumps({"customer_id": ids.ACME, "limit": 5})
    request = huawei_signed(sandbox, "POST", "/v2/orders/suscriptions/resources/query", [], body)
    assert "x-domain-id" in request.header_params["Authorization"]
    response = await send(http, sandbox, request)
    assert response.status == 200


async def test_official_signer_get_with_repeated_query_is_accepted(
    sandbox: SandboxServer, http: aiohttp.ClientSession, control: Control
) -> None:
    query: list[tuple[str, object]] = [
        ("operation_types", ["2", "1"]),
        ("limit", 5),
        ("customer_id", ids.ACME),
    ]
    request = huawei_signed(
        sandbox, "GET", "/v2/promotions/benefits/partner-coupons/records/query", query, None
    )
    response = await send(http, sandbox, request)
    assert response.status == 200


async def test_official_signer_with_one_flipped_byte_is_refused(
    sandbox: SandboxServer, http: aiohttp.ClientSession, control: Control
) -> None:
    body = json.dumps({"customer_id": ids.ACME})
    request = huawei_signed(sandbox, "POST", "/v2/orders/suscriptions/resources/query", [], body)
    auth = request.header_params["Authorization"]
    request.header_params["Authorization"] = auth[:-1] + ("0" if auth[-1] != "0" else "1")
    response = await send(http, sandbox, request)
    assert response.status == 401


async def test_official_signer_with_security_token_is_accepted(
    sandbox: SandboxServer, http: aiohttp.ClientSession, control: Control
) -> None:
    partner = SignedClient(http, sandbox.url, Signer(ids.PARTNER_AK, ids.PARTNER_SK))
    acme = await partner.assume(ids.AGENCY, ids.ACME)
    assert acme.signer.security_token is not None
    request = SdkRequest(
        "DELETE",
        schema="http",
        host=URL(sandbox.url).raw_authority,
        resource_path="/v2/orders/subscriptions/resources/autorenew/acme-ecs-02",
        query_params=[],
        header_params={"Content-Type": "application/json"},
    )
    credentials = GlobalCredentials(
        acme.signer.access_key, acme.signer.secret_key
    ).with_security_token(acme.signer.security_token)
    signed = credentials.sign_request(request)
    assert "x-security-token" in signed.header_params["Authorization"]
    response = await send(http, sandbox, signed)
    assert response.status == 204
