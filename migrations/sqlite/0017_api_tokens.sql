-- API tokens for scripts and CI: `Authorization: Bearer mz_…`. Only the SHA-256 of a token
-- is stored (tokens are 256 random bits, so a plain hash is enough); its role is at most
-- its creator's, and never more than the creator's current role when used.
CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    -- The first characters, to recognise a token in a list.
    prefix TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    last_used_at INTEGER
);
CREATE INDEX api_tokens_by_user ON api_tokens(user_id);
