"""The command store's interface and its values, next to the two backends that provide them.

``CommandStore`` is what the message path (leases, journal, policy gate, settlement) and the
audit view depend on; ``service.store.sqlite`` and ``service.store.postgres`` implement it (the
rules they share are in :mod:`service.store.records`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Literal, Protocol

from service.store.steering import SteeringStore

__all__ = [
    "CapExceeded",
    "Claim",
    "ClaimOutcome",
    "CommandStatus",
    "CommandStore",
    "CouponCaps",
    "StoredCommand",
]


class CommandStatus(StrEnum):
    RECEIVED = "received"  # claimed, no API side effect attempted yet
    IN_FLIGHT = "in_flight"  # a (possibly money-moving) API call has started
    FINISHED = "finished"  # terminal event stored; never executed again


@dataclass(frozen=True, slots=True)
class StoredCommand:
    command_id: str
    type: str
    status: CommandStatus
    attempts: int  # API calls started for this command, over its whole life
    call_started_at: datetime | None  # when the latest API call started
    event: bytes | None  # the terminal event body as published, once finished
    updated_at: datetime
    note: bytes | None = None  # what the handler journaled with the latest call start
    published: bool = False  # the terminal event was confirmed by the broker
    lease_until: datetime | None = None  # the current owner's lease ends then (None: no owner)
    owner: str | None = None  # who holds (or last held, until its lease ran out) the command
    # Written once, by the claim that created the row (never changed by later claims); None on
    # rows created before these columns existed, or by a caller that passed nothing.
    fingerprint: str | None = None  # hash of the canonical (type, partner_id, payload)
    requested_by: str | None = None  # the AMQP user_id of the message first claimed
    partner_id: str | None = None
    customer_id: str | None = None
    body: bytes | None = None  # the validated command, canonical JSON (for the audit view)
    created_at: datetime | None = None
    finished_at: datetime | None = None


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # the caller now owns the command until its lease ends
    FINISHED = "finished"  # already done: re-announce ``record.event`` as a duplicate
    BUSY = "busy"  # another owner holds a live lease: try again later


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    record: StoredCommand


@dataclass(frozen=True, slots=True)
class CouponCaps:
    """Rolling-window caps on face value issued, checked by ``reserve_coupons``."""

    per_customer: Decimal | None = None
    per_partner: Decimal | None = None
    window: timedelta = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class CapExceeded:
    """A reservation refused: ``used`` (issued or reserved within the window) plus ``asked``
    would pass ``cap`` for ``subject`` (a customer id or a partner id)."""

    scope: Literal["customer", "partner"]
    subject: str
    used: Decimal
    asked: Decimal
    cap: Decimal


class CommandStore(Protocol):
    """Durable state of every ``command_id``; the idempotency and crash-safety ledger.

    Invariants every implementation keeps, under concurrency and across processes:
    at most one owner holds a live lease on a command; a finished command never changes
    again; ``attempts`` only grows. Times are timezone-aware UTC.
    """

    steering: SteeringStore  # the steering tables of the same database (service.store.steering)

    async def claim(
        self,
        command_id: str,
        command_type: str,
        *,
        owner: str,
        lease: timedelta,
        fingerprint: str | None = None,
        requested_by: str | None = None,
        partner_id: str | None = None,
        customer_id: str | None = None,
        body: bytes | None = None,
    ) -> Claim:
        """Atomically take ownership, creating the record if it is new.

        Returns FINISHED if the command has finished, BUSY if another owner's lease is still
        live, else CLAIMED with the record as it was (so a previous IN_FLIGHT is visible and
        the caller can reconcile before calling the API again).

        ``fingerprint``, ``requested_by``, ``partner_id``, ``customer_id`` and ``body`` are
        stored only by the claim that creates the row, in the same statement; later claims
        never change them, so ``record.fingerprint`` tells whether a message re-using the
        ``command_id`` carries the same command (see ``service.messages.fingerprint``).
        """
        ...

    async def renew_leases(
        self, owner: str, command_ids: Collection[str], *, lease: timedelta
    ) -> None:
        """Extend the leases ``owner`` holds on ``command_ids`` (a heartbeat)."""
        ...

    async def mark_call_started(
        self, command_id: str, *, owner: str, at: datetime, note: bytes | None = None
    ) -> int:
        """Record that an API call starts now: status IN_FLIGHT, attempts + 1, ``note`` kept
        for reconciliation. Returns attempts.

        Raises ``LookupError`` if ``owner`` does not hold the command (its lease was lost).
        """
        ...

    async def finish(self, command_id: str, *, owner: str, event: bytes) -> bytes:
        """Store the terminal event; the lease is kept until ``mark_published``, so copies of
        the command arriving meanwhile wait (BUSY) instead of publishing it too. Idempotent.

        Returns the stored event: if the command had already finished, the earlier event wins
        and is returned, so the caller publishes what was stored.
        """
        ...

    async def mark_published(self, command_id: str) -> None:
        """Record that the terminal event went out, and release the lease. A redelivery then
        re-announces it as a duplicate; before that, only once the lease has expired (the
        owner died between finish and publish) is the stored event published as itself."""
        ...

    async def clear_in_flight(self, command_id: str, *, owner: str) -> None:
        """Reconciliation proved the in-flight call had no effect: back to RECEIVED, note
        dropped, so the next attempt starts from a fresh baseline."""
        ...

    async def claim_effects(self, command_id: str, effect_ids: Collection[str]) -> dict[str, str]:
        """Record that ``command_id`` caused each effect (an order id) unless another command
        already owns it; atomic per effect. Returns each effect's owner afterwards."""
        ...

    async def effect_owners(self, effect_ids: Collection[str]) -> dict[str, str]:
        """The owning command of each of ``effect_ids`` that has one."""
        ...

    async def release(self, command_id: str, *, owner: str) -> None:
        """Give up ownership (e.g. before a delayed retry); status and attempts stay. Also for
        a finished command whose event did not go out (its message was abandoned when its
        channel closed): a redelivery then publishes the stored event at once, as itself,
        instead of waiting for the lease to run out."""
        ...

    async def get(self, command_id: str) -> StoredCommand | None: ...

    async def prune(self, *, finished_before: datetime) -> int:
        """Delete finished commands older than the retention; returns how many. The renewal
        ledger and coupon reservations older than the bound go too."""
        ...

    # --- money guardrails (service.guardrails.gate.PolicyGate)
    # -------------------------------------------------
    # Both ledgers are settled by ``finish`` itself, from the event it stores, in the same
    # transaction: a renewal that succeeded (or partly did) records each renewed resource
    # (the command's resource_ids, from its stored body, minus result.failed_resources) and
    # drops its other reservations; a coupon command commits the reservations of the
    # customers in result.coupons and drops the others. ``failed`` drops every reservation,
    # ``unknown`` keeps them all counted. See ``service.store.ledger``.
    # Window arithmetic uses the database server's clock (PostgreSQL), or the store's clock
    # (SQLite: one host).

    async def recent_renewals(
        self, resource_ids: Collection[str], *, within: timedelta, excluding: str
    ) -> dict[str, str]:
        """Resources among ``resource_ids`` renewed successfully within ``within`` by a
        command other than ``excluding`` (reservations not counted): resource id -> command."""
        ...

    async def reserve_renewals(
        self,
        command_id: str,
        *,
        customer_id: str,
        resource_ids: Collection[str],
        within: timedelta,
    ) -> dict[str, str]:
        """Atomically: unless another command renewed or reserved one of ``resource_ids``
        within ``within``, reserve them all for ``command_id`` and return ``{}``; else return
        the conflicts (resource id -> that command's id) and reserve nothing. Reservations of
        one customer are serialised in the database, so two renewals of one resource racing
        on different replicas cannot both pass. ``command_id``'s own rows never conflict."""
        ...

    async def release_renewals(self, command_id: str) -> None:
        """Drop the command's unfinished renewal reservations (it was rejected)."""
        ...

    async def reserve_coupons(
        self,
        command_id: str,
        *,
        partner_id: str,
        customer_ids: Sequence[str],
        face_value: Decimal,
        caps: CouponCaps,
    ) -> CapExceeded | None:
        """Atomically check the rolling sums (committed and live reservations alike) and
        reserve ``face_value`` per customer for ``command_id``; None when reserved. A command
        that already holds a reservation inside the window (a retry, a take-over after a
        crash) keeps it and passes. Exact across replicas: reservations of one partner are
        serialised in the database."""
        ...

    async def release_coupons(self, command_id: str) -> None:
        """Drop the command's uncommitted reservations (it was rejected: nothing issued)."""
        ...

    async def list_commands(
        self,
        *,
        types: Collection[str],
        since: datetime | None = None,
        until: datetime | None = None,
        partner_ids: Collection[str] = (),
        requested_by: Collection[str] = (),
        limit: int | None = None,
    ) -> list[StoredCommand]:
        """Commands of ``types`` first claimed in ``[since, until)``, oldest first; empty
        ``partner_ids``/``requested_by`` match any (the audit view)."""
        ...
