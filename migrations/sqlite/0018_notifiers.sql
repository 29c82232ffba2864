-- Notifiers: where events are sent (a webhook, Slack or Discord incoming-webhook URL, sealed
-- with the master key as it usually carries a secret), which events, and an optional
-- HMAC secret (sealed) that signs webhook bodies.
CREATE TABLE notifiers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    url_sealed BLOB NOT NULL,
    -- The URL's host, shown instead of the URL.
    url_host TEXT NOT NULL,
    secret_sealed BLOB,
    events TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX notifiers_name ON notifiers(name COLLATE NOCASE);

-- One event for one notifier, delivered with retries: the log the API shows. An event
-- has a subject (`run:12`), so the same event is never queued twice for a notifier.
CREATE TABLE notification_deliveries (
    id INTEGER PRIMARY KEY,
    notifier_id INTEGER NOT NULL REFERENCES notifiers(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending | delivered | failed
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER,
    UNIQUE (notifier_id, event, subject)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries(status, next_attempt_at);
