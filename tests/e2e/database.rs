//! Moving an installation from SQLite to PostgreSQL with `mezzanine migrate-db`: every
//! table's rows arrive, ids are kept, and the sealed secrets (a TOTP secret, a webhook
//! secret) still open under the same master key on a controller started on PostgreSQL.

use mezzanine_tests::{
    binary, create_postgres_database, first_admin, totp_code, Client, Process, ADMIN_PASSWORD,
};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

/// The test PostgreSQL server's base URL. CI always has one (`tests/run` starts it); a
/// developer's machine without one is told so, loudly.
fn postgres() -> Option<String> {
    match std::env::var("MEZZANINE_TEST_POSTGRES") {
        Ok(base) => Some(base.trim_end_matches('/').to_owned()),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI tests migrate-db: set MEZZANINE_TEST_POSTGRES (tests/run does)"
            );
            eprintln!("SKIPPED: migrate-db needs MEZZANINE_TEST_POSTGRES (tests/run sets it)");
            None
        }
    }
}

fn serve(data: &std::path::Path, extra: &[&str]) -> (Process, String) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    let mut p = Process::spawn(&binary("mezzanine", false), &args);
    let addr = p.wait_ready(Duration::from_secs(15));
    (p, format!("http://{addr}"))
}

async fn counts(url: &str) -> Vec<(String, i64)> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.expect("connect");
    let mut out = Vec::new();
    for t in [
        "users",
        "sessions",
        "audit_log",
        "servers",
        "join_tokens",
        "workflows",
        "settings",
        "id_sequences",
        "api_tokens",
        "domains",
        "pools",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t}"))
            .fetch_one(&mut c)
            .await
            .expect("count");
        out.push((t.to_owned(), n));
    }
    out
}

fn migrate(from: &str, to: &str) -> std::process::Output {
    Command::new(binary("mezzanine", false))
        .args(["migrate-db", "--from", from, "--to", to])
        .output()
        .expect("run migrate-db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_db_moves_a_sqlite_installation_to_postgres() {
    let Some(base) = postgres() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");

    // An installation on SQLite: an admin with TOTP, a server, a workflow with a webhook
    // secret, a pool and a domain, an API token.
    let (mut sqlite_ctl, url) = serve(&data, &[]);
    let mut admin = first_admin(&url).await;
    let r = admin
        .post(
            "/api/auth/totp/setup",
            json!({ "password": ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let totp = r.body["secret"].as_str().expect("secret").to_owned();
    let r = admin
        .post(
            "/api/auth/totp/enable",
            json!({ "code": totp_code(&totp, 0) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post(
            "/api/servers",
            json!({ "name": "web-1", "host": "10.9.8.7", "auth_type": "manual" }),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.body);
    let server = r.body["id"].as_i64().expect("server id");
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "app", "server_id": server,
                    "definition": { "steps": [{ "name": "hi", "uses": "shell", "with": { "script": "echo hi" } }] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow id");
    let r = admin
        .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
        .await;
    let hook_secret = r.body["secret"].as_str().expect("secret").to_owned();
    let r = admin
        .post("/api/domains", json!({ "name": "app.example.test" }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin
        .post("/api/pools", json!({ "name": "web", "workflow_id": wf }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin
        .post("/api/tokens", json!({ "name": "ci", "role": "viewer" }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.body["token"].as_str().expect("token").to_owned();
    let servers_before = admin.get("/api/servers").await.body;
    sqlite_ctl.signal("TERM");
    assert!(sqlite_ctl.wait_exit(Duration::from_secs(20)).success());

    // Bad requests say what is wrong and exit 64; nothing is written.
    let file = format!("sqlite://{}", data.join("mezzanine.db").display());
    let pg = create_postgres_database(&base);
    let out = migrate(&file, &file);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--to"),
        "{out:?}"
    );
    let out = migrate("sqlite:///nonexistent/mezzanine.db", &pg);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no SQLite database"));

    // The move: every table's rows arrive.
    let before = counts(&file).await;
    let out = migrate(&file, &pg);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("copied") && said.contains("workflows"),
        "{said}"
    );
    assert!(
        !said.contains("mezzanine-test"),
        "no password in the output: {said}"
    );
    assert_eq!(counts(&pg).await, before);
    assert!(
        before.iter().all(|(t, n)| *n > 0 || t == "sessions"),
        "{before:?}"
    );

    // Into a database that is no longer empty: refused, nothing doubled.
    let out = migrate(&file, &pg);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{out:?}"
    );
    assert_eq!(counts(&pg).await, before);

    // The same data dir (the same master key) on PostgreSQL: the TOTP secret opens (a
    // login with a code), the webhook secret opens (a signed delivery is accepted), the
    // API token works, the servers are the same.
    let (mut pg_ctl, url) = serve(&data, &["--database-url", &pg]);
    // A second controller on the same database needs the same master key: with another
    // one it cannot open the shared CA and stops with the reason (several controllers
    // with the same key are the `cluster` tests).
    let other = tempfile::tempdir().expect("tmp");
    let out = Command::new(binary("mezzanine", false))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(other.path().join("data"))
        .args(["--database-url", &pg])
        .output()
        .expect("run");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("same master key"),
        "{out:?}"
    );
    let mut c = Client::new(&url);
    let r = c.login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(r.status, 401, "a code is still needed: {}", r.body);
    let r = c
        .login("admin", ADMIN_PASSWORD, Some(&totp_code(&totp, 1)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(c.get("/api/servers").await.body, servers_before);
    let body = r#"{"ref":"refs/heads/main"}"#;
    let req = c
        .request(reqwest::Method::POST, &format!("/api/webhooks/{wf}"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            crate::runs::signature(&hook_secret, body),
        )
        .header("x-github-delivery", "after-the-move")
        .body(body);
    let r = c.raw(req).await;
    assert!(
        r.status == 201 || r.status == 202,
        "signature checked: {}",
        r.body
    );
    let r = reqwest::Client::new()
        .get(format!("{url}/api/servers"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("token request");
    assert_eq!(r.status(), 200);
    // New rows continue after the copied ids.
    let r = c
        .post(
            "/api/servers",
            json!({ "name": "web-2", "host": "10.9.8.6", "auth_type": "manual" }),
        )
        .await;
    assert!(r.body["id"].as_i64().expect("id") > server, "{}", r.body);
    pg_ctl.signal("TERM");
    assert!(pg_ctl.wait_exit(Duration::from_secs(20)).success());
}
