-- Heartbeat metrics kept at two resolutions: one-minute buckets for a day and
-- fifteen-minute buckets for thirty days (pruned by the controller). Load is summed so
-- a bucket's average is load1_sum / samples; memory and disk are the bucket's last.
CREATE TABLE server_metrics (
    server_id    INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    step         INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    samples      INTEGER NOT NULL,
    load1_sum    REAL    NOT NULL,
    memory_used  INTEGER NOT NULL,
    memory_total INTEGER NOT NULL,
    disk_used    INTEGER NOT NULL,
    disk_total   INTEGER NOT NULL,
    PRIMARY KEY (server_id, step, at)
) WITHOUT ROWID;
