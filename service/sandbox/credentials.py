"""Temporary AK/SK + security tokens handed out by the simulated IAM ``assume_role``.

They are credentials, not business data: ``POST /_sandbox/reset`` keeps them, so a service that
cached a customer's token before a reset keeps working. Expired entries are dropped lazily (on
lookup, and in bulk whenever the store doubles), so the store stays bounded under a benchmark.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["CredentialStore", "TemporaryCredential"]

_UPPER_ALNUM = string.ascii_uppercase + string.digits
_ALNUM = string.ascii_letters + string.digits


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass(frozen=True, slots=True)
class TemporaryCredential:
    access: str
    secret: str = field(repr=False)
    securitytoken: str = field(repr=False)
    expires_at: datetime
    partner_id: str
    customer_id: str


class CredentialStore:
    def __init__(self) -> None:
        self._by_access: dict[str, TemporaryCredential] = {}
        self._prune_at = 1024

    def issue(
        self, *, partner_id: str, customer_id: str, ttl: timedelta, now: datetime
    ) -> TemporaryCredential:
        credential = TemporaryCredential(
            access=_random(_UPPER_ALNUM, 20),
            secret=_random(_ALNUM, 40),
            # Real tokens are long opaque strings starting "gQpjbi1ub3J0aC..."; length is kept
            # realistic so header-size assumptions in clients get exercised.
            securitytoken="gQ" + secrets.token_urlsafe(600),
            expires_at=now + ttl,
            partner_id=partner_id,
            customer_id=customer_id,
        )
        self._by_access[credential.access] = credential
        if len(self._by_access) >= self._prune_at:
            self._prune(now)
        return credential

    def get(self, access: str) -> TemporaryCredential | None:
        return self._by_access.get(access)

    def _prune(self, now: datetime) -> None:
        self._by_access = {k: v for k, v in self._by_access.items() if v.expires_at > now}
        self._prune_at = max(1024, 2 * len(self._by_access))

    def __len__(self) -> int:
        return len(self._by_access)
