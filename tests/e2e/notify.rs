//! Notifications: events reach the notifiers subscribed to them — a webhook (signed,
//! retried after a failure) and a Slack-shaped one through a receiver in this test, and
//! e-mail through a real SMTP server (Debian's aiosmtpd, writing a Maildir).

use mezzanine_tests::{attached_agent, ControllerProcess};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the receiver got: (path, signature header, event header, body).
pub(crate) type Seen = Arc<Mutex<Vec<(String, Option<String>, Option<String>, String)>>>;

pub(crate) async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let st = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (st, failed_once) = (st.clone(), failed_once.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let header = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let body = String::from_utf8_lossy(&body).into_owned();
            // The webhook's first run.failed is answered 500, to be retried.
            if parts.uri.path() == "/hook"
                && body.contains("\"run.failed\"")
                && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            st.lock().expect("seen").push((
                parts.uri.path().to_owned(),
                header("x-mezzanine-signature-256"),
                header("x-mezzanine-event"),
                body,
            ));
            axum::http::StatusCode::OK
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, seen)
}

/// Waits until the receiver got a request on `path` for `event`; returns its signature and body.
pub(crate) async fn received(
    seen: &Seen,
    path: &str,
    event: &str,
    within: Duration,
) -> (Option<String>, Value) {
    let deadline = Instant::now() + within;
    loop {
        let hit = seen
            .lock()
            .expect("seen")
            .iter()
            .find_map(|(p, sig, ev, body)| {
                (p == path && ev.as_deref() == Some(event))
                    .then(|| (sig.clone(), serde_json::from_str(body).unwrap_or_default()))
            });
        if let Some(h) = hit {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "no {event} on {path}: {:?}",
            seen.lock().expect("seen")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_notifiers_signed_and_retried() {
    const SECRET: &str = "notify-secret-0123456789";
    let (base_rx, seen) = receiver().await;
    let ctl = ControllerProcess::start(false, &[]);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let all = [
        "run.failed",
        "run.succeeded",
        "server.offline",
        "server.online",
    ];
    for (body, field) in [
        (
            json!({ "name": "x", "kind": "pager", "url": format!("{base_rx}/hook"), "events": all }),
            "kind",
        ),
        (
            json!({ "name": "x", "kind": "email", "url": format!("{base_rx}/hook"), "events": all }),
            "url",
        ),
        (
            json!({ "name": "x", "kind": "webhook", "url": "http://hooks.example.com/x", "events": all }),
            "url",
        ),
        (
            json!({ "name": "x", "kind": "webhook", "url": format!("{base_rx}/hook"), "events": ["run.exploded"] }),
            "events[0]",
        ),
        (
            json!({ "name": "x", "kind": "webhook", "url": format!("{base_rx}/hook"), "events": [] }),
            "events",
        ),
        (
            json!({ "name": "x", "kind": "webhook", "url": format!("{base_rx}/hook"), "secret": "short", "events": all }),
            "secret",
        ),
        (
            json!({ "name": "x", "kind": "slack", "url": format!("{base_rx}/slack"), "secret": SECRET, "events": all }),
            "secret",
        ),
    ] {
        let r = admin.post("/api/notifiers", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().starts_with(field), "{body}: {}", r.body);
    }
    let r = admin
        .post("/api/notifiers", json!({ "name": "ops-hook", "kind": "webhook", "url": format!("{base_rx}/hook"), "secret": SECRET, "events": all }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let hook = r.body["id"].as_i64().expect("id");
    let r = admin
        .post("/api/notifiers", json!({ "name": "chat", "kind": "slack", "url": format!("{base_rx}/slack"), "events": ["run.failed"] }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let listed = admin.get("/api/notifiers").await.body;
    assert_eq!(listed[1]["host"], "127.0.0.1", "{listed}");
    assert_eq!(listed[1]["signed"], true, "{listed}");
    assert!(
        !listed.to_string().contains("/hook") && !listed.to_string().contains(SECRET),
        "{listed}"
    );

    // A run that fails: the webhook's first delivery is refused (500) and retried; the
    // body is signed with the secret; Slack gets one line.
    let (server, agent, agent_proc) = attached_agent(&mut admin, "notify-box", 1).await;
    let r = admin
        .post("/api/workflows", json!({ "name": "flaky", "server_id": server, "definition": { "steps": [
            { "name": "fail", "uses": "shell", "with": { "script": "echo about to fail; exit 3" } }] } }))
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = admin
        .post(&format!("/api/workflows/{wf}/run"), json!({}))
        .await;
    let run = r.body["runId"].as_i64().expect("run");
    let (sig, body) = received(&seen, "/hook", "run.failed", Duration::from_secs(60)).await;
    assert_eq!(
        (body["event"].as_str(), body["run_id"].as_i64()),
        (Some("run.failed"), Some(run)),
        "{body}"
    );
    assert_eq!(body["workflow"], "flaky");
    assert_eq!(body["server"], "notify-box");
    let raw = seen
        .lock()
        .expect("seen")
        .iter()
        .find(|(p, _, ev, _)| p == "/hook" && ev.as_deref() == Some("run.failed"))
        .map(|(.., b)| b.clone())
        .expect("raw body");
    assert_eq!(
        sig.as_deref(),
        Some(crate::runs::signature(SECRET, &raw).as_str()),
        "the signature over the body"
    );
    let (_, chat) = received(&seen, "/slack", "run.failed", Duration::from_secs(30)).await;
    assert!(
        chat["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("Run #{run} of flaky on notify-box failed"))),
        "{chat}"
    );
    let log = admin
        .get(&format!("/api/notifiers/{hook}/deliveries"))
        .await
        .body;
    let failed = log
        .as_array()
        .and_then(|l| l.iter().find(|d| d["event"] == "run.failed"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (failed["status"].as_str(), failed["attempts"].as_i64()),
        (Some("delivered"), Some(2)),
        "{log}"
    );

    // The test button, and a server going offline.
    let r = admin
        .post(&format!("/api/notifiers/{hook}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    received(&seen, "/hook", "test", Duration::from_secs(30)).await;
    drop(agent_proc);
    let (_, off) = received(&seen, "/hook", "server.offline", Duration::from_secs(60)).await;
    assert_eq!(off["server"], "notify-box", "{off}");
    // Back: `server.online` (a new server's first attach was not announced).
    let _agent_again = agent.run_with(1, &[]);
    received(&seen, "/hook", "server.online", Duration::from_secs(60)).await;
    assert_eq!(
        seen.lock()
            .expect("seen")
            .iter()
            .filter(|(_, _, ev, _)| ev.as_deref() == Some("server.online"))
            .count(),
        1
    );

    // The secret and the URLs are sealed: not in the database in the clear.
    let bytes = ctl.stored_bytes();
    for secret in [SECRET, &format!("{base_rx}/hook")] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} stored in the clear"
        );
    }
    let r = admin.delete(&format!("/api/notifiers/{hook}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The notifiers page: add a signed webhook (a bad URL refused next to its field), send
/// it a test event, watch the delivery log say delivered, delete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifiers_in_the_panel() {
    use mezzanine_tests::browser::Browser;
    let (base_rx, seen) = receiver().await;
    let ctl = mezzanine_tests::Controller::start().await;
    let mut admin = ctl.admin().await;
    let b = Browser::start().await;
    b.log_in_as_admin(&ctl.base).await;
    b.open(&format!("{}/#/notifiers", ctl.base)).await;
    crate::panel::page(&b, "the notifiers page", "Notifiers").await;
    b.type_into("#notifier-form input[name=name]", "ops").await;
    b.type_into("#notifier-form input[name=url]", "ftp://nowhere.test/hook")
        .await;
    b.type_into("#notifier-secret", "a-signing-secret-of-some-length")
        .await;
    b.click("#notifier-form button[type=submit]").await;
    b.until(
        "the error next to the URL",
        "document.querySelector('#notifier-form input[name=url]').getAttribute('aria-invalid') === 'true'",
    )
    .await;
    b.js(&format!(
        "const u = document.querySelector('#notifier-form input[name=url]'); u.value = {:?}; return 1;",
        format!("{base_rx}/panel")
    ))
    .await;
    b.click("#notifier-form button[type=submit]").await;
    b.until(
        "the notifier in the list, signed",
        "[...document.querySelectorAll('#notifiers tbody tr')].some(r => r.innerText.includes('ops') && r.innerText.includes('127.0.0.1 (signed)') && r.innerText.includes('run.failed'))",
    )
    .await;
    let listed = admin.get("/api/notifiers").await.body;
    assert_eq!(listed[0]["name"], "ops", "{listed}");
    assert_eq!(listed[0]["events"], json!(["run.failed"]));
    b.click("[aria-label='Send a test event to ops']").await;
    let (sig, body) = received(&seen, "/panel", "test", Duration::from_secs(30)).await;
    assert!(sig.is_some_and(|s| s.starts_with("sha256=")), "signed");
    assert_eq!(body["event"], "test");
    b.until_within(
        "the delivery log says delivered",
        "(document.querySelector('[aria-label=\"Deliveries to ops\"]').click(), [...document.querySelectorAll('#delivery-table tbody tr')].some(r => r.innerText.includes('test') && r.innerText.includes('delivered')))",
        Duration::from_secs(30),
    )
    .await;
    // An e-mail notifier: the form trades the URL for SMTP settings, and a bad address
    // is refused next to its field.
    b.js("const k = document.querySelector('#notifier-kind'); k.value = 'email'; k.dispatchEvent(new Event('change')); return 1;")
        .await;
    b.until(
        "the SMTP fields instead of the URL",
        "!document.querySelector('#smtp-fields').hidden && document.querySelector('#notifier-form input[name=url]').closest('[hidden]') !== null",
    )
    .await;
    b.type_into("#notifier-form input[name=name]", "mail").await;
    b.type_into("#notifier-form input[name=smtp_host]", "127.0.0.1")
        .await;
    b.js("const k = document.querySelector('#smtp-security'); k.value = 'none'; return 1;")
        .await;
    b.type_into("#notifier-form input[name=smtp_from]", "mz@example.test")
        .await;
    b.type_into(
        "#notifier-form input[name=smtp_to]",
        "ops@example.test, nobody",
    )
    .await;
    b.click("#notifier-form button[type=submit]").await;
    b.until(
        "the error next to the recipients",
        "document.querySelector('#notifier-form input[name=smtp_to]').getAttribute('aria-invalid') === 'true'",
    )
    .await;
    b.js("document.querySelector('#notifier-form input[name=smtp_to]').value = 'ops@example.test, oncall@example.test'; return 1;")
        .await;
    b.click("#notifier-form button[type=submit]").await;
    b.until(
        "the e-mail notifier in the list",
        "[...document.querySelectorAll('#notifiers tbody tr')].some(r => r.innerText.includes('mail') && r.innerText.includes('email') && r.innerText.includes('127.0.0.1'))",
    )
    .await;
    b.click("[aria-label='Delete mail']").await;
    b.click_text("dialog button", "Delete").await;
    b.until(
        "the list without the e-mail notifier",
        "![...document.querySelectorAll('#notifiers tbody tr')].some(r => r.innerText.includes('email'))",
    )
    .await;
    b.click("[aria-label='Delete ops']").await;
    b.click_text("dialog button", "Delete").await;
    b.until(
        "the list without it",
        "!document.querySelector('#notifiers tbody tr') || ![...document.querySelectorAll('#notifiers tbody tr')].some(r => r.innerText.includes('ops'))",
    )
    .await;
    assert!(admin
        .get("/api/notifiers")
        .await
        .body
        .as_array()
        .is_some_and(Vec::is_empty));
}

/// An SMTP server on loopback (aiosmtpd) that keeps what it receives in a Maildir.
struct SmtpSink {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let dir = tempfile::tempdir().expect("maildir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("/usr/bin/aiosmtpd")
            .args(["-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd (tests/run installs python3-aiosmtpd)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpSink { child, port, dir }
    }

    /// The messages received so far, as raw text.
    fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("mail/new"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn message_with(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| m.contains(text)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no message with {text:?}: {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// E-mail notifiers: settings refused field by field, STARTTLS never skipped when the
/// server does not offer it, a message delivered over plain SMTP on loopback, and the
/// password sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_notifiers_send_through_smtp() {
    const PASSWORD: &str = "smtp-password-5f1c9a";
    let sink = SmtpSink::start();
    let ctl = ControllerProcess::start(false, &[]);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let smtp = |extra: Value| {
        let mut s = json!({ "host": "127.0.0.1", "port": sink.port, "security": "none",
                            "from": "Mezzanine <mezzanine@example.test>", "to": ["ops@example.test"] });
        if let (Some(o), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        s
    };
    for (body, field) in [
        (
            json!({ "name": "m", "kind": "email", "events": ["run.failed"] }),
            "smtp",
        ),
        (
            json!({ "name": "m", "kind": "webhook", "url": "http://127.0.0.1:9/x", "smtp": smtp(json!({})), "events": ["run.failed"] }),
            "smtp",
        ),
        (
            json!({ "name": "m", "kind": "email", "smtp": smtp(json!({ "host": "smtp.example.com" })), "events": ["run.failed"] }),
            "smtp.security",
        ),
        (
            json!({ "name": "m", "kind": "email", "smtp": smtp(json!({ "username": "ops", "password": PASSWORD })), "events": ["run.failed"] }),
            "smtp.password",
        ),
        (
            json!({ "name": "m", "kind": "email", "smtp": smtp(json!({ "to": ["ops@example.test\r\nBcc: x@evil.test"] })), "events": ["run.failed"] }),
            "smtp.to[0]",
        ),
        (
            json!({ "name": "m", "kind": "email", "smtp": smtp(json!({ "from": "not an address" })), "events": ["run.failed"] }),
            "smtp.from",
        ),
        (
            json!({ "name": "m", "kind": "email", "smtp": smtp(json!({ "port": 0 })), "events": ["run.failed"] }),
            "smtp.port",
        ),
        (
            json!({ "name": "m", "kind": "email", "smtp": smtp(json!({ "bcc": [] })), "events": ["run.failed"] }),
            "body: smtp.bcc: unknown field",
        ),
    ] {
        let r = admin.post("/api/notifiers", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().starts_with(field), "{body}: {}", r.body);
    }

    // STARTTLS (the default) to a server that does not offer it: nothing is sent in the
    // clear; the delivery log says why.
    let r = admin
        .post("/api/notifiers", json!({ "name": "strict", "kind": "email",
            "smtp": smtp(json!({ "security": "starttls", "username": "ops", "password": PASSWORD })),
            "events": ["run.failed"] }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let strict = r.body["id"].as_i64().expect("id");
    let r = admin
        .post(&format!("/api/notifiers/{strict}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let log = admin
            .get(&format!("/api/notifiers/{strict}/deliveries"))
            .await
            .body;
        if log[0]["last_error"].is_string() {
            break log;
        }
        assert!(Instant::now() < deadline, "never attempted: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(refused[0]["status"], "delivered", "{refused}");
    assert!(
        refused[0]["last_error"].as_str().is_some_and(|e| e
            .contains(&format!("127.0.0.1:{}", sink.port))
            && !e.contains(PASSWORD)),
        "{refused}"
    );

    // Plain SMTP on loopback: the test event arrives as a message.
    let r = admin
        .post("/api/notifiers", json!({ "name": "ops-mail", "kind": "email", "smtp": smtp(json!({})), "events": ["run.failed"] }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mail = r.body["id"].as_i64().expect("id");
    let listed = admin.get("/api/notifiers").await.body;
    assert!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|n| n["name"] == "ops-mail" && n["kind"] == "email" && n["host"] == "127.0.0.1")),
        "{listed}"
    );
    assert!(!listed.to_string().contains("ops@example.test"), "{listed}");
    let r = admin
        .post(&format!("/api/notifiers/{mail}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let msg = sink
        .message_with("Subject: A test message from Mezzanine")
        .await;
    assert!(msg.contains("To: ops@example.test"), "{msg}");
    assert!(
        msg.contains("From: Mezzanine <mezzanine@example.test>"),
        "{msg}"
    );
    assert!(msg.contains("event: test"), "{msg}");
    assert!(msg.contains("message: a test from Mezzanine"), "{msg}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = admin
            .get(&format!("/api/notifiers/{mail}/deliveries"))
            .await
            .body;
        if log[0]["status"] == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "not marked delivered: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        sink.messages().len(),
        1,
        "only the plain one was sent: the STARTTLS one never was"
    );
    let bytes = ctl.stored_bytes();
    for secret in [PASSWORD, "ops@example.test"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} stored in the clear"
        );
    }
}
