-- Deploy workflows and their runs. A workflow's secrets and webhook secret are sealed
-- (contexts "workflows.secrets:<id>", "workflows.webhook:<id>"). A run's history is one
-- sequence of events (step changes, output lines, the end) numbered from 1, which is what
-- the live event stream replays from.

CREATE TABLE workflows (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    definition TEXT NOT NULL,
    secrets BLOB,
    webhook_secret BLOB,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX workflows_name ON workflows(name COLLATE NOCASE);

CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    workflow_id INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    trigger_detail TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT,
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    dropped_lines INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_workflow ON runs(workflow_id, id);
CREATE INDEX runs_by_status ON runs(status);

CREATE TABLE run_steps (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, idx)
);

-- kind: 'stdout' | 'stderr' (text is the line) or 'step' | 'end' | 'note' (text is JSON).
CREATE TABLE run_events (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    step INTEGER,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE webhook_deliveries (
    workflow_id INTEGER NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    delivery TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, delivery)
) WITHOUT ROWID;
