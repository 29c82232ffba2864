//! Domains, pools and their members. Values are validated by the pools service before they
//! get here; a pool's settings are written whole, in one statement, so a change either
//! lands entirely or not at all.

use super::{Result, Store};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRow {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    /// The DNS zone it is linked to: (provider, zone) — a Cloudflare zone id, or the
    /// zone's domain name at DigitalOcean and Hostinger.
    pub dns: Option<(String, String)>,
    pub dns_address: Option<String>,
    pub dns_synced_at: Option<i64>,
    pub dns_error: Option<String>,
}

/// Everything about a pool a user sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub name: String,
    pub workflow_id: Option<i64>,
    pub domain_id: Option<i64>,
    pub edge_server_id: Option<i64>,
    pub min_replicas: i64,
    pub max_replicas: i64,
    pub lb_strategy: String,
    pub sticky_cookie: Option<String>,
    pub listen_port: i64,
    pub target_port: i64,
    pub health_path: String,
    pub health_interval_s: i64,
    pub health_timeout_s: i64,
    pub unhealthy_after: i64,
    pub healthy_after: i64,
    pub health_grace_s: i64,
    pub client_max_body_mb: i64,
    pub connect_timeout_s: i64,
    pub read_timeout_s: i64,
    pub keepalive: i64,
    pub drain_timeout_s: i64,
    /// HTTPS with a certificate from ACME for the pool's domain.
    pub tls_enabled: bool,
    /// `http-01` (the edge answers the CA) or `dns-01` (a TXT record at the domain's
    /// DNS provider).
    pub tls_challenge: String,
    pub tls_port: i64,
}

#[derive(Debug, Clone)]
pub struct PoolRow {
    pub id: i64,
    pub settings: PoolSettings,
    pub lb_applied_at: Option<i64>,
    pub lb_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub pool_id: i64,
    pub server_id: i64,
    pub weight: i64,
    pub state: String,
    pub last_run_id: Option<i64>,
    pub last_health_at: Option<i64>,
    pub health_detail: Option<String>,
    pub added_at: i64,
}

const POOL_COLS: &str =
    "id, name, workflow_id, domain_id, edge_server_id, min_replicas, max_replicas,
    lb_strategy, sticky_cookie, listen_port, target_port, health_path, health_interval_s,
    health_timeout_s, unhealthy_after, healthy_after, health_grace_s, client_max_body_mb, connect_timeout_s,
    read_timeout_s, keepalive, drain_timeout_s, tls_enabled, tls_challenge, tls_port,
    lb_applied_at, lb_error, created_at, updated_at";

const MEMBER_COLS: &str =
    "pool_id, server_id, weight, state, last_run_id, last_health_at, health_detail, added_at";

fn pool_from(r: &sqlx::any::AnyRow) -> Result<PoolRow> {
    Ok(PoolRow {
        id: r.try_get("id")?,
        settings: PoolSettings {
            name: r.try_get("name")?,
            workflow_id: r.try_get("workflow_id")?,
            domain_id: r.try_get("domain_id")?,
            edge_server_id: r.try_get("edge_server_id")?,
            min_replicas: r.try_get("min_replicas")?,
            max_replicas: r.try_get("max_replicas")?,
            lb_strategy: r.try_get("lb_strategy")?,
            sticky_cookie: r.try_get("sticky_cookie")?,
            listen_port: r.try_get("listen_port")?,
            target_port: r.try_get("target_port")?,
            health_path: r.try_get("health_path")?,
            health_interval_s: r.try_get("health_interval_s")?,
            health_timeout_s: r.try_get("health_timeout_s")?,
            unhealthy_after: r.try_get("unhealthy_after")?,
            healthy_after: r.try_get("healthy_after")?,
            health_grace_s: r.try_get("health_grace_s")?,
            client_max_body_mb: r.try_get("client_max_body_mb")?,
            connect_timeout_s: r.try_get("connect_timeout_s")?,
            read_timeout_s: r.try_get("read_timeout_s")?,
            keepalive: r.try_get("keepalive")?,
            drain_timeout_s: r.try_get("drain_timeout_s")?,
            tls_enabled: super::flag(r, "tls_enabled")?,
            tls_challenge: r.try_get("tls_challenge")?,
            tls_port: r.try_get("tls_port")?,
        },
        lb_applied_at: r.try_get("lb_applied_at")?,
        lb_error: r.try_get("lb_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn member_from(r: &sqlx::any::AnyRow) -> Result<MemberRow> {
    Ok(MemberRow {
        pool_id: r.try_get("pool_id")?,
        server_id: r.try_get("server_id")?,
        weight: r.try_get("weight")?,
        state: r.try_get("state")?,
        last_run_id: r.try_get("last_run_id")?,
        last_health_at: r.try_get("last_health_at")?,
        health_detail: r.try_get("health_detail")?,
        added_at: r.try_get("added_at")?,
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    pub async fn domains(&self) -> Result<Vec<DomainRow>> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, dns_provider, dns_zone, dns_address, dns_synced_at,
                    dns_error FROM domains ORDER BY lower(name), name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let provider: Option<String> = r.try_get("dns_provider")?;
                let zone: Option<String> = r.try_get("dns_zone")?;
                Ok(DomainRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    dns: provider.zip(zone),
                    dns_address: r.try_get("dns_address")?,
                    dns_synced_at: r.try_get("dns_synced_at")?,
                    dns_error: r.try_get("dns_error")?,
                })
            })
            .collect()
    }

    pub async fn domain(&self, id: i64) -> Result<Option<DomainRow>> {
        Ok(self.domains().await?.into_iter().find(|d| d.id == id))
    }

    /// `None` when the name is taken.
    pub async fn create_domain(&self, name: &str, now: i64) -> Result<Option<i64>> {
        match sqlx::query_scalar::<_, i64>(
            "INSERT INTO domains (name, created_at) VALUES ($1, $2) RETURNING id",
        )
        .bind(name)
        .bind(now)
        .fetch_one(self.pool())
        .await
        {
            Ok(id) => Ok(Some(id)),
            Err(e) if unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Links a domain to a DNS zone (or unlinks it with `None`); what was written for the
    /// old link is forgotten.
    pub async fn link_domain(&self, id: i64, dns: Option<(&str, &str)>) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE domains SET dns_provider = $1, dns_zone = $2, dns_address = NULL,
                dns_synced_at = NULL, dns_error = NULL WHERE id = $3",
        )
        .bind(dns.map(|d| d.0))
        .bind(dns.map(|d| d.1))
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Records a sync of the domain's record: the address written (and when), or why not.
    pub async fn set_domain_dns(
        &self,
        id: i64,
        address: Option<&str>,
        synced_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE domains SET dns_address = $1, dns_synced_at = $2, dns_error = $3 WHERE id = $4",
        )
        .bind(address)
        .bind(synced_at)
        .bind(error)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The pools still pointing at the domain (it is deleted only when there are none).
    pub async fn delete_domain(&self, id: i64) -> Result<std::result::Result<bool, Vec<String>>> {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM pools WHERE domain_id = $1 ORDER BY lower(name), name",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        if !users.is_empty() {
            return Ok(Err(users));
        }
        let r = sqlx::query("DELETE FROM domains WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(Ok(r.rows_affected() > 0))
    }

    pub async fn pool_rows(&self) -> Result<Vec<PoolRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {POOL_COLS} FROM pools ORDER BY lower(name), name"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(pool_from).collect()
    }

    pub async fn pool_row(&self, id: i64) -> Result<Option<PoolRow>> {
        let row = sqlx::query(&format!("SELECT {POOL_COLS} FROM pools WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(pool_from).transpose()
    }

    /// `None` when the name is taken.
    pub async fn create_pool(&self, s: &PoolSettings, now: i64) -> Result<Option<i64>> {
        let q = sqlx::query(
            "INSERT INTO pools (name, workflow_id, domain_id, edge_server_id, min_replicas,
                max_replicas, lb_strategy, sticky_cookie, listen_port, target_port, health_path,
                health_interval_s, health_timeout_s, unhealthy_after, healthy_after,
                health_grace_s, client_max_body_mb, connect_timeout_s, read_timeout_s,
                keepalive, drain_timeout_s, tls_enabled, tls_challenge, tls_port, created_at,
                updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)
             RETURNING id",
        );
        match bind_settings(q, s)
            .bind(now)
            .bind(now)
            .fetch_one(self.pool())
            .await
        {
            Ok(row) => {
                let id: i64 = row.try_get("id")?;
                self.changes.changed(crate::changes::Kind::Pool, id);
                Ok(Some(id))
            }
            Err(e) if unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a pool's settings and its members' weights in one transaction; `Ok(false)`
    /// (and nothing written) when the name is taken by another pool.
    pub async fn update_pool(
        &self,
        id: i64,
        s: &PoolSettings,
        weights: &[(i64, i64)],
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let q = sqlx::query(
            "UPDATE pools SET name = $1, workflow_id = $2, domain_id = $3, edge_server_id = $4,
                min_replicas = $5, max_replicas = $6, lb_strategy = $7, sticky_cookie = $8,
                listen_port = $9, target_port = $10, health_path = $11, health_interval_s = $12,
                health_timeout_s = $13, unhealthy_after = $14, healthy_after = $15,
                health_grace_s = $16, client_max_body_mb = $17, connect_timeout_s = $18, read_timeout_s = $19,
                keepalive = $20, drain_timeout_s = $21, tls_enabled = $22, tls_challenge = $23,
                tls_port = $24, updated_at = $25
             WHERE id = $26",
        );
        match bind_settings(q, s)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
        {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        for (server, weight) in weights {
            sqlx::query(
                "UPDATE pool_members SET weight = $1 WHERE pool_id = $2 AND server_id = $3",
            )
            .bind(weight)
            .bind(id)
            .bind(server)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.changes.changed(crate::changes::Kind::Pool, id);
        Ok(true)
    }

    pub async fn delete_pool(&self, id: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM pools WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        self.changes.changed(crate::changes::Kind::Pool, id);
        Ok(r.rows_affected() > 0)
    }

    /// Records the last apply on the edge: success (`error` None) or why not.
    pub async fn set_pool_lb(&self, id: i64, error: Option<&str>, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE pools SET lb_applied_at = CASE WHEN $1 IS NULL THEN $2 ELSE lb_applied_at END,
                lb_error = $1 WHERE id = $3",
        )
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Pool, id);
        Ok(())
    }

    pub async fn pool_members(&self, pool_id: i64) -> Result<Vec<MemberRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {MEMBER_COLS} FROM pool_members WHERE pool_id = $1 ORDER BY added_at, server_id",
        ))
        .bind(pool_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(member_from).collect()
    }

    /// Every pool's members (for the list's counts and the health checker).
    pub async fn all_members(&self) -> Result<Vec<MemberRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {MEMBER_COLS} FROM pool_members ORDER BY pool_id, added_at, server_id",
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(member_from).collect()
    }

    /// Adds a member in `deploying`, if the pool has fewer than `max` members; `Ok(false)`
    /// when it is full or the server is already a member.
    pub async fn add_member(
        &self,
        pool_id: i64,
        server_id: i64,
        max: i64,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO pool_members (pool_id, server_id, weight, state, added_at)
             SELECT $1, $2, 1, 'deploying', $3
             WHERE (SELECT COUNT(*) FROM pool_members WHERE pool_id = $1) < $4
             ON CONFLICT DO NOTHING",
        )
        .bind(pool_id)
        .bind(server_id)
        .bind(now)
        .bind(max)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_member_run(&self, pool_id: i64, server_id: i64, run_id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE pool_members SET last_run_id = $1, state = 'deploying' WHERE pool_id = $2 AND server_id = $3",
        )
        .bind(run_id)
        .bind(pool_id)
        .bind(server_id)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(())
    }

    /// Sets a member's state (and, when given, its health detail and check time).
    pub async fn set_member_state(
        &self,
        pool_id: i64,
        server_id: i64,
        state: &str,
        detail: Option<&str>,
        checked_at: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE pool_members SET state = $1, health_detail = COALESCE($2, health_detail),
                last_health_at = COALESCE($3, last_health_at)
             WHERE pool_id = $4 AND server_id = $5",
        )
        .bind(state)
        .bind(detail)
        .bind(checked_at)
        .bind(pool_id)
        .bind(server_id)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(())
    }

    /// Records a health check that changed nothing (not announced: it happens every
    /// interval for every member).
    pub async fn touch_member_health(
        &self,
        pool_id: i64,
        server_id: i64,
        detail: &str,
        at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE pool_members SET health_detail = $1, last_health_at = $2 WHERE pool_id = $3 AND server_id = $4",
        )
        .bind(detail)
        .bind(at)
        .bind(pool_id)
        .bind(server_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn remove_member(&self, pool_id: i64, server_id: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM pool_members WHERE pool_id = $1 AND server_id = $2")
            .bind(pool_id)
            .bind(server_id)
            .execute(self.pool())
            .await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(r.rows_affected() > 0)
    }

    /// The member a run deploys, if it deploys one.
    pub async fn member_of_run(&self, run_id: i64) -> Result<Option<MemberRow>> {
        let row = sqlx::query(&format!(
            "SELECT {MEMBER_COLS} FROM pool_members WHERE last_run_id = $1",
        ))
        .bind(run_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(member_from).transpose()
    }
}

#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: i64,
    pub pool_id: i64,
    pub status: String,
    pub max_unavailable: i64,
    pub trigger_detail: serde_json::Value,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct RolloutMemberRow {
    pub server_id: i64,
    pub position: i64,
    pub status: String,
    pub run_id: Option<i64>,
    pub detail: Option<String>,
}

impl Store {
    /// Starts a rollout over `members` (in order), unless one is running for the pool:
    /// `None` then.
    pub async fn create_rollout(
        &self,
        pool_id: i64,
        max_unavailable: i64,
        detail: &serde_json::Value,
        members: &[i64],
        now: i64,
    ) -> Result<Option<i64>> {
        let mut tx = self.pool().begin().await?;
        let running: Option<i64> =
            sqlx::query_scalar("SELECT id FROM rollouts WHERE pool_id = $1 AND status = 'running'")
                .bind(pool_id)
                .fetch_optional(&mut *tx)
                .await?;
        if running.is_some() {
            return Ok(None);
        }
        // Two controllers starting one at the same instant: PostgreSQL's partial unique
        // index lets one in (SQLite serialises the transactions).
        let id = match sqlx::query_scalar::<_, i64>(
            "INSERT INTO rollouts (pool_id, status, max_unavailable, trigger_detail, created_at, driver)
             VALUES ($1, 'running', $2, $3, $4, $5) RETURNING id",
        )
        .bind(pool_id)
        .bind(max_unavailable)
        .bind(detail.to_string())
        .bind(now)
        .bind(self.controller_id())
        .fetch_one(&mut *tx)
        .await
        {
            Ok(id) => id,
            Err(e) if unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for (i, server) in members.iter().enumerate() {
            sqlx::query(
                "INSERT INTO rollout_members (rollout_id, server_id, position, status) VALUES ($1, $2, $3, 'pending')",
            )
            .bind(id)
            .bind(server)
            .bind(i as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(Some(id))
    }

    pub async fn rollout(&self, id: i64) -> Result<Option<(RolloutRow, Vec<RolloutMemberRow>)>> {
        let Some(r) = sqlx::query(
            "SELECT id, pool_id, status, max_unavailable, trigger_detail, error, created_at, finished_at
             FROM rollouts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        else {
            return Ok(None);
        };
        let detail: String = r.try_get("trigger_detail")?;
        let row = RolloutRow {
            id: r.try_get("id")?,
            pool_id: r.try_get("pool_id")?,
            status: r.try_get("status")?,
            max_unavailable: r.try_get("max_unavailable")?,
            trigger_detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            error: r.try_get("error")?,
            created_at: r.try_get("created_at")?,
            finished_at: r.try_get("finished_at")?,
        };
        let members = sqlx::query(
            "SELECT server_id, position, status, run_id, detail FROM rollout_members
             WHERE rollout_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|m| {
            Ok(RolloutMemberRow {
                server_id: m.try_get("server_id")?,
                position: m.try_get("position")?,
                status: m.try_get("status")?,
                run_id: m.try_get("run_id")?,
                detail: m.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(Some((row, members)))
    }

    pub async fn set_rollout_member(
        &self,
        rollout_id: i64,
        pool_id: i64,
        server_id: i64,
        status: &str,
        run_id: Option<i64>,
        detail: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE rollout_members SET status = $1, run_id = COALESCE($2, run_id), detail = COALESCE($3, detail)
             WHERE rollout_id = $4 AND server_id = $5",
        )
        .bind(status)
        .bind(run_id)
        .bind(detail)
        .bind(rollout_id)
        .bind(server_id)
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(())
    }

    /// Ends a rollout (once: a finished rollout keeps its outcome); members still pending
    /// are marked skipped.
    pub async fn finish_rollout(
        &self,
        id: i64,
        pool_id: i64,
        status: &str,
        error: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE rollouts SET status = $1, error = $2, finished_at = $3 WHERE id = $4 AND status = 'running'",
        )
        .bind(status)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE rollout_members SET status = 'skipped' WHERE rollout_id = $1 AND status = 'pending'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.changes.changed(crate::changes::Kind::Pool, pool_id);
        Ok(())
    }

    /// The status a rollout has now (`cancel` sets `cancelling`, read by its driver).
    pub async fn rollout_status(&self, id: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT status FROM rollouts WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }
}

fn bind_settings<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    s: &'q PoolSettings,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&s.name)
        .bind(s.workflow_id)
        .bind(s.domain_id)
        .bind(s.edge_server_id)
        .bind(s.min_replicas)
        .bind(s.max_replicas)
        .bind(&s.lb_strategy)
        .bind(&s.sticky_cookie)
        .bind(s.listen_port)
        .bind(s.target_port)
        .bind(&s.health_path)
        .bind(s.health_interval_s)
        .bind(s.health_timeout_s)
        .bind(s.unhealthy_after)
        .bind(s.healthy_after)
        .bind(s.health_grace_s)
        .bind(s.client_max_body_mb)
        .bind(s.connect_timeout_s)
        .bind(s.read_timeout_s)
        .bind(s.keepalive)
        .bind(s.drain_timeout_s)
        .bind(i64::from(s.tls_enabled))
        .bind(&s.tls_challenge)
        .bind(s.tls_port)
}
