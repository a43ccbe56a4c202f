"""Signers for a partner's own calls and for its customers' calls (temporary credentials).

A customer's calls are signed with temporary AK/SK + security token that IAM issues to the
partner through the agency the customer granted (``reference/bss-api.md`` §3, route A).

Invariants: a cached credential is handed out only while it has more than ``refresh_margin``
left; at most one IAM request per customer is in flight, however many commands ask at once;
a failed fetch is remembered for ``FAILURE_TTL_S`` so a burst of waiters does not turn an IAM
outage into a storm; the cache holds at most ``max_entries`` customers (least recently used
go first), so memory stays bounded with any number of customers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from handlers.errors import ApiRefused, CredentialsUnavailable, RelayError, Retryable
from schemas.bss import AssumeRoleReq, TemporaryCredentialResp, parse_wire, wire_json
from service.api.client import BssHttp
from service.api.operations import OPERATIONS
from service.api.signer import Signer
from service.concurrency import KeyedLock
from service.settings import PartnerAccount

__all__ = ["CredentialCache", "partner_signer"]

log = structlog.get_logger(__name__)

FAILURE_TTL_S = 1.0
IAM_OPERATION = OPERATIONS["create_temporary_access_key_by_agency"]


def partner_signer(partner: PartnerAccount) -> Signer:
    return Signer(partner.access_key, partner.secret_key.get_secret_value())


@dataclass(frozen=True, slots=True)
class _Entry:
    signer: Signer
    expires_at: datetime


class CredentialCache:
    """Temporary credentials of one partner's customers, fetched from IAM on demand."""

    def __init__(
        self,
        *,
        http: BssHttp,
        partner: PartnerAccount,
        duration_s: int = 3600,
        refresh_margin_s: int = 300,
        max_entries: int = 10_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._http = http
        self._partner = partner
        self._partner_signer = partner_signer(partner)
        self._duration_s = duration_s
        self._margin = timedelta(seconds=refresh_margin_s)
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._fetching: KeyedLock[str] = KeyedLock()
        self._failures: dict[str, tuple[datetime, RelayError]] = {}
        self.fetches = 0  # IAM requests made; read by tests and metrics

    def __len__(self) -> int:
        return len(self._entries)

    def _fresh(self, customer_id: str) -> _Entry | None:
        entry = self._entries.get(customer_id)
        if entry is None:
            return None
        if entry.expires_at - self._margin <= self._clock():
            del self._entries[customer_id]
            return None
        self._entries.move_to_end(customer_id)
        return entry

    def invalidate(self, customer_id: str) -> None:
        """Forget a customer's credentials (e.g. the API said the token is no longer valid)."""
        self._entries.pop(customer_id, None)

    async def signer_for(self, customer_id: str) -> Signer:
        entry = self._fresh(customer_id)
        if entry is not None:
            return entry.signer
        async with self._fetching.hold(customer_id):  # one IAM call per customer at a time
            entry = self._fresh(customer_id) or await self._fetch_once(customer_id)
        return entry.signer

    async def _fetch_once(self, customer_id: str) -> _Entry:
        failed = self._failures.get(customer_id)
        if failed is not None:
            at, error = failed
            left = FAILURE_TTL_S - (self._clock() - at).total_seconds()
            if left > 0:
                if isinstance(error, Retryable):
                    remembered = CredentialsUnavailable(error.code, error.message)
                    remembered.retry_after = left  # a retry sooner would only meet it again
                    raise remembered
                raise _again(error)
            del self._failures[customer_id]
        try:
            entry = await self._fetch(customer_id)
        except RelayError as exc:
            self._remember(customer_id, exc)
            raise
        self._failures.pop(customer_id, None)
        self._entries[customer_id] = entry
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return entry

    def _remember(self, customer_id: str, error: RelayError) -> None:
        """Keep a failure for ``FAILURE_TTL_S``: a copy without its traceback (which holds the
        frames of the command that met it), and only while it can still serve; the expired
        ones of other customers go now, so memory follows the failures of the last second."""
        now = self._clock()
        for gone in [
            c
            for c, (at, _) in self._failures.items()
            if (now - at).total_seconds() >= FAILURE_TTL_S
        ]:
            del self._failures[gone]
        if len(self._failures) >= self._max_entries:
            self._failures.clear()  # bounded: stale failures only save one IAM call each
        self._failures[customer_id] = (now, _again(error))

    async def _fetch(self, customer_id: str) -> _Entry:
        if not self._partner.agency_name:
            raise ApiRefused(
                "RELAY.NO_AGENCY",
                f"partner {self._partner.partner_id} has no agency name configured",
            )
        body = wire_json(
            AssumeRoleReq.build(
                agency_name=self._partner.agency_name,
                domain_id=customer_id,
                duration_seconds=self._duration_s,
            )
        )
        self.fetches += 1
        try:
            response = await self._http.call(
                IAM_OPERATION,
                self._partner_signer,
                parent_uid=self._partner.partner_id,
                domain_id=self._partner.partner_id,
                body=body,
            )
        except Retryable as exc:
            raise CredentialsUnavailable(exc.code, f"IAM: {exc.message}") from exc
        credential = parse_wire(TemporaryCredentialResp, response.body).credential
        log.info("customer_credentials_issued", customer_id=customer_id)
        signer = Signer(credential.access, credential.secret, credential.securitytoken)
        return _Entry(signer=signer, expires_at=credential.expires_at.astimezone(UTC))


def _again(error: RelayError) -> RelayError:
    """A new exception like ``error``, without its traceback and context. Raising one stored
    exception object again and again chains each raiser's frames onto its traceback (and the
    commands those frames hold): kept for as long as the object is."""
    again = type(error)(
        error.code, error.message, http_status=error.http_status, request_id=error.request_id
    )
    if isinstance(error, Retryable) and isinstance(again, Retryable):
        again.retry_after = error.retry_after
    return again
