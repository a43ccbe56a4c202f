"""One message being decided, and what deciding it has learned so far.

The steps of the pipeline (``service.messages.pipeline``) hand a ``Delivery`` on: *read* fills
in the command and its partner, *claim* the command id whose lease this process holds, which
the settlement gives back or keeps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aio_pika.abc import AbstractIncomingMessage

from handlers.ports import BssApi
from schemas.commands import Command
from service.api.client import CallScope
from service.broker.headers import H, failed_deliveries, requester, waiting_since
from service.messages.intake import Rejection

__all__ = ["Delivery", "Partner", "ScopedApi", "rejection_of"]


class ScopedApi(BssApi, Protocol):
    def scoped(self, scope: CallScope) -> BssApi:
        """This API for one command (see ``CallScope``)."""
        ...


@dataclass(frozen=True, slots=True)
class Partner:
    """The configured partner account a command acts for, and its API."""

    partner_id: str
    api: ScopedApi


@dataclass(slots=True)
class Delivery:
    message: AbstractIncomingMessage
    command: Command | None = None  # once read
    partner: Partner | Rejection | None = None  # once read; a Rejection when none fits
    claimed: str | None = None  # the command id this process holds a lease on
    received: float = field(default_factory=time.time)  # wall clock

    @property
    def since(self) -> float:
        """When the command began to wait for its turn (wall clock): as a parked copy says,
        else when this delivery came."""
        return waiting_since(self.headers) or self.received

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.message.headers or {}

    @property
    def failed_before(self) -> int:
        return failed_deliveries(self.message)

    @property
    def requested_by(self) -> str | None:
        # the broker-validated user_id, also on the service's own delayed copies (issue 12)
        return requester(self.message)

    @property
    def taken_in_before(self) -> bool:
        """Some replica took the command in already: the broker redelivered it (its consumer
        went away), or it is back from waiting out another replica's claim (``H.ADMITTED``)."""
        return self.message.redelivered or H.ADMITTED in self.headers


def rejection_of(command: Command, code: str, message: str) -> Rejection:
    """A ``Rejection`` of a command that was read (its identity is known)."""
    if code == "RELAY.DEADLINE_PASSED":
        message = f"deadline {command.deadline} passed before the command could start"
    return Rejection(
        code=code,
        message=message,
        command_id=command.command_id,
        type=command.type,
        partner_id=command.partner_id,
        customer_id=command.customer_id,
    )
