-- Credentials for container registries that need them for image update checks. The
-- password or token is sealed (context "registries:<host>"); only the host and username
-- are ever shown.

CREATE TABLE registry_credentials (
    host TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    secret BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
