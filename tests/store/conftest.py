"""Fixtures for the command store: both backends on real databases, time under test control.

``store_url`` is parametrised over SQLite (a file in ``tmp_path``) and PostgreSQL (a schema
``relay_test_<worker>_<hex>`` of its own per test, dropped with CASCADE afterwards).
``open_replica`` opens further stores on the same database, as another replica or a restarted
process would; the factory closes them all, in reverse order, before the database is removed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from service.store import open_store
from service.store.types import CommandStore
from tests.conftest import unique_name

POSTGRES_URL = os.environ.get(
    "BSS_RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
START = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)

OpenReplica = Callable[[], Awaitable[CommandStore]]


class FakeClock:
    """A clock that moves only when told to: leases expire without sleeping."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def postgres_schema() -> str:
    """A schema name no other test, worker or run uses: ``relay_test_<worker>_<hex>``."""
    return unique_name("relay_test", sep="_", length=32)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    schema = postgres_schema()
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        await drop_schema(schema)


@pytest.fixture
async def open_replica(store_url: str, clock: FakeClock) -> AsyncIterator[OpenReplica]:
    async with AsyncExitStack() as stack:

        async def open_one() -> CommandStore:
            return await stack.enter_async_context(open_store(store_url, clock=clock))

        yield open_one


@pytest.fixture
async def store(open_replica: OpenReplica) -> CommandStore:
    return await open_replica()
