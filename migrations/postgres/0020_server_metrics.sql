-- Heartbeat metrics kept at two resolutions: one-minute buckets for a day and
-- fifteen-minute buckets for thirty days (pruned by the controller). Load is summed so
-- a bucket's average is load1_sum / samples; memory and disk are the bucket's last.
CREATE TABLE server_metrics (
    server_id    BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    step         BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    samples      BIGINT NOT NULL,
    load1_sum    DOUBLE PRECISION NOT NULL,
    memory_used  BIGINT NOT NULL,
    memory_total BIGINT NOT NULL,
    disk_used    BIGINT NOT NULL,
    disk_total   BIGINT NOT NULL,
    PRIMARY KEY (server_id, step, at)
);
