"""``open_store``: which backend a ``STORE_URL`` names, and what each backend does on open."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from service.store import (
    DEFAULT_STORE_URL,
    PostgresCommandStore,
    SqliteCommandStore,
    open_store,
)
from service.store.postgres import split_schema
from service.store.sqlite import sqlite_path_from_url
from service.store.types import ClaimOutcome
from tests.store.conftest import POSTGRES_URL, FakeClock, drop_schema, postgres_schema

LEASE = timedelta(seconds=30)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///bss-relay.db", "bss-relay.db"),
        ("sqlite:///data/relay.db", "data/relay.db"),
        ("sqlite:////var/lib/relay.db", "/var/lib/relay.db"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("relay.db", "relay.db"),
        ("/var/lib/relay.db", "/var/lib/relay.db"),
    ],
)
def test_sqlite_urls_name_a_path(url: str, path: str) -> None:
    assert sqlite_path_from_url(url) == path
    assert isinstance(open_store(url), SqliteCommandStore)


@pytest.mark.parametrize("url", ["sqlite://host/relay.db", "sqlite:///", "sqlite://", ""])
def test_malformed_sqlite_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)sqlite"):
        open_store(url)


@pytest.mark.parametrize(
    "url", ["postgresql://u@db:5432/relay", "postgres://u@db/relay?schema=relay_x"]
)
def test_postgres_urls_choose_postgres(url: str) -> None:
    assert isinstance(open_store(url), PostgresCommandStore)


def test_unknown_scheme_is_refused_without_echoing_the_url() -> None:
    with pytest.raises(ValueError, match="unsupported store URL scheme 'mysql'") as caught:
        open_store("mysql://relay:s3cret@db/relay")

    assert "s3cret" not in str(caught.value)


def test_schema_is_taken_out_of_the_url_and_other_parameters_kept() -> None:
    dsn, schema = split_schema("postgresql://u@db/relay?sslmode=disable&schema=relay_a1")

    assert (dsn, schema) == ("postgresql://u@db/relay?sslmode=disable", "relay_a1")
    assert split_schema("postgresql://u@db/relay") == ("postgresql://u@db/relay", None)


@pytest.mark.parametrize("schema", ["Relay", "relay;drop", "1relay", ""])
def test_schema_must_be_a_plain_identifier(schema: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        open_store(f"postgresql://u@db/relay?schema={schema}")


async def test_default_url_is_a_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async with open_store(DEFAULT_STORE_URL) as store:
        await store.claim("cmd-1", "renew", owner="a", lease=LEASE)

    assert (tmp_path / "bss-relay.db").is_file()


async def test_sqlite_file_keeps_state_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    clock = FakeClock()
    async with open_store(url, clock=clock) as store:
        await store.claim("cmd-1", "renew", owner="a", lease=LEASE)
        await store.finish("cmd-1", owner="a", event=b"done")
        await store.mark_published("cmd-1")

    async with open_store(url, clock=clock) as store:
        claim = await store.claim("cmd-1", "renew", owner="b", lease=LEASE)

    assert (claim.outcome, claim.record.event) == (ClaimOutcome.FINISHED, b"done")


async def test_sqlite_in_memory_works() -> None:
    async with open_store("sqlite://:memory:") as store:
        claim = await store.claim("cmd-1", "renew", owner="a", lease=LEASE)

    assert claim.outcome is ClaimOutcome.CLAIMED


async def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    async with open_store(str(tmp_path / "relay.db")):
        pass

    header = (tmp_path / "relay.db").read_bytes()[18:20]
    assert header == b"\x02\x02"  # file format versions 2/2 mean WAL


async def test_postgres_creates_its_schema_and_table_there() -> None:
    schema = postgres_schema()
    try:
        async with open_store(f"{POSTGRES_URL}?schema={schema}") as store:
            await store.claim("cmd-1", "renew", owner="a", lease=LEASE)
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            where = await conn.fetchval("SELECT to_regclass($1)::text", f"{schema}.relay_commands")
        finally:
            await conn.close()
        assert where == f"{schema}.relay_commands"
    finally:
        await drop_schema(schema)


async def test_a_store_must_be_opened_before_use() -> None:
    store = SqliteCommandStore(":memory:")

    with pytest.raises(RuntimeError, match="not open"):
        await store.get("cmd-1")


async def test_a_naive_clock_is_refused() -> None:
    async with open_store("sqlite://:memory:", clock=lambda: datetime(2026, 1, 1)) as store:
        with pytest.raises(ValueError, match="timezone-aware"):
            await store.claim("cmd-1", "renew", owner="a", lease=LEASE)
