-- Several controllers on one database (PostgreSQL; SQLite has only ever one). Each serving
-- process has a row, renewed every few seconds; a row not renewed for the stale window
-- belongs to a controller that is gone, and what it held is taken over by the others.
CREATE TABLE controllers (
    id         TEXT   PRIMARY KEY,
    -- host:port of its agent gateway, where other controllers relay commands to the
    -- agents it holds.
    peer       TEXT   NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);
-- The controller holding the server's agent session (set with the online mark, cleared
-- with the offline mark).
ALTER TABLE servers ADD COLUMN controller_id TEXT;
-- The controller driving a running run or rollout: its lease lasts while its row is
-- renewed.
ALTER TABLE runs ADD COLUMN driver TEXT;
ALTER TABLE rollouts ADD COLUMN driver TEXT;
