-- Servers, their join tokens and the agent certificates issued to them.

CREATE TABLE servers (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    host            TEXT    NOT NULL,
    port            INTEGER NOT NULL DEFAULT 22,
    username        TEXT,
    auth_type       TEXT    NOT NULL,
    tags            TEXT    NOT NULL DEFAULT '[]',   -- JSON array of strings
    status          TEXT    NOT NULL DEFAULT 'pending',
    status_detail   TEXT,
    last_seen       INTEGER,
    agent_version   TEXT,
    facts           TEXT,                            -- JSON object from the agent's hello
    metrics         TEXT,                            -- JSON object from the last heartbeat
    enrolled_at     INTEGER,
    cert_not_after  INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE join_tokens (
    id           TEXT    PRIMARY KEY,                -- public part of the token
    server_id    INTEGER NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    secret_hash  BLOB    NOT NULL,                   -- SHA-256 of the secret part
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
);
CREATE INDEX join_tokens_server ON join_tokens (server_id);

-- No foreign key: revoked serials must outlive the deleted server.
CREATE TABLE agent_certs (
    serial      TEXT    PRIMARY KEY,                 -- hex
    server_id   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX agent_certs_server ON agent_certs (server_id);

-- Controller-wide values; secrets among them are sealed with the master key.
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  BLOB NOT NULL
);
