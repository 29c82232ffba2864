-- Pools: one workflow on several servers behind an nginx upstream on an edge server.
-- Domains give a pool's server_name (the providers issue links them to DNS zones).

CREATE TABLE domains (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX domains_name ON domains(name COLLATE NOCASE);

CREATE TABLE pools (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    workflow_id INTEGER REFERENCES workflows(id) ON DELETE SET NULL,
    domain_id INTEGER REFERENCES domains(id) ON DELETE RESTRICT,
    edge_server_id INTEGER REFERENCES servers(id) ON DELETE SET NULL,
    min_replicas INTEGER NOT NULL,
    max_replicas INTEGER NOT NULL,
    lb_strategy TEXT NOT NULL,
    sticky_cookie TEXT,
    listen_port INTEGER NOT NULL,
    target_port INTEGER NOT NULL,
    health_path TEXT NOT NULL,
    health_interval_s INTEGER NOT NULL,
    health_timeout_s INTEGER NOT NULL,
    unhealthy_after INTEGER NOT NULL,
    healthy_after INTEGER NOT NULL,
    -- How long a freshly deployed member may take to pass its first checks.
    health_grace_s INTEGER NOT NULL,
    client_max_body_mb INTEGER NOT NULL,
    connect_timeout_s INTEGER NOT NULL,
    read_timeout_s INTEGER NOT NULL,
    keepalive INTEGER NOT NULL,
    drain_timeout_s INTEGER NOT NULL,
    -- The last apply on the edge: when it succeeded, or why it did not.
    lb_applied_at INTEGER,
    lb_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX pools_name ON pools(name COLLATE NOCASE);

CREATE TABLE pool_members (
    pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    weight INTEGER NOT NULL DEFAULT 1,
    -- deploying | healthy | unhealthy | draining | failed
    state TEXT NOT NULL,
    last_run_id INTEGER,
    last_health_at INTEGER,
    health_detail TEXT,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (pool_id, server_id)
);
CREATE INDEX pool_members_run ON pool_members(last_run_id);
