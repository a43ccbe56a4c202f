"""SQL written once, run on either backend: named parameters, one transaction per call.

The steering tables (``service.store.steering``) are plain rows that both backends keep alike,
so their statements are written once, with ``:name`` parameters, and a :class:`Runner` runs
them: :class:`SqliteRunner` on the store's writer thread (one batch, one commit),
:class:`PostgresRunner` on the store's pool (one transaction, ``$n`` parameters).

``:now`` is the deployment's clock: the database server's ``statement_timestamp()`` on
PostgreSQL (replicas compare each other's rows by one clock), the store's clock on SQLite (one
host). Timestamps travel as aware datetimes both ways; SQLite keeps them as fixed-width UTC
ISO-8601 text, converted here, so callers never see the difference.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from service.store.sqlite_writer import SqliteWriter

__all__ = ["PostgresRunner", "Row", "Runner", "SqliteRunner", "Statement"]

Row = dict[str, Any]
Params = Mapping[str, Any]
_NAME = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement, run once with ``params``, or once per row of ``many``."""

    sql: str
    params: Params = field(default_factory=dict)
    many: Sequence[Params] | None = None


class Runner(Protocol):
    async def run(self, statements: Sequence[Statement]) -> None:
        """Every statement, in order, in one transaction."""
        ...

    async def fetch(self, sql: str, params: Params | None = None) -> list[Row]: ...


def _to_sqlite(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def _from_sqlite(value: Any) -> Any:
    if isinstance(value, str) and _ISO.match(value):
        return datetime.fromisoformat(value)
    return value


class SqliteRunner:
    def __init__(self, writer: SqliteWriter, clock: Callable[[], datetime]) -> None:
        self._writer = writer
        self._clock = clock

    def _bind(self, params: Params | None) -> dict[str, Any]:
        bound = {name: _to_sqlite(value) for name, value in (params or {}).items()}
        bound["now"] = _to_sqlite(self._clock())
        return bound

    async def run(self, statements: Sequence[Statement]) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            for statement in statements:
                if statement.many is None:
                    conn.execute(statement.sql, self._bind(statement.params))
                else:
                    conn.executemany(statement.sql, [self._bind(p) for p in statement.many])

        await self._writer.run(apply)

    async def fetch(self, sql: str, params: Params | None = None) -> list[Row]:
        def read(conn: sqlite3.Connection) -> list[Row]:
            cursor = conn.execute(sql, self._bind(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, map(_from_sqlite, row), strict=True)) for row in cursor]

        return await self._writer.run(read)


class PostgresRunner:
    def __init__(self, pool: Any, *, timeout_s: float = 10.0) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._compiled: dict[str, tuple[str, tuple[str, ...]]] = {}

    def _compile(self, sql: str) -> tuple[str, tuple[str, ...]]:
        """``:name`` to ``$n`` (``:now`` to the server's clock), once per statement text."""
        found = self._compiled.get(sql)
        if found is None:
            names: list[str] = []

            def number(match: re.Match[str]) -> str:
                name = match.group(1)
                if name == "now":
                    return "statement_timestamp()"
                if name not in names:
                    names.append(name)
                return f"${names.index(name) + 1}"

            found = self._compiled[sql] = (_NAME.sub(number, sql), tuple(names))
        return found

    def _args(self, names: tuple[str, ...], params: Params | None) -> list[Any]:
        params = params or {}
        return [params[name] for name in names]

    async def run(self, statements: Sequence[Statement]) -> None:
        async with self._pool.acquire(timeout=self._timeout_s) as conn, conn.transaction():
            for statement in statements:
                sql, names = self._compile(statement.sql)
                if statement.many is None:
                    await conn.execute(sql, *self._args(names, statement.params))
                elif statement.many:
                    rows = [self._args(names, p) for p in statement.many]
                    await conn.executemany(sql, rows)

    async def fetch(self, sql: str, params: Params | None = None) -> list[Row]:
        compiled, names = self._compile(sql)
        rows = await self._pool.fetch(compiled, *self._args(names, params), timeout=self._timeout_s)
        return [dict(row) for row in rows]
