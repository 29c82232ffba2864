-- A rollout deploys a pool's workflow to its members a batch at a time: each member is
-- drained, deployed, checked and put back before the next batch; the first failure stops it.
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY,
    pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    -- running | succeeded | failed | cancelled
    status TEXT NOT NULL,
    max_unavailable INTEGER NOT NULL,
    trigger_detail TEXT NOT NULL,
    error TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX rollouts_by_pool ON rollouts(pool_id, id);

CREATE TABLE rollout_members (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    server_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    -- pending | draining | deploying | checking | succeeded | failed | skipped
    status TEXT NOT NULL,
    run_id INTEGER,
    detail TEXT,
    PRIMARY KEY (rollout_id, server_id)
);
