-- The last agent upgrade of each server: what it went from and to, and how it ended
-- (upgrading, succeeded, rolled_back, failed, skipped), concluded when the agent attaches.
ALTER TABLE servers ADD COLUMN upgrade_status TEXT;
ALTER TABLE servers ADD COLUMN upgrade_from TEXT;
ALTER TABLE servers ADD COLUMN upgrade_to TEXT;
ALTER TABLE servers ADD COLUMN upgrade_error TEXT;
ALTER TABLE servers ADD COLUMN upgrade_started_at INTEGER;
ALTER TABLE servers ADD COLUMN upgrade_ended_at INTEGER;
