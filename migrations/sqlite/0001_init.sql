-- 0k-sync relay schema v1 (docs/protocol.md and docs/deploy.md). Times are Unix milliseconds; ids are raw bytes.

-- One row per sync group the relay has seen.
CREATE TABLE groups (
    group_id        BLOB    NOT NULL PRIMARY KEY,   -- 32-byte Ed25519 verifying key
    head_cursor     INTEGER NOT NULL DEFAULT 0,     -- newest cursor handed out (gapless, monotonic)
    bytes_used      INTEGER NOT NULL DEFAULT 0,     -- SUM(LENGTH(payload)) of the group's blobs
    blob_count      INTEGER NOT NULL DEFAULT 0,     -- COUNT(*) of the group's blobs
    created_at      INTEGER NOT NULL,
    last_active_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Opaque encrypted blobs, addressed by (group, cursor); blob_id makes pushes idempotent.
CREATE TABLE blobs (
    group_id    BLOB    NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    cursor      INTEGER NOT NULL,
    blob_id     BLOB    NOT NULL,                   -- 16 bytes chosen by the pushing device
    sender      BLOB    NOT NULL,                   -- 32-byte node id of the pushing device
    payload     BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (group_id, cursor),
    UNIQUE (group_id, blob_id)
) STRICT;

CREATE INDEX blobs_by_expiry ON blobs (expires_at);

-- Devices seen per group, with how far each has acknowledged delivery.
CREATE TABLE devices (
    group_id       BLOB    NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    device_id      BLOB    NOT NULL,
    acked_cursor   INTEGER NOT NULL DEFAULT 0,
    first_seen_at  INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    PRIMARY KEY (group_id, device_id)
) STRICT, WITHOUT ROWID;
