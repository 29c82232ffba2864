-- SSH adoption: the pinned host key, optionally kept (sealed) credentials, and a short
-- history of what happened to each server.

ALTER TABLE servers ADD COLUMN host_key_fingerprint TEXT;
ALTER TABLE servers ADD COLUMN ssh_credentials BLOB;   -- sealed, context "servers.ssh:<id>"

CREATE TABLE server_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id  INTEGER NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    at_ms      INTEGER NOT NULL,
    message    TEXT    NOT NULL
);
CREATE INDEX server_events_server ON server_events (server_id, id);
