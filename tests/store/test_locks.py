"""Renewal locks (guarantee 7) on real PostgreSQL: holders on different connections never
overlap, a killed holder's lock is freed, and a holder whose connection is lost learns it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from handlers.errors import StoreUnavailable
from service.store.locks import LocalLocks, PostgresLocks, lock_id
from tests.conftest import unique_name
from tests.store.conftest import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[2]  # the checkout, for a holder in another process


async def connect() -> asyncpg.Connection:
    return await asyncpg.connect(POSTGRES_URL)


@pytest.fixture
def namespace() -> str:
    return unique_name("test")


@pytest.fixture
async def replicas(namespace: str) -> AsyncIterator[list[PostgresLocks]]:
    async with (
        PostgresLocks(connect, namespace=namespace, poll_s=0.005) as one,
        PostgresLocks(connect, namespace=namespace, poll_s=0.005) as two,
    ):
        yield [one, two]


async def overlaps(locks: list[PostgresLocks] | list[LocalLocks], rounds: int) -> int:
    """Holders spread over ``locks`` take one key in turn; how many ever ran at once."""
    inside, most = 0, 0

    async def holder(i: int) -> None:
        nonlocal inside, most
        for _ in range(rounds):
            async with locks[i % len(locks)].hold("customer-1") as held:
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.002)
                held.check()
                inside -= 1

    await asyncio.gather(*(holder(i) for i in range(6)))
    return most


async def test_holders_on_two_connections_never_overlap(replicas: list[PostgresLocks]) -> None:
    assert await overlaps(replicas, rounds=10) == 1
    pids = {r.connection_pid for r in replicas}
    assert len(pids) == 2  # really two sessions
    assert None not in pids


async def test_other_keys_do_not_wait(replicas: list[PostgresLocks]) -> None:
    one, two = replicas
    async with one.hold("customer-1"), asyncio.timeout(2), two.hold("customer-2") as held:
        assert held.valid


async def test_local_locks_serialise_and_forget_unused_keys() -> None:
    locks = LocalLocks()
    assert await overlaps([locks], rounds=10) == 1
    assert len(locks) == 0


@contextlib.asynccontextmanager
async def holder(script: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process running ``script``, which prints "held" once it holds the lock; killed
    (after a SIGCONT, should it be stopped) when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(script), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"held\n"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def freed_after(
    namespace: str, proc: asyncio.subprocess.Process, sig: int, *, held_for: float
) -> float:
    """The holder keeps customer-1 for ``held_for`` s; then ``sig``: seconds until it is free."""
    async with PostgresLocks(connect, namespace=namespace, poll_s=0.01) as locks:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(held_for), locks.hold("customer-1"):
                pass  # the other process holds it
        os.kill(proc.pid, sig)
        started = time.monotonic()
        async with asyncio.timeout(10), locks.hold("customer-1") as held:
            assert held.valid
        return time.monotonic() - started


async def test_a_killed_holders_lock_is_freed(namespace: str) -> None:
    """A holder in another process is SIGKILLed: its session ends, the lock is free."""
    script = f"""
        import asyncio, asyncpg
        async def main():
            conn = await asyncpg.connect({POSTGRES_URL!r})
            await conn.execute("SELECT pg_advisory_lock($1)", {lock_id(namespace, "customer-1")})
            print("held", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    async with holder(script) as proc:
        assert await freed_after(namespace, proc, signal.SIGKILL, held_for=0.5) < 2


async def test_a_live_holder_keeps_its_lock_past_the_idle_timeout(namespace: str) -> None:
    async with (
        PostgresLocks(connect, namespace=namespace, idle_s=0.6) as locks,
        PostgresLocks(connect, namespace=namespace, poll_s=0.01) as other,
        locks.hold("customer-1") as held,
    ):
        with pytest.raises(TimeoutError):  # three idle timeouts: the heartbeat keeps it
            async with asyncio.timeout(1.8), other.hold("customer-1"):
                pass
        assert held.valid


async def test_a_frozen_holders_lock_is_freed_after_the_idle_timeout(namespace: str) -> None:
    """A holder in another process is frozen (SIGSTOP): its connection stays open, but the
    server ends the silent session after ``idle_s`` and the lock is free."""
    script = f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        import asyncpg
        from service.store.locks import PostgresLocks
        async def main():
            connect = lambda: asyncpg.connect({POSTGRES_URL!r})
            async with PostgresLocks(connect, namespace={namespace!r}, idle_s=1.0) as locks:
                async with locks.hold("customer-1"):
                    print("held", flush=True)
                    await asyncio.sleep(60)
        asyncio.run(main())
        """
    async with holder(script) as proc:  # alive, it keeps the lock past its idle timeout
        assert await freed_after(namespace, proc, signal.SIGSTOP, held_for=1.5) < 1.0 + 2


async def test_a_holder_learns_that_its_connection_was_lost(namespace: str) -> None:
    async with (
        PostgresLocks(connect, namespace=namespace, heartbeat_s=0.2) as locks,
        PostgresLocks(connect, namespace=namespace, poll_s=0.01) as other,
    ):
        async with locks.hold("customer-1") as held:
            pid = locks.connection_pid
            admin = await connect()
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            await asyncio.wait_for(held.lost.wait(), 5)
            with pytest.raises(StoreUnavailable, match="lost"):
                held.check()
            # void indeed: another replica takes it while the first still "holds" it
            async with asyncio.timeout(5), other.hold("customer-1") as taken:
                assert taken.valid
        async with asyncio.timeout(5), locks.hold("customer-1") as again:  # reconnects
            assert again.valid
            assert locks.connection_pid != pid


async def test_no_connection_no_lock() -> None:
    async def refused() -> asyncpg.Connection:
        return await asyncpg.connect("postgresql://postgres@127.0.0.1:1/test", timeout=1)

    async with PostgresLocks(refused) as locks:
        with pytest.raises(StoreUnavailable):
            async with locks.hold("customer-1"):
                pass


async def test_a_replica_is_alive_while_its_locks_connection_is(namespace: str) -> None:
    """The liveness lock: a replica whose process died (its connection gone) is reported gone
    at once; a live one, this replica itself and a connection lost and restored are not."""
    ns = f"{namespace}:renew"
    async with PostgresLocks(connect, namespace=ns, owner="host:1:a", heartbeat_s=0.1) as one:
        async with PostgresLocks(connect, namespace=ns, owner="host:2:b") as two:
            assert await one.owner_gone("host:2:b") is False
            assert await two.owner_gone("host:1:a") is False
            assert await one.owner_gone("host:1:a") is False  # itself
        assert await one.owner_gone("host:2:b") is True  # its connection closed with it
        # a connection of one's lost: it is "gone" until its heartbeat reconnects
        admin = await connect()
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", one.connection_pid)
        finally:
            await admin.close()
        async with PostgresLocks(connect, namespace=ns, owner="host:3:c") as three:
            for _ in range(100):  # the heartbeat (0.1 s) reconnects and takes it again
                if not await three.owner_gone("host:1:a"):
                    break
                await asyncio.sleep(0.05)
            assert await three.owner_gone("host:1:a") is False
