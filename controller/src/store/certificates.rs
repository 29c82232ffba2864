//! Pools' certificates and the ACME account, the secret halves sealed by the caller
//! (`acme::Acme`).

use super::{Result, Store};
use sqlx::Row;

/// A pool's certificate and the state of getting it.
#[derive(Debug, Clone, Default)]
pub struct CertificateRow {
    pub pool_id: i64,
    pub names: Vec<String>,
    pub chain_pem: Option<String>,
    pub key_sealed: Option<Vec<u8>>,
    pub issuer: Option<String>,
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub error: Option<String>,
    pub failures: i64,
    pub next_attempt_at: Option<i64>,
}

/// A certificate just issued, as it is recorded.
pub struct Issued<'a> {
    pub names: &'a [String],
    pub chain_pem: &'a str,
    pub key_sealed: &'a [u8],
    pub issuer: &'a str,
    pub not_before: i64,
    pub not_after: i64,
}

impl Store {
    pub async fn certificate(&self, pool_id: i64) -> Result<Option<CertificateRow>> {
        let row = sqlx::query(
            "SELECT pool_id, names, chain_pem, key_sealed, issuer, not_before, not_after,
                    last_attempt_at, error, failures, next_attempt_at
             FROM certificates WHERE pool_id = $1",
        )
        .bind(pool_id)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let names: String = r.try_get("names")?;
        Ok(Some(CertificateRow {
            pool_id: r.try_get("pool_id")?,
            names: serde_json::from_str(&names).unwrap_or_default(),
            chain_pem: r.try_get("chain_pem")?,
            key_sealed: r.try_get("key_sealed")?,
            issuer: r.try_get("issuer")?,
            not_before: r.try_get("not_before")?,
            not_after: r.try_get("not_after")?,
            last_attempt_at: r.try_get("last_attempt_at")?,
            error: r.try_get("error")?,
            failures: r.try_get("failures")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
        }))
    }

    /// Records a certificate the edge now serves; failures are reset.
    pub async fn put_certificate(&self, pool_id: i64, c: &Issued<'_>, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO certificates (pool_id, names, chain_pem, key_sealed, issuer, not_before,
                not_after, last_attempt_at, error, failures, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, 0, NULL)
             ON CONFLICT(pool_id) DO UPDATE SET names = $2, chain_pem = $3, key_sealed = $4,
                issuer = $5, not_before = $6, not_after = $7, last_attempt_at = $8, error = NULL,
                failures = 0, next_attempt_at = NULL",
        )
        .bind(pool_id)
        .bind(serde_json::to_string(c.names).unwrap_or_else(|_| "[]".into()))
        .bind(c.chain_pem)
        .bind(c.key_sealed)
        .bind(c.issuer)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(())
    }

    /// Records a failed attempt (the certificate held so far is kept) and when to retry.
    pub async fn certificate_failed(
        &self,
        pool_id: i64,
        error: &str,
        now: i64,
        next_attempt_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO certificates (pool_id, last_attempt_at, error, failures, next_attempt_at)
             VALUES ($1, $2, $3, 1, $4)
             ON CONFLICT(pool_id) DO UPDATE SET last_attempt_at = $2, error = $3,
                failures = certificates.failures + 1, next_attempt_at = $4",
        )
        .bind(pool_id)
        .bind(now)
        .bind(error)
        .bind(next_attempt_at)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(())
    }

    /// Makes the next check try at once (a forced renewal), keeping what is recorded.
    pub async fn certificate_force(&self, pool_id: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO certificates (pool_id, next_attempt_at) VALUES ($1, 0)
             ON CONFLICT(pool_id) DO UPDATE SET next_attempt_at = 0",
        )
        .bind(pool_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT credentials_sealed FROM acme_accounts WHERE directory = $1")
                .bind(directory)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn put_acme_account(&self, directory: &str, sealed: &[u8], now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory, credentials_sealed, created_at) VALUES ($1, $2, $3)
             ON CONFLICT(directory) DO UPDATE SET credentials_sealed = $2",
        )
        .bind(directory)
        .bind(sealed)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
