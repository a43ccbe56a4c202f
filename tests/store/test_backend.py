"""One backend from STORE_URL: each kind of store brings its own buckets, locks and probe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from service.backend import open_backend
from service.pacing.limiter import RateLimiter
from service.pacing.shared import SharedBuckets
from service.settings import PacingSettings, StoreSettings
from service.store import PostgresCommandStore, SqliteCommandStore
from service.store.health import StoreHealth
from service.store.locks import LocalLocks, PostgresLocks
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

PACING = PacingSettings(
    rate_limits={"list_customer_orders": 5},
    egress="nat-a",
    guard_s=0.002,
    guard_max_s=0.05,
    hold_s=2,
)


def store_settings(url: str) -> StoreSettings:
    return StoreSettings(url=url, lease=timedelta(seconds=5), retention=timedelta(days=1))


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    schema = postgres_schema()
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        await drop_schema(schema)


async def test_sqlite_keeps_buckets_and_locks_in_process(tmp_path: Path) -> None:
    settings = store_settings(f"sqlite:///{tmp_path}/store.db")
    async with open_backend(settings, PACING, owner="host:1:a") as backend:
        assert isinstance(backend.store, SqliteCommandStore)
        assert isinstance(backend.buckets, RateLimiter)
        assert isinstance(backend.locks, LocalLocks)
        assert backend.health is None  # the file is part of the process
        # the published table, with RELAY_RATE_LIMITS over it
        assert backend.buckets.limit("renewal_resources") == 10
        assert backend.buckets.limit("list_customer_orders") == 5


async def test_postgres_shares_buckets_and_locks_and_is_pinged(postgres_url: str) -> None:
    settings = store_settings(postgres_url)
    async with open_backend(settings, PACING, owner="host:1:a") as backend:
        assert isinstance(backend.store, PostgresCommandStore)
        assert isinstance(backend.buckets, SharedBuckets)
        assert isinstance(backend.locks, PostgresLocks)
        assert isinstance(backend.health, StoreHealth)
        assert await backend.health.check()
        assert backend.buckets.limit("renewal_resources") == 10
        assert backend.buckets.limit("list_customer_orders") == 5
        async with open_backend(settings, PACING, owner="host:2:b") as other:
            # the first one's liveness lock is held from the start: it is not taken for dead
            assert not await other.locks.owner_gone("host:1:a")
