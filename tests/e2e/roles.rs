//! Every registered route, walked as anonymous, viewer, moderator and admin. The expected
//! rule of each route is written here, so a route added without a decided rule fails.

use mezzanine_tests::{Client, Controller, Method};
use serde_json::{json, Value};

/// (method, path template, least role) for every route the controller registers.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("GET", "/api/auth/state", "public"),
    ("POST", "/api/auth/setup", "public"),
    ("POST", "/api/auth/login", "public"),
    ("POST", "/api/auth/logout", "viewer"),
    ("POST", "/api/auth/change-password", "viewer"),
    ("POST", "/api/auth/totp/setup", "viewer"),
    ("POST", "/api/auth/totp/enable", "viewer"),
    ("POST", "/api/auth/totp/disable", "viewer"),
    ("GET", "/api/users", "admin"),
    ("POST", "/api/users", "admin"),
    ("PATCH", "/api/users/{id}", "admin"),
    ("DELETE", "/api/users/{id}", "admin"),
    ("GET", "/api/audit", "admin"),
    ("GET", "/api/openapi.json", "public"),
    ("GET", "/api/servers", "viewer"),
    ("POST", "/api/servers", "moderator"),
    ("GET", "/api/servers/{id}", "viewer"),
    ("PATCH", "/api/servers/{id}", "moderator"),
    ("DELETE", "/api/servers/{id}", "admin"),
    ("POST", "/api/servers/{id}/install-command", "moderator"),
    ("POST", "/api/servers/{id}/agent/upgrade", "admin"),
    ("POST", "/api/servers/agent/upgrade", "admin"),
    ("POST", "/api/servers/{id}/ping", "moderator"),
    ("POST", "/api/servers/{id}/reinstall", "admin"),
    ("GET", "/api/servers/{id}/deploy-key", "viewer"),
    ("POST", "/api/servers/{id}/deploy-key/rotate", "admin"),
    ("GET", "/api/servers/{id}/docker/containers", "viewer"),
    (
        "POST",
        "/api/servers/{id}/docker/containers/{cid}/start",
        "moderator",
    ),
    (
        "POST",
        "/api/servers/{id}/docker/containers/{cid}/stop",
        "moderator",
    ),
    (
        "POST",
        "/api/servers/{id}/docker/containers/{cid}/restart",
        "moderator",
    ),
    (
        "POST",
        "/api/servers/{id}/docker/containers/{cid}/remove",
        "admin",
    ),
    (
        "GET",
        "/api/servers/{id}/docker/containers/{cid}/logs",
        "viewer",
    ),
    ("GET", "/api/servers/{id}/docker/images", "viewer"),
    ("GET", "/api/workflows", "viewer"),
    ("POST", "/api/workflows", "moderator"),
    ("GET", "/api/workflows/{id}", "viewer"),
    ("PATCH", "/api/workflows/{id}", "moderator"),
    ("DELETE", "/api/workflows/{id}", "admin"),
    ("POST", "/api/workflows/{id}/run", "moderator"),
    ("POST", "/api/workflows/{id}/webhook/rotate", "admin"),
    ("POST", "/api/workflows/{id}/approve", "admin"),
    ("GET", "/api/deployments/runs", "viewer"),
    ("GET", "/api/deployments/runs/{id}", "viewer"),
    ("GET", "/api/events", "viewer"),
    ("GET", "/api/servers/{id}/metrics", "viewer"),
    ("GET", "/api/deployments/runs/{id}/events", "viewer"),
    ("POST", "/api/deployments/runs/{id}/cancel", "moderator"),
    ("GET", "/api/domains", "viewer"),
    ("POST", "/api/domains", "moderator"),
    ("PATCH", "/api/domains/{id}", "moderator"),
    ("DELETE", "/api/domains/{id}", "admin"),
    ("GET", "/api/pools", "viewer"),
    ("POST", "/api/pools", "moderator"),
    ("GET", "/api/pools/{id}", "viewer"),
    ("PATCH", "/api/pools/{id}", "moderator"),
    ("DELETE", "/api/pools/{id}", "admin"),
    ("POST", "/api/pools/{id}/sync-lb", "moderator"),
    ("POST", "/api/pools/{id}/certificate/renew", "moderator"),
    ("POST", "/api/pools/{id}/scale-out", "moderator"),
    ("DELETE", "/api/pools/{id}/members/{server_id}", "admin"),
    ("POST", "/api/pools/{id}/deploy", "moderator"),
    ("GET", "/api/pools/{id}/rollouts/{rollout_id}", "viewer"),
    (
        "GET",
        "/api/pools/{id}/rollouts/{rollout_id}/events",
        "viewer",
    ),
    (
        "POST",
        "/api/pools/{id}/rollouts/{rollout_id}/cancel",
        "moderator",
    ),
    ("POST", "/api/webhooks/{id}", "public"),
    ("GET", "/api/registries", "admin"),
    ("PUT", "/api/registries/{host}", "admin"),
    ("DELETE", "/api/registries/{host}", "admin"),
    ("GET", "/api/notifiers", "admin"),
    ("POST", "/api/notifiers", "admin"),
    ("DELETE", "/api/notifiers/{id}", "admin"),
    ("POST", "/api/notifiers/{id}/test", "admin"),
    ("GET", "/api/notifiers/{id}/deliveries", "admin"),
    ("GET", "/api/tokens", "viewer"),
    ("POST", "/api/tokens", "viewer"),
    ("DELETE", "/api/tokens/{id}", "viewer"),
    ("GET", "/api/providers", "viewer"),
    ("PUT", "/api/providers/{provider}", "admin"),
    ("DELETE", "/api/providers/{provider}", "admin"),
    ("GET", "/api/digitalocean/droplets", "viewer"),
    ("POST", "/api/digitalocean/droplets", "moderator"),
    ("GET", "/api/digitalocean/droplets/{id}", "viewer"),
    ("DELETE", "/api/digitalocean/droplets/{id}", "admin"),
    (
        "POST",
        "/api/digitalocean/droplets/{id}/actions",
        "moderator",
    ),
    ("GET", "/api/digitalocean/domains", "viewer"),
    ("POST", "/api/digitalocean/domains", "moderator"),
    ("GET", "/api/digitalocean/domains/{name}/records", "viewer"),
    (
        "POST",
        "/api/digitalocean/domains/{name}/records",
        "moderator",
    ),
    (
        "PATCH",
        "/api/digitalocean/domains/{name}/records/{record_id}",
        "moderator",
    ),
    (
        "DELETE",
        "/api/digitalocean/domains/{name}/records/{record_id}",
        "admin",
    ),
    ("GET", "/api/hostinger/vps", "viewer"),
    ("GET", "/api/hostinger/vps/{id}", "viewer"),
    ("POST", "/api/hostinger/vps/{id}/{action}", "moderator"),
    ("GET", "/api/hostinger/domains", "viewer"),
    ("GET", "/api/hostinger/domains/{domain}/dns", "viewer"),
    ("PUT", "/api/hostinger/domains/{domain}/dns", "moderator"),
    ("DELETE", "/api/hostinger/domains/{domain}/dns", "admin"),
    ("GET", "/api/hostinger/email", "viewer"),
    ("GET", "/api/hostinger/billing/subscriptions", "viewer"),
    ("GET", "/api/contabo/instances", "viewer"),
    ("POST", "/api/contabo/instances", "moderator"),
    ("GET", "/api/contabo/instances/{id}", "viewer"),
    ("PATCH", "/api/contabo/instances/{id}", "moderator"),
    (
        "POST",
        "/api/contabo/instances/{id}/actions/{action}",
        "moderator",
    ),
    ("GET", "/api/contabo/instances/{id}/snapshots", "viewer"),
    ("POST", "/api/contabo/instances/{id}/snapshots", "moderator"),
    (
        "DELETE",
        "/api/contabo/instances/{id}/snapshots/{snapshot_id}",
        "admin",
    ),
    (
        "POST",
        "/api/contabo/instances/{id}/snapshots/{snapshot_id}/rollback",
        "moderator",
    ),
    ("GET", "/api/contabo/secrets", "viewer"),
    ("POST", "/api/contabo/secrets", "moderator"),
    ("PATCH", "/api/contabo/secrets/{id}", "moderator"),
    ("DELETE", "/api/contabo/secrets/{id}", "admin"),
    ("GET", "/api/cloudflare/zones", "viewer"),
    ("GET", "/api/cloudflare/zones/{zone_id}/dns", "viewer"),
    ("POST", "/api/cloudflare/zones/{zone_id}/dns", "moderator"),
    (
        "PATCH",
        "/api/cloudflare/zones/{zone_id}/dns/{record_id}",
        "moderator",
    ),
    (
        "DELETE",
        "/api/cloudflare/zones/{zone_id}/dns/{record_id}",
        "admin",
    ),
    (
        "GET",
        "/api/cloudflare/zones/{zone_id}/email/rules",
        "viewer",
    ),
    (
        "POST",
        "/api/cloudflare/zones/{zone_id}/email/rules",
        "moderator",
    ),
    (
        "PUT",
        "/api/cloudflare/zones/{zone_id}/email/rules/{rule_id}",
        "moderator",
    ),
    (
        "DELETE",
        "/api/cloudflare/zones/{zone_id}/email/rules/{rule_id}",
        "admin",
    ),
    (
        "GET",
        "/api/cloudflare/zones/{zone_id}/email/catch-all",
        "viewer",
    ),
    (
        "PUT",
        "/api/cloudflare/zones/{zone_id}/email/catch-all",
        "moderator",
    ),
    (
        "GET",
        "/api/cloudflare/zones/{zone_id}/email/destinations",
        "viewer",
    ),
    (
        "POST",
        "/api/cloudflare/zones/{zone_id}/email/destinations",
        "moderator",
    ),
    (
        "DELETE",
        "/api/cloudflare/zones/{zone_id}/email/destinations/{destination_id}",
        "admin",
    ),
];

fn rank(role: &str) -> u8 {
    match role {
        "public" => 0,
        "viewer" => 1,
        "moderator" => 2,
        "admin" => 3,
        other => panic!("unknown role {other}"),
    }
}

fn registered(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("ops") {
            let role = op["x-mezzanine-role"].as_str().expect("role").to_owned();
            out.push((method.to_ascii_uppercase(), path.clone(), role));
        }
    }
    out
}

#[tokio::test]
async fn every_route_has_the_expected_rule_and_enforces_it() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let viewer = ctl.user(&mut admin, "vera", "viewer").await;
    let moderator = ctl.user(&mut admin, "moritz", "moderator").await;
    let doc = admin.get("/api/openapi.json").await.body;

    let mut routes = registered(&doc);
    for (m, p, role) in &routes {
        let expected = EXPECTED
            .iter()
            .find(|(em, ep, _)| em == m && ep == p)
            .unwrap_or_else(|| {
                panic!("{m} {p} is registered but has no expected rule in this test")
            });
        assert_eq!(expected.2, role, "{m} {p}");
    }
    for (m, p, _) in EXPECTED {
        assert!(
            routes.iter().any(|(rm, rp, _)| rm == m && rp == p),
            "{m} {p} is expected but not registered"
        );
    }
    // Logging out revokes the caller's session: walk it last.
    routes.sort_by_key(|(_, p, _)| p == "/api/auth/logout");

    let callers: Vec<(&str, Client)> = vec![
        ("anonymous", ctl.client()),
        ("viewer", viewer),
        ("moderator", moderator),
        ("admin", admin),
    ];
    for (who, mut client) in callers {
        for (method, path, role) in &routes {
            if role == "public" {
                continue;
            }
            // The event stream never ends: a bad parameter (checked after the role)
            // makes it answer at once.
            let path = if path == "/api/events" {
                "/api/events?metrics=0"
            } else {
                path
            };
            let concrete = path
                .replace("{id}", "999999")
                .replace("{cid}", "c1")
                .replace("{host}", "registry.invalid:5000")
                .replace("{server_id}", "999999")
                .replace("{rollout_id}", "999999")
                .replace("{provider}", "cloudflare")
                .replace("{name}", "example.com")
                .replace("{zone_id}", "999999")
                .replace("{record_id}", "999999")
                .replace("{rule_id}", "999999")
                .replace("{destination_id}", "999999")
                .replace("{action}", "start")
                .replace("{domain}", "example.com")
                .replace("{snapshot_id}", "snap1");
            let m = Method::from_bytes(method.as_bytes()).expect("method");
            let body = (method != "GET").then(|| json!({}));
            let r = client.send(m, &concrete, body).await;
            let label = format!("{who} {method} {path}");
            assert_ne!(r.status, 500, "{label}: {}", r.body);
            if who == "anonymous" {
                assert_eq!(r.status, 401, "{label}: {}", r.body);
                assert!(r.body["error"].is_string(), "{label}");
            } else if rank(who) < rank(role) {
                assert_eq!(r.status, 403, "{label}: {}", r.body);
                assert_eq!(
                    r.body,
                    json!({ "error": "INSUFFICIENT_ROLE", "required": role, "role": who }),
                    "{label}"
                );
            } else {
                assert!(
                    r.status != 401 && r.status != 403,
                    "{label} should be allowed: {} {}",
                    r.status,
                    r.body
                );
            }
        }
    }
}

#[tokio::test]
async fn user_management_and_the_last_admin() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let me = admin.get("/api/auth/state").await.body["user"]["id"]
        .as_i64()
        .expect("id");

    // One's own account is not changed through the admin routes: a password through
    // change-password (which asks for the current one), a role or a delete by another
    // admin — so the last admin can neither leave nor be demoted.
    let r = admin
        .patch(&format!("/api/users/{me}"), json!({ "role": "viewer" }))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.error().contains("another admin"), "{}", r.body);
    let r = admin
        .patch(
            &format!("/api/users/{me}"),
            json!({ "password": "taken-over-password" }),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.error().contains("change-password"), "{}", r.body);
    let r = admin.delete(&format!("/api/users/{me}")).await;
    assert_eq!(r.status, 403, "{}", r.body);

    let r = admin
        .post(
            "/api/users",
            json!({ "username": "Admin", "password": "whatever-123", "role": "viewer" }),
        )
        .await;
    assert_eq!(r.status, 409, "usernames are case-insensitive: {}", r.body);
    let r = admin
        .post(
            "/api/users",
            json!({ "username": "eve", "password": "whatever-123", "role": "root" }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("role"));
    let r = admin
        .patch("/api/users/abc", json!({ "role": "viewer" }))
        .await;
    assert_eq!(r.status, 400);

    let mut second = ctl.user(&mut admin, "second", "admin").await;
    let listed = admin.get("/api/users").await.body;
    assert_eq!(listed.as_array().expect("list").len(), 2);
    let second_id = listed[1]["id"].as_i64().expect("id");

    // Demoting takes effect on the next request of that user.
    let r = admin
        .patch(
            &format!("/api/users/{second_id}"),
            json!({ "role": "moderator" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user"]["role"], "moderator");
    let r = second.get("/api/users").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["role"], "moderator");

    // A password reset by an admin signs that user out everywhere.
    let r = admin
        .patch(
            &format!("/api/users/{second_id}"),
            json!({ "password": "reset-password-1" }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        second.get("/api/auth/state").await.body["authenticated"],
        false
    );
    assert_eq!(
        second
            .login("second", "reset-password-1", None)
            .await
            .status,
        200
    );

    // With two admins, one may go.
    let r = admin
        .patch(
            &format!("/api/users/{second_id}"),
            json!({ "role": "admin" }),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = second
        .patch(&format!("/api/users/{me}"), json!({ "role": "moderator" }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = second.patch(&format!("/api/users/{me}"), json!({})).await;
    assert_eq!(r.status, 400, "nothing to change: {}", r.body);
    let r = second.delete(&format!("/api/users/{me}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        admin.get("/api/auth/state").await.body["authenticated"],
        false
    );
    let r = second.delete(&format!("/api/users/{me}")).await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("not found"));
}

#[tokio::test]
async fn mutations_are_audited_with_actor_target_and_outcome() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let mut viewer = ctl.user(&mut admin, "vera", "viewer").await;
    let r = viewer
        .post(
            "/api/users",
            json!({ "username": "x1", "password": "whatever-123", "role": "viewer" }),
        )
        .await;
    assert_eq!(r.status, 403);
    let mut anon = ctl.client();
    assert_eq!(
        anon.login("admin", "wrong-password", None).await.status,
        401
    );

    let page = admin.get("/api/audit?per_page=2").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body["items"].as_array().expect("items").len(), 2);
    assert_eq!(page.body["per_page"], 2);
    let total = page.body["total"].as_i64().expect("total");
    assert!(total >= 4, "{}", page.body);

    let all = admin.get("/api/audit?per_page=500").await.body;
    let items = all["items"].as_array().expect("items");
    let find = |action: &str, actor: &str, outcome: &str| {
        items
            .iter()
            .any(|e| e["action"] == action && e["actor"] == actor && e["outcome"] == outcome)
    };
    assert!(find("POST /api/auth/setup", "admin", "success"), "{all}");
    assert!(find("POST /api/users", "admin", "success"), "{all}");
    assert!(find("POST /api/users", "vera", "denied"), "{all}");
    assert!(find("POST /api/auth/login", "admin", "denied"), "{all}");
    let created = items
        .iter()
        .find(|e| e["action"] == "POST /api/users" && e["outcome"] == "success")
        .expect("create record");
    assert_eq!(created["target"], "user vera");
    assert!(created["at"].as_str().expect("at").ends_with('Z'));
    assert!(items
        .iter()
        .all(|e| e["action"].as_str().is_some_and(|a| !a.starts_with("GET"))));

    // A malformed body is recorded with the status the client got (400), and an unknown
    // field is refused naming it.
    let r = admin
        .post(
            "/api/users",
            json!({ "username": "x2", "password": "whatever-123", "role": "viewer", "rol": "admin" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().contains("unknown field `rol`"), "{}", r.body);
    let latest = admin.get("/api/audit?per_page=1").await.body;
    assert_eq!(latest["items"][0]["action"], "POST /api/users", "{latest}");
    assert_eq!(latest["items"][0]["status"], 400, "{latest}");

    assert_eq!(admin.get("/api/audit?page=0").await.status, 400);
    assert_eq!(admin.get("/api/audit?per_page=100000").await.status, 400);
    assert_eq!(admin.get("/api/audit?page=abc").await.status, 400);
}
