//! Scheduled runs: a workflow's cron schedule queues runs with trigger `schedule`, at most
//! one waiting at a time; ticks missed while the controller was down run once, not one by
//! one; bad schedules are refused naming the field.

use crate::deploys::OwnController;
use mezzanine_tests::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn scheduled_runs(admin: &mut Client, wf: i64) -> Vec<Value> {
    let r = admin
        .get(&format!(
            "/api/deployments/runs?workflow_id={wf}&trigger=schedule&per_page=100"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until `pred` holds for the workflow's scheduled runs.
async fn wait_runs(
    admin: &mut Client,
    wf: i64,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = scheduled_runs(admin, wf).await;
        if pred(&runs) {
            return runs;
        }
        assert!(Instant::now() < deadline, "{what}: {runs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn secs(rfc3339: &Value) -> i64 {
    let s = rfc3339.as_str().expect("a time");
    // Unix seconds of an RFC 3339 UTC time, through the controller's own format.
    let parse = |r: std::ops::Range<usize>| s[r].parse::<i64>().expect("digits");
    let (y, mo, d) = (parse(0..4), parse(5..7), parse(8..10));
    let (h, mi, se) = (parse(11..13), parse(14..16), parse(17..19));
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + mi * 60 + se
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_queues_runs_and_missed_ticks_run_once() {
    let mut ctl = OwnController::start();
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let (server, _agent, mut agent_proc) = ctl.agent(&mut admin, "sched-1", &[]).await;
    let definition = json!({ "steps": [{ "name": "tick", "uses": "shell", "with": { "script": "echo tick" } }] });

    // Bad schedules are refused before anything is written, naming the field.
    for (schedule, field) in [
        (json!({ "cron": "* * *" }), "schedule.cron"),
        (json!({ "cron": "61 * * * *" }), "schedule.cron"),
        (json!({ "cron": "0 0 30 2 *" }), "schedule.cron"),
        (
            json!({ "cron": "* * * * *", "timezone": "Mars/Olympus" }),
            "schedule.timezone",
        ),
        (json!({ "cron": "* * * * *", "every": 5 }), "schedule.every"),
        (json!("hourly"), "schedule"),
    ] {
        let r = admin
            .post(
                "/api/workflows",
                json!({ "name": "bad", "server_id": server, "definition": definition, "schedule": schedule }),
            )
            .await;
        assert_eq!(r.status, 400, "{schedule}: {}", r.body);
        assert!(r.error().starts_with(field), "{schedule}: {}", r.body);
    }
    assert!(
        admin
            .get("/api/workflows")
            .await
            .body
            .as_array()
            .is_some_and(Vec::is_empty),
        "nothing was created"
    );

    // Every two seconds (six fields, seconds first) in a named zone.
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "ticker", "server_id": server, "definition": definition,
                    "schedule": { "cron": "*/2 * * * * *", "timezone": "Europe/Berlin" } }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let wf = r.body["id"].as_i64().expect("id");
    let got = admin.get(&format!("/api/workflows/{wf}")).await.body;
    assert_eq!(got["schedule"]["cron"], "*/2 * * * * *", "{got}");
    assert_eq!(got["schedule"]["timezone"], "Europe/Berlin");
    assert!(got["schedule"]["next_at"].is_string(), "{got}");
    let runs = wait_runs(&mut admin, wf, "two scheduled runs succeed", |r| {
        r.iter().filter(|x| x["status"] == "succeeded").count() >= 2
    })
    .await;
    assert!(
        runs.iter().all(|r| r["trigger"] == "schedule"
            && r["trigger_detail"]["schedule"] == "*/2 * * * * *"
            && r["trigger_detail"]["tick"].is_string()),
        "{runs:?}"
    );

    // Missed ticks: the controller is down for 8 s (four ticks); when it is back, those
    // ticks make one run, then the schedule goes on from the present.
    ctl.proc.signal("TERM");
    assert!(ctl.proc.wait_exit(Duration::from_secs(20)).success());
    let stopped_at = mezzanine_tests::unix_now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Before the process starts: every tick before this was missed while it was down.
    let restarted_at = mezzanine_tests::unix_now();
    let mut admin = ctl.restart().await;
    // Queued after the stop means queued after the restart; of those, the ones for ticks
    // before the restart are the catch-up: exactly one, whatever the ticks missed.
    let after_stop = |r: &Value| secs(&r["queued_at"]) > stopped_at;
    let runs = wait_runs(&mut admin, wf, "a run for the missed ticks", |r| {
        r.iter().any(after_stop)
    })
    .await;
    let caught_up: Vec<&Value> = runs
        .iter()
        .filter(|r| after_stop(r) && secs(&r["trigger_detail"]["tick"]) < restarted_at)
        .collect();
    assert_eq!(caught_up.len(), 1, "the missed ticks ran once: {runs:?}");

    // Removing the schedule (null) stops it; the runs already made stay.
    let r = admin
        .patch(&format!("/api/workflows/{wf}"), json!({ "schedule": null }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(admin.get(&format!("/api/workflows/{wf}")).await.body["schedule"].is_null());
    // A tick already claimed may still be queueing: let it settle, then none may follow.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = scheduled_runs(&mut admin, wf).await.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(scheduled_runs(&mut admin, wf).await.len(), settled);
    let _ = agent_proc.child.kill();
}
