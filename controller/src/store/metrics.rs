//! Server metrics history: heartbeats folded into one-minute buckets (kept a day) and
//! fifteen-minute buckets (kept thirty days), one statement per resolution per flush.

use super::{Result, Store};
use serde_json::Value;
use sqlx::Row;

/// Bucket sizes in seconds, and how long each is kept.
pub const STEPS: [(i64, i64); 2] = [(60, 86_400), (900, 30 * 86_400)];

/// One bucket of a server's history.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub at: i64,
    pub load1: f64,
    pub memory_used: i64,
    pub memory_total: i64,
    pub disk_used: i64,
    pub disk_total: i64,
}

/// The fields a bucket takes from a heartbeat's metrics (as `metrics_json` writes them).
fn flat(id: i64, seen: i64, m: &Value) -> Option<Value> {
    let n = |k: &str| m.get(k).and_then(Value::as_i64);
    Some(serde_json::json!({
        "id": id,
        "s": seen,
        "l": m.get("load")?.get(0)?.as_f64()?,
        "mu": n("memory_used_bytes")?,
        "mt": n("memory_total_bytes")?,
        "du": n("disk_used_bytes")?,
        "dt": n("disk_total_bytes")?,
    }))
}

impl Store {
    /// Folds a batch of heartbeats (server, seen, metrics) into the history.
    pub async fn record_metrics(&self, beats: &[(i64, i64, Value)]) -> Result<()> {
        let batch: Vec<Value> = beats
            .iter()
            .filter_map(|(id, seen, m)| flat(*id, *seen, m))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        let batch = Value::Array(batch).to_string();
        let sql = self.engine.pick(
            "INSERT INTO server_metrics (server_id, step, at, samples, load1_sum, memory_used,
                 memory_total, disk_used, disk_total)
             SELECT b.value ->> '$.id', $2, (b.value ->> '$.s') / $2 * $2, 1, b.value ->> '$.l',
                    b.value ->> '$.mu', b.value ->> '$.mt', b.value ->> '$.du', b.value ->> '$.dt'
             FROM json_each($1) AS b WHERE EXISTS (SELECT 1 FROM servers WHERE id = b.value ->> '$.id')
             ON CONFLICT (server_id, step, at) DO UPDATE SET
                 samples = server_metrics.samples + 1,
                 load1_sum = server_metrics.load1_sum + excluded.load1_sum,
                 memory_used = excluded.memory_used, memory_total = excluded.memory_total,
                 disk_used = excluded.disk_used, disk_total = excluded.disk_total",
            "INSERT INTO server_metrics (server_id, step, at, samples, load1_sum, memory_used,
                 memory_total, disk_used, disk_total)
             SELECT (b.value ->> 'id')::BIGINT, $2, ((b.value ->> 's')::BIGINT / $2) * $2, 1,
                    (b.value ->> 'l')::DOUBLE PRECISION, (b.value ->> 'mu')::BIGINT,
                    (b.value ->> 'mt')::BIGINT, (b.value ->> 'du')::BIGINT, (b.value ->> 'dt')::BIGINT
             FROM jsonb_array_elements($1::jsonb) AS b(value)
             WHERE EXISTS (SELECT 1 FROM servers WHERE id = (b.value ->> 'id')::BIGINT)
             ON CONFLICT (server_id, step, at) DO UPDATE SET
                 samples = server_metrics.samples + 1,
                 load1_sum = server_metrics.load1_sum + excluded.load1_sum,
                 memory_used = excluded.memory_used, memory_total = excluded.memory_total,
                 disk_used = excluded.disk_used, disk_total = excluded.disk_total",
        );
        for (step, _) in STEPS {
            sqlx::query(sql)
                .bind(&batch)
                .bind(step)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }

    /// A server's history from `since`, at `step` seconds per point, oldest first.
    pub async fn metric_points(
        &self,
        server_id: i64,
        step: i64,
        since: i64,
    ) -> Result<Vec<MetricPoint>> {
        let rows = sqlx::query(
            "SELECT at, samples, load1_sum, memory_used, memory_total, disk_used, disk_total
             FROM server_metrics WHERE server_id = $1 AND step = $2 AND at >= $3 ORDER BY at",
        )
        .bind(server_id)
        .bind(step)
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let samples: i64 = r.try_get("samples")?;
                let sum: f64 = r.try_get("load1_sum")?;
                Ok(MetricPoint {
                    at: r.try_get("at")?,
                    load1: sum / samples.max(1) as f64,
                    memory_used: r.try_get("memory_used")?,
                    memory_total: r.try_get("memory_total")?,
                    disk_used: r.try_get("disk_used")?,
                    disk_total: r.try_get("disk_total")?,
                })
            })
            .collect()
    }

    /// Drops buckets older than each resolution keeps; returns how many went.
    pub async fn prune_metrics(&self, now: i64) -> Result<u64> {
        let mut n = 0;
        for (step, keep) in STEPS {
            n += sqlx::query("DELETE FROM server_metrics WHERE step = $1 AND at < $2")
                .bind(step)
                .bind(now - keep)
                .execute(self.pool())
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}
