//! Setup, login, logout, password change, sessions, TOTP and brute-force throttling.

use mezzanine_tests::{totp_code, Client, Controller, Method, ADMIN_PASSWORD};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn first_setup_creates_admin_once() {
    let ctl = Controller::start().await;
    let mut anon = ctl.client();
    let s = anon.get("/api/auth/state").await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.body,
        json!({ "needs_setup": true, "authenticated": false, "user": null })
    );

    let r = anon
        .post(
            "/api/auth/setup",
            json!({ "username": "admin", "password": "short" }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("too short"), "{}", r.body);
    let r = anon
        .post(
            "/api/auth/setup",
            json!({ "username": "admin", "password": "x".repeat(300) }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("too long"), "{}", r.body);
    let r = anon
        .post(
            "/api/auth/setup",
            json!({ "username": "bad name!", "password": ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, 400);

    let mut admin = ctl.admin().await;
    let s = admin.get("/api/auth/state").await;
    assert_eq!(s.body["authenticated"], true);
    assert_eq!(s.body["needs_setup"], false);
    assert_eq!(s.body["user"]["username"], "admin");
    assert_eq!(s.body["user"]["role"], "admin");
    assert_eq!(s.body["user"]["totp_enabled"], false);

    let r = anon
        .post(
            "/api/auth/setup",
            json!({ "username": "other", "password": ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let s = anon.get("/api/auth/state").await;
    assert_eq!(s.body["needs_setup"], false);
    assert_eq!(s.body["authenticated"], false);
}

#[tokio::test]
async fn login_sets_a_strict_cookie_and_hides_which_part_was_wrong() {
    let ctl = Controller::start().await;
    ctl.admin().await;
    let mut c = ctl.client();
    let wrong_user = c.login("nobody", ADMIN_PASSWORD, None).await;
    let wrong_pass = c.login("admin", "not-the-password", None).await;
    assert_eq!(wrong_user.status, 401);
    assert_eq!(wrong_pass.status, 401);
    assert_eq!(wrong_user.body, wrong_pass.body);
    assert!(c.cookie.is_none());

    let ok = c.login("ADMIN", ADMIN_PASSWORD, None).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["ok"], true);
    assert_eq!(ok.body["user"]["username"], "admin");
    let cookie = ok.header("set-cookie").expect("cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "http public URL must not set Secure: {cookie}"
    );
    let token = c.cookie.clone().expect("token");
    assert_eq!(token.len(), 64, "256-bit id, hex");
}

#[tokio::test]
async fn https_public_url_sets_secure_cookie() {
    let ctl = Controller::start_with(&["--public-url", "https://panel.example.test"]).await;
    let mut c = ctl.client();
    let r = c
        .post(
            "/api/auth/setup",
            json!({ "username": "admin", "password": ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.header("set-cookie").expect("cookie").contains("; Secure"));
}

#[tokio::test]
async fn logout_revokes_the_session_server_side() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let stolen = admin.cookie.clone();
    let r = admin.post("/api/auth/logout", json!({})).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("set-cookie")
        .expect("cleared")
        .contains("Max-Age=0"));
    let mut replay = ctl.client();
    replay.cookie = stolen;
    let r = replay.get("/api/users").await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        replay.get("/api/auth/state").await.body["authenticated"],
        false
    );
}

#[tokio::test]
async fn change_password_revokes_other_sessions() {
    let ctl = Controller::start().await;
    let mut a = ctl.admin().await;
    let mut b = ctl.client();
    assert_eq!(b.login("admin", ADMIN_PASSWORD, None).await.status, 200);

    let r = a
        .post(
            "/api/auth/change-password",
            json!({ "current": "wrong-password", "next": "new-password-22" }),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = a
        .post(
            "/api/auth/change-password",
            json!({ "current": ADMIN_PASSWORD, "next": "short" }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("too short"));
    let r = a
        .post(
            "/api/auth/change-password",
            json!({ "current": ADMIN_PASSWORD, "next": "new-password-22" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["revoked_sessions"], 1);

    assert_eq!(
        a.get("/api/users").await.status,
        200,
        "own session survives"
    );
    assert_eq!(
        b.get("/api/users").await.status,
        401,
        "other session revoked"
    );
    let mut c = ctl.client();
    assert_eq!(c.login("admin", ADMIN_PASSWORD, None).await.status, 401);
    assert_eq!(c.login("admin", "new-password-22", None).await.status, 200);
}

#[tokio::test]
async fn idle_sessions_expire() {
    // Expiry is checked in whole seconds, so a 3 s idle limit lasts between 2 and 3 s.
    let ctl = Controller::start_with(&["--session-idle-secs", "3"]).await;
    let mut admin = ctl.admin().await;
    assert_eq!(admin.get("/api/users").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        admin.get("/api/users").await.status,
        200,
        "activity keeps it alive"
    );
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(admin.get("/api/users").await.status, 401);
}

#[tokio::test]
async fn absolute_session_lifetime_is_enforced() {
    let ctl = Controller::start_with(&["--session-max-secs", "1"]).await;
    let mut admin = ctl.admin().await;
    assert!(admin.cookie.is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        admin.get("/api/auth/state").await.body["authenticated"],
        false
    );
}

#[tokio::test]
async fn totp_enrolment_login_replay_and_disable() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;

    let r = admin
        .post("/api/auth/totp/enable", json!({ "code": "123456" }))
        .await;
    assert_eq!(r.status, 409, "enable before setup: {}", r.body);

    // The password again: a stolen session cannot bind its own authenticator.
    let r = admin.post("/api/auth/totp/setup", json!({})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin
        .post(
            "/api/auth/totp/setup",
            json!({ "password": "not-the-password" }),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = admin
        .post(
            "/api/auth/totp/setup",
            json!({ "password": ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let url = r.body["otpauth_url"].as_str().expect("url");
    assert!(
        url.starts_with("otpauth://totp/Mezzanine:admin?secret="),
        "{url}"
    );
    assert!(url.contains(&secret));
    // The QR code for the authenticator's camera comes drawn, as SVG.
    let qr = r.body["qr_svg"].as_str().expect("qr_svg");
    assert!(qr.contains("<svg") && qr.contains("<path"), "{qr}");

    let wrong = if totp_code(&secret, 0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let r = admin
        .post("/api/auth/totp/enable", json!({ "code": wrong }))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = admin
        .post(
            "/api/auth/totp/enable",
            json!({ "code": totp_code(&secret, -1) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        admin.get("/api/auth/state").await.body["user"]["totp_enabled"],
        true
    );
    let r = admin
        .post(
            "/api/auth/totp/setup",
            json!({ "password": ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, 409);

    let mut c = ctl.client();
    let r = c.login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, json!({ "error": "TOTP_REQUIRED" }));
    assert!(c.cookie.is_none());
    let r = c.login("admin", ADMIN_PASSWORD, Some(wrong)).await;
    assert_eq!(r.status, 401);
    let code = totp_code(&secret, 0);
    let r = c.login("admin", ADMIN_PASSWORD, Some(&code)).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let mut replay = ctl.client();
    let r = replay.login("admin", ADMIN_PASSWORD, Some(&code)).await;
    assert_eq!(r.status, 401, "a code is accepted once: {}", r.body);
    assert!(r.error().contains("already used"), "{}", r.body);

    let r = c
        .post(
            "/api/auth/totp/disable",
            json!({ "password": "wrong-password", "code": totp_code(&secret, 1) }),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = c
        .post(
            "/api/auth/totp/disable",
            json!({ "password": ADMIN_PASSWORD, "code": totp_code(&secret, 1) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut d = ctl.client();
    assert_eq!(d.login("admin", ADMIN_PASSWORD, None).await.status, 200);
}

#[tokio::test]
async fn repeated_failures_for_a_username_are_throttled() {
    let ctl = Controller::start().await;
    ctl.admin().await;
    let mut c = ctl.client();
    for _ in 0..5 {
        assert_eq!(c.login("admin", "wrong-password", None).await.status, 401);
    }
    let r = c.login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(
        r.status, 429,
        "locked even with the right password: {}",
        r.body
    );
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((1..=900).contains(&wait), "{wait}");
    assert!(r.error().contains("retry"), "{}", r.body);
    // The lockout is this address's for this user: the user from elsewhere, and other
    // users from here, still get in (it used to lock the username everywhere).
    let mut elsewhere = Client::from_address(&ctl.base, [127, 0, 0, 2].into());
    let r = elsewhere.login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut admin = elsewhere;
    let r = admin
        .post(
            "/api/users",
            json!({ "username": "other", "password": "other-password-1", "role": "viewer" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        ctl.client()
            .login("other", "other-password-1", None)
            .await
            .status,
        200
    );
}

/// Behind a trusted proxy the client is the forwarded address: one client's failures
/// lock that client, not everyone behind the proxy. Without `--trusted-proxy` the header
/// is ignored, so a client cannot pick a fresh address per guess.
#[tokio::test]
async fn a_trusted_proxys_clients_are_counted_apart() {
    let ctl = Controller::start_with(&["--trusted-proxy", "127.0.0.0/8"]).await;
    let mut admin = ctl.admin().await;
    let mut proxy = ctl.client();
    for _ in 0..5 {
        let r = login_from(&mut proxy, "wrong-password", "198.51.100.7").await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = login_from(&mut proxy, ADMIN_PASSWORD, "198.51.100.7").await;
    assert_eq!(r.status, 429, "{}", r.body);
    // Another client behind the same proxy; a spoofed left part does not count.
    let r = login_from(&mut proxy, ADMIN_PASSWORD, "198.51.100.7, 198.51.100.8").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = admin.get("/api/audit?per_page=50").await;
    let ips: Vec<&str> = audit.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["ip"].as_str())
        .collect();
    assert!(ips.contains(&"198.51.100.7"), "{ips:?}");
    assert!(ips.contains(&"198.51.100.8"), "{ips:?}");

    // Not trusted: the header changes nothing, whatever address it claims each time.
    let ctl = Controller::start().await;
    ctl.admin().await;
    let mut c = ctl.client();
    for ip in [
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.3",
        "203.0.113.4",
        "203.0.113.5",
    ] {
        let r = login_from(&mut c, "wrong-password", ip).await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = login_from(&mut c, ADMIN_PASSWORD, "203.0.113.6").await;
    assert_eq!(r.status, 429, "{}", r.body);
}

/// A login as admin with `password`, saying it is forwarded for `forwarded_for`.
async fn login_from(c: &mut Client, password: &str, forwarded_for: &str) -> mezzanine_tests::Resp {
    c.send_with(
        Method::POST,
        "/api/auth/login",
        Some(json!({ "username": "admin", "password": password })),
        &[("x-forwarded-for", forwarded_for)],
    )
    .await
}

#[tokio::test]
async fn repeated_failures_from_an_address_are_throttled() {
    let ctl = Controller::start().await;
    ctl.admin().await;
    let mut c = ctl.client();
    for i in 0..30 {
        let r = c.login(&format!("user{i}"), "wrong-password", None).await;
        assert_eq!(r.status, 401);
    }
    let r = c.login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn a_burst_of_logins_is_bounded_not_fatal() {
    let ctl = Controller::start_with(&["--hash-concurrency", "2"]).await;
    ctl.admin().await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut c = ctl.client();
        tasks.push(tokio::spawn(async move {
            let pw = if i % 2 == 0 {
                ADMIN_PASSWORD
            } else {
                "wrong-password-x"
            };
            c.login("admin", pw, None).await.status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("join"));
    }
    assert!(
        statuses.iter().all(|s| [200, 401, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200));
    assert_eq!(ctl.client().get("/healthz").await.status, 200);
}

/// Guesses sent all at once get no more tries than guesses sent one by one: an attempt is
/// reserved before the password is hashed. 120 concurrent wrong guesses and then the
/// right password used to give 119 × 401 and a 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_share_the_same_limit() {
    let ctl = Controller::start().await;
    ctl.admin().await;
    let mut tasks = Vec::new();
    for i in 0..120 {
        let mut c = ctl.client();
        tasks.push(tokio::spawn(async move {
            c.login("admin", &format!("wrong-guess-{i:03}"), None)
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("join"));
    }
    let hashed = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        (1..=5).contains(&hashed),
        "at most the 5 allowed guesses were tried: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
    let r = ctl.client().login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(r.status, 429, "{}", r.body);
}

/// A password typed into the username field does not reach the audit log, and a huge
/// username costs the limiter a hash, not its size.
#[tokio::test]
async fn failed_logins_do_not_record_what_was_typed_as_a_username() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let mut c = ctl.client();
    assert_eq!(c.login("Tr0ub4dor&3-secret", "x", None).await.status, 401);
    let huge = "u".repeat(500_000);
    assert_eq!(c.login(&huge, "x", None).await.status, 401);
    let audit = admin.get("/api/audit").await.body.to_string();
    assert!(!audit.contains("Tr0ub4dor"), "{audit}");
    assert!(audit.contains("unknown user #"), "{audit}");
    assert!(audit.len() < 20_000, "{} bytes", audit.len());
    let r = admin.get(&format!("/api/{}", "x".repeat(60_000))).await;
    assert_eq!(r.status, 404);
    let r = admin
        .raw(
            admin
                .request(
                    reqwest::Method::POST,
                    &format!("/api/{}", "y".repeat(60_000)),
                )
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert!(r.status >= 400, "{}", r.status);
    let audit = admin.get("/api/audit").await.body.to_string();
    assert!(
        audit.len() < 20_000,
        "targets are bounded: {} bytes",
        audit.len()
    );
}

/// The audit log filtered by who, what and outcome, with the reason of each failure — and
/// a value the caller typed into the wrong field is not kept in that reason.
#[tokio::test]
async fn the_audit_log_filters_and_says_why_things_failed() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let mut mo = ctl.user(&mut admin, "mo", "moderator").await;
    let r = mo
        .post(
            "/api/servers",
            json!({ "name": "bad name!", "host": "10.0.0.1", "auth_type": "manual" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = mo
        .post("/api/servers", json!({ "name": "ok-1", "host": "10.0.0.1", "auth_type": "manual", "port": "hunter2-secret" }))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = mo
        .post(
            "/api/servers",
            json!({ "name": "web-2", "host": "10.0.0.2", "auth_type": "manual" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let page = admin
        .get("/api/audit?actor=mo&action=POST%20/api/servers")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let items = page.body["items"].as_array().expect("items").clone();
    assert_eq!(page.body["total"], 3, "{}", page.body);
    assert!(items
        .iter()
        .all(|e| e["actor"] == "mo" && e["action"] == "POST /api/servers"));
    let failed = admin.get("/api/audit?actor=mo&outcome=failure").await.body;
    assert_eq!(failed["total"], 2, "{failed}");
    let reasons: Vec<&str> = failed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{failed}");
    assert!(
        reasons.iter().any(|r| r.starts_with("name:")),
        "{reasons:?}"
    );
    assert!(!failed.to_string().contains("hunter2"), "{failed}");
    let ok = admin.get("/api/audit?actor=mo&outcome=success").await.body;
    assert_eq!(ok["items"][0]["reason"], serde_json::Value::Null, "{ok}");

    let r = admin.get("/api/audit?outcome=").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin.get("/api/audit?outcome=maybe").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("outcome:")));
    let r = admin.get("/api/audit?actor=nobody").await;
    assert_eq!(r.body["total"], 0, "{}", r.body);
    // The documented bound (maxLength 300) counts characters, as JSON Schema does: 300
    // two-byte characters are a filter, 301 are refused.
    let r = admin
        .get(&format!("/api/audit?actor={}", "%C3%A9".repeat(300)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["total"], 0, "{}", r.body);
    let r = admin
        .get(&format!("/api/audit?action={}", "%C3%A9".repeat(301)))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error().starts_with("action: longer than 300"),
        "{}",
        r.body
    );
}

/// Logging in again and again with the right password is never throttled (each success
/// once left its attempt counted as in flight: the sixth login was refused with 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_successful_logins_are_never_throttled() {
    let ctl = Controller::start().await;
    let _admin = ctl.admin().await;
    for i in 0..12 {
        let mut c = ctl.client();
        let r = c.login("admin", ADMIN_PASSWORD, None).await;
        assert_eq!(r.status, 200, "login {i}: {}", r.body);
    }
}
