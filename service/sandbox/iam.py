"""The slice of IAM the service uses: temporary credentials by agency (``assume_role``).

``POST /v3.0/OS-CREDENTIAL/securitytokens`` signed with a partner's AK/SK returns HTTP 201 with
``credential{access, secret, securitytoken, expires_at}`` for a customer that (a) belongs to that
partner and (b) granted the partner's agency (``agency_name``). IAM errors use IAM's flat shape
``{"error_msg", "error_code": "IAM.xxxx"}``: 400 ``IAM.0011`` bad request body, 403 ``IAM.0003``
the agency trusts another account, 404 ``IAM.0004`` no such account or agency.
``expires_at`` carries microseconds like the real service (``2026-01-08T02:56:19.587000Z``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from service.sandbox.calls import Call, Reply
from service.sandbox.credentials import CredentialStore
from service.sandbox.errors import ApiError, iam_error
from service.sandbox.model import Customer

__all__ = ["MAX_DURATION", "MIN_DURATION", "TokenIssuer"]

MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 900, 86400, 900  # seconds
_ASSUME_KEYS = {"agency_name", "domain_id", "domain_name", "duration_seconds", "session_user"}


def _invalid(what: str) -> ApiError:
    return iam_error(400, "IAM.0011", f"Request parameter {what} is invalid.")


def _object(value: object, what: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(value) <= keys:
        raise _invalid(what)
    return value


def _assume_role(body: object) -> dict[str, Any]:
    auth = _object(_object(body, "body", {"auth"}).get("auth"), "auth", {"identity"})
    identity = _object(auth.get("identity"), "auth.identity", {"methods", "assume_role", "policy"})
    if identity.get("methods") != ["assume_role"]:
        raise _invalid("auth.identity.methods")
    return _object(identity.get("assume_role"), "auth.identity.assume_role", _ASSUME_KEYS)


def _duration(request: dict[str, Any]) -> int:
    value = request.get("duration_seconds", DEFAULT_DURATION)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or not MIN_DURATION <= value <= MAX_DURATION:
        raise _invalid("duration_seconds (900-86400)")
    return int(value)


class TokenIssuer:
    """The handler for ``create_temporary_access_key_by_agency``."""

    def __init__(self, store: CredentialStore, ttl_override: Callable[[], float | None]) -> None:
        self._store = store
        self._ttl_override = ttl_override

    def __call__(self, call: Call) -> Reply:
        request = _assume_role(call.body)
        agency = request.get("agency_name")
        if not isinstance(agency, str) or not agency:
            raise _invalid("agency_name")
        duration = _duration(request)
        customer = self._customer(call, request)
        partner = call.principal.partner
        if customer.partner_id != partner.partner_id:
            raise iam_error(403, "IAM.0003", "The agency does not trust this account.")
        if not customer.agency_granted or agency != partner.agency_name:
            raise iam_error(404, "IAM.0004", f"Could not find agency: {agency}.")
        override = self._ttl_override()
        ttl = timedelta(seconds=override if override is not None else duration)
        credential = self._store.issue(
            partner_id=partner.partner_id, customer_id=customer.customer_id, ttl=ttl, now=call.now
        )
        expires = credential.expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return Reply(
            201,
            {
                "credential": {
                    "access": credential.access,
                    "secret": credential.secret,
                    "securitytoken": credential.securitytoken,
                    "expires_at": expires,
                }
            },
        )

    @staticmethod
    def _customer(call: Call, request: dict[str, Any]) -> Customer:
        domain_id, domain_name = request.get("domain_id"), request.get("domain_name")
        if (domain_id is None) == (domain_name is None):
            raise _invalid("domain_id or domain_name (exactly one)")
        state = call.state
        found = (
            state.customers.get(domain_id)
            if isinstance(domain_id, str)
            else state.customer_by_name.get(domain_name)
            if isinstance(domain_name, str)
            else None
        )
        if found is None:
            raise iam_error(404, "IAM.0004", "Could not find domain.")
        return found
