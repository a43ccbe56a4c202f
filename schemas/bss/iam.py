"""IAM bodies for a customer's delegated temporary credentials (``reference/bss-api.md`` §3).

``POST /v3.0/OS-CREDENTIAL/securitytokens`` signed with the partner's AK/SK, method
``assume_role`` with the partner's agency in the customer's account.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.bss.wire import WireRequest, WireResponse
from schemas.common import UtcDateTime

__all__ = [
    "AssumeRole",
    "AssumeRoleAuth",
    "AssumeRoleIdentity",
    "AssumeRoleReq",
    "TemporaryCredential",
    "TemporaryCredentialResp",
]

MIN_DURATION_SECONDS = 15 * 60  # IAM's documented range: 15 minutes ...
MAX_DURATION_SECONDS = 24 * 60 * 60  # ... to 24 hours


class AssumeRole(WireRequest):
    agency_name: str
    domain_id: str
    """The customer's account (domain) id."""
    duration_seconds: int = Field(ge=MIN_DURATION_SECONDS, le=MAX_DURATION_SECONDS)


class AssumeRoleIdentity(WireRequest):
    methods: list[Literal["assume_role"]] = ["assume_role"]
    assume_role: AssumeRole


class AssumeRoleAuth(WireRequest):
    identity: AssumeRoleIdentity


class AssumeRoleReq(WireRequest):
    auth: AssumeRoleAuth

    @classmethod
    def build(cls, *, agency_name: str, domain_id: str, duration_seconds: int) -> AssumeRoleReq:
        """The whole nested body from its three inputs."""
        role = AssumeRole(
            agency_name=agency_name, domain_id=domain_id, duration_seconds=duration_seconds
        )
        return cls(auth=AssumeRoleAuth(identity=AssumeRoleIdentity(assume_role=role)))


class TemporaryCredential(WireResponse):
    access: str
    secret: str = Field(repr=False)  # secrets never reach logs through a repr
    securitytoken: str = Field(repr=False)
    expires_at: UtcDateTime
    """e.g. ``2026-11-24T09:00:00.000000Z``."""


class TemporaryCredentialResp(WireResponse):
    credential: TemporaryCredential
