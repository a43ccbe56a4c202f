"""One thread that owns an SQLite connection and runs operations for the event loop in batches.

The event loop never touches the connection: it queues an *operation* (a function of the
connection) and awaits a future. The thread takes every operation waiting in the queue, runs
them in order inside one ``BEGIN IMMEDIATE … COMMIT``, then settles all their futures with one
``call_soon_threadsafe``. Under load that is one thread hand-off, one loop wake-up and one
commit (one WAL append, one fsync when asked for) for many commands, where a connection per
call (aiosqlite, say) pays each of those per statement. A single operation waits for no batch: the
thread runs what is queued the moment it is free, so at light load a batch is one operation.

What an operation sees and guarantees is what it would alone in autocommit mode:

* operations run one at a time, in the order they were queued, each seeing the effects of
  the ones before it;
* a future is settled only after the batch committed: a result handed to the caller is
  durable to the batch's ``synchronous`` level. If any operation asks for ``durable`` the
  whole batch commits with ``synchronous=FULL`` (an fsync of the WAL), else ``NORMAL``;
* an operation that raises fails alone: a failing statement is undone by SQLite (statement
  atomicity) and the others commit. Only when SQLite itself ends the transaction (I/O error,
  disk full) or the commit fails does every operation of the batch get that error, and then
  none of them took effect.

A batch holds the file's write lock from ``BEGIN IMMEDIATE`` to its commit, so another
process on the same file (a replica taking over after a crash) waits up to the busy timeout,
exactly as it would for a single statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

__all__ = ["MAX_BATCH", "SqliteWriter"]

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]

MAX_BATCH: Final = 512  # operations per transaction; bounds how long the write lock is held
_STOP: Final = object()


@dataclass(slots=True)
class _Queued(Generic[T]):
    run: Operation[T]
    future: asyncio.Future[T]
    durable: bool


_Outcome = tuple[_Queued[Any], Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: hand each operation's result or error to its caller."""
    for queued, value, error in outcomes:
        if queued.future.done():  # the caller was cancelled; the operation ran regardless
            continue
        if error is None:
            queued.future.set_result(value)
        else:
            queued.future.set_exception(error)


class SqliteWriter:
    """Start with :meth:`open` (which connects and runs ``prepare`` in the thread), stop with
    :meth:`close` (which runs what is queued, then closes the connection)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[_Queued[Any] | object] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.batches = 0  # transactions run so far, and the operations in them
        self.operations = 0

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    async def open(self, prepare: Callable[[sqlite3.Connection], None]) -> None:
        if self._thread is not None:
            raise RuntimeError("writer is already open")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        stopped: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._main, args=(loop, prepare, ready, stopped), name="sqlite-writer"
        )
        thread.daemon = True  # a store left open must not keep the interpreter alive
        thread.start()
        try:
            await asyncio.shield(ready)
        except BaseException:
            await asyncio.shield(stopped)  # a failed connect or prepare ends the thread
            raise
        self._loop, self._thread, self._stopped = loop, thread, stopped

    async def close(self) -> None:
        stopped, self._stopped = self._stopped, None
        if stopped is None:
            return
        self._thread = None
        self._queue.put(_STOP)
        await asyncio.shield(stopped)

    async def run(self, operation: Operation[T], *, durable: bool = False) -> T:
        """Run ``operation(connection)`` in the next batch; its result once committed."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("store is not open: use 'async with'")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Queued(operation, future, durable))
        return await future

    # --- the thread -------------------------------------------------------------------

    def _main(
        self,
        loop: asyncio.AbstractEventLoop,
        prepare: Callable[[sqlite3.Connection], None],
        ready: asyncio.Future[None],
        stopped: asyncio.Future[None],
    ) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            prepare(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to open(), which raises it
            if conn is not None:
                conn.close()
            _call_soon(loop, _fail_future, ready, exc)
            _call_soon(loop, _finish_future, stopped)
            return
        _call_soon(loop, _finish_future, ready)
        try:
            self._serve(loop, conn)
        finally:
            conn.close()
            _call_soon(loop, _finish_future, stopped)

    def _serve(self, loop: asyncio.AbstractEventLoop, conn: sqlite3.Connection) -> None:
        while True:
            item = self._queue.get()
            batch: list[_Queued[Any]] = []
            stopping = False
            while True:
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Queued)
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                outcomes = _run_batch(conn, batch)
                self.batches += 1
                self.operations += len(batch)
                _call_soon(loop, _settle, outcomes)
            if stopping:
                return


def _run_batch(conn: sqlite3.Connection, batch: list[_Queued[Any]]) -> list[_Outcome]:
    durable = any(queued.durable for queued in batch)
    try:
        if durable:
            conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        _restore(conn, durable)
        return [(queued, None, exc) for queued in batch]
    outcomes: list[_Outcome] = []
    for queued in batch:
        try:
            outcomes.append((queued, queued.run(conn), None))
        except Exception as exc:  # noqa: BLE001 - handed to its caller; the batch goes on
            outcomes.append((queued, None, exc))
        if not conn.in_transaction:  # rolled back (by SQLite on an I/O error, say): all lost
            error = outcomes[-1][2] or sqlite3.OperationalError("the transaction was ended")
            _restore(conn, durable)
            return [(q, None, error) for q in batch]
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        outcomes = [(queued, None, exc) for queued in batch]
    _restore(conn, durable)
    return outcomes


def _restore(conn: sqlite3.Connection, durable: bool) -> None:
    if durable:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA synchronous = NORMAL")


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(callback, *args)


def _finish_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail_future(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
