//! Server metrics history: an attached agent's heartbeats are kept as one-minute and
//! fifteen-minute points that `GET /api/servers/:id/metrics?range=` serves, and the
//! server page's charts switch to them.

use mezzanine_tests::browser::Browser;
use mezzanine_tests::{attached_agent, Controller};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn points(admin: &mut mezzanine_tests::Client, server: i64, range: &str) -> Value {
    let r = admin
        .get(&format!("/api/servers/{server}/metrics?range={range}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_become_history_at_two_resolutions() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "hist-1", 1).await;

    // Heartbeats are flushed every few seconds; the history follows.
    let deadline = Instant::now() + Duration::from_secs(60);
    let hour = loop {
        let body = points(&mut admin, server, "1h").await;
        if body["points"].as_array().is_some_and(|p| !p.is_empty()) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no history after a minute: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(hour["range"], "1h");
    assert_eq!(hour["step_s"], 60);
    let p = &hour["points"][0];
    assert!(p["load1"].as_f64().is_some_and(|l| l >= 0.0), "{p}");
    assert!(
        p["memory_total_bytes"].as_i64().is_some_and(|m| m > 0)
            && p["memory_used_bytes"].as_i64().is_some_and(|m| m > 0),
        "{p}"
    );
    assert!(p["disk_total_bytes"].as_i64().is_some_and(|d| d > 0), "{p}");
    // Points sit on their step's boundaries.
    let month = points(&mut admin, server, "30d").await;
    assert_eq!(month["step_s"], 900);
    assert!(
        month["points"].as_array().is_some_and(|p| !p.is_empty()),
        "{month}"
    );
    let at = month["points"][0]["at"].as_str().expect("at");
    let minute: u32 = at[14..16].parse().expect("minute");
    assert!(minute % 15 == 0 && at.ends_with(":00Z"), "{at}");
    // Without a range: the live samples, as before.
    let live = admin.get(&format!("/api/servers/{server}/metrics")).await;
    assert!(live.body["samples"].is_array(), "{}", live.body);
    // A range it does not know, or an unknown server.
    let r = admin
        .get(&format!("/api/servers/{server}/metrics?range=1y"))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("range: one of 1h"), "{}", r.body);
    let r = admin.get("/api/servers/9999/metrics?range=1h").await;
    assert_eq!(r.status, 404, "{}", r.body);

    // The server page's range picker draws the stored points.
    let b = Browser::start().await;
    b.log_in_as_admin(&ctl.base).await;
    b.open(&format!("{}/#/servers/{server}", ctl.base)).await;
    crate::panel::page(&b, "the server's page", "hist-1").await;
    b.js("const s = document.querySelector('#chart-range'); s.value = '24h'; s.dispatchEvent(new Event('change')); return 1;").await;
    // A minute's points, not the many one-second live samples drawn before.
    b.until(
        "the day's load chart",
        "(n => n >= 1 && n <= 3)(Number(document.querySelector('#chart-load').dataset.points))",
    )
    .await;
}
