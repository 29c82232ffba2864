//! API tokens: only their hashes are stored.

use super::{user_from_row, Result, Store, User};
use crate::auth::Role;
use sqlx::Row;

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: i64,
    pub user_id: i64,
    pub username: String,
    pub name: String,
    pub role: Role,
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// A token presented with a request: its row and its owner as they are now.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub token: TokenRow,
    pub user: User,
}

fn token_from(r: &sqlx::any::AnyRow) -> Result<TokenRow> {
    let role: String = r.try_get("token_role")?;
    Ok(TokenRow {
        id: r.try_get("token_id")?,
        user_id: r.try_get("user_id")?,
        username: r.try_get("username")?,
        name: r.try_get("name")?,
        role: Role::parse(&role)
            .ok_or_else(|| super::StoreError::Corrupt(format!("token role {role:?}")))?,
        prefix: r.try_get("prefix")?,
        created_at: r.try_get("token_created_at")?,
        expires_at: r.try_get("expires_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

const TOKEN_COLS: &str = "t.id AS token_id, t.user_id, u.username, t.name, t.role AS token_role,
    t.prefix, t.created_at AS token_created_at, t.expires_at, t.last_used_at";

impl Store {
    #[allow(clippy::too_many_arguments)]
    pub async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        role: Role,
        hash: &[u8],
        prefix: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<i64> {
        let id = sqlx::query_scalar::<_, i64>(
            "INSERT INTO api_tokens (user_id, name, role, token_hash, prefix, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(user_id)
        .bind(name)
        .bind(role.as_str())
        .bind(hash)
        .bind(prefix)
        .bind(now)
        .bind(expires_at)
        .fetch_one(self.pool())
        .await?;
        Ok(id)
    }

    /// The token with this hash and its owner, if both exist.
    pub async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenUser>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLS}, u.id, u.role, u.totp_secret IS NOT NULL AS totp_enabled, u.created_at
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1"
        ))
        .bind(hash)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(TokenUser {
            token: token_from(&r)?,
            user: user_from_row(&r)?,
        }))
    }

    /// Tokens of one user, or everyone's with `None`; newest first.
    pub async fn tokens(&self, user_id: Option<i64>) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE $1 IS NULL OR t.user_id = $1 ORDER BY t.id DESC"
        ))
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(token_from).collect()
    }

    pub async fn token(&self, id: i64) -> Result<Option<TokenRow>> {
        Ok(self.tokens(None).await?.into_iter().find(|t| t.id == id))
    }

    pub async fn delete_token(&self, id: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn touch_token(&self, id: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

impl Store {
    /// Runs kept, by state (for the metrics).
    pub async fn run_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Database connections open and idle (for the metrics).
    pub fn pool_use(&self) -> (u32, usize) {
        (self.pool().size(), self.pool().num_idle())
    }
}
