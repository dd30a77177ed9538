-- Pushes of one group carried together (sync-storage-postgres/src/combine.rs,
-- docs/deploy.md "Pushes of one group, one transaction at a time"): a
-- transaction carrying several pushes sets `zk_sync.combined_push` to 'on'
-- (SET LOCAL). Its fast-path charges never wait (SKIP LOCKED), but an exact
-- path inside it would lock every slot of a budget while the transaction may
-- hold one of them from an earlier push: out of the slot order every other
-- exact path keeps, so two could deadlock. Inside such a transaction the
-- exact path raises ZS001 instead, and the relay applies each push of the
-- turn on its own, one statement each, in the documented lock order.
-- Relays of older builds never set the variable: nothing changes for them.

CREATE OR REPLACE FUNCTION charge_quota_share_slot(
    p_scope BYTEA, p_settled BIGINT, p_adding BIGINT, p_limit BIGINT,
    OUT c_used BIGINT, OUT c_limit BIGINT, OUT c_slot SMALLINT
) LANGUAGE plpgsql AS $$
DECLARE
    slots CONSTANT INT := 32;
    total BIGINT;
    room BIGINT;
BEGIN
    -- Fast path: a slot nobody holds, dealt out under this limit, with room.
    UPDATE quota_shares q SET used = q.used + p_adding
     WHERE (q.scope, q.slot) = (
         SELECT s.scope, s.slot FROM quota_shares s
          WHERE s.scope = p_scope AND s.for_limit = p_limit
            AND s.allowed - s.used >= p_adding
          LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING q.used - p_adding, q.allowed, q.slot INTO c_used, c_limit, c_slot;
    IF FOUND THEN
        RETURN;
    END IF;
    -- Not inside a transaction that carries several pushes of a group (the
    -- relay sets `zk_sync.combined_push` there, sync-storage-postgres
    -- combine.rs): it may hold a slot of this budget from an earlier push,
    -- and taking every slot in order while holding one can deadlock with
    -- another exact path. The relay then applies each push on its own.
    IF current_setting('zk_sync.combined_push', true) = 'on' THEN
        RAISE EXCEPTION 'the exact quota path is not taken inside a combined push'
            USING ERRCODE = 'ZS001';
    END IF;
    -- Exact path: every slot of the budget, locked in slot order (the one
    -- order every push takes them in, so two exact paths cannot deadlock).
    INSERT INTO quota_shares (scope, slot)
        SELECT p_scope, s FROM generate_series(0, slots - 1) AS s
        ON CONFLICT DO NOTHING;
    PERFORM 1 FROM quota_shares s WHERE s.scope = p_scope ORDER BY s.slot FOR UPDATE;
    SELECT p_settled + COALESCE(SUM(s.used), 0)::BIGINT INTO total
      FROM quota_shares s WHERE s.scope = p_scope;
    c_used := total;
    c_limit := p_limit;
    c_slot := NULL;
    IF p_adding > p_limit - total THEN
        RETURN;
    END IF;
    -- Charge slot 0 and deal the room left out evenly (rounded down: the
    -- slots' allowances never add up to more than the limit).
    room := (p_limit - total - p_adding) / slots;
    UPDATE quota_shares s
       SET used = s.used + CASE WHEN s.slot = 0 THEN p_adding ELSE 0 END,
           allowed = s.used + CASE WHEN s.slot = 0 THEN p_adding ELSE 0 END + room,
           for_limit = p_limit
     WHERE s.scope = p_scope;
    c_slot := 0;
END $$;
