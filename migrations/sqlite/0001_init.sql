-- Users, sessions and the audit log. Timestamps are Unix seconds (audit: milliseconds).

CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    username        TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash   TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('viewer', 'moderator', 'admin')),
    -- TOTP secrets are sealed with the master key (context "users.totp:<id>").
    totp_secret     BLOB,
    totp_pending    BLOB,
    totp_last_step  INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE sessions (
    id_hash     BLOB    PRIMARY KEY,          -- SHA-256 of the cookie value
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,             -- absolute expiry
    ip          TEXT,
    user_agent  TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms     INTEGER NOT NULL,
    actor_id  INTEGER,
    actor     TEXT,
    action    TEXT    NOT NULL,
    target    TEXT,
    outcome   TEXT    NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    status    INTEGER NOT NULL,
    ip        TEXT
);
