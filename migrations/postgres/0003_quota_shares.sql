-- Quota shares (docs/deploy.md "Quota shares"): the relay-wide byte budget
-- (limits.max_storage) and each owner's budget are no longer one counter row
-- that every push updates and holds locked until its COMMIT (which made the
-- pushes of all instances commit one after another: a commit waiting for a
-- row lock cannot join another's WAL flush). A budget is split into
-- SHARE_SLOTS slots; a push charges any slot that is not locked and has room
-- (SKIP LOCKED: concurrent pushes take different slots), so pushes no longer
-- wait for each other's commits. When no free slot has room the push locks
-- all slots of the budget, sums them exactly and, if the bytes fit, deals
-- the remaining room out again evenly ("rebalance"). Race-free across
-- instances: each slot is only charged under its row lock and within its
-- `allowed`, and SUM(allowed) never exceeds the limit a rebalance saw, so
-- the budget is never exceeded; it is not even reached early, because a push
-- that fits no slot is decided on the exact sum.
--
-- A budget's bytes in use = its settled column (owners.bytes_used,
-- relay_state.bytes_used: lowered by cleanup, which runs while no push does)
-- + SUM(quota_shares.used) of its scope.

CREATE TABLE quota_shares (
    -- '' (empty): the relay-wide budget; otherwise the owner's key
    -- (owners.owner). Rows of a pruned owner are deleted with it.
    scope      BYTEA     NOT NULL,
    slot       SMALLINT  NOT NULL,
    -- Bytes charged to this slot by pushes since it was created.
    used       BIGINT    NOT NULL DEFAULT 0,
    -- Bytes this slot may reach (its room is allowed - used).
    allowed    BIGINT    NOT NULL DEFAULT 0,
    -- The limit the last rebalance dealt out: a slot is only charged without
    -- a rebalance under the same limit (a changed limit or token budget
    -- forces an exact decision first).
    for_limit  BIGINT    NOT NULL DEFAULT -1,
    PRIMARY KEY (scope, slot)
);

-- Charge `p_adding` bytes to the budget `p_scope` whose limit is `p_limit`
-- and return what the push's quota decision (sync_storage::quota::check_push,
-- in Rust) compares: either the charged slot's `used` before the charge and
-- its `allowed` (it fits: the decision passes), or the budget's exact total
-- and `p_limit` (then the bytes were charged only if they fit; a push that
-- does not fit is refused by the caller and rolled back).
CREATE FUNCTION charge_quota_share(
    p_scope BYTEA, p_settled BIGINT, p_adding BIGINT, p_limit BIGINT,
    OUT c_used BIGINT, OUT c_limit BIGINT
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
    RETURNING q.used - p_adding, q.allowed INTO c_used, c_limit;
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
END $$;

-- The first half of a push (sync-storage-postgres/src/push.rs), one round
-- trip: the cleanup lock (shared), the group's row lock, the duplicate
-- check, the owner's and the relay's budgets charged with the batch's new
-- bytes; it returns every figure the quota decision needs. `group_found` is false
-- for a group that does not exist (nothing done). The new items are the
-- first occurrence of each id in `p_ids` not yet stored in the group
-- (`adding`, `adding_blobs`; the Rust side computes the same and checks).
CREATE FUNCTION push_prepare(
    p_group BYTEA, p_ids BYTEA[], p_sizes BIGINT[], p_cleanup_lock BIGINT,
    p_address_budget BIGINT, p_relay_limit BIGINT,
    OUT group_found BOOLEAN, OUT group_head BIGINT, OUT group_bytes BIGINT,
    OUT group_blobs BIGINT, OUT group_owner BYTEA, OUT group_closed BOOLEAN,
    OUT existing_ids BYTEA[], OUT existing_cursors BIGINT[],
    OUT adding BIGINT, OUT adding_blobs BIGINT,
    OUT owner_found BOOLEAN, OUT owner_used BIGINT, OUT owner_limit BIGINT,
    OUT token_found BOOLEAN, OUT token_revoked BOOLEAN,
    OUT relay_used BIGINT, OUT relay_limit BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
    settled BIGINT;
BEGIN
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

    SELECT COALESCE(SUM(f.s), 0)::BIGINT, COUNT(*)
      INTO adding, adding_blobs
      FROM (SELECT DISTINCT ON (u.b) u.b, u.s
              FROM UNNEST(p_ids, p_sizes) WITH ORDINALITY AS u(b, s, i)
             WHERE u.b <> ALL(existing_ids)
             ORDER BY u.b, u.i) AS f;

    owner_found := false;
    token_found := false;
    token_revoked := false;
    -- Nothing new, or a closed group (0002; the caller refuses the push):
    -- nothing to charge.
    IF adding_blobs = 0 OR group_closed THEN
        RETURN;
    END IF;

    IF group_owner IS NOT NULL THEN
        SELECT t.max_storage, t.revoked_at IS NOT NULL INTO owner_limit, token_revoked
          FROM tokens t WHERE t.token_hash = group_owner;
        token_found := FOUND;
        IF NOT token_found THEN
            token_revoked := false;
            -- An address owner's budget; a token owner without a token row
            -- is refused as revoked by the caller (limit 0 charges nothing).
            owner_limit := CASE WHEN octet_length(group_owner) = 9 THEN p_address_budget ELSE 0 END;
        END IF;
        -- The owner row exists while its groups do (foreign key); the
        -- caller refuses a push whose owner row is missing as revoked.
        SELECT o.bytes_used INTO settled FROM owners o WHERE o.owner = group_owner;
        owner_found := FOUND;
        SELECT c.c_used, c.c_limit INTO owner_used, owner_limit
          FROM charge_quota_share(group_owner, COALESCE(settled, 0), adding, owner_limit) AS c;
    END IF;

    SELECT r.bytes_used INTO settled FROM relay_state r;
    SELECT c.c_used, c.c_limit INTO relay_used, relay_limit
      FROM charge_quota_share('\x'::BYTEA, settled, adding, p_relay_limit) AS c;
END $$;
