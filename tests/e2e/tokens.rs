//! API tokens: made by a signed-in user at most at their role, shown once, stored hashed,
//! accepted as `Authorization: Bearer` on every route the role allows (the seed's CI
//! example included), revoked at once, limited by the owner's current role.

use mezzanine_tests::{Client, ControllerProcess, Resp};
use reqwest::Method;
use serde_json::{json, Value};

/// A request with `token` and no cookie.
async fn with_token(
    base: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let mut c = Client::new(base);
    let mut req = c
        .request(method, path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    c.raw(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_stand_in_for_a_session_within_their_role() {
    let ctl = ControllerProcess::start(false, &[]);
    let base = ctl.base.clone();
    let mut admin = mezzanine_tests::first_admin(&base).await;
    let r = admin
        .post(
            "/api/users",
            json!({ "username": "mo", "password": "mo-password-1234", "role": "moderator" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mo_id = r.body["user"]["id"].as_i64().expect("user");
    let mut mo = Client::new(&base);
    assert_eq!(mo.login("mo", "mo-password-1234", None).await.status, 200);

    // Made at most at the maker's role, with a checked name and lifetime; shown once.
    for (body, field) in [
        (json!({ "name": "ci", "role": "admin" }), "role"),
        (json!({ "name": "" }), "name"),
        (
            json!({ "name": "ci", "expires_in_days": 0 }),
            "expires_in_days",
        ),
        (json!({ "name": "ci", "role": "root" }), "role"),
    ] {
        let r = mo.post("/api/tokens", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().starts_with(field), "{body}: {}", r.body);
    }
    let r = mo
        .post("/api/tokens", json!({ "name": "ci deploys" }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["role"], "moderator");
    let token = r.body["token"].as_str().expect("token").to_owned();
    let token_id = r.body["id"].as_i64().expect("id");
    assert!(token.starts_with("mz_") && token.len() == 67, "{token}");

    // The seed's CI example with the token instead of a cookie.
    let (server, _, _) = mezzanine_tests::add_server(&mut admin, "ci-box").await;
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "deploy", "server_id": server, "definition": { "steps": [
            { "name": "hello", "uses": "shell", "with": { "script": "echo hi" } }] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = with_token(
        &base,
        &token,
        Method::POST,
        &format!("/api/workflows/{wf}/run"),
        Some(json!({})),
    )
    .await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    assert!(r.body["runId"].is_i64(), "{}", r.body);
    let r = with_token(&base, &token, Method::GET, "/api/servers", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Within its role only.
    let r = with_token(&base, &token, Method::GET, "/api/users", None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.body,
        json!({ "error": "INSUFFICIENT_ROLE", "required": "admin", "role": "moderator" })
    );
    // No cookie, so the cross-site rules for browsers do not apply; a cookie still gets them.
    let mut c = Client::new(&base);
    let req = c
        .request(Method::POST, &format!("/api/workflows/{wf}/run"))
        .header("authorization", format!("Bearer {token}"))
        .header("origin", "https://elsewhere.example")
        .header("content-type", "application/json")
        .body("{}");
    let r = c.raw(req).await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    let req = mo
        .request(Method::POST, &format!("/api/workflows/{wf}/run"))
        .header("origin", "https://elsewhere.example")
        .header("content-type", "application/json")
        .body("{}");
    assert_eq!(mo.raw(req).await.status, 403);
    // A token cannot make tokens; bad tokens are refused outright.
    let r = with_token(
        &base,
        &token,
        Method::POST,
        "/api/tokens",
        Some(json!({ "name": "more" })),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    for bad in ["mz_nope", &format!("mz_{}", "0".repeat(64)), "not-a-token"] {
        let r = with_token(&base, bad, Method::GET, "/api/servers", None).await;
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
    }

    // Listed without the secret, with its last use; an admin sees everyone's.
    let r = admin
        .post(
            "/api/tokens",
            json!({ "name": "backup", "role": "viewer", "expires_in_days": 30 }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let admin_token = r.body["id"].as_i64().expect("id");
    let admin_secret = r.body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        with_token(&base, &admin_secret, Method::GET, "/api/users", None)
            .await
            .status,
        403,
        "a viewer token"
    );
    let mine = mo.get("/api/tokens").await.body;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    assert!(
        mine[0]["last_used_at"].is_string()
            && mine[0]["prefix"]
                .as_str()
                .is_some_and(|p| token.starts_with(p)),
        "{mine}"
    );
    assert!(!mine.to_string().contains(&token));
    let all = admin.get("/api/tokens").await.body;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    assert!(all[0]["expires_at"].is_string(), "{all}");
    // Someone else's token is not there for a non-admin.
    assert_eq!(
        mo.delete(&format!("/api/tokens/{admin_token}"))
            .await
            .status,
        404
    );

    // The owner's role now bounds the token: demoted to viewer, the token reads only.
    let r = admin
        .patch(&format!("/api/users/{mo_id}"), json!({ "role": "viewer" }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = with_token(
        &base,
        &token,
        Method::POST,
        &format!("/api/workflows/{wf}/run"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        with_token(&base, &token, Method::GET, "/api/servers", None)
            .await
            .status,
        200
    );

    // Expiry and revocation take effect at once.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&ctl.database_url())
        .await
        .expect("db");
    sqlx::query("UPDATE api_tokens SET expires_at = 1 WHERE id = $1")
        .bind(admin_token)
        .execute(&pool)
        .await
        .expect("expire");
    let r = with_token(&base, &admin_secret, Method::GET, "/api/servers", None).await;
    assert_eq!(r.status, 401, "expired: {}", r.body);
    // (The role change ended mo's sessions; tokens stay, bounded by the new role.)
    assert_eq!(mo.login("mo", "mo-password-1234", None).await.status, 200);
    let r = mo.delete(&format!("/api/tokens/{token_id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = with_token(&base, &token, Method::GET, "/api/servers", None).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Stored hashed: the token is nowhere in the database.
    let bytes = ctl.stored_bytes();
    assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()));
    let audit = admin.get("/api/audit?per_page=200").await.body.to_string();
    assert!(
        audit.contains("API token ci deploys") && !audit.contains(&token),
        "{audit}"
    );
}

/// `GET /metrics`: Prometheus text for a request with an API token (never a cookie or
/// nothing), and for anyone on `--metrics-listen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_to_tokens_and_on_their_own_address() {
    let ctl = ControllerProcess::start(false, &["--metrics-listen", "127.0.0.1:0"]);
    let base = ctl.base.clone();
    let mut admin = mezzanine_tests::first_admin(&base).await;
    assert_eq!(
        admin.get("/metrics").await.status,
        401,
        "a cookie is not enough"
    );
    assert_eq!(Client::new(&base).get("/metrics").await.status, 401);
    let r = admin
        .post(
            "/api/tokens",
            json!({ "name": "prometheus", "role": "viewer" }),
        )
        .await;
    let token = r.body["token"].as_str().expect("token").to_owned();
    for _ in 0..3 {
        assert_eq!(admin.get("/api/servers").await.status, 200);
    }
    assert_eq!(admin.get("/api/servers/999999").await.status, 404);
    // An open change feed counts as an SSE viewer.
    let stream = admin.open("/api/events").await;
    assert_eq!(stream.status(), 200);
    let resp = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let text = resp.text().await.expect("text");
    for line in [
        "mezzanine_http_requests_total{route=\"/api/servers\",method=\"GET\",status=\"200\"} 3",
        "mezzanine_http_requests_total{route=\"/api/servers/{id}\",method=\"GET\",status=\"404\"} 1",
        "mezzanine_agents_attached 0",
        "mezzanine_sse_viewers 1",
        "# TYPE mezzanine_http_request_duration_seconds histogram",
        "mezzanine_run_queue_depth 0",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(
        text.lines()
            .find_map(|l| l.strip_prefix("mezzanine_process_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|b| b > 1_000_000),
        "{text}"
    );
    drop(stream);
    // The operator's own address: no token, and nothing else served there.
    let addr = ctl
        .proc
        .ready_field("metrics_listen")
        .expect("metrics_listen");
    let plain = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(plain.status(), 200);
    assert!(plain
        .text()
        .await
        .expect("text")
        .contains("mezzanine_http_requests_total"));
    let other = reqwest::get(format!("http://{addr}/api/servers"))
        .await
        .expect("other");
    assert_eq!(other.status(), 404);
}
