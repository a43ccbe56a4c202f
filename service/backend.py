"""One backend from ``STORE_URL``: the store and everything that lives beside it.

A replica's shared state comes from one place, and this module is the only one that asks which
kind it is:

==============  ==================================  =========================================
part            SQLite (one process per file)       PostgreSQL (every replica of a deployment)
==============  ==================================  =========================================
``store``       ``SqliteCommandStore``              ``PostgresCommandStore``
``buckets``     ``RateLimiter`` (in process)        ``SharedBuckets`` (rows of the store)
``locks``       ``LocalLocks`` (``asyncio``)        ``PostgresLocks`` (advisory locks and the
                                                    replica's liveness lock, on a connection
                                                    of their own that the server ends when it
                                                    is silent for a lease)
``health``      None (the file is the process's)    ``StoreHealth`` (pings, for ``/healthz``)
==============  ==================================  =========================================

``open_backend`` opens them in that order and closes them in reverse. The buckets start from
the published limits table (``service.api.operations.PUBLISHED_LIMITS``) with
``RELAY_RATE_LIMITS`` over it; the runtime builds the fair scheduler and the API client on
``Backend.buckets``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from service.api.operations import PUBLISHED_LIMITS
from service.pacing.limiter import Limiter, RateLimiter
from service.pacing.shared import SharedBuckets
from service.settings import PacingSettings, StoreSettings
from service.store import PostgresCommandStore, open_store
from service.store.health import StoreHealth
from service.store.locks import LocalLocks, PostgresLocks, RenewalLocks
from service.store.types import CommandStore

__all__ = ["Backend", "open_backend"]


@dataclass(frozen=True, slots=True)
class Backend:
    """What ``STORE_URL`` gives a replica (see the module's table)."""

    store: CommandStore
    buckets: Limiter
    locks: RenewalLocks
    health: StoreHealth | None = None  # None: nothing to watch (an SQLite file)


@asynccontextmanager
async def open_backend(
    store: StoreSettings, pacing: PacingSettings, *, owner: str
) -> AsyncIterator[Backend]:
    """Open the store ``store.url`` names and its buckets, locks and health probe.
    ``owner``: this process's id (its liveness lock on PostgreSQL)."""
    async with open_store(store.url) as opened:
        if isinstance(opened, PostgresCommandStore):  # the one choice by kind of store
            parts = _shared(opened, store, pacing, owner)
        else:
            parts = _local(opened, pacing)
        async with parts as backend:
            yield backend


def _buckets_options(pacing: PacingSettings) -> dict[str, Any]:
    return {
        "published": PUBLISHED_LIMITS,
        "egress": pacing.egress,
        "guard_s": pacing.guard_s,
        "guard_max_s": pacing.guard_max_s,
    }


@asynccontextmanager
async def _shared(
    opened: PostgresCommandStore, store: StoreSettings, pacing: PacingSettings, owner: str
) -> AsyncIterator[Backend]:
    """Every replica on the database shares the buckets' rows; the locks' connection also
    says this process is alive."""
    buckets = SharedBuckets(opened.pool, pacing.rate_limits, **_buckets_options(pacing))
    locks = PostgresLocks(
        opened.connect,
        namespace=f"{opened.schema or 'public'}:renew",
        owner=owner,
        idle_s=store.lease.total_seconds(),
    )
    async with buckets, locks:
        yield Backend(opened, buckets, locks, StoreHealth(opened.ping))


@asynccontextmanager
async def _local(opened: CommandStore, pacing: PacingSettings) -> AsyncIterator[Backend]:
    """One process per SQLite file: buckets and locks in memory."""
    async with RateLimiter(pacing.rate_limits, **_buckets_options(pacing)) as buckets:
        yield Backend(opened, buckets, LocalLocks())
