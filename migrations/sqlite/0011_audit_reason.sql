-- Why a refused or failed request failed, as the API said it (quoted values blanked), so
-- the audit log can say "failure: name: already taken" and not only a status code.
ALTER TABLE audit_log ADD COLUMN reason TEXT;
-- The audit page filters by who and what.
CREATE INDEX IF NOT EXISTS audit_log_actor ON audit_log (actor, id);
CREATE INDEX IF NOT EXISTS audit_log_action ON audit_log (action, id);
