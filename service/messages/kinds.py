"""What each command type is, in one table: its handler, whether it moves money, and the API
call that paces it (whose quota it spends). Everything that asks "what kind of command is
this?" reads it here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from handlers.auto_renew import set_auto_renew
from handlers.coupon import issue_coupon
from handlers.ports import Completed, HandlerContext
from handlers.price import inquire_price
from handlers.renew import renew
from schemas.commands import (
    Command,
    CommandType,
    InquirePriceCommand,
    RenewCommand,
    SetAutoRenewCommand,
)
from schemas.commands import (
    Priority as SchemaPriority,
)
from service.pacing.buckets import Priority

__all__ = ["KINDS", "PRIORITIES", "CommandKind", "primary_call"]

Handler = Callable[[Any, HandlerContext], Awaitable[Completed]]

PRICE_OPERATIONS = {
    "on_demand": "list_on_demand_resource_ratings",
    "period": "list_rate_on_period_detail",
    "renewal": "list_renew_rate_on_period",
}


def _renew_call(command: Command, _partner_id: str) -> tuple[str, str]:
    assert isinstance(command, RenewCommand)
    return "renewal_resources", command.payload.customer_id


def _auto_renew_call(command: Command, _partner_id: str) -> tuple[str, str]:
    assert isinstance(command, SetAutoRenewCommand)
    enabled = command.payload.enabled
    op = "auto_renewal_resources" if enabled else "cancel_auto_renewal_resources"
    return op, command.payload.customer_id


def _price_call(command: Command, _partner_id: str) -> tuple[str, str]:
    assert isinstance(command, InquirePriceCommand)
    return PRICE_OPERATIONS[command.payload.mode], command.payload.customer_id


def _coupon_call(_command: Command, partner_id: str) -> tuple[str, str]:
    return "create_partner_coupons", partner_id


@dataclass(frozen=True, slots=True)
class CommandKind:
    name: CommandType
    handler: Handler
    # An uncertain call of a money-moving command is reconciled, never repeated blind, and
    # ends `unknown` when nobody can tell; renewals also run one per customer at a time.
    money_moving: bool
    # (operation, ParentUid) of the call that bounds the command's pace
    primary_call: Callable[[Command, str], tuple[str, str]]


KINDS: Mapping[str, CommandKind] = MappingProxyType(
    {
        kind.name.value: kind
        for kind in (
            CommandKind(CommandType.RENEW, renew, True, _renew_call),
            CommandKind(CommandType.SET_AUTO_RENEW, set_auto_renew, False, _auto_renew_call),
            CommandKind(CommandType.INQUIRE_PRICE, inquire_price, False, _price_call),
            CommandKind(CommandType.ISSUE_COUPON, issue_coupon, True, _coupon_call),
        )
    }
)


# A command's priority (CONTRACT §2) as pacing ranks it: high goes first.
PRIORITIES: Mapping[str, int] = MappingProxyType(
    {
        SchemaPriority.HIGH.value: Priority.HIGH,
        SchemaPriority.NORMAL.value: Priority.NORMAL,
        SchemaPriority.LOW.value: Priority.LOW,
    }
)


def primary_call(command: Command, partner_id: str) -> tuple[str, str]:
    """The API call that bounds a command's pace, and whose ParentUid it spends."""
    return KINDS[command.type].primary_call(command, partner_id)
