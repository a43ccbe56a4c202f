-- relay_buckets and its functions as the releases before schema versions made them
-- (service/store/buckets.py at 66e8781), verbatim: the upgrade test starts from them.
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
    ;
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
    ;
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
    ;
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
    ;
