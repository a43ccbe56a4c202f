"""One backend from STORE_URL: each kind of store brings its own buckets, locks and probe."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from service.backend import open_backend
from service.pacing.local import LocalBuckets
from service.pacing.postgres import PostgresBuckets
from service.settings import StoreSettings
from service.store import PostgresCommandStore, SqliteCommandStore
from service.store.health import StoreHealth
from service.store.locks import LocalLocks, PostgresLocks
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema


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
    async with open_backend(settings, owner="host:1:a") as backend:
        assert isinstance(backend.store, SqliteCommandStore)
        assert isinstance(backend.buckets, LocalBuckets)
        assert isinstance(backend.locks, LocalLocks)
        assert backend.health is None  # the file is part of the process
        assert backend.guard_min_s == 0.0


async def test_postgres_shares_buckets_and_locks_and_is_pinged(postgres_url: str) -> None:
    settings = store_settings(postgres_url)
    async with open_backend(settings, owner="host:1:a") as backend:
        assert isinstance(backend.store, PostgresCommandStore)
        assert isinstance(backend.buckets, PostgresBuckets)
        assert isinstance(backend.locks, PostgresLocks)
        assert isinstance(backend.health, StoreHealth)
        assert await backend.health.check()
        assert backend.guard_min_s == 0.010  # the store's round trip adds to the path's jitter
        assert abs(backend.buckets.now() - time.time()) < 1.0  # the server's clock, learnt
        async with open_backend(settings, owner="host:2:b") as other:
            # the first one's liveness lock is held from the start: it is not taken for dead
            assert not await other.locks.owner_gone("host:1:a")
