"""The one error tree of bss-relay. Its split decides how a command is settled.

::

    RelayError                       code, message, http_status, request_id
    ├── CommandRejected              REJECT     the command itself is unusable (RELAY.SCHEMA, ...)
    ├── ApiRefused                   FAIL       the API said no for good (CBC.0100, CBC.0151, ...)
    ├── Retryable                    RETRY      nothing happened; the same call may be sent again
    │   ├── ApiUnavailable                      5xx / CBC.0999 on a read-only call
    │   │   └── Throttled                       429 / APIG.0308: wait it out, never a failure
    │   ├── NotSent                             connection failed before the request left
    │   └── CredentialsUnavailable              IAM could not give temporary credentials now
    ├── Waiting                      WAIT       not the command's fault: later, no attempt spent
    │   ├── StoreUnavailable                    the command store cannot be reached
    │   └── LeaseLost                           another process owns the command now
    ├── Paused                       PARK       an operator paused the customer's calls
    ├── OutcomeUnknown               RECONCILE  a mutating call may or may not have taken effect
    │   └── CallTimeout (also TimeoutError)     no answer in time after sending
    └── OutcomeUndecidable           UNKNOWN    reconciliation could not tell: a person must look

Only the BSS client raises the API branches, translating aiohttp errors at its boundary and
keeping them as ``__cause__``. Messages never contain secrets: the client builds them from the
API's ``error_msg`` and our own text only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

__all__ = [
    "ApiRefused",
    "ApiUnavailable",
    "CallTimeout",
    "CommandRejected",
    "CredentialsUnavailable",
    "Disposition",
    "LeaseLost",
    "NotSent",
    "OutcomeUndecidable",
    "OutcomeUnknown",
    "Paused",
    "RelayError",
    "Retryable",
    "StoreUnavailable",
    "Throttled",
    "Waiting",
    "paused",
    "store_unavailable",
]


class Disposition(StrEnum):
    """What the settlement does with a command that raised."""

    REJECT = "reject"  # terminal `rejected` event + dead letter; the API was never called
    FAIL = "fail"  # terminal `failed` event
    RETRY = "retry"  # try again later through the broker's delay queues
    RECONCILE = "reconcile"  # read the API's state before deciding anything
    UNKNOWN = "unknown"  # terminal `unknown` event + dead letter; never call again
    WAIT = "wait"  # come back later through a delay queue, spending no attempt
    PARK = "park"  # wait in the customer's parking line until it is resumed; nothing was sent


class RelayError(Exception):
    disposition: ClassVar[Disposition] = Disposition.FAIL

    def __init__(
        self,
        code: str,
        message: str,
        *,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        return self.disposition in (Disposition.RETRY, Disposition.RECONCILE)


class CommandRejected(RelayError):
    disposition = Disposition.REJECT


class ApiRefused(RelayError):
    disposition = Disposition.FAIL


class Retryable(RelayError):
    disposition = Disposition.RETRY
    # Seconds before which another attempt would fail the same way (the gateway's suggested
    # pause, a remembered IAM failure): the retry waits at least this long. Set by the raiser.
    retry_after: float | None = None


class ApiUnavailable(Retryable):
    pass


class Throttled(ApiUnavailable):
    """HTTP 429 / APIG.0308."""


class NotSent(Retryable):
    pass


class CredentialsUnavailable(Retryable):
    pass


class Waiting(RelayError):
    """Nothing is wrong with the command or the API: the service itself cannot go on with it
    now. It comes back later, however long that takes, and no attempt is spent on it."""

    disposition = Disposition.WAIT


class StoreUnavailable(Waiting):
    """The command store cannot be reached: no API call is made without it (the journal, the
    lease and the shared quota all live there)."""


def store_unavailable(message: str) -> StoreUnavailable:
    return StoreUnavailable("RELAY.STORE_UNAVAILABLE", message)


class LeaseLost(Waiting):
    """This process lost the command's lease (it was frozen or cut off past the lease): the
    call was not sent; whoever owns the command now carries it out."""


class Paused(RelayError):
    """An operator paused this customer's calls (``bss-relay pause``): nothing was sent; the
    command waits in the customer's parking line until it is resumed (or its deadline
    passes). No attempt is spent."""

    disposition = Disposition.PARK

    def __init__(self, api: str, customer: str) -> None:
        super().__init__("RELAY.PAUSED", f"the calls of customer {customer!r} to {api} are paused")
        self.api = api
        self.customer = customer


def paused(api: str, customer: str) -> Paused:
    return Paused(api, customer)


class OutcomeUnknown(RelayError):
    disposition = Disposition.RECONCILE


class CallTimeout(OutcomeUnknown, TimeoutError):
    pass


class OutcomeUndecidable(RelayError):
    disposition = Disposition.UNKNOWN
