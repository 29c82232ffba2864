//! Pools on real nodes: an edge with Debian's nginx and members that the pool's workflow
//! deploys, checked from the edge, behind the edge's upstream.

use mezzanine_tests::{adopt, first_admin, fleet_controller, Client, Fleet};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PW: &str = "pool-node-pw-31";

/// The page the edge answers at `ip:port`, as (status, body).
fn get(ip: &str, port: u16) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            &format!("http://{ip}:{port}/"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.trim().to_owned())
}

async fn pool(admin: &mut Client, id: i64) -> Value {
    let r = admin.get(&format!("/api/pools/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Waits until the member's state is `want`.
async fn member_state(
    admin: &mut Client,
    id: i64,
    server: i64,
    want: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = pool(admin, id).await;
        let m = p["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["server_id"] == server).cloned())
            .unwrap_or(Value::Null);
        if m["state"] == want {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "member {server} never became {want}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The distinct pages `n` requests to the edge got; panics on any non-200.
fn pages(ip: &str, port: u16, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| {
            let (code, body) = get(ip, port);
            assert_eq!(code, 200, "{body}");
            body
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_serves_its_healthy_members_through_the_edge() {
    let fleet = Fleet::new();
    let (edge_c, edge_ip) = fleet.node("edge", 11, &[("ROOT_PASSWORD", PW)]);
    let (m1_c, m1_ip) = fleet.node("m1", 12, &[("ROOT_PASSWORD", PW)]);
    let (_m2_c, m2_ip) = fleet.node("m2", 13, &[("ROOT_PASSWORD", PW)]);
    let (_ctl, base, _data) = fleet_controller(&fleet, false);
    let mut admin = first_admin(&base).await;
    let (mut a1, mut a2, mut a3) = (admin.clone(), admin.clone(), admin.clone());
    let (edge, m1, m2) = tokio::join!(
        adopt(&mut a1, "edge", &edge_ip, PW),
        adopt(&mut a2, "m1", &m1_ip, PW),
        adopt(&mut a3, "m2", &m2_ip, PW),
    );

    // The app: nginx on the member at 8080 serving a page that names it.
    let script = "mkdir -p /srv/app && echo \"member $(hostname) v1\" > /srv/app/index.html\n\
        printf 'server {\\n listen 8080;\\n root /srv/app;\\n}\\n' > /etc/nginx/sites-enabled/app\n\
        nginx -t && (nginx -s reload 2>/dev/null || nginx)";
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "site", "server_id": m1, "definition": { "steps": [
                { "name": "serve", "uses": "shell", "with": { "script": script } }
            ] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = admin
        .post("/api/domains", json!({ "name": "App.Example.com" }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let domain = r.body["id"].as_i64().expect("domain");
    let r = admin
        .post(
            "/api/pools",
            json!({ "name": "web", "workflow_id": wf, "max_replicas": 2 }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().expect("pool");

    // Scale-out needs an edge to check members from; sync-lb needs an edge at all.
    let r = admin
        .post(&format!("/api/pools/{id}/sync-lb"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "edge_server_id": edge, "ports": { "listen": 8088, "target": 8080 },
                    "health": { "interval_s": 1, "timeout_s": 1, "healthy_after": 1, "unhealthy_after": 2 },
                    "drain_timeout_s": 1 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // No members yet: the edge answers, with 503.
    assert_eq!(get(&edge_ip, 8088).0, 503);

    // Scale out to both members: each deploys, passes its check, enters the upstream.
    for m in [m1, m2] {
        let r = admin
            .post(
                &format!("/api/pools/{id}/scale-out"),
                json!({ "server_id": m }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        member_state(&mut admin, id, m, "healthy", Duration::from_secs(90)).await;
    }
    let r = admin
        .post(
            &format!("/api/pools/{id}/scale-out"),
            json!({ "server_id": edge }),
        )
        .await;
    assert_eq!(r.status, 409, "beyond max_replicas: {}", r.body);
    let seen = pages(&edge_ip, 8088, 8);
    assert_eq!(
        seen,
        ["member m1 v1", "member m2 v1"].map(String::from).into(),
        "round robin"
    );
    let p = pool(&mut admin, id).await;
    assert!(
        p["lb"]["applied_at"].is_string() && p["lb"]["error"].is_null(),
        "{p}"
    );
    let list = admin.get("/api/pools").await.body;
    assert_eq!(list[0]["members"], 2, "{list}");
    assert_eq!(list[0]["health"]["members"]["healthy"], 2, "{list}");

    // Injection through every field the config is made of: refused, nothing written,
    // and the edge's nginx still accepts its config.
    for (body, field) in [
        (
            json!({ "health": { "path": "/;include /etc/shadow" } }),
            "health.path",
        ),
        (json!({ "health": { "path": "/\n}" } }), "health.path"),
        (
            json!({ "lb_strategy": "cookie_hash", "sticky_cookie": "a;b" }),
            "sticky_cookie",
        ),
        (json!({ "lb_strategy": "cookie_hash" }), "sticky_cookie"),
        (json!({ "lb_strategy": "hash $remote_addr" }), "lb_strategy"),
        (json!({ "name": "web}\ninclude x;" }), "name"),
        (json!({ "ports": { "listen": 0 } }), "ports.listen"),
        (
            json!({ "members": [{ "server_id": m1, "weight": 0 }] }),
            "members[0].weight",
        ),
        (json!({ "min_replicas": 3 }), "min_replicas"),
    ] {
        let r = admin.patch(&format!("/api/pools/{id}"), body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(
            r.body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(field)),
            "{body}: {}",
            r.body
        );
    }
    for name in [
        "a.com;",
        "a.com\ninclude",
        "{x}.com",
        "localhost",
        "10.0.0.1",
    ] {
        let r = admin.post("/api/domains", json!({ "name": name })).await;
        assert_eq!(r.status, 400, "{name:?}: {}", r.body);
    }
    let (ok, out) = fleet.exec(
        &edge_c,
        "nginx -t 2>&1 && cat /etc/nginx/conf.d/mezzanine/pool-*.conf",
    );
    assert!(ok, "{out}");
    assert!(
        !out.contains("shadow") && out.contains("listen 8088;"),
        "{out}"
    );
    assert_eq!(pool(&mut admin, id).await["health"]["path"], "/");

    // A domain gives the server_name; ip_hash keeps one client on one member.
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "domain_id": domain, "lb_strategy": "ip_hash" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, conf) = fleet.exec(&edge_c, "cat /etc/nginx/conf.d/mezzanine/pool-*.conf");
    assert!(
        conf.contains("server_name app.example.com;") && conf.contains("ip_hash;"),
        "{conf}"
    );
    assert_eq!(pages(&edge_ip, 8088, 6).len(), 1, "ip_hash sticks");
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "lb_strategy": "least_conn" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(pages(&edge_ip, 8088, 8).len(), 2);

    // A member whose app stops is taken out within the window; it comes back with it.
    let stopped = Instant::now();
    let (ok, out) = fleet.exec(&m1_c, "rm /etc/nginx/sites-enabled/app && nginx -s reload");
    assert!(ok, "{out}");
    let m = member_state(&mut admin, id, m1, "unhealthy", Duration::from_secs(30)).await;
    println!("unhealthy after {:?}: {m}", stopped.elapsed());
    assert!(
        m["health_detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{m}"
    );
    assert_eq!(pages(&edge_ip, 8088, 6), ["member m2 v1".to_owned()].into());
    let (ok, out) = fleet.exec(
        &m1_c,
        "printf 'server {\\n listen 8080;\\n root /srv/app;\\n}\\n' > /etc/nginx/sites-enabled/app && nginx -s reload",
    );
    assert!(ok, "{out}");
    member_state(&mut admin, id, m1, "healthy", Duration::from_secs(30)).await;
    assert_eq!(pages(&edge_ip, 8088, 8).len(), 2);

    // Removing a member drains it; the last one needs force (min_replicas 1).
    let r = admin.delete(&format!("/api/pools/{id}/members/{m2}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(pages(&edge_ip, 8088, 6), ["member m1 v1".to_owned()].into());
    let r = admin.delete(&format!("/api/pools/{id}/members/{m1}")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin
        .delete(&format!("/api/pools/{id}/members/{m1}?force=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(&edge_ip, 8088).0, 503);

    // Without nginx, the edge says so.
    let (ok, out) = fleet.exec(&edge_c, "mv /usr/sbin/nginx /usr/sbin/nginx.off");
    assert!(ok, "{out}");
    let r = admin
        .post(&format!("/api/pools/{id}/sync-lb"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not installed")),
        "{}",
        r.body
    );
    assert!(pool(&mut admin, id).await["lb"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("not installed")));
    let (ok, out) = fleet.exec(&edge_c, "mv /usr/sbin/nginx.off /usr/sbin/nginx");
    assert!(ok, "{out}");

    // A domain in use cannot go; deleting the pool removes its config from the edge.
    let r = admin.delete(&format!("/api/domains/{domain}")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin.delete(&format!("/api/pools/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (ok, out) = fleet.exec(
        &edge_c,
        "test ! -e /etc/nginx/conf.d/mezzanine/pool-1.conf && nginx -t 2>&1",
    );
    assert!(ok, "{out}");
    let r = admin.delete(&format!("/api/domains/{domain}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// What a client hammering the edge saw: requests, failures, and the versions served.
#[derive(Default)]
struct Load {
    ok: u64,
    failed: Vec<String>,
    versions: std::collections::BTreeSet<String>,
}

/// Requests the edge's page as fast as one client can until `stop`, in the background,
/// each on a new connection: a reload makes nginx's old workers close their idle
/// keep-alive connections, and a request sent on one at that instant fails at the
/// transport (browsers and most clients retry such a GET; RFC 9110 §9.2.2) — nginx's own
/// behaviour, which this test does not measure. Failures of our own (a member deployed
/// while it served, an empty upstream) show on new connections too.
fn hammer(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Load> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut load = Load::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    load.ok += 1;
                    let body = r.text().await.unwrap_or_default();
                    let version = body
                        .split_whitespace()
                        .last()
                        .unwrap_or_default()
                        .to_owned();
                    load.versions.insert(version);
                }
                Ok(r) => load.failed.push(format!("HTTP {}", r.status())),
                Err(e) => load.failed.push(e.to_string()),
            }
        }
        load
    })
}

async fn wait_rollout(admin: &mut Client, pool: i64, rollout: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let r = admin
            .get(&format!("/api/pools/{pool}/rollouts/{rollout}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] != "running" {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout never ended: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The step every member runs: its app answers 503 for two seconds while it switches (so
/// a member deployed without being drained first would leak errors), then serves its
/// version — or, when BROKEN is set, 500 on every path.
const SWITCH: &str =
    "printf 'server {\\n listen 8080;\\n return 503;\\n}\\n' > /etc/nginx/sites-enabled/app\n\
    nginx -t && (nginx -s reload 2>/dev/null || nginx)\n\
    sleep 2\n\
    mkdir -p /srv/app && echo \"member $(hostname) $VERSION\" > /srv/app/index.html\n\
    if [ \"$BROKEN\" = 1 ]; then body=' return 500;'; else body=' root /srv/app;'; fi\n\
    printf 'server {\\n listen 8080;\\n%s\\n}\\n' \"$body\" > /etc/nginx/sites-enabled/app\n\
    nginx -t && nginx -s reload";

fn definition(version: &str, broken: bool) -> Value {
    json!({ "env": { "VERSION": version, "BROKEN": if broken { "1" } else { "0" } },
            "steps": [{ "name": "switch", "uses": "shell", "with": { "script": SWITCH } }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_replaces_every_member_without_a_failed_request() {
    let fleet = Fleet::new();
    let (_edge_c, edge_ip) = fleet.node("edge", 11, &[("ROOT_PASSWORD", PW)]);
    let (_, m1_ip) = fleet.node("r1", 12, &[("ROOT_PASSWORD", PW)]);
    let (_, m2_ip) = fleet.node("r2", 13, &[("ROOT_PASSWORD", PW)]);
    let (_, m3_ip) = fleet.node("r3", 14, &[("ROOT_PASSWORD", PW)]);
    let (_ctl, base, _data) = fleet_controller(&fleet, false);
    let mut admin = first_admin(&base).await;
    let (mut a1, mut a2, mut a3, mut a4) =
        (admin.clone(), admin.clone(), admin.clone(), admin.clone());
    let (edge, m1, m2, m3) = tokio::join!(
        adopt(&mut a1, "edge", &edge_ip, PW),
        adopt(&mut a2, "r1", &m1_ip, PW),
        adopt(&mut a3, "r2", &m2_ip, PW),
        adopt(&mut a4, "r3", &m3_ip, PW),
    );
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "app", "server_id": m1, "definition": definition("v1", false) }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = admin
        .post(
            "/api/pools",
            json!({ "name": "app", "workflow_id": wf, "min_replicas": 1, "max_replicas": 3 }),
        )
        .await;
    let id = r.body["id"].as_i64().expect("pool");
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "edge_server_id": edge, "ports": { "listen": 8088, "target": 8080 },
                    "health": { "interval_s": 1, "timeout_s": 1, "healthy_after": 1, "unhealthy_after": 2, "grace_s": 20 },
                    "drain_timeout_s": 1 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    assert_eq!(r.status, 409, "no members yet: {}", r.body);
    for m in [m1, m2, m3] {
        let r = admin
            .post(
                &format!("/api/pools/{id}/scale-out"),
                json!({ "server_id": m }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        member_state(&mut admin, id, m, "healthy", Duration::from_secs(90)).await;
    }
    assert_eq!(pages(&edge_ip, 8088, 9).len(), 3);

    // v2 under load: no failed request, both versions seen during, only v2 after.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = hammer(format!("http://{edge_ip}:8088/"), stop.clone());
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": definition("v2", false) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let started = Instant::now();
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let rollout = r.body["rolloutId"].as_i64().expect("rollout");
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    assert_eq!(r.status, 409, "one rollout at a time: {}", r.body);
    let done = wait_rollout(&mut admin, id, rollout).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.expect("load");
    println!(
        "rollout of 3 members: {took:?}; {} requests served, {} failed; versions seen: {:?}",
        seen.ok,
        seen.failed.len(),
        seen.versions
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        done["members"].as_array().is_some_and(|ms| ms.len() == 3
            && ms
                .iter()
                .all(|m| m["status"] == "succeeded" && m["runId"].is_i64())),
        "{done}"
    );
    assert!(seen.failed.is_empty(), "failed requests: {:?}", seen.failed);
    assert!(seen.ok > 20, "the client kept asking: {}", seen.ok);
    assert!(
        seen.versions.contains("v1") && seen.versions.contains("v2"),
        "{:?}",
        seen.versions
    );
    assert_eq!(
        pages(&edge_ip, 8088, 9),
        ["member r1 v2", "member r2 v2", "member r3 v2"]
            .map(String::from)
            .into()
    );

    // A broken version (the step succeeds, the app answers 500): the rollout stops at
    // the first member, which stays out; the others keep serving v2; nobody sees an error.
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "health": { "grace_s": 3 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": definition("v3", true) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let load = hammer(format!("http://{edge_ip}:8088/"), stop.clone());
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    let rollout = r.body["rolloutId"].as_i64().expect("rollout");
    let done = wait_rollout(&mut admin, id, rollout).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.expect("load");
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("r1") && e.contains("HTTP 500")),
        "{done}"
    );
    assert_eq!(done["members"][0]["status"], "failed", "{done}");
    assert_eq!(done["members"][1]["status"], "skipped", "{done}");
    assert!(seen.failed.is_empty(), "failed requests: {:?}", seen.failed);
    let p = pool(&mut admin, id).await;
    assert_eq!(p["members"][0]["state"], "failed", "{p}");
    assert_eq!(
        pages(&edge_ip, 8088, 8),
        ["member r2 v2", "member r3 v2"].map(String::from).into()
    );

    // A signed push to the pool's workflow rolls the fixed version out, the failed member
    // included.
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": definition("v4", false) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
        .await;
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let body = r#"{"ref":"refs/heads/main","after":"4444444444444444444444444444444444444444"}"#;
    let req = admin
        .request(reqwest::Method::POST, &format!("/api/webhooks/{wf}"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", crate::runs::signature(&secret, body))
        .body(body);
    let r = admin.raw(req).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let rollout = r.body["rolloutIds"][0].as_i64().expect("rollout");
    let done = wait_rollout(&mut admin, id, rollout).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["trigger_detail"]["commit"],
        "4444444444444444444444444444444444444444"
    );
    assert_eq!(
        pages(&edge_ip, 8088, 9),
        ["member r1 v4", "member r2 v4", "member r3 v4"]
            .map(String::from)
            .into()
    );
}
