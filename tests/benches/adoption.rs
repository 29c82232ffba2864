//! SSH adoption benchmark (issue: adopt servers over SSH). Node containers from the test
//! image; the release controller adopts them by key through the public API. Measures
//! `POST /api/servers` → `online` for one node at a time (three runs) and for ten nodes
//! adopted at once.
//!
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench adoption`
//! (needs Docker and debootstrap, like the end-to-end suite).

use mezzanine_tests::{first_admin, fleet_controller, ssh_keypair, Client, Fleet};
use serde_json::json;
use std::time::{Duration, Instant};

async fn adopt(admin: &mut Client, name: &str, ip: &str, key: &str) -> i64 {
    let r = admin
        .post(
            "/api/servers",
            json!({ "name": name, "host": ip, "username": "root", "auth_type": "key", "private_key": key }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_i64().expect("id")
}

async fn online_after(admin: &mut Client, id: i64, started: Instant) -> f64 {
    loop {
        let s = admin.get(&format!("/api/servers/{id}")).await.body;
        match s["status"].as_str() {
            Some("online") => return started.elapsed().as_secs_f64(),
            Some("failed") => panic!("adoption failed: {s}"),
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not online: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    mezzanine_tests::bench_main(bench());
}

async fn bench() {
    let fleet = Fleet::new();
    let keys = tempfile::tempdir().expect("tmp");
    let (key, public) = ssh_keypair(keys.path(), "bench", "");
    let mut nodes = Vec::new();
    for i in 0..13u8 {
        nodes.push(
            fleet
                .node(&format!("b{i}"), 30 + i, &[("AUTHORIZED_KEY", &public)])
                .1,
        );
    }
    // Let sshd come up everywhere before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_ctl, base, _data) = fleet_controller(&fleet, true);
    let mut admin = first_admin(&base).await;

    let mut singles = Vec::new();
    for (i, ip) in nodes[..3].iter().enumerate() {
        let t = Instant::now();
        let id = adopt(&mut admin, &format!("single-{i}"), ip, &key).await;
        singles.push(online_after(&mut admin, id, t).await);
    }
    let mut sorted = singles.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "one node, POST → online: runs {:?} s; median {:.2} s",
        singles
            .iter()
            .map(|s| (s * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        sorted[1]
    );

    let t = Instant::now();
    let mut ids = Vec::new();
    for (i, ip) in nodes[3..].iter().enumerate() {
        ids.push(adopt(&mut admin, &format!("batch-{i}"), ip, &key).await);
    }
    let mut each = Vec::new();
    for id in ids {
        each.push(online_after(&mut admin, id, t).await);
    }
    let total = t.elapsed().as_secs_f64();
    each.sort_by(|a, b| a.total_cmp(b));
    println!(
        "ten nodes at once, POST → all online: {total:.2} s (first {:.2} s, median {:.2} s, last {:.2} s)",
        each[0], each[5], each[9]
    );
}
