//! Container registry credentials (for image update checks), sealed by the caller.

use super::{Result, Store};
use sqlx::Row;

#[derive(Debug, Clone)]
pub struct RegistryCredential {
    pub host: String,
    pub username: String,
    pub updated_at: i64,
}

impl Store {
    pub async fn registry_credentials(&self) -> Result<Vec<RegistryCredential>> {
        let rows = sqlx::query(
            "SELECT host, username, updated_at FROM registry_credentials ORDER BY host",
        )
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(RegistryCredential {
                    host: r.try_get("host")?,
                    username: r.try_get("username")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// `(username, sealed secret)` for one registry host.
    pub async fn registry_secret(&self, host: &str) -> Result<Option<(String, Vec<u8>)>> {
        let row = sqlx::query("SELECT username, secret FROM registry_credentials WHERE host = $1")
            .bind(host)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok((r.try_get("username")?, r.try_get("secret")?)))
            .transpose()
    }

    pub async fn put_registry_credential(
        &self,
        host: &str,
        username: &str,
        sealed: &[u8],
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO registry_credentials (host, username, secret, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT(host) DO UPDATE SET username = $2, secret = $3, updated_at = $4",
        )
        .bind(host)
        .bind(username)
        .bind(sealed)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Returns whether there was one.
    pub async fn delete_registry_credential(&self, host: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM registry_credentials WHERE host = $1")
            .bind(host)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }
}
