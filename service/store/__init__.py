"""The command store (``STORE_URL``): the idempotency and crash-safety ledger of every command.

Backends, chosen by :func:`open_store` from the URL:

====================================================  =========================================
``sqlite:///relative/path.db``                        SQLite file, relative to the working dir
``sqlite:////absolute/path.db``                       SQLite file, absolute path
``/plain/path.db``, ``relative.db`` (no scheme)       SQLite file
``sqlite://:memory:``                                 SQLite in memory (tests, demos)
``postgresql://user@host:5432/db[?schema=NAME]``      PostgreSQL (``postgres://`` also accepted)
====================================================  =========================================

``?schema=NAME`` (lower-case identifier) makes the PostgreSQL store create schema NAME if
missing and use it as every pooled connection's ``search_path``; other query parameters go to
asyncpg unchanged. Both backends create their tables and indexes idempotently when opened,
from the one definition in :mod:`service.store.schema`.

Semantics both backends keep, on top of the ``CommandStore`` invariants in
:mod:`service.store.types` (the store's interface and values, exported here too):

* **Claim** succeeds iff the command is not finished and no lease on it is live
  (``lease_until <= now`` is expired). It is not re-entrant: an owner claiming a command it
  already holds gets BUSY, so two deliveries of one ``command_id`` never both run, even when
  the owner id names a whole replica. CLAIMED returns the record with its status, attempts and
  ``call_started_at`` unchanged, so a taker-over sees IN_FLIGHT and reconciles first.
* **mark_call_started** needs a live lease held by ``owner`` on an unfinished command, else
  ``LookupError``: whoever lost the lease must not call the API.
* **finish** is accepted from any caller while the command is unfinished — also from a former
  owner whose lease expired, even after another owner took over. Its event records an API call
  that really happened; refusing it would drop a real result and leave the new owner to guess
  through reconciliation. The first stored event wins for ever: later ``finish`` calls return
  it unchanged, and the new owner's ``mark_call_started`` now fails, so it publishes the stored
  event instead of calling again. Finishing a command never claimed raises ``LookupError``.
* **release** and **renew_leases** only touch leases still recorded for ``owner``; for anyone
  else they are no-ops. A lease that expired but was not taken over is revived by renewal.
* **prune** deletes only finished commands with ``finished_at`` before the bound.
* Times are timezone-aware UTC; naive datetimes are refused with ``ValueError``. Lease checks
  use the PostgreSQL server's clock, or the injected one (SQLite, tests): see
  :mod:`service.store.clock`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from urllib.parse import urlsplit

from service.store.clock import UtcClock
from service.store.postgres import PostgresCommandStore, split_schema
from service.store.sqlite import SqliteCommandStore, sqlite_path_from_url
from service.store.types import (
    CapExceeded,
    Claim,
    ClaimOutcome,
    CommandStatus,
    CommandStore,
    CouponCaps,
    StoredCommand,
)
from service.store.versions import Component

__all__ = [
    "DEFAULT_STORE_URL",
    "CapExceeded",
    "Claim",
    "ClaimOutcome",
    "CommandStatus",
    "CommandStore",
    "CouponCaps",
    "PostgresCommandStore",
    "SqliteCommandStore",
    "StoredCommand",
    "UtcClock",
    "open_store",
]

DEFAULT_STORE_URL = "sqlite:///bss-relay.db"

_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


def open_store(
    url: str, *, clock: UtcClock | None = None, components: Sequence[Component] = ()
) -> AbstractAsyncContextManager[CommandStore]:
    """The store ``url`` names, not yet open: ``async with open_store(url) as store: …``.

    ``components``: further schema components (``service.store.versions``) the store brings up
    to date when it opens, on PostgreSQL (the shared pacing buckets' table and functions).

    Raises ``ValueError`` for an unknown scheme or a malformed URL. Messages never repeat the
    URL, which may carry a password.
    """
    if "://" not in url:
        return SqliteCommandStore(sqlite_path_from_url(url), clock=clock)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return SqliteCommandStore(sqlite_path_from_url(url), clock=clock)
    if scheme in _POSTGRES_SCHEMES:
        dsn, schema = split_schema(url)
        return PostgresCommandStore(dsn, schema=schema, clock=clock, components=components)
    raise ValueError(
        f"unsupported store URL scheme {scheme!r}: use sqlite:///path.db, a file path, "
        "sqlite://:memory: or postgresql://…"
    )
