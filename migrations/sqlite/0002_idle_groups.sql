-- 0k-sync relay schema v2: pruning of idle groups and devices (cleanup.idle_group_days).

-- Relay-wide state, one row.
CREATE TABLE relay_state (
    id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    -- The highest head of any group pruned so far. A group created (or
    -- created again after a prune) starts at this head, so a group's head
    -- never goes backwards and a device's saved cursor stays valid.
    head_floor  INTEGER NOT NULL DEFAULT 0
) STRICT;

INSERT INTO relay_state (id, head_floor) VALUES (1, 0);

-- Candidates for pruning: groups without blobs, oldest activity first.
CREATE INDEX groups_idle ON groups (last_active_at) WHERE blob_count = 0;

-- Devices not seen for a while, oldest first.
CREATE INDEX devices_by_last_seen ON devices (last_seen_at);
