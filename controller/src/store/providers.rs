//! Cloud provider credentials, sealed by the caller (`providers::Providers`).

use super::{Result, Store};
use sqlx::Row;

/// A configured provider as listed: never its credentials.
#[derive(Debug, Clone)]
pub struct ProviderRow {
    pub provider: String,
    pub account: Option<String>,
    pub api_url: Option<String>,
    pub updated_at: i64,
}

impl Store {
    pub async fn provider_rows(&self) -> Result<Vec<ProviderRow>> {
        let rows = sqlx::query(
            "SELECT provider, account, api_url, updated_at FROM provider_credentials ORDER BY provider",
        )
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ProviderRow {
                    provider: r.try_get("provider")?,
                    account: r.try_get("account")?,
                    api_url: r.try_get("api_url")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// The sealed credentials of one provider.
    pub async fn provider_sealed(&self, provider: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT sealed FROM provider_credentials WHERE provider = $1")
                .bind(provider)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn put_provider(
        &self,
        provider: &str,
        sealed: &[u8],
        account: Option<&str>,
        api_url: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO provider_credentials (provider, sealed, account, api_url, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT(provider) DO UPDATE SET sealed = $2, account = $3, api_url = $4, updated_at = $5",
        )
        .bind(provider)
        .bind(sealed)
        .bind(account)
        .bind(api_url)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Returns whether there was one.
    pub async fn delete_provider(&self, provider: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM provider_credentials WHERE provider = $1")
            .bind(provider)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }
}
