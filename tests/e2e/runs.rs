//! The run engine off the happy path: a store that refuses writes, runs that cannot
//! start, a graceful stop with viewers connected, webhook deliveries whose run was not
//! queued, deletes racing runs, retention, work directories and multi-line secrets.
//! Each of these was a defect found by reading the engine; each test failed before its fix.

use crate::deploys::{create, ended, first_output, sse, trigger, wait_run, OwnController};
use mezzanine_tests::{attached_agent, Controller};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Output the store refuses ends the run `failed` with the reason, the viewer gets the
/// end, and the step is stopped on the agent (its unstored output never acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_output_ends_the_run_and_stops_the_step() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "engine-1", 1).await;
    let marks = tempfile::tempdir().expect("tmp");
    let m = marks.path().display();
    let wf = create(
        &mut admin,
        "unstorable",
        server,
        json!({ "steps": [{ "name": "talk", "uses": "shell", "with": { "script": format!(
            "echo before; sleep 0.5; echo poison line; sleep 3; echo after; touch {m}/finished"
        ) } }] }),
    )
    .await;
    ctl.refuse_inserts(
        "refuse_poison",
        "run_events",
        Some("NEW.text LIKE '%poison%'"),
    )
    .await;
    let run = trigger(&mut admin, wf).await;
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let live = sse(&mut resp, Duration::from_secs(30), ended).await;
    let (_, _, end) = live.iter().find(|(_, e, _)| e == "end").expect("end event");
    assert_eq!(end["status"], "failed", "{live:?}");
    let why = end["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("could not store the run's output") && why.contains("disk full (test)"),
        "{why}"
    );
    let done = wait_run(&mut admin, run, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["steps"][0]["status"], "failed", "{done}");
    let output = done["steps"][0]["output"].as_str().unwrap_or_default();
    assert!(
        !output.contains("poison") && !output.contains("after"),
        "{output}"
    );
    // Had the step gone on, it would have finished by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !marks.path().join("finished").exists(),
        "the step was stopped on the agent"
    );
}

/// A queued run whose stored definition no longer parses ends `failed` with one `end`
/// event that a viewer already waiting receives (it used to wait forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_start_still_ends_for_its_viewers() {
    let (ctl, mut admin, (_, wf), _agent) = blocking("engine-2", "blocked").await;
    let first = trigger(&mut admin, wf).await;
    first_run_running(&mut admin, first).await;
    let second = trigger(&mut admin, wf).await;
    ctl.sql(&format!(
        "UPDATE runs SET definition = '{{\"steps\": 5}}' WHERE id = {second}"
    ))
    .await;
    let mut viewer = admin
        .open(&format!("/api/deployments/runs/{second}/events"))
        .await;
    let r = admin
        .post(&format!("/api/deployments/runs/{first}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let live = sse(&mut viewer, Duration::from_secs(30), ended).await;
    let ends: Vec<&Value> = live
        .iter()
        .filter(|(_, e, _)| e == "end")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(ends.len(), 1, "{live:?}");
    assert_eq!(ends[0]["status"], "failed");
    assert!(
        ends[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("stored definition is invalid")),
        "{live:?}"
    );
    let done = wait_run(&mut admin, second, Duration::from_secs(5)).await;
    assert_eq!(done["status"], "failed", "{done}");
}

/// A controller with an attached agent and a workflow whose one step sleeps 30 s:
/// `(controller, admin, (server, workflow), agent)`.
async fn blocking(
    agent: &str,
    workflow: &str,
) -> (
    Controller,
    mezzanine_tests::Client,
    (i64, i64),
    (mezzanine_tests::Agent, mezzanine_tests::Process),
) {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, a, proc) = attached_agent(&mut admin, agent, 1).await;
    let wf = create(
        &mut admin,
        workflow,
        server,
        json!({ "steps": [{ "name": "wait", "uses": "shell", "with": { "script": "sleep 30" } }] }),
    )
    .await;
    (ctl, admin, (server, wf), (a, proc))
}

async fn first_run_running(admin: &mut mezzanine_tests::Client, run: i64) {
    mezzanine_tests::eventually(Duration::from_secs(20), "the run starts", || {
        let mut c = admin.clone();
        async move {
            let r = c.get(&format!("/api/deployments/runs/{run}")).await;
            (r.body["status"] == "running").then_some(())
        }
    })
    .await;
}

/// SIGTERM with a live run viewer connected: the controller exits promptly and cleanly
/// (the viewer's stream ends), and the run carries on after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_does_not_wait_for_run_viewers() {
    let mut ctl = OwnController::start();
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let (server, _agent, agent_proc) = ctl.agent(&mut admin, "engine-3", &[]).await;
    let wf = create(
        &mut admin,
        "watched",
        server,
        json!({ "steps": [{ "name": "tick", "uses": "shell", "with": { "script": "for i in $(seq 1 40); do echo tick $i; sleep 0.1; done" } }] }),
    )
    .await;
    let run = trigger(&mut admin, wf).await;
    first_output(&mut admin, run).await;
    let mut viewer = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let mut logs = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let started = Instant::now();
    let status = ctl.proc.terminate(Duration::from_secs(20));
    let took = started.elapsed();
    assert!(status.success(), "graceful stop: {status}");
    // The drain deadline is 5 s; a viewer holding the stop would take 20 s.
    assert!(took < Duration::from_secs(12), "stop took {took:?}");
    for v in [&mut viewer, &mut logs] {
        let ev = sse(v, Duration::from_secs(5), |_| false).await;
        assert!(
            !ended(&ev),
            "the run did not end; its viewers were let go: {ev:?}"
        );
    }
    let mut admin = ctl.restart().await;
    let done = wait_run(&mut admin, run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    agent_proc.signal("KILL");
    ctl.proc.terminate(Duration::from_secs(10));
}

pub(crate) fn signature(secret: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A webhook whose run could not be queued is not remembered as delivered: the
/// provider's retry of the same delivery queues the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_webhook_delivery_can_be_retried() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "engine-4", 1).await;
    let wf = create(
        &mut admin,
        "retried",
        server,
        json!({ "steps": [{ "name": "hi", "uses": "shell", "with": { "script": "echo hi" } }] }),
    )
    .await;
    let r = admin
        .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
        .await;
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let body = r#"{"ref":"refs/heads/main"}"#;
    let deliver = |admin: &mut mezzanine_tests::Client| {
        let req = admin
            .request(reqwest::Method::POST, &format!("/api/webhooks/{wf}"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature(&secret, body))
            .header("x-github-delivery", "delivery-0001")
            .body(body);
        let mut c = admin.clone();
        async move { c.raw(req).await }
    };
    ctl.refuse_inserts("refuse_runs", "runs", None).await;
    let failed = deliver(&mut admin).await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert!(failed.body["error"].is_string(), "{}", failed.body);
    ctl.allow_inserts("refuse_runs", "runs").await;
    let retried = deliver(&mut admin).await;
    assert_eq!(
        retried.status, 201,
        "the retry queues the run: {}",
        retried.body
    );
    let run = retried.body["runId"].as_i64().expect("runId");
    assert_eq!(
        wait_run(&mut admin, run, Duration::from_secs(20)).await["status"],
        "succeeded"
    );
    let again = deliver(&mut admin).await;
    assert_eq!(
        (again.status, again.body["duplicate"].clone()),
        (200, json!(true))
    );
}

/// Deleting what a run needs is refused with a 409 that says what is in the way, and
/// nothing is deleted; once out of the way, the deletes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_refuse_to_take_workflows_and_runs_with_them() {
    let (_ctl, mut admin, (server, wf), _agent) = blocking("engine-5", "busy-site").await;
    let run = trigger(&mut admin, wf).await;
    first_run_running(&mut admin, run).await;
    let r = admin.delete(&format!("/api/servers/{server}")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("busy-site"), "{}", r.body);
    let r = admin.delete(&format!("/api/workflows/{wf}")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("queued or running"), "{}", r.body);
    assert_eq!(
        admin.get(&format!("/api/servers/{server}")).await.status,
        200
    );
    let r = admin
        .post(&format!("/api/deployments/runs/{run}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = wait_run(&mut admin, run, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(
        admin.delete(&format!("/api/workflows/{wf}")).await.status,
        200
    );
    assert_eq!(
        admin.delete(&format!("/api/workflows/{wf}")).await.status,
        404
    );
    // Ids are never reused: the next workflow does not inherit the deleted one's id (nor
    // what an agent kept under it).
    let again = create(
        &mut admin,
        "busy-site",
        server,
        json!({ "steps": [{ "name": "hi", "uses": "shell", "with": { "script": "true" } }] }),
    )
    .await;
    assert!(again > wf, "{again} after {wf}");
    assert_eq!(
        admin
            .delete(&format!("/api/workflows/{again}"))
            .await
            .status,
        200
    );
    assert_eq!(
        admin.delete(&format!("/api/servers/{server}")).await.status,
        200
    );
}

/// Finished runs beyond `--keep-runs` go when a run ends; audit records past
/// `--keep-audit-days` go at the sweep (at start, then every ten minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_runs_and_audit_records_are_pruned() {
    let ctl = Controller::start_with(&["--keep-runs", "2"]).await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "engine-6", 1).await;
    let wf = create(
        &mut admin,
        "chatty",
        server,
        json!({ "steps": [{ "name": "hi", "uses": "shell", "with": { "script": "echo hi" } }] }),
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        let run = trigger(&mut admin, wf).await;
        wait_run(&mut admin, run, Duration::from_secs(20)).await;
        runs.push(run);
    }
    let listed: Vec<i64> = admin.get(&format!("/api/workflows/{wf}")).await.body["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(listed, vec![runs[3], runs[2]]);
    for old in &runs[..2] {
        let r = admin.get(&format!("/api/deployments/runs/{old}")).await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
    let audit_total = |b: &Value| b["total"].as_i64().expect("total");
    let before = audit_total(&admin.get("/api/audit").await.body);
    assert!(before > 5, "{before}");
    drop(_proc);
    let dir = ctl.stop().await;
    let ctl = Controller::start_in(dir, &["--keep-audit-days", "0"]).await;
    let admin = mezzanine_tests::admin_login(&ctl.base).await;
    let after = mezzanine_tests::eventually(Duration::from_secs(10), "the sweep", || {
        let mut c = admin.clone();
        async move {
            let n = c.get("/api/audit").await.body["total"].as_i64()?;
            (n <= 2).then_some(n)
        }
    })
    .await;
    assert!(after < before, "{after} < {before}");
}

/// A run's default work directory is removed when the run ends; a workdir the step
/// named is the user's and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_work_directory_goes_when_the_run_ends() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, agent, _proc) = attached_agent(&mut admin, "engine-7", 1).await;
    let own = tempfile::tempdir().expect("tmp");
    let wf = create(
        &mut admin,
        "scratch",
        server,
        json!({ "steps": [
            { "name": "default", "uses": "shell", "with": { "script": "echo data > file; pwd" } },
            { "name": "named", "uses": "shell", "with": { "script": "echo data > kept", "workdir": own.path().display().to_string() } },
        ] }),
    )
    .await;
    let run = trigger(&mut admin, wf).await;
    let done = wait_run(&mut admin, run, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let workdir =
        std::path::PathBuf::from(done["steps"][0]["output"].as_str().expect("output").trim());
    assert!(
        workdir.starts_with(agent.state_dir()),
        "{}",
        workdir.display()
    );
    mezzanine_tests::eventually(Duration::from_secs(10), "the work dir goes", || {
        let gone = !workdir.exists();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(own.path().join("kept").exists());
}

/// Every line of a multi-line secret is masked, in the live stream and in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_secrets_are_masked_line_by_line() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "engine-8", 1).await;
    let key = "-----BEGIN TEST KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldY\nWVphYmNkZWZnaGlqa2xtbm9w\n-----END TEST KEY-----";
    let wf = create(
        &mut admin,
        "pem",
        server,
        json!({
            "secrets": { "KEY": key },
            "steps": [{ "name": "leak", "uses": "shell", "with": { "script": "printf '%s\\n' \"$KEY\"; echo \"inline $(printf '%s' \"$KEY\" | sed -n 2p) end\"" } }],
        }),
    )
    .await;
    let run = trigger(&mut admin, wf).await;
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let live = format!("{:?}", sse(&mut resp, Duration::from_secs(20), ended).await);
    let done = wait_run(&mut admin, run, Duration::from_secs(5)).await;
    let stored = done.to_string();
    for line in key.lines() {
        assert!(!live.contains(line), "live stream leaks {line:?}: {live}");
        assert!(!stored.contains(line), "store leaks {line:?}: {stored}");
    }
    assert_eq!(
        done["steps"][0]["output"],
        "***\n***\n***\n***\ninline *** end\n"
    );
}

/// At most 20 runs of a workflow wait at once: a replayed webhook body or a runaway
/// script cannot pile up an unbounded queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_queue_is_bounded() {
    let (_ctl, mut admin, (_, wf), _agent) = blocking("engine-9", "queued").await;
    let first = trigger(&mut admin, wf).await;
    first_run_running(&mut admin, first).await;
    for _ in 0..20 {
        trigger(&mut admin, wf).await;
    }
    let r = admin
        .post(&format!("/api/workflows/{wf}/run"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("20 runs"), "{}", r.body);
    let r = admin
        .post(&format!("/api/deployments/runs/{first}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Readers of a run's detail that do not read cost the controller a chunk each, not a copy
/// of the run's output each (it used to build the whole output, then its JSON, per request:
/// 30 such readers of a 12 MiB run held ~1 GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_a_run_do_not_multiply_its_output_in_memory() {
    let mut ctl = OwnController::start();
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let (server, _agent, agent_proc) = ctl.agent(&mut admin, "engine-9", &[]).await;
    // 12 MiB of output: 96 K lines of 127 characters and a newline.
    let wf = create(
        &mut admin,
        "loud",
        server,
        json!({ "steps": [
            { "name": "quiet", "uses": "shell", "with": { "script": "echo one line" } },
            { "name": "loud", "uses": "shell", "with": { "script": "yes \"$(printf '%0127d' 7)\" | head -n 98304" } },
        ] }),
    )
    .await;
    let run = trigger(&mut admin, wf).await;
    let done = wait_run(&mut admin, run, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{}", done["error"]);
    let steps = done["steps"].as_array().expect("steps");
    assert_eq!(steps[0]["output"], "one line\n");
    let loud = steps[1]["output"].as_str().expect("output");
    assert_eq!(loud.len(), 98304 * 128, "the whole output comes back");
    assert!(loud.lines().all(|l| l.len() == 127 && l.ends_with('7')));
    let before = mezzanine_tests::memory_mib(ctl.proc.pid(), "VmRSS");
    let cookie = admin.cookie.clone().expect("session");
    let addr = ctl.base.trim_start_matches("http://").to_owned();
    let mut readers = Vec::new();
    for _ in 0..30 {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let req = format!(
            "GET /api/deployments/runs/{run} HTTP/1.1\r\nHost: {addr}\r\nCookie: cp_session={cookie}\r\n\r\n"
        );
        tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
            .await
            .expect("send");
        readers.push(s);
    }
    // Let every request get as far as it can into its unread socket.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let grown = mezzanine_tests::memory_mib(ctl.proc.pid(), "VmRSS") - before;
    eprintln!("controller grew {grown:.1} MiB with 30 unread run details");
    assert!(
        grown < 80.0,
        "30 unread answers grew the controller by {grown:.0} MiB"
    );
    // The controller still serves everyone else.
    assert_eq!(admin.get("/api/auth/state").await.status, 200);
    drop(readers);
    agent_proc.signal("KILL");
    ctl.proc.terminate(Duration::from_secs(10));
}

/// A moderator cannot read an admin's secrets by editing the script: secrets an admin set
/// are held from a definition a moderator changed until an admin approves it (this
/// moderator's edit used to run and print the secret, base64-encoded past the mask).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_secrets_are_held_from_a_moderators_definition() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "engine-10", 1).await;
    let mut moderator = ctl.user(&mut admin, "mod", "moderator").await;
    let wf = create(
        &mut admin,
        "guarded",
        server,
        json!({ "secrets": { "DBPASS": "admin-only-value" },
                "steps": [{ "name": "use", "uses": "shell", "with": { "script": "test -n \"$DBPASS\" && echo used" } }] }),
    )
    .await;
    let run = trigger(&mut moderator, wf).await;
    let done = wait_run(&mut admin, run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let leak = json!({ "definition": { "steps": [{ "name": "leak", "uses": "shell",
        "with": { "script": "echo \"$DBPASS\" | base64" } }] } });
    let r = moderator.patch(&format!("/api/workflows/{wf}"), leak).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["secrets_held"], true, "{}", r.body);
    let r = moderator.get(&format!("/api/workflows/{wf}")).await;
    assert_eq!(r.body["secrets_held"], true, "{}", r.body);
    for c in [&mut moderator, &mut admin] {
        let r = c.post(&format!("/api/workflows/{wf}/run"), json!({})).await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(r.error().contains("approve"), "{}", r.body);
    }
    // Only an admin approves.
    let r = moderator
        .post(&format!("/api/workflows/{wf}/approve"), json!({}))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = admin
        .post(&format!("/api/workflows/{wf}/approve"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["secrets_held"], false);
    let run = trigger(&mut moderator, wf).await;
    let done = wait_run(&mut admin, run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    // A moderator who sets the secrets too runs with their own values.
    let own = json!({ "definition": { "secrets": { "DBPASS": "moderator-value" },
        "steps": [{ "name": "use", "uses": "shell", "with": { "script": "test -n \"$DBPASS\" && echo used" } }] } });
    let r = moderator.patch(&format!("/api/workflows/{wf}"), own).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["secrets_held"], false, "{}", r.body);
    let run = trigger(&mut moderator, wf).await;
    let done = wait_run(&mut admin, run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}
