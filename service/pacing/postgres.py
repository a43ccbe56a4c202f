"""The pacing algorithm on rows every replica shares, in the PostgreSQL store.

``service.pacing.buckets`` states the algorithm; ``postgres.sql`` implements it as PL/pgSQL
functions over ``relay_pacing`` (one row per bucket), mirroring ``service.pacing.local`` one
function to one. This module is the thin Python side: one statement per call, answers turned
into the interface's values, and the database server's clock estimated from the answers so
that a replica can sleep until a slot of that clock.

The table and functions are the store's schema component ``pacing`` (:data:`PACING`): opening
the store creates or upgrades them (``service.store.versions``). Step 1 replaces the buckets of
the releases before (``relay_buckets`` and its functions): their customers' and egresses' next
slots and their guards are carried over, their parking tickets dropped.

If the store cannot be reached, no slot is granted (the quota cannot be checked, so it is not
spent blind): :class:`~handlers.errors.StoreUnavailable` (``RELAY.STORE_UNAVAILABLE``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from handlers.errors import store_unavailable
from service.pacing.buckets import (
    IDLE_S,
    Looked,
    Offer,
    Reservation,
    Throttle,
    Throttled,
)
from service.store.errors import STORE_ERRORS
from service.store.versions import Component, Step

__all__ = ["PACING", "PostgresBuckets"]

_TABLE = """
CREATE TABLE IF NOT EXISTS relay_pacing (
    api          text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('customer', 'egress')),
    name         text NOT NULL,
    tat          double precision NOT NULL DEFAULT 0,
    cap          double precision NOT NULL DEFAULT 'Infinity',
    good         double precision NOT NULL DEFAULT 0,
    step         double precision NOT NULL DEFAULT 0,
    cut_at       double precision NOT NULL DEFAULT '-Infinity',
    probe_at     double precision NOT NULL DEFAULT 'Infinity',
    hold_s       double precision NOT NULL DEFAULT 0,
    want_prio    integer NOT NULL DEFAULT 0,
    want_at      double precision NOT NULL DEFAULT 0,
    want_until   double precision NOT NULL DEFAULT 0,
    want_by      text NOT NULL DEFAULT '',
    used_at      double precision NOT NULL DEFAULT 0,
    guard        double precision NOT NULL DEFAULT 0,
    guard_min    double precision NOT NULL DEFAULT 0,
    throttled_at double precision NOT NULL DEFAULT '-Infinity',
    widened_at   double precision NOT NULL DEFAULT '-Infinity',
    narrowed_at  double precision NOT NULL DEFAULT '-Infinity',
    PRIMARY KEY (api, kind, name)
);
-- The buckets of the releases before: next slots and guards carried over, rates left to the
-- limits in force (the old rows kept no record of a cut to resume from), tickets dropped.
DO $$
BEGIN
    IF to_regclass('relay_buckets') IS NOT NULL THEN
        INSERT INTO relay_pacing (api, kind, name, tat, used_at)
            SELECT b.api, CASE b.kind WHEN 'uid' THEN 'customer' ELSE 'egress' END, b.name,
                   b.tat, b.used_at
            FROM relay_buckets b WHERE b.kind IN ('uid', 'egress')
            ON CONFLICT DO NOTHING;
        UPDATE relay_pacing p
            SET guard = g.guard, guard_min = least(g.guard, 0.010),
                throttled_at = g.throttled_at, widened_at = g.widened_at,
                narrowed_at = g.adjusted_at
            FROM relay_buckets g
            WHERE g.kind = 'guard' AND p.kind = 'egress' AND p.api = g.api
              AND p.name = g.name;
        DROP FUNCTION IF EXISTS relay_reserve_any(text, text[], text, double precision,
            double precision, double precision, double precision, double precision, text[],
            double precision[]);
        DROP FUNCTION IF EXISTS relay_give_back(text, text, text[], double precision[]);
        DROP FUNCTION IF EXISTS relay_throttled(text, text, text, double precision,
            double precision, double precision, double precision, double precision,
            double precision, double precision, double precision);
        DROP TABLE relay_buckets;
    END IF;
END $$;
"""

PACING = Component(
    "pacing",
    (Step(1, "shared buckets", postgres=_TABLE),),
    routines=resources.files("service.pacing").joinpath("postgres.sql").read_text("utf-8"),
)

_RESERVE = (
    "SELECT * FROM relay_pacing_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
    "$13, $14)"
)
_THROTTLED = "SELECT * FROM relay_pacing_throttled($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_GIVE_BACK = "SELECT relay_pacing_give_back($1, $2, $3, $4)"
_SWEEP = "SELECT relay_pacing_sweep($1, $2)"
_SERVER_CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"
CLOCK_SAMPLES = 5  # round trips that read the server's clock when the buckets open
OFFSET_DRIFT = 0.001  # s/s the clock offset estimate yields (a server clock slewed by NTP)
INF = float("inf")


class PostgresBuckets:
    """:class:`~service.pacing.buckets.Buckets` on ``relay_pacing`` rows. ``pool``: the
    store's asyncpg pool (its ``search_path`` is the store's schema)."""

    def __init__(
        self,
        pool: Any,
        *,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._clock = clock
        self._offset: float | None = None  # server epoch - local clock (see _learn)
        self._learnt_at = 0.0
        self.trips: Counter[str] = Counter()  # statements sent, by what they were for

    @property
    def round_trips(self) -> int:
        return sum(self.trips.values())

    async def start(self) -> None:
        """Learn the server's clock before any slot is asked for."""
        try:
            async with self._pool.acquire(timeout=self._timeout_s) as conn:
                for _ in range(CLOCK_SAMPLES):
                    asked = self._clock()
                    self._learn(await conn.fetchval(_SERVER_CLOCK), asked)
        except STORE_ERRORS as exc:
            raise store_unavailable("could not read the store's clock for pacing") from exc

    def now(self) -> float:
        """The server's clock, estimated from the answers (epoch seconds)."""
        if self._offset is None:
            return time.time()
        return self._clock() + self._offset

    async def reserve(self, offer: Offer) -> Reservation:
        o = offer
        rows = await self._fetch(
            "reserve",
            _RESERVE,
            o.api,
            o.egress,
            o.egress_limit,
            [c.uid for c in o.candidates],
            [int(c.priority) for c in o.candidates],
            [c.limit for c in o.candidates],
            [c.more for c in o.candidates],
            o.within,
            o.owner,
            o.guard_min,
            o.guard_max,
            [uid for uid, _ in o.late],
            [excess for _, excess in o.late],
            o.now,
        )
        last = rows[-1]
        looked = tuple(
            Looked(row["uid"], row["ready_at"], row["rate"]) for row in rows if row["uid"]
        )
        granted = next((row for row in rows if row["granted"]), None)
        if granted is not None:
            slot = granted["slot"]
        elif looked:
            slot = min(row["slot"] for row in rows)
        else:
            slot = last["slot"]
        return Reservation(
            granted["uid"] if granted is not None else None,
            slot,
            last["egress_ready_at"],
            last["egress_rate"],
            last["guard"],
            looked,
            last["server_now"],
        )

    async def throttled(self, throttle: Throttle) -> Throttled:
        t = throttle
        [row] = await self._fetch(
            "throttled",
            _THROTTLED,
            t.api,
            t.uid,
            t.egress,
            t.blame,
            t.sent_at,
            t.customer_limit,
            t.egress_limit,
            t.guard_min,
            t.guard_max,
            t.now,
        )
        return Throttled(
            row["explained"],
            row["customer_cut"],
            row["egress_cut"],
            row["customer_rate"],
            row["egress_rate"],
            row["guard"],
            row["server_now"],
            row["ready_at"],
        )

    async def give_back(self, api: str, egress: str, late: Sequence[tuple[str, float]]) -> None:
        if late:
            await self._execute(
                "late", _GIVE_BACK, api, egress, [u for u, _ in late], [x for _, x in late]
            )

    async def sweep(self, now: float | None = None) -> int:
        """Delete buckets at rest (``IDLE_S``)."""
        rows = await self._fetch("sweep", _SWEEP, IDLE_S, now)
        return int(rows[0][0])

    # -- internals -----------------------------------------------------------------------------

    async def _fetch(self, kind: str, query: str, *args: Any) -> list[Any]:
        self.trips[kind] += 1
        asked = self._clock()
        try:
            rows: list[Any] = await self._pool.fetch(query, *args, timeout=self._timeout_s)
        except STORE_ERRORS as exc:
            raise store_unavailable(
                "the store is unreachable: no rate-limit slot can be granted"
            ) from exc
        if rows and "server_now" in rows[-1]:
            self._learn(rows[-1]["server_now"], asked)
        return rows

    async def _execute(self, kind: str, query: str, *args: Any) -> None:
        self.trips[kind] += 1
        try:
            await self._pool.execute(query, *args, timeout=self._timeout_s)
        except STORE_ERRORS as exc:
            raise store_unavailable("the store is unreachable: lateness not given back") from exc

    def _learn(self, server_now: float, asked: float) -> None:
        """Update the clock offset from an answer to a statement sent at local ``asked``.

        The server read its clock between ``asked`` and now, so the offset lies between
        ``server_now - now`` and ``server_now - asked``. An answer read late (a slow round
        trip, a busy event loop) makes the first too small by the delay, so the estimate keeps
        the largest such lower bound (the answer read soonest), never above any upper bound;
        it yields ``OFFSET_DRIFT`` per second so that the two clocks may drift apart. Taking
        the last sample instead hid exactly the lateness that matters: a request sent late
        after a late answer looked on time."""
        local = self._clock()
        lower, upper = server_now - local, server_now - asked
        offset = self._offset
        if offset is not None:
            lower = max(lower, offset - (local - self._learnt_at) * OFFSET_DRIFT)
        self._offset = min(lower, upper)
        self._learnt_at = local
