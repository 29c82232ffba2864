//! `mezzanine migrate-db`: moves a SQLite installation's rows into an empty PostgreSQL
//! database. Both are first brought to this build's schema by their own migrations; the
//! rows then travel table by table in foreign-key order, in one PostgreSQL transaction,
//! with ids kept — so every sealed secret, whose sealing context names its row's id,
//! still opens with the same master key. Counts are compared before the commit.

use super::{Engine, Result, Store, StoreError};
use sqlx::{Row, ValueRef};

/// Every table, parents before children. A table the destination has and this list does
/// not is an error (a new migration must be added here), never silently left behind.
const TABLES: &[&str] = &[
    "users",
    "sessions",
    "audit_log",
    "servers",
    "join_tokens",
    "agent_certs",
    "settings",
    "server_events",
    "registry_credentials",
    "workflows",
    "runs",
    "run_steps",
    "run_events",
    "webhook_deliveries",
    "id_sequences",
    "domains",
    "pools",
    "pool_members",
    "rollouts",
    "rollout_members",
    "provider_credentials",
    "certificates",
    "acme_accounts",
    "api_tokens",
    "notifiers",
    "notification_deliveries",
    "server_metrics",
    "controllers",
];

/// Rows moved per table, in `TABLES` order.
pub type Copied = Vec<(&'static str, i64)>;

enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Real(Option<f64>),
}

fn invalid(msg: String) -> StoreError {
    StoreError::Corrupt(msg)
}

/// Copies everything from the SQLite database at `from` into the empty PostgreSQL
/// database at `to`.
pub async fn copy_database(from: &str, to: &str) -> Result<Copied> {
    if Engine::of(from) != Some(Engine::Sqlite) || Engine::of(to) != Some(Engine::Postgres) {
        return Err(StoreError::Unsupported(format!(
            "migrate-db copies sqlite://… into postgres://… (got {} → {})",
            crate::config::redact_url(from),
            crate::config::redact_url(to)
        )));
    }
    let source = Store::open(from).await?;
    let dest = Store::open(to).await?;
    let result = copy(&source, &dest).await;
    source.close().await;
    dest.close().await;
    result
}

async fn copy(source: &Store, dest: &Store) -> Result<Copied> {
    let known: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::TEXT FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
           AND table_name <> 'schema_migrations'",
    )
    .fetch_all(&dest.pool)
    .await?;
    if let Some(t) = known.iter().find(|t| !TABLES.contains(&t.as_str())) {
        return Err(invalid(format!(
            "the destination has table {t}, which migrate-db does not know to copy"
        )));
    }
    let mut tx = dest.pool.begin().await?;
    for table in TABLES {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE {}",
            if *table == "id_sequences" {
                "last > 0"
            } else {
                "TRUE"
            }
        ))
        .fetch_one(&mut *tx)
        .await?;
        if n > 0 {
            return Err(invalid(format!(
                "the destination is not empty ({table} has {n} rows): migrate-db fills a new database only"
            )));
        }
    }
    // Seeded by the baseline migration; the source's own rows replace them.
    sqlx::query("DELETE FROM id_sequences")
        .execute(&mut *tx)
        .await?;
    let mut copied = Vec::new();
    for table in TABLES {
        let n = copy_table(source, &mut tx, table).await?;
        let there: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await?;
        if there != n {
            return Err(invalid(format!(
                "{table}: {n} rows read but {there} in the destination"
            )));
        }
        copied.push((*table, n));
    }
    // Identity columns continue after the highest id copied.
    let with_ids: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::TEXT FROM information_schema.columns
         WHERE table_schema = current_schema() AND column_name = 'id'
           AND is_identity = 'YES'",
    )
    .fetch_all(&mut *tx)
    .await?;
    for table in with_ids {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                           GREATEST(COALESCE(MAX(id), 0), 1), COALESCE(MAX(id), 0) > 0)
             FROM {table}"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(copied)
}

/// The destination's columns of `table` (without those PostgreSQL generates itself) and
/// their types.
async fn columns(tx: &mut sqlx::AnyConnection, table: &str) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT column_name::TEXT AS name, data_type::TEXT AS ty FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1
           AND COALESCE(identity_generation, '') <> 'ALWAYS'
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("ty")?)))
        .collect()
}

async fn copy_table(source: &Store, tx: &mut sqlx::AnyConnection, table: &str) -> Result<i64> {
    let cols = columns(tx, table).await?;
    let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
    let list = names.join(", ");
    // agent_certs in the order of issue, which PostgreSQL's `seq` takes from the inserts.
    let order = if table == "agent_certs" {
        " ORDER BY rowid"
    } else {
        ""
    };
    let rows = sqlx::query(&format!("SELECT {list} FROM {table}{order}"))
        .fetch_all(&source.pool)
        .await?;
    let mut values = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut out = Vec::with_capacity(cols.len());
        for (name, ty) in &cols {
            let at = |e: sqlx::Error| invalid(format!("{table}.{name}: {e}"));
            let null = row.try_get_raw(name.as_str()).map_err(at)?.is_null();
            out.push(match ty.as_str() {
                "bigint" | "integer" | "smallint" => Value::Int(if null {
                    None
                } else {
                    Some(row.try_get(name.as_str()).map_err(at)?)
                }),
                "bytea" => Value::Bytes(if null {
                    None
                } else {
                    Some(row.try_get(name.as_str()).map_err(at)?)
                }),
                "double precision" | "real" => Value::Real(if null {
                    None
                } else {
                    Some(row.try_get(name.as_str()).map_err(at)?)
                }),
                _ => Value::Text(if null {
                    None
                } else {
                    Some(row.try_get(name.as_str()).map_err(at)?)
                }),
            });
        }
        values.push(out);
    }
    // Several rows per statement, within PostgreSQL's 65,535 parameters.
    let per = (60_000 / cols.len().max(1)).clamp(1, 500);
    for chunk in values.chunks(per) {
        let mut sql = format!("INSERT INTO {table} ({list}) VALUES ");
        let mut n = 0;
        for (i, _) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let marks: Vec<String> = (0..cols.len())
                .map(|_| {
                    n += 1;
                    format!("${n}")
                })
                .collect();
            sql.push_str(&format!("({})", marks.join(", ")));
        }
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for v in row {
                q = match v {
                    Value::Int(x) => q.bind(*x),
                    Value::Text(x) => q.bind(x.clone()),
                    Value::Bytes(x) => q.bind(x.clone()),
                    Value::Real(x) => q.bind(*x),
                };
            }
        }
        q.execute(&mut *tx).await?;
    }
    Ok(rows.len() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_migration_table_is_copied() {
        // Tables SQLite's migrations create, read from the files themselves.
        for m in crate::store::migrate::list(crate::store::Engine::Sqlite) {
            for part in m.sql.split("CREATE TABLE ").skip(1) {
                let name = part
                    .split(|c: char| c.is_whitespace() || c == '(')
                    .next()
                    .unwrap_or_default();
                if name == "IF" || name.ends_with("_new") {
                    continue;
                }
                assert!(
                    super::TABLES.contains(&name),
                    "migration {} creates {name}, which migrate-db does not copy",
                    m.version
                );
            }
        }
    }
}
