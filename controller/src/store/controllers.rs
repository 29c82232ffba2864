//! Controllers sharing the database: each serving process's row and its renewal, who
//! holds which agent, and taking over what a controller that stopped renewing left
//! behind (its servers' online marks, its runs and rollouts).
//!
//! A controller's lease on everything it holds is its row's `seen_at`: one write every
//! few seconds renews it all, and a row older than the stale window (see `cluster`) marks
//! a controller that is gone. Takeovers are compare-and-set updates naming the previous
//! holder, so of two controllers reaping the same dead one, exactly one wins each row.

use super::{Result, Store};
use sqlx::Row;

/// A living controller as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerRow {
    pub id: String,
    /// host:port of its agent gateway.
    pub peer: String,
    pub started_at: i64,
    pub seen_at: i64,
}

/// A running run whose driver is gone: `(run, workflow, previous driver)`.
pub type OrphanRun = (i64, i64, Option<String>);

impl Store {
    /// This process's controller id (random per start).
    pub fn controller_id(&self) -> &str {
        &self.me
    }

    /// Enters this controller in the table (`peer`: where the others reach its gateway).
    pub async fn register_controller(&self, peer: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO controllers (id, peer, started_at, seen_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET peer = excluded.peer, seen_at = excluded.seen_at",
        )
        .bind(&*self.me)
        .bind(peer)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Renews this controller's lease. False when its row is gone: another controller
    /// took it for dead and reaped it, so what this one holds may have been taken over.
    pub async fn renew_controller(&self, now_ms: i64) -> Result<bool> {
        let r = sqlx::query("UPDATE controllers SET seen_at = $2 WHERE id = $1")
            .bind(&*self.me)
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Leaves the table (a graceful stop): the others take over at once instead of
    /// waiting out the stale window.
    pub async fn retire_controller(&self) -> Result<()> {
        sqlx::query("DELETE FROM controllers WHERE id = $1")
            .bind(&*self.me)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Controllers renewed at or after `fresh_since`, this one included.
    pub async fn living_controllers(&self, fresh_since: i64) -> Result<Vec<ControllerRow>> {
        let rows = sqlx::query(
            "SELECT id, peer, started_at, seen_at FROM controllers WHERE seen_at >= $1 ORDER BY started_at, id",
        )
        .bind(fresh_since)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ControllerRow {
                    id: r.try_get("id")?,
                    peer: r.try_get("peer")?,
                    started_at: r.try_get("started_at")?,
                    seen_at: r.try_get("seen_at")?,
                })
            })
            .collect()
    }

    /// Forgets controllers not seen since `before` (long gone; their holdings were taken
    /// over when they went stale).
    pub async fn forget_controllers(&self, before: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM controllers WHERE seen_at < $1 AND id <> $2")
            .bind(before)
            .bind(&*self.me)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    /// The other living controller holding server `id`'s agent: `(controller, peer)`.
    pub async fn holder(&self, id: i64, fresh_since: i64) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT c.id, c.peer FROM servers s JOIN controllers c ON c.id = s.controller_id
             WHERE s.id = $1 AND s.status = 'online' AND c.seen_at >= $2 AND c.id <> $3",
        )
        .bind(id)
        .bind(fresh_since)
        .bind(&*self.me)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Servers shown online whose holder is not a living controller (renewed at or
    /// after `fresh_since`) become offline with `why`; their ids. This controller's own
    /// are left alone unless `mine` (at start, when they are its previous process's).
    pub async fn release_orphaned_servers(
        &self,
        fresh_since: i64,
        mine: bool,
        why: &str,
        now: i64,
    ) -> Result<Vec<i64>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE servers SET status = 'offline', status_detail = $2, controller_id = NULL, updated_at = $3
             WHERE status = 'online'
               AND (controller_id IS NULL OR controller_id = $4
                    OR controller_id NOT IN (SELECT id FROM controllers WHERE seen_at >= $1))
             RETURNING id",
        )
        .bind(fresh_since)
        .bind(why)
        .bind(now)
        .bind(if mine { &*self.me } else { "" })
        .fetch_all(self.pool())
        .await?;
        for id in &ids {
            self.changes.changed(crate::changes::Kind::Server, *id);
        }
        Ok(ids)
    }

    /// Running runs whose driver is not a living controller; this controller's own only
    /// if `mine` (at start).
    pub async fn orphaned_runs(&self, fresh_since: i64, mine: bool) -> Result<Vec<OrphanRun>> {
        let rows = sqlx::query(
            "SELECT id, workflow_id, driver FROM runs
             WHERE status = 'running'
               AND (driver IS NULL OR driver = $2
                    OR driver NOT IN (SELECT id FROM controllers WHERE seen_at >= $1))
             ORDER BY id",
        )
        .bind(fresh_since)
        .bind(if mine { &*self.me } else { "" })
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Takes over run `id` from `previous` (compare-and-set: false when another
    /// controller took it first, or it ended).
    pub async fn take_run(&self, id: i64, previous: Option<&str>) -> Result<bool> {
        self.take_over("runs", id, previous).await
    }

    /// `table` (a fixed name: `runs` or `rollouts`) row `id`, still running and driven by
    /// `previous`, is driven by this controller from now on.
    async fn take_over(
        &self,
        table: &'static str,
        id: i64,
        previous: Option<&str>,
    ) -> Result<bool> {
        let r = sqlx::query(&format!(
            "UPDATE {table} SET driver = $2
             WHERE id = $1 AND status = 'running' AND driver IS NOT DISTINCT FROM $3"
        ))
        .bind(id)
        .bind(&*self.me)
        .bind(previous)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The controller driving run `id`, and whether it is alive (renewed at or after
    /// `fresh_since`); `None` when the run is not running or has no driver.
    pub async fn run_driver(&self, id: i64, fresh_since: i64) -> Result<Option<(String, bool)>> {
        let row = sqlx::query(
            "SELECT r.driver, c.seen_at FROM runs r LEFT JOIN controllers c ON c.id = r.driver
             WHERE r.id = $1 AND r.status = 'running' AND r.driver IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            let seen: Option<i64> = r.try_get(1)?;
            Ok((r.try_get(0)?, seen.is_some_and(|s| s >= fresh_since)))
        })
        .transpose()
    }

    /// Running rollouts whose driver is not a living controller; this controller's own
    /// only if `mine` (at start).
    pub async fn orphaned_rollouts(
        &self,
        fresh_since: i64,
        mine: bool,
    ) -> Result<Vec<(i64, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT id, driver FROM rollouts
             WHERE status = 'running'
               AND (driver IS NULL OR driver = $2
                    OR driver NOT IN (SELECT id FROM controllers WHERE seen_at >= $1))
             ORDER BY id",
        )
        .bind(fresh_since)
        .bind(if mine { &*self.me } else { "" })
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Takes over rollout `id` from `previous` (compare-and-set, as `take_run`).
    pub async fn take_rollout(&self, id: i64, previous: Option<&str>) -> Result<bool> {
        self.take_over("rollouts", id, previous).await
    }
}
