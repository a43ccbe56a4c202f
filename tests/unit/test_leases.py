"""Leases: the one object that takes, renews and gives back this process's leases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from schemas.commands import Command, parse_command
from service.messages.fingerprint import claim_details
from service.messages.leases import Leases
from service.store import ClaimOutcome, open_store
from service.store.locks import LocalLocks
from service.store.types import CommandStore
from service.telemetry.metrics import Metrics

LEASE = timedelta(seconds=0.6)


def command(command_id: str = "c-1") -> Command:
    body = {
        "command_id": command_id,
        "type": "set_auto_renew",
        "payload": {"customer_id": "cust", "resource_id": "r-1", "enabled": True},
    }
    return parse_command(json.dumps(body).encode())


@pytest.fixture
async def store() -> AsyncIterator[CommandStore]:
    async with open_store("sqlite://:memory:") as opened:
        yield opened


def leases(store: CommandStore, owner: str = "me") -> Leases:
    return Leases(store, LocalLocks(), owner=owner, lease=LEASE, metrics=Metrics())


async def test_a_claim_is_held_until_done_and_kept_in_the_store(store: CommandStore) -> None:
    mine = leases(store)
    claim = await mine.claim(command(), claim_details(command(), None))
    assert claim.outcome is ClaimOutcome.CLAIMED
    assert mine.held == {"c-1"}
    await mine.done("c-1", give_back=False)  # settled: a finished command keeps its lease
    assert mine.held == set()
    record = await store.get("c-1")
    assert record is not None
    assert record.lease_until is not None


async def test_an_abandoned_message_gives_its_lease_back(store: CommandStore) -> None:
    mine, other = leases(store), leases(store, owner="other")
    await mine.claim(command(), claim_details(command(), None))
    busy = await other.claim(command(), claim_details(command(), None))
    assert busy.outcome is ClaimOutcome.BUSY
    assert other.held == set()
    await mine.done("c-1", give_back=True)
    again = await other.claim(command(), claim_details(command(), None))
    assert again.outcome is ClaimOutcome.CLAIMED  # no lease to wait out


async def test_the_heartbeat_keeps_held_leases_alive(store: CommandStore) -> None:
    mine = leases(store)
    await mine.claim(command("c-1"), claim_details(command("c-1"), None))
    await mine.claim(command("c-2"), claim_details(command("c-2"), None))
    await mine.done("c-2", give_back=False)  # no longer held: not renewed
    first = await store.get("c-1")
    assert first is not None
    assert first.lease_until is not None
    beat = asyncio.create_task(mine.renew_forever())
    try:
        await asyncio.sleep(LEASE.total_seconds() * 1.5)  # past the first lease's end
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
    renewed, dropped = await store.get("c-1"), await store.get("c-2")
    assert renewed is not None
    assert dropped is not None
    assert renewed.lease_until is not None
    assert dropped.lease_until is not None
    assert renewed.lease_until > first.lease_until
    assert dropped.lease_until < renewed.lease_until
    other = leases(store, owner="other")
    busy = await other.claim(command("c-1"), claim_details(command("c-1"), None))
    assert busy.outcome is ClaimOutcome.BUSY  # still ours, though its first lease has passed
