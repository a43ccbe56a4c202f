"""Per-customer renewal locks (CONTRACT guarantee 7): one renewal of a customer at a time.

    async with locks.hold(customer_id) as held:
        ...
        held.check()  # immediately before a money-moving call: raises if the lock is void
        ...

Two implementations of :class:`RenewalLocks`:

* :class:`LocalLocks` -- one process (SQLite store): an ``asyncio.Lock`` per key, its entry
  dropped as soon as nobody holds or waits for it, so memory follows the keys in use.
* :class:`PostgresLocks` -- every replica sharing a PostgreSQL store: a session-level advisory
  lock per key, on ONE dedicated connection per replica (not pooled: a pooled connection goes
  back to the pool, and a session lock with it, or is reset and drops it). The database frees
  the locks of a session that ends, so a holder that dies (SIGKILL, lost host) frees its locks
  when its connection closes. Advisory locks are re-entrant within a session, so holders of
  one replica first queue on an in-process lock per key; the connection is used with
  ``pg_try_advisory_lock`` (never a blocking ``pg_advisory_lock``, which would occupy the one
  connection while it waits) polled every ``poll_s``.

A holder that is alive but frozen (SIGSTOP, a VM pause, a stalled host) keeps its TCP
connection, so the database would keep its locks until it wakes, and every other replica would
wait for that customer's renewals meanwhile, even for a command it took over once the frozen
one's lease passed. So the connection carries ``idle_session_timeout = idle_s`` (the lease):
the heartbeat keeps a live holder's session busy well within it, and the server ends a
session silent for that long, freeing its locks. The frozen holder, woken, finds its locks void
(and the store refuses its money-moving call anyway: its lease passed too). The setting needs
PostgreSQL 14+; an older server logs ``renewal_lock_idle_timeout_unsupported`` and a frozen
holder keeps its locks until it wakes (safe, but that customer's renewals wait for it).

If the dedicated connection is lost (terminated, server restart, network), every lock it held
is void: another replica may take it at once. Holders learn it: ``held.lost`` is set and
``held.check()`` raises :class:`~handlers.errors.StoreUnavailable`. A heartbeat (``SELECT 1``
every ``heartbeat_s``, with a timeout) notices a silent loss too. The next ``hold`` opens a new
connection; while none can be opened, ``hold`` raises ``StoreUnavailable``.

Keys are 64-bit hashes of (namespace, key); the namespace (the store's schema) keeps separate
deployments sharing one database apart.

The same connection carries the replica's *liveness lock* (namespace ``<schema>:alive``, key:
the process's owner id), held for as long as the connection lives: ``owner_gone`` tells another
replica that a lease holder died, so its commands are taken over at once rather than when
their leases run out (``RELAY_LEASE_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

import asyncpg
import structlog

from handlers.errors import RelayError, store_unavailable
from service.concurrency import KeyedLock

__all__ = ["Held", "LocalLocks", "PostgresLocks", "RenewalLocks", "lock_id"]

log = structlog.get_logger(__name__)

Connect = Callable[[], Awaitable[Any]]  # opens a dedicated asyncpg connection
# What a lost or unusable connection raises (InternalClientError: see service.store.errors).
LOST = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)


@dataclass(slots=True)
class Held:
    """A held lock. ``lost`` is set when it became void while held."""

    key: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def valid(self) -> bool:
        return not self.lost.is_set()

    def check(self) -> None:
        """Raise ``StoreUnavailable`` if the lock is void (call before a money-moving call)."""
        if self.lost.is_set():
            raise store_unavailable(
                f"the renewal lock of {self.key} was lost with its connection",
            )


class RenewalLocks(Protocol):
    def hold(self, key: str) -> contextlib.AbstractAsyncContextManager[Held]:
        """Wait until ``key`` is free everywhere this implementation reaches, then hold it."""
        ...

    async def owner_gone(self, owner: str) -> bool:
        """True when the process ``owner`` (a command's lease holder) is known to be dead,
        so its claims may be taken over before their leases run out."""
        ...


class LocalLocks:
    """One process: an ``asyncio`` lock per key, behind the interface."""

    def __init__(self) -> None:
        self._keyed: KeyedLock[str] = KeyedLock()

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Held]:
        async with self._keyed.hold(key):
            yield Held(key)

    async def owner_gone(self, owner: str) -> bool:
        return False  # one process: nobody else to outlive

    def __len__(self) -> int:
        return len(self._keyed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def lock_id(namespace: str, key: str) -> int:
    """The advisory lock id (a signed 64-bit integer) of ``key`` in ``namespace``."""
    digest = hashlib.blake2b(f"{namespace}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresLocks:
    """Advisory locks on one dedicated connection; ``async with`` owns it (and its heartbeat)."""

    def __init__(
        self,
        connect: Connect,
        *,
        namespace: str = "bss-relay:renew",
        owner: str | None = None,
        poll_s: float = 0.05,
        heartbeat_s: float = 2.0,
        idle_s: float | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        """``idle_s``: the server ends the session after this long without a statement (None:
        never); the heartbeat runs at least three times within it."""
        self._connect = connect
        self._namespace = namespace
        self._owner = owner
        self._alive_ns = namespace.rsplit(":", 1)[0] + ":alive"
        self._poll_s = poll_s
        self._idle_s = idle_s
        self._heartbeat_s = heartbeat_s if idle_s is None else min(heartbeat_s, idle_s / 3)
        self._timeout_s = timeout_s
        self._keyed: KeyedLock[str] = KeyedLock()
        self._conn: Any = None
        self._io = asyncio.Lock()  # one query at a time on the connection
        self._held: dict[str, Held] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._alive = False  # this process's liveness lock is held on ``_conn``

    async def __aenter__(self) -> Self:
        if self._owner is not None:  # say "alive" from the start (the heartbeat retries)
            with contextlib.suppress(RelayError):
                async with self._io:
                    await self._connection()
        self._heartbeat = asyncio.create_task(self._beat())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=self._timeout_s)  # the server frees every lock

    @property
    def connection_pid(self) -> int | None:
        """The server process id of the dedicated connection (for operators and tests)."""
        return None if self._conn is None else int(self._conn.get_server_pid())

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Held]:
        async with self._keyed.hold(key):
            lock = lock_id(self._namespace, key)
            conn = await self._acquire(lock)
            held = self._held[key] = Held(key)
            try:
                yield held
            finally:
                del self._held[key]
                if held.valid and conn is self._conn:
                    await self._release(lock, key)

    async def owner_gone(self, owner: str) -> bool:
        """Whether ``owner``'s liveness lock is free: every replica holds one on its
        dedicated connection, which the database frees when the process dies (SIGKILL, a lost
        host), so a crashed replica's claims are taken over in seconds, not after their
        lease. A frozen replica (SIGSTOP) keeps its connection, hence its lock: its claims
        wait for their lease. Unknown (no connection) counts as alive."""
        if owner == self._owner or self._owner is None:
            return False
        lock = lock_id(self._alive_ns, owner)
        async with self._io:
            try:
                conn = await self._connection()
                free = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", lock, timeout=self._timeout_s
                )
                if free:
                    await conn.fetchval(
                        "SELECT pg_advisory_unlock($1)", lock, timeout=self._timeout_s
                    )
            except RelayError:
                return False
            except LOST as exc:
                self._lose(conn, exc)
                return False
        return bool(free)

    async def _acquire(self, lock: int) -> Any:
        while True:
            async with self._io:
                conn = await self._connection()
                try:
                    got = await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", lock, timeout=self._timeout_s
                    )
                except LOST as exc:
                    self._lose(conn, exc)
                    raise store_unavailable("the renewal lock could not be taken") from exc
            if got:
                return conn
            await asyncio.sleep(self._poll_s)

    async def _release(self, lock: int, key: str) -> None:
        async with self._io:
            conn = self._conn
            if conn is None:
                return
            try:
                await conn.fetchval("SELECT pg_advisory_unlock($1)", lock, timeout=self._timeout_s)
            except LOST as exc:
                # not released: drop the connection, which frees it on the server
                log.warning("renewal_lock_release_failed", key=key, error=repr(exc))
                self._lose(conn, exc)

    async def _connection(self) -> Any:
        """The dedicated connection, opened if there is none (caller holds ``_io``)."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        try:
            conn = await asyncio.wait_for(self._connect(), self._timeout_s)
            if self._idle_s is not None:
                await self._end_when_silent(conn, self._idle_s)
        except LOST as exc:
            raise store_unavailable("no connection to the store for renewal locks") from exc
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self._alive = False
        await self._say_alive(conn)
        return conn

    async def _say_alive(self, conn: Any) -> None:
        """Take this process's liveness lock on ``conn`` (caller holds ``_io``). It may still
        be held by a connection of ours the server has not reaped yet: the heartbeat tries
        again."""
        if self._owner is None or self._alive:
            return
        try:
            self._alive = bool(
                await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)",
                    lock_id(self._alive_ns, self._owner),
                    timeout=self._timeout_s,
                )
            )
        except LOST as exc:
            self._lose(conn, exc)
            raise store_unavailable("no connection to the store for renewal locks") from exc

    async def _end_when_silent(self, conn: Any, idle_s: float) -> None:
        """Have the server end this session after ``idle_s`` without a statement."""
        idle_ms = max(1, round(idle_s * 1000))
        try:
            await conn.execute(f"SET idle_session_timeout = {idle_ms}", timeout=self._timeout_s)
        except asyncpg.UndefinedObjectError:  # before PostgreSQL 14: the locks still work
            log.warning("renewal_lock_idle_timeout_unsupported", server=conn.get_server_version())

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._lose(conn, ConnectionError("connection terminated"))

    def _lose(self, conn: Any, exc: BaseException) -> None:
        """The connection is gone or unusable: every lock on it is void."""
        if conn is not self._conn:
            return
        self._conn = None
        self._alive = False
        if self._held:
            log.error("renewal_locks_lost", held=len(self._held), error=repr(exc))
        for held in self._held.values():
            held.lost.set()
        conn.terminate()  # closes the socket: the server frees whatever it still holds

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            async with self._io:
                conn = self._conn
                if conn is None or (self._owner is not None and not self._alive):
                    if self._owner is not None:  # be seen alive again as soon as possible
                        with contextlib.suppress(RelayError):
                            await self._say_alive(await self._connection())
                    continue
                try:
                    await conn.fetchval("SELECT 1", timeout=self._timeout_s)
                except LOST as exc:
                    self._lose(conn, exc)
