"""Handlers: one async function per command type, ``(command, context) -> Completed``.

They raise ``handlers.errors`` and never ack, publish or read the environment.
``HANDLERS`` is the one routing table from ``type`` to handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from handlers.auto_renew import set_auto_renew
from handlers.coupon import issue_coupon
from handlers.ports import Completed, HandlerContext
from handlers.price import inquire_price
from handlers.renew import renew

__all__ = ["HANDLERS", "Handler"]

Handler = Callable[[Any, HandlerContext], Awaitable[Completed]]

HANDLERS: Mapping[str, Handler] = MappingProxyType(
    {
        "renew": renew,
        "set_auto_renew": set_auto_renew,
        "inquire_price": inquire_price,
        "issue_coupon": issue_coupon,
    }
)
