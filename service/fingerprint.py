"""What the store keeps about a command when it first claims it: a fingerprint and the details.

The fingerprint is a SHA-256 over the canonical JSON of ``(type, partner_id, payload)`` of the
*validated* command: defaults filled in, decimals as strings, keys sorted, no spaces. So two
messages that mean the same command (``auto_pay`` omitted or ``true``, ``"10.5"`` or ``10.50``
written differently but equal after validation) have the same fingerprint, and a ``command_id``
re-used for a different command has a different one (CONTRACT §3, ``RELAY.ID_CONFLICT``).
``command_id``, ``deadline`` and ``issued_at`` are left out: re-sending the same intent later
is not a different command.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypedDict

from schemas.commands import Command

__all__ = ["ClaimDetails", "canonical_body", "claim_details", "fingerprint"]


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_body(command: Command) -> bytes:
    """The whole validated command as canonical JSON (what the audit view reads back)."""
    return _canonical(command.model_dump(mode="json"))


def fingerprint(command: Command) -> str:
    """``sha256:<hex>`` of the canonical (type, partner_id, payload)."""
    data = command.model_dump(mode="json", include={"type", "partner_id", "payload"})
    return "sha256:" + hashlib.sha256(_canonical(data)).hexdigest()


class ClaimDetails(TypedDict):
    fingerprint: str
    requested_by: str | None
    partner_id: str | None
    customer_id: str | None
    body: bytes


def claim_details(command: Command, requested_by: str | None) -> ClaimDetails:
    """Keyword arguments for ``CommandStore.claim``:
    ``store.claim(id, type, owner=…, lease=…, **claim_details(command, message.user_id))``."""
    return ClaimDetails(
        fingerprint=fingerprint(command),
        requested_by=requested_by,
        partner_id=command.partner_id,
        customer_id=command.customer_id,
        body=canonical_body(command),
    )
