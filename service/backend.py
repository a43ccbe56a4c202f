"""One backend from ``STORE_URL``: the store and everything that lives beside it.

A replica's shared state comes from one place, and this module is the only one that asks which
kind it is:

==============  ==================================  =========================================
part            SQLite (one process per file)       PostgreSQL (every replica of a deployment)
==============  ==================================  =========================================
``store``       ``SqliteCommandStore``              ``PostgresCommandStore``
``buckets``     ``LocalBuckets`` (in process)       ``PostgresBuckets`` (``relay_pacing`` rows,
                                                    the functions of ``pacing/postgres.sql``)
``locks``       ``LocalLocks`` (``asyncio``)        ``PostgresLocks`` (advisory locks and the
                                                    replica's liveness lock, on a connection
                                                    of their own that the server ends when it
                                                    is silent for a lease)
``health``      None (the file is the process's)    ``StoreHealth`` (pings, for ``/healthz``)
==============  ==================================  =========================================

``open_backend`` opens them in that order and closes them in reverse; the store brings the
pacing buckets' table and functions up to date (``service.pacing.postgres.PACING``, a schema
component) as it opens. Shared buckets start with a wider guard (``SHARED_GUARD_MIN_S``): a
slot is on the database's clock and the request leaves after its answer comes back, so the
store round trip's jitter adds to the path's. The runtime builds the dispatcher and the API
client on ``Backend.buckets``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from service.pacing.buckets import Buckets
from service.pacing.local import LocalBuckets
from service.pacing.postgres import PACING, PostgresBuckets
from service.settings import StoreSettings
from service.store import PostgresCommandStore, open_store
from service.store.health import StoreHealth
from service.store.locks import LocalLocks, PostgresLocks, RenewalLocks
from service.store.types import CommandStore

__all__ = ["SHARED_GUARD_MIN_S", "Backend", "open_backend"]

# On the 2-core test machine 10 ms still let an e2e run (relay, sandbox and store client in one
# event loop) keep every window; 30 ms (the guard of an early release) was more than needed.
SHARED_GUARD_MIN_S = 0.010
NEARLY_DUE_S = 0.02  # a shared slot is asked for when it is at most this far away


@dataclass(frozen=True, slots=True)
class Backend:
    """What ``STORE_URL`` gives a replica (see the module's table)."""

    store: CommandStore
    buckets: Buckets
    locks: RenewalLocks
    health: StoreHealth | None = None  # None: nothing to watch (an SQLite file)
    guard_min_s: float = 0.0  # the least guard pacing may start with on these buckets
    ahead_s: float = 0.0  # how far ahead of a slot to ask for it (a round trip on shared rows)


@asynccontextmanager
async def open_backend(store: StoreSettings, *, owner: str) -> AsyncIterator[Backend]:
    """Open the store ``store.url`` names and its buckets, locks and health probe.
    ``owner``: this process's id (its liveness lock on PostgreSQL)."""
    async with open_store(store.url, components=(PACING,)) as opened:
        if isinstance(opened, PostgresCommandStore):  # the one choice by kind of store
            parts = _shared(opened, store, owner)
        else:
            parts = _local(opened)
        async with parts as backend:
            yield backend


@asynccontextmanager
async def _shared(
    opened: PostgresCommandStore, store: StoreSettings, owner: str
) -> AsyncIterator[Backend]:
    """Every replica on the database shares the buckets' rows; the locks' connection also
    says this process is alive."""
    buckets = PostgresBuckets(opened.pool)
    await buckets.start()
    locks = PostgresLocks(
        opened.connect,
        namespace=f"{opened.schema or 'public'}:renew",
        owner=owner,
        idle_s=store.lease.total_seconds(),
    )
    async with locks:
        health = StoreHealth(opened.ping)
        yield Backend(opened, buckets, locks, health, SHARED_GUARD_MIN_S, NEARLY_DUE_S)


@asynccontextmanager
async def _local(opened: CommandStore) -> AsyncIterator[Backend]:
    """One process per SQLite file: buckets and locks in memory."""
    yield Backend(opened, LocalBuckets(), LocalLocks())
