-- A run names the server it runs on (pools run one workflow on many servers); NULL for
-- runs queued before this migration, which ran on their workflow's server.
ALTER TABLE runs ADD COLUMN server_id INTEGER;
