"""Step *claim*: the command's lease in the store (``Leases.claim``), or why there is none.

Claimed before any check that could reject it: a finished command is only ever re-announced
(``Reannounce``, a ``conflict`` when its ``command_id`` was re-used for a different command),
so a changed configuration or a passed deadline cannot give it a second terminal event. A
command some other live process holds is looked at again later (``Delay`` "busy").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from schemas.commands import Command
from service.broker.headers import H
from service.messages.delivery import Delivery, Partner
from service.messages.fingerprint import claim_details, fingerprint
from service.messages.leases import Leases
from service.messages.publisher import DeadLetterReason
from service.messages.settlement import Delay, Reannounce
from service.store.types import ClaimOutcome, StoredCommand

__all__ = ["MIN_WAIT_S", "TAKEOVER_RECHECK_S", "Claiming"]

log = structlog.get_logger(__name__)

MIN_WAIT_S = 0.25  # the shortest delay step
TAKEOVER_RECHECK_S = 1.0  # a redelivered command busy elsewhere asks again after this long


class Claiming:
    def __init__(self, leases: Leases, *, clock: Callable[[], datetime]) -> None:
        self._leases = leases
        self._clock = clock

    async def claim(
        self, delivery: Delivery, command: Command
    ) -> StoredCommand | Reannounce | Delay:
        """The claimed record (``delivery.claimed`` set), or the settlement when the command
        is finished or busy elsewhere. Raises ``RelayError`` when the store is away."""
        partner = delivery.partner
        details = claim_details(
            command,
            delivery.requested_by,
            partner_id=partner.partner_id if isinstance(partner, Partner) else None,
        )
        claim = await self._leases.claim(command, details)
        if claim.outcome is ClaimOutcome.FINISHED:
            return self._reannounce(delivery, command, claim.record)
        if claim.outcome is ClaimOutcome.BUSY:
            return self._wait_for_owner(delivery, claim.record)
        delivery.claimed = command.command_id
        return claim.record

    def _reannounce(
        self, delivery: Delivery, command: Command, record: StoredCommand
    ) -> Reannounce:
        conflict = None
        if record.fingerprint is not None and record.fingerprint != fingerprint(command):
            log.warning("command_id_conflict")
            conflict = DeadLetterReason(
                "RELAY.ID_CONFLICT",
                f"command_id {command.command_id!r} was already used for a different command "
                "(type, partner or payload); this one was not carried out",
                delivery.failed_before,
                self._clock(),
            )
        return Reannounce(record, conflict=conflict)

    def _wait_for_owner(self, delivery: Delivery, record: StoredCommand) -> Delay:
        """Someone else holds the command: come back when its lease would have run out, once
        (a live owner keeps renewing it and finishes meanwhile; a dead one is taken over).
        It comes back marked admitted (``x-relay-admitted``): its turn had come, and it is
        not parked behind its customer's backlog again. A command taken in before (the broker
        redelivered it: its consumer went away) comes back within a second instead: its owner
        may have died a moment ago, before the database noticed, and its liveness lock will
        say so (``owner_gone``) long before the lease runs out."""
        left = MIN_WAIT_S
        if record.lease_until is not None:
            left = max(MIN_WAIT_S, (record.lease_until - self._clock()).total_seconds())
        if delivery.taken_in_before:
            left = min(left, TAKEOVER_RECHECK_S)
        log.info("command_busy_elsewhere", wait_s=round(left, 2))
        return Delay(left, "busy", headers={H.ADMITTED: "1"})
