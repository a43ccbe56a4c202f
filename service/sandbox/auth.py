"""The API gateway's AK/SK check, with the same signer the client uses (``service.api.signer``).

Every refusal is HTTP 401 ``APIGW.0301`` in the gateway shape (``error_code``, ``error_msg``,
``request_id``); messages say which check failed. Stricter than the reference where it is silent:

* ``SignedHeaders`` must include ``host`` and ``x-sdk-date``;
* with temporary keys, ``X-Security-Token`` must be present *and signed* (the SDK signs it);
* the clock skew limit is inclusive: 15 minutes exactly passes, one second more does not;
* only AK/SK signing is simulated (no ``X-Auth-Token`` tokens).

ParentUid — the account a call is throttled under — is the partner's domain id for partner keys and
the customer's domain id for temporary keys obtained by ``assume_role`` (the customer's account
signs those calls; ``reference/bss-api.md`` §7 leaves this open).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.api.signer import DATE_FORMAT, canonical_query, parse_authorization, signature
from service.sandbox.credentials import CredentialStore
from service.sandbox.errors import ApiError, gateway
from service.sandbox.model import Customer, Partner
from service.sandbox.state import SandboxState

__all__ = ["MAX_CLOCK_SKEW", "Authenticator", "Principal"]

MAX_CLOCK_SKEW = timedelta(minutes=15)
AUTH_FAILED = "APIGW.0301"
_REQUIRED_SIGNED = ("host", "x-sdk-date")


def _refuse(reason: str) -> ApiError:
    return gateway(401, AUTH_FAILED, f"Incorrect IAM authentication information: {reason}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who signed a request: a partner, or a customer through the partner's agency."""

    partner: Partner
    customer: Customer | None = None

    @property
    def parent_uid(self) -> str:
        return self.customer.customer_id if self.customer else self.partner.partner_id

    @property
    def is_partner(self) -> bool:
        return self.customer is None


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    raw_path: str
    query: Iterable[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes


class Authenticator:
    def __init__(self, state: SandboxState, credentials: CredentialStore) -> None:
        self._state = state
        self._credentials = credentials

    def verify(self, request: SignedRequest) -> Principal:
        header = request.headers.get("Authorization")
        if not header:
            raise _refuse("the Authorization header is missing (only AK/SK signing is simulated)")
        auth = parse_authorization(header)
        if auth is None:
            raise _refuse("the Authorization header is malformed")
        missing = [h for h in _REQUIRED_SIGNED if h not in auth.signed_headers]
        if missing:
            raise _refuse(f"SignedHeaders must include {', '.join(missing)}")
        self._check_date(request.headers.get("X-Sdk-Date"))
        principal, secret = self._lookup(auth.access_key, request.headers, auth.signed_headers)
        try:
            expected = signature(
                secret,
                method=request.method,
                path=request.raw_path,
                query=canonical_query(request.query),
                headers=request.headers,
                signed_headers=auth.signed_headers,
                body=request.body,
            )
        except KeyError:
            raise _refuse("a signed header is missing from the request") from None
        if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
            raise _refuse("verify aksk signature fail")
        return principal

    def _check_date(self, value: str | None) -> None:
        if not value:
            raise _refuse("the X-Sdk-Date header is missing")
        try:
            sent = datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise _refuse("X-Sdk-Date must look like 20261124T080000Z") from None
        if abs(self._state.now() - sent) > MAX_CLOCK_SKEW:
            raise _refuse("the request time differs from the server time by more than 15 minutes")

    def _lookup(
        self, access_key: str, headers: Mapping[str, str], signed: tuple[str, ...]
    ) -> tuple[Principal, str]:
        partner = self._state.partner_by_key.get(access_key)
        if partner is not None:
            return Principal(partner), partner.secret_key
        credential = self._credentials.get(access_key)
        if credential is None:
            raise _refuse("the access key does not exist")
        token = headers.get("X-Security-Token")
        if token is None or "x-security-token" not in signed:
            raise _refuse("temporary access keys need a signed X-Security-Token header")
        if not hmac.compare_digest(token.encode(), credential.securitytoken.encode()):
            raise _refuse("the security token does not match the access key")
        if credential.expires_at <= self._state.now():
            raise _refuse("the security token has expired")
        customer = self._state.customers.get(credential.customer_id)
        owner = self._state.partners.get(credential.partner_id)
        if customer is None or owner is None:
            raise _refuse("the security token's account no longer exists")
        return Principal(owner, customer), credential.secret
