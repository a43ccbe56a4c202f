"""Schema versions: what a store's database holds, numbered per component, and how it gets there.

A *component* is a numbered list of steps plus, on PostgreSQL, *routines* (functions):

* the store's own component, ``store``: step 1 the command tables (``schema.TABLES``, which
  every database made before versioning already has), step 2 the steering tables
  (``schema.STEERING_TABLES``: live limits, pauses, the audit trail, what replicas publish),
  step 3 the parking lines' ``settled`` count and each waiting call's customer;
* components handed in by whoever opens the store (``open_store(url, components=…)``): the
  shared pacing buckets (``service.pacing``) bring their table and functions this way, so the
  store runs their upgrades without knowing what they are.

``relay_schema`` records, per component, the last step applied and a checksum of the routines
installed. Opening a store applies, in one transaction under an advisory lock (replicas may
start together), every step above the recorded one, in order, then re-installs the routines
when their text changed. Steps are written to run on a database in any earlier state:
``CREATE … IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``, and data conversions in the step's
own SQL. A database made before versioning (no ``relay_schema``) is at step 0: step 1 finds
its tables and adds only what is missing, with every row kept. A database *newer* than this
code (a step recorded that this code does not know) is refused: an older replica must not
run against tables it does not understand.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.store.schema import (
    SQLITE,
    STEERING_TABLES,
    TABLES,
    Table,
    add_column,
    create_indexes,
    create_table,
    postgres_ddl,
)

__all__ = ["STORE", "Component", "SchemaTooNew", "Step", "upgrade_postgres", "upgrade_sqlite"]

_VERSIONS_DDL = """
    CREATE TABLE IF NOT EXISTS relay_schema (
        component TEXT PRIMARY KEY,
        version   INTEGER NOT NULL,
        checksum  TEXT
    )
"""


class SchemaTooNew(RuntimeError):
    """The database was upgraded by a newer release than this one."""


@dataclass(frozen=True, slots=True)
class Step:
    version: int
    name: str
    tables: tuple[Table, ...] = ()  # created or brought up to date, on every backend
    postgres: str = ""  # then this SQL, on PostgreSQL only (a .sql file's text)


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    steps: tuple[Step, ...]
    routines: str = ""  # PostgreSQL functions: CREATE OR REPLACE, re-run when the text changes

    def __post_init__(self) -> None:
        numbers = [step.version for step in self.steps]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{self.name}: steps must be numbered 1, 2, … in order")

    @property
    def latest(self) -> int:
        return len(self.steps)

    @property
    def checksum(self) -> str | None:
        if not self.routines:
            return None
        return hashlib.sha256(self.routines.encode()).hexdigest()

    def pending(self, recorded: int) -> tuple[Step, ...]:
        if recorded > self.latest:
            raise SchemaTooNew(
                f"the store's {self.name!r} schema is at version {recorded}; this release "
                f"knows up to {self.latest}: upgrade bss-relay"
            )
        return self.steps[recorded:]


STORE = Component(
    "store",
    (
        Step(1, "commands", TABLES),
        Step(2, "steering", STEERING_TABLES),
        # the deferred estimate: what was settled of what was pulled from each line, and the
        # customer each waiting call is for
        Step(
            3,
            "deferred-estimate",
            tuple(t for t in STEERING_TABLES if t.name in ("relay_lines", "relay_waiting")),
        ),
    ),
)


# -- PostgreSQL -------------------------------------------------------------------------------


async def upgrade_postgres(conn: Any, components: Sequence[Component]) -> None:
    """Bring every component up to date on ``conn`` (asyncpg), inside the caller's transaction
    and advisory lock."""
    await conn.execute(_VERSIONS_DDL)
    rows = await conn.fetch("SELECT component, version, checksum FROM relay_schema")
    recorded = {row["component"]: (row["version"], row["checksum"]) for row in rows}
    for component in components:
        version, checksum = recorded.get(component.name, (0, None))
        for step in component.pending(version):
            for statement in postgres_ddl(step.tables):
                await conn.execute(statement)
            if step.postgres:
                await conn.execute(step.postgres)
        if component.routines and checksum != component.checksum:
            await conn.execute(component.routines)
        await conn.execute(
            """INSERT INTO relay_schema (component, version, checksum) VALUES ($1, $2, $3)
               ON CONFLICT (component) DO UPDATE SET version = $2, checksum = $3""",
            component.name,
            component.latest,
            component.checksum,
        )


# -- SQLite -----------------------------------------------------------------------------------


def _sqlite_tables(conn: sqlite3.Connection, tables: tuple[Table, ...]) -> None:
    for table in tables:
        conn.execute(create_table(table, SQLITE))
        if table.added_columns:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table.name})")}
            for column in table.added_columns:
                if column.name not in present:
                    conn.execute(add_column(table, column, SQLITE))
        for statement in create_indexes(table):
            conn.execute(statement)


def upgrade_sqlite(conn: sqlite3.Connection, components: Sequence[Component]) -> None:
    """Bring every component's tables up to date (SQLite has no routines: the in-process
    pacing keeps its buckets in memory), in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_VERSIONS_DDL)
        recorded = dict(conn.execute("SELECT component, version FROM relay_schema").fetchall())
        for component in components:
            for step in component.pending(recorded.get(component.name, 0)):
                _sqlite_tables(conn, step.tables)
            conn.execute(
                """INSERT INTO relay_schema (component, version, checksum) VALUES (?, ?, NULL)
                   ON CONFLICT (component) DO UPDATE SET version = excluded.version""",
                (component.name, component.latest),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
