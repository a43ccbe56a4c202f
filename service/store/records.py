"""Rules both store backends share, so SQLite and PostgreSQL cannot drift apart.

The table ``relay_commands`` both create from :mod:`service.store.schema` (column types
differ, meaning does not)::

    command_id       primary key, the producer's idempotency key
    type             command type as first claimed (a later claim never changes it)
    status           received | in_flight | finished
    attempts         API calls started, over the command's whole life; only grows
    call_started_at  when the latest API call started (set by mark_call_started)
    note             what the handler journaled with that call (e.g. expiry times before it)
    event            the terminal event body, once finished; never changes afterwards
    published_at     when the terminal event was confirmed by the broker (mark_published)
    owner            who holds the lease, NULL when nobody does (released or finished)
    lease_until      end of the owner's lease; NULL exactly when owner is NULL
    created_at, updated_at, finished_at
    fingerprint      hash of the canonical (type, partner_id, payload): see
    service.messages.fingerprint
    requested_by     the AMQP user_id of the message whose claim created the row
    partner_id, customer_id, body
                     who and what, for the audit view; body is the validated command as
                     canonical JSON. These five are written by the creating claim only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from service.store.types import Claim, ClaimOutcome, CommandStatus, StoredCommand

__all__ = ["CLAIM_TRIES", "lease_end", "lost_claim", "positive"]

CLAIM_TRIES = 3
"""PostgreSQL: a claim that loses finds the row and reads it; if ``prune`` deleted it in between,
the claim is tried again. Two consecutive such races are practically impossible. (SQLite needs
no retry: a claim and its read run in one transaction under the write lock.)"""


def positive(lease: timedelta) -> timedelta:
    if lease <= timedelta(0):
        raise ValueError(f"lease must be positive, got {lease}")
    return lease


def lease_end(now: datetime, lease: timedelta) -> datetime:
    return now + positive(lease)


def lost_claim(current: StoredCommand, now: datetime) -> Claim:
    """Outcome of a claim whose atomic upsert changed nothing: finished, or someone's lease.

    A finished command whose event is not yet published is BUSY while its owner's lease is
    live: the owner is publishing it right now, and nobody else may publish it as well."""
    if current.status is CommandStatus.FINISHED:
        publishing = (
            not current.published and current.lease_until is not None and current.lease_until > now
        )
        return Claim(ClaimOutcome.BUSY if publishing else ClaimOutcome.FINISHED, current)
    return Claim(ClaimOutcome.BUSY, current)
