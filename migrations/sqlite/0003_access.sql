-- 0k-sync relay schema v3: admission of new groups and owners' budgets
-- (docs/deploy.md §Access). Times are Unix milliseconds.

-- Access tokens issued by the operator (`sync-relay token create`). Only a
-- hash of the token is stored: BLAKE3 of its 32 random bytes.
CREATE TABLE tokens (
    token_hash   BLOB    NOT NULL PRIMARY KEY,   -- BLAKE3(token), 32 bytes
    id           TEXT    NOT NULL UNIQUE,        -- public id: first 4 bytes of the hash, hex
    label        TEXT,                           -- the operator's note
    created_at   INTEGER NOT NULL,
    max_groups   INTEGER NOT NULL,               -- groups the token may create (live at once)
    max_storage  INTEGER NOT NULL,               -- payload bytes of all its groups together
    revoked_at   INTEGER                         -- NULL while valid
) STRICT, WITHOUT ROWID;

-- Whoever created groups: a token (owner = its hash, 32 bytes) or, in open
-- mode, an address (owner = 9 bytes: 4 or 6, then the IPv4 address or the
-- IPv6 /64 prefix, zero-padded). Counters are kept exact with the groups'.
CREATE TABLE owners (
    owner          BLOB    NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL CHECK (kind IN ('token', 'address')),
    bytes_used     INTEGER NOT NULL DEFAULT 0,   -- SUM(groups.bytes_used) of its groups
    group_count    INTEGER NOT NULL DEFAULT 0,   -- COUNT(*) of its groups
    window_start   INTEGER NOT NULL DEFAULT 0,   -- address: start of the new-group window
    window_groups  INTEGER NOT NULL DEFAULT 0    -- address: groups created in that window
) STRICT, WITHOUT ROWID;

CREATE INDEX owners_with_groups ON owners (kind) WHERE group_count > 0;

-- Owners left with no group: the cleanup deletes them once their
-- new-group window has ended (cleanup.idle_group_days).
CREATE INDEX owners_empty ON owners (window_start) WHERE group_count = 0;

-- Groups that existed before this migration have no owner: they stay admitted
-- and count against no owner's budget.
ALTER TABLE groups ADD COLUMN owner BLOB REFERENCES owners (owner);

CREATE INDEX groups_by_owner ON groups (owner) WHERE owner IS NOT NULL;
