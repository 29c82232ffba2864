//! Pools benchmark (issue: pools). A release controller and release agents on four nodes
//! of the harness network: an edge with Debian's nginx and three members. Measures:
//!
//! - edge config apply: `POST /api/pools/:id/sync-lb` (render on the edge, `nginx -t`,
//!   reload, and wait until nginx's new workers serve), 30 times, p50/p90;
//! - health change → upstream: a member's app stopped (or started again); the clock runs
//!   until the API shows the member out (or back) — written only after the edge serves
//!   the new upstream (polled every 20 ms). 1 s interval, one failure (success) to change; 10 of each;
//! - a rolling deploy of the three members (drain 0 s) under load from 16 clients, each
//!   request on a new connection: requests served and failed, req/s, and the rollout's
//!   duration minus its runs' own durations (the orchestration overhead), 3 rollouts.
//!
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench pools`

use mezzanine_tests::{adopt, first_admin, fleet_controller, Client, Fleet};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PW: &str = "pool-bench-pw-5";

fn main() {
    mezzanine_tests::bench_main(bench());
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

const APP: &str =
    "mkdir -p /srv/app && echo \"member $(hostname) $VERSION\" > /srv/app/index.html\n\
    printf 'server {\\n listen 8080;\\n root /srv/app;\\n}\\n' > /etc/nginx/sites-enabled/app\n\
    nginx -t && (nginx -s reload 2>/dev/null || nginx)";

async fn member_state(admin: &mut Client, pool: i64, server: i64) -> String {
    let p = admin.get(&format!("/api/pools/{pool}")).await.body;
    p["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["server_id"] == server))
        .and_then(|m| m["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn wait_state(admin: &mut Client, pool: i64, server: i64, want: &str) -> Duration {
    let t = Instant::now();
    while member_state(admin, pool, server).await != want {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{server} never {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

async fn bench() {
    let fleet = Fleet::new();
    let (_, edge_ip) = fleet.node("edge", 11, &[("ROOT_PASSWORD", PW)]);
    let mut members = Vec::new();
    for (i, host) in [12u8, 13, 14].iter().enumerate() {
        members.push(fleet.node(&format!("b{}", i + 1), *host, &[("ROOT_PASSWORD", PW)]));
    }
    let (_ctl, base, _data) = fleet_controller(&fleet, true);
    let mut admin = first_admin(&base).await;
    let edge = adopt(&mut admin, "edge", &edge_ip, PW).await;
    let mut ids = Vec::new();
    for (i, (_, ip)) in members.iter().enumerate() {
        ids.push(adopt(&mut admin, &format!("b{}", i + 1), ip, PW).await);
    }
    let def = |v: &str| json!({ "env": { "VERSION": v }, "steps": [{ "name": "app", "uses": "shell", "with": { "script": APP } }] });
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "app", "server_id": ids[0], "definition": def("v1") }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = admin
        .post(
            "/api/pools",
            json!({ "name": "app", "workflow_id": wf, "max_replicas": 3 }),
        )
        .await;
    let pool = r.body["id"].as_i64().expect("pool");
    let r = admin
        .patch(
            &format!("/api/pools/{pool}"),
            json!({ "edge_server_id": edge, "ports": { "listen": 8088, "target": 8080 },
                    "health": { "interval_s": 1, "timeout_s": 1, "healthy_after": 1, "unhealthy_after": 1, "grace_s": 30 },
                    "drain_timeout_s": 0 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for id in &ids {
        let r = admin
            .post(
                &format!("/api/pools/{pool}/scale-out"),
                json!({ "server_id": id }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        wait_state(&mut admin, pool, *id, "healthy").await;
    }

    // Edge config apply.
    let mut applies = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let r = admin
            .post(&format!("/api/pools/{pool}/sync-lb"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        applies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "edge config apply (30): p50 {:.1} ms, p90 {:.1} ms",
        pct(&mut applies, 0.5),
        pct(&mut applies, 0.9)
    );

    // Health change → upstream.
    let (m1_c, _) = &members[0];
    let (mut outs, mut backs) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let (ok, out) = fleet.exec(m1_c, "rm /etc/nginx/sites-enabled/app && nginx -s reload");
        assert!(ok, "{out}");
        outs.push(
            wait_state(&mut admin, pool, ids[0], "unhealthy")
                .await
                .as_secs_f64()
                * 1000.0,
        );
        let (ok, out) = fleet.exec(
            m1_c,
            "printf 'server {\\n listen 8080;\\n root /srv/app;\\n}\\n' > /etc/nginx/sites-enabled/app && nginx -s reload",
        );
        assert!(ok, "{out}");
        backs.push(
            wait_state(&mut admin, pool, ids[0], "healthy")
                .await
                .as_secs_f64()
                * 1000.0,
        );
    }
    println!(
        "health change → upstream at a 1 s interval (10 each): out p50 {:.0} ms (p90 {:.0}), back p50 {:.0} ms (p90 {:.0})",
        pct(&mut outs, 0.5),
        pct(&mut outs, 0.9),
        pct(&mut backs, 0.5),
        pct(&mut backs, 0.9)
    );

    // Rollouts under load.
    for round in 2..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for _ in 0..16 {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            let url = format!("http://{edge_ip}:8088/");
            clients.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .pool_max_idle_per_host(0)
                    .build()
                    .expect("client");
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => served.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        let r = admin
            .patch(
                &format!("/api/workflows/{wf}"),
                json!({ "definition": def(&format!("v{round}")) }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let t = Instant::now();
        let r = admin
            .post(&format!("/api/pools/{pool}/deploy"), json!({}))
            .await;
        let rollout = r.body["rolloutId"].as_i64().expect("rollout");
        let done: Value = loop {
            let r = admin
                .get(&format!("/api/pools/{pool}/rollouts/{rollout}"))
                .await
                .body;
            if r["status"] != "running" {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = t.elapsed();
        let (s0, f0) = (
            served.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
        assert_eq!(done["status"], "succeeded", "{done}");
        let mut runs_ms = 0.0;
        for m in done["members"].as_array().expect("members") {
            let run = admin
                .get(&format!("/api/deployments/runs/{}", m["runId"]))
                .await
                .body;
            runs_ms += run["duration_ms"].as_f64().unwrap_or(0.0);
        }
        let overhead = (took.as_secs_f64() * 1000.0 - runs_ms) / 3.0;
        println!(
            "rollout {round}: {:.2} s for 3 members (runs {:.0} ms together), overhead {overhead:.0} ms per member; {s0} requests served, {f0} failed, {:.0} req/s",
            took.as_secs_f64(),
            runs_ms,
            s0 as f64 / took.as_secs_f64()
        );
    }
}
