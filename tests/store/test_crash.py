"""A process killed with SIGKILL mid-call leaves a command another process can take over."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.store import open_store
from service.store.types import ClaimOutcome, CommandStatus
from tests.store.conftest import FakeClock

REPO = Path(__file__).resolve().parents[2]
LEASE = timedelta(seconds=30)

DOOMED = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from service.store import open_store

async def main(url: str) -> None:
    async with open_store(url) as store:
        await store.claim("cmd-1", "renew", owner="doomed", lease=timedelta(seconds=30))
        await store.mark_call_started("cmd-1", owner="doomed", at=datetime.now(UTC))
        print("in flight", flush=True)
        await asyncio.sleep(120)

asyncio.run(main(sys.argv[1]))
"""


async def run_until_in_flight_then_kill(store_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DOOMED, store_url, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line == b"in flight\n"
    finally:
        proc.kill()
        await proc.wait()


async def test_killed_owner_is_taken_over_after_its_lease(store_url: str) -> None:
    await run_until_in_flight_then_kill(store_url)
    clock = FakeClock(datetime.now(UTC))

    async with open_store(store_url, clock=clock) as store:
        busy = await store.claim("cmd-1", "renew", owner="survivor", lease=LEASE)
        clock.advance(LEASE + timedelta(seconds=1))
        claim = await store.claim("cmd-1", "renew", owner="survivor", lease=LEASE)

    assert busy.outcome is ClaimOutcome.BUSY
    assert claim.outcome is ClaimOutcome.CLAIMED
    assert (claim.record.status, claim.record.attempts) == (CommandStatus.IN_FLIGHT, 1)
    assert claim.record.call_started_at is not None
