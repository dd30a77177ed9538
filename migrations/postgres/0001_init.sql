-- 0k-sync relay schema on PostgreSQL (docs/deploy.md "Storage backends"): the
-- same tables as migrations/sqlite (0001 to 0003 together), shared by every
-- relay instance of one cluster. Times are Unix milliseconds; ids are raw bytes.

-- Relay-wide state, one row.
CREATE TABLE relay_state (
    id          SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    -- The highest head of any group pruned so far: a group created (or
    -- created again after a prune) starts there, so a head never goes back.
    head_floor  BIGINT   NOT NULL DEFAULT 0,
    -- SUM(groups.bytes_used), kept exact by every push and deletion: the
    -- relay-wide quota (limits.max_storage) is checked against it under
    -- this row's lock, so instances racing cannot overshoot it.
    bytes_used  BIGINT   NOT NULL DEFAULT 0
);

INSERT INTO relay_state (id) VALUES (1);

-- Access tokens issued by the operator. Only BLAKE3(token) is stored.
CREATE TABLE tokens (
    token_hash   BYTEA   NOT NULL PRIMARY KEY,   -- 32 bytes
    id           TEXT    NOT NULL UNIQUE,        -- public id: first 4 bytes of the hash, hex
    label        TEXT,
    created_at   BIGINT  NOT NULL,
    max_groups   BIGINT  NOT NULL,               -- groups the token may create (live at once)
    max_storage  BIGINT  NOT NULL,               -- payload bytes of all its groups together
    revoked_at   BIGINT                          -- NULL while valid
);

-- Whoever created groups: a token (its hash, 32 bytes) or an address (9 bytes).
CREATE TABLE owners (
    owner          BYTEA   NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL CHECK (kind IN ('token', 'address')),
    bytes_used     BIGINT  NOT NULL DEFAULT 0,   -- SUM(groups.bytes_used) of its groups
    group_count    BIGINT  NOT NULL DEFAULT 0,   -- COUNT(*) of its groups
    window_start   BIGINT  NOT NULL DEFAULT 0,   -- address: start of the new-group window
    window_groups  BIGINT  NOT NULL DEFAULT 0    -- address: groups created in that window
);

CREATE INDEX owners_with_groups ON owners (kind) WHERE group_count > 0;
CREATE INDEX owners_empty ON owners (window_start) WHERE group_count = 0;

-- One row per sync group; its row lock orders the group's pushes (cursors).
CREATE TABLE groups (
    group_id        BYTEA   NOT NULL PRIMARY KEY,   -- 32-byte Ed25519 verifying key
    head_cursor     BIGINT  NOT NULL DEFAULT 0,     -- newest cursor handed out (gapless)
    bytes_used      BIGINT  NOT NULL DEFAULT 0,     -- SUM(octet_length(payload)) of its blobs
    blob_count      BIGINT  NOT NULL DEFAULT 0,     -- COUNT(*) of its blobs
    created_at      BIGINT  NOT NULL,
    last_active_at  BIGINT  NOT NULL,
    owner           BYTEA   REFERENCES owners (owner)
);

CREATE INDEX groups_idle ON groups (last_active_at) WHERE blob_count = 0;
CREATE INDEX groups_by_owner ON groups (owner) WHERE owner IS NOT NULL;

-- Opaque encrypted blobs, addressed by (group, cursor); blob_id makes pushes idempotent.
CREATE TABLE blobs (
    group_id    BYTEA   NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    cursor      BIGINT  NOT NULL,
    blob_id     BYTEA   NOT NULL,                   -- 16 bytes chosen by the pushing device
    sender      BYTEA   NOT NULL,                   -- 32-byte node id of the pushing device
    payload     BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    PRIMARY KEY (group_id, cursor),
    UNIQUE (group_id, blob_id)
);

-- Ciphertext does not compress: store it out of line without trying to.
ALTER TABLE blobs ALTER COLUMN payload SET STORAGE EXTERNAL;

CREATE INDEX blobs_by_expiry ON blobs (expires_at);

-- Devices seen per group, with how far each has acknowledged delivery.
CREATE TABLE devices (
    group_id       BYTEA   NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    device_id      BYTEA   NOT NULL,
    acked_cursor   BIGINT  NOT NULL DEFAULT 0,
    first_seen_at  BIGINT  NOT NULL,
    last_seen_at   BIGINT  NOT NULL,
    PRIMARY KEY (group_id, device_id)
);

CREATE INDEX devices_by_last_seen ON devices (last_seen_at);
