//! Docker benchmark (issue: Docker on every server). One node running its own engine with
//! 200 containers, adopted by the release controller. Measures:
//!
//! - `GET /api/servers/:id/docker/containers` (controller → agent → engine → back, body
//!   read in full) against the same listing asked of the engine directly on the node
//!   (`GET /containers/json?all=1` on its socket, by this same program copied into the
//!   node), interleaved in rounds; p50/p99 of both, their difference and ratio.
//! - Log follow throughput: a container writing as fast as it can; bytes of log per second
//!   reaching an SSE client of the API, against a direct follow on the node's engine.
//!
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench docker`
//! (needs Docker, debootstrap and busybox-static, like the end-to-end suite).

use mezzanine_tests::{first_admin, fleet_controller, wait_status, workload_image_tar, Fleet};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONTAINERS: usize = 200;
const ROUNDS: usize = 5;
const PER_ROUND: usize = 100;
const FLOOD_SECS: u64 = 10;
const SOCKET: &str = "/var/run/docker.sock";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Inside the node: the direct measurements.
    if let Some(i) = args.iter().position(|a| a == "--direct-list") {
        let n: usize = args[i + 1].parse().expect("count");
        let samples = rt.block_on(direct_list(n));
        println!("{}", serde_json::to_string(&samples).expect("json"));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--direct-logs-all") {
        let bytes = rt.block_on(direct_logs_all(&args[i + 1]));
        println!("{bytes}");
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--direct-logs") {
        let secs: u64 = args[i + 2].parse().expect("secs");
        let bytes = rt.block_on(direct_logs(&args[i + 1], secs));
        println!("{bytes}");
        return;
    }
    rt.block_on(bench());
}

async fn engine_get(path: &str) -> tokio::net::UnixStream {
    let mut s = tokio::net::UnixStream::connect(SOCKET)
        .await
        .expect("engine socket");
    let req = format!("GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s
}

/// Milliseconds per full `GET /containers/json?all=1` on the engine's socket.
async fn direct_list(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    let mut buf = Vec::with_capacity(1 << 20);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = engine_get("/containers/json?all=1").await;
        buf.clear();
        s.read_to_end(&mut buf).await.expect("read");
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(buf.starts_with(b"HTTP/1.1 200"), "engine answered badly");
    }
    out
}

/// Bytes of the engine's framed log stream received in `secs` of following.
async fn direct_logs(container: &str, secs: u64) -> u64 {
    let mut s = engine_get(&format!(
        "/containers/{container}/logs?follow=1&stdout=1&stderr=1&tail=0"
    ))
    .await;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

/// Bytes of a whole log, read to its end.
async fn direct_logs_all(container: &str) -> u64 {
    let mut s = engine_get(&format!(
        "/containers/{container}/logs?follow=1&stdout=1&stderr=1&tail=all"
    ))
    .await;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

fn pct(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn exec_ok(container: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(args)
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn bench() {
    let fleet = Fleet::new();
    let images = tempfile::tempdir().expect("tmp");
    let tar = workload_image_tar(images.path(), "v1");
    let (node, ip) = fleet.docker_node("bench", 11, &[("ROOT_PASSWORD", "bench-root-pw-1")]);
    fleet.load_image(&node, &tar, "web:v1");
    let t = Instant::now();
    let (ok, out) = fleet.exec(
        &node,
        &format!(
            "seq {CONTAINERS} | xargs -P 4 -I{{}} docker run -d --name c{{}} --label bench=1 \
             web:v1 sleep 1000000 >/dev/null"
        ),
    );
    assert!(ok, "{out}");
    eprintln!(
        "{CONTAINERS} containers started in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let (_ctl, base, _data) = fleet_controller(&fleet, true);
    let mut admin = first_admin(&base).await;
    let r = admin
        .post(
            "/api/servers",
            json!({ "name": "bench", "host": ip, "username": "root", "auth_type": "password", "password": "bench-root-pw-1" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().expect("id");
    wait_status(&mut admin, id, "online", Duration::from_secs(90)).await;

    // This program, copied into the node, makes the direct calls there.
    let exe = std::env::current_exe().expect("exe");
    let copied = std::process::Command::new("docker")
        .arg("cp")
        .arg(&exe)
        .arg(format!("{node}:/usr/local/bin/mz-docker-bench"))
        .status()
        .expect("docker cp");
    assert!(copied.success());

    let path = format!("/api/servers/{id}/docker/containers");
    let listed = admin.get(&path).await;
    assert_eq!(
        listed.body.as_array().map(Vec::len),
        Some(CONTAINERS),
        "the API lists every container"
    );
    let mut api = Vec::new();
    let mut direct = Vec::new();
    for round in 0..ROUNDS {
        let out = exec_ok(
            &node,
            &["mz-docker-bench", "--direct-list", &PER_ROUND.to_string()],
        );
        let mut d: Vec<f64> = serde_json::from_str(&out).expect("samples");
        let mut a = Vec::with_capacity(PER_ROUND);
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            let resp = admin.open(&path).await;
            assert_eq!(resp.status(), 200);
            let body = resp.bytes().await.expect("body");
            a.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(body.len() > 1000);
        }
        eprintln!(
            "round {round}: direct p50 {:.2} ms, API p50 {:.2} ms",
            pct(&mut d, 0.5),
            pct(&mut a, 0.5)
        );
        direct.extend(d);
        api.extend(a);
    }
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (a50, a99) = (pct(&mut api, 0.5), pct(&mut api, 0.99));
    println!(
        "container list, {CONTAINERS} containers, {} calls each:",
        api.len()
    );
    println!("  direct engine: p50 {d50:.2} ms  p99 {d99:.2} ms");
    println!("  through API:   p50 {a50:.2} ms  p99 {a99:.2} ms");
    println!(
        "  API adds {:.2} ms at p50 (ratio {:.2}), {:.2} ms at p99 (ratio {:.2})",
        a50 - d50,
        a50 / d50,
        a99 - d99,
        a99 / d99
    );

    // Log follow throughput, for short and long lines.
    for line_len in [100usize, 1000] {
        flood(&fleet, &node, &mut admin, id, line_len).await;
    }
    replay(&fleet, &node, &mut admin, id).await;
}

/// A log already on disk (256 MiB of 1000-byte lines from a container that has exited),
/// read start to end: how fast the path carries a log when the engine reads a file
/// instead of waiting on a writer.
async fn replay(fleet: &Fleet, node: &str, admin: &mut mezzanine_tests::Client, id: i64) {
    let line: String = (0..999)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (ok, out) = fleet.exec(
        node,
        &format!(
            "docker run --name replay --log-opt max-size=1g web:v1 \
             sh -c 'yes {line} | head -c 268435456' >/dev/null"
        ),
    );
    assert!(ok, "{out}");
    let mut direct_rates = Vec::new();
    let mut api_rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let bytes: u64 = exec_ok(node, &["mz-docker-bench", "--direct-logs-all", "replay"])
            .parse()
            .expect("bytes");
        direct_rates.push(bytes as f64 / t.elapsed().as_secs_f64() / 1048576.0);
        let t = Instant::now();
        let mut resp = admin
            .open(&format!(
                "/api/servers/{id}/docker/containers/replay/logs?follow=true&tail=all"
            ))
            .await;
        assert_eq!(resp.status(), 200);
        let mut total = 0u64;
        let mut tail = Vec::new();
        while let Some(chunk) = resp.chunk().await.expect("chunk") {
            total += chunk.len() as u64;
            tail = chunk.to_vec();
        }
        api_rates.push(total as f64 / t.elapsed().as_secs_f64() / 1048576.0);
        assert!(
            String::from_utf8_lossy(&tail).contains("event: end"),
            "the stream ends with `end`"
        );
    }
    let mut d = direct_rates.clone();
    let mut a = api_rates.clone();
    let (dm, am) = (pct(&mut d, 0.5), pct(&mut a, 0.5));
    println!("log replay, 256 MiB of 1000-byte lines from an exited container, 3 runs each:");
    println!(
        "  direct engine stream (framed bytes): {} MiB/s (median {dm:.1})",
        fmt_list(&direct_rates)
    );
    println!(
        "  SSE through the API (event bytes):   {} MiB/s (median {am:.1}), ratio {:.2}",
        fmt_list(&api_rates),
        am / dm
    );
    exec_ok(node, &["docker", "rm", "-f", "replay"]);
}

async fn flood(
    fleet: &Fleet,
    node: &str,
    admin: &mut mezzanine_tests::Client,
    id: i64,
    line_len: usize,
) {
    let line: String = (0..line_len - 1)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (ok, out) = fleet.exec(
        node,
        &format!(
            "docker run -d --name flood --log-opt max-size=200m --log-opt max-file=2 web:v1 \
             sh -c 'yes {line}'"
        ),
    );
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut direct_rates = Vec::new();
    let mut api_rates = Vec::new();
    for _ in 0..3 {
        let bytes: u64 = exec_ok(
            node,
            &[
                "mz-docker-bench",
                "--direct-logs",
                "flood",
                &FLOOD_SECS.to_string(),
            ],
        )
        .parse()
        .expect("bytes");
        direct_rates.push(bytes as f64 / FLOOD_SECS as f64 / 1048576.0);

        let mut resp = admin
            .open(&format!(
                "/api/servers/{id}/docker/containers/flood/logs?follow=true&tail=0"
            ))
            .await;
        assert_eq!(resp.status(), 200);
        let t = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(FLOOD_SECS);
        let mut total = 0u64;
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
            total += chunk.len() as u64;
        }
        api_rates.push(total as f64 / t.elapsed().as_secs_f64() / 1048576.0);
        drop(resp);
    }
    let mut d = direct_rates.clone();
    let mut a = api_rates.clone();
    let (dm, am) = (pct(&mut d, 0.5), pct(&mut a, 0.5));
    println!("log follow, `yes` with {line_len}-byte lines, {FLOOD_SECS} s windows, 3 runs each:");
    println!(
        "  direct engine stream (framed bytes): {} MiB/s (median {dm:.1})",
        fmt_list(&direct_rates)
    );
    println!(
        "  SSE through the API (event bytes):   {} MiB/s (median {am:.1}), ratio {:.2}",
        fmt_list(&api_rates),
        am / dm
    );
    exec_ok(node, &["docker", "rm", "-f", "flood"]);
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
}
