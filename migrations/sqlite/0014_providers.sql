-- Credentials for cloud provider APIs, one row per provider: the credentials as JSON,
-- sealed with the master key (context "providers:<provider>"), and what the provider said
-- they belong to when they were checked.
CREATE TABLE provider_credentials (
    provider TEXT PRIMARY KEY,
    sealed BLOB NOT NULL,
    account TEXT,
    api_url TEXT,
    updated_at INTEGER NOT NULL
);
