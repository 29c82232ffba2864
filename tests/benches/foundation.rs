//! Foundation benchmark (issue: controller foundation). Runs the release `mezzanine`
//! binary and measures:
//! - start-to-first-healthy time (spawn → first 200 from /healthz), on a fresh data dir
//!   (migrations + key creation) and on an existing one;
//! - idle RSS a second after start;
//! - authenticated `GET /api/auth/state` throughput and latency with `wrk` (Debian's
//!   package), 64 connections, on loopback;
//! - RSS after 100 logins (four at a time, so several threads hash) and after 60 s idle:
//!   argon2id's 19 MiB of working memory per hash must not stay with the process.
//!
//! `--logins` runs only the last measurement.
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench foundation`.

use mezzanine_tests::{binary, Process, ADMIN_PASSWORD};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn http(addr: SocketAddr, request: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn healthy(addr: SocketAddr) -> bool {
    http(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Spawns the server on a known free port and times spawn → first healthy answer.
fn start(bin: &std::path::Path, data: &std::path::Path) -> (Process, SocketAddr, Duration) {
    start_with(bin, data, &[])
}

fn start_with(
    bin: &std::path::Path,
    data: &std::path::Path,
    extra: &[&str],
) -> (Process, SocketAddr, Duration) {
    let addr = free_port();
    let listen = addr.to_string();
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--data-dir",
        data.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    let p = Process::spawn(bin, &args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(addr) {
        assert!(Instant::now() < deadline, "not healthy:\n{}", p.output());
        std::thread::sleep(Duration::from_micros(500));
    }
    let took = p.started.elapsed();
    (p, addr, took)
}

fn wrk(addr: SocketAddr, cookie: &str, secs: u32) -> (f64, f64, f64) {
    wrk_path(addr, cookie, secs, "/api/auth/state")
}

fn wrk_path(addr: SocketAddr, cookie: &str, secs: u32, path: &str) -> (f64, f64, f64) {
    let out = std::process::Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{secs}s"),
            "--latency",
            "-H",
            &format!("Cookie: cp_session={cookie}"),
            &format!("http://{addr}{path}"),
        ])
        .output()
        .expect("wrk is missing: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Requests/sec");
    let pct = |label: &str| -> f64 {
        let raw = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .expect("latency line")
            .trim();
        let (num, unit): (String, String) =
            raw.chars().partition(|c| c.is_ascii_digit() || *c == '.');
        let n: f64 = num.parse().expect("number");
        match unit.as_str() {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            other => panic!("unit {other}"),
        }
    };
    (rps, pct("50%"), pct("99%"))
}

fn setup_admin(addr: SocketAddr) -> String {
    let body = format!(r#"{{"username":"admin","password":"{ADMIN_PASSWORD}"}}"#);
    let resp = http(
        addr,
        &format!(
            "POST /api/auth/setup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("setup");
    resp.lines()
        .find_map(|l| l.strip_prefix("set-cookie: cp_session="))
        .and_then(|v| v.split(';').next())
        .expect("cookie")
        .to_owned()
}

/// RSS (MiB) after setup, after 100 logins, and after 60 s idle.
fn login_memory(bin: &std::path::Path) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut p, addr, _) = start(bin, &dir.path().join("data"));
    setup_admin(addr);
    let mib = |p: &Process| rss_kib(p.child.id()) as f64 / 1024.0;
    let after_setup = mib(&p);
    let body = format!(r#"{{"username":"admin","password":"{ADMIN_PASSWORD}"}}"#);
    let login = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..25 {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let login = login.clone();
                std::thread::spawn(move || {
                    http(addr, &login).is_some_and(|r| r.starts_with("HTTP/1.1 200"))
                })
            })
            .collect();
        for w in workers {
            assert!(w.join().expect("join"), "a login failed");
        }
    }
    let after_logins = mib(&p);
    std::thread::sleep(Duration::from_secs(60));
    let idle = mib(&p);
    p.terminate(Duration::from_secs(10));
    (after_setup, after_logins, idle)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = binary("mezzanine", true);
    if std::env::args().any(|a| a == "--engines") {
        engines(&bin);
        return;
    }
    let (setup, logins, idle) = login_memory(&bin);
    println!(
        "RSS after setup {setup:.1} MiB, after 100 logins (4 at a time) {logins:.1} MiB, after 60 s idle {idle:.1} MiB"
    );
    if std::env::args().any(|a| a == "--logins") {
        return;
    }
    let runs = 15;

    let mut fresh = Vec::new();
    let mut warm = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tmp");
        let data = dir.path().join("data");
        let (mut p, _, t) = start(&bin, &data);
        fresh.push(t.as_secs_f64() * 1000.0);
        p.terminate(Duration::from_secs(10));
        let (mut p, _, t) = start(&bin, &data);
        warm.push(t.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kib(p.child.id()) as f64 / 1024.0);
        p.terminate(Duration::from_secs(10));
    }
    println!(
        "start-to-healthy, fresh data dir: median {:.1} ms, p90 {:.1} ms ({runs} runs)",
        median(&mut fresh),
        percentile(&mut fresh, 0.9)
    );
    println!(
        "start-to-healthy, existing data dir: median {:.1} ms, p90 {:.1} ms ({runs} runs)",
        median(&mut warm),
        percentile(&mut warm, 0.9)
    );
    println!(
        "idle RSS 1 s after start: median {:.1} MiB, max {:.1} MiB",
        median(&mut rss),
        percentile(&mut rss, 1.0)
    );

    let dir = tempfile::tempdir().expect("tmp");
    let (mut p, addr, _) = start(&bin, &dir.path().join("data"));
    let cookie = setup_admin(addr);
    wrk(addr, &cookie, 2); // warm-up
    let mut rps = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for _ in 0..5 {
        let (r, a, b) = wrk(addr, &cookie, 10);
        rps.push(r);
        p50.push(a);
        p99.push(b);
    }
    println!(
        "GET /api/auth/state (authenticated), 64 connections, 5 x 10 s: median {:.0} req/s (min {:.0}, max {:.0}); latency p50 median {:.2} ms, p99 median {:.2} ms (worst {:.2} ms)",
        median(&mut rps),
        percentile(&mut rps, 0.0),
        percentile(&mut rps, 1.0),
        median(&mut p50),
        median(&mut p99),
        percentile(&mut p99, 1.0),
    );
    println!(
        "RSS after load: {:.1} MiB",
        rss_kib(p.child.id()) as f64 / 1024.0
    );
    p.terminate(Duration::from_secs(10));
}

/// The same load on SQLite and on PostgreSQL (`MEZZANINE_TEST_POSTGRES`, a local server):
/// the cached session path (`GET /api/auth/state`) and one that reads the database on
/// every request (`GET /api/servers`, 50 servers). Five 10 s runs each after a warm-up.
fn engines(bin: &std::path::Path) {
    let base = std::env::var("MEZZANINE_TEST_POSTGRES")
        .expect("--engines needs MEZZANINE_TEST_POSTGRES=postgres://USER:PW@127.0.0.1:PORT");
    let pg = mezzanine_tests::create_postgres_database(base.trim_end_matches('/'));
    for (engine, extra) in [
        ("SQLite", vec![]),
        ("PostgreSQL", vec!["--database-url", pg.as_str()]),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut p, addr, _) = start_with(bin, &dir.path().join("data"), &extra);
        let cookie = setup_admin(addr);
        for i in 0..50 {
            let body = format!(r#"{{"name":"s{i}","host":"10.0.0.{i}","auth_type":"manual"}}"#);
            http(
                addr,
                &format!(
                    "POST /api/servers HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: cp_session={cookie}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
            )
            .expect("create server");
        }
        for path in ["/api/auth/state", "/api/servers"] {
            wrk_path(addr, &cookie, 2, path);
            let (mut rps, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..5 {
                let (r, a, b) = wrk_path(addr, &cookie, 10, path);
                rps.push(r);
                p50.push(a);
                p99.push(b);
            }
            println!(
                "{engine}: GET {path}, 64 connections, 5 x 10 s: median {:.0} req/s (min {:.0}); p50 {:.2} ms, p99 {:.2} ms (worst {:.2})",
                median(&mut rps),
                percentile(&mut rps, 0.0),
                median(&mut p50),
                median(&mut p99),
                percentile(&mut p99, 1.0),
            );
        }
        println!(
            "{engine}: controller RSS after load {:.1} MiB",
            rss_kib(p.child.id()) as f64 / 1024.0
        );
        p.terminate(Duration::from_secs(10));
    }
}
