"""A PostgreSQL store of the releases before schema versions upgrades in place: its command
rows kept, its shared buckets carried over into ``relay_pacing``, the old functions gone."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from service.pacing.postgres import PACING
from service.store import ClaimOutcome, open_store
from service.store.schema import TABLES, postgres_ddl
from service.store.versions import STORE
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

BEFORE = (Path(__file__).parent / "buckets_before_versions.sql").read_text()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = postgres_schema()
    try:
        yield name
    finally:
        await drop_schema(name)


async def make_old_deployment(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": schema})
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        for statement in postgres_ddl(TABLES):  # the command tables, as every release made them
            await conn.execute(statement)
        await conn.execute(BEFORE)
        await conn.execute(
            """INSERT INTO relay_commands (command_id, type, status, event, created_at,
                   updated_at, finished_at, published_at)
               VALUES ('old', 'renew', 'finished', $1, now(), now(), now(), now())""",
            json.dumps({"event_id": "ev-old", "outcome": "succeeded"}).encode(),
        )
        await conn.execute(
            """INSERT INTO relay_buckets (api, kind, name, rate, tat, adjusted_at, guard,
                                          throttled_at, widened_at, used_at) VALUES
               ('renewal_resources', 'uid', 'cust-1', 5, 1000.5, 900, 0, 0, 0, 990),
               ('renewal_resources', 'egress', 'default', 10, 1000.25, 900, 0, 0, 0, 995),
               ('renewal_resources', 'guard', 'default', 10, 0, 950, 0.02, 940, 945, 995),
               ('renewal_resources', 'ticket', 'cust-1', 0.2, 2000, 0, 0, 0, 0, 995)"""
        )
    finally:
        await conn.close()


async def test_an_old_deployment_upgrades_in_place(schema: str) -> None:
    await make_old_deployment(schema)

    url = f"{POSTGRES_URL}?schema={schema}"
    async with open_store(url, components=(PACING,)) as store:
        old = await store.claim("old", "renew", owner="a", lease=timedelta(seconds=30))
        assert old.outcome is ClaimOutcome.FINISHED  # the command rows are kept
        pool = store.pool  # type: ignore[attr-defined]
        rows = await pool.fetch(
            "SELECT kind, name, tat, cap, used_at, guard, guard_min, throttled_at, widened_at,"
            " narrowed_at FROM relay_pacing ORDER BY kind"
        )
        assert [dict(r) for r in rows] == [
            {"kind": "customer", "name": "cust-1", "tat": 1000.5, "cap": float("inf"),
             "used_at": 990.0, "guard": 0.0, "guard_min": 0.0, "throttled_at": float("-inf"),
             "widened_at": float("-inf"), "narrowed_at": float("-inf")},
            {"kind": "egress", "name": "default", "tat": 1000.25, "cap": float("inf"),
             "used_at": 995.0, "guard": 0.02, "guard_min": 0.01, "throttled_at": 940.0,
             "widened_at": 945.0, "narrowed_at": 950.0},
        ]  # fmt: skip
        assert await pool.fetchval("SELECT to_regclass('relay_buckets')") is None
        gone = await pool.fetchval(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = $1 AND p.proname IN"
            " ('relay_reserve_any', 'relay_give_back', 'relay_throttled')",
            schema,
        )
        assert gone == 0
        versions = await pool.fetch("SELECT component, version FROM relay_schema")
        assert {r["component"]: r["version"] for r in versions} == {
            "store": STORE.latest,
            "pacing": 1,
        }

    async with open_store(url, components=(PACING,)) as again:  # a second start changes nothing
        count = await again.pool.fetchval("SELECT count(*) FROM relay_pacing")  # type: ignore[attr-defined]
        assert count == 2


async def test_the_functions_are_reinstalled_when_their_text_changes(schema: str) -> None:
    url = f"{POSTGRES_URL}?schema={schema}"
    async with open_store(url, components=(PACING,)) as store:
        pool = store.pool  # type: ignore[attr-defined]
        await pool.execute("DROP FUNCTION relay_pacing_sweep(double precision, double precision)")
        await pool.execute("UPDATE relay_schema SET checksum = 'older' WHERE component = 'pacing'")
    async with open_store(url, components=(PACING,)) as store:
        assert await store.pool.fetchval("SELECT relay_pacing_sweep(3600, 0)") == 0  # type: ignore[attr-defined]
