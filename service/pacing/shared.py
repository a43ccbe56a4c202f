"""Rate-limit buckets shared by every replica, in the PostgreSQL store (CONTRACT guarantee 4).

With ``STORE_URL=postgresql://…`` each (API, ParentUid) bucket is one row of ``relay_buckets``
shared by all replicas, and each (API, egress) bucket one row shared by the replicas with the
same ``RELAY_EGRESS``. The invariants are those of :mod:`service.pacing.limiter` -- evenly spaced
slots (GCRA, zero burst tolerance), the adaptive guard, AIMD -- with ONE clock, the database
server's (``clock_timestamp()``, epoch seconds). A 429 seen by any replica lowers the key's
shared rate for all of them (``relay_throttled``). The guard is one row per (API, egress): the
jitter it absorbs is that of one egress's path, and the lone 429s of k replicas do not add up
to a halving; a customer's bucket, which replicas on every egress share, is spaced by the
widest guard of the API.

One atomic statement per reservation: ``SELECT * FROM relay_reserve_any(…)``, a PL/pgSQL
function that locks the egress row, then offers the slot to the caller's candidate ParentUids in
its round-robin order (their rows locked ``SKIP LOCKED``: a row another replica is reserving on
is passed over, never waited for while the egress row is held, so no deadlock). The first whose
joint slot is *nearly due* (``within`` seconds of the server's now) gets it -- or, when another
replica on the same egress just took the slot this one came for, the egress's next slot, one
interval on, for a candidate free by then (contending replicas then need one round trip per
slot, not two). Otherwise nothing is reserved and the answer says how long each bucket is busy,
so the caller waits for its egress, or for the soonest of its customers. Nothing is ever
reserved far ahead: a replica holding slots seconds ahead starves customers served by the
others. A request that leaves late for its slot moves both rows on by its lateness
(``relay_give_back``), on the replica's next reservation.

The caller keeps a local view (ready instants and rates, learnt from every answer) for the
scheduler's estimates, which need no round trip. ``round_trips`` counts statements sent.

If the store cannot be reached, no slot is granted (the quota cannot be checked, so it is not
spent blind): :class:`~handlers.errors.StoreUnavailable` (``RELAY.STORE_UNAVAILABLE``).

With SQLite the buckets stay in process (:class:`service.pacing.limiter.RateLimiter`);
``service.backend`` picks one from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import structlog

from handlers.errors import RelayError, store_unavailable
from service.pacing.limiter import GUARD_STEP_S, LONE_S, NARROW_AFTER_S, Grant, Pick, RateLimiter
from service.store.errors import STORE_ERRORS

__all__ = ["SharedBuckets"]

log = structlog.get_logger(__name__)

_DDL_LOCK_KEY = int.from_bytes(b"relaybkt", "big")
PRUNE_EVERY = 4096  # reservations between prunes of idle rows
STATS_EVERY_S = 5.0  # how often the round-trip counters are logged (info: shared_buckets_stats)
# With shared buckets a slot is on the database's clock and the request leaves after the answer
# comes back: the store round trip's jitter adds to the path's, so the guard starts wider. On
# the 2-core test machine 10 and 20 ms still let an e2e run (relay, sandbox and store client in
# one event loop) send an eleventh request into a second; 30 ms (the former fixed guard) did not.
SHARED_GUARD_MIN_S = 0.010
IDLE_ROW_S = 3600.0  # a row unused this long, at full rate, is deleted (as a fresh one would be)
LOST = STORE_ERRORS

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS relay_buckets (
        api          text NOT NULL,
        kind         text NOT NULL CHECK (kind IN ('uid', 'egress', 'guard', 'ticket')),
        name         text NOT NULL,
        rate         double precision NOT NULL,  -- requests/s now (AIMD)
        tat          double precision NOT NULL,  -- next slot (kind 'ticket': last parking
                                                 -- ticket), epoch s of the server's clock
        adjusted_at  double precision NOT NULL,  -- rate recovery counts from here (kind
                                                 -- 'guard': when it was last narrowed)
        guard        double precision NOT NULL DEFAULT 0,  -- kind 'guard': the API's guard, s
        throttled_at double precision NOT NULL DEFAULT 0,  -- kind 'guard': last 429
        widened_at   double precision NOT NULL DEFAULT 0,  -- kind 'guard': last widening
        used_at      double precision NOT NULL,
        PRIMARY KEY (api, kind, name)
    )
    """,
    """
    CREATE OR REPLACE FUNCTION relay_reserve_any(
        p_api text, p_uids text[], p_egress text, p_ceiling double precision,
        p_guard double precision, p_recovery double precision, p_within double precision,
        p_narrow_after double precision, p_late_uids text[], p_late_excess double precision[])
    RETURNS TABLE (uid text, granted boolean, wait double precision,
                   uid_wait double precision, egress_wait double precision,
                   uid_rate double precision, server_now double precision)
    LANGUAGE plpgsql AS $$
    DECLARE
        now_ double precision := extract(epoch FROM clock_timestamp());
        g double precision;
        gu double precision;
        e relay_buckets;
        u relay_buckets;
        c text;
        slot double precision;
        first_tat double precision;
        first_rate double precision;
        quiet_since double precision;
        horizon double precision;
    BEGIN
        -- lateness this replica's requests picked up since its last statement: given back
        -- before the next slot is taken (see SharedBuckets.late)
        IF cardinality(p_late_uids) > 0 THEN
            PERFORM relay_give_back(p_api, p_egress, p_late_uids, p_late_excess);
        END IF;
        -- a guard row's adjusted_at is when it was last narrowed
        SELECT b.guard, greatest(b.throttled_at, b.widened_at, b.adjusted_at)
            INTO g, quiet_since FROM relay_buckets b
            WHERE b.api = p_api AND b.kind = 'guard' AND b.name = p_egress;
        IF NOT FOUND THEN
            INSERT INTO relay_buckets (api, kind, name, rate, tat, adjusted_at, guard, used_at)
                VALUES (p_api, 'guard', p_egress, p_ceiling, 0, now_, p_guard, now_)
                ON CONFLICT DO NOTHING;
            g := p_guard;
        ELSIF g > p_guard AND now_ - quiet_since >= p_narrow_after THEN
            -- no 429 for a while: narrow by half, not below where it starts (once: the
            -- first replica to get here does it)
            g := greatest(p_guard, g / 2);
            UPDATE relay_buckets b SET guard = g, adjusted_at = now_
                WHERE b.api = p_api AND b.kind = 'guard' AND b.name = p_egress AND b.guard > g;
        END IF;
        -- a customer's bucket is shared by replicas on every egress: its slots are spaced by
        -- the widest guard of the API (the jitter between replicas), the egress's by its own
        SELECT greatest(g, coalesce(max(b.guard), g)) INTO gu FROM relay_buckets b
            WHERE b.api = p_api AND b.kind = 'guard';
        SELECT * INTO e FROM relay_buckets b
            WHERE b.api = p_api AND b.kind = 'egress' AND b.name = p_egress FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO relay_buckets (api, kind, name, rate, tat, adjusted_at, used_at)
                VALUES (p_api, 'egress', p_egress, p_ceiling, 0, now_, now_)
                ON CONFLICT DO NOTHING;
            SELECT * INTO e FROM relay_buckets b
                WHERE b.api = p_api AND b.kind = 'egress' AND b.name = p_egress FOR UPDATE;
        END IF;
        e.rate := p_ceiling;
        horizon := p_within;
        IF e.tat - now_ > p_within AND e.tat - now_ <= p_within + (1 + g) / e.rate THEN
            -- another replica on this egress took the slot this one came for: take the
            -- egress's next one, for a candidate free by then (one round trip, not two)
            horizon := e.tat - now_;
        END IF;
        IF e.tat - now_ > horizon THEN  -- the egress is busy: no candidate can go (the
            -- first one's own bucket is read, unlocked, for the caller's view)
            SELECT coalesce(max(b.tat), 0), coalesce(max(b.rate), p_ceiling)
                INTO first_tat, first_rate
                FROM relay_buckets b WHERE b.api = p_api AND b.kind = 'uid' AND b.name = p_uids[1];
            RETURN QUERY SELECT NULL::text, false, greatest(e.tat, first_tat) - now_,
                                greatest(0, first_tat - now_), e.tat - now_, first_rate, now_;
            RETURN;
        END IF;
        -- the candidates in the caller's (round-robin) order: the first whose own bucket is
        -- nearly due gets the joint slot. A row another replica is reserving on right now is
        -- skipped (SKIP LOCKED: never a wait while holding the egress row, so no deadlock).
        FOREACH c IN ARRAY p_uids LOOP
            SELECT * INTO u FROM relay_buckets b
                WHERE b.api = p_api AND b.kind = 'uid' AND b.name = c FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                INSERT INTO relay_buckets (api, kind, name, rate, tat, adjusted_at, used_at)
                    VALUES (p_api, 'uid', c, p_ceiling, 0, now_, now_)
                    ON CONFLICT DO NOTHING;
                SELECT * INTO u FROM relay_buckets b
                    WHERE b.api = p_api AND b.kind = 'uid' AND b.name = c
                    FOR UPDATE SKIP LOCKED;
                CONTINUE WHEN NOT FOUND;
            END IF;
            -- AIMD, additive part: recover since the last adjustment, up to the ceiling
            IF u.rate < p_ceiling AND now_ > u.adjusted_at THEN
                u.rate := least(p_ceiling,
                                u.rate + (now_ - u.adjusted_at) * p_ceiling * p_recovery);
                u.adjusted_at := now_;
            END IF;
            u.rate := least(u.rate, p_ceiling);  -- a lowered RELAY_RATE_LIMITS applies at once
            slot := greatest(now_, e.tat, u.tat);
            IF slot - now_ <= horizon THEN
                UPDATE relay_buckets b SET tat = slot + (1 + g) / e.rate, rate = e.rate,
                                           used_at = now_
                    WHERE b.api = p_api AND b.kind = 'egress' AND b.name = p_egress;
                UPDATE relay_buckets b SET tat = slot + (1 + gu) / u.rate, rate = u.rate,
                                           adjusted_at = u.adjusted_at, used_at = now_
                    WHERE b.api = p_api AND b.kind = 'uid' AND b.name = c;
                RETURN QUERY SELECT c, true, slot - now_, slot + (1 + gu) / u.rate - now_,
                                    slot + (1 + g) / e.rate - now_, u.rate, now_;
                RETURN;
            END IF;
            RETURN QUERY SELECT c, false, slot - now_, greatest(0, u.tat - now_),
                                greatest(0, e.tat - now_), u.rate, now_;
        END LOOP;
    END $$
    """,
    """
    CREATE OR REPLACE FUNCTION relay_give_back(
        p_api text, p_egress text, p_uids text[], p_excess double precision[])
    RETURNS void LANGUAGE plpgsql AS $$
    BEGIN  -- the egress row first, then the ParentUids': relay_reserve_any's order
        UPDATE relay_buckets b SET tat = b.tat + (SELECT sum(x) FROM unnest(p_excess) AS x)
            WHERE b.api = p_api AND b.kind = 'egress' AND b.name = p_egress;
        UPDATE relay_buckets b SET tat = b.tat + l.excess
            FROM unnest(p_uids, p_excess) AS l(uid, excess)
            WHERE b.api = p_api AND b.kind = 'uid' AND b.name = l.uid;
    END $$
    """,
    """
    CREATE OR REPLACE FUNCTION relay_throttled(
        p_api text, p_uid text, p_egress text, p_ceiling double precision,
        p_guard double precision,
        p_guard_max double precision, p_step double precision, p_lone double precision,
        p_pause double precision, p_floor double precision, p_sent_at double precision)
    RETURNS TABLE (halved boolean, uid_rate double precision, uid_wait double precision,
                   guard double precision, server_now double precision)
    LANGUAGE plpgsql AS $$
    DECLARE
        now_ double precision := extract(epoch FROM clock_timestamp());
        gr relay_buckets;
        u relay_buckets;
        explained boolean;
    BEGIN
        INSERT INTO relay_buckets (api, kind, name, rate, tat, adjusted_at, guard, used_at)
            VALUES (p_api, 'guard', p_egress, p_ceiling, 0, now_, p_guard, now_),
                   (p_api, 'uid', p_uid, p_ceiling, 0, now_, 0, now_)
            ON CONFLICT DO NOTHING;
        SELECT * INTO gr FROM relay_buckets b
            WHERE b.api = p_api AND b.kind = 'guard' AND b.name = p_egress FOR UPDATE;
        SELECT * INTO u FROM relay_buckets b
            WHERE b.api = p_api AND b.kind = 'uid' AND b.name = p_uid FOR UPDATE;
        IF p_sent_at IS NOT NULL AND p_sent_at <= gr.widened_at THEN
            explained := true;  -- sent before the last widening: the same episode
        ELSIF now_ - gr.throttled_at >= p_lone AND gr.guard < p_guard_max THEN
            explained := true;  -- a lone 429: widen the API's guard, keep the rate
            gr.guard := least(p_guard_max, greatest(2 * gr.guard, gr.guard + p_step));
            UPDATE relay_buckets b SET guard = gr.guard, widened_at = now_, throttled_at = now_
                WHERE b.api = p_api AND b.kind = 'guard' AND b.name = p_egress;
        ELSE
            explained := false;
            UPDATE relay_buckets b SET throttled_at = now_
                WHERE b.api = p_api AND b.kind = 'guard' AND b.name = p_egress;
        END IF;
        IF explained THEN
            u.tat := greatest(u.tat, now_ + (1 + gr.guard) / u.rate);
        ELSE  -- AIMD, multiplicative part: halve, pause
            u.rate := greatest(p_floor, u.rate / 2);
            u.adjusted_at := now_ + p_pause;
            u.tat := greatest(u.tat, now_ + p_pause);
        END IF;
        UPDATE relay_buckets b SET rate = u.rate, tat = u.tat, adjusted_at = u.adjusted_at,
                                   used_at = now_
            WHERE b.api = p_api AND b.kind = 'uid' AND b.name = p_uid;
        RETURN QUERY SELECT NOT explained, u.rate, u.tat - now_, gr.guard, now_;
    END $$
    """,
)

_RESERVE = "SELECT * FROM relay_reserve_any($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
CANDIDATES = 16  # ParentUids offered per reservation, in round-robin order
_GIVE_BACK = "SELECT relay_give_back($1, $2, $3, $4)"
# Lateness no reservation of this replica carried this soon is sent on its own. It must land
# before the slot ``limit`` after the late one is reserved (a second on, less "nearly due").
GIVE_BACK_WITHIN_S = 0.25
_THROTTLED = "SELECT * FROM relay_throttled($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
# A block of $5 parking tickets for one key, no sooner than $3 and one spacing after the key's
# last ticket; returns the block's last ticket (the key's new horizon) and the spacing. The
# spacing is the key's share of the deployment: the ParentUids that reserved a slot of the API
# in the last $8 s over the egresses that did, times the limit $7 -- at least the key's own
# interval $6, at most the replica's local estimate $4 (which sees only its own waiters).
_TICKET = """
    WITH clock AS (SELECT extract(epoch FROM clock_timestamp()) AS t),
    active AS (
        SELECT count(*) FILTER (WHERE b.kind = 'uid') AS uids,
               count(*) FILTER (WHERE b.kind = 'egress') AS egresses
        FROM relay_buckets b, clock
        WHERE b.api = $1 AND b.kind IN ('uid', 'egress') AND b.used_at > clock.t - $8::float8
    ),
    spacing AS (
        SELECT greatest($6::float8, least($4::float8,
               greatest(active.uids, 1)::float8 / (greatest(active.egresses, 1) * $7::float8)))
               AS i
        FROM active
    )
    INSERT INTO relay_buckets AS b (api, kind, name, rate, tat, adjusted_at, used_at)
    SELECT $1, 'ticket', $2, spacing.i, $3::float8 + ($5::int - 1) * spacing.i, 0, clock.t
    FROM spacing, clock
    ON CONFLICT (api, kind, name) DO UPDATE
        SET tat = greatest($3::float8, b.tat + EXCLUDED.rate) + ($5::int - 1) * EXCLUDED.rate,
            rate = EXCLUDED.rate,
            used_at = EXCLUDED.used_at
    RETURNING tat, rate AS spacing, used_at AS server_now
"""
_SERVER_CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"
CLOCK_SAMPLES = 5  # round trips that read the server's clock when the buckets open
OFFSET_DRIFT = 0.001  # s/s the clock offset estimate yields (a server clock slewed by NTP)
ACTIVE_S = 2.0  # a ParentUid or egress that reserved a slot this recently counts as active
TICKET_BLOCK = 16  # parking tickets of a key taken per round trip
_PRUNE = """
    DELETE FROM relay_buckets
    WHERE kind <> 'guard' AND used_at < extract(epoch FROM clock_timestamp()) - $1::float8
      AND tat < extract(epoch FROM clock_timestamp())
"""


@dataclass(slots=True)
class _Block:
    """Parking tickets of one key taken from the shared horizon and not handed out yet."""

    next: float  # server clock
    end: float  # the block's last ticket: the key's shared horizon when it was taken
    interval: float


@dataclass(slots=True)
class _Seen:
    """What the last answer said about a bucket, in the local clock."""

    ready_at: float = 0.0
    rate: float = 0.0


class SharedBuckets:
    """The limiter's interface (see :class:`service.pacing.limiter.RateLimiter`) on shared rows.

    ``async with`` creates the table and functions (idempotent, under an advisory lock, as
    replicas may start together). ``pool`` is an open asyncpg pool whose connections'
    ``search_path`` is the store's schema (``PostgresCommandStore.pool``)."""

    shared = True

    def __init__(
        self,
        pool: Any,
        overrides: Mapping[str, float] | None = None,
        *,
        published: Mapping[str, float | None] | None = None,
        egress: str = "default",
        guard_s: float = 0.002,
        guard_max_s: float = 0.05,
        recovery: float = 0.1,
        floor: float = 0.5,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._table = RateLimiter(overrides, published=published)  # the limits table only
        self._egress = egress
        self._guard_s = max(guard_s, min(SHARED_GUARD_MIN_S, guard_max_s))
        self._guard_max_s = max(self._guard_s, guard_max_s)
        self._recovery = recovery
        self._floor = floor
        self._timeout_s = timeout_s
        self._clock = clock
        self._offset: float | None = None  # server epoch - local clock (see _learn)
        self._learnt_at = 0.0
        self._seen: dict[tuple[str, str, str], _Seen] = {}
        self._blocks: dict[tuple[str, str], _Block] = {}
        self.round_trips = 0
        self.trips: Counter[str] = Counter()  # round trips by statement: what they were for
        self.grants = 0
        self.late_sends = 0
        # lateness not given back yet: API -> ParentUid -> seconds (see late)
        self._late: dict[str, dict[str, float]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._stats_at = 0.0

    async def __aenter__(self) -> Self:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK_KEY)
                for statement in _DDL:
                    await conn.execute(statement)
            async with self._pool.acquire() as conn:  # the server's clock, before any slot
                for _ in range(CLOCK_SAMPLES):
                    asked = self._clock()
                    self._learn(await conn.fetchval(_SERVER_CLOCK), asked)
        except LOST as exc:
            raise store_unavailable("could not prepare the shared rate-limit buckets") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        with contextlib.suppress(RelayError):
            await self.flush()
        self._log_stats()

    def _log_stats(self) -> None:
        self._stats_at = self._clock()
        log.info(
            "shared_buckets_stats",
            egress=self._egress,
            round_trips=self.round_trips,
            trips=dict(self.trips),
            grants=self.grants,
            late_sends=self.late_sends,
            keys=len(self._seen),
        )

    # -- the limiter interface -----------------------------------------------------------------

    def limit(self, api: str) -> float | None:
        return self._table.limit(api)

    def now(self) -> float:
        """The server's clock, estimated from the last answer (epoch seconds)."""
        return self._clock() + (self._offset or 0.0)

    def delay(self, api: str, parent_uid: str) -> float:
        """Seconds until a call could be sent, as far as the last answers tell (no I/O)."""
        if self.limit(api) is None:
            return 0.0
        now = self._clock()
        keys = ((api, "uid", parent_uid), (api, "egress", self._egress))
        return max([0.0, *(self._seen[k].ready_at - now for k in keys if k in self._seen)])

    def egress_delay(self, api: str) -> float:
        seen = self._seen.get((api, "egress", self._egress))
        return 0.0 if seen is None else max(0.0, seen.ready_at - self._clock())

    def current_rate(self, api: str, parent_uid: str) -> float:
        seen = self._seen.get((api, "uid", parent_uid))
        if seen is not None and seen.rate > 0:
            return seen.rate
        return self.limit(api) or float("inf")

    def rates(self) -> dict[str, float]:
        return {
            "/".join(key): seen.rate
            for key, seen in self._seen.items()
            if key[1] == "uid" and 0 < seen.rate < (self.limit(key[0]) or float("inf"))
        }

    def __len__(self) -> int:
        return len(self._seen)

    async def acquire(self, api: str, parent_uid: str, *, within: float) -> Grant:
        """Reserve the joint slot if it is due within ``within`` seconds (one statement)."""
        pick = await self.acquire_any(api, (parent_uid,), within=within)
        return pick.grant

    async def acquire_any(self, api: str, uids: Sequence[str], *, within: float) -> Pick:
        """One statement: the joint slot of the first of ``uids`` (the caller's round-robin
        order, at most ``CANDIDATES``) that is due within ``within`` seconds, reserved.
        Offering several customers at once is what keeps it near one round trip per call
        when customers outnumber replicas: a customer whose own bucket another replica just
        used is passed over in the same statement, not in a round trip of its own."""
        ceiling = self.limit(api)
        now = self.now()
        if ceiling is None:
            return Pick(uids[0] if uids else None, Grant(True, 0.0, 0.0, 0.0, now), {})
        late = self._late.pop(api, {})
        try:
            rows = await self._fetch_all(
                "reserve",
                _RESERVE,
                api,
                list(uids[:CANDIDATES]),
                self._egress,
                ceiling,
                self._guard_s,
                self._recovery,
                within,
                NARROW_AFTER_S,
                list(late),
                list(late.values()),
            )
        except RelayError:
            self._give_back_later(api, late)
            raise
        if not rows:  # every candidate was being reserved on by another replica just now
            self.trips["reserve"] -= 1
            self.trips["reserve_missed"] += 1
            return Pick(None, Grant(False, 0.0, 0.0, 0.0, now), {})
        local = self._clock()
        busy: dict[str, float] = {}
        grant = Grant(False, 0.0, 0.0, 0.0, now)
        for row in rows:
            grant = Grant(
                row["granted"],
                row["wait"],
                row["uid_wait"],
                row["egress_wait"],
                row["server_now"] + row["wait"],
            )
            self._note((api, "egress", self._egress), local + row["egress_wait"], ceiling)
            uid = row["uid"]
            if uid is None:  # the egress is busy
                self.trips["reserve"] -= 1
                self.trips["reserve_missed"] += 1
                if uids:
                    self._note((api, "uid", uids[0]), local + row["uid_wait"], row["uid_rate"])
                return Pick(None, grant, busy)
            self._note((api, "uid", uid), local + row["uid_wait"], row["uid_rate"])
            if grant.granted:
                self.grants += 1
                if self.grants % PRUNE_EVERY == 0:
                    await self.prune()
                if local - self._stats_at >= STATS_EVERY_S:
                    self._log_stats()
                return Pick(uid, grant, busy)
            busy[uid] = row["uid_wait"]
        self.trips["reserve"] -= 1
        self.trips["reserve_missed"] += 1  # none of the candidates was nearly due
        if local - self._stats_at >= STATS_EVERY_S:
            self._log_stats()
        return Pick(None, grant, busy)

    async def report_throttled(
        self, api: str, parent_uid: str, *, pause_s: float = 1.0, sent_at: float | None = None
    ) -> bool:
        """A 429 for this key, seen by this replica: lowers the shared rate for every replica
        (or widens the API's shared guard when lone). True when the rate was halved."""
        ceiling = self.limit(api)
        if ceiling is None:
            return False
        row = await self._fetch(
            "throttled",
            _THROTTLED,
            api,
            parent_uid,
            self._egress,
            ceiling,
            self._guard_s,
            self._guard_max_s,
            GUARD_STEP_S,
            LONE_S,
            pause_s,
            self._floor,
            sent_at,
        )
        local = self._clock()
        self._note((api, "uid", parent_uid), local + row["uid_wait"], row["uid_rate"])
        if row["halved"]:
            log.warning("rate_lowered", api=api, parent_uid=parent_uid, rate=row["uid_rate"])
        else:
            log.warning("rate_guard_widened", api=api, guard_ms=row["guard"] * 1000)
        return bool(row["halved"])

    def tolerance(self, api: str) -> float:
        """Lateness absorbed per request (see ``RateLimiter.tolerance``), of the guard this
        replica starts with (the shared guard is at least that)."""
        return self._guard_s / 4

    def late(self, api: str, parent_uid: str, *, slot: float, sent_at: float) -> float:
        """A call left late for its slot (see ``RateLimiter.late``): both shared rows' next
        slots move on by the excess. The give-back rides on this replica's next reservation
        of the API (no statement of its own), or goes alone (``flush``) when none came within
        ``GIVE_BACK_WITHIN_S``. No I/O here: the request it is about waits for nothing."""
        excess = sent_at - slot - self.tolerance(api)
        if self.limit(api) is None or excess <= 0:
            return 0.0
        self.late_sends += 1
        pending = self._late.setdefault(api, {})
        pending[parent_uid] = pending.get(parent_uid, 0.0) + excess
        log.debug("sent_late", api=api, excess_ms=round(excess * 1000, 1))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())
        return excess

    async def _flush_later(self) -> None:
        await asyncio.sleep(GIVE_BACK_WITHIN_S)
        try:
            await self.flush()
        except RelayError as exc:  # the store is away: no slot is granted until it is back
            log.warning("sent_late_not_recorded", error=exc.message)

    async def flush(self) -> None:
        """Give back, in statements of their own, the lateness no reservation carried yet."""
        while self._late:
            api, left = self._late.popitem()
            try:
                await self._fetch(
                    "late", _GIVE_BACK, api, self._egress, list(left), list(left.values())
                )
            except RelayError:
                self._give_back_later(api, left)
                raise

    def _give_back_later(self, api: str, left: dict[str, float]) -> None:
        pending = self._late.setdefault(api, {})
        for uid, excess in left.items():
            pending[uid] = pending.get(uid, 0.0) + excess

    async def ticket(
        self, api: str, parent_uid: str, *, earliest: float, interval: float
    ) -> tuple[float, float]:
        """The key's next parking ticket from its horizon shared by every replica (server
        clock) and its spacing: the key's share of every replica's egresses (``interval`` is
        this replica's local estimate, an upper bound). Tickets are taken in blocks of
        ``TICKET_BLOCK`` (one statement) and handed out here until the block's end: a block
        only says when parked commands come back, never grants a slot."""
        key = (api, parent_uid)
        block = self._blocks.get(key)
        if block is not None:
            ticket = max(earliest, block.next)
            if ticket <= block.end + 1e-6:
                block.next = ticket + block.interval
                return ticket, block.interval
        ceiling = self.limit(api) or 1.0
        row = await self._fetch(
            "ticket",
            _TICKET,
            api,
            parent_uid,
            earliest,
            interval,
            TICKET_BLOCK,
            1.0 / self.current_rate(api, parent_uid),
            ceiling,
            ACTIVE_S,
        )
        spacing, end = float(row["spacing"]), float(row["tat"])
        first = end - (TICKET_BLOCK - 1) * spacing
        self._blocks[key] = _Block(first + spacing, end, spacing)
        return first, spacing

    async def prune(self) -> int:
        """Delete rows idle for an hour whose next slot has passed (a fresh row is the same)."""
        with contextlib.suppress(*LOST):
            self.round_trips += 1
            self.trips["prune"] += 1
            status = await self._pool.execute(_PRUNE, IDLE_ROW_S, timeout=self._timeout_s)
            now = self._clock()
            for key in [k for k, s in self._seen.items() if s.ready_at < now - IDLE_ROW_S]:
                del self._seen[key]
            server = self.now()
            for gone in [k for k, b in self._blocks.items() if b.next < server - IDLE_ROW_S]:
                del self._blocks[gone]
            return int(status.split()[-1])
        return 0

    # -- internals -----------------------------------------------------------------------------

    async def _fetch_all(self, kind: str, query: str, *args: Any) -> list[Any]:
        self.round_trips += 1
        self.trips[kind] += 1
        asked = self._clock()
        try:
            rows: list[Any] = await self._pool.fetch(query, *args, timeout=self._timeout_s)
        except LOST as exc:
            raise store_unavailable(
                "the store is unreachable: no rate-limit slot can be granted",
            ) from exc
        if rows:
            self._learn(rows[-1]["server_now"], asked)
        return rows

    async def _fetch(self, kind: str, query: str, *args: Any) -> Any:
        self.round_trips += 1
        self.trips[kind] += 1
        asked = self._clock()
        try:
            row = await self._pool.fetchrow(query, *args, timeout=self._timeout_s)
        except LOST as exc:
            raise store_unavailable(
                "the store is unreachable: no rate-limit slot can be granted",
            ) from exc
        assert row is not None
        if "server_now" in row:
            self._learn(row["server_now"], asked)
        return row

    def _learn(self, server_now: float, asked: float) -> float:
        """Update the clock offset from an answer to a statement sent at local ``asked``;
        returns the local instant the answer was read.

        The server read its clock between ``asked`` and now, so the offset lies between
        ``server_now - now`` and ``server_now - asked``. An answer read late (a slow round
        trip, a busy event loop) makes the first too small by the delay, so the estimate
        keeps the largest such lower bound (the answer read soonest), never above any upper
        bound; it yields ``OFFSET_DRIFT`` per second so that the two clocks may drift apart
        (the local clock is monotonic: it never steps). Taking the last sample instead hid
        exactly the lateness that matters: a request sent late after a late answer looked
        on time, and its slot was not given back; and when a faster answer then corrected
        the estimate, the next request left early against the late one."""
        local = self._clock()
        lower, upper = server_now - local, server_now - asked
        offset = self._offset
        if offset is not None:
            lower = max(lower, offset - (local - self._learnt_at) * OFFSET_DRIFT)
        self._offset = min(lower, upper)
        self._learnt_at = local
        return local

    def _note(self, key: tuple[str, str, str], ready_at: float, rate: float) -> None:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen()
        seen.ready_at, seen.rate = ready_at, rate
