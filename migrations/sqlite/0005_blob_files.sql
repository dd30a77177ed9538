-- 0k-sync relay schema v5: large payloads as files beside the database
-- (docs/deploy.md "Data directory"). A blob whose payload is at least the
-- backend's file threshold keeps an empty `payload` and names its file:
-- `<data dir>/blobs/<first two hex digits>/<file_name>`, a name the relay
-- chose (32 hex digits, random), written and fsync'd before the
-- transaction that inserts the row commits. `file_len` is the payload's
-- length in bytes (what quotas and counters charge), `file_hash` its
-- BLAKE3 hash (32 bytes), checked on every read.
ALTER TABLE blobs ADD COLUMN file_name TEXT;     -- NULL: the payload is inline
ALTER TABLE blobs ADD COLUMN file_len INTEGER;   -- bytes; NULL when inline
ALTER TABLE blobs ADD COLUMN file_hash BLOB;     -- BLAKE3, 32 bytes; NULL when inline

-- The orphan sweep asks, per file found on disk, whether a row names it.
CREATE UNIQUE INDEX blobs_by_file ON blobs (file_name) WHERE file_name IS NOT NULL;
