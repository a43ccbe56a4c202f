"""One dead letter as data, and the filter that picks dead letters.

``DeadLetter.from_message`` never raises: the DLQ holds exactly the messages that could not be
read, so every field is best-effort. Failure headers (``service.broker.headers.H``) are typed;
the
body's ``command_id``, ``type``, partner and customers are read as ``service.messages.intake``
reads them
for a rejection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from schemas.commands import CommandType
from service.broker.headers import H

__all__ = ["INVALID_TYPE", "REPLAYED_AT", "REPLAY_COUNT", "TYPES", "DeadLetter", "Filter"]

# Added to a replayed copy. Every other x-relay-* header is a failure header and is removed.
REPLAYED_AT = H.REPLAYED_AT
REPLAY_COUNT = H.REPLAY_COUNT
TYPES = frozenset(t.value for t in CommandType)
INVALID_TYPE = "invalid"  # as in events: the type of a message whose type could not be read


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _integer(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value)
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


def _instant(value: Any) -> datetime | None:
    """An RFC 3339 header as an aware datetime; a stamp without offset is read as UTC."""
    text = _text(value)
    try:
        moment = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _body_fields(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``{}`` when it is not one. Never raises."""
    try:
        raw = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 and bad JSON are both ValueErrors
        return {}
    return raw if isinstance(raw, dict) else {}


def _customers(payload: Any) -> tuple[str, ...]:
    if not isinstance(payload, dict):
        return ()
    single = _text(payload.get("customer_id"))
    many = payload.get("customer_ids")
    listed = [c for c in many if isinstance(c, str)] if isinstance(many, list) else []
    return (single,) if single else tuple(listed)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What one dead letter says about itself: its failure headers typed, its body read
    best-effort (as ``service.messages.intake`` does for rejections). Reading never raises: a
    missing
    or unreadable header or field is ``None``; ``type`` is ``"invalid"`` unless it is one of
    the command types."""

    message_id: str | None
    command_id: str | None
    type: str
    partner_id: str | None
    customer_ids: tuple[str, ...]
    reason: str | None
    reason_message: str | None
    attempts: int | None
    first_failure: datetime | None
    last_failure: datetime | None
    original_routing_key: str | None
    replay_count: int
    replayed_at: datetime | None

    @property
    def routing_key(self) -> str:
        """Where a replay publishes the copy: the original key, else ``command.<type>``."""
        return self.original_routing_key or f"command.{self.type}"

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> DeadLetter:
        return cls.read(message.body, message.headers or {}, message_id=message.message_id)

    @classmethod
    def read(cls, body: bytes, headers: Mapping[str, Any], *, message_id: str | None) -> DeadLetter:
        raw = _body_fields(body)
        kind = _text(raw.get("type"))
        return cls(
            message_id=message_id,
            command_id=_text(raw.get("command_id")),
            type=kind if kind in TYPES else INVALID_TYPE,
            partner_id=_text(raw.get("partner_id")),
            customer_ids=_customers(raw.get("payload")),
            reason=_text(headers.get(H.REASON)),
            reason_message=_text(headers.get(H.REASON_MESSAGE)),
            attempts=_integer(headers.get(H.ATTEMPTS)),
            first_failure=_instant(headers.get(H.FIRST_FAILURE)),
            last_failure=_instant(headers.get(H.LAST_FAILURE)),
            original_routing_key=_text(headers.get(H.ORIGINAL_ROUTING_KEY)),
            replay_count=_integer(headers.get(REPLAY_COUNT)) or 0,
            replayed_at=_instant(headers.get(REPLAYED_AT)),
        )

    def as_json(self) -> dict[str, Any]:
        fields = asdict(self)
        for name, value in fields.items():
            if isinstance(value, datetime):
                fields[name] = value.isoformat()
        fields["customer_ids"] = list(self.customer_ids)
        fields["routing_key"] = self.routing_key
        return fields


def _among(wanted: frozenset[str], value: str | None) -> bool:
    return not wanted or value in wanted


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead letters a run touches. Empty sets match anything; within a field any listed
    value matches; all given fields must match. The time window ``since <= t < until`` is on
    the last-failure header (a dead letter without one is outside every window)."""

    types: frozenset[str] = frozenset()
    partners: frozenset[str] = frozenset()
    customers: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    command_ids: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for bound in (self.since, self.until):
            if bound is not None and bound.tzinfo is None:
                raise ValueError("since and until need a UTC offset")

    def matches(self, letter: DeadLetter) -> bool:
        return (
            _among(self.types, letter.type)
            and _among(self.partners, letter.partner_id)
            and (not self.customers or not self.customers.isdisjoint(letter.customer_ids))
            and _among(self.reasons, letter.reason)
            and _among(self.command_ids, letter.command_id)
            and self._in_window(letter.last_failure)
        )

    def _in_window(self, moment: datetime | None) -> bool:
        if self.since is None and self.until is None:
            return True
        if moment is None:
            return False
        return (self.since is None or self.since <= moment) and (
            self.until is None or moment < self.until
        )
