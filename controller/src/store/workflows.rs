//! Deploy workflows, runs, their steps and event history, and webhook deliveries.
//! Sealed values (secrets, webhook secret) are sealed and opened by the caller.

use super::{Result, Store, StoreError};
use serde_json::Value;
use sqlx::Row;

#[derive(Debug, Clone)]
pub struct WorkflowRow {
    pub id: i64,
    pub name: String,
    pub server_id: i64,
    pub definition: Value,
    pub secrets: Option<Vec<u8>>,
    pub webhook_secret: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The role of whoever last changed the definition (`admin`, `moderator`).
    pub definition_role: String,
    /// The role of whoever last set the secrets.
    pub secrets_role: String,
    /// The cron expression and time zone it runs on, if scheduled.
    pub schedule: Option<(String, String)>,
    /// When the schedule is next due (Unix seconds).
    pub schedule_next_at: Option<i64>,
}

/// What `start_run` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Started,
    /// No longer queued (cancelled meanwhile).
    NotQueued,
    /// Another run of the workflow is running (driven by another controller, which goes
    /// on with the queue when it ends).
    Busy,
}

#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: i64,
    pub workflow_id: i64,
    pub status: String,
    pub trigger: String,
    pub trigger_detail: Value,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    pub stored_bytes: i64,
    pub dropped_lines: i64,
    /// The definition the run was queued with (`None` for runs from before that was kept).
    pub definition: Option<Value>,
    /// The server it runs on (`None` for runs from before runs had one: the workflow's).
    pub server_id: Option<i64>,
}

/// Which runs a page lists (`None`: any).
#[derive(Debug, Default)]
pub struct RunFilter<'a> {
    pub workflow_id: Option<i64>,
    pub server_id: Option<i64>,
    pub status: Option<&'a str>,
    pub trigger: Option<&'a str>,
}

/// What queuing a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Run(i64),
    /// The webhook delivery id was seen before: nothing was queued.
    Duplicate,
    /// The workflow already has this many queued runs: nothing was queued.
    Full(i64),
}

/// What deleting a workflow did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowDelete {
    Deleted,
    NotFound,
    /// A run is queued or running: nothing was deleted.
    Busy,
}

/// A run to queue.
#[derive(Debug)]
pub struct NewRun<'a> {
    pub workflow_id: i64,
    pub server_id: i64,
    pub trigger: &'a str,
    pub detail: &'a Value,
    pub definition: &'a Value,
    pub steps: &'a [String],
    /// A webhook's delivery id: recorded with the run, in one transaction, so a failed
    /// insert leaves the provider's retry free to queue it.
    pub delivery: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct StepRow {
    pub idx: i64,
    pub name: String,
    pub status: String,
    pub exit_code: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The last output chunk of the agent's stored (for resuming after a restart).
    pub agent_seq: i64,
}

/// One entry of a run's history.
#[derive(Debug, Clone)]
pub struct RunEvent {
    pub seq: i64,
    pub step: Option<i64>,
    pub kind: String,
    pub text: String,
    pub at: i64,
}

const WF_COLS: &str = "id, name, server_id, definition, secrets, webhook_secret, created_at,
    updated_at, definition_role, secrets_role, schedule_cron, schedule_tz, schedule_next_at";
const RUN_COLS: &str = "id, workflow_id, status, trigger, trigger_detail, queued_at, started_at,
    finished_at, error, stored_bytes, dropped_lines, definition, server_id";

fn json(row: &sqlx::any::AnyRow, col: &str) -> Result<Value> {
    let raw: String = row.try_get(col)?;
    serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn workflow_from(row: &sqlx::any::AnyRow) -> Result<WorkflowRow> {
    Ok(WorkflowRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        server_id: row.try_get("server_id")?,
        definition: json(row, "definition")?,
        secrets: row.try_get("secrets")?,
        webhook_secret: row.try_get("webhook_secret")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        definition_role: row.try_get("definition_role")?,
        secrets_role: row.try_get("secrets_role")?,
        schedule: match (
            row.try_get::<Option<String>, _>("schedule_cron")?,
            row.try_get::<Option<String>, _>("schedule_tz")?,
        ) {
            (Some(c), Some(t)) => Some((c, t)),
            _ => None,
        },
        schedule_next_at: row.try_get("schedule_next_at")?,
    })
}

fn run_from(row: &sqlx::any::AnyRow) -> Result<RunRow> {
    Ok(RunRow {
        id: row.try_get("id")?,
        workflow_id: row.try_get("workflow_id")?,
        status: row.try_get("status")?,
        trigger: row.try_get("trigger")?,
        trigger_detail: json(row, "trigger_detail")?,
        queued_at: row.try_get("queued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: row.try_get("error")?,
        stored_bytes: row.try_get("stored_bytes")?,
        dropped_lines: row.try_get("dropped_lines")?,
        definition: match row.try_get::<Option<String>, _>("definition")? {
            Some(_) => Some(json(row, "definition")?),
            None => None,
        },
        server_id: row.try_get("server_id")?,
    })
}

/// The next id of `table` (`workflows` or `runs`), never one used before (see migration
/// 0009); call inside the inserting transaction, so a rolled-back insert gives it back.
/// One statement that writes: the transaction holds SQLite's write lock (PostgreSQL's lock
/// on the sequence's row) from here on, so a concurrent writer cannot invalidate what it
/// read.
async fn next_id(tx: &mut sqlx::AnyConnection, engine: super::Engine, table: &str) -> Result<i64> {
    // The larger of two values: SQLite's two-argument MAX is PostgreSQL's GREATEST.
    let greatest = engine.pick("MAX", "GREATEST");
    let table = if table == "workflows" {
        "workflows"
    } else {
        "runs"
    };
    let sql = format!(
        "UPDATE id_sequences SET last = {greatest}(last, (SELECT COALESCE(MAX(id), 0) FROM {table})) + 1
         WHERE name = '{table}' RETURNING last"
    );
    Ok(sqlx::query_scalar(&sql).fetch_one(&mut *tx).await?)
}

fn unique(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// `None` when the name is taken.
    pub async fn create_workflow(
        &self,
        name: &str,
        server_id: i64,
        definition: &Value,
        role: &str,
        now: i64,
    ) -> Result<Option<i64>> {
        let mut tx = self.pool().begin().await?;
        let id = next_id(&mut tx, self.engine, "workflows").await?;
        let r = sqlx::query_scalar::<_, i64>(
            "INSERT INTO workflows (id, name, server_id, definition, created_at, updated_at,
                 definition_role, secrets_role)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(id)
        .bind(name)
        .bind(server_id)
        .bind(definition.to_string())
        .bind(now)
        .bind(now)
        .bind(role)
        .bind(role)
        .fetch_one(&mut *tx)
        .await;
        match r {
            Ok(id) => {
                tx.commit().await?;
                self.changes.changed(crate::changes::Kind::Workflow, id);
                Ok(Some(id))
            }
            Err(e) if unique(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn workflow(&self, id: i64) -> Result<Option<WorkflowRow>> {
        let row = sqlx::query(&format!("SELECT {WF_COLS} FROM workflows WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(workflow_from).transpose()
    }

    pub async fn workflows(&self) -> Result<Vec<WorkflowRow>> {
        let rows = sqlx::query(&format!("SELECT {WF_COLS} FROM workflows ORDER BY id"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(workflow_from).collect()
    }

    /// Updates what is given; `Ok(false)` when the new name is taken. A new definition
    /// records `role` as its author's.
    pub async fn update_workflow(
        &self,
        id: i64,
        name: Option<&str>,
        server_id: Option<i64>,
        definition: Option<&Value>,
        role: &str,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE workflows SET name = COALESCE($2, name), server_id = COALESCE($3, server_id),
             definition = COALESCE($4, definition),
             definition_role = CASE WHEN $4 IS NULL THEN definition_role ELSE $6 END,
             updated_at = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(name)
        .bind(server_id)
        .bind(definition.map(Value::to_string))
        .bind(now)
        .bind(role)
        .execute(self.pool())
        .await;
        match r {
            Ok(_) => {
                self.changes.changed(crate::changes::Kind::Workflow, id);
                Ok(true)
            }
            Err(e) if unique(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets (or with `None` removes) a workflow's schedule and when it is next due.
    pub async fn set_schedule(&self, id: i64, schedule: Option<(&str, &str, i64)>) -> Result<()> {
        sqlx::query(
            "UPDATE workflows SET schedule_cron = $2, schedule_tz = $3, schedule_next_at = $4
             WHERE id = $1",
        )
        .bind(id)
        .bind(schedule.map(|s| s.0))
        .bind(schedule.map(|s| s.1))
        .bind(schedule.map(|s| s.2))
        .execute(self.pool())
        .await?;
        self.changes.changed(crate::changes::Kind::Workflow, id);
        Ok(())
    }

    /// Scheduled workflows due at `now`.
    pub async fn due_schedules(&self, now: i64) -> Result<Vec<WorkflowRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {WF_COLS} FROM workflows
             WHERE schedule_next_at IS NOT NULL AND schedule_next_at <= $1 ORDER BY id"
        ))
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(workflow_from).collect()
    }

    /// Moves a schedule from the tick `due` to `next`; false when something else moved it
    /// first (another controller, or an edit): exactly one claimant queues each tick.
    pub async fn advance_schedule(&self, id: i64, due: i64, next: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE workflows SET schedule_next_at = $3 WHERE id = $1 AND schedule_next_at = $2",
        )
        .bind(id)
        .bind(due)
        .bind(next)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Whether a run the schedule queued is still waiting to start.
    pub async fn scheduled_run_waiting(&self, workflow_id: i64) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM runs WHERE workflow_id = $1 AND trigger = 'schedule'
               AND status = 'queued'",
        )
        .bind(workflow_id)
        .fetch_one(self.pool())
        .await?;
        Ok(n > 0)
    }

    /// Replaces the secrets, recording `role` as their setter's.
    pub async fn set_workflow_secrets(
        &self,
        id: i64,
        sealed: Option<&[u8]>,
        role: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE workflows SET secrets = $1, secrets_role = $2 WHERE id = $3")
            .bind(sealed)
            .bind(role)
            .bind(id)
            .execute(self.pool())
            .await?;
        self.changes.changed(crate::changes::Kind::Workflow, id);
        Ok(())
    }

    /// An admin approves the definition as it is (its secrets are released to it);
    /// `Ok(false)` when there is no such workflow.
    pub async fn approve_definition(&self, id: i64) -> Result<bool> {
        let r = sqlx::query("UPDATE workflows SET definition_role = 'admin' WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        self.changes.changed(crate::changes::Kind::Workflow, id);
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_webhook_secret(&self, id: i64, sealed: &[u8]) -> Result<()> {
        sqlx::query("UPDATE workflows SET webhook_secret = $1 WHERE id = $2")
            .bind(sealed)
            .bind(id)
            .execute(self.pool())
            .await?;
        self.changes.changed(crate::changes::Kind::Workflow, id);
        Ok(())
    }

    /// Deletes a workflow unless a run of it is queued or running, in one statement (a
    /// run queued between a check and the delete cannot be lost).
    pub async fn delete_workflow(&self, id: i64) -> Result<WorkflowDelete> {
        let r = sqlx::query(
            "DELETE FROM workflows WHERE id = $1 AND NOT EXISTS
             (SELECT 1 FROM runs WHERE workflow_id = $1 AND status IN ('queued', 'running'))",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        if r.rows_affected() > 0 {
            self.changes.changed(crate::changes::Kind::Workflow, id);
            return Ok(WorkflowDelete::Deleted);
        }
        Ok(if self.workflow(id).await?.is_some() {
            WorkflowDelete::Busy
        } else {
            WorkflowDelete::NotFound
        })
    }

    /// Queues a run with its steps (all `pending`), and records its webhook delivery id
    /// in the same transaction. At most `max_queued` runs of a workflow wait (checked in
    /// the insert itself, so concurrent triggers cannot overshoot).
    pub async fn create_run(
        &self,
        run: &NewRun<'_>,
        max_queued: i64,
        now_ms: i64,
    ) -> Result<Queued> {
        let mut tx = self.pool().begin().await?;
        if let Some(delivery) = run.delivery {
            let fresh = sqlx::query(
                "INSERT INTO webhook_deliveries (workflow_id, delivery, received_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(run.workflow_id)
            .bind(delivery)
            .bind(now_ms / 1000)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !fresh {
                tx.rollback().await?;
                return Ok(Queued::Duplicate);
            }
        }
        let next = next_id(&mut tx, self.engine, "runs").await?;
        let id = sqlx::query_scalar::<_, i64>(
            "INSERT INTO runs (id, workflow_id, server_id, status, trigger, trigger_detail, queued_at, definition)
             SELECT $8, $1, $2, 'queued', $3, $4, $5, $6
             WHERE (SELECT COUNT(*) FROM runs WHERE workflow_id = $1 AND status = 'queued') < $7
             RETURNING id",
        )
        .bind(run.workflow_id)
        .bind(run.server_id)
        .bind(run.trigger)
        .bind(run.detail.to_string())
        .bind(now_ms)
        .bind(run.definition.to_string())
        .bind(max_queued)
        .bind(next)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else {
            tx.rollback().await?;
            return Ok(Queued::Full(max_queued));
        };
        for (i, name) in run.steps.iter().enumerate() {
            sqlx::query(
                "INSERT INTO run_steps (run_id, idx, name, status) VALUES ($1, $2, $3, 'pending')",
            )
            .bind(id)
            .bind(i as i64)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.changes.run_changed(id, run.workflow_id);
        Ok(Queued::Run(id))
    }

    /// Removes the oldest finished runs of a workflow beyond its newest `keep` (their
    /// steps and events go with them). Returns how many went.
    pub async fn prune_runs(&self, workflow_id: i64, keep: i64) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM runs WHERE workflow_id = $1 AND status NOT IN ('queued', 'running')
             AND id < (SELECT COALESCE(MIN(id), 0) FROM
                 (SELECT id FROM runs WHERE workflow_id = $1 ORDER BY id DESC LIMIT $2) AS newest)",
        )
        .bind(workflow_id)
        .bind(keep)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected())
    }

    /// Records a webhook delivery id on its own (a pool's rollout has no run to record it
    /// with); false when it was seen before.
    pub async fn record_delivery(
        &self,
        workflow_id: i64,
        delivery: &str,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO webhook_deliveries (workflow_id, delivery, received_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(workflow_id)
        .bind(delivery)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Forgets one delivery id whose rollout could not start, so the provider's retry can.
    pub async fn forget_delivery(&self, workflow_id: i64, delivery: &str) -> Result<()> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE workflow_id = $1 AND delivery = $2")
            .bind(workflow_id)
            .bind(delivery)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forgets webhook delivery ids received before `before` (seconds): retries come
    /// within hours, so only a replay older than this could run twice.
    pub async fn prune_deliveries(&self, before: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        let row = sqlx::query(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(run_from).transpose()
    }

    pub async fn recent_runs(&self, workflow_id: i64, limit: i64) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs WHERE workflow_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(workflow_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(run_from).collect()
    }

    /// Each workflow's latest run, by workflow id: one query for the whole list (the
    /// workflows page used to ask once per workflow).
    pub async fn last_runs(&self) -> Result<std::collections::HashMap<i64, RunRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs
             WHERE id IN (SELECT MAX(id) FROM runs GROUP BY workflow_id)"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| run_from(r).map(|run| (run.workflow_id, run)))
            .collect()
    }

    /// A page of runs, newest first, with the total matching `filter`.
    pub async fn runs_page(
        &self,
        filter: &RunFilter<'_>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<RunRow>, i64)> {
        // Runs from before runs had a server ran on their workflow's.
        const WHERE: &str = "WHERE ($1 IS NULL OR workflow_id = $1)
             AND ($2 IS NULL OR COALESCE(server_id,
                 (SELECT w.server_id FROM workflows w WHERE w.id = runs.workflow_id)) = $2)
             AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR trigger = $4)";
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM runs {WHERE}"))
            .bind(filter.workflow_id)
            .bind(filter.server_id)
            .bind(filter.status)
            .bind(filter.trigger)
            .fetch_one(self.pool())
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs {WHERE} ORDER BY id DESC LIMIT $5 OFFSET $6"
        ))
        .bind(filter.workflow_id)
        .bind(filter.server_id)
        .bind(filter.status)
        .bind(filter.trigger)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        let items = rows.iter().map(run_from).collect::<Result<Vec<_>>>()?;
        Ok((items, total))
    }

    /// The oldest queued run of a workflow.
    pub async fn next_queued(&self, workflow_id: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE workflow_id = $1 AND status = 'queued' ORDER BY id LIMIT 1",
        )
        .bind(workflow_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Workflows with queued runs (to restart their queues after a controller start).
    pub async fn workflows_with_queued_runs(&self) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT workflow_id FROM runs WHERE status = 'queued' ORDER BY workflow_id",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// `(run, workflow, server)` of the runs a previous controller process left `running`.
    pub async fn running_runs(&self) -> Result<Vec<(i64, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT r.id, r.workflow_id, COALESCE(r.server_id, w.server_id) FROM runs r
             JOIN workflows w ON w.id = r.workflow_id
             WHERE r.status = 'running' ORDER BY r.id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// `queued` → `running`, driven by this controller. Several controllers may try to
    /// start runs of one workflow at once: the workflow's row is locked for the check
    /// (PostgreSQL; SQLite's single writer serializes by itself), so one run of a
    /// workflow runs at a time whoever starts it.
    pub async fn start_run(&self, id: i64, now_ms: i64) -> Result<Start> {
        // One statement: queued → running unless another run of the workflow runs.
        const START: &str = "UPDATE runs SET status = 'running', started_at = $1, driver = $3
             WHERE id = $2 AND status = 'queued'
               AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.workflow_id = runs.workflow_id
                                                      AND o.status = 'running' AND o.id <> runs.id)
             RETURNING workflow_id";
        let started: Option<i64> = if self.engine() == super::Engine::Postgres {
            // Two controllers starting two runs of one workflow would each see the other's
            // not yet committed: the workflow's row serializes them.
            let mut tx = self.pool().begin().await?;
            sqlx::query(
                "SELECT w.id FROM workflows w JOIN runs r ON r.workflow_id = w.id
                 WHERE r.id = $1 FOR UPDATE OF w",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let started = sqlx::query_scalar(START)
                .bind(now_ms)
                .bind(id)
                .bind(self.controller_id())
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            started
        } else {
            // SQLite's single writer serializes the statement by itself (and a deferred
            // transaction reading before it writes could fail on a concurrent commit).
            sqlx::query_scalar(START)
                .bind(now_ms)
                .bind(id)
                .bind(self.controller_id())
                .fetch_optional(self.pool())
                .await?
        };
        if let Some(workflow) = started {
            self.changes.run_changed(id, workflow);
            return Ok(Start::Started);
        }
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(if status.as_deref() == Some("queued") {
            Start::Busy
        } else {
            Start::NotQueued
        })
    }

    /// Ends a run (only one still queued or running) and its unfinished steps.
    pub async fn finish_run(
        &self,
        id: i64,
        status: &str,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        self.end_run(id, status, error, now_ms, false).await
    }

    /// Cancels a run that has not started; false if it already has (or ended).
    pub async fn cancel_queued_run(&self, id: i64, now_ms: i64) -> Result<bool> {
        self.end_run(
            id,
            "cancelled",
            Some("cancelled before it started"),
            now_ms,
            true,
        )
        .await
    }

    /// Sets a run's final status if it is still queued (or, unless `queued_only`,
    /// running), and marks its steps that never started `skipped`.
    async fn end_run(
        &self,
        id: i64,
        status: &str,
        error: Option<&str>,
        now_ms: i64,
        queued_only: bool,
    ) -> Result<bool> {
        let sql = if queued_only {
            "UPDATE runs SET status = $1, error = $2, finished_at = $3 WHERE id = $4 AND status = 'queued'
             RETURNING workflow_id"
        } else {
            "UPDATE runs SET status = $1, error = $2, finished_at = $3
             WHERE id = $4 AND status IN ('queued', 'running') RETURNING workflow_id"
        };
        let mut tx = self.pool().begin().await?;
        let workflow: Option<i64> = sqlx::query_scalar(sql)
            .bind(status)
            .bind(error)
            .bind(now_ms)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE run_steps SET status = 'skipped' WHERE run_id = $1 AND status = 'pending'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(w) = workflow {
            self.changes.run_changed(id, w);
        }
        Ok(workflow.is_some())
    }

    pub async fn set_step(
        &self,
        run_id: i64,
        idx: i64,
        status: &str,
        exit_code: Option<i64>,
        now_ms: i64,
    ) -> Result<()> {
        let (start, finish) = if status == "running" {
            (Some(now_ms), None)
        } else {
            (None, Some(now_ms))
        };
        sqlx::query(
            "UPDATE run_steps SET status = $1, exit_code = COALESCE($2, exit_code),
             started_at = COALESCE(started_at, $3), finished_at = COALESCE($4, finished_at)
             WHERE run_id = $5 AND idx = $6",
        )
        .bind(status)
        .bind(exit_code)
        .bind(start)
        .bind(finish)
        .bind(run_id)
        .bind(idx)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn run_steps(&self, run_id: i64) -> Result<Vec<StepRow>> {
        let rows = sqlx::query(
            "SELECT idx, name, status, exit_code, started_at, finished_at, agent_seq
             FROM run_steps WHERE run_id = $1 ORDER BY idx",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StepRow {
                    idx: r.try_get("idx")?,
                    name: r.try_get("name")?,
                    status: r.try_get("status")?,
                    exit_code: r.try_get("exit_code")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    agent_seq: r.try_get("agent_seq")?,
                })
            })
            .collect()
    }

    /// Appends events in one transaction, adds to the run's stored-bytes and dropped
    /// counters, and records `ack = (step, agent_seq)`: the agent's output chunk they came
    /// in, so a restarted controller resumes the step after it.
    pub async fn append_events(
        &self,
        run_id: i64,
        events: &[RunEvent],
        stored_bytes: i64,
        dropped_lines: i64,
        ack: Option<(i64, i64)>,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        if let Some((step, seq)) = ack {
            sqlx::query("UPDATE run_steps SET agent_seq = $1 WHERE run_id = $2 AND idx = $3")
                .bind(seq)
                .bind(run_id)
                .bind(step)
                .execute(&mut *tx)
                .await?;
        }
        for e in events {
            sqlx::query(
                "INSERT INTO run_events (run_id, seq, step, kind, text, at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(run_id)
            .bind(e.seq)
            .bind(e.step)
            .bind(&e.kind)
            .bind(&e.text)
            .bind(e.at)
            .execute(&mut *tx)
            .await?;
        }
        if stored_bytes != 0 || dropped_lines != 0 {
            sqlx::query(
                "UPDATE runs SET stored_bytes = stored_bytes + $1, dropped_lines = dropped_lines + $2
                 WHERE id = $3",
            )
            .bind(stored_bytes)
            .bind(dropped_lines)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.changes.tell(crate::changes::Notice::Output(run_id));
        Ok(())
    }

    /// Events after `after_seq`, in order, at most `limit`.
    /// The `message` texts of a run's `note` events, in order (a handful per run).
    pub async fn run_notes(&self, run_id: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT text FROM run_events WHERE run_id = $1 AND kind = 'note' ORDER BY seq",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok(r.try_get("text")?)).collect()
    }

    pub async fn run_events(
        &self,
        run_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<RunEvent>> {
        let rows = sqlx::query(
            "SELECT seq, step, kind, text, at FROM run_events WHERE run_id = $1 AND seq > $2
             ORDER BY seq LIMIT $3",
        )
        .bind(run_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RunEvent {
                    seq: r.try_get("seq")?,
                    step: r.try_get("step")?,
                    kind: r.try_get("kind")?,
                    text: r.try_get("text")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    pub async fn last_event_seq(&self, run_id: i64) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_id = $1")
                .bind(run_id)
                .fetch_one(self.pool())
                .await?,
        )
    }
}

/// The store's contract for runs, on a real SQLite file (no processes).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewServer, ServerDelete};
    use serde_json::json;

    /// A store per engine (see `contract`), each with a server and a workflow.
    async fn stores() -> Vec<(Store, tempfile::TempDir, i64, i64)> {
        let mut out = Vec::new();
        for (store, dir) in crate::store::contract::stores().await {
            let server = store
                .create_server(
                    &NewServer {
                        name: "s",
                        host: "h.invalid",
                        port: 22,
                        username: None,
                        auth_type: "manual",
                        tags: &[],
                    },
                    0,
                )
                .await
                .expect("store")
                .expect("created")
                .id;
            let wf = store
                .create_workflow("w", server, &json!({ "steps": [] }), "admin", 0)
                .await
                .expect("store")
                .expect("created");
            out.push((store, dir, server, wf));
        }
        out
    }

    fn run(wf: i64, server: i64, delivery: Option<&'static str>) -> NewRun<'static> {
        static DETAIL: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
        let v = DETAIL.get_or_init(|| json!({}));
        NewRun {
            workflow_id: wf,
            server_id: server,
            trigger: "manual",
            detail: v,
            definition: v,
            steps: &[],
            delivery,
        }
    }

    #[tokio::test]
    async fn queue_limit_and_deliveries_are_one_statement_each() {
        for (store, _dir, server, wf) in stores().await {
            assert!(matches!(
                store.create_run(&run(wf, server, Some("d1")), 2, 1).await,
                Ok(Queued::Run(_))
            ));
            assert!(matches!(
                store.create_run(&run(wf, server, Some("d1")), 2, 2).await,
                Ok(Queued::Duplicate)
            ));
            assert!(matches!(
                store.create_run(&run(wf, server, None), 2, 3).await,
                Ok(Queued::Run(_))
            ));
            assert!(matches!(
                store.create_run(&run(wf, server, Some("d2")), 2, 4).await,
                Ok(Queued::Full(2))
            ));
            // The refused delivery was not recorded.
            let next = store.next_queued(wf).await.expect("store").expect("queued");
            store.cancel_queued_run(next, 5).await.expect("cancel");
            assert!(matches!(
                store.create_run(&run(wf, server, Some("d2")), 2, 6).await,
                Ok(Queued::Run(_))
            ));
            let r = store.run(next).await.expect("store").expect("run");
            assert_eq!(r.server_id, Some(server));
        }
    }

    #[tokio::test]
    async fn deletes_refuse_what_would_take_work_with_them() {
        for (store, _dir, server, wf) in stores().await {
            let Queued::Run(id) = store
                .create_run(&run(wf, server, None), 5, 1)
                .await
                .expect("run")
            else {
                panic!("not queued")
            };
            assert_eq!(
                store.delete_workflow(wf).await.expect("store"),
                WorkflowDelete::Busy
            );
            assert_eq!(
                store.delete_server(server, 2).await.expect("store"),
                ServerDelete::HasWorkflows(vec!["w".into()])
            );
            store.cancel_queued_run(id, 3).await.expect("cancel");
            assert_eq!(
                store.delete_workflow(wf).await.expect("store"),
                WorkflowDelete::Deleted
            );
            assert_eq!(
                store.delete_workflow(wf).await.expect("store"),
                WorkflowDelete::NotFound
            );
            assert!(matches!(
                store.delete_server(server, 4).await.expect("store"),
                ServerDelete::Deleted(_)
            ));
            assert_eq!(
                store.delete_server(server, 5).await.expect("store"),
                ServerDelete::NotFound
            );
        }
    }

    #[tokio::test]
    async fn ids_are_never_reused_after_a_delete() {
        for (store, _dir, server, wf) in stores().await {
            let Queued::Run(run_id) = store
                .create_run(&run(wf, server, None), 5, 1)
                .await
                .expect("run")
            else {
                panic!("not queued")
            };
            store.cancel_queued_run(run_id, 2).await.expect("cancel");
            assert_eq!(
                store.delete_workflow(wf).await.expect("store"),
                WorkflowDelete::Deleted
            );
            let wf2 = store
                .create_workflow("w2", server, &json!({ "steps": [] }), "admin", 3)
                .await
                .expect("store")
                .expect("created");
            assert!(wf2 > wf, "{wf2} after {wf}");
            let Queued::Run(run2) = store
                .create_run(&run(wf2, server, None), 5, 4)
                .await
                .expect("run")
            else {
                panic!("not queued")
            };
            assert!(run2 > run_id, "{run2} after {run_id}");
            // A name clash rolls back and gives nothing away.
            assert_eq!(
                store
                    .create_workflow("w2", server, &json!({ "steps": [] }), "admin", 5)
                    .await
                    .expect("store"),
                None
            );
        }
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_finished_runs_and_every_open_one() {
        for (store, _dir, server, wf) in stores().await {
            let mut ids = Vec::new();
            for i in 0..5 {
                let Queued::Run(id) = store
                    .create_run(&run(wf, server, None), 10, i)
                    .await
                    .expect("run")
                else {
                    panic!("not queued")
                };
                ids.push(id);
            }
            for id in &ids[..4] {
                store.cancel_queued_run(*id, 9).await.expect("cancel");
            }
            // Newest two kept: the queued one (open) and the last finished one.
            assert_eq!(store.prune_runs(wf, 2).await.expect("prune"), 3);
            let left: Vec<i64> = store
                .recent_runs(wf, 10)
                .await
                .expect("runs")
                .iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(left, vec![ids[4], ids[3]]);
        }
    }
}
