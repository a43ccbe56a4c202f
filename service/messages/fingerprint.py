"""What the store keeps about a command when it first claims it: a fingerprint and the details.

The fingerprint is a SHA-256 over the canonical JSON of ``(type, partner_id, payload)`` of the
*validated* command: fields left at their default omitted, decimals by value (``"10.5"`` and
``10.50`` alike), instants in UTC, keys sorted, no spaces. So two messages that mean the same
command (``auto_pay`` omitted or ``true``) have the same fingerprint, a field added later with a
default does not change the fingerprint of commands stored before it, and a ``command_id``
re-used for a different command has a different one (CONTRACT §3, ``RELAY.ID_CONFLICT``).
``command_id``, ``deadline`` and ``issued_at`` are left out: re-sending the same intent later
is not a different command.

The body kept for the audit view is the validated command as pydantic writes it (defaults
included), which is deterministic for a given schema.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypedDict

from schemas.commands import Command

__all__ = ["ClaimDetails", "canonical_body", "claim_details", "fingerprint"]


def _value(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def canonical_body(command: Command) -> bytes:
    """The whole validated command as JSON (what the audit view reads back)."""
    return command.model_dump_json().encode()


def fingerprint(command: Command) -> str:
    """``sha256:<hex>`` of the canonical (type, partner_id, payload)."""
    identity = {
        "type": command.type,
        "partner_id": command.partner_id,
        "payload": command.payload.model_dump(exclude_defaults=True),
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=_value)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class ClaimDetails(TypedDict):
    fingerprint: str
    requested_by: str | None
    partner_id: str | None
    customer_id: str | None
    body: bytes


def claim_details(
    command: Command, requested_by: str | None, *, partner_id: str | None = None
) -> ClaimDetails:
    """Keyword arguments for ``CommandStore.claim``:
    ``store.claim(id, type, owner=…, lease=…, **claim_details(command, requester(message),
    partner_id=<the partner it will use>))``. ``partner_id``: the configured partner a command
    without one resolves to (recorded for the audit and the per-partner coupon spend);
    defaults to ``command.partner_id``. The fingerprint always uses the command's own."""
    return ClaimDetails(
        fingerprint=fingerprint(command),
        requested_by=requested_by,
        partner_id=partner_id if partner_id is not None else command.partner_id,
        customer_id=command.customer_id,
        body=canonical_body(command),
    )
