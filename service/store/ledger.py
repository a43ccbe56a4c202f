"""The money-guardrail ledgers both backends keep, and what ``finish`` writes to them.

Tables (column types differ per backend, meaning does not)::

    relay_renewals      one row per resource a renewal command reserved or renewed
        resource_id, command_id   primary key (one command renews a resource once)
        customer_id
        done                      false: reserved by the policy gate (the call may still happen);
                                  true: renewed (``finish`` stored a success)
        renewed_at                reservation time, then the success's time

    relay_coupon_spend  face value reserved or issued, per command and customer
        command_id, customer_id   primary key
        partner_id                whose quota (per-partner cap)
        cents                     face value in cents (at most 2 decimals: exact integers)
        committed                 false: reserved (the call may still happen); true: issued
        at                        reservation time, then issue time once committed

A reservation counts against the caps (or, for a renewal, against other commands renewing the
same resource) while its time is inside the window, done or not: a command whose outcome is
unknown keeps it counted, and a crashed holder's reservation is re-used by the same command when
it is delivered again, and otherwise ages out of the window. ``finish`` settles both from the
event it stores, in the same transaction: success (or partial) commits what the API did and
drops the rest, ``failed`` drops everything, ``unknown`` keeps everything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from service.store.types import CapExceeded, CouponCaps

__all__ = [
    "LedgerState",
    "LedgerUpdate",
    "cap_exceeded",
    "cents",
    "face_value",
    "ledger_update",
    "money",
    "renewed",
]


class LedgerState(StrEnum):
    """What `finish` does to a command's ledger reservations (the stored words are the values)."""

    COMMIT = "commit"  # what the API did becomes the ledger's; the other reservations dropped
    RELEASE = "release"  # nothing happened: every uncommitted reservation is dropped
    KEEP = "keep"  # outcome unknown: the reservations stay counted


@dataclass(frozen=True, slots=True)
class LedgerUpdate:
    """What storing one terminal event changes in the ledgers."""

    renewals: LedgerState | None = None
    renewal_failed: frozenset[str] = frozenset()  # on COMMIT: resources NOT renewed
    coupons: LedgerState | None = None
    issued: tuple[str, ...] = ()  # on COMMIT: customers that got a coupon


def _state(outcome: object) -> LedgerState:
    if outcome in ("succeeded", "partial"):
        return LedgerState.COMMIT
    return LedgerState.KEEP if outcome == "unknown" else LedgerState.RELEASE


def cents(amount: Decimal) -> int:
    value = amount * 100
    if value != value.to_integral_value():
        raise ValueError(f"{amount} has more than 2 decimal places")
    return int(value)


def money(value: int) -> Decimal:
    return (Decimal(value) / 100).quantize(Decimal("0.01"))


def _items(result: Any, key: str, field: str) -> list[str]:
    rows = result.get(key) if isinstance(result, dict) else None
    if not isinstance(rows, list):
        return []
    return [str(row[field]) for row in rows if isinstance(row, dict) and field in row]


def ledger_update(event: bytes) -> LedgerUpdate | None:
    """From a terminal event body (CONTRACT §3): None when the ledgers are not concerned."""
    if b'"renew"' not in event and b'"issue_coupon"' not in event:
        return None  # neither type can be in it: no need to read it (every finish asks)
    try:
        data = json.loads(event)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("duplicate"):
        return None
    kind, result = data.get("type"), data.get("result")
    state = _state(data.get("outcome"))
    if kind == "renew":
        failed = frozenset(_items(result, "failed_resources", "resource_id"))
        return LedgerUpdate(renewals=state, renewal_failed=failed)
    if kind == "issue_coupon":
        issued = tuple(_items(result, "coupons", "customer_id"))
        return LedgerUpdate(coupons=state, issued=issued)
    return None


def renewed(body: bytes | None, failed: frozenset[str]) -> tuple[str | None, list[str]]:
    """(customer id, resources renewed) from the command's stored body and the failures."""
    if body is None:
        return None, []
    try:
        payload = json.loads(body).get("payload") or {}
    except (ValueError, AttributeError):
        return None, []
    resources = payload.get("resource_ids") or []
    customer = payload.get("customer_id")
    return (
        customer if isinstance(customer, str) else None,
        [str(r) for r in resources if str(r) not in failed],
    )


def cap_exceeded(  # noqa: PLR0917 - one call site per backend, all positional
    caps: CouponCaps,
    partner_id: str,
    partner_used: int,
    customers_used: dict[str, int],
    customer_ids: Sequence[str],
    asked: int,
) -> CapExceeded | None:
    """The first cap a reservation of ``asked`` cents per customer would pass, if any."""
    if caps.per_partner is not None:
        total = asked * len(customer_ids)
        if partner_used + total > cents(caps.per_partner):
            return CapExceeded(
                "partner", partner_id, money(partner_used), money(total), caps.per_partner
            )
    if caps.per_customer is not None:
        for customer in customer_ids:
            used = customers_used.get(customer, 0)
            if used + asked > cents(caps.per_customer):
                return CapExceeded(
                    "customer", customer, money(used), money(asked), caps.per_customer
                )
    return None


def face_value(body: bytes | None) -> int | None:
    """The coupon face value in cents from a command's stored body, if it can be read."""
    try:
        value = json.loads(body or b"null")["payload"]["face_value"]
        return cents(Decimal(str(value)))
    except (ValueError, TypeError, KeyError, ArithmeticError):
        return None
