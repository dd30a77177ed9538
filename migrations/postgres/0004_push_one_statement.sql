-- A push in one statement (sync-storage-postgres/src/push_single.rs,
-- docs/deploy.md "The push path"). Until now a push was four round trips
-- (BEGIN, push_prepare, the store statement, COMMIT) and held its group's
-- row lock across three of them: every other push of the group waited for
-- the relay to be scheduled twice and for two network turns. `push_apply`
-- does all of it in the one statement the relay sends outside an explicit
-- transaction (its implicit transaction commits before the reply is
-- complete): the group's row lock is held for the function's own work and
-- the commit's WAL flush, nothing else. The payload bytes travel with the
-- statement, before any lock is taken.
--
-- The quota decision is made here too, by `push_refusal` below, a port of
-- `sync_storage::quota::check_push` (the Rust function stays the reference:
-- sync-storage-postgres/tests/push_refusal.rs runs both on the same cases,
-- and the relay runs `check_push` on the figures every call returns, so a
-- disagreement is an error, never a silent difference).
--
-- A closed group is not decided here: with new blobs the function returns
-- `group_closed` having done nothing, and the relay takes the transaction
-- path (push_prepare, 0003) whose closed-group branch is in Rust.

-- `charge_quota_share` (0003) that also names the slot it charged (NULL
-- when it charged none: the exact path found no room), so a push refused
-- after the charge can give the bytes back. 0003's function becomes a
-- wrapper of this one: one copy of the logic.
CREATE FUNCTION charge_quota_share_slot(
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

CREATE OR REPLACE FUNCTION charge_quota_share(
    p_scope BYTEA, p_settled BIGINT, p_adding BIGINT, p_limit BIGINT,
    OUT c_used BIGINT, OUT c_limit BIGINT
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.c_used, c.c_limit INTO c_used, c_limit
      FROM charge_quota_share_slot(p_scope, p_settled, p_adding, p_limit) AS c;
END $$;

-- Give back `p_adding` bytes charged to slot `p_slot` of `p_scope` by this
-- transaction (which still holds that slot's row lock). Sound for both
-- paths: the slot's `allowed` is left as it was, and SUM(allowed) stays at
-- most the limit less the settled bytes (the rebalance dealt out the room
-- after the charge, so the room it kept for the charge returns to slot 0).
CREATE FUNCTION uncharge_quota_share(p_scope BYTEA, p_slot SMALLINT, p_adding BIGINT)
RETURNS void LANGUAGE sql AS $$
    UPDATE quota_shares SET used = used - p_adding WHERE scope = p_scope AND slot = p_slot;
$$;

-- The quota decision of a push, the rules of sync_storage::quota::check_push
-- in its order: the name of the first rule a push adding `p_adding` bytes in
-- `p_adding_blobs` new blobs breaks, or NULL when it may be stored
-- ('token_revoked', 'group_storage', 'group_blobs', 'owner_storage',
-- 'relay_storage'). A NULL figure is one not known yet and breaks no rule
-- (push_apply decides in three steps, charging a budget only when the rules
-- before it passed). `p_owner_checked` is false for a group without an
-- owner. Every figure is a non-negative BIGINT, so `a > limit - used` is
-- `used + a > limit` without an overflow.
CREATE FUNCTION push_refusal(
    p_adding BIGINT, p_adding_blobs BIGINT,
    p_group_bytes BIGINT, p_group_blobs BIGINT,
    p_max_group_storage BIGINT, p_max_group_blobs BIGINT,
    p_owner_checked BOOLEAN, p_owner_revoked BOOLEAN,
    p_owner_used BIGINT, p_owner_limit BIGINT,
    p_relay_used BIGINT, p_relay_limit BIGINT
) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_adding_blobs = 0 THEN NULL
        WHEN p_owner_checked AND p_owner_revoked THEN 'token_revoked'
        WHEN p_adding > p_max_group_storage - p_group_bytes THEN 'group_storage'
        WHEN p_adding_blobs > p_max_group_blobs - p_group_blobs THEN 'group_blobs'
        WHEN p_owner_checked AND p_adding > p_owner_limit - p_owner_used THEN 'owner_storage'
        WHEN p_adding > p_relay_limit - p_relay_used THEN 'relay_storage'
    END
$$;

-- A whole push, one call. `p_ids`, `p_payloads`, `p_expiries` are the
-- batch's items with repeats of an id left out (the first occurrence kept,
-- in batch order; the relay removes them). Steps: the cleanup lock
-- (shared), the group's row lock, the duplicate check by blob id; then,
-- when the batch has new blobs and the group is open: the owner read, the
-- rules before any budget, the owner's budget charged, the relay's budget
-- charged, each followed by `push_refusal`; a refusal gives back what was
-- charged and returns (`refusal` names the rule, nothing is stored); else
-- the new blobs are inserted under cursors `group_head` + 1, + 2, … in
-- batch order and the group's counters, head and activity time move.
--
-- Outputs: `group_found` (false: no such group, nothing done);
-- `group_head`, `group_bytes`, `group_blobs` as they were before the push;
-- `group_closed` (true with `adding_blobs` > 0: nothing done, the caller
-- decides); the ids already stored with their cursors; what is new
-- (`adding` bytes, `adding_blobs`); the owner's side (`owner_checked`:
-- the group has an owner of a known kind; `owner_revoked`; `owner_used`
-- and `owner_limit`, NULL when not reached) and the relay's (`relay_used`,
-- `relay_limit`, NULL when not reached): the figures check_push compares,
-- as 0003's charge returns them (a share's, or the exact sum and limit);
-- `refusal`; `stored`.
CREATE FUNCTION push_apply(
    p_group BYTEA, p_sender BYTEA, p_now BIGINT,
    p_ids BYTEA[], p_payloads BYTEA[], p_expiries BIGINT[],
    p_cleanup_lock BIGINT, p_max_group_storage BIGINT, p_max_group_blobs BIGINT,
    p_address_budget BIGINT, p_relay_limit BIGINT,
    OUT group_found BOOLEAN, OUT group_head BIGINT, OUT group_bytes BIGINT,
    OUT group_blobs BIGINT, OUT group_owner BYTEA, OUT group_closed BOOLEAN,
    OUT existing_ids BYTEA[], OUT existing_cursors BIGINT[],
    OUT adding BIGINT, OUT adding_blobs BIGINT,
    OUT owner_checked BOOLEAN, OUT owner_revoked BOOLEAN,
    OUT owner_used BIGINT, OUT owner_limit BIGINT,
    OUT relay_used BIGINT, OUT relay_limit BIGINT,
    OUT refusal TEXT, OUT stored BOOLEAN
) LANGUAGE plpgsql AS $$
DECLARE
    settled BIGINT;
    token_found BOOLEAN;
    token_revoked BOOLEAN;
    owner_found BOOLEAN;
    owner_slot SMALLINT;
    relay_slot SMALLINT;
BEGIN
    stored := false;
    owner_checked := false;
    owner_revoked := false;

    -- Shared with other pushes, exclusive with a cleanup batch (cleanup.rs).
    PERFORM pg_advisory_xact_lock_shared(p_cleanup_lock);

    -- The group's row lock: this group's pushes, from every instance, run
    -- one at a time from here to the commit.
    SELECT g.head_cursor, g.bytes_used, g.blob_count, g.owner, g.closed_at IS NOT NULL
      INTO group_head, group_bytes, group_blobs, group_owner, group_closed
      FROM groups g WHERE g.group_id = p_group FOR NO KEY UPDATE;
    group_found := FOUND;
    IF NOT group_found THEN
        RETURN;
    END IF;

    SELECT COALESCE(array_agg(b.blob_id), '{}'), COALESCE(array_agg(b.cursor), '{}')
      INTO existing_ids, existing_cursors
      FROM blobs b WHERE b.group_id = p_group AND b.blob_id = ANY(p_ids);

    SELECT COALESCE(SUM(octet_length(u.p)), 0)::BIGINT, COUNT(*)
      INTO adding, adding_blobs
      FROM UNNEST(p_ids, p_payloads) AS u(b, p)
     WHERE u.b <> ALL(existing_ids);

    -- Nothing new (a retry: answered whatever the group's state), or a
    -- closed group (the caller's transaction path decides).
    IF adding_blobs = 0 OR group_closed THEN
        RETURN;
    END IF;

    -- The owner: a token (32 bytes) or an address (9 bytes); other bytes
    -- name no owner (sync_storage::Owner::from_bytes) and get no check.
    owner_checked := COALESCE(octet_length(group_owner) IN (9, 32), false);
    IF owner_checked THEN
        SELECT t.max_storage, t.revoked_at IS NOT NULL INTO owner_limit, token_revoked
          FROM tokens t WHERE t.token_hash = group_owner;
        token_found := FOUND;
        IF NOT token_found THEN
            owner_limit := CASE WHEN octet_length(group_owner) = 9 THEN p_address_budget ELSE 0 END;
        END IF;
        -- The owner row exists while its groups do (foreign key); a
        -- missing one is refused as revoked, as is a token owner without
        -- a token row (sync_storage::quota::OwnerUse::of).
        SELECT o.bytes_used INTO settled FROM owners o WHERE o.owner = group_owner;
        owner_found := FOUND;
        owner_revoked := NOT owner_found
            OR (octet_length(group_owner) = 32 AND (NOT token_found OR token_revoked));
    END IF;

    refusal := push_refusal(adding, adding_blobs, group_bytes, group_blobs,
        p_max_group_storage, p_max_group_blobs, owner_checked, owner_revoked,
        NULL, NULL, NULL, NULL);
    IF refusal IS NOT NULL THEN
        owner_limit := NULL;
        RETURN;
    END IF;

    IF owner_checked THEN
        SELECT c.c_used, c.c_limit, c.c_slot INTO owner_used, owner_limit, owner_slot
          FROM charge_quota_share_slot(group_owner, COALESCE(settled, 0), adding, owner_limit) AS c;
        refusal := push_refusal(adding, adding_blobs, group_bytes, group_blobs,
            p_max_group_storage, p_max_group_blobs, owner_checked, owner_revoked,
            owner_used, owner_limit, NULL, NULL);
    END IF;

    IF refusal IS NULL THEN
        SELECT r.bytes_used INTO settled FROM relay_state r;
        SELECT c.c_used, c.c_limit, c.c_slot INTO relay_used, relay_limit, relay_slot
          FROM charge_quota_share_slot('\x'::BYTEA, settled, adding, p_relay_limit) AS c;
        refusal := push_refusal(adding, adding_blobs, group_bytes, group_blobs,
            p_max_group_storage, p_max_group_blobs, owner_checked, owner_revoked,
            owner_used, owner_limit, relay_used, relay_limit);
    END IF;

    IF refusal IS NOT NULL THEN
        -- Whatever was charged goes back (a budget that refused charged
        -- nothing; one that accepted before a later refusal did).
        IF owner_slot IS NOT NULL THEN
            PERFORM uncharge_quota_share(group_owner, owner_slot, adding);
        END IF;
        IF relay_slot IS NOT NULL THEN
            PERFORM uncharge_quota_share('\x'::BYTEA, relay_slot, adding);
        END IF;
        RETURN;
    END IF;

    INSERT INTO blobs (group_id, cursor, blob_id, sender, payload, created_at, expires_at)
    SELECT p_group, group_head + row_number() OVER (ORDER BY u.i), u.b, p_sender, u.p, p_now, u.e
      FROM UNNEST(p_ids, p_payloads, p_expiries) WITH ORDINALITY AS u(b, p, e, i)
     WHERE u.b <> ALL(existing_ids);

    UPDATE groups g
       SET head_cursor = g.head_cursor + adding_blobs,
           bytes_used = g.bytes_used + adding,
           blob_count = g.blob_count + adding_blobs,
           last_active_at = p_now
     WHERE g.group_id = p_group;
    stored := true;
END $$;
