-- One push path (sync-storage-postgres/src/push_single.rs, docs/deploy.md
-- "The push path"). Until now `push_apply` (0004) returned early for a
-- push with new blobs to a closed group and the relay ran that push the
-- older way: a transaction around `push_prepare` (0003), which charged no
-- budget for a closed group, and a Rust module that then charged the
-- quota shares itself. Three places charged the same budgets.
--
-- Now `push_apply` decides a closed group's push as well, by the rule of
-- sync_storage::GroupClosure::admits: new blobs only from a device on the
-- close's keep list and only before the grace ends (`p_now <
-- grace_until`); anything else is refused as 'group_closed' before any
-- budget is read (the reference model and SQLite refuse a closed group
-- before the quotas too). An admitted push is charged like any other and
-- its blobs' expiry is lowered to the grace's end. The function returns
-- the close it read (`closed_at`, `grace_until`, `keep_list`) so the relay
-- checks the decision with the Rust rule, as it checks the quota decision
-- with check_push.
--
-- `push_prepare` and the `charge_quota_share` wrapper go: nothing calls
-- them, and the budgets are charged in one place, `push_apply`, through
-- `charge_quota_share_slot` (0004). The return type of `push_apply` grows
-- (three columns), which CREATE OR REPLACE cannot do: it is dropped and
-- created again in this migration's transaction.

DROP FUNCTION push_prepare(BYTEA, BYTEA[], BIGINT[], BIGINT, BIGINT, BIGINT);
DROP FUNCTION charge_quota_share(BYTEA, BIGINT, BIGINT, BIGINT);

-- Whether `p_device` (32 bytes) is on the keep list `p_keep` (node ids of
-- 32 bytes one after another, sorted, unique: GroupClosure::keep_bytes).
-- A keep list that is not a whole number of sorted, unique ids raises an
-- error (the push is rolled back), as GroupClosure::keep_from_bytes refuses
-- it on the Rust side.
CREATE FUNCTION keep_list_contains(p_keep BYTEA, p_device BYTEA)
RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n INT := octet_length(p_keep) / 32;
BEGIN
    IF octet_length(p_keep) % 32 <> 0 OR EXISTS (
        SELECT 1 FROM generate_series(1, n - 1) AS i
         WHERE substring(p_keep FROM (i - 1) * 32 + 1 FOR 32)
            >= substring(p_keep FROM i * 32 + 1 FOR 32))
    THEN
        RAISE EXCEPTION 'stored keep list is malformed (% bytes)', octet_length(p_keep);
    END IF;
    RETURN EXISTS (
        SELECT 1 FROM generate_series(0, n - 1) AS i
         WHERE substring(p_keep FROM i * 32 + 1 FOR 32) = p_device);
END $$;

DROP FUNCTION push_apply(BYTEA, BYTEA, BIGINT, BYTEA[], BYTEA[], BIGINT[],
    BIGINT, BIGINT, BIGINT, BIGINT, BIGINT);

-- A whole push, one call. `p_ids`, `p_payloads`, `p_expiries` are the
-- batch's items with repeats of an id left out (the first occurrence kept,
-- in batch order; the relay removes them). Steps: the cleanup lock
-- (shared), the group's row lock, the duplicate check by blob id; then,
-- when the batch has new blobs: for a closed group the close's rule (a
-- refusal returns 'group_closed', nothing charged); the owner read, the
-- rules before any budget, the owner's budget charged, the relay's budget
-- charged, each followed by `push_refusal`; a refusal gives back what was
-- charged and returns (`refusal` names the rule, nothing is stored); else
-- the new blobs are inserted under cursors `group_head` + 1, + 2, … in
-- batch order (a closed group's with their expiry lowered to its
-- `grace_until`) and the group's counters, head and activity time move.
--
-- Outputs: `group_found` (false: no such group, nothing done);
-- `group_head`, `group_bytes`, `group_blobs` as they were before the push;
-- `group_closed` with the close (`closed_at`, `grace_until`, `keep_list`;
-- NULL while open); the ids already stored with their cursors; what is new
-- (`adding` bytes, `adding_blobs`); the owner's side (`owner_checked`: the
-- group has an owner of a known kind; `owner_revoked`; `owner_used` and
-- `owner_limit`, NULL when not reached) and the relay's (`relay_used`,
-- `relay_limit`, NULL when not reached): the figures check_push compares,
-- as `charge_quota_share_slot` returns them (a share's, or the exact sum
-- and limit); `refusal` ('group_closed' or a `push_refusal` rule);
-- `stored`.
CREATE FUNCTION push_apply(
    p_group BYTEA, p_sender BYTEA, p_now BIGINT,
    p_ids BYTEA[], p_payloads BYTEA[], p_expiries BIGINT[],
    p_cleanup_lock BIGINT, p_max_group_storage BIGINT, p_max_group_blobs BIGINT,
    p_address_budget BIGINT, p_relay_limit BIGINT,
    OUT group_found BOOLEAN, OUT group_head BIGINT, OUT group_bytes BIGINT,
    OUT group_blobs BIGINT, OUT group_owner BYTEA, OUT group_closed BOOLEAN,
    OUT closed_at BIGINT, OUT grace_until BIGINT, OUT keep_list BYTEA,
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
    -- The latest expiry a new blob may have: a closed group's grace end.
    expiry_cap BIGINT := 9223372036854775807;
BEGIN
    stored := false;
    owner_checked := false;
    owner_revoked := false;

    -- Shared with other pushes, exclusive with a cleanup batch (cleanup.rs).
    PERFORM pg_advisory_xact_lock_shared(p_cleanup_lock);

    -- The group's row lock: this group's pushes, from every instance, run
    -- one at a time from here to the commit. A close takes the same lock
    -- (close.rs), so the close read here stands until the commit.
    SELECT g.head_cursor, g.bytes_used, g.blob_count, g.owner, g.closed_at IS NOT NULL,
           g.closed_at, g.grace_until, g.keep_list
      INTO group_head, group_bytes, group_blobs, group_owner, group_closed,
           closed_at, grace_until, keep_list
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

    -- Nothing new (a retry): answered whatever the group's state.
    IF adding_blobs = 0 THEN
        RETURN;
    END IF;

    -- A closed group (GroupClosure::admits): new blobs only from a kept
    -- device before the grace's end, expiring by then.
    IF group_closed THEN
        IF NOT (p_now < grace_until AND keep_list_contains(COALESCE(keep_list, '\x'::BYTEA), p_sender)) THEN
            refusal := 'group_closed';
            RETURN;
        END IF;
        expiry_cap := grace_until;
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
    SELECT p_group, group_head + row_number() OVER (ORDER BY u.i), u.b, p_sender, u.p, p_now,
           LEAST(u.e, expiry_cap)
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
