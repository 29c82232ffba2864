//! API conventions: JSON everywhere, clear 4xx for bad input, cross-site protection,
//! the OpenAPI document, the health probe and the panel's static files.

use mezzanine_tests::{Controller, Method};
use serde_json::{json, Value};

#[tokio::test]
async fn unknown_routes_wrong_methods_and_bad_bodies_get_json_errors() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;

    let r = admin.get("/api/no/such/route").await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/api/no/such/route"));
    assert!(r
        .header("content-type")
        .expect("ct")
        .starts_with("application/json"));

    let r = admin
        .send(Method::PUT, "/api/auth/state", Some(json!({})))
        .await;
    assert_eq!(r.status, 405);
    assert!(r.error().contains("PUT"), "{}", r.body);
    assert!(r.header("allow").is_some());

    let req = admin
        .request(Method::POST, "/api/users")
        .header("content-type", "application/json")
        .body("{not json");
    let r = admin.raw(req).await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("JSON"), "{}", r.body);

    let r = admin.post("/api/users", json!({ "username": "bob" })).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("password"),
        "names the missing field: {}",
        r.body
    );

    let r = admin
        .post(
            "/api/users",
            json!({ "username": 5, "password": [], "role": {} }),
        )
        .await;
    assert_eq!(r.status, 400);

    let big = "x".repeat(2 * 1024 * 1024);
    let r = admin
        .post(
            "/api/users",
            json!({ "username": big, "password": "p", "role": "viewer" }),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body["error"].is_string());
}

#[tokio::test]
async fn mutations_need_json_and_a_matching_origin() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let body = r#"{"username":"form","password":"whatever-123","role":"viewer"}"#;

    let req = admin
        .request(Method::POST, "/api/users")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    let r = admin.raw(req).await;
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(r.error().contains("Content-Type"));

    let req = admin.request(Method::POST, "/api/users").body(body);
    assert_eq!(admin.raw(req).await.status, 415);

    let req = admin
        .request(Method::POST, "/api/users")
        .header("content-type", "application/json")
        .header("origin", "https://evil.example")
        .body(body);
    let r = admin.raw(req).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.error().contains("cross-origin"));

    let req = admin
        .request(Method::POST, "/api/users")
        .header("content-type", "application/json; charset=utf-8")
        .header("origin", ctl.base.clone())
        .body(body);
    let r = admin.raw(req).await;
    assert_eq!(r.status, 201, "same origin is fine: {}", r.body);
    assert_eq!(
        admin
            .get("/api/users")
            .await
            .body
            .as_array()
            .expect("list")
            .len(),
        2
    );
}

#[tokio::test]
async fn odd_inputs_never_produce_a_500() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let bodies = [
        json!(null),
        json!([]),
        json!("string"),
        json!({ "username": "\u{0}", "password": "\u{feff}".repeat(20), "role": "admin" }),
        json!({ "username": "ünïcødé", "password": "pässwörd-long", "role": "viewer" }),
        json!({ "username": "a".repeat(65), "password": "whatever-123", "role": "viewer" }),
        json!({ "username": ".dot", "password": "whatever-123", "role": "viewer" }),
    ];
    for b in &bodies {
        let r = admin.post("/api/users", b.clone()).await;
        assert_eq!(r.status, 400, "{b}: {}", r.body);
        let r = admin.post("/api/auth/login", b.clone()).await;
        assert!([400, 401].contains(&r.status), "{b}: {}", r.body);
    }
    for id in ["0", "-1", "99999999999999999999", "1e3", "%00", "..%2F"] {
        let r = admin
            .patch(&format!("/api/users/{id}"), json!({ "role": "viewer" }))
            .await;
        assert!(
            [400, 404].contains(&r.status),
            "{id}: {} {}",
            r.status,
            r.body
        );
        let r = admin.delete(&format!("/api/users/{id}")).await;
        assert!(
            [400, 404].contains(&r.status),
            "{id}: {} {}",
            r.status,
            r.body
        );
    }
    let mut anon = ctl.client();
    anon.cookie = Some("not-a-token".into());
    assert_eq!(
        anon.get("/api/auth/state").await.body["authenticated"],
        false
    );
    anon.cookie = Some("ab".repeat(32));
    assert_eq!(anon.get("/api/users").await.status, 401);
    let r = anon
        .post(
            "/api/auth/login",
            json!({ "username": "admin", "password": "p".repeat(10_000) }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("too long"));
}

#[tokio::test]
async fn openapi_describes_every_route_with_schemas() {
    let ctl = Controller::start().await;
    let mut c = ctl.client();
    let r = c.get("/api/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let mut count = 0;
    for (path, ops) in paths {
        assert!(path.starts_with("/api/"), "{path}");
        for (method, op) in ops.as_object().expect("ops") {
            count += 1;
            let label = format!("{method} {path}");
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{label}"
            );
            assert!(op["x-mezzanine-role"].is_string(), "{label}");
            // One success status (200, 201 Created or 202 Accepted), with its body's
            // media type: JSON, or an event stream.
            let success = ["200", "201", "202"]
                .iter()
                .find_map(|c| op["responses"].get(*c))
                .unwrap_or_else(|| panic!("{label}: no success response"));
            let content = &success["content"];
            assert!(
                content["application/json"]["schema"].is_object()
                    || content["text/event-stream"]["schema"].is_object(),
                "{label}"
            );
            // Every error status it documents carries the `{ error }` body.
            for (code, resp) in op["responses"].as_object().expect("responses") {
                if code.starts_with('4') || code.starts_with('5') {
                    assert!(
                        resp["content"]["application/json"]["schema"].is_object(),
                        "{label} {code}"
                    );
                }
            }
            if path.contains('{') {
                assert!(
                    op["parameters"].as_array().is_some_and(|p| !p.is_empty()),
                    "{label}"
                );
            }
            if method == "patch" || path == "/api/auth/login" || path == "/api/auth/setup" {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                assert_eq!(schema["type"], "object", "{label}");
            }
        }
    }
    assert!(count >= 14, "{count} operations");
    assert_eq!(
        doc["components"]["securitySchemes"]["cookieAuth"]["name"],
        Value::from("cp_session")
    );
}

#[tokio::test]
async fn health_probe_and_panel() {
    let ctl = Controller::start().await;
    let mut c = ctl.client();
    let r = c.get("/healthz").await;
    assert_eq!((r.status, r.body.clone()), (200, json!({ "ok": true })));

    let page = reqwest::get(format!("{}/", ctl.base)).await.expect("panel");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(html.contains("<script type=\"module\" src=\"/js/main.js\">"));
    for asset in ["/js/main.js", "/js/pages/server.js", "/style.css"] {
        let r = reqwest::get(format!("{}{asset}", ctl.base))
            .await
            .expect("asset");
        assert_eq!(r.status(), 200, "{asset}");
        // Modules are only run when served as JavaScript.
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            kind.starts_with(if asset.ends_with(".js") {
                "text/javascript"
            } else {
                "text/css"
            }),
            "{asset}: {kind}"
        );
    }
    let r = reqwest::get(format!("{}/nope", ctl.base))
        .await
        .expect("404");
    assert_eq!(r.status(), 404);
}

/// Same-origin requests pass whatever name the browser used for this machine (its
/// address, `localhost`); other sites, and DNS names other than the public URL's (how a
/// DNS-rebinding page would arrive), are refused with a message naming the setting.
/// Requests without a body need no Content-Type (curl -X DELETE).
#[tokio::test]
async fn same_origin_is_judged_by_the_browser_and_the_host() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let port = ctl.addr.port();
    let user =
        |name: &str| json!({ "username": name, "password": "whatever-123", "role": "viewer" });

    // Opened as http://localhost:<port>: Origin and Host agree, and name this machine.
    let via_localhost = format!("http://localhost:{port}");
    let req = admin
        .request(Method::POST, "/api/users")
        .header("content-type", "application/json")
        .header("origin", via_localhost.clone())
        .header("host", format!("localhost:{port}"))
        .body(user("local").to_string());
    let r = admin.raw(req).await;
    assert_eq!(r.status, 201, "{}", r.body);

    // A rebinding page: its own DNS name in Origin and Host.
    let req = admin
        .request(Method::POST, "/api/users")
        .header("content-type", "application/json")
        .header("origin", format!("http://attacker.example:{port}"))
        .header("host", format!("attacker.example:{port}"))
        .body(user("rebound").to_string());
    let r = admin.raw(req).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.error().contains("--public-url"),
        "names the setting: {}",
        r.body
    );

    // The browser's own word wins when it gives it.
    let req = admin
        .request(Method::POST, "/api/users")
        .header("content-type", "application/json")
        .header("sec-fetch-site", "cross-site")
        .body(user("forged").to_string());
    assert_eq!(admin.raw(req).await.status, 403);
    let req = admin
        .request(Method::POST, "/api/users")
        .header("content-type", "application/json")
        .header("sec-fetch-site", "same-origin")
        .header("origin", "http://whatever-name-the-user-typed:1")
        .body(user("samesite").to_string());
    assert_eq!(admin.raw(req).await.status, 201);

    // No body, no Content-Type needed.
    let id = admin
        .get("/api/users")
        .await
        .body
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "local")
        .and_then(|u| u["id"].as_i64())
        .expect("id");
    let req = admin.request(Method::DELETE, &format!("/api/users/{id}"));
    let r = admin.raw(req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A body still needs JSON.
    let req = admin
        .request(Method::POST, "/api/auth/logout")
        .header("content-type", "text/plain")
        .body("x");
    assert_eq!(admin.raw(req).await.status, 415);
}
