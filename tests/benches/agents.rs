//! Agent fleet benchmark (issue: agent channel). Starts the release controller, then a
//! load generator in this process attaches N simulated agents — each with its own key
//! generated here, its own certificate from a real `Enroll`, its own TLS connection and
//! `Attach` stream, and heartbeats every 10 s — and measures:
//! - controller RSS per attached agent above its idle baseline;
//! - controller CPU while N agents heartbeat every 10 s;
//! - time to enroll and to attach all N;
//! - one command (ping through `POST /api/servers/{id}/ping`) to every agent at once:
//!   p50 / p99 of the round trips and the time until the last reply;
//! - the real `mezzanine-agent` process idle: RSS, CPU, stripped binary size.
//!
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench agents`
//! (`AGENTS=N` to change the fleet size; default 10000).

use mezzanine_tests::{binary, first_admin, sim, Process};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (rss, ticks)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The release controller on loopback ports of its choosing, serving `agent_bin`; on
/// PostgreSQL when `MEZZANINE_TEST_POSTGRES` is set and `BENCH_DATABASE=postgres` (a fresh
/// database), else on SQLite.
fn controller(data: &std::path::Path, agent_bin: &std::path::Path) -> Process {
    let mut args = vec![
        "serve".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--agent-listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.to_str().expect("utf8").into(),
        "--agent-binary".into(),
        agent_bin.to_str().expect("utf8").into(),
        // The whole simulated fleet shares 127.0.0.1 and attaches 128 at a time; real
        // agents each come from their own address. Handshakes in progress count as
        // anonymous connections, so the per-address cap (32 by default) is raised here.
        "--agent-anonymous-per-ip".into(),
        "512".into(),
        // The ping rounds send 256 API requests at once from this one address; the
        // client's pool may hold a few more connections than that.
        "--max-connections-per-ip".into(),
        "1024".into(),
    ];
    if std::env::var("BENCH_DATABASE").is_ok_and(|d| d == "postgres") {
        let base = std::env::var("MEZZANINE_TEST_POSTGRES")
            .expect("BENCH_DATABASE=postgres needs MEZZANINE_TEST_POSTGRES");
        args.push("--database-url".into());
        args.push(mezzanine_tests::create_postgres_database(
            base.trim_end_matches('/'),
        ));
        println!("database: PostgreSQL");
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::spawn(&binary("mezzanine", true), &args)
}

fn main() {
    mezzanine_tests::bench_main(bench());
}

async fn bench() {
    let n: usize = std::env::var("AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let agent_bin = binary("mezzanine-agent", true);
    let mut ctl = controller(&data, &agent_bin);
    let addr = ctl.wait_ready(Duration::from_secs(10));
    let pid = ctl.child.id();
    let agent_port: u16 = {
        let out = ctl.output();
        out.lines()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["fields"]["agent_listen"]
                    .as_str()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("agent_listen in the ready line")
    };
    let endpoint = format!("https://127.0.0.1:{agent_port}");
    let base = format!("http://{addr}");
    let mut admin = first_admin(&base).await;
    println!("fleet size: {n} simulated agents");

    // Servers and join tokens through the API.
    let t = Instant::now();
    let tokens = sim::create_servers(&admin, n).await;
    println!(
        "created {n} servers with join tokens via the API in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Enrollment: real keys, CSRs and Enroll calls, multiplexed on a few connections.
    let t = Instant::now();
    let (enrolled, ca) = sim::enroll_all(&endpoint, tokens).await;
    println!("enrolled {n} agents in {:.1} s", t.elapsed().as_secs_f64());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (base_rss, _) = proc_stat(pid);
    println!(
        "controller RSS before attaching: {:.1} MiB",
        base_rss as f64 / 1024.0
    );

    // Attach them all.
    let t = Instant::now();
    let slots = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(n);
    let ids: Vec<u64> = enrolled.iter().map(|e| e.id).collect();
    for e in enrolled {
        let (endpoint, ca, slots) = (endpoint.clone(), ca.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _p = slots.acquire().await.expect("sem");
            sim::attach(&endpoint, &ca, &e)
                .await
                .map(|ended| (e, ended))
        }));
    }
    // Kept for the rest of the benchmark: dropping them does not end the sessions.
    let mut sessions = Vec::with_capacity(n);
    for t in tasks {
        sessions.push(t.await.expect("join").expect("attach"));
    }
    let attach_secs = t.elapsed().as_secs_f64();
    let online = admin.get("/api/servers").await.body;
    let count = online
        .as_array()
        .expect("list")
        .iter()
        .filter(|s| s["status"] == "online")
        .count();
    assert_eq!(count, n, "all online according to the API");
    println!(
        "attached {n} agents in {attach_secs:.1} s ({:.0} attaches/s); API lists {count} online",
        n as f64 / attach_secs
    );

    // Settle, then measure memory and heartbeat CPU over 30 s (3 heartbeat rounds).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (rss, ticks0) = proc_stat(pid);
    let per_agent = (rss.saturating_sub(base_rss)) as f64 / n as f64;
    println!(
        "controller RSS with {n} attached: {:.1} MiB; {:.1} KiB per agent above baseline",
        rss as f64 / 1024.0,
        per_agent
    );
    let window = Duration::from_secs(30);
    // PERF_OUT=file records a profile of the controller over the window (perf from Debian).
    let perf = std::env::var("PERF_OUT").ok().map(|out| {
        std::process::Command::new("perf")
            .args([
                "record",
                "-g",
                "-p",
                &pid.to_string(),
                "-o",
                &out,
                "--",
                "sleep",
                "30",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf")
    });
    tokio::time::sleep(window).await;
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    let (_, ticks1) = proc_stat(pid);
    let hz = 100.0;
    let cpu = (ticks1 - ticks0) as f64 / hz / window.as_secs_f64() * 100.0;
    println!(
        "controller CPU while {n} agents heartbeat every 10 s: {cpu:.2}% of one core (30 s window)"
    );

    // One command to every agent at once, through the API.
    for round in 0..3 {
        let t = Instant::now();
        let slots = Arc::new(Semaphore::new(256));
        let mut tasks = Vec::with_capacity(n);
        for id in &ids {
            let mut c = admin.clone();
            let slots = slots.clone();
            let id = *id;
            tasks.push(tokio::spawn(async move {
                let _p = slots.acquire().await.expect("sem");
                let s = Instant::now();
                let r = c.post(&format!("/api/servers/{id}/ping"), json!({})).await;
                assert_eq!(r.status, 200, "{}", r.body);
                s.elapsed().as_secs_f64() * 1000.0
            }));
        }
        let mut lat = Vec::with_capacity(n);
        for t in tasks {
            lat.push(t.await.expect("join"));
        }
        let total = t.elapsed().as_secs_f64();
        println!(
            "round {round}: ping to all {n}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, last reply after {total:.2} s",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );
    }
    ctl.terminate(Duration::from_secs(30));

    // The real agent, idle.
    agent_idle(&agent_bin).await;
}

async fn agent_idle(agent_bin: &std::path::Path) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut ctl = controller(&dir.path().join("d"), agent_bin);
    let addr = ctl.wait_ready(Duration::from_secs(10));
    let mut admin = first_admin(&format!("http://{addr}")).await;
    let r = admin
        .post(
            "/api/servers",
            json!({ "name": "real", "host": "127.0.0.1", "auth_type": "manual" }),
        )
        .await;
    let token = r.body["token"].as_str().expect("token").to_owned();
    let state = dir.path().join("agent");
    let out = std::process::Command::new(agent_bin)
        .args([
            "enroll",
            &token,
            "--state-dir",
            state.to_str().expect("utf8"),
        ])
        .output()
        .expect("enroll");
    assert!(out.status.success());
    let mut agent = Process::spawn(
        agent_bin,
        &["run", "--state-dir", state.to_str().expect("utf8")],
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss0, t0) = proc_stat(agent.child.id());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (rss1, t1) = proc_stat(agent.child.id());
    println!(
        "real agent idle (heartbeat 10 s): RSS {:.1} MiB at 5 s, {:.1} MiB at 65 s; CPU {:.3}% of one core over 60 s",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (t1 - t0) as f64 / 100.0 / 60.0 * 100.0
    );
    let stripped = dir.path().join("stripped");
    std::fs::copy(agent_bin, &stripped).expect("copy");
    let _ = std::process::Command::new("strip").arg(&stripped).status();
    println!(
        "agent binary: {:.2} MiB as built, {:.2} MiB stripped",
        std::fs::metadata(agent_bin).expect("meta").len() as f64 / 1048576.0,
        std::fs::metadata(&stripped).expect("meta").len() as f64 / 1048576.0
    );
    agent.terminate(Duration::from_secs(10));
    ctl.terminate(Duration::from_secs(10));
}
