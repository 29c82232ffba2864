-- Deploy steps survive a controller restart: the agent keeps a step running while no
-- controller is attached, and the restarted controller resumes it after the last output
-- chunk it stored (run_steps.agent_seq, written in the same transaction as the lines).
-- A run keeps the definition it was queued with, so a later edit of its workflow changes
-- neither a queued nor a resumed run (NULL for runs queued before this migration).
ALTER TABLE run_steps ADD COLUMN agent_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN definition TEXT;
