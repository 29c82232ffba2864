//! Servers, join tokens, agent certificates and controller settings.

use super::{Result, Store, StoreError};
use serde_json::Value;
use sqlx::{AnyPool, Row};

#[derive(Debug, Clone)]
pub struct ServerRow {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub port: i64,
    pub username: Option<String>,
    pub auth_type: String,
    pub tags: Vec<String>,
    pub status: String,
    pub status_detail: Option<String>,
    pub last_seen: Option<i64>,
    pub agent_version: Option<String>,
    pub facts: Option<Value>,
    pub metrics: Option<Value>,
    pub enrolled_at: Option<i64>,
    pub cert_not_after: Option<i64>,
    pub created_at: i64,
    pub host_key_fingerprint: Option<String>,
    pub has_credentials: bool,
    pub upgrade: Option<AgentUpgrade>,
    /// The controller holding its agent's session (while online).
    pub controller_id: Option<String>,
}

/// A server's last agent upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUpgrade {
    /// `upgrading | succeeded | rolled_back | failed | skipped`.
    pub status: String,
    pub from: Option<String>,
    pub to: String,
    pub error: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewServer<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub port: i64,
    pub username: Option<&'a str>,
    pub auth_type: &'a str,
    pub tags: &'a [String],
}

#[derive(Debug, Clone, Default)]
pub struct ServerPatch {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub username: Option<String>,
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct JoinTokenRow {
    pub server_id: i64,
    pub secret_hash: Vec<u8>,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// Result of a write that may collide with another server's name.
#[derive(Debug)]
pub enum Written<T> {
    Done(T),
    NotFound,
    NameTaken,
}

const SERVER_COLS: &str = "id, name, host, port, username, auth_type, tags, status, status_detail,
    last_seen, agent_version, facts, metrics, enrolled_at, cert_not_after, created_at,
    host_key_fingerprint, ssh_credentials IS NOT NULL AS has_credentials, upgrade_status,
    upgrade_from, upgrade_to, upgrade_error, upgrade_started_at, upgrade_ended_at, controller_id";

fn json_col(row: &sqlx::any::AnyRow, col: &str) -> Result<Option<Value>> {
    let raw: Option<String> = row.try_get(col)?;
    raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn server_from_row(row: &sqlx::any::AnyRow) -> Result<ServerRow> {
    let tags: String = row.try_get("tags")?;
    Ok(ServerRow {
        controller_id: row.try_get("controller_id")?,
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        host: row.try_get("host")?,
        port: row.try_get("port")?,
        username: row.try_get("username")?,
        auth_type: row.try_get("auth_type")?,
        tags: serde_json::from_str(&tags).map_err(|e| StoreError::Corrupt(format!("tags: {e}")))?,
        status: row.try_get("status")?,
        status_detail: row.try_get("status_detail")?,
        last_seen: row.try_get("last_seen")?,
        agent_version: row.try_get("agent_version")?,
        facts: json_col(row, "facts")?,
        metrics: json_col(row, "metrics")?,
        enrolled_at: row.try_get("enrolled_at")?,
        cert_not_after: row.try_get("cert_not_after")?,
        created_at: row.try_get("created_at")?,
        host_key_fingerprint: row.try_get("host_key_fingerprint")?,
        has_credentials: super::flag(row, "has_credentials")?,
        upgrade: match row.try_get::<Option<String>, _>("upgrade_status")? {
            None => None,
            Some(status) => Some(AgentUpgrade {
                status,
                from: row.try_get("upgrade_from")?,
                to: row
                    .try_get::<Option<String>, _>("upgrade_to")?
                    .unwrap_or_default(),
                error: row.try_get("upgrade_error")?,
                started_at: row
                    .try_get::<Option<i64>, _>("upgrade_started_at")?
                    .unwrap_or(0),
                ended_at: row.try_get("upgrade_ended_at")?,
            }),
        },
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn tags_json(tags: &[String]) -> String {
    Value::from(tags.to_vec()).to_string()
}

/// What deleting a server did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerDelete {
    /// Deleted; the serials of the certificates that were revoked.
    Deleted(Vec<String>),
    NotFound,
    /// Workflows run on it (their names): nothing was deleted.
    HasWorkflows(Vec<String>),
}

impl Store {
    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Tests: runs raw SQL (a trigger that makes a write fail, say).
    #[cfg(test)]
    pub(crate) async fn execute_raw(&self, sql: &str) -> Result<()> {
        sqlx::raw_sql(sql).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_server(&self, new: &NewServer<'_>, now: i64) -> Result<Option<ServerRow>> {
        let r = sqlx::query_scalar::<_, i64>(
            "INSERT INTO servers (name, host, port, username, auth_type, tags, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(new.name)
        .bind(new.host)
        .bind(new.port)
        .bind(new.username)
        .bind(new.auth_type)
        .bind(tags_json(new.tags))
        .bind(now)
        .bind(now)
        .fetch_one(self.pool())
        .await;
        match r {
            Ok(id) => {
                self.changes.changed(crate::changes::Kind::Server, id);
                self.server(id).await
            }
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn server(&self, id: i64) -> Result<Option<ServerRow>> {
        let row = sqlx::query(&format!("SELECT {SERVER_COLS} FROM servers WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(server_from_row).transpose()
    }

    pub async fn servers(&self) -> Result<Vec<ServerRow>> {
        let rows = sqlx::query(&format!("SELECT {SERVER_COLS} FROM servers ORDER BY id"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(server_from_row).collect()
    }

    pub async fn server_exists(&self, id: i64) -> Result<bool> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM servers WHERE id = $1")
                .bind(id)
                .fetch_one(self.pool())
                .await?
                > 0,
        )
    }

    pub async fn update_server(
        &self,
        id: i64,
        patch: &ServerPatch,
        now: i64,
    ) -> Result<Written<ServerRow>> {
        let r = sqlx::query(
            "UPDATE servers SET
                 name = COALESCE($2, name), host = COALESCE($3, host), port = COALESCE($4, port),
                 username = COALESCE($5, username), tags = COALESCE($6, tags), updated_at = $7
             WHERE id = $1",
        )
        .bind(id)
        .bind(&patch.name)
        .bind(&patch.host)
        .bind(patch.port)
        .bind(&patch.username)
        .bind(patch.tags.as_deref().map(tags_json))
        .bind(now)
        .execute(self.pool())
        .await;
        match r {
            Ok(r) if r.rows_affected() == 0 => Ok(Written::NotFound),
            Ok(_) => Ok(match self.server(id).await? {
                Some(s) => {
                    self.changes.changed(crate::changes::Kind::Server, id);
                    Written::Done(s)
                }
                None => Written::NotFound,
            }),
            Err(e) if is_unique_violation(&e) => Ok(Written::NameTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a server and revokes its certificates, unless workflows run on it (their
    /// history would go with it): then nothing changes and their names come back. The
    /// first statement writes, so the transaction holds the write lock from the start and
    /// no workflow can be created on the server between the check and the delete.
    pub async fn delete_server(&self, id: i64, now: i64) -> Result<ServerDelete> {
        let mut tx = self.pool().begin().await?;
        let serials: Vec<String> = sqlx::query_scalar(
            "UPDATE agent_certs SET revoked_at = $2
             WHERE server_id = $1 AND revoked_at IS NULL RETURNING serial",
        )
        .bind(id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let workflows: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM workflows WHERE server_id = $1 ORDER BY lower(name), name",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if !workflows.is_empty() {
            tx.rollback().await?;
            return Ok(ServerDelete::HasWorkflows(workflows));
        }
        let gone = sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            tx.rollback().await?;
            return Ok(ServerDelete::NotFound);
        }
        tx.commit().await?;
        self.changes.changed(crate::changes::Kind::Server, id);
        Ok(ServerDelete::Deleted(serials))
    }

    /// Stores a new join token for a server; its older unused tokens stop working.
    pub async fn create_join_token(
        &self,
        server_id: i64,
        token_id: &str,
        secret_hash: &[u8],
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM join_tokens WHERE server_id = $1 AND used_at IS NULL")
            .bind(server_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO join_tokens (id, server_id, secret_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_id)
        .bind(server_id)
        .bind(secret_hash)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn join_token(&self, token_id: &str) -> Result<Option<JoinTokenRow>> {
        let row = sqlx::query(
            "SELECT server_id, secret_hash, expires_at, used_at FROM join_tokens WHERE id = $1",
        )
        .bind(token_id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(JoinTokenRow {
            server_id: row.try_get("server_id")?,
            secret_hash: row.try_get("secret_hash")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
        }))
    }

    /// Marks a token used; false if it was used or expired in the meantime.
    pub async fn use_join_token(&self, token_id: &str, now: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE join_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(token_id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records an issued certificate. With `replace`, the server's earlier certificates
    /// are revoked (a fresh enrollment replaces the old identity); their serials return.
    pub async fn record_cert(
        &self,
        serial: &str,
        server_id: i64,
        issued_at: i64,
        not_after: i64,
        replace: bool,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool().begin().await?;
        let revoked: Vec<String> = if replace {
            sqlx::query_scalar(
                "UPDATE agent_certs SET revoked_at = $2
                 WHERE server_id = $1 AND revoked_at IS NULL RETURNING serial",
            )
            .bind(server_id)
            .bind(issued_at)
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        sqlx::query(
            "INSERT INTO agent_certs (serial, server_id, issued_at, not_after) VALUES ($1, $2, $3, $4)",
        )
        .bind(serial)
        .bind(server_id)
        .bind(issued_at)
        .bind(not_after)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE servers SET cert_not_after = $2, enrolled_at = COALESCE($3, enrolled_at),
                 updated_at = $4 WHERE id = $1",
        )
        .bind(server_id)
        .bind(not_after)
        .bind(replace.then_some(issued_at))
        .bind(issued_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Serials revoked and not yet expired (expired ones fail validation anyway).
    pub async fn revoked_serials(&self, now: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT serial FROM agent_certs WHERE revoked_at IS NOT NULL AND not_after > $1",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?)
    }

    /// Revokes the server's certificates issued before `serial` (the one its agent just
    /// proved it holds): a renewal supersedes them. Later ones are kept — the agent may be
    /// holding one whose answer it has not stored yet. Returns the serials revoked.
    pub async fn revoke_superseded(
        &self,
        server_id: i64,
        serial: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        // The order of issue: SQLite's rowid, PostgreSQL's `seq` identity column.
        let order = self.engine.pick("rowid", "seq");
        Ok(sqlx::query_scalar(&format!(
            "UPDATE agent_certs SET revoked_at = $3
             WHERE server_id = $1 AND revoked_at IS NULL
               AND {order} < (SELECT {order} FROM agent_certs WHERE serial = $2 AND server_id = $1)
             RETURNING serial"
        ))
        .bind(server_id)
        .bind(serial)
        .bind(now)
        .fetch_all(self.pool())
        .await?)
    }

    /// True while `serial` belongs to an existing server and is not revoked.
    pub async fn cert_active(&self, serial: &str, server_id: i64) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM agent_certs c JOIN servers s ON s.id = c.server_id
             WHERE c.serial = $1 AND c.server_id = $2 AND c.revoked_at IS NULL",
        )
        .bind(serial)
        .bind(server_id)
        .fetch_one(self.pool())
        .await?
            > 0)
    }

    /// The agent attached with `agent_version`. An upgrade under way ends here: rolled
    /// back when the agent says so (`rolled_back`: why), succeeded when it came back on
    /// the version it was sent, failed otherwise.
    pub async fn set_server_online(
        &self,
        id: i64,
        agent_version: &str,
        facts: &Value,
        now: i64,
        rolled_back: &str,
    ) -> Result<()> {
        // SET expressions read the row as it was, so every CASE sees the old status.
        sqlx::query(
            "UPDATE servers SET status = 'online', status_detail = NULL, agent_version = $2,
                 facts = $3, last_seen = $4, updated_at = $4, controller_id = $6,
                 upgrade_status = CASE WHEN upgrade_status IS DISTINCT FROM 'upgrading'
                         THEN upgrade_status
                     WHEN $5 <> '' THEN 'rolled_back'
                     WHEN upgrade_to = $2 THEN 'succeeded' ELSE 'failed' END,
                 upgrade_error = CASE WHEN upgrade_status IS DISTINCT FROM 'upgrading'
                         THEN upgrade_error
                     WHEN $5 <> '' THEN $5
                     WHEN upgrade_to = $2 THEN NULL
                     ELSE 'the agent came back on version ' || $2 || ' without trying the new one' END,
                 upgrade_ended_at = CASE WHEN upgrade_status IS DISTINCT FROM 'upgrading'
                         THEN upgrade_ended_at ELSE $4 END
             WHERE id = $1",
        )
        .bind(id)
        .bind(agent_version)
        .bind(facts.to_string())
        .bind(now)
        .bind(rolled_back)
        .bind(&*self.me)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Server, id);
        Ok(())
    }

    /// The agent's session on this controller ended (`why`). Only while this controller
    /// is still its holder: an agent that has meanwhile attached to another controller
    /// stays online there.
    pub async fn set_server_offline(&self, id: i64, why: &str, now: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE servers SET status = 'offline', status_detail = $2, controller_id = NULL, updated_at = $3
             WHERE id = $1 AND (controller_id = $4 OR controller_id IS NULL)",
        )
        .bind(id)
        .bind(why)
        .bind(now)
        .bind(&*self.me)
        .execute(self.pool())
        .await?;
        if r.rows_affected() > 0 {
            self.changes.changed(crate::changes::Kind::Server, id);
        }
        Ok(r.rows_affected() > 0)
    }

    /// Marks an upgrade of server `id` to `to` as under way, unless one is already
    /// (started after `stale_before`). False when one is.
    pub async fn begin_agent_upgrade(
        &self,
        id: i64,
        from: Option<&str>,
        to: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE servers SET upgrade_status = 'upgrading', upgrade_from = $2, upgrade_to = $3,
                 upgrade_error = NULL, upgrade_started_at = $4, upgrade_ended_at = NULL
             WHERE id = $1 AND (upgrade_status IS DISTINCT FROM 'upgrading'
                 OR upgrade_started_at < $5)",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(now)
        .bind(stale_before)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1;
        if done {
            self.changes.changed(crate::changes::Kind::Server, id);
        }
        Ok(done)
    }

    /// Ends server `id`'s upgrade as `status` (`failed`, `skipped`) if it is still under
    /// way (or, for `skipped`, whatever it was).
    pub async fn end_agent_upgrade(
        &self,
        id: i64,
        status: &str,
        error: &str,
        now: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE servers SET upgrade_status = $2, upgrade_error = $3, upgrade_ended_at = $4
             WHERE id = $1 AND upgrade_status = 'upgrading'",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected();
        if done == 1 {
            self.changes.changed(crate::changes::Kind::Server, id);
        }
        Ok(())
    }

    /// Records that server `id` was not upgraded to `to` (`why`), as a finished upgrade.
    pub async fn skip_agent_upgrade(&self, id: i64, to: &str, why: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE servers SET upgrade_status = 'skipped', upgrade_from = agent_version,
                 upgrade_to = $2, upgrade_error = $3, upgrade_started_at = $4, upgrade_ended_at = $4
             WHERE id = $1 AND upgrade_status IS DISTINCT FROM 'upgrading'",
        )
        .bind(id)
        .bind(to)
        .bind(why)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Server, id);
        Ok(())
    }

    pub async fn set_server_status(
        &self,
        id: i64,
        status: &str,
        detail: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE servers SET status = $2, status_detail = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(detail)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Server, id);
        Ok(())
    }

    /// `set_server_status`, unless the server is online already (its agent attached
    /// first).
    pub async fn set_server_status_unless_online(
        &self,
        id: i64,
        status: &str,
        detail: &str,
        now: i64,
    ) -> Result<()> {
        let r = sqlx::query(
            "UPDATE servers SET status = $2, status_detail = $3, updated_at = $4
             WHERE id = $1 AND status <> 'online'",
        )
        .bind(id)
        .bind(status)
        .bind(detail)
        .bind(now)
        .execute(self.pool())
        .await?;
        if r.rows_affected() > 0 {
            self.changes.changed(crate::changes::Kind::Server, id);
        }
        Ok(())
    }

    /// Writes the latest heartbeat of many servers in a single statement (one round
    /// trip to the database thread however large the fleet).
    pub async fn flush_heartbeats(&self, beats: &[(i64, i64, Value)]) -> Result<()> {
        if beats.is_empty() {
            return Ok(());
        }
        let batch: Vec<Value> = beats
            .iter()
            .map(|(id, seen, metrics)| serde_json::json!({ "id": id, "s": seen, "m": metrics }))
            .collect();
        sqlx::query(self.engine.pick(
            "UPDATE servers SET last_seen = b.value ->> '$.s', metrics = b.value -> '$.m'
             FROM json_each($1) AS b WHERE servers.id = b.value ->> '$.id'",
            "UPDATE servers SET last_seen = (b.value ->> 's')::BIGINT, metrics = (b.value -> 'm')::TEXT
             FROM jsonb_array_elements($1::jsonb) AS b(value) WHERE servers.id = (b.value ->> 'id')::BIGINT",
        ))
        .bind(Value::Array(batch).to_string())
        .execute(self.pool())
        .await?;
        for (id, _, metrics) in beats {
            if !metrics.is_null() {
                self.changes.metrics(*id, metrics.clone());
            }
        }
        Ok(())
    }

    pub async fn set_host_key(&self, id: i64, fingerprint: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE servers SET host_key_fingerprint = $1 WHERE id = $2")
            .bind(fingerprint)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Whether the server has an agent certificate that is not revoked (it is enrolled).
    pub async fn is_enrolled(&self, id: i64) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM agent_certs WHERE server_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_one(self.pool())
        .await?
            > 0)
    }

    /// Stores (or with `None`, forgets) sealed SSH credentials.
    pub async fn set_ssh_credentials(&self, id: i64, sealed: Option<&[u8]>) -> Result<()> {
        sqlx::query("UPDATE servers SET ssh_credentials = $1 WHERE id = $2")
            .bind(sealed)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn ssh_credentials(&self, id: i64) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT ssh_credentials FROM servers WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .flatten(),
        )
    }

    /// Appends an event and keeps the latest 100 per server.
    pub async fn add_event(&self, id: i64, message: &str, at_ms: i64) -> Result<()> {
        sqlx::query("INSERT INTO server_events (server_id, at_ms, message) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(at_ms)
            .bind(message)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "DELETE FROM server_events WHERE server_id = $1 AND id <= (
                 SELECT id FROM server_events WHERE server_id = $1 ORDER BY id DESC LIMIT 1 OFFSET 100)",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The latest `limit` events, newest first: `(at_ms, message)`.
    pub async fn events(&self, id: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT at_ms, message FROM server_events WHERE server_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("at_ms")?, r.try_get("message")?)))
            .collect()
    }

    /// `(public key line, sealed private key)` of the server's deploy key.
    pub async fn deploy_key(&self, id: i64) -> Result<Option<(String, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT deploy_key_public, deploy_key FROM servers WHERE id = $1 AND deploy_key IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((r.try_get("deploy_key_public")?, r.try_get("deploy_key")?)))
            .transpose()
    }

    /// Stores a deploy key. With `only_if_absent`, a key another request stored first is
    /// kept (two first calls agree on one key); returns whether this one was stored.
    pub async fn set_deploy_key(
        &self,
        id: i64,
        public: &str,
        sealed: &[u8],
        only_if_absent: bool,
    ) -> Result<bool> {
        let sql = if only_if_absent {
            "UPDATE servers SET deploy_key_public = $2, deploy_key = $3 WHERE id = $1 AND deploy_key IS NULL"
        } else {
            "UPDATE servers SET deploy_key_public = $2, deploy_key = $3 WHERE id = $1"
        };
        let r = sqlx::query(sql)
            .bind(id)
            .bind(public)
            .bind(sealed)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Inserts `key` only if absent; returns the value now stored (first writer wins).
    pub async fn setting_insert(&self, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(self.pool())
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_one(self.pool())
                .await?,
        )
    }
}
