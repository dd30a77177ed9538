-- 0k-sync relay schema (PostgreSQL) v2: closing a group (docs/security.md
-- "What the relay must do", docs/protocol.md §CloseGroup). Times are Unix ms.
--
-- A closed group keeps its row for good (the cleanup never prunes it), so
-- its id cannot be created again; its blobs' expiry was lowered to
-- `grace_until` when it closed, so the expiry deletes them by then.
ALTER TABLE groups ADD COLUMN closed_at BIGINT;      -- NULL while open
ALTER TABLE groups ADD COLUMN grace_until BIGINT;    -- closed_at + the relay's longest TTL
ALTER TABLE groups ADD COLUMN keep_list BYTEA;       -- node ids kept, 32 bytes each, sorted
