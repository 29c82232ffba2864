//! A small migration runner over the SQL files in `migrations/<engine>/`, embedded at
//! build time. Each migration runs in its own transaction; a checksum catches edited
//! history. Both engines share the version numbers: PostgreSQL's history starts at 18,
//! one file with the schema SQLite had reached by then, and every later version has a
//! file in each folder.

use super::{Engine, Result, StoreError};
use sqlx::{AnyPool, Connection, Row};

pub(super) struct Migration {
    pub(super) version: i64,
    name: &'static str,
    pub(super) sql: &'static str,
}

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "servers",
        sql: include_str!("../../../migrations/sqlite/0002_servers.sql"),
    },
    Migration {
        version: 3,
        name: "ssh_adoption",
        sql: include_str!("../../../migrations/sqlite/0003_ssh_adoption.sql"),
    },
    Migration {
        version: 4,
        name: "deploy_keys",
        sql: include_str!("../../../migrations/sqlite/0004_deploy_keys.sql"),
    },
    Migration {
        version: 5,
        name: "registry_credentials",
        sql: include_str!("../../../migrations/sqlite/0005_registry_credentials.sql"),
    },
    Migration {
        version: 6,
        name: "workflows",
        sql: include_str!("../../../migrations/sqlite/0006_workflows.sql"),
    },
    Migration {
        version: 7,
        name: "step_resume",
        sql: include_str!("../../../migrations/sqlite/0007_step_resume.sql"),
    },
    Migration {
        version: 8,
        name: "run_target",
        sql: include_str!("../../../migrations/sqlite/0008_run_target.sql"),
    },
    Migration {
        version: 9,
        name: "id_sequences",
        sql: include_str!("../../../migrations/sqlite/0009_id_sequences.sql"),
    },
    Migration {
        version: 10,
        name: "secret_approval",
        sql: include_str!("../../../migrations/sqlite/0010_secret_approval.sql"),
    },
    Migration {
        version: 11,
        name: "audit_reason",
        sql: include_str!("../../../migrations/sqlite/0011_audit_reason.sql"),
    },
    Migration {
        version: 12,
        name: "pools",
        sql: include_str!("../../../migrations/sqlite/0012_pools.sql"),
    },
    Migration {
        version: 13,
        name: "rollouts",
        sql: include_str!("../../../migrations/sqlite/0013_rollouts.sql"),
    },
    Migration {
        version: 14,
        name: "providers",
        sql: include_str!("../../../migrations/sqlite/0014_providers.sql"),
    },
    Migration {
        version: 15,
        name: "domain_dns",
        sql: include_str!("../../../migrations/sqlite/0015_domain_dns.sql"),
    },
    Migration {
        version: 16,
        name: "certificates",
        sql: include_str!("../../../migrations/sqlite/0016_certificates.sql"),
    },
    Migration {
        version: 17,
        name: "api_tokens",
        sql: include_str!("../../../migrations/sqlite/0017_api_tokens.sql"),
    },
    Migration {
        version: 18,
        name: "notifiers",
        sql: include_str!("../../../migrations/sqlite/0018_notifiers.sql"),
    },
    Migration {
        version: 19,
        name: "workflow_schedules",
        sql: include_str!("../../../migrations/sqlite/0019_workflow_schedules.sql"),
    },
    Migration {
        version: 20,
        name: "server_metrics",
        sql: include_str!("../../../migrations/sqlite/0020_server_metrics.sql"),
    },
    Migration {
        version: 21,
        name: "agent_upgrades",
        sql: include_str!("../../../migrations/sqlite/0021_agent_upgrades.sql"),
    },
    Migration {
        version: 22,
        name: "controllers",
        sql: include_str!("../../../migrations/sqlite/0022_controllers.sql"),
    },
];

const POSTGRES: &[Migration] = &[
    Migration {
        version: 18,
        name: "baseline",
        sql: include_str!("../../../migrations/postgres/0018_baseline.sql"),
    },
    Migration {
        version: 19,
        name: "workflow_schedules",
        sql: include_str!("../../../migrations/postgres/0019_workflow_schedules.sql"),
    },
    Migration {
        version: 20,
        name: "server_metrics",
        sql: include_str!("../../../migrations/postgres/0020_server_metrics.sql"),
    },
    Migration {
        version: 21,
        name: "agent_upgrades",
        sql: include_str!("../../../migrations/postgres/0021_agent_upgrades.sql"),
    },
    Migration {
        version: 22,
        name: "controllers",
        sql: include_str!("../../../migrations/postgres/0022_controllers.sql"),
    },
];

/// The migrations of `engine`, oldest first.
pub(super) fn list(engine: Engine) -> &'static [Migration] {
    match engine {
        Engine::Sqlite => SQLITE,
        Engine::Postgres => POSTGRES,
    }
}

fn checksum(sql: &str) -> String {
    hex::encode(crate::crypto::sha256(sql.as_bytes()))
}

/// Any number to tell this runner's lock from others' in `pg_advisory_lock`.
const PG_MIGRATION_LOCK: i64 = 0x6d7a_6d69_6772;

pub(super) async fn run(pool: &AnyPool, engine: Engine) -> Result<()> {
    let mut conn = pool.acquire().await?;
    if engine == Engine::Postgres {
        // Controllers starting together: one migrates, the others wait and then find
        // nothing left to do.
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    let result = apply(&mut conn, engine).await;
    if engine == Engine::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn apply(conn: &mut sqlx::AnyConnection, engine: Engine) -> Result<()> {
    let migrations = list(engine);
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY, name TEXT NOT NULL,
             checksum TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let applied = sqlx::query("SELECT version, checksum FROM schema_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await?;
    for row in &applied {
        let version: i64 = row.try_get("version")?;
        let sum: String = row.try_get("checksum")?;
        match migrations.iter().find(|m| m.version == version) {
            None => return Err(StoreError::MigrationUnknown(version)),
            Some(m) if checksum(m.sql) != sum => {
                return Err(StoreError::MigrationChanged {
                    version,
                    name: m.name.to_owned(),
                })
            }
            Some(_) => {}
        }
    }
    let done: Vec<i64> = applied
        .iter()
        .map(|r| r.try_get::<i64, _>("version"))
        .collect::<std::result::Result<_, _>>()?;
    for m in migrations.iter().filter(|m| !done.contains(&m.version)) {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(checksum(m.sql))
        .bind(crate::time::now_secs())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}
