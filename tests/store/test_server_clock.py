"""PostgreSQL without an injected clock: the database server's clock decides every lease.

Replicas compare each other's leases, so one clock must decide: a replica whose own clock is an
hour fast neither steals a live lease nor keeps one past its end by the server's time. The
process clock is skewed by patching ``service.store.clock.system_clock`` (and the name in
``service.store.postgres``, where the store took it from before the server decided).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import service.store.clock
import service.store.postgres
from service.store import ClaimOutcome, CommandStore, open_store
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

SKEW = timedelta(hours=1)
SHORT = timedelta(seconds=1)
LONG = timedelta(seconds=30)
CLOSE = timedelta(seconds=1)  # loopback: the test's clock and the server's agree that well


async def server_now() -> datetime:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        moment: datetime = await conn.fetchval("SELECT clock_timestamp()")
    finally:
        await conn.close()
    return moment


def real_clock() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    schema = postgres_schema()
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        await drop_schema(schema)


@pytest.fixture
def fast_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def fast() -> datetime:
        return real_clock() + SKEW

    monkeypatch.setattr(service.store.clock, "system_clock", fast)
    monkeypatch.setattr(service.store.postgres, "system_clock", fast, raising=False)


@pytest.mark.usefixtures("fast_process")
async def test_a_fast_process_clock_neither_steals_nor_stretches_leases(url: str) -> None:
    async with (
        open_store(url) as fast,  # no clock: the server's
        open_store(url, clock=real_clock) as right,  # a replica whose clock is the server's
    ):
        # A live lease of the right replica is not taken by the fast one.
        held = await right.claim("held", "renew", owner="right", lease=LONG)
        stolen = await fast.claim("held", "renew", owner="fast", lease=LONG)
        assert (held.outcome, stolen.outcome) == (ClaimOutcome.CLAIMED, ClaimOutcome.BUSY)

        # The fast replica's lease ends by the server's time, and is taken over then.
        before = await server_now()
        mine = await fast.claim("cmd", "renew", owner="fast", lease=SHORT)
        assert mine.outcome is ClaimOutcome.CLAIMED
        record = await fast.get("cmd")
        assert record is not None
        assert record.lease_until is not None
        assert before + SHORT <= record.lease_until <= before + SHORT + CLOSE
        assert abs(record.updated_at - before) < CLOSE
        busy = await right.claim("cmd", "renew", owner="right", lease=LONG)
        assert busy.outcome is ClaimOutcome.BUSY
        assert await fast.mark_call_started("cmd", owner="fast", at=real_clock()) == 1

        await asyncio.sleep((SHORT + timedelta(milliseconds=200)).total_seconds())

        taken = await right.claim("cmd", "renew", owner="right", lease=LONG)
        assert taken.outcome is ClaimOutcome.CLAIMED
        with pytest.raises(LookupError):
            await fast.mark_call_started("cmd", owner="fast", at=real_clock())


@pytest.mark.usefixtures("fast_process")
async def test_renewal_release_and_finish_use_the_server_clock(url: str) -> None:
    async with open_store(url) as fast, open_store(url) as other:
        await fast.claim("cmd", "renew", owner="fast", lease=SHORT)
        await fast.claim("gone", "renew", owner="fast", lease=LONG)

        before = await server_now()
        await fast.renew_leases("fast", ["cmd"], lease=LONG)
        renewed = await fast.get("cmd")
        assert renewed is not None
        assert renewed.lease_until is not None
        assert before + LONG <= renewed.lease_until <= before + LONG + CLOSE

        await fast.release("gone", owner="fast")
        assert (await other.claim("gone", "renew", owner="o", lease=LONG)).outcome is (
            ClaimOutcome.CLAIMED
        )

        # finished, not yet published: busy while the finisher's lease is live by the server
        assert await fast.finish("cmd", owner="fast", event=b"done") == b"done"
        finished = await fast.get("cmd")
        assert finished is not None
        assert finished.finished_at is not None
        assert abs(finished.finished_at - before) < CLOSE
        assert (await other.claim("cmd", "renew", owner="o", lease=LONG)).outcome is (
            ClaimOutcome.BUSY
        )
        await fast.mark_published("cmd")
        assert (await other.claim("cmd", "renew", owner="o", lease=LONG)).outcome is (
            ClaimOutcome.FINISHED
        )


async def test_a_lease_must_be_positive(url: str) -> None:
    store: CommandStore
    async with open_store(url) as store:
        with pytest.raises(ValueError, match="positive"):
            await store.claim("cmd", "renew", owner="a", lease=timedelta(0))
        with pytest.raises(ValueError, match="positive"):
            await store.renew_leases("a", ["cmd"], lease=-SHORT)
