"""One schema definition for both store backends (``service.store.schema``).

The DDL each backend renders must make the very tables the hand-written DDL of the release
before made (``TODAY_*`` below, copied verbatim from it): same columns, types, defaults,
CHECKs, keys and indexes. A database that DDL created opens, keeps its rows and is left as a new
one would be; and the SQLite and the PostgreSQL renderings describe the same tables.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.store import ClaimOutcome, open_store
from service.store.schema import SQLITE, STEERING_TABLES, TABLES, Column, Kind, Table, add_column
from service.store.steering import LineDelta, Publication
from service.store.versions import STORE
from tests.store.conftest import POSTGRES_URL, FakeClock, drop_schema, postgres_schema

LEASE = timedelta(seconds=30)
FIRST = frozenset(t.name for t in TABLES)  # the tables of schema version 1: the release before
ALL_TABLES = FIRST | {t.name for t in STEERING_TABLES} | {"relay_schema"}

# --- the hand-written DDL of the release before service.store.schema, verbatim ---------------

TODAY_SQLITE = (
    """
    CREATE TABLE IF NOT EXISTS relay_commands (
        command_id      TEXT PRIMARY KEY NOT NULL,
        type            TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('received', 'in_flight', 'finished')),
        attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        call_started_at TEXT,
        note            BLOB,
        event           BLOB,
        published_at    TEXT,
        owner           TEXT,
        lease_until     TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        finished_at     TEXT,
        fingerprint     TEXT,
        requested_by    TEXT,
        partner_id      TEXT,
        customer_id     TEXT,
        body            BLOB,
        CHECK ((owner IS NULL) = (lease_until IS NULL)),
        CHECK ((status = 'finished') = (finished_at IS NOT NULL AND event IS NOT NULL))
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS relay_commands_finished_at
        ON relay_commands (finished_at) WHERE status = 'finished'
    """,
    """
    CREATE INDEX IF NOT EXISTS relay_commands_money_created_at
        ON relay_commands (created_at) WHERE type IN ('renew', 'issue_coupon')
    """,
    """
    CREATE TABLE IF NOT EXISTS relay_effects (
        effect_id  TEXT PRIMARY KEY NOT NULL,
        command_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    # The money-guardrail ledgers: see service.store.ledger.
    """
    CREATE TABLE IF NOT EXISTS relay_renewals (
        resource_id TEXT NOT NULL,
        command_id  TEXT NOT NULL,
        customer_id TEXT,
        done        INTEGER NOT NULL DEFAULT 0,
        renewed_at  TEXT NOT NULL,
        PRIMARY KEY (resource_id, command_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS relay_coupon_spend (
        command_id  TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        partner_id  TEXT NOT NULL,
        cents       INTEGER NOT NULL CHECK (cents > 0),
        committed   INTEGER NOT NULL DEFAULT 0,
        at          TEXT NOT NULL,
        PRIMARY KEY (command_id, customer_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS relay_coupon_spend_partner ON relay_coupon_spend (partner_id, at)",
    "CREATE INDEX IF NOT EXISTS relay_coupon_spend_customer ON relay_coupon_spend "
    "(customer_id, at)",
)

TODAY_SQLITE_ADDED = (
    ("fingerprint", "TEXT"),
    ("requested_by", "TEXT"),
    ("partner_id", "TEXT"),
    ("customer_id", "TEXT"),
    ("body", "BLOB"),
)

TODAY_POSTGRES = (
    """
    CREATE TABLE IF NOT EXISTS relay_commands (
        command_id      text PRIMARY KEY,
        type            text NOT NULL,
        status          text NOT NULL CHECK (status IN ('received', 'in_flight', 'finished')),
        attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        call_started_at timestamptz,
        note            bytea,
        event           bytea,
        published_at    timestamptz,
        owner           text,
        lease_until     timestamptz,
        created_at      timestamptz NOT NULL,
        updated_at      timestamptz NOT NULL,
        finished_at     timestamptz,
        fingerprint     text,
        requested_by    text,
        partner_id      text,
        customer_id     text,
        body            bytea,
        CHECK ((owner IS NULL) = (lease_until IS NULL)),
        CHECK ((status = 'finished') = (finished_at IS NOT NULL AND event IS NOT NULL))
    )
    """,
    # columns added after the first release, for a table created before them
    """
    ALTER TABLE relay_commands
        ADD COLUMN IF NOT EXISTS fingerprint text,
        ADD COLUMN IF NOT EXISTS requested_by text,
        ADD COLUMN IF NOT EXISTS partner_id text,
        ADD COLUMN IF NOT EXISTS customer_id text,
        ADD COLUMN IF NOT EXISTS body bytea
    """,
    """
    CREATE INDEX IF NOT EXISTS relay_commands_finished_at
        ON relay_commands (finished_at) WHERE status = 'finished'
    """,
    """
    CREATE INDEX IF NOT EXISTS relay_commands_money_created_at
        ON relay_commands (created_at) WHERE type IN ('renew', 'issue_coupon')
    """,
    """
    CREATE TABLE IF NOT EXISTS relay_effects (
        effect_id  text PRIMARY KEY,
        command_id text NOT NULL,
        created_at timestamptz NOT NULL
    )
    """,
    # The money-guardrail ledgers: see service.store.ledger.
    """
    CREATE TABLE IF NOT EXISTS relay_renewals (
        resource_id text NOT NULL,
        command_id  text NOT NULL,
        customer_id text,
        done        boolean NOT NULL DEFAULT false,
        renewed_at  timestamptz NOT NULL,
        PRIMARY KEY (resource_id, command_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS relay_coupon_spend (
        command_id  text NOT NULL,
        customer_id text NOT NULL,
        partner_id  text NOT NULL,
        cents       bigint NOT NULL CHECK (cents > 0),
        committed   boolean NOT NULL DEFAULT false,
        at          timestamptz NOT NULL,
        PRIMARY KEY (command_id, customer_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS relay_coupon_spend_partner ON relay_coupon_spend (partner_id, at)",
    "CREATE INDEX IF NOT EXISTS relay_coupon_spend_customer ON relay_coupon_spend "
    "(customer_id, at)",
)

# --- catalogs ---------------------------------------------------------------------------------

SqliteCatalog = dict[str, Any]


def _words(sql: str) -> str:
    """SQL text with layout ignored: runs of blanks made one, none around parentheses/commas."""
    return re.sub(r"\s*([(),])\s*", r"\1", re.sub(r"\s+", " ", sql)).strip()


def sqlite_catalog(path: Path, only: frozenset[str] | None = None) -> SqliteCatalog:
    """The file's catalog; ``only``: of these tables (and their indexes) alone."""
    conn = sqlite3.connect(path)
    try:
        objects = sorted(
            (kind, name, table, None if sql is None else _words(sql))
            for kind, name, table, sql in conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master"
            )
            if only is None or table in only
        )
        tables = [name for kind, name, _, _ in objects if kind == "table"]
        columns = {t: conn.execute(f"PRAGMA table_xinfo({t})").fetchall() for t in tables}
        indexes = {
            index: conn.execute(f"PRAGMA index_xinfo({index})").fetchall()
            for kind, index, _, _ in objects
            if kind == "index"
        }
    finally:
        conn.close()
    return {"objects": objects, "columns": columns, "indexes": indexes}


def make_sqlite(path: Path, statements: tuple[str, ...]) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


async def postgres_catalog(schema: str, only: frozenset[str] | None = None) -> dict[str, Any]:
    """The schema's catalog; ``only``: of these tables (and their indexes) alone."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        columns = await conn.fetch(
            """SELECT table_name, ordinal_position, column_name, data_type, is_nullable,
                      column_default
               FROM information_schema.columns WHERE table_schema = $1
               ORDER BY table_name, ordinal_position""",
            schema,
        )
        constraints = await conn.fetch(
            """SELECT t.relname, c.contype::text, pg_get_constraintdef(c.oid) AS definition
               FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
               JOIN pg_namespace n ON n.oid = t.relnamespace
               WHERE n.nspname = $1 ORDER BY 1, 2, 3""",
            schema,
        )
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY 1",
            schema,
        )
    finally:
        await conn.close()

    def kept(table: str) -> bool:
        return only is None or table in only

    return {
        "columns": [tuple(row) for row in columns if kept(row[0])],
        # constraint names are generated from the table: the same either way
        "constraints": [tuple(row) for row in constraints if kept(row[0])],
        "indexes": [
            (name, definition.replace(f"{schema}.", ""))
            for name, definition in indexes
            if kept(re.sub(r".* ON (?:\w+\.)?(\w+) .*", r"\1", definition))
        ],
    }


async def make_postgres(schema: str, statements: tuple[str, ...]) -> None:
    conn = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": schema})
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def two_schemas() -> AsyncIterator[tuple[str, str]]:
    schemas = (postgres_schema(), postgres_schema())
    try:
        yield schemas
    finally:
        for schema in schemas:
            await drop_schema(schema)


# --- SQLite -----------------------------------------------------------------------------------


async def test_sqlite_renders_the_tables_the_handwritten_ddl_made(tmp_path: Path) -> None:
    make_sqlite(tmp_path / "before.db", TODAY_SQLITE)
    async with open_store(f"sqlite:///{tmp_path / 'now.db'}"):
        pass

    before = sqlite_catalog(tmp_path / "before.db")
    now = sqlite_catalog(tmp_path / "now.db", FIRST)

    assert [o[1] for o in now["objects"] if o[0] == "table"] == [
        "relay_commands",
        "relay_coupon_spend",
        "relay_effects",
        "relay_renewals",
    ]
    assert now == before  # the CREATE text (layout aside), every column and every index
    every = sqlite_catalog(tmp_path / "now.db")
    assert {o[1] for o in every["objects"] if o[0] == "table"} == ALL_TABLES


async def test_a_sqlite_file_made_by_the_handwritten_ddl_opens_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "before.db"
    make_sqlite(path, TODAY_SQLITE)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO relay_commands (command_id, type, status, event, created_at, updated_at,"
        " finished_at, published_at) VALUES ('old', 'renew', 'finished', x'6f6b',"
        " '2026-01-01T00:00:00.000000+00:00', '2026-01-01T00:00:00.000000+00:00',"
        " '2026-01-01T00:00:00.000000+00:00', '2026-01-01T00:00:00.000000+00:00')"
    )
    conn.commit()
    conn.close()
    before = sqlite_catalog(path)

    async with open_store(f"sqlite:///{path}", clock=FakeClock()) as store:
        old = await store.claim("old", "renew", owner="a", lease=LEASE)
        new = await store.claim("new", "renew", owner="a", lease=LEASE, fingerprint="f")

    assert (old.outcome, old.record.event) == (ClaimOutcome.FINISHED, b"ok")
    assert (new.outcome, new.record.fingerprint) == (ClaimOutcome.CLAIMED, "f")
    assert sqlite_catalog(path, FIRST) == before  # upgraded in place: its tables as they were
    conn = sqlite3.connect(path)
    try:
        versions = dict(conn.execute("SELECT component, version FROM relay_schema").fetchall())
    finally:
        conn.close()
    assert versions == {"store": STORE.latest}


async def test_a_sqlite_table_of_the_first_release_gets_the_added_columns_in_order(
    tmp_path: Path,
) -> None:
    first = tuple(
        re.sub(
            r"^\s*(fingerprint|requested_by|partner_id|customer_id|body)\s+\w+,\n",
            "",
            s,
            flags=re.M,
        )
        for s in TODAY_SQLITE
    )
    assert "fingerprint" not in first[0]
    make_sqlite(tmp_path / "first.db", first)
    for name, kind in TODAY_SQLITE_ADDED:  # what the release before did to such a file
        make_sqlite(
            tmp_path / "first.db", (f"ALTER TABLE relay_commands ADD COLUMN {name} {kind}",)
        )
    make_sqlite(tmp_path / "first-now.db", first)

    async with open_store(f"sqlite:///{tmp_path / 'first-now.db'}"):
        pass

    then = sqlite_catalog(tmp_path / "first.db")
    now = sqlite_catalog(tmp_path / "first-now.db", FIRST)
    assert now == then


def test_an_added_column_must_be_nullable() -> None:
    with pytest.raises(ValueError, match="nullable"):
        Table(
            "t",
            (
                Column("k", Kind.TEXT, not_null=True),
                Column("v", Kind.INT, not_null=True, added=True),
            ),
            ("k",),
        )

    assert add_column(TABLES[0], TABLES[0].columns[-1], SQLITE) == (
        "ALTER TABLE relay_commands ADD COLUMN body BLOB"
    )


# --- PostgreSQL -------------------------------------------------------------------------------


async def test_postgres_renders_the_tables_the_handwritten_ddl_made(
    two_schemas: tuple[str, str],
) -> None:
    before, now = two_schemas
    await make_postgres(before, TODAY_POSTGRES)
    async with open_store(f"{POSTGRES_URL}?schema={now}"):
        pass

    then_catalog, now_catalog = await postgres_catalog(before), await postgres_catalog(now, FIRST)

    assert {row[0] for row in now_catalog["columns"]} == {t.name for t in TABLES}
    assert now_catalog == then_catalog
    every = await postgres_catalog(now)
    assert {row[0] for row in every["columns"]} == ALL_TABLES


async def test_a_postgres_schema_made_by_the_handwritten_ddl_opens_as_it_was(
    two_schemas: tuple[str, str],
) -> None:
    schema, _ = two_schemas
    await make_postgres(schema, TODAY_POSTGRES)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(
            f"INSERT INTO {schema}.relay_commands (command_id, type, status, event, created_at,"
            " updated_at, finished_at, published_at) VALUES ('old', 'renew', 'finished', 'ok',"
            " now(), now(), now(), now())"
        )
    finally:
        await conn.close()
    before = await postgres_catalog(schema)

    async with open_store(f"{POSTGRES_URL}?schema={schema}", clock=FakeClock()) as store:
        old = await store.claim("old", "renew", owner="a", lease=LEASE)
        new = await store.claim("new", "renew", owner="a", lease=LEASE, fingerprint="f")

    assert (old.outcome, old.record.event) == (ClaimOutcome.FINISHED, b"ok")
    assert (new.outcome, new.record.fingerprint) == (ClaimOutcome.CLAIMED, "f")
    assert await postgres_catalog(schema, FIRST) == before  # upgraded in place, rows kept
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        versions = await conn.fetch(f"SELECT component, version FROM {schema}.relay_schema")
    finally:
        await conn.close()
    assert {row["component"]: row["version"] for row in versions} == {"store": STORE.latest}


async def test_a_store_at_schema_step_2_upgrades_in_place_with_its_lines_kept(
    two_schemas: tuple[str, str],
) -> None:
    """Step 3 (the deferred estimate) adds what each line had settled and each waiting call's
    customer and place. A deployment at step 2 keeps its rows; a line from before counts as
    settled what it had pulled."""
    schema, _ = two_schemas
    url = f"{POSTGRES_URL}?schema={schema}"
    async with open_store(url):
        pass
    conn = await asyncpg.connect(POSTGRES_URL)
    try:  # back to step 2: the columns step 3 added are not there yet
        await conn.execute(
            f"""ALTER TABLE {schema}.relay_lines DROP COLUMN settled;
                ALTER TABLE {schema}.relay_waiting DROP COLUMN customer,
                                                   DROP COLUMN queued_at;
                UPDATE {schema}.relay_schema SET version = 2 WHERE component = 'store';
                INSERT INTO {schema}.relay_lines (api, customer, priority, queue, parked, pulled,
                                                  updated_at)
                VALUES ('renewal_resources', 'c-1', 'normal', 'q', 10, 4, now())"""
        )
    finally:
        await conn.close()

    async with open_store(url) as store:
        [line] = await store.steering.lines()
        assert (line["parked"], line["pulled"], line["settled"]) == (10, 4, 4)
        await store.steering.publish(
            Publication(
                "r-1", "egress", datetime.now(UTC), datetime.now(UTC),
                lines=[LineDelta("renewal_resources", "c-1", "normal", "q", 1, 1, None, 2)],
            )
        )  # fmt: skip
        [line] = await store.steering.lines()
        assert (line["parked"], line["pulled"], line["settled"]) == (11, 5, 6)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        versions = await conn.fetch(f"SELECT component, version FROM {schema}.relay_schema")
    finally:
        await conn.close()
    assert {row["component"]: row["version"] for row in versions} == {"store": STORE.latest}


# --- both -------------------------------------------------------------------------------------

# How each backend's catalog names the types of one neutral kind.
SAME_TYPE = {
    ("REAL", "double precision"),
    ("TEXT", "text"),
    ("INTEGER", "integer"),
    ("INTEGER", "bigint"),
    ("INTEGER", "boolean"),
    ("TEXT", "timestamp with time zone"),
    ("BLOB", "bytea"),
}


async def test_both_backends_make_the_same_tables(
    tmp_path: Path, two_schemas: tuple[str, str]
) -> None:
    schema, _ = two_schemas
    async with open_store(f"sqlite:///{tmp_path / 'now.db'}"):
        pass
    async with open_store(f"{POSTGRES_URL}?schema={schema}"):
        pass
    lite, pg = sqlite_catalog(tmp_path / "now.db"), await postgres_catalog(schema)

    lite_columns = {
        (table, name, kind, bool(notnull) or pk > 0, "0" if default is None else default)
        for table, rows in lite["columns"].items()
        for _, name, kind, notnull, default, pk, _ in rows
    }
    pg_columns = {
        (table, name, kind, nullable == "NO", {"false": "0", None: "0"}.get(default, default))
        for table, _, name, kind, nullable, default in pg["columns"]
    }
    assert {c[:2] for c in lite_columns} == {c[:2] for c in pg_columns}
    pairs = {(a, b) for a in lite_columns for b in pg_columns if a[:2] == b[:2]}
    assert {(a[2], b[2]) for a, b in pairs} <= SAME_TYPE
    assert all(a[3:] == b[3:] for a, b in pairs)  # NOT NULL and DEFAULT alike

    lite_checks = {
        name: sql.count("CHECK(") for kind, name, _, sql in lite["objects"] if kind == "table"
    }
    pg_checks = dict.fromkeys(ALL_TABLES, 0)
    for table, kind, _ in pg["constraints"]:
        pg_checks[table] += kind == "c"
    assert (
        lite_checks
        == pg_checks
        == {
            "relay_commands": 4,
            "relay_effects": 0,
            "relay_renewals": 0,
            "relay_coupon_spend": 1,
            "relay_schema": 0,
            "relay_limits": 2,
            "relay_pauses": 0,
            "relay_audit": 0,
            "relay_replicas": 0,
            "relay_waiting": 1,
            "relay_bucket_reports": 1,
            "relay_lines": 0,
            "relay_dead_letters": 0,
        }
    )

    # name -> (table, columns, partial or not); PostgreSQL rewrites conditions with casts
    def shape(sql: str) -> tuple[str, ...]:
        found = re.search(r"ON (\w+) ?(?:USING btree )?\(([^)]*)\) ?(WHERE)?", sql)
        assert found is not None, sql
        table, columns, where = found.groups()
        return table, columns.replace(" ", ""), str(where is not None)

    lite_indexes = {
        name: shape(sql) for kind, name, _, sql in lite["objects"] if kind == "index" and sql
    }
    pg_indexes = {
        name: shape(definition) for name, definition in pg["indexes"] if not name.endswith("_pkey")
    }
    assert lite_indexes == pg_indexes
    assert pg_indexes.keys() == {
        "relay_commands_finished_at",
        "relay_commands_money_created_at",
        "relay_coupon_spend_partner",
        "relay_coupon_spend_customer",
        "relay_audit_at",
        "relay_audit_command",
        "relay_audit_customer",
        "relay_waiting_bucket",
    }
