"""The command envelope (CONTRACT §2) and the one entry point that reads a command body.

A command is one JSON object; ``type`` picks the class and so the payload's schema. The body is
read with ``json.loads(..., parse_float=Decimal)`` before validation because pydantic's own JSON
parser reads numbers as binary floats first: ``"face_value": 10.10`` must arrive as
``Decimal("10.10")``, not as whatever ``float`` makes of it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn

from pydantic import BaseModel, Field, TypeAdapter

from schemas.auto_renew import SetAutoRenewPayload
from schemas.common import CommandId, StrictModel, UtcDateTime
from schemas.coupon import IssueCouponPayload
from schemas.price import InquirePricePayload
from schemas.renew import RenewPayload

__all__ = [
    "COMMAND_ADAPTER",
    "Command",
    "CommandBase",
    "CommandType",
    "InquirePriceCommand",
    "IssueCouponCommand",
    "Priority",
    "RenewCommand",
    "SetAutoRenewCommand",
    "load_json",
    "parse_command",
]


class Priority(StrEnum):
    """Which command a bucket serves first when several wait for it (CONTRACT §2, §9)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class CommandType(StrEnum):
    RENEW = "renew"
    SET_AUTO_RENEW = "set_auto_renew"
    INQUIRE_PRICE = "inquire_price"
    ISSUE_COUPON = "issue_coupon"


def _type_is_required(schema: dict[str, Any]) -> None:
    # ``type`` has a default so Python code need not repeat the class name, but on the wire it
    # is required (it picks the schema), so the published JSON schema says so.
    required = schema.setdefault("required", [])
    if "type" not in required:
        required.insert(1, "type")


class CommandBase(StrictModel, json_schema_extra=_type_is_required):
    """Fields every command carries; subclasses narrow ``type`` and ``payload``."""

    command_id: CommandId
    """The producer's id for this intent and the idempotency key: carried out at most once."""
    type: str
    """What to do; authoritative over the routing key."""
    partner_id: str | None = None
    """Whose partner credentials, agency and quota to use; needed when several are configured."""
    payload: BaseModel
    deadline: UtcDateTime | None = None
    """If the command cannot be started before this instant it is rejected, never run late."""
    issued_at: UtcDateTime | None = None
    """When the producer issued the command; informational."""
    priority: Priority = Priority.NORMAL
    """Which waiting command a rate-limit bucket serves first: high, then normal, then low."""

    @property
    def customer_id(self) -> str | None:
        """The customer whose account the command acts on, when there is exactly one."""
        return None


class RenewCommand(CommandBase):
    """Renew yearly/monthly resources with the customer's delegated credentials."""

    type: Literal["renew"] = "renew"
    payload: RenewPayload

    @property
    def customer_id(self) -> str | None:
        return self.payload.customer_id


class SetAutoRenewCommand(CommandBase):
    """Switch auto-renew on or off for one resource with the customer's delegated credentials."""

    type: Literal["set_auto_renew"] = "set_auto_renew"
    payload: SetAutoRenewPayload

    @property
    def customer_id(self) -> str | None:
        return self.payload.customer_id


class InquirePriceCommand(CommandBase):
    """Get a price quote with the customer's delegated credentials (their discounts apply)."""

    type: Literal["inquire_price"] = "inquire_price"
    payload: InquirePricePayload

    @property
    def customer_id(self) -> str | None:
        return self.payload.customer_id


class IssueCouponCommand(CommandBase):
    """Issue cash coupons from a partner quota with the partner's own credentials."""

    type: Literal["issue_coupon"] = "issue_coupon"
    payload: IssueCouponPayload

    @property
    def customer_id(self) -> str | None:
        customers = self.payload.customer_ids
        return customers[0] if len(customers) == 1 else None


Command = Annotated[
    RenewCommand | SetAutoRenewCommand | InquirePriceCommand | IssueCouponCommand,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def load_json(body: bytes) -> Any:
    """Decode a command body the way ``parse_command`` does: numbers as exact ``Decimal``,
    ``NaN``/``Infinity`` refused. Raises ``ValueError`` (bad UTF-8 included)."""
    return json.loads(body.decode("utf-8"), parse_float=Decimal, parse_constant=_no_constants)


def parse_command(body: bytes) -> Command:
    """Read one command body; raises ``pydantic.ValidationError`` for anything unusable.

    Valid JSON is decoded with exact decimals and then validated. Invalid JSON (including bad
    UTF-8 and ``NaN``) is handed to pydantic's own parser instead, only so that the error is the
    same ``ValidationError`` (type ``json_invalid``) as every other rejection.
    """
    try:
        data = load_json(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return COMMAND_ADAPTER.validate_json(body)
    return COMMAND_ADAPTER.validate_python(data)
