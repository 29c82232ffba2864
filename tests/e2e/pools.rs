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
