//! Panel benchmark (issue: the panel). A release controller with 200 servers and 1,000
//! finished runs, opened by headless Chromium over WebDriver on loopback. Measures:
//!
//! - load to interactive: from navigation start to the dashboard's `mz:page-ready` mark
//!   (the router sets it once the page's data is on screen); 20 loads, each a fresh
//!   document, p50/p90;
//! - bytes on a first load: the transfer sizes of the document and every resource the
//!   dashboard fetched, with the browser cache empty;
//! - API requests the dashboard makes in a minute while idle (the event stream excluded).
//!
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench panel`

use mezzanine_tests::browser::Browser;
use mezzanine_tests::{
    add_server, attached_agent_with, binary, first_admin, Agent, ControllerProcess, ADMIN_PASSWORD,
};
use serde_json::json;
use std::time::{Duration, Instant};

const SERVERS: usize = 200;
const WORKFLOWS: usize = 5;
const RUNS: usize = 1000;
const LOADS: usize = 20;

fn main() {
    mezzanine_tests::bench_main(bench());
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn bench() {
    let agent_bin = binary("mezzanine-agent", true);
    let ctl =
        ControllerProcess::start(true, &["--agent-binary", agent_bin.to_str().expect("utf8")]);
    let base = ctl.base.clone();
    let mut admin = first_admin(&base).await;

    // One real agent runs every step; the other 199 servers wait for theirs.
    let agent = Agent {
        dir: tempfile::tempdir().expect("tmp"),
        bin: agent_bin,
    };
    let (server, _agent_dir, _agent) = attached_agent_with(&mut admin, "runner", 10, agent).await;
    for i in 1..SERVERS {
        add_server(&mut admin, &format!("web-{i:03}")).await;
    }
    let mut workflows = Vec::new();
    for w in 0..WORKFLOWS {
        let r = admin
            .post(
                "/api/workflows",
                json!({ "name": format!("app-{w}"), "server_id": server, "definition": { "steps": [
                    { "name": "build", "uses": "shell", "with": { "script": "echo building; echo done" } }
                ] } }),
            )
            .await;
        workflows.push(r.body["id"].as_i64().expect("workflow"));
    }
    // Runs in waves of the queue limit (20 per workflow), each wave waited out.
    let started = Instant::now();
    let mut queued = 0;
    while queued < RUNS {
        for wf in &workflows {
            for _ in 0..20 {
                if queued == RUNS {
                    break;
                }
                let r = admin
                    .post(&format!("/api/workflows/{wf}/run"), json!({}))
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
                queued += 1;
            }
        }
        loop {
            let q = admin
                .get("/api/deployments/runs?status=queued&per_page=1")
                .await
                .body["total"]
                .as_i64();
            let r = admin
                .get("/api/deployments/runs?status=running&per_page=1")
                .await
                .body["total"]
                .as_i64();
            if q == Some(0) && r == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let total = admin.get("/api/deployments/runs?per_page=1").await.body["total"].as_i64();
    assert_eq!(total, Some(RUNS as i64));
    println!(
        "setup: {SERVERS} servers, {RUNS} runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let b = Browser::start().await;
    b.open(&format!("{base}/")).await;
    b.until(
        "the login form",
        "!document.querySelector('#view-login').hidden",
    )
    .await;
    // The first load after login, from an empty cache: what it transferred.
    b.type_into("#login-form input[name=username]", "admin")
        .await;
    b.type_into("#login-form input[name=password]", ADMIN_PASSWORD)
        .await;
    b.click("#login-form button[type=submit]").await;
    b.until(
        "the dashboard",
        "performance.getEntriesByName('mz:page-ready').length > 0",
    )
    .await;
    let bytes = b
        .js("const nav = performance.getEntriesByType('navigation')[0]; return nav.transferSize + performance.getEntriesByType('resource').filter(e => !e.name.includes('/api/events')).reduce((a, e) => a + e.transferSize, 0);")
        .await;
    let files = b.js("return performance.getEntriesByType('resource').filter(e => !e.name.includes('/api/')).length;").await;
    println!("first load: {bytes} bytes transferred ({files} files besides the document, API answers included, uncompressed)");

    let mut loads = Vec::with_capacity(LOADS);
    for _ in 0..LOADS {
        b.open("about:blank").await;
        b.open(&format!("{base}/#/")).await;
        b.until(
            "the dashboard",
            "performance.getEntriesByName('mz:page-ready').length > 0",
        )
        .await;
        let ms = b
            .js("return performance.getEntriesByName('mz:page-ready')[0].startTime;")
            .await;
        let rows = b.js("return document.querySelectorAll('#runs tbody tr').length + ' runs, ' + document.querySelector('#server-tiles').innerText.replace(/\\n/g, ' ');").await;
        assert!(
            rows.as_str().is_some_and(|r| r.starts_with("10 runs")),
            "{rows}"
        );
        loads.push(ms.as_f64().expect("ms"));
    }
    println!(
        "dashboard load to interactive ({LOADS} loads): p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms",
        pct(&mut loads, 0.5),
        pct(&mut loads, 0.9),
        pct(&mut loads, 0.0)
    );

    let count = "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/') && !e.name.includes('/api/events')).length;";
    let before = b.js(count).await.as_i64().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = b.js(count).await.as_i64().unwrap_or(0);
    println!(
        "idle dashboard: {} API requests in 60 s (plus its one event stream)",
        after - before
    );
}
