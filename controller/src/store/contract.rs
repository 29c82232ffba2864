//! The store's contract, run against every engine this machine has: SQLite always,
//! PostgreSQL when `MEZZANINE_TEST_POSTGRES` names a server (`postgres://user:pw@host:port`,
//! a role that may create databases; `tests/run` starts Debian's and sets it). Each test
//! gets a fresh database. What differs between the engines (case-insensitive names,
//! NULL-safe comparison, flags, JSON batches, the order of issue, id sequences, conflict
//! handling) is exercised here through the store's own methods.

use super::*;
use crate::store::{NewServer, Queued, ServerRow, Start};
use serde_json::json;

/// One store per engine, each on an empty database (the directory holds SQLite's file).
pub(crate) async fn stores() -> Vec<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tmp");
    let sqlite = Store::open(&Store::sqlite_url(&dir.path().join("t.db")))
        .await
        .expect("open sqlite");
    let mut out = vec![(sqlite, dir)];
    if let Some(url) = fresh_postgres().await {
        let pg = Store::open(&url).await.expect("open postgres");
        out.push((pg, tempfile::tempdir().expect("tmp")));
    }
    out
}

/// A new, empty PostgreSQL database's URL, if a server is configured for tests. CI must
/// test both engines: there, a missing server is a failure, not a skip.
pub(crate) async fn fresh_postgres() -> Option<String> {
    let Ok(base) = std::env::var("MEZZANINE_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the store contract on PostgreSQL too: set MEZZANINE_TEST_POSTGRES (tests/run does)"
        );
        return None;
    };
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let base = base.trim_end_matches('/').to_owned();
    let mut admin = sqlx::AnyConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("connect to the test PostgreSQL");
    let name = format!(
        "mz_u_{}",
        hex::encode(crate::crypto::random_bytes::<6>().expect("random"))
    );
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create a test database");
    let _ = admin.close().await;
    Some(format!("{base}/{name}"))
}

fn server(name: &str) -> NewServer<'_> {
    NewServer {
        name,
        host: "h.invalid",
        port: 22,
        username: None,
        auth_type: "manual",
        tags: &[],
    }
}

#[tokio::test]
async fn users_names_are_case_insensitive_and_the_last_admin_stays() {
    for (store, _dir) in stores().await {
        let e = store.engine();
        let admin = store
            .create_first_admin("Admin", "h", 1)
            .await
            .expect("store")
            .expect("first admin");
        assert!(store
            .create_first_admin("other", "h", 1)
            .await
            .expect("store")
            .is_none());
        assert!(
            store
                .create_user("ADMIN", "h", Role::Viewer, 2)
                .await
                .expect("store")
                .is_none(),
            "{e:?}: a name differing in case is taken"
        );
        let found = store
            .credentials_by_name("admin")
            .await
            .expect("store")
            .expect("found whatever the case");
        assert_eq!(found.user.id, admin.id);
        assert!(!found.user.totp_enabled);
        assert_eq!(
            store
                .set_role(admin.id, Role::Viewer, 3)
                .await
                .expect("store"),
            Guarded::LastAdmin,
            "{e:?}"
        );
        assert_eq!(
            store.delete_user(admin.id).await.expect("store"),
            Guarded::LastAdmin
        );
        let bob = store
            .create_user("bob", "h", Role::Admin, 4)
            .await
            .expect("store")
            .expect("bob");
        assert_eq!(
            store
                .set_role(admin.id, Role::Viewer, 5)
                .await
                .expect("store"),
            Guarded::Done
        );
        assert_eq!(
            store.delete_user(bob.id).await.expect("store"),
            Guarded::LastAdmin
        );
        assert_eq!(
            store.delete_user(999).await.expect("store"),
            Guarded::NotFound
        );
        // TOTP: the flag is an expression (`IS NOT NULL`), read the same on both engines.
        store
            .set_totp_pending(bob.id, b"sealed", 6)
            .await
            .expect("store");
        assert!(store.enable_totp(bob.id, 10, 7).await.expect("store"));
        assert!(
            store
                .user(bob.id)
                .await
                .expect("store")
                .expect("bob")
                .totp_enabled
        );
        assert!(store.consume_totp_step(bob.id, 11).await.expect("store"));
        assert!(
            !store.consume_totp_step(bob.id, 11).await.expect("store"),
            "{e:?}: replay"
        );
    }
}

#[tokio::test]
async fn sessions_other_than_the_kept_one_are_revoked() {
    for (store, _dir) in stores().await {
        let u = store
            .create_first_admin("a", "h", 1)
            .await
            .expect("store")
            .expect("admin");
        for h in [[1u8; 32], [2; 32], [3; 32]] {
            store
                .create_session(&h, u.id, 1, 100, Some("127.0.0.1"), None)
                .await
                .expect("session");
        }
        assert_eq!(
            store
                .delete_user_sessions(u.id, Some(&[1; 32]))
                .await
                .expect("store"),
            2
        );
        assert!(store.session(&[1; 32]).await.expect("store").is_some());
        // No session kept: NULL compares as distinct from every hash.
        assert_eq!(
            store.delete_user_sessions(u.id, None).await.expect("store"),
            1
        );
        assert!(store.session(&[1; 32]).await.expect("store").is_none());
    }
}

#[tokio::test]
async fn servers_heartbeats_and_certificates() {
    for (store, _dir) in stores().await {
        let e = store.engine();
        let a = store
            .create_server(&server("web-1"), 1)
            .await
            .expect("store")
            .expect("created");
        assert!(store
            .create_server(&server("WEB-1"), 1)
            .await
            .expect("store")
            .is_none());
        let b = store
            .create_server(&server("web-2"), 1)
            .await
            .expect("store")
            .expect("created");
        assert!(!a.has_credentials);
        store
            .set_ssh_credentials(a.id, Some(b"sealed"))
            .await
            .expect("store");
        assert!(
            store
                .server(a.id)
                .await
                .expect("store")
                .expect("a")
                .has_credentials
        );
        // Many heartbeats in one statement (a JSON batch on both engines).
        store
            .flush_heartbeats(&[
                (a.id, 50, json!({ "load": [0.5, 0.1, 0.0], "mem": 10 })),
                (b.id, 60, json!(null)),
            ])
            .await
            .expect("flush");
        let a2 = store.server(a.id).await.expect("store").expect("a");
        assert_eq!(a2.last_seen, Some(50), "{e:?}");
        assert_eq!(
            a2.metrics,
            Some(json!({ "load": [0.5, 0.1, 0.0], "mem": 10 }))
        );
        assert_eq!(
            store
                .server(b.id)
                .await
                .expect("store")
                .expect("b")
                .last_seen,
            Some(60)
        );
        // Certificates are revoked in the order they were issued, not by serial.
        for serial in ["ff01", "0a02", "5503"] {
            store
                .record_cert(serial, a.id, 1, 100, false)
                .await
                .expect("cert");
        }
        let mut revoked = store
            .revoke_superseded(a.id, "0a02", 2)
            .await
            .expect("store");
        revoked.sort();
        assert_eq!(revoked, vec!["ff01".to_owned()], "{e:?}");
        assert!(store.cert_active("5503", a.id).await.expect("store"));
        assert!(!store.cert_active("ff01", a.id).await.expect("store"));
    }
}

#[tokio::test]
async fn an_agent_upgrade_ends_when_the_agent_attaches_again() {
    for (store, _dir) in stores().await {
        let e = store.engine();
        let a = store
            .create_server(&server("up"), 1)
            .await
            .expect("store")
            .expect("created");
        let status = |s: &ServerRow| s.upgrade.clone().expect("an upgrade");
        store
            .set_server_online(a.id, "1.0.0", &json!({}), 5, "")
            .await
            .expect("online");
        // Attaching without an upgrade under way leaves none behind.
        assert_eq!(
            store.server(a.id).await.expect("store").expect("a").upgrade,
            None
        );
        assert!(store
            .begin_agent_upgrade(a.id, Some("1.0.0"), "2.0.0", 10, 0)
            .await
            .expect("begin"));
        assert!(
            !store
                .begin_agent_upgrade(a.id, Some("1.0.0"), "2.0.0", 11, 0)
                .await
                .expect("begin"),
            "one at a time {e:?}"
        );
        // A stale one (started before `stale_before`) may be replaced.
        assert!(store
            .begin_agent_upgrade(a.id, Some("1.0.0"), "2.0.0", 12, 11)
            .await
            .expect("begin"));
        store
            .set_server_online(a.id, "2.0.0", &json!({}), 20, "")
            .await
            .expect("online");
        let u = status(&store.server(a.id).await.expect("store").expect("a"));
        assert_eq!(
            (
                u.status.as_str(),
                u.from.as_deref(),
                u.to.as_str(),
                u.error,
                u.started_at,
                u.ended_at
            ),
            ("succeeded", Some("1.0.0"), "2.0.0", None, 12, Some(20)),
            "{e:?}"
        );
        // Rolled back: the agent says why.
        store
            .begin_agent_upgrade(a.id, Some("2.0.0"), "3.0.0", 30, 0)
            .await
            .expect("begin");
        store
            .set_server_online(a.id, "2.0.0", &json!({}), 31, "it exited")
            .await
            .expect("online");
        let u = status(&store.server(a.id).await.expect("store").expect("a"));
        assert_eq!(
            (u.status.as_str(), u.error.as_deref()),
            ("rolled_back", Some("it exited")),
            "{e:?}"
        );
        // Back on the old version without a word: failed, saying so.
        store
            .begin_agent_upgrade(a.id, Some("2.0.0"), "3.0.0", 40, 0)
            .await
            .expect("begin");
        store
            .set_server_online(a.id, "2.0.0", &json!({}), 41, "")
            .await
            .expect("online");
        let u = status(&store.server(a.id).await.expect("store").expect("a"));
        assert_eq!(u.status, "failed", "{e:?}");
        assert!(u.error.is_some_and(|m| m.contains("2.0.0")), "{e:?}");
        // Ended by the controller (no agent came back), and skipped in a rolling one.
        store
            .begin_agent_upgrade(a.id, Some("2.0.0"), "3.0.0", 50, 0)
            .await
            .expect("begin");
        store
            .end_agent_upgrade(a.id, "failed", "gone", 51)
            .await
            .expect("end");
        let u = status(&store.server(a.id).await.expect("store").expect("a"));
        assert_eq!(
            (u.status.as_str(), u.ended_at),
            ("failed", Some(51)),
            "{e:?}"
        );
        store
            .skip_agent_upgrade(a.id, "3.0.0", "not attempted", 60)
            .await
            .expect("skip");
        let u = status(&store.server(a.id).await.expect("store").expect("a"));
        assert_eq!(
            (u.status.as_str(), u.from.as_deref(), u.error.as_deref()),
            ("skipped", Some("2.0.0"), Some("not attempted")),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn pools_names_flags_and_one_running_rollout() {
    for (store, _dir) in stores().await {
        let e = store.engine();
        let s = store
            .create_server(&server("m"), 1)
            .await
            .expect("store")
            .expect("server");
        let mut settings = crate::pools::defaults("Web");
        settings.tls_enabled = true;
        let id = store
            .create_pool(&settings, 1)
            .await
            .expect("store")
            .expect("pool");
        assert!(store
            .create_pool(&crate::pools::defaults("web"), 1)
            .await
            .expect("store")
            .is_none());
        let row = store.pool_row(id).await.expect("store").expect("row");
        assert!(row.settings.tls_enabled, "{e:?}");
        assert!(store.add_member(id, s.id, 3, 2).await.expect("store"));
        let first = store
            .create_rollout(id, 1, &json!({}), &[s.id], 3)
            .await
            .expect("store");
        assert!(first.is_some());
        assert!(
            store
                .create_rollout(id, 1, &json!({}), &[s.id], 4)
                .await
                .expect("store")
                .is_none(),
            "{e:?}: one running rollout per pool"
        );
        let d = store
            .create_domain("App.Example.com", 1)
            .await
            .expect("store");
        assert!(d.is_some());
        assert!(store
            .create_domain("app.example.COM", 1)
            .await
            .expect("store")
            .is_none());
    }
}

#[tokio::test]
async fn certificate_attempts_count_their_failures() {
    for (store, _dir) in stores().await {
        let e = store.engine();
        let id = store
            .create_pool(&crate::pools::defaults("tls"), 1)
            .await
            .expect("store")
            .expect("pool");
        store
            .certificate_failed(id, "no answer", 10, 70)
            .await
            .expect("first failure");
        store
            .certificate_failed(id, "still no answer", 80, 200)
            .await
            .expect("second failure");
        let c = store.certificate(id).await.expect("store").expect("row");
        assert_eq!(c.failures, 2, "{e:?}");
        assert_eq!(c.error.as_deref(), Some("still no answer"));
        assert_eq!(c.next_attempt_at, Some(200));
        store.certificate_force(id).await.expect("force");
        let c = store.certificate(id).await.expect("store").expect("row");
        assert_eq!((c.next_attempt_at, c.failures), (Some(0), 2), "{e:?}");
    }
}

#[tokio::test]
async fn lists_by_name_ignore_case_on_both_engines() {
    for (store, _dir) in stores().await {
        for name in ["beta", "Alpha", "gamma"] {
            store
                .create_pool(&crate::pools::defaults(name), 1)
                .await
                .expect("store")
                .expect("pool");
        }
        let names: Vec<String> = store
            .pool_rows()
            .await
            .expect("store")
            .into_iter()
            .map(|p| p.settings.name)
            .collect();
        assert_eq!(names, ["Alpha", "beta", "gamma"], "{:?}", store.engine());
    }
}

#[tokio::test]
async fn metrics_history_buckets_average_and_prune() {
    for (store, _dir) in stores().await {
        let e = store.engine();
        let s = store
            .create_server(&server("m"), 1)
            .await
            .expect("store")
            .expect("server");
        let beat = |at: i64, load: f64| {
            (
                s.id,
                at,
                json!({ "load": [load, 0.0, 0.0], "memory_used_bytes": 10, "memory_total_bytes": 100,
                        "disk_used_bytes": 5, "disk_total_bytes": 50 }),
            )
        };
        // Two heartbeats in one minute, one in the next; a server that is gone is skipped.
        store
            .record_metrics(&[beat(6_000, 1.0), (999, 6_000, json!({ "load": [1.0] }))])
            .await
            .expect("record");
        store
            .record_metrics(&[beat(6_030, 3.0)])
            .await
            .expect("record");
        store
            .record_metrics(&[beat(6_065, 0.5)])
            .await
            .expect("record");
        let minutes = store.metric_points(s.id, 60, 0).await.expect("points");
        assert_eq!(minutes.len(), 2, "{e:?}: {minutes:?}");
        assert_eq!(minutes[0].at, 6_000 / 60 * 60);
        assert!((minutes[0].load1 - 2.0).abs() < 1e-9, "{e:?}: {minutes:?}");
        assert_eq!((minutes[0].memory_used, minutes[0].disk_total), (10, 50));
        let quarters = store.metric_points(s.id, 900, 0).await.expect("points");
        assert_eq!(quarters.len(), 1, "{e:?}");
        assert!((quarters[0].load1 - 1.5).abs() < 1e-9);
        // A day later the minutes go, the quarters stay for thirty days.
        assert_eq!(store.prune_metrics(6_100 + 86_400).await.expect("prune"), 2);
        assert_eq!(
            store
                .metric_points(s.id, 900, 0)
                .await
                .expect("points")
                .len(),
            1
        );
    }
}

#[tokio::test]
async fn audit_pages_filter_with_optional_values() {
    for (store, _dir) in stores().await {
        for (i, (actor, outcome)) in [("ann", "success"), ("bo", "denied"), ("ann", "failure")]
            .iter()
            .enumerate()
        {
            let rec = NewAudit {
                actor: Some((*actor).to_owned()),
                action: "server.create".into(),
                outcome,
                status: 200,
                ..Default::default()
            };
            store.audit(&rec, i as i64).await.expect("audit");
        }
        let all = AuditFilter::default();
        let (items, total) = store.audit_page(&all, 0, 2).await.expect("page");
        assert_eq!((items.len(), total), (2, 3));
        assert_eq!(items[0].actor.as_deref(), Some("ann"));
        let ann = AuditFilter {
            actor: Some("ann"),
            ..Default::default()
        };
        assert_eq!(store.audit_page(&ann, 0, 10).await.expect("page").1, 2);
        let denied = AuditFilter {
            outcome: Some("denied"),
            ..Default::default()
        };
        assert_eq!(store.audit_page(&denied, 0, 10).await.expect("page").1, 1);
        assert_eq!(store.prune_audit(1).await.expect("prune"), 1);
    }
}

#[tokio::test]
async fn runs_take_ids_from_their_sequence_and_outputs_stay_in_order() {
    for (store, _dir) in stores().await {
        let s = store
            .create_server(&server("s"), 1)
            .await
            .expect("store")
            .expect("server");
        let wf = store
            .create_workflow("w", s.id, &json!({ "steps": [] }), "admin", 1)
            .await
            .expect("store")
            .expect("workflow");
        assert!(store
            .create_workflow("W", s.id, &json!({ "steps": [] }), "admin", 1)
            .await
            .expect("store")
            .is_none());
        let v = json!({});
        let new = crate::store::NewRun {
            workflow_id: wf,
            server_id: s.id,
            trigger: "manual",
            detail: &v,
            definition: &v,
            steps: &[],
            delivery: None,
        };
        let Ok(Queued::Run(a)) = store.create_run(&new, 5, 1).await else {
            panic!("queued")
        };
        let Ok(Queued::Run(b)) = store.create_run(&new, 5, 2).await else {
            panic!("queued")
        };
        assert!(b > a);
    }
}

#[tokio::test]
async fn reopening_checks_the_applied_migrations() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut urls = vec![Store::sqlite_url(&dir.path().join("t.db"))];
    urls.extend(fresh_postgres().await);
    for url in urls {
        let store = Store::open(&url).await.expect("open");
        store.close().await;
        // A second open finds every migration applied, with the same checksums.
        let again = Store::open(&url).await.expect("reopen");
        let n = again.user_count().await.expect("store");
        assert_eq!(n, 0);
        again.close().await;
    }
}

#[tokio::test]
async fn controllers_hold_servers_and_runs_while_they_renew() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut urls = vec![Store::sqlite_url(&dir.path().join("t.db"))];
    urls.extend(fresh_postgres().await);
    for url in urls {
        let a = Store::open(&url).await.expect("open a");
        let b = Store::open(&url).await.expect("open b");
        let e = a.engine();
        assert_ne!(a.controller_id(), b.controller_id());
        let now = crate::time::now_ms();
        a.register_controller("10.0.0.1:7443", now)
            .await
            .expect("store");
        b.register_controller("10.0.0.2:7443", now)
            .await
            .expect("store");
        let living = b.living_controllers(now - 1000).await.expect("store");
        assert_eq!(living.len(), 2, "{e:?}");
        let s = a
            .create_server(&server("s"), 1)
            .await
            .expect("store")
            .expect("server");
        a.set_server_online(s.id, "1", &json!({}), 2, "")
            .await
            .expect("store");
        // B relays to A; A holds it itself.
        let held = b.holder(s.id, now - 1000).await.expect("store");
        assert_eq!(
            held,
            Some((a.controller_id().to_owned(), "10.0.0.1:7443".to_owned())),
            "{e:?}"
        );
        assert_eq!(a.holder(s.id, now - 1000).await.expect("store"), None);
        // A session ending on B does not take the server offline while A holds it.
        assert!(!b.set_server_offline(s.id, "lost", 3).await.expect("store"));
        assert_eq!(
            a.server(s.id).await.expect("store").expect("row").status,
            "online"
        );
        // While A renews, nothing of it is orphaned.
        assert!(b
            .release_orphaned_servers(now - 1000, false, "gone", 4)
            .await
            .expect("store")
            .is_empty());
        // Runs: one of a workflow at a time, whoever starts it.
        let wf = a
            .create_workflow("w", s.id, &json!({ "steps": [] }), "admin", 1)
            .await
            .expect("store")
            .expect("workflow");
        let v = json!({});
        let new = crate::store::NewRun {
            workflow_id: wf,
            server_id: s.id,
            trigger: "manual",
            detail: &v,
            definition: &v,
            steps: &[],
            delivery: None,
        };
        let Ok(Queued::Run(r1)) = a.create_run(&new, 5, 1).await else {
            panic!("queued")
        };
        let Ok(Queued::Run(r2)) = b.create_run(&new, 5, 2).await else {
            panic!("queued")
        };
        assert_eq!(a.start_run(r1, 10).await.expect("store"), Start::Started);
        assert_eq!(b.start_run(r2, 11).await.expect("store"), Start::Busy);
        assert_eq!(
            b.run_driver(r1, now - 1000).await.expect("store"),
            Some((a.controller_id().to_owned(), true))
        );
        assert!(b
            .orphaned_runs(now - 1000, false)
            .await
            .expect("store")
            .is_empty());
        // A stops renewing: past the stale window its server and run are B's to take.
        let later = now + 60_000;
        b.renew_controller(later).await.expect("store");
        let released = b
            .release_orphaned_servers(later - 1000, false, "its controller stopped answering", 5)
            .await
            .expect("store");
        assert_eq!(released, vec![s.id], "{e:?}");
        let row = b.server(s.id).await.expect("store").expect("row");
        assert_eq!(row.status, "offline");
        assert_eq!(row.controller_id, None);
        let orphans = b.orphaned_runs(later - 1000, false).await.expect("store");
        assert_eq!(
            orphans,
            vec![(r1, wf, Some(a.controller_id().to_owned()))],
            "{e:?}"
        );
        assert!(b
            .take_run(r1, Some(a.controller_id()))
            .await
            .expect("store"));
        // Compare-and-set: a second taker (or A itself, back) loses.
        assert!(!a
            .take_run(r1, Some(a.controller_id()))
            .await
            .expect("store"));
        assert_eq!(
            b.run_driver(r1, later - 1000).await.expect("store"),
            Some((b.controller_id().to_owned(), true))
        );
        // One lead: PostgreSQL's advisory lock; SQLite's one controller always leads.
        assert!(a.try_lead().await.expect("store"));
        assert!(a.try_lead().await.expect("store"), "the lead is kept");
        assert_eq!(b.try_lead().await.expect("store"), e == Engine::Sqlite);
        a.retire_controller().await.expect("store");
        a.close().await;
        assert!(
            b.try_lead().await.expect("store"),
            "{e:?}: the lead passes on"
        );
        assert_eq!(b.living_controllers(0).await.expect("store").len(), 1);
        b.close().await;
    }
}
