//! `GET /api/events`: what changed, as it changes, for the panel to refetch; run history.

use mezzanine_tests::{Client, Controller};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An open event stream, read block by block.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

/// One event: `(id, event, data)`.
type Event = (String, String, Value);

impl Stream {
    async fn open(client: &Client, path: &str, last_id: Option<&str>) -> Stream {
        let mut req = client
            .request(reqwest::Method::GET, path)
            .timeout(Duration::from_secs(3600));
        if let Some(c) = &client.cookie {
            req = req.header("cookie", format!("cp_session={c}"));
        }
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("events");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().expect("type"),
            "text/event-stream"
        );
        Stream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event, or `None` when the stream ends; panics after `within`.
    async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut ev, mut data) = (String::new(), String::new(), Value::Null);
                for l in block.lines() {
                    if let Some(v) = l.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = l.strip_prefix("event: ") {
                        ev = v.to_owned();
                    } else if let Some(v) = l.strip_prefix("data: ") {
                        data = serde_json::from_str(v).expect("json data");
                    }
                }
                if !ev.is_empty() {
                    return Some((id, ev, data));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event in time");
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {within:?}"))
                .expect("read")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads until an event satisfies `want`; returns it and those before it.
    async fn until(&mut self, what: &str, want: impl Fn(&Event) -> bool) -> (Event, Vec<Event>) {
        let mut seen = Vec::new();
        loop {
            let e = self
                .next(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("stream ended waiting for {what}; saw {seen:?}"));
            if want(&e) {
                return (e, seen);
            }
            seen.push(e);
        }
    }
}

fn change(kind: &'static str, id: i64) -> impl Fn(&Event) -> bool {
    move |(_, ev, d): &Event| ev == "change" && d["kind"] == kind && d["id"] == id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_each_role_live_and_resume_after_a_reconnect() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let mut viewer = ctl.user(&mut admin, "vic", "viewer").await;

    let mut vs = Stream::open(&viewer, "/api/events", None).await;
    let (ready, _) = vs.until("ready", |(_, e, _)| e == "ready").await;
    assert!(!ready.0.is_empty(), "ready carries an id to resume from");
    let mut admins = Stream::open(&admin, "/api/events", None).await;
    admins.until("ready", |(_, e, _)| e == "ready").await;

    // A user is an admin's business; a server everyone's.
    let r = admin
        .post(
            "/api/users",
            json!({ "username": "newbie", "password": "newbie-password-1", "role": "viewer" }),
        )
        .await;
    let user_id = r.body["user"]["id"].as_i64().expect("user id");
    let (srv, _, _) = mezzanine_tests::add_server(&mut admin, "ev-1").await;
    let (first, _) = admins.until("the user", change("user", user_id)).await;
    admins.until("the server", change("server", srv)).await;
    let (server_ev, before) = vs.until("the server", change("server", srv)).await;
    assert!(
        !before.iter().any(|(_, _, d)| d["kind"] == "user"),
        "a viewer hears of no user: {before:?}"
    );

    // A renamed server, then a reconnect from the first change: what came after is
    // replayed in order, nothing before it.
    let r = admin
        .patch(
            &format!("/api/servers/{srv}"),
            json!({ "name": "ev-renamed" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    vs.until("the rename", change("server", srv)).await;
    drop(vs);
    let mut again = Stream::open(&viewer, "/api/events", Some(&server_ev.0)).await;
    let (replayed, skipped) = again
        .until("the replayed rename", change("server", srv))
        .await;
    assert!(skipped.is_empty(), "only what followed: {skipped:?}");
    assert_ne!(replayed.0, server_ev.0);
    drop(again);
    // The admin's replay from its first change includes the server.
    drop(admins);
    let mut again = Stream::open(&admin, "/api/events", Some(&first.0)).await;
    again.until("the server again", change("server", srv)).await;
    drop(again);

    // An id from another controller boot (or garbage) means "refetch everything".
    let mut stale = Stream::open(&viewer, "/api/events", Some("1-1")).await;
    let (e, _) = stale.until("reset", |(_, e, _)| e == "reset").await;
    assert!(!e.0.is_empty());
    drop(stale);

    // Bad input is a 400 naming the parameter.
    for bad in [
        "/api/events?metrics=abc",
        "/api/events?metrics=0",
        "/api/events?nope=1",
    ] {
        let r = viewer.get(bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let ids: Vec<String> = (1..=17).map(|i| i.to_string()).collect();
    let r = viewer
        .get(&format!("/api/events?metrics={}", ids.join(",")))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().contains("at most 16"), "{}", r.body);

    // A stream ends with its session.
    let mut s = Stream::open(&viewer, "/api/events", None).await;
    s.until("ready", |(_, e, _)| e == "ready").await;
    assert_eq!(viewer.post("/api/auth/logout", json!({})).await.status, 200);
    let t = Instant::now();
    while s.next(Duration::from_secs(60)).await.is_some() {}
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_heartbeats_are_announced_and_runs_have_a_history() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (srv, _agent, _proc) = mezzanine_tests::attached_agent(&mut admin, "ev-box", 1).await;

    // Heartbeats of the servers a stream asks for, with their values.
    let mut s = Stream::open(&admin, &format!("/api/events?metrics={srv}"), None).await;
    let (m, _) = s
        .until("a heartbeat", |(_, e, d)| e == "metrics" && d["id"] == srv)
        .await;
    assert!(
        m.2["metrics"]["memory_total_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{m:?}"
    );
    let r = admin.get(&format!("/api/servers/{srv}/metrics")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let samples = r.body["samples"].as_array().expect("samples");
    assert!(!samples.is_empty(), "{}", r.body);
    assert!(samples[0]["load1"].is_number() && samples[0]["disk_total_bytes"].as_u64() > Some(0));
    assert_eq!(admin.get("/api/servers/999999/metrics").await.status, 404);

    // A run's queue, start and end each say so, naming its workflow.
    let def =
        json!({ "steps": [ { "name": "hi", "uses": "shell", "with": { "script": "echo hi" } } ] });
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "ev-wf", "server_id": srv, "definition": def }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let wf = r.body["id"].as_i64().expect("id");
    s.until("the workflow", change("workflow", wf)).await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let r = admin
            .post(&format!("/api/workflows/{wf}/run"), json!({}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        runs.push(r.body["runId"].as_i64().expect("run"));
    }
    let last = *runs.last().expect("run");
    let mut announced = 0;
    loop {
        let (e, _) = s
            .until("the run", |(_, e, d)| e == "change" && d["kind"] == "run")
            .await;
        assert_eq!(e.2["workflow_id"], wf, "{e:?}");
        announced += 1;
        if e.2["id"] == last {
            let r = admin.get(&format!("/api/deployments/runs/{last}")).await;
            if r.body["status"] == "succeeded" {
                break;
            }
        }
    }
    assert!(
        announced >= 3 * 3,
        "queued, running and ended for each: {announced}"
    );

    // History: newest first, filtered, paged, with the workflow's name.
    let h = admin.get("/api/deployments/runs?per_page=2").await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body["total"], 3);
    let items = h.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], last);
    assert_eq!(items[0]["workflow"], "ev-wf");
    assert_eq!(items[0]["server_id"], srv);
    let p2 = admin.get("/api/deployments/runs?per_page=2&page=2").await;
    assert_eq!(p2.body["items"][0]["id"], runs[0]);
    let ok = admin
        .get(&format!("/api/deployments/runs?workflow_id={wf}&status=succeeded&trigger=manual&server_id={srv}"))
        .await;
    assert_eq!(ok.body["total"], 3, "{}", ok.body);
    for q in [
        "status=failed",
        "trigger=webhook",
        "workflow_id=999999",
        "server_id=999999",
    ] {
        let r = admin.get(&format!("/api/deployments/runs?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        assert_eq!(r.body["total"], 0, "{q}: {}", r.body);
    }
    for q in [
        "status=bogus",
        "trigger=cron",
        "workflow_id=0",
        "page=0",
        "per_page=501",
        "x=1",
    ] {
        let r = admin.get(&format!("/api/deployments/runs?{q}")).await;
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.body["error"].is_string(), "{q}");
    }
}
