"""The handlers' ``Journal`` port on top of the command store, for one claimed command."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from handlers.errors import LeaseLost
from service.store.errors import store_call
from service.store.types import CommandStatus, CommandStore, StoredCommand

__all__ = ["StoreJournal"]


@dataclass(slots=True)
class _Pending:
    note: bytes | None
    durable: bool


class StoreJournal:
    """Journal of one claimed command. ``uncertain_since`` is set when the claim found the
    command in flight (an earlier attempt started an API call and never recorded its end), and
    again by each journaled call this attempt sends.

    A call is recorded in the store when it is *sent*, not when the handler announces it: the
    handler's ``call_starting`` only leaves a note, and ``record_call`` (the ``Preflight`` the
    run step gives the command's ``CallScope``: run by the HTTP client after the quota wait,
    right before the request leaves) writes it. The write fails if this process no longer holds
    the command's lease, so the call is not sent.
    """

    def __init__(
        self,
        store: CommandStore,
        record: StoredCommand,
        *,
        owner: str,
        clock: Callable[[], datetime],
    ) -> None:
        """``record``: what the claim found."""
        in_flight = record.status is CommandStatus.IN_FLIGHT
        self._store = store
        self._command_id = record.command_id
        self._owner = owner
        self._clock = clock
        self._uncertain_since = record.call_started_at if in_flight else None
        self._note = record.note if in_flight else None
        self._pending: _Pending | None = None

    @property
    def uncertain_since(self) -> datetime | None:
        return self._uncertain_since

    @property
    def note(self) -> bytes | None:
        return self._note

    async def call_had_no_effect(self) -> None:
        await store_call(self._store.clear_in_flight(self._command_id, owner=self._owner))
        self._uncertain_since, self._note = None, None

    async def claim_effects(self, effect_ids: Collection[str]) -> set[str]:
        owners = await store_call(self._store.claim_effects(self._command_id, effect_ids))
        return {e for e, owner in owners.items() if owner != self._command_id}

    async def owned_elsewhere(self, effect_ids: Collection[str]) -> set[str]:
        owners = await store_call(self._store.effect_owners(effect_ids))
        return {e for e, owner in owners.items() if owner != self._command_id}

    async def call_starting(self, *, note: bytes | None = None, durable: bool = True) -> datetime:
        self._pending = _Pending(note, durable)
        return self._clock()

    async def record_call(self) -> None:
        """Right before a mutating request is sent (each send, 429 re-sends included)."""
        pending = self._pending
        if pending is None or not pending.durable:
            return  # safe to repeat: counted by the scope, nothing written
        at = self._clock()
        try:
            await store_call(
                self._store.mark_call_started(
                    self._command_id, owner=self._owner, at=at, note=pending.note
                )
            )
        except LookupError as exc:
            raise LeaseLost(
                "RELAY.LEASE_LOST",
                "this process no longer owns the command (its lease passed); the call was not sent",
            ) from exc
        self._uncertain_since, self._note = at, pending.note
