"""The SQLite writer thread: group commit with the meaning of one autocommit call per operation."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from service.store.sqlite_writer import SqliteWriter


def _prepare(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")


def _writer(path: Path) -> SqliteWriter:
    return SqliteWriter(lambda: sqlite3.connect(path, isolation_level=None))


def _insert(k: str, v: int = 0) -> Callable[[sqlite3.Connection], int]:
    return lambda conn: conn.execute("INSERT INTO t VALUES (?, ?)", (k, v)).rowcount


def _committed(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as other:  # another connection sees only committed rows
        return dict(other.execute("SELECT k, v FROM t"))


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[SqliteWriter]:
    w = _writer(tmp_path / "w.db")
    await w.open(_prepare)
    yield w
    await w.close()


async def test_concurrent_operations_share_transactions_and_keep_their_order(
    writer: SqliteWriter, tmp_path: Path
) -> None:
    def bump(k: str) -> Callable[[sqlite3.Connection], int]:
        return lambda conn: int(
            conn.execute("UPDATE t SET v = v + 1 WHERE k = ? RETURNING v", (k,)).fetchone()[0]
        )

    await writer.run(_insert("n"))
    values = await asyncio.gather(*(writer.run(bump("n")) for _ in range(300)))
    # each saw the one before it, in the order queued
    assert values == list(range(1, 301))
    assert _committed(tmp_path / "w.db") == {"n": 300}
    assert writer.operations == 301
    assert writer.batches < 300  # queued together, committed together


async def test_a_failing_operation_fails_alone(writer: SqliteWriter, tmp_path: Path) -> None:
    await writer.run(_insert("dup"))
    results = await asyncio.gather(
        writer.run(_insert("a")),
        writer.run(_insert("dup")),  # primary key conflict
        writer.run(_insert("b")),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert results[2] == 1
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert _committed(tmp_path / "w.db") == {"dup": 0, "a": 0, "b": 0}


async def test_a_lost_transaction_fails_every_operation_of_the_batch(
    writer: SqliteWriter, tmp_path: Path
) -> None:
    def ends_the_transaction(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")

    # keep the thread busy so that the next three operations form one batch
    first = asyncio.ensure_future(writer.run(lambda conn: time.sleep(0.2)))
    await asyncio.sleep(0.05)
    results = await asyncio.gather(
        writer.run(_insert("x")),
        writer.run(ends_the_transaction),
        writer.run(_insert("y")),
        return_exceptions=True,
    )
    await first
    assert all(isinstance(r, sqlite3.Error) for r in results), results
    assert _committed(tmp_path / "w.db") == {}  # none of them took effect
    assert await writer.run(_insert("z")) == 1  # and the writer goes on


async def test_a_durable_operation_commits_its_batch_with_full_sync(writer: SqliteWriter) -> None:
    def level(conn: sqlite3.Connection) -> int:
        value: int = conn.execute("PRAGMA synchronous").fetchone()[0]
        return value

    assert await writer.run(level, durable=True) == 2  # FULL
    assert await writer.run(level) == 1  # back to NORMAL


async def test_close_runs_what_is_queued_then_refuses_more(tmp_path: Path) -> None:
    w = _writer(tmp_path / "w.db")
    await w.open(_prepare)
    pending = [asyncio.ensure_future(w.run(_insert(f"k{n}"))) for n in range(50)]
    await asyncio.sleep(0)  # queued before the close
    await w.close()
    assert [await p for p in pending] == [1] * 50
    assert len(_committed(tmp_path / "w.db")) == 50
    with pytest.raises(RuntimeError, match="not open"):
        await w.run(_insert("late"))


async def test_a_failed_open_raises_and_leaves_no_thread(tmp_path: Path) -> None:
    w = _writer(tmp_path / "missing-dir" / "w.db")
    with pytest.raises(sqlite3.OperationalError):
        await w.open(_prepare)
    assert not w.is_open
