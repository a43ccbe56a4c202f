"""The handlers' ``Journal`` port on top of the command store."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime

from handlers.ports import CommandStatus, CommandStore, StoredCommand

__all__ = ["StoreJournal"]


class StoreJournal:
    """Journal of one claimed command. ``uncertain_since`` is set when the claim found the
    command in flight: an earlier attempt started an API call and never recorded its end."""

    def __init__(
        self,
        store: CommandStore,
        *,
        command_id: str,
        owner: str,
        clock: Callable[[], datetime],
        attempts: int,
        uncertain_since: datetime | None,
        note: bytes | None,
    ) -> None:
        self._store = store
        self._command_id = command_id
        self._owner = owner
        self._clock = clock
        self.attempts = attempts
        self._uncertain_since = uncertain_since
        self._note = note

    @classmethod
    def from_claim(
        cls,
        store: CommandStore,
        record: StoredCommand,
        *,
        owner: str,
        clock: Callable[[], datetime],
        retries: int = 0,
    ) -> StoreJournal:
        """``retries``: failed deliveries so far (the message header); attempts of calls that
        were not journaled in the store (safe to repeat) are counted from it."""
        in_flight = record.status is CommandStatus.IN_FLIGHT
        return cls(
            store,
            command_id=record.command_id,
            owner=owner,
            clock=clock,
            attempts=max(record.attempts, retries),
            uncertain_since=record.call_started_at if in_flight else None,
            note=record.note if in_flight else None,
        )

    @property
    def uncertain_since(self) -> datetime | None:
        return self._uncertain_since

    @property
    def note(self) -> bytes | None:
        return self._note

    async def call_had_no_effect(self) -> None:
        await self._store.clear_in_flight(self._command_id, owner=self._owner)
        self._uncertain_since, self._note = None, None

    async def claim_effects(self, effect_ids: Collection[str]) -> set[str]:
        owners = await self._store.claim_effects(self._command_id, effect_ids)
        return {e for e, owner in owners.items() if owner != self._command_id}

    async def owned_elsewhere(self, effect_ids: Collection[str]) -> set[str]:
        owners = await self._store.effect_owners(effect_ids)
        return {e for e, owner in owners.items() if owner != self._command_id}

    async def call_starting(self, *, note: bytes | None = None, durable: bool = True) -> datetime:
        at = self._clock()
        if not durable:  # a call that is safe to repeat: counted, not written down
            self.attempts += 1
            return at
        self.attempts = await self._store.mark_call_started(
            self._command_id, owner=self._owner, at=at, note=note
        )
        self._uncertain_since, self._note = at, note
        return at
