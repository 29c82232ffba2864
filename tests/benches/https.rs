//! HTTPS benchmark (issue: HTTPS for pool domains). A release controller and release
//! agents on two harness nodes (an edge with Debian's nginx, one member), and Debian's
//! pebble as the ACME CA on the gateway. Measures:
//!
//! - issue → first HTTPS answer: 8 pools on the same edge ports (8088 plain, 8443 HTTPS;
//!   each its own domain, told apart by SNI and Host), HTTPS turned on for each in turn;
//!   the clock runs from the PATCH until a client that trusts only pebble's root gets the
//!   pool's page over HTTPS. p50/p90.
//! - the edge's TLS handshakes/s (a new connection per request) and requests/s (one
//!   keep-alive connection per client), 16 clients for 8 s each, against the pool's
//!   config and against a hand-written nginx server block on the same node with the same
//!   certificate, TLS settings and member; 3 rounds each, medians and the ratio.
//!
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench https`

use mezzanine_tests::pebble::{https_client, Pebble};
use mezzanine_tests::{adopt, first_admin, fleet_controller_with, Fleet};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PW: &str = "https-bench-pw-9";
const POOLS: usize = 8;

fn main() {
    mezzanine_tests::bench_main(bench());
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Requests per second from 16 clients for 8 s: `fresh` makes every request open a new
/// connection (a TLS handshake each), else each client keeps one connection.
async fn load(
    url: &str,
    host: &str,
    ip: &str,
    port: u16,
    root: &reqwest::Certificate,
    fresh: bool,
) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = if fresh {
            https_client(host, ip, port, root.clone())
        } else {
            reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(root.clone())
                .resolve(host, format!("{ip}:{port}").parse().expect("addr"))
                .pool_max_idle_per_host(1)
                .build()
                .expect("client")
        };
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    (
        ok.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

async fn bench() {
    let fleet = Fleet::new();
    let (edge_c, edge_ip) = fleet.node("edge", 61, &[("ROOT_PASSWORD", PW)]);
    let (_, m_ip) = fleet.node("m1", 62, &[("ROOT_PASSWORD", PW)]);
    let pebble = Pebble::start(&fleet.gateway, 8088, &edge_ip, 7 * 24 * 3600);
    let ca = pebble.ca_file.to_str().expect("utf8").to_owned();
    let ctl = fleet_controller_with(
        &fleet,
        true,
        &[
            "--acme-directory-url",
            &pebble.directory,
            "--acme-ca-file",
            &ca,
        ],
    );
    let mut admin = first_admin(&ctl.base).await;
    let edge = adopt(&mut admin, "edge", &edge_ip, PW).await;
    let m1 = adopt(&mut admin, "m1", &m_ip, PW).await;
    let script = "mkdir -p /srv/app && echo \"member $(hostname)\" > /srv/app/index.html\n\
        printf 'server {\\n listen 8080;\\n root /srv/app;\\n}\\n' > /etc/nginx/sites-enabled/app\n\
        nginx -t && (nginx -s reload 2>/dev/null || nginx)";
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "site", "server_id": m1, "definition": { "steps": [
            { "name": "serve", "uses": "shell", "with": { "script": script } }] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let root = {
        let mut pools = Vec::new();
        for i in 0..POOLS {
            let r = admin
                .post("/api/domains", json!({ "name": format!("shop{i}.test") }))
                .await;
            let domain = r.body["id"].as_i64().expect("domain");
            let r = admin
                .post(
                    "/api/pools",
                    json!({ "name": format!("shop{i}"), "workflow_id": wf, "domain_id": domain }),
                )
                .await;
            let id = r.body["id"].as_i64().expect("pool");
            let r = admin
                .patch(&format!("/api/pools/{id}"), json!({ "edge_server_id": edge, "ports": { "listen": 8088, "target": 8080 },
                    "tls": { "port": 8443 }, "health": { "interval_s": 1, "timeout_s": 1, "healthy_after": 1 } }))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let r = admin
                .post(
                    &format!("/api/pools/{id}/scale-out"),
                    json!({ "server_id": m1 }),
                )
                .await;
            assert_eq!(r.status, 202, "{}", r.body);
            pools.push(id);
        }
        // Every member in (the first pool's deploy serves them all).
        let deadline = Instant::now() + Duration::from_secs(120);
        for id in &pools {
            loop {
                let p = admin.get(&format!("/api/pools/{id}")).await.body;
                if p["members"][0]["state"] == "healthy" {
                    break;
                }
                assert!(Instant::now() < deadline, "{p}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let root = pebble.issuing_root().await;
        let mut times = Vec::new();
        for (i, id) in pools.iter().enumerate() {
            let host = format!("shop{i}.test");
            let client = https_client(&host, &edge_ip, 8443, root.clone());
            let t = Instant::now();
            let r = admin
                .patch(
                    &format!("/api/pools/{id}"),
                    json!({ "tls": { "enabled": true } }),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            loop {
                if let Ok(r) = client.get(format!("https://{host}:8443/")).send().await {
                    if r.status() == 200 {
                        break;
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "{host} never served HTTPS"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "issue → first HTTPS answer over {POOLS} pools: p50 {:.0} ms, p90 {:.0} ms, all {:?}",
            pct(&mut times.clone(), 0.5),
            pct(&mut times.clone(), 0.9),
            times.iter().map(|t| t.round()).collect::<Vec<_>>()
        );
        root
    };

    // The same site by a hand-written server block: same certificate files, TLS settings
    // and member.
    let hand = format!(
        "server {{\n listen 9443 ssl http2;\n server_name shop0.test;\n \
         ssl_certificate /etc/nginx/mezzanine-tls/pool-1.crt;\n ssl_certificate_key /etc/nginx/mezzanine-tls/pool-1.key;\n \
         ssl_protocols TLSv1.2 TLSv1.3;\n ssl_session_cache shared:hand_tls:10m;\n ssl_session_tickets off;\n \
         location / {{\n  proxy_pass http://{m_ip}:8080;\n  proxy_http_version 1.1;\n  proxy_set_header Host $host;\n }}\n}}\n"
    );
    let (ok, out) = fleet.exec(
        &edge_c,
        &format!(
            "cat > /etc/nginx/conf.d/hand.conf <<'EOF'\n{hand}EOF\nnginx -t && nginx -s reload"
        ),
    );
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (label, fresh) in [
        ("TLS handshakes/s (new connection each)", true),
        ("requests/s (keep-alive)", false),
    ] {
        let (mut ours, mut theirs, mut failures) = (Vec::new(), Vec::new(), 0);
        for _ in 0..3 {
            let (a, fa) = load(
                "https://shop0.test:8443/",
                "shop0.test",
                &edge_ip,
                8443,
                &root,
                fresh,
            )
            .await;
            let (b, fb) = load(
                "https://shop0.test:9443/",
                "shop0.test",
                &edge_ip,
                9443,
                &root,
                fresh,
            )
            .await;
            ours.push(a);
            theirs.push(b);
            failures += fa + fb;
        }
        let (a, b) = (pct(&mut ours.clone(), 0.5), pct(&mut theirs.clone(), 0.5));
        println!(
            "{label}: pool config median {a:.0} {ours:.0?}, hand-written median {b:.0} {theirs:.0?}, ratio {:.2}; {failures} failed",
            a / b
        );
    }
}
