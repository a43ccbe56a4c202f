"""The result event envelope (CONTRACT §3): one terminal event per command.

One class per command type so that ``result`` has a schema a subscriber can generate code from;
``InvalidEvent`` is for a body whose type could not be read. The published routing key is
``<type>.<outcome>`` (``routing_key``), so subscribers can bind to exactly what they care about.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, TypeAdapter, model_validator
from pydantic_core import PydanticCustomError

from schemas.auto_renew import SetAutoRenewResult
from schemas.common import StrictModel, UtcDateTime
from schemas.coupon import IssueCouponResult
from schemas.price import PriceResult
from schemas.renew import RenewResult

__all__ = [
    "EVENT_ADAPTER",
    "INVALID_TYPE",
    "ErrorInfo",
    "Event",
    "EventBase",
    "InquirePriceEvent",
    "InvalidEvent",
    "IssueCouponEvent",
    "Outcome",
    "RenewEvent",
    "SetAutoRenewEvent",
    "routing_key",
]

INVALID_TYPE = "invalid"


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"  # the API confirmed every item
    PARTIAL = "partial"  # a batch call: some items accepted, some refused (both in ``result``)
    FAILED = "failed"  # the API refused, or retries of a transient error ran out
    REJECTED = "rejected"  # the command itself was unusable; nothing was sent to the API
    UNKNOWN = "unknown"  # a money-moving call may or may not have taken effect; a person must look
    # Not terminal: the command waits for quota longer than RELAY_DEFERRED_AFTER_S; its call is
    # expected to start at ``expected_start_at``. At most one per command, before its terminal one.
    DEFERRED = "deferred"


_WITH_RESULT = frozenset({Outcome.SUCCEEDED, Outcome.PARTIAL})
_WITH_NEITHER = frozenset({Outcome.DEFERRED})


class ErrorInfo(StrictModel):
    """Why a command did not succeed. API codes (``CBC.*``, ``APIG.*``) pass through unchanged;
    the service's own start with ``RELAY.``."""

    code: str
    message: str
    retryable: bool
    """Whether sending the same command again (with a new ``command_id``) may succeed."""
    http_status: int | None = None
    request_id: str | None = None
    """The API's request id, for support tickets."""


class EventBase(StrictModel, json_schema_serialization_defaults_required=True):
    """Fields every event carries; subclasses narrow ``type`` and ``result``.

    Events are published with every field present (nulls included), so the published schema
    (serialization mode) lists every field as required, defaults or not.
    """

    event_id: str
    """Unique per event; also the AMQP ``message_id``."""
    command_id: str | None
    """The command's id; null only when the command could not be read at all."""
    type: str
    outcome: Outcome
    occurred_at: UtcDateTime
    attempts: int = Field(ge=0)
    """API requests sent for this command so far, answers of 429 that were waited out included."""
    duplicate: bool = False
    """True when this re-announces the stored result of an already finished ``command_id``."""
    conflict: bool = False
    """True on a re-announcement answering a message that re-used a finished ``command_id``
    for a *different* command (type, partner or payload): that message was not carried out, and
    a copy of it is dead-lettered with reason ``RELAY.ID_CONFLICT``."""
    requested_by: str | None = None
    """The AMQP ``user_id`` of the command message (RabbitMQ validates it against the publishing
    connection's user); null when the producer set none."""
    partner_id: str | None = None
    customer_id: str | None = None
    result: BaseModel | None = None
    """The type's result; present exactly for ``succeeded`` and ``partial``."""
    error: ErrorInfo | None = None
    """Present exactly for ``failed``, ``rejected`` and ``unknown``."""
    expected_start_at: UtcDateTime | None = None
    """Only on ``deferred``: when the command's API call is expected to start."""

    @model_validator(mode="after")
    def _result_or_error(self) -> Self:
        if self.outcome in _WITH_NEITHER:
            if self.result is not None or self.error is not None:
                raise _mismatch("a {outcome} event carries no result and no error", self.outcome)
            if self.expected_start_at is None:
                raise _mismatch(
                    "expected_start_at is required when outcome is {outcome}", self.outcome
                )
            return self
        if self.expected_start_at is not None:
            raise _mismatch(
                "expected_start_at is only for deferred events, not {outcome}", self.outcome
            )
        expects_result = self.outcome in _WITH_RESULT
        if expects_result and self.result is None:
            raise _mismatch("result is required when outcome is {outcome}", self.outcome)
        if not expects_result and self.result is not None:
            raise _mismatch("result is not allowed when outcome is {outcome}", self.outcome)
        if expects_result and self.error is not None:
            raise _mismatch("error is not allowed when outcome is {outcome}", self.outcome)
        if not expects_result and self.error is None:
            raise _mismatch("error is required when outcome is {outcome}", self.outcome)
        return self


def _mismatch(template: str, outcome: Outcome) -> PydanticCustomError:
    return PydanticCustomError("outcome_mismatch", template, {"outcome": outcome.value})


class RenewEvent(EventBase):
    type: Literal["renew"] = "renew"
    result: RenewResult | None = None


class SetAutoRenewEvent(EventBase):
    type: Literal["set_auto_renew"] = "set_auto_renew"
    result: SetAutoRenewResult | None = None


class InquirePriceEvent(EventBase):
    type: Literal["inquire_price"] = "inquire_price"
    result: PriceResult | None = None


class IssueCouponEvent(EventBase):
    type: Literal["issue_coupon"] = "issue_coupon"
    result: IssueCouponResult | None = None


class InvalidEvent(EventBase):
    """For a body whose ``type`` could not be read; always ``rejected``."""

    type: Literal["invalid"] = "invalid"
    outcome: Literal[Outcome.REJECTED] = Outcome.REJECTED
    result: None = None


Event = Annotated[
    RenewEvent | SetAutoRenewEvent | InquirePriceEvent | IssueCouponEvent | InvalidEvent,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def routing_key(event: EventBase) -> str:
    """The key the event is published with on ``bss.events``: ``<type>.<outcome>``."""
    return f"{event.type}.{event.outcome.value}"
