//! Deploy benchmark (issue: deploy workflows). Release controller and release agent
//! processes on loopback. Measures:
//!
//! - webhook received → first output line of the first step at an API client: the clock
//!   starts before the signed `POST /api/webhooks/:id` is sent; the client then opens
//!   `GET /api/deployments/runs/:id/events` and stops the clock at the first `output`
//!   event. 100 runs, p50/p99.
//! - throughput: one step printing 1 GiB (`yes` lines of 100 bytes through `head -c`),
//!   read by an SSE client; MiB/s of log text delivered, and the controller's RSS before
//!   and at its highest during the run.
//!
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench deploys`

use hmac::Mac;
use mezzanine_tests::{
    attached_agent_with, binary, first_admin, pct, rss_kib, Agent, ControllerProcess,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const RUNS: usize = 100;
const GIB: u64 = 1 << 30;

fn main() {
    mezzanine_tests::bench_main(bench());
}

async fn bench() {
    let agent_bin = binary("mezzanine-agent", true);
    let mut ctl =
        ControllerProcess::start(true, &["--agent-binary", agent_bin.to_str().expect("utf8")]);
    let pid = ctl.proc.pid();
    let base = ctl.base.clone();
    let mut admin = first_admin(&base).await;
    let agent = Agent {
        dir: tempfile::tempdir().expect("tmp"),
        bin: agent_bin,
    };
    let (server, _agent_dir, _agent) = attached_agent_with(&mut admin, "bench", 10, agent).await;

    // Latency: webhook → first line.
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "fast", "server_id": server, "definition": { "steps": [{ "name": "hello", "uses": "shell", "with": { "script": "echo first line" } }] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("id");
    let r = admin
        .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
        .await;
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let http_client = reqwest::Client::new();
    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let body = json!({ "ref": "refs/heads/main", "after": format!("{i:040}") }).to_string();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("mac");
        mac.update(body.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        let t = Instant::now();
        let resp = http_client
            .post(format!("{base}/api/webhooks/{wf}"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", format!("sha256={sig}"))
            .body(body)
            .send()
            .await
            .expect("webhook");
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.expect("json");
        let run = v["runId"].as_i64().expect("run");
        let mut events = admin
            .open(&format!("/api/deployments/runs/{run}/events"))
            .await;
        let mut buf = String::new();
        while !buf.contains("event: output") {
            let chunk = events.chunk().await.expect("read").expect("more events");
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        // Let the run end before the next one (one run per workflow at a time).
        while events.chunk().await.ok().flatten().is_some() {}
    }
    let (p50, p99) = (pct(&mut samples, 0.5), pct(&mut samples, 0.99));
    println!(
        "webhook → first output line at the client, {RUNS} runs: p50 {p50:.1} ms, p99 {p99:.1} ms"
    );

    // Throughput: 1 GiB through one step.
    let line = "x".repeat(99);
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "flood", "server_id": server, "definition": { "steps": [{ "name": "flood", "uses": "shell", "with": { "script": format!("yes {line} | head -c {GIB}") } }] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("id");
    let baseline = rss_kib(pid);
    let run = admin
        .post(&format!("/api/workflows/{wf}/run"), json!({}))
        .await
        .body["runId"]
        .as_i64()
        .expect("run");
    let t = Instant::now();
    let mut events = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let mut peak = baseline;
    let mut bytes = 0u64;
    let mut last_sample = Instant::now();
    // Output events delivered, counted by their `"line":` key (a chunk may split one, so
    // the tail of each chunk is carried into the next).
    let key = b"\"line\":";
    let mut lines = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    while let Some(chunk) = events.chunk().await.expect("read") {
        bytes += chunk.len() as u64;
        carry.extend_from_slice(&chunk);
        lines += memchr::memmem::find_iter(&carry, key).count() as u64;
        let keep = carry.len().min(key.len() - 1);
        carry.drain(..carry.len() - keep);
        if last_sample.elapsed() > Duration::from_millis(200) {
            peak = peak.max(rss_kib(pid));
            last_sample = Instant::now();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let done = admin
        .get(&format!("/api/deployments/runs/{run}"))
        .await
        .body;
    assert_eq!(done["status"], "succeeded", "{done}");
    let expected = GIB.div_ceil(100);
    println!(
        "1 GiB step: {lines} of {expected} lines delivered live; {:.1} s, {:.1} MiB/s of log text ({:.1} MiB/s of SSE bytes); controller RSS {:.1} MiB → peak {:.1} MiB (+{:.1} MiB); stored {} bytes, {} lines not stored",
        secs,
        GIB as f64 / secs / 1048576.0,
        bytes as f64 / secs / 1048576.0,
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak - baseline) as f64 / 1024.0,
        done["stored_bytes"],
        done["dropped_lines"],
    );
    ctl.proc.terminate(Duration::from_secs(10));
}
