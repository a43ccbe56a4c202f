-- The pacing algorithm on rows every replica shares (PostgreSQL): the functions of
-- service/pacing/local.py, one to one and in the same order of arithmetic; the algorithm is
-- stated in service/pacing/buckets.py. tests/pacing/test_differential.py keeps the two equal.
-- Installed (CREATE OR REPLACE) by the store's schema versions whenever this text changes.
--
-- Instants are epoch seconds of the server's clock (clock_timestamp()), or p_now when a
-- caller passes one (tests drive a virtual clock). Every reservation is one statement.

CREATE OR REPLACE FUNCTION relay_pacing_clock(p_now double precision)
RETURNS double precision LANGUAGE sql AS $$
    SELECT coalesce(p_now, extract(epoch FROM clock_timestamp())::double precision)
$$;

-- climb(): the rate's lazy climb
CREATE OR REPLACE FUNCTION relay_pacing_climb(
    b relay_pacing, p_limit double precision, p_now double precision)
RETURNS relay_pacing LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    WHILE b.cap < 'Infinity'::float8 AND b.probe_at <= p_now LOOP
        b.good := greatest(b.good, least(b.cap, p_limit));
        b.cap := b.cap + b.step;
        b.step := b.step * 2;
        b.probe_at := b.probe_at + 1.0;  -- PROBE_EVERY_S
        IF b.cap >= p_limit THEN  -- end_episode()
            b.cap := 'Infinity'; b.good := 0; b.step := 0; b.probe_at := 'Infinity';
            b.hold_s := 0;
        END IF;
    END LOOP;
    RETURN b;
END $$;

-- narrow(): a widened guard halves after a quiet NARROW_AFTER_S (60 s)
CREATE OR REPLACE FUNCTION relay_pacing_narrow(e relay_pacing, p_now double precision)
RETURNS relay_pacing LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF e.guard > e.guard_min
       AND p_now - greatest(e.throttled_at, e.widened_at, e.narrowed_at) >= 60.0 THEN
        e.guard := greatest(e.guard_min, e.guard / 2);
        e.narrowed_at := p_now;
    END IF;
    RETURN e;
END $$;

-- cut(): a 429 blamed on this bucket (cut_at tells whether it cut)
CREATE OR REPLACE FUNCTION relay_pacing_cut(
    b relay_pacing, p_limit double precision, p_now double precision,
    p_sent_at double precision)
RETURNS relay_pacing LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    current_ double precision := least(p_limit, b.cap);
BEGIN
    IF p_sent_at IS NOT NULL AND p_sent_at < b.cut_at THEN
        RETURN b;
    END IF;
    IF b.good > 0 AND current_ > b.good THEN  -- probing above a known-good level failed
        b.cap := b.good;
        b.hold_s := least(300.0, greatest(2 * b.hold_s, 25.0));  -- HOLD_MAX_S, HOLD_FIRST_S
        b.probe_at := p_now + 1.0 + b.hold_s;  -- PAUSE_AFTER_CUT_S
    ELSE  -- the API lowered its limit below where we run: halve (FLOOR_RATE), search
        b.cap := greatest(0.5, current_ / 2);
        b.good := 0;
        b.hold_s := 0;
        b.probe_at := p_now + 1.0 + 1.0;  -- PAUSE_AFTER_CUT_S + PROBE_EVERY_S
    END IF;
    b.step := greatest(0.5, p_limit * 0.05);  -- first_step(): STEP_MIN, STEP_SHARE
    b.cut_at := p_now;
    b.tat := greatest(b.tat, p_now + 1.0);  -- PAUSE_AFTER_CUT_S
    RETURN b;
END $$;

-- blocks(): a standing want of a higher priority forbids a slot ending after its instant
CREATE OR REPLACE FUNCTION relay_pacing_blocks(
    b relay_pacing, p_prio integer, p_end double precision, p_now double precision)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT b.want_prio > p_prio AND b.want_until > p_now AND p_end > b.want_at
$$;

-- want()
CREATE OR REPLACE FUNCTION relay_pacing_want(
    b relay_pacing, p_prio integer, p_at double precision, p_until double precision,
    p_owner text, p_now double precision)
RETURNS relay_pacing LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF b.want_prio < p_prio OR b.want_until <= p_now THEN
        b.want_prio := p_prio; b.want_at := p_at; b.want_until := p_until;
        b.want_by := p_owner;
    ELSIF b.want_prio = p_prio THEN
        b.want_at := least(b.want_at, p_at);
        b.want_until := greatest(b.want_until, p_until);
        b.want_by := p_owner;
    END IF;
    RETURN b;
END $$;

-- release()
CREATE OR REPLACE FUNCTION relay_pacing_release(
    b relay_pacing, p_prio integer, p_more boolean, p_owner text)
RETURNS relay_pacing LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF b.want_prio = p_prio AND b.want_by = p_owner AND NOT p_more THEN
        b.want_prio := 0; b.want_at := 0; b.want_until := 0; b.want_by := '';
    END IF;
    RETURN b;
END $$;

CREATE OR REPLACE FUNCTION relay_pacing_store(b relay_pacing) RETURNS void
LANGUAGE sql AS $$
    UPDATE relay_pacing p SET tat = b.tat, cap = b.cap, good = b.good, step = b.step,
        cut_at = b.cut_at, probe_at = b.probe_at, hold_s = b.hold_s,
        want_prio = b.want_prio, want_at = b.want_at, want_until = b.want_until,
        want_by = b.want_by, used_at = b.used_at, guard = b.guard, guard_min = b.guard_min,
        throttled_at = b.throttled_at, widened_at = b.widened_at, narrowed_at = b.narrowed_at
    WHERE p.api = b.api AND p.kind = b.kind AND p.name = b.name
$$;

-- give_back(): lateness moves the egress's and the customers' next slots on (egress first:
-- the lock order of relay_pacing_reserve)
CREATE OR REPLACE FUNCTION relay_pacing_give_back(
    p_api text, p_egress text, p_uids text[], p_excess double precision[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    IF cardinality(p_uids) = 0 THEN
        RETURN;
    END IF;
    FOR i IN 1 .. cardinality(p_uids) LOOP  -- one addition per request, as in process
        UPDATE relay_pacing p SET tat = p.tat + p_excess[i]
            WHERE p.api = p_api AND p.kind = 'egress' AND p.name = p_egress;
    END LOOP;
    FOR i IN 1 .. cardinality(p_uids) LOOP
        UPDATE relay_pacing p SET tat = p.tat + p_excess[i]
            WHERE p.api = p_api AND p.kind = 'customer' AND p.name = p_uids[i];
    END LOOP;
END $$;

-- reserve(): one row per candidate looked at (uid NULL: the egress was busy before any)
CREATE OR REPLACE FUNCTION relay_pacing_reserve(
    p_api text, p_egress text, p_egress_limit double precision,
    p_uids text[], p_prios integer[], p_limits double precision[], p_more boolean[],
    p_within double precision, p_owner text,
    p_guard_min double precision, p_guard_max double precision,
    p_late_uids text[], p_late_excess double precision[], p_now double precision)
RETURNS TABLE (uid text, granted boolean, slot double precision, ready_at double precision,
               rate double precision, egress_ready_at double precision,
               egress_rate double precision, guard double precision,
               server_now double precision)
LANGUAGE plpgsql AS $$
DECLARE
    now_ double precision := relay_pacing_clock(p_now);
    e relay_pacing;
    u relay_pacing;
    g double precision;
    gmax double precision;
    rate_e double precision;
    ival_e double precision;
    rate_u double precision;
    ival_u double precision;
    horizon double precision;
    slot_ double precision;
    soonest double precision := 'Infinity';
    i integer;
    looked integer := 0;
BEGIN
    INSERT INTO relay_pacing (api, kind, name, guard, guard_min)
        VALUES (p_api, 'egress', p_egress, p_guard_min, p_guard_min)
        ON CONFLICT DO NOTHING;
    PERFORM relay_pacing_give_back(p_api, p_egress, p_late_uids, p_late_excess);
    SELECT * INTO e FROM relay_pacing p
        WHERE p.api = p_api AND p.kind = 'egress' AND p.name = p_egress FOR UPDATE;
    e := relay_pacing_narrow(e, now_);
    e := relay_pacing_climb(e, p_egress_limit, now_);
    g := e.guard;
    SELECT greatest(g, coalesce(max(p.guard), g)) INTO gmax FROM relay_pacing p
        WHERE p.api = p_api AND p.kind = 'egress' AND p.name <> p_egress;
    rate_e := least(p_egress_limit, e.cap);
    ival_e := (1 + g) / rate_e;
    horizon := p_within;
    IF p_within > 0 AND e.tat - now_ > p_within AND e.tat - now_ <= p_within + ival_e THEN
        horizon := e.tat - now_;  -- another replica took the slot this one came for
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_uids), 0) LOOP
        -- the egress is busy: nobody goes, and a low one wants nothing
        CONTINUE WHEN e.tat - now_ > horizon AND p_prios[i] <= 1;
        INSERT INTO relay_pacing (api, kind, name) VALUES (p_api, 'customer', p_uids[i])
            ON CONFLICT DO NOTHING;
        -- a row another replica is reserving on right now is passed over: never a wait
        -- while holding the egress row, so no deadlock
        SELECT * INTO u FROM relay_pacing p
            WHERE p.api = p_api AND p.kind = 'customer' AND p.name = p_uids[i]
            FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        looked := looked + 1;
        u := relay_pacing_climb(u, p_limits[i], now_);
        rate_u := least(p_limits[i], u.cap);
        ival_u := (1 + gmax) / rate_u;
        slot_ := greatest(now_, e.tat, u.tat);
        soonest := least(soonest, slot_);
        IF slot_ - now_ <= horizon + 1e-6  -- EPSILON_S: float rounding of instants
           AND NOT (relay_pacing_blocks(e, p_prios[i], slot_ + ival_e, now_)
                    OR relay_pacing_blocks(u, p_prios[i], slot_ + ival_u, now_)) THEN
            e.tat := slot_ + ival_e;
            u.tat := slot_ + ival_u;
            e.used_at := now_;
            u.used_at := now_;
            e := relay_pacing_release(e, p_prios[i], p_more[i], p_owner);
            u := relay_pacing_release(u, p_prios[i], p_more[i], p_owner);
            PERFORM relay_pacing_store(e);
            PERFORM relay_pacing_store(u);
            RETURN QUERY SELECT p_uids[i], true, slot_, u.tat, rate_u, e.tat, rate_e, g, now_;
            RETURN;
        END IF;
        IF p_prios[i] > 1 THEN  -- Priority.LOW never wants
            e := relay_pacing_want(e, p_prios[i], slot_, slot_ + ival_e, p_owner, now_);
            u := relay_pacing_want(u, p_prios[i], slot_, slot_ + ival_u, p_owner, now_);
        END IF;
        PERFORM relay_pacing_store(u);
        RETURN QUERY SELECT p_uids[i], false, slot_, u.tat, rate_u, e.tat, rate_e, g, now_;
    END LOOP;
    PERFORM relay_pacing_store(e);
    IF looked = 0 THEN
        RETURN QUERY SELECT NULL::text, false, greatest(now_, e.tat), NULL::float8, NULL::float8,
                            e.tat, rate_e, g, now_;
    END IF;
END $$;

-- throttled(): a 429 for a request of p_uid through p_egress, blamed as the caller says
CREATE OR REPLACE FUNCTION relay_pacing_throttled(
    p_api text, p_uid text, p_egress text, p_blame text, p_sent_at double precision,
    p_customer_limit double precision, p_egress_limit double precision,
    p_guard_min double precision, p_guard_max double precision, p_now double precision)
RETURNS TABLE (explained boolean, customer_cut boolean, egress_cut boolean,
               customer_rate double precision, egress_rate double precision,
               guard double precision, server_now double precision,
               ready_at double precision)
LANGUAGE plpgsql AS $$
DECLARE
    now_ double precision := relay_pacing_clock(p_now);
    e relay_pacing;
    u relay_pacing;
    gmax double precision;
    lone boolean;
    explained_ boolean;
    was double precision;
    c_cut boolean := false;
    e_cut boolean := false;
BEGIN
    INSERT INTO relay_pacing (api, kind, name, guard, guard_min)
        VALUES (p_api, 'egress', p_egress, p_guard_min, p_guard_min)
        ON CONFLICT DO NOTHING;
    INSERT INTO relay_pacing (api, kind, name) VALUES (p_api, 'customer', p_uid)
        ON CONFLICT DO NOTHING;
    SELECT * INTO e FROM relay_pacing p
        WHERE p.api = p_api AND p.kind = 'egress' AND p.name = p_egress FOR UPDATE;
    SELECT * INTO u FROM relay_pacing p
        WHERE p.api = p_api AND p.kind = 'customer' AND p.name = p_uid FOR UPDATE;
    e := relay_pacing_climb(e, p_egress_limit, now_);
    u := relay_pacing_climb(u, p_customer_limit, now_);
    -- probing_above(): a 429 while a blamed rate climbs above a known-good level is the
    -- probe failing, not jitter; explains(): a lone 429 widens the egress's guard
    -- (GUARD_STEP_S 0.005, LONE_S 2 s)
    IF (p_blame <> 'egress' AND u.good > 0 AND least(p_customer_limit, u.cap) > u.good)
       OR (p_blame <> 'customer' AND e.good > 0 AND least(p_egress_limit, e.cap) > e.good) THEN
        explained_ := false;
    ELSIF p_sent_at IS NOT NULL AND p_sent_at <= e.widened_at THEN
        explained_ := true;
    ELSE
        lone := now_ - e.throttled_at >= 2.0;
        e.throttled_at := now_;
        IF NOT lone OR e.guard >= p_guard_max THEN
            explained_ := false;
        ELSE
            e.guard := least(p_guard_max, greatest(2 * e.guard, e.guard + 0.005));
            e.widened_at := now_;
            explained_ := true;
        END IF;
    END IF;
    IF explained_ THEN  -- the next slot waits one wider interval
        SELECT greatest(e.guard, coalesce(max(p.guard), e.guard)) INTO gmax FROM relay_pacing p
            WHERE p.api = p_api AND p.kind = 'egress' AND p.name <> p_egress;
        IF p_blame <> 'egress' THEN
            u.tat := greatest(u.tat, now_ + (1 + gmax) / least(p_customer_limit, u.cap));
        END IF;
        IF p_blame <> 'customer' THEN
            e.tat := greatest(e.tat, now_ + (1 + e.guard) / least(p_egress_limit, e.cap));
        END IF;
    ELSE
        IF p_blame <> 'egress' THEN
            was := u.cut_at;
            u := relay_pacing_cut(u, p_customer_limit, now_, p_sent_at);
            c_cut := u.cut_at IS DISTINCT FROM was;
        END IF;
        IF p_blame <> 'customer' THEN
            was := e.cut_at;
            e := relay_pacing_cut(e, p_egress_limit, now_, p_sent_at);
            e_cut := e.cut_at IS DISTINCT FROM was;
        END IF;
    END IF;
    PERFORM relay_pacing_store(e);
    PERFORM relay_pacing_store(u);
    RETURN QUERY SELECT explained_, c_cut, e_cut, least(p_customer_limit, u.cap),
                        least(p_egress_limit, e.cap), e.guard, now_, u.tat;
END $$;

-- sweep(): buckets at rest are deleted (a fresh one behaves the same)
CREATE OR REPLACE FUNCTION relay_pacing_sweep(p_idle double precision, p_now double precision)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    now_ double precision := relay_pacing_clock(p_now);
    gone integer;
BEGIN
    DELETE FROM relay_pacing p
        WHERE p.used_at < now_ - p_idle AND p.tat <= now_ AND p.cap = 'Infinity'
          AND p.want_until <= now_ AND p.guard <= p.guard_min;
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END $$;
