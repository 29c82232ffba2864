-- Who last changed a workflow's definition and who last set its secrets, as the role they
-- had then. Secrets set by an admin are released to a run only when the definition was
-- last changed by an admin too: a moderator's edit cannot print them. Workflows from
-- before this migration keep working as they did (both 'moderator', so released).
ALTER TABLE workflows ADD COLUMN definition_role TEXT NOT NULL DEFAULT 'moderator';
ALTER TABLE workflows ADD COLUMN secrets_role TEXT NOT NULL DEFAULT 'moderator';
