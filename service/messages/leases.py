"""The leases this process holds on commands in the store: taken, renewed and given back here.

A lease says "this process works on the command" (CONTRACT guarantees 2 and 3): while it is
live nobody else claims the command, and the journal's writes check it, so a process that lost
it sends no money-moving request. One ``Leases`` per process, owned by the runtime; nothing
else touches leases:

* ``claim`` takes a lease. A command claimed by a process that has died (its liveness lock is
  free: ``RenewalLocks.owner_gone``) is taken over at once, not when its lease runs out;
  reconciliation before any money-moving retry is the claim's as ever.
* ``renew_forever`` (the runtime's heartbeat loop) renews every lease held, in one statement,
  every third of a lease, so a short lease stays cheap.
* ``release`` gives one back before a delay or a rejection (best effort: if the store is away,
  the lease runs out); ``done`` stops renewing once the message is settled, and gives the lease
  back if the message was abandoned to redelivery (its channel closed), so the redelivery does
  not wait out our lease. A finished command keeps its lease until its event is published.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from handlers.errors import StoreUnavailable
from schemas.commands import Command
from service.messages.fingerprint import ClaimDetails
from service.store.errors import store_call
from service.store.locks import RenewalLocks
from service.store.types import Claim, ClaimOutcome, CommandStore
from service.telemetry.metrics import Metrics

__all__ = ["Leases"]

log = structlog.get_logger(__name__)


class Leases:
    def __init__(
        self,
        store: CommandStore,
        locks: RenewalLocks,
        *,
        owner: str,
        lease: timedelta,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._locks = locks
        self.owner = owner  # this process, as the store knows it
        self.lease = lease
        self._metrics = metrics
        self.held: set[str] = set()  # command ids whose leases are renewed

    async def claim(self, command: Command, details: ClaimDetails) -> Claim:
        """The store's claim; a dead owner's claim is taken over. Raises ``RelayError`` when
        the store cannot be reached."""
        claim = await self._claim(command, details)
        dead = claim.record.owner
        if claim.outcome is ClaimOutcome.BUSY and dead and await self._locks.owner_gone(dead):
            log.info("command_taken_over", dead_owner=dead)
            await store_call(self._store.release(command.command_id, owner=dead))
            claim = await self._claim(command, details)
        if claim.outcome is ClaimOutcome.CLAIMED:
            self.held.add(command.command_id)
        return claim

    async def _claim(self, command: Command, details: ClaimDetails) -> Claim:
        return await store_call(
            self._store.claim(
                command.command_id, command.type, owner=self.owner, lease=self.lease, **details
            )
        )

    async def release(self, command_id: str | None) -> None:
        """Give a lease back, best effort: if the store is away the lease runs out."""
        if command_id is None:
            return
        self.held.discard(command_id)
        try:
            await store_call(self._store.release(command_id, owner=self.owner))
        except StoreUnavailable as exc:  # the lease then simply runs out
            self._metrics.store_error()
            log.warning("release_failed", error=exc.message)

    async def done(self, command_id: str | None, *, give_back: bool) -> None:
        """The message holding ``command_id`` is settled: stop renewing its lease, and give it
        back when ``give_back`` (the message was abandoned to redelivery)."""
        if command_id is None:
            return
        self.held.discard(command_id)
        if give_back:
            await self.release(command_id)

    async def renew_forever(self) -> None:
        """The heartbeat: every lease held, renewed in one statement every third of a lease."""
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            held = set(self.held)
            if held:
                try:
                    await self._store.renew_leases(self.owner, held, lease=self.lease)
                except Exception:  # a missed beat is retried next interval
                    log.exception("lease_renewal_failed", commands=len(held))
