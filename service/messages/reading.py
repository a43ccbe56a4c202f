"""Step *read*: a message's bytes become a command and the partner whose API it uses.

Unreadable input (``service.messages.intake``) is a ``Reject`` at once: nothing was claimed.
A command for a partner that is not configured is read all the same, its partner being a
``Rejection``: it is claimed first and rejected by the run step, so a finished command is
only ever re-announced, whatever the configuration says now.
"""

from __future__ import annotations

from collections.abc import Mapping

from structlog.contextvars import bind_contextvars

from schemas.commands import Command
from service.messages.delivery import Delivery, Partner, ScopedApi, rejection_of
from service.messages.intake import Rejection, read_command
from service.messages.settlement import Reject

__all__ = ["Reader"]


class Reader:
    def __init__(self, apis: Mapping[str, ScopedApi], *, max_body_bytes: int) -> None:
        self._apis = apis
        self._max_body = max_body_bytes

    def read(self, delivery: Delivery) -> Command | Reject:
        """The command (recorded on ``delivery`` with its partner), or its rejection. Binds
        the log context of the message's task."""
        read = read_command(delivery.message.body, max_bytes=self._max_body)
        if isinstance(read, Rejection):
            bind_contextvars(command_id=read.command_id, type=read.type)
            return Reject(read)
        bind_contextvars(
            command_id=read.command_id,
            type=read.type,
            partner_id=read.partner_id,
            customer_id=read.customer_id,
            retries=delivery.failed_before,
        )
        delivery.command, delivery.partner = read, self._partner(read)
        return read

    def _partner(self, command: Command) -> Partner | Rejection:
        if command.partner_id is None and len(self._apis) == 1:
            return Partner(*next(iter(self._apis.items())))
        api = self._apis.get(command.partner_id or "")
        if api is None or command.partner_id is None:
            why = "partner_id is required: several partners are configured"
            if command.partner_id is not None:
                why = f"partner {command.partner_id!r} is not configured"
            return rejection_of(command, "RELAY.UNKNOWN_PARTNER", why)
        return Partner(command.partner_id, api)
