"""StoreHealth: the store reported down from the first failed ping to the first that answers."""

from __future__ import annotations

import asyncio

import asyncpg

from service.store.health import StoreHealth


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Pings:
    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.hang = False

    async def __call__(self) -> None:
        if self.hang:
            await asyncio.sleep(10)
        if self.error is not None:
            raise self.error


async def test_down_from_the_first_failed_ping_until_one_answers() -> None:
    clock, pings = Clock(), Pings()
    health = StoreHealth(pings, clock=clock)
    assert await health.check()
    assert health.problems() == []
    pings.error = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    assert not await health.check()
    clock.t += 7
    assert not await health.check()  # still down: since the first failure
    [problem] = health.problems()
    assert problem.startswith("command store unreachable for 7 s (ConnectionRefusedError")
    assert "no API call is made" in problem
    pings.error = None
    assert await health.check()
    assert health.up
    assert health.problems() == []


async def test_a_ping_without_answer_in_time_or_a_driver_error_is_a_failure() -> None:
    pings = Pings()
    health = StoreHealth(pings, timeout_s=0.05)
    pings.hang = True
    assert not await health.check()
    assert "TimeoutError" in health.problems()[0]
    pings.hang, pings.error = False, asyncpg.InternalClientError("cannot switch to state 12")
    assert not await health.check()
    assert "InternalClientError" in health.problems()[0]


async def test_watch_pings_every_interval() -> None:
    calls: list[None] = []

    async def ping() -> None:
        calls.append(None)

    watcher = asyncio.create_task(StoreHealth(ping, every_s=0.01).watch())
    await asyncio.sleep(0.1)
    watcher.cancel()
    assert len(calls) >= 3
