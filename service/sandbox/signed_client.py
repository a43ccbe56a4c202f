"""A minimal signed HTTP client for the sandbox: rehearsals, the load check and the sandbox's tests.

It signs with ``service.api.signer.Signer`` (the same code the relay's BSS client uses) and sends
exactly the bytes and the query string it signed. It is not the relay's production client (that is
``service.api.client``): no retries, no limiter, no error mapping — it returns what the server said.

    async with aiohttp.ClientSession() as http:
        partner = SignedClient(http, "http://127.0.0.1:18080", Signer(AK, SK))
        answer = await partner.op("list_quota_coupons", body={})
        customer = await partner.assume("bss_partner_demo", customer_id)
        answer = await customer.op("renewal_resources", body={...})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from service.api.operations import OPERATIONS
from service.api.signer import QueryValue, Signer, canonical_query
from service.sandbox.wire import dumps, loads

__all__ = ["Answer", "SignedClient"]

Query = Iterable[tuple[str, QueryValue | None]]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # parsed JSON (non-integers as Decimal), or None for an empty body

    @property
    def error_code(self) -> str | None:
        return self.body.get("error_code") if isinstance(self.body, dict) else None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A signed request, ready to send (or to tamper with, in tests)."""

    method: str
    url: URL
    headers: dict[str, str]
    body: bytes


class SignedClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        signer: Signer,
        *,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._session = session
        self._base = URL(base_url)
        self.signer = signer
        self._extra = dict(extra_headers or {})

    def prepare(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: object = None,
        now: datetime | None = None,
    ) -> Prepared:
        raw_query = canonical_query(query)
        payload = b"" if body is None else dumps(body)
        host = self._base.raw_authority
        headers = {"Content-Type": "application/json", **self._extra}
        signed = self.signer.sign(
            method, host, path, query=raw_query, headers=headers, body=payload, now=now
        )
        text = f"{self._base}{path}" + (f"?{raw_query}" if raw_query else "")
        return Prepared(method.upper(), URL(text, encoded=True), signed, payload)

    async def send(self, prepared: Prepared) -> Answer:
        async with self._session.request(
            prepared.method, prepared.url, data=prepared.body, headers=prepared.headers
        ) as response:
            raw = await response.read()
            return Answer(response.status, response.headers, loads(raw) if raw else None)

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: object = None,
        now: datetime | None = None,
    ) -> Answer:
        return await self.send(self.prepare(method, path, query=query, body=body, now=now))

    async def op(
        self,
        name: str,
        *,
        params: Mapping[str, str] | None = None,
        query: Query = (),
        body: object = None,
    ) -> Answer:
        """Call an operation of ``service.api.operations`` by name."""
        operation = OPERATIONS[name]
        path = operation.render(**(params or {}))
        return await self.call(operation.method, path, query=query, body=body)

    async def assume(
        self, agency_name: str, customer_id: str, *, duration_seconds: int = 900
    ) -> SignedClient:
        """A client signing with the customer's temporary credentials (IAM ``assume_role``)."""
        answer = await self.op(
            "create_temporary_access_key_by_agency",
            body={
                "auth": {
                    "identity": {
                        "methods": ["assume_role"],
                        "assume_role": {
                            "agency_name": agency_name,
                            "domain_id": customer_id,
                            "duration_seconds": duration_seconds,
                        },
                    }
                }
            },
        )
        if answer.status != 201:
            raise RuntimeError(f"assume_role failed: {answer.status} {answer.body}")
        credential = answer.body["credential"]
        signer = Signer(credential["access"], credential["secret"], credential["securitytoken"])
        return SignedClient(self._session, str(self._base), signer, extra_headers=self._extra)
