//! Several controllers on one PostgreSQL (issue: PostgreSQL and several controllers). Two
//! release controllers share a fresh database and master key; N simulated agents (see
//! `sim`) attach, half with [A, B] as their endpoints and half with [B, A]. Measures:
//! - the time to attach the fleet over both, and each controller's RSS per agent it holds;
//! - failover: A is SIGKILLed. Each of A's agents notices, waits the real agent's backoff
//!   and dials its next endpoint (alternating, as the agent does) until a session opens;
//!   the time from the kill to each one's new session (the controller marks the server
//!   online before it answers): p50 / p99 / max; and until B's API lists all N online;
//! - a ping through B's API to a server that was A's, after the move.
//!
//! A fleet of 10,000 or more is split over two load-generator processes (this one and a
//! child it starts), each holding half the connections: one process here may hold 20,000
//! descriptors. At that size the failover is not measured (B alone could not hold every
//! session under the same limit); instead each controller's CPU over 30 s of heartbeats
//! and relayed pings through B to agents A holds are.
//!
//! Run: `cargo build --release --bins && MEZZANINE_TEST_POSTGRES=postgres://… cargo bench
//! -p mezzanine-tests --bench cluster` (`AGENTS=N`, default 1000; raise `ulimit -n` for
//! large fleets: the load generator holds one connection per agent).

use mezzanine_tests::{binary, first_admin, pct, rss_kib, sim, Process};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A release controller on `agent_port` with its data in `data`, on database `url`.
fn controller(data: &std::path::Path, agent_port: u16, url: &str) -> Process {
    let agent_listen = format!("127.0.0.1:{agent_port}");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        &agent_listen,
        "--data-dir",
        data.to_str().expect("utf8"),
        "--database-url",
        url,
        // The whole simulated fleet shares 127.0.0.1; real agents each have their own
        // address (see the agents benchmark).
        "--agent-anonymous-per-ip",
        "1024",
    ];
    Process::spawn(&binary("mezzanine", true), &args)
}

fn main() {
    if let Ok(file) = std::env::var("CLUSTER_CHILD") {
        mezzanine_tests::bench_main(child(file));
        return;
    }
    mezzanine_tests::bench_main(bench());
}

/// CPU ticks (user + system) of `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Attaches `(endpoint, agent)` pairs 128 at a time; the sessions' end receivers.
async fn attach_all(
    ca: &rustls::pki_types::CertificateDer<'static>,
    agents: Vec<(String, sim::Enrolled)>,
) -> Vec<(sim::Enrolled, tokio::sync::oneshot::Receiver<()>)> {
    let slots = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(agents.len());
    for (endpoint, e) in agents {
        let (ca, slots) = (ca.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _p = slots.acquire().await.expect("sem");
            let ended = sim::attach(&endpoint, &ca, &e).await.expect("attach");
            (e, ended)
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

/// The second load generator: attaches the agents in `file`, says so, and holds their
/// sessions until its standard input closes.
async fn child(file: String) {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("agents file")).expect("json");
    let ca = rustls::pki_types::CertificateDer::from(
        hex::decode(v["ca"].as_str().expect("ca")).expect("hex"),
    );
    let agents: Vec<(String, sim::Enrolled)> = v["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| {
            (
                a["endpoint"].as_str().expect("endpoint").to_owned(),
                sim::Enrolled::from_json(&a["agent"]),
            )
        })
        .collect();
    let sessions = attach_all(&ca, agents).await;
    println!("attached {}", sessions.len());
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await;
    drop(sessions);
}

async fn bench() {
    let n: usize = std::env::var("AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let base = std::env::var("MEZZANINE_TEST_POSTGRES")
        .expect("several controllers need PostgreSQL: set MEZZANINE_TEST_POSTGRES");
    let url = mezzanine_tests::create_postgres_database(base.trim_end_matches('/'));
    let dir = tempfile::tempdir().expect("tmp");
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = controller(&data_a, port_a, &url);
    let addr_a = a.wait_ready(Duration::from_secs(15));
    // B shares A's master key (the CA and every secret are sealed with it).
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&data_b)
            .expect("data b");
        let key = data_b.join("master.key");
        std::fs::copy(data_a.join("master.key"), &key).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("mode");
    }
    let mut b = controller(&data_b, port_b, &url);
    let addr_b = b.wait_ready(Duration::from_secs(15));
    let (ep_a, ep_b) = (
        format!("https://127.0.0.1:{port_a}"),
        format!("https://127.0.0.1:{port_b}"),
    );
    let admin_a = first_admin(&format!("http://{addr_a}")).await;
    let mut admin_b = mezzanine_tests::admin_login(&format!("http://{addr_b}")).await;
    println!("fleet size: {n} simulated agents over two controllers on one PostgreSQL");

    let t = Instant::now();
    let tokens = sim::create_servers(&admin_a, n).await;
    println!("created {n} servers in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let (enrolled, ca) = sim::enroll_all(&ep_a, tokens).await;
    println!("enrolled {n} agents in {:.1} s", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (base_a, base_b) = (rss_kib(a.pid()), rss_kib(b.pid()));

    // Even agents start on A, odd ones on B; a large fleet is split over two processes.
    let split = n >= 10_000;
    let t = Instant::now();
    let (mut meta, mut pairs, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for (i, e) in enrolled.into_iter().enumerate() {
        let endpoints = if i % 2 == 0 {
            [ep_a.clone(), ep_b.clone()]
        } else {
            [ep_b.clone(), ep_a.clone()]
        };
        if split && i >= n / 2 {
            theirs.push(json!({ "endpoint": endpoints[0], "agent": e.to_json() }));
        } else {
            pairs.push((endpoints[0].clone(), e));
            meta.push((i, endpoints));
        }
    }
    let mut helper = None;
    if split {
        let file = dir.path().join("agents.json");
        let body = json!({ "ca": hex::encode(&ca), "agents": theirs });
        std::fs::write(&file, body.to_string()).expect("agents file");
        let mut c = std::process::Command::new(std::env::current_exe().expect("exe"))
            .env("CLUSTER_CHILD", &file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("second load generator");
        let out = c.stdout.take().expect("stdout");
        let ready = std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            line
        });
        helper = Some((c, ready));
    }
    let sessions = attach_all(&ca, pairs).await;
    let mut fleet: Vec<_> = meta
        .into_iter()
        .zip(sessions)
        .map(|((i, endpoints), (e, ended))| (i, e, endpoints, ended))
        .collect();
    let mut helper = helper.map(|(c, ready)| {
        let line = ready.join().expect("reader");
        assert!(
            line.starts_with("attached"),
            "second load generator: {line:?}"
        );
        c
    });
    let attach_secs = t.elapsed().as_secs_f64();
    println!(
        "attached {n} agents over both in {attach_secs:.1} s ({:.0} attaches/s)",
        n as f64 / attach_secs
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (rss_a, rss_b) = (rss_kib(a.pid()), rss_kib(b.pid()));
    let held = n as f64 / 2.0;
    println!(
        "RSS: A {:.1} MiB ({:.1} KiB per agent above its baseline), B {:.1} MiB ({:.1} KiB per agent)",
        rss_a as f64 / 1024.0,
        rss_a.saturating_sub(base_a) as f64 / held,
        rss_b as f64 / 1024.0,
        rss_b.saturating_sub(base_b) as f64 / held,
    );
    let list = admin_b.get("/api/servers").await.body;
    let online = list
        .as_array()
        .expect("list")
        .iter()
        .filter(|s| s["status"] == "online")
        .count();
    assert_eq!(online, n, "B lists every server online, A's included");
    if let Some(c) = helper.as_mut() {
        // The large fleet: heartbeat CPU of each controller, and relayed pings.
        let (a0, b0) = (cpu_ticks(a.pid()), cpu_ticks(b.pid()));
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (a1, b1) = (cpu_ticks(a.pid()), cpu_ticks(b.pid()));
        println!(
            "CPU over 30 s of heartbeats (every 10 s): A {:.2}% of one core, B {:.2}%",
            (a1 - a0) as f64 / 30.0,
            (b1 - b0) as f64 / 30.0
        );
        let mut rtt = Vec::new();
        for (_, e, ..) in fleet.iter().filter(|(i, ..)| i % 2 == 0).take(200) {
            let t = Instant::now();
            let r = admin_b
                .post(&format!("/api/servers/{}/ping", e.id), json!({}))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            rtt.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "200 pings through B to agents held by A (relayed), sequential: p50 {:.1} ms, p99 {:.1} ms",
            pct(&mut rtt, 0.5),
            pct(&mut rtt, 0.99)
        );
        drop(c.stdin.take());
        let _ = c.wait();
        println!("(failover not measured at this size: see the header)");
        fleet.clear();
        b.terminate(Duration::from_secs(30));
        a.terminate(Duration::from_secs(30));
        return;
    }
    let moved_id = fleet
        .iter()
        .find(|(i, ..)| i % 2 == 0)
        .map(|(_, e, ..)| e.id)
        .expect("an agent of A");
    let r = admin_b
        .post(&format!("/api/servers/{moved_id}/ping"), json!({}))
        .await;
    assert_eq!(r.status, 200, "ping relayed through A: {}", r.body);
    println!(
        "ping through B to an agent held by A (relayed): {:.1} ms",
        r.body["rtt_ms"].as_f64().unwrap_or(f64::NAN)
    );

    // Failover: A dies; its agents move to B by themselves.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    for (i, e, endpoints, ended) in fleet.into_iter().filter(|(i, ..)| i % 2 == 0) {
        let (ca, done_tx) = (ca.clone(), done_tx.clone());
        tokio::spawn(async move {
            let _ = ended.await;
            let mut failures = 1u32;
            let mut at = 1usize;
            // A cheap per-agent draw for the backoff's jitter.
            let mut seed = (i as u64).wrapping_mul(6364136223846793005).wrapping_add(1);
            loop {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let draw = (seed >> 11) as f64 / (1u64 << 53) as f64;
                tokio::time::sleep(sim::backoff(failures, draw)).await;
                match sim::attach(&endpoints[at], &ca, &e).await {
                    Ok(ended) => {
                        let _ = done_tx.send((e.id, Instant::now()));
                        // Keep the session: the receiver must outlive the measurement.
                        let _ = ended.await;
                        return;
                    }
                    Err(_) => {
                        failures += 1;
                        at = (at + 1) % endpoints.len();
                    }
                }
            }
        });
    }
    drop(done_tx);
    let moving = n.div_ceil(2);
    let kill_at = Instant::now();
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(5));
    let mut lat = Vec::with_capacity(moving);
    let deadline = kill_at + Duration::from_secs(120);
    while lat.len() < moving {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, done_rx.recv()).await {
            Ok(Some((_, at))) => lat.push(at.duration_since(kill_at).as_secs_f64()),
            _ => break,
        }
    }
    assert_eq!(
        lat.len(),
        moving,
        "every agent of A reattached within 120 s"
    );
    let max = lat.iter().copied().fold(0.0, f64::max);
    println!(
        "failover of {moving} agents from A (SIGKILL) to B: p50 {:.2} s, p99 {:.2} s, max {max:.2} s",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
    );
    // The database: every server online and held by B (A's reattached, B's never left).
    let b_id = std::fs::read_to_string(data_b.join("controller-id")).expect("B's id");
    let b_id = b_id.trim().to_owned();
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&url).await.expect("db");
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM servers WHERE status = 'online' AND controller_id = $1",
        )
        .bind(&b_id)
        .fetch_one(&db)
        .await
        .expect("count");
        if held == n as i64 {
            println!(
                "all {n} servers online and held by B {:.2} s after the kill",
                kill_at.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            kill_at.elapsed() < Duration::from_secs(120),
            "only {held} of {n} held by B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.close().await;
    let r = admin_b
        .post(&format!("/api/servers/{moved_id}/ping"), json!({}))
        .await;
    assert_eq!(r.status, 200, "ping after the move: {}", r.body);
    println!(
        "RSS of B holding all {n}: {:.1} MiB",
        rss_kib(b.pid()) as f64 / 1024.0
    );
    b.terminate(Duration::from_secs(20));
}
