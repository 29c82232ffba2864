//! The storage layer: every SQL statement of the controller lives under this module.
//! SQLite (WAL) backs it today; handlers see only these methods and plain structs, so a
//! PostgreSQL backend can slot in here without touching them.

mod cache;
mod certificates;
#[cfg(test)]
mod contract;
mod controllers;
mod copy;
mod metrics;
mod migrate;
mod notifiers;
mod pools;
mod providers;
mod registries;
mod servers;
mod tokens;
mod workflows;

use crate::auth::Role;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration {version} ({name}) was changed after it was applied; applied migrations never change")]
    MigrationChanged { version: i64, name: String },
    #[error("database holds migration {0}, which this build does not know; refusing to run an older controller on a newer database")]
    MigrationUnknown(i64),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    Unsupported(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

pub use certificates::{CertificateRow, Issued};
pub use controllers::{ControllerRow, OrphanRun};
pub use copy::{copy_database, Copied};
pub use metrics::{MetricPoint, STEPS as METRIC_STEPS};
pub use notifiers::{DeliveryRow, NotifierRow};
pub use pools::{DomainRow, MemberRow, PoolRow, PoolSettings, RolloutMemberRow, RolloutRow};
pub use providers::ProviderRow;
pub use servers::{
    AgentUpgrade, JoinTokenRow, NewServer, ServerDelete, ServerPatch, ServerRow, Written,
};
pub use tokens::{TokenRow, TokenUser};
pub use workflows::{NewRun, Queued, RunFilter, Start, WorkflowDelete};
pub use workflows::{RunEvent, RunRow, StepRow, WorkflowRow};

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub totp_enabled: bool,
    pub created_at: i64,
}

/// What a valid session resolves to.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub user: User,
    pub last_seen: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
    pub totp_secret: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub actor_id: Option<i64>,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub status: i64,
    pub ip: Option<String>,
    pub reason: Option<String>,
}

/// Which audit records a page holds; `None` matches anything.
#[derive(Debug, Default)]
pub struct AuditFilter<'a> {
    pub actor: Option<&'a str>,
    pub action: Option<&'a str>,
    pub outcome: Option<&'a str>,
}

#[derive(Debug, Clone, Default)]
pub struct NewAudit {
    pub actor_id: Option<i64>,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: &'static str,
    pub status: u16,
    pub ip: Option<String>,
    pub reason: Option<String>,
}

/// Outcome of a guarded change to an admin account.
#[derive(Debug, PartialEq, Eq)]
pub enum Guarded {
    Done,
    NotFound,
    LastAdmin,
}

/// The database engine behind a store. Statements are written once, in SQL both engines
/// read (`$n` placeholders, `ON CONFLICT`, `RETURNING`, `IS DISTINCT FROM`); the few that
/// differ ask the engine (`Engine::pick`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// The engine a database URL names, if it is one this build speaks.
    pub fn of(url: &str) -> Option<Engine> {
        if url.starts_with("sqlite:") {
            Some(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Engine::Postgres)
        } else {
            None
        }
    }

    /// The statement written for this engine.
    pub fn pick<'a>(self, sqlite: &'a str, postgres: &'a str) -> &'a str {
        match self {
            Engine::Sqlite => sqlite,
            Engine::Postgres => postgres,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    sessions: std::sync::Arc<cache::SessionCache>,
    /// Committed changes, announced to `GET /api/events`.
    changes: std::sync::Arc<crate::changes::Feed>,
    /// PostgreSQL: the connection holding the lead (see `try_lead`) while this
    /// controller has it.
    lead: std::sync::Arc<tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Any>>>>,
    /// This process's controller id: random per start, the owner recorded on what it
    /// holds (agent sessions, runs, rollouts).
    me: std::sync::Arc<str>,
    /// PostgreSQL: the URL, for the LISTEN connection (held outside the pool).
    pg_url: Option<std::sync::Arc<str>>,
}

/// The advisory lock of the controller that runs the fleet-wide background work.
const LEAD_LOCK: i64 = 0x6d7a_7365_7276;

fn key(hash: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 32];
    let n = hash.len().min(32);
    k[..n].copy_from_slice(&hash[..n]);
    k
}

const USER_COLS: &str = "id, username, role, totp_secret IS NOT NULL AS totp_enabled, created_at";

/// A yes/no column: SQLite gives integers (stored flags and `x IS NOT NULL` alike),
/// PostgreSQL gives booleans for expressions.
pub(crate) fn flag(row: &sqlx::any::AnyRow, col: &str) -> Result<bool> {
    match row.try_get::<i64, _>(col) {
        Ok(v) => Ok(v != 0),
        Err(_) => Ok(row.try_get::<bool, _>(col)?),
    }
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
        totp_enabled: flag(row, "totp_enabled")?,
        created_at: row.try_get("created_at")?,
    })
}

fn credentials_from_row(row: &sqlx::any::AnyRow) -> Result<Credentials> {
    Ok(Credentials {
        user: user_from_row(row)?,
        password_hash: row.try_get("password_hash")?,
        totp_secret: row.try_get("totp_secret")?,
    })
}

impl Store {
    /// Opens the database named by `url` (a SQLite file is created if needed) and applies
    /// migrations.
    pub async fn open(url: &str) -> Result<Store> {
        Self::open_with(url, 16).await
    }

    /// `open`, with at most `pg_connections` connections to PostgreSQL (SQLite has one
    /// writer whatever the pool, so it keeps four).
    pub async fn open_with(url: &str, pg_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let engine = Engine::of(url).ok_or_else(|| StoreError::Unsupported(url.to_owned()))?;
        let pool = match engine {
            Engine::Sqlite => {
                // Created if missing, unless the URL says otherwise.
                let url = if url.contains("mode=") || url.contains(":memory:") {
                    url.to_owned()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                AnyPoolOptions::new()
                    .max_connections(4)
                    .min_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL: readers never wait for the writer; NORMAL is durable in
                            // WAL mode but for the last commits on power loss.
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = NORMAL",
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA busy_timeout = 5000",
                            ] {
                                sqlx::Executor::execute(&mut *conn, pragma).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Engine::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(pg_connections.max(2))
                    .min_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?
            }
        };
        migrate::run(&pool, engine).await?;
        let me: [u8; 8] = crate::crypto::random_bytes()
            .map_err(|e| StoreError::Corrupt(format!("no randomness for a controller id: {e}")))?;
        Ok(Store {
            pool,
            engine,
            sessions: Default::default(),
            changes: Default::default(),
            lead: Default::default(),
            me: hex::encode(me).into(),
            pg_url: (engine == Engine::Postgres).then(|| url.into()),
        })
    }

    /// This store, acting for controller `id` (kept in the controller's data dir, so a
    /// restarted process takes back what its previous one held at once).
    pub fn identified_as(mut self, id: &str) -> Store {
        self.me = id.into();
        self
    }

    /// Takes (or confirms) the lead: one controller of those sharing a database runs the
    /// fleet-wide background work (schedules, health checks, certificates, image
    /// checks). PostgreSQL decides with a session-level advisory lock, released when the
    /// holder's process or connection ends; SQLite has one controller, always the lead.
    pub async fn try_lead(&self) -> Result<bool> {
        if self.engine != Engine::Postgres {
            return Ok(true);
        }
        let mut held = self.lead.lock().await;
        if let Some(conn) = held.as_mut() {
            // Still ours while its connection lives.
            if sqlx::query("SELECT 1").execute(&mut **conn).await.is_ok() {
                return Ok(true);
            }
            *held = None;
        }
        let mut conn = self.pool.acquire().await?;
        // The lock lasts as long as this connection on the server's side. A controller
        // whose machine vanished never closes it: keepalives from the server find the
        // dead peer in about 25 s instead of the kernel's default two hours, and the lead
        // passes on.
        for set in [
            "SET tcp_keepalives_idle = 10",
            "SET tcp_keepalives_interval = 5",
            "SET tcp_keepalives_count = 3",
        ] {
            sqlx::query(set).execute(&mut *conn).await?;
        }
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEAD_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            // Kept out of the pool for as long as the lead is held.
            *held = Some(conn);
        }
        Ok(got)
    }

    /// PostgreSQL: sends `payload` to every listener on `channel` (when this
    /// transaction-less statement commits, at once).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        if self.engine == Engine::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// PostgreSQL: a connection of its own listening on `channel`.
    pub async fn listener(&self, channel: &str) -> Result<sqlx::postgres::PgListener> {
        let url = self
            .pg_url
            .as_deref()
            .ok_or_else(|| StoreError::Unsupported("LISTEN needs PostgreSQL".into()))?;
        let mut l = sqlx::postgres::PgListener::connect(url).await?;
        l.listen(channel).await?;
        Ok(l)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    /// The feed of changes this store has committed.
    pub fn changes(&self) -> &crate::changes::Feed {
        &self.changes
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        // Back to the pool first (closing waits for every connection to come back); the
        // lead ends with the connection.
        drop(self.lead.lock().await.take());
        self.pool.close().await;
    }

    // ---- users -------------------------------------------------------------------

    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Creates the first admin only while there are no users; `None` when one exists.
    pub async fn create_first_admin(
        &self,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<User>> {
        let mut tx = self.pool.begin().await?;
        self.lock_users(&mut tx).await?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, role, created_at, updated_at)
             SELECT $1, $2, 'admin', $3, $3 WHERE NOT EXISTS (SELECT 1 FROM users)
             RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        match id {
            Some(id) => {
                self.changes.changed(crate::changes::Kind::User, id);
                self.user(id).await
            }
            None => Ok(None),
        }
    }

    /// `None` when the username is taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        now: i64,
    ) -> Result<Option<User>> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, role, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => {
                self.changes.changed(crate::changes::Kind::User, id);
                self.user(id).await
            }
            None => Ok(None),
        }
    }

    pub async fn user(&self, id: i64) -> Result<Option<User>> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn credentials_by_name(&self, username: &str) -> Result<Option<Credentials>> {
        let sql =
            format!("SELECT {USER_COLS}, password_hash, totp_secret FROM users WHERE lower(username) = lower($1)");
        let row = sqlx::query(&sql)
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(credentials_from_row).transpose()
    }

    pub async fn credentials_by_id(&self, id: i64) -> Result<Option<Credentials>> {
        let sql =
            format!("SELECT {USER_COLS}, password_hash, totp_secret FROM users WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(credentials_from_row).transpose()
    }

    pub async fn set_password(&self, id: i64, password_hash: &str, now: i64) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(password_hash)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.sessions.remove_user(id);
        Ok(r.rows_affected() == 1)
    }

    /// Statements that read the users table to decide a write (no users yet, more than
    /// one admin) must not interleave: SQLite runs one writer at a time by itself;
    /// PostgreSQL's READ COMMITTED would let two controllers each demote "the other"
    /// admin, so the table is locked against writers for the transaction.
    async fn lock_users(&self, tx: &mut sqlx::AnyConnection) -> Result<()> {
        if self.engine == Engine::Postgres {
            sqlx::query("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// Changes a role in one statement that refuses to demote the last admin.
    pub async fn set_role(&self, id: i64, role: Role, now: i64) -> Result<Guarded> {
        let mut tx = self.pool.begin().await?;
        self.lock_users(&mut tx).await?;
        let r = sqlx::query(
            "UPDATE users SET role = $2, updated_at = $3 WHERE id = $1
               AND (role <> 'admin' OR $2 = 'admin'
                    OR (SELECT COUNT(*) FROM users WHERE role = 'admin') > 1)",
        )
        .bind(id)
        .bind(role.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.sessions.remove_user(id);
        self.guarded(id, r.rows_affected()).await
    }

    /// Deletes a user (and, by cascade, its sessions) unless it is the last admin.
    pub async fn delete_user(&self, id: i64) -> Result<Guarded> {
        let mut tx = self.pool.begin().await?;
        self.lock_users(&mut tx).await?;
        let r = sqlx::query(
            "DELETE FROM users WHERE id = $1
               AND (role <> 'admin' OR (SELECT COUNT(*) FROM users WHERE role = 'admin') > 1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.sessions.remove_user(id);
        self.guarded(id, r.rows_affected()).await
    }

    async fn guarded(&self, id: i64, affected: u64) -> Result<Guarded> {
        if affected == 1 {
            self.changes.changed(crate::changes::Kind::User, id);
            return Ok(Guarded::Done);
        }
        Ok(match self.user(id).await? {
            Some(_) => Guarded::LastAdmin,
            None => Guarded::NotFound,
        })
    }

    pub async fn set_totp_pending(&self, id: i64, sealed: &[u8], now: i64) -> Result<()> {
        sqlx::query("UPDATE users SET totp_pending = $1, updated_at = $2 WHERE id = $3")
            .bind(sealed)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn totp_pending(&self, id: i64) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT totp_pending FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Moves the pending secret into place. The step of the code that proved it is
    /// recorded so that code cannot be replayed at the next login.
    pub async fn enable_totp(&self, id: i64, step: i64, now: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL,
                 totp_last_step = $2, updated_at = $3
             WHERE id = $1 AND totp_pending IS NOT NULL AND totp_secret IS NULL",
        )
        .bind(id)
        .bind(step)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.sessions.remove_user(id);
        self.changes.changed(crate::changes::Kind::User, id);
        Ok(r.rows_affected() == 1)
    }

    pub async fn disable_totp(&self, id: i64, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_last_step = 0,
                 updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.sessions.remove_user(id);
        self.changes.changed(crate::changes::Kind::User, id);
        Ok(())
    }

    /// Records use of a TOTP step; false when that step (or a later one) was used already.
    pub async fn consume_totp_step(&self, id: i64, step: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE users SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2",
        )
        .bind(id)
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- sessions ----------------------------------------------------------------

    pub async fn create_session(
        &self,
        hash: &[u8],
        user_id: i64,
        now: i64,
        expires_at: i64,
        ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, created_at, last_seen, expires_at, ip, user_agent)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(hash)
        .bind(user_id)
        .bind(now)
        .bind(now)
        .bind(expires_at)
        .bind(ip)
        .bind(user_agent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn session(&self, hash: &[u8]) -> Result<Option<SessionUser>> {
        if let Some(hit) = self.sessions.get(&key(hash)) {
            return Ok(Some(hit));
        }
        let seen = self.sessions.generation();
        let row = sqlx::query(
            "SELECT u.id, u.username, u.role, u.totp_secret IS NOT NULL AS totp_enabled,
                    u.created_at, s.last_seen, s.expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let found = SessionUser {
            user: user_from_row(&row)?,
            last_seen: row.try_get("last_seen")?,
            expires_at: row.try_get("expires_at")?,
        };
        self.sessions.put(key(hash), found.clone(), seen);
        Ok(Some(found))
    }

    pub async fn touch_session(&self, hash: &[u8], now: i64) -> Result<()> {
        self.sessions.touch(&key(hash), now);
        sqlx::query("UPDATE sessions SET last_seen = $1 WHERE id_hash = $2")
            .bind(now)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_session(&self, hash: &[u8]) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await?;
        self.sessions.remove(&key(hash));
        Ok(())
    }

    /// Revokes every session of a user except `keep`.
    pub async fn delete_user_sessions(&self, user_id: i64, keep: Option<&[u8]>) -> Result<u64> {
        let r =
            sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id_hash IS DISTINCT FROM $2")
                .bind(user_id)
                .bind(keep)
                .execute(&self.pool)
                .await?;
        self.sessions.remove_user(user_id);
        Ok(r.rows_affected())
    }

    /// Removes sessions past their absolute expiry or idle for longer than `idle_secs`.
    pub async fn purge_sessions(&self, now: i64, idle_secs: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen <= $2")
            .bind(now)
            .bind(now - idle_secs)
            .execute(&self.pool)
            .await?;
        self.sessions.clear();
        Ok(r.rows_affected())
    }

    // ---- audit -------------------------------------------------------------------

    pub async fn audit(&self, rec: &NewAudit, at_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at_ms, actor_id, actor, action, target, outcome, status, ip, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(at_ms)
        .bind(rec.actor_id)
        .bind(&rec.actor)
        .bind(&rec.action)
        .bind(&rec.target)
        .bind(rec.outcome)
        .bind(i64::from(rec.status))
        .bind(&rec.ip)
        .bind(&rec.reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes audit records older than `before_ms`; returns how many went.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM audit_log WHERE at_ms < $1")
            .bind(before_ms)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    /// A page of the audit log, newest first, and the total count of what the filter matches.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter<'_>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<AuditRecord>, i64)> {
        const WHERE: &str = "WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2)
             AND ($3 IS NULL OR outcome = $3)";
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM audit_log {WHERE}"))
            .bind(filter.actor)
            .bind(filter.action)
            .bind(filter.outcome)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT id, at_ms, actor_id, actor, action, target, outcome, status, ip, reason
             FROM audit_log {WHERE} ORDER BY id DESC LIMIT $4 OFFSET $5"
        ))
        .bind(filter.actor)
        .bind(filter.action)
        .bind(filter.outcome)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    actor_id: r.try_get("actor_id")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    outcome: r.try_get("outcome")?,
                    status: r.try_get("status")?,
                    ip: r.try_get("ip")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((items, total))
    }
}
