"""Message and wire shapes of bss-relay: pydantic models only, importing nothing else of ours.

* ``schemas.commands`` / ``schemas.events``: the public envelopes (CONTRACT §2, §3).
* ``schemas.renew``, ``auto_renew``, ``price``, ``coupon``: one module per command family,
  each with its payload and its result.
* ``schemas.common``: field types (money, UTC time, ids) shared by all of them.
* ``schemas.bss``: BSS and IAM request/response bodies.

The AsyncAPI document (``docs/asyncapi.yaml``) is generated from these models.
"""

from __future__ import annotations

from schemas.commands import COMMAND_ADAPTER, Command, CommandType, parse_command
from schemas.events import EVENT_ADAPTER, ErrorInfo, Event, Outcome, routing_key

__all__ = [
    "COMMAND_ADAPTER",
    "EVENT_ADAPTER",
    "Command",
    "CommandType",
    "ErrorInfo",
    "Event",
    "Outcome",
    "parse_command",
    "routing_key",
]
