//! Notifiers and their delivery log; URLs and secrets sealed by the caller.

use super::{Result, Store};
use sqlx::Row;

#[derive(Debug, Clone)]
pub struct NotifierRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub url_sealed: Vec<u8>,
    pub url_host: String,
    pub secret_sealed: Option<Vec<u8>>,
    pub events: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: i64,
    pub notifier_id: i64,
    pub event: String,
    pub subject: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

fn notifier_from(r: &sqlx::any::AnyRow) -> Result<NotifierRow> {
    let events: String = r.try_get("events")?;
    Ok(NotifierRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        url_sealed: r.try_get("url_sealed")?,
        url_host: r.try_get("url_host")?,
        secret_sealed: r.try_get("secret_sealed")?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        created_at: r.try_get("created_at")?,
    })
}

fn delivery_from(r: &sqlx::any::AnyRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.try_get("id")?,
        notifier_id: r.try_get("notifier_id")?,
        event: r.try_get("event")?,
        subject: r.try_get("subject")?,
        payload: r.try_get("payload")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        created_at: r.try_get("created_at")?,
        delivered_at: r.try_get("delivered_at")?,
    })
}

const DELIVERY_COLS: &str =
    "id, notifier_id, event, subject, payload, status, attempts, last_error,
    next_attempt_at, created_at, delivered_at";

impl Store {
    /// `None` when the name is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_notifier(
        &self,
        name: &str,
        kind: &str,
        url_sealed: &[u8],
        url_host: &str,
        secret_sealed: Option<&[u8]>,
        events: &[String],
        now: i64,
    ) -> Result<Option<i64>> {
        let r = sqlx::query_scalar::<_, i64>(
            "INSERT INTO notifiers (name, kind, url_sealed, url_host, secret_sealed, events, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(name)
        .bind(kind)
        .bind(url_sealed)
        .bind(url_host)
        .bind(secret_sealed)
        .bind(serde_json::to_string(events).unwrap_or_else(|_| "[]".into()))
        .bind(now)
        .fetch_one(self.pool())
        .await;
        match r {
            Ok(id) => Ok(Some(id)),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a new notifier's sealed URL and secret (sealed with its id in the context).
    pub async fn seal_notifier(
        &self,
        id: i64,
        url_sealed: &[u8],
        secret_sealed: Option<&[u8]>,
    ) -> Result<()> {
        sqlx::query("UPDATE notifiers SET url_sealed = $1, secret_sealed = $2 WHERE id = $3")
            .bind(url_sealed)
            .bind(secret_sealed)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn notifiers(&self) -> Result<Vec<NotifierRow>> {
        let rows = sqlx::query(
            "SELECT id, name, kind, url_sealed, url_host, secret_sealed, events, created_at
             FROM notifiers ORDER BY lower(name), name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(notifier_from).collect()
    }

    pub async fn notifier(&self, id: i64) -> Result<Option<NotifierRow>> {
        Ok(self.notifiers().await?.into_iter().find(|n| n.id == id))
    }

    pub async fn delete_notifier(&self, id: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM notifiers WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Queues an event for a notifier; false when that event and subject were queued
    /// for it before.
    pub async fn queue_delivery(
        &self,
        notifier_id: i64,
        event: &str,
        subject: &str,
        payload: &str,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO notification_deliveries (notifier_id, event, subject, payload, status,
                next_attempt_at, created_at)
             VALUES ($1, $2, $3, $4, 'pending', $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(notifier_id)
        .bind(event)
        .bind(subject)
        .bind(payload)
        .bind(now)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn due_deliveries(&self, now: i64, limit: i64) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM notification_deliveries
             WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(delivery_from).collect()
    }

    pub async fn deliveries(&self, notifier_id: i64, limit: i64) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM notification_deliveries
             WHERE notifier_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(notifier_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(delivery_from).collect()
    }

    /// Records an attempt: delivered, or the error and when to try again (`None`: give up).
    pub async fn delivery_attempted(
        &self,
        id: i64,
        outcome: std::result::Result<(), (&str, Option<i64>)>,
        now: i64,
    ) -> Result<()> {
        let q = match outcome {
            Ok(()) => sqlx::query(
                "UPDATE notification_deliveries SET status = 'delivered', attempts = attempts + 1,
                    last_error = NULL, delivered_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id),
            Err((error, Some(next))) => sqlx::query(
                "UPDATE notification_deliveries SET attempts = attempts + 1, last_error = $1,
                    next_attempt_at = $2 WHERE id = $3",
            )
            .bind(error)
            .bind(next)
            .bind(id),
            Err((error, None)) => sqlx::query(
                "UPDATE notification_deliveries SET status = 'failed', attempts = attempts + 1,
                    last_error = $1 WHERE id = $2",
            )
            .bind(error)
            .bind(id),
        };
        q.execute(self.pool()).await?;
        Ok(())
    }
}
