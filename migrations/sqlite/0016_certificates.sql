-- HTTPS for pools: whether a pool wants a certificate for its domain, how the ACME CA is
-- to check it, and the port its edge serves HTTPS on.
ALTER TABLE pools ADD COLUMN tls_enabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pools ADD COLUMN tls_challenge TEXT NOT NULL DEFAULT 'http-01';
ALTER TABLE pools ADD COLUMN tls_port INTEGER NOT NULL DEFAULT 443;

-- A pool's certificate: the chain as issued, its key sealed with the master key
-- (context "certificates.key:<pool id>"), and the state of issuing and renewing it.
CREATE TABLE certificates (
    pool_id INTEGER PRIMARY KEY REFERENCES pools(id) ON DELETE CASCADE,
    names TEXT NOT NULL DEFAULT '[]',
    chain_pem TEXT,
    key_sealed BLOB,
    issuer TEXT,
    not_before INTEGER,
    not_after INTEGER,
    last_attempt_at INTEGER,
    error TEXT,
    -- Consecutive failures (the backoff) and when the next attempt may start.
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER
);

-- The ACME account per directory URL: instant-acme's credentials JSON, sealed
-- (context "acme.account:<directory>").
CREATE TABLE acme_accounts (
    directory TEXT PRIMARY KEY,
    credentials_sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
