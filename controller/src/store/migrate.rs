//! A small migration runner over the SQL files in `migrations/`, embedded at build time.
//! Each migration runs in its own transaction; a checksum catches edited history.

use super::{Result, StoreError};
use sqlx::{Row, SqlitePool};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
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
];

fn checksum(sql: &str) -> String {
    hex::encode(crate::crypto::sha256(sql.as_bytes()))
}

pub(super) async fn run(pool: &SqlitePool) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL,
             checksum TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await?;
    let applied = sqlx::query("SELECT version, checksum FROM schema_migrations ORDER BY version")
        .fetch_all(pool)
        .await?;
    for row in &applied {
        let version: i64 = row.try_get("version")?;
        let sum: String = row.try_get("checksum")?;
        match MIGRATIONS.iter().find(|m| m.version == version) {
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
    for m in MIGRATIONS.iter().filter(|m| {
        !applied
            .iter()
            .any(|r| r.get::<i64, _>("version") == m.version)
    }) {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)
             VALUES (?, ?, ?, unixepoch())",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(checksum(m.sql))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}
