//! Several controllers on one PostgreSQL database, as real processes with real agents:
//! every controller lists every server online and reaches every agent (relayed through
//! the controller holding it), a controller killed mid-run hands its agents and its run
//! to another with no line lost or repeated, a third controller starting disturbs
//! nothing, one webhook delivery sent to two controllers at once queues one run, and a
//! server deleted on one controller has its session ended by the one holding it.
//!
//! PostgreSQL only (`MEZZANINE_TEST_DATABASE=postgres`, the suite's second pass): SQLite
//! has one controller by construction, which the rest of the suite covers.

use crate::deploys::{create, sse, wait_run};
use crate::runs::signature;
use mezzanine_tests::{admin_login, wait_server, Agent, Client, ControllerProcess};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A loopback port free now (for a controller whose peers must know its agent port
/// before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Enrolls an agent with a token made by `admin`'s controller and runs it (1 s
/// heartbeat); waits until `admin` sees it online.
async fn agent_on(admin: &mut Client, name: &str) -> (i64, Agent, mezzanine_tests::Process) {
    let (id, token, _) = mezzanine_tests::add_server(admin, name).await;
    let agent = Agent::new();
    let (ok, out) = agent.enroll(&token);
    assert!(ok, "{out}");
    let proc = agent.run(1);
    wait_server(admin, id, Duration::from_secs(30), "online", |v| {
        v["status"] == "online"
    })
    .await;
    (id, agent, proc)
}

async fn all_online(c: &mut Client, ids: &[i64]) -> bool {
    let list = c.get("/api/servers").await.body;
    ids.iter().all(|id| {
        list.as_array()
            .into_iter()
            .flatten()
            .any(|s| s["id"] == *id && s["status"] == "online")
    })
}

async fn ping(c: &mut Client, id: i64) -> (u16, Value) {
    let r = c.post(&format!("/api/servers/{id}/ping"), json!({})).await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_share_the_fleet_and_take_over_from_one_that_dies() {
    if mezzanine_tests::postgres_base().is_none() {
        println!("several controllers need PostgreSQL: covered by the suite's PostgreSQL pass");
        return;
    }
    let (pa, pb) = (free_port(), free_port());
    let ep = |p: u16| format!("https://127.0.0.1:{p}");
    // Tokens from A list A first, tokens from B list B first: agents spread over both.
    let a_eps = format!("{},{}", ep(pa), ep(pb));
    let b_eps = format!("{},{}", ep(pb), ep(pa));
    let mut a = ControllerProcess::start_with_agent_port(
        &format!("127.0.0.1:{pa}"),
        false,
        &["--agent-endpoint", &a_eps],
    );
    let mut admin_a = mezzanine_tests::first_admin(&a.base).await;
    let b = ControllerProcess::start_sharing(
        &a,
        &format!("127.0.0.1:{pb}"),
        false,
        &["--agent-endpoint", &b_eps],
    );
    // The session made on A is good on B too: sessions live in the shared database.
    let mut admin_b = admin_login(&b.base).await;

    // 1. Servers attach across both; either API lists all online and reaches every agent.
    let (s1, _agent1, _p1) = agent_on(&mut admin_a, "held-by-a").await;
    let (s2, agent2, mut p2) = agent_on(&mut admin_b, "held-by-b").await;
    for c in [&mut admin_a, &mut admin_b] {
        mezzanine_tests::eventually(Duration::from_secs(20), "both online on both", || {
            let mut c = c.clone();
            async move { all_online(&mut c, &[s1, s2]).await.then_some(()) }
        })
        .await;
    }
    for (who, c) in [("A", &mut admin_a), ("B", &mut admin_b)] {
        for id in [s1, s2] {
            let (status, body) = ping(c, id).await;
            assert_eq!(status, 200, "ping {id} through {who}: {body}");
            let r = c.get(&format!("/api/servers/{id}/docker/containers")).await;
            assert_eq!(
                r.status, 200,
                "containers of {id} through {who}: {}",
                r.body
            );
            assert!(r.body.is_array(), "{}", r.body);
        }
    }
    let before = admin_b.get(&format!("/api/servers/{s2}")).await.body;

    // 2. A run driven by A on A's agent, followed on B; A is killed mid-run.
    let marks = tempfile::tempdir().expect("tmp");
    let m = marks.path().display().to_string();
    let wf = create(
        &mut admin_a,
        "across",
        s1,
        json!({ "steps": [
            { "name": "count", "uses": "shell", "with": { "script": format!(
                "echo start >> {m}/starts; for i in $(seq 1 60); do echo tick $i; sleep 0.25; done") } },
            { "name": "after", "uses": "shell", "with": { "script": format!(
                "echo after >> {m}/after; echo after step") } },
        ] }),
    )
    .await;
    let r = admin_a
        .post(&format!("/api/workflows/{wf}/run"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let run = r.body["runId"].as_i64().expect("runId");
    let mut viewer = admin_b
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    assert_eq!(viewer.status(), 200);
    // Once some output has reached the viewer on B (A driving the run), A is killed.
    let mut killed: Option<Instant> = None;
    let all = sse(&mut viewer, Duration::from_secs(120), |ev| {
        let outputs = ev.iter().filter(|(_, e, _)| e == "output").count();
        if killed.is_none() && outputs >= 5 {
            a.proc.signal("KILL");
            killed = Some(Instant::now());
        }
        ev.iter().any(|(_, e, _)| e == "end")
    })
    .await;
    let killed = killed.expect("A was killed mid-run");
    println!("the run ended {:?} after A was killed", killed.elapsed());
    let _ = a.proc.wait_exit(Duration::from_secs(5));
    // A's agent reattached to B.
    let moved = wait_server(
        &mut admin_b,
        s1,
        Duration::from_secs(30),
        "A's agent online on B",
        |v| v["status"] == "online",
    )
    .await;
    assert_ne!(moved["connected_since"], Value::Null, "{moved}");
    let events: Vec<&(i64, String, Value)> = all.iter().collect();
    let ids: Vec<i64> = events.iter().map(|(id, _, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "events in order, none twice: {ids:?}"
    );
    let ticks: Vec<String> = events
        .iter()
        .filter(|(_, e, d)| e == "output" && d["step"] == 0)
        .filter_map(|(_, _, d)| d["line"].as_str().map(str::to_owned))
        .collect();
    let expected: Vec<String> = (1..=60).map(|i| format!("tick {i}")).collect();
    assert_eq!(ticks, expected, "every line once, in order");
    let end = events
        .iter()
        .find(|(_, e, _)| e == "end")
        .map(|(_, _, d)| d.clone())
        .expect("end");
    assert_eq!(end["status"], "succeeded", "{end}");
    let done = wait_run(&mut admin_b, run, Duration::from_secs(10)).await;
    assert_eq!(done["steps"][1]["output"], "after step\n", "{done}");
    let count = |f: &str| {
        std::fs::read_to_string(marks.path().join(f))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(count("starts"), 1, "the step ran once");
    assert_eq!(count("after"), 1, "and so did the next one");

    // 3. A third controller starting disturbs neither the agents nor their sessions.
    let c = ControllerProcess::start_sharing(&b, "127.0.0.1:0", false, &[]);
    let mut admin_c = admin_login(&c.base).await;
    mezzanine_tests::eventually(Duration::from_secs(20), "C lists both online", || {
        let mut c = admin_c.clone();
        async move { all_online(&mut c, &[s1, s2]).await.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = admin_b.get(&format!("/api/servers/{s2}")).await.body;
    assert_eq!(after["status"], "online", "{after}");
    assert_eq!(
        after["connected_since"], before["connected_since"],
        "B's agent kept its session"
    );
    for id in [s1, s2] {
        let (status, body) = ping(&mut admin_c, id).await;
        assert_eq!(status, 200, "ping {id} through C: {body}");
    }

    // A run driven by C on B's agent (every step relayed, credit and all), and a run
    // driven by C cancelled through B.
    let relayed = create(
        &mut admin_c,
        "relayed",
        s1,
        json!({ "steps": [{ "name": "lines", "uses": "shell", "with": { "script":
            "for i in $(seq 1 200); do echo relayed line $i; done" } }] }),
    )
    .await;
    let r = admin_c
        .post(&format!("/api/workflows/{relayed}/run"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let run = r.body["runId"].as_i64().expect("runId");
    let done = wait_run(&mut admin_c, run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let expected: String = (1..=200).map(|i| format!("relayed line {i}\n")).collect();
    assert_eq!(done["steps"][0]["output"], expected.as_str());
    let slow = create(
        &mut admin_c,
        "cancelled-elsewhere",
        s1,
        json!({ "steps": [{ "name": "wait", "uses": "shell", "with": { "script":
            "echo waiting; sleep 60" } }] }),
    )
    .await;
    let r = admin_c
        .post(&format!("/api/workflows/{slow}/run"), json!({}))
        .await;
    let run = r.body["runId"].as_i64().expect("runId");
    mezzanine_tests::eventually(Duration::from_secs(30), "the slow run runs", || {
        let mut c = admin_b.clone();
        async move {
            let r = c.get(&format!("/api/deployments/runs/{run}")).await;
            (r.body["status"] == "running").then_some(())
        }
    })
    .await;
    let r = admin_b
        .post(&format!("/api/deployments/runs/{run}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "cancel through B: {}", r.body);
    let done = wait_run(&mut admin_b, run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "cancelled", "{done}");

    // 4. One delivery sent to B and C at once: one run.
    let r = admin_b
        .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let body = r#"{"ref":"refs/heads/main"}"#;
    let deliver = |c: &Client| {
        let req = c
            .request(reqwest::Method::POST, &format!("/api/webhooks/{wf}"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature(&secret, body))
            .header("x-github-delivery", "cluster-delivery-1")
            .body(body);
        let mut c = c.clone();
        async move { c.raw(req).await }
    };
    let (rb, rc) = tokio::join!(deliver(&admin_b), deliver(&admin_c));
    let mut statuses = [rb.status, rc.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201], "{} / {}", rb.body, rc.body);
    let queued = if rb.status == 201 { &rb } else { &rc };
    let dup = if rb.status == 200 { &rb } else { &rc };
    assert_eq!(dup.body["duplicate"], true, "{}", dup.body);
    let second = queued.body["runId"].as_i64().expect("runId");
    let done = wait_run(&mut admin_c, second, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let runs = admin_c
        .get(&format!("/api/deployments/runs?workflow_id={wf}"))
        .await
        .body;
    assert_eq!(
        runs["total"], 2,
        "the manual run and one webhook run: {runs}"
    );

    // 5. Deleting a server on C ends its session on B, the controller holding it.
    let r = admin_c.delete(&format!("/api/servers/{s2}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status = p2.wait_exit(Duration::from_secs(30));
    println!("B's agent stopped after its server was deleted on C: {status}");
    let shown = agent2.status();
    assert!(
        shown.contains("removed: this server was deleted from Mezzanine"),
        "{shown}"
    );
    drop(c);
    drop(b);
}
