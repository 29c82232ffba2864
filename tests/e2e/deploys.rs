//! Deploy workflows with shell steps, run by real agents: manual and webhook triggers
//! (the seed's curl + openssl example verbatim), live events with replay and
//! Last-Event-ID, secrets masked, queueing, cancel, and runs cut by an agent or
//! controller dying.

use mezzanine_tests::{
    attached_agent, free_port, Agent, Client, Controller, ControllerProcess, Process,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// (id, event, data) of each SSE event read until `done` or the stream ends.
pub(crate) async fn sse(
    resp: &mut reqwest::Response,
    within: Duration,
    mut done: impl FnMut(&[(i64, String, Value)]) -> bool,
) -> Vec<(i64, String, Value)> {
    let deadline = Instant::now() + within;
    let mut buf = String::new();
    let mut out: Vec<(i64, String, Value)> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "events so far: {out:?}");
        let Some(chunk) = tokio::time::timeout(left, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no event in time; so far: {out:?}"))
            .expect("read")
        else {
            return out;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut ev, mut data) = (0, String::new(), String::new());
            for l in block.lines() {
                if let Some(v) = l.strip_prefix("id: ") {
                    id = v.parse().expect("id");
                } else if let Some(v) = l.strip_prefix("event: ") {
                    ev = v.to_owned();
                } else if let Some(v) = l.strip_prefix("data: ") {
                    data = v.to_owned();
                }
            }
            if !ev.is_empty() {
                out.push((id, ev, serde_json::from_str(&data).expect("json data")));
            }
        }
        if done(&out) {
            return out;
        }
    }
}

pub(crate) fn ended(ev: &[(i64, String, Value)]) -> bool {
    ev.iter().any(|(_, e, _)| e == "end")
}

pub(crate) async fn create(admin: &mut Client, name: &str, server: i64, definition: Value) -> i64 {
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": name, "server_id": server, "definition": definition }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_i64().expect("id")
}

pub(crate) async fn wait_run(c: &mut Client, run: i64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = c.get(&format!("/api/deployments/runs/{run}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let s = r.body["status"].as_str().unwrap_or_default();
        if !matches!(s, "queued" | "running") {
            return r.body;
        }
        assert!(Instant::now() < deadline, "run {run} still {s}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces the workflow's definition, runs it and waits for the run's end.
pub(crate) async fn run_with(admin: &mut Client, wf: i64, definition: Value) -> Value {
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": definition }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = trigger(admin, wf).await;
    wait_run(admin, id, Duration::from_secs(60)).await
}

pub(crate) async fn trigger(admin: &mut Client, wf: i64) -> i64 {
    let r = admin
        .post(&format!("/api/workflows/{wf}/run"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["runId"].as_i64().expect("runId")
}

/// Commits what `files` (shell, run in the work tree) writes to the bare repository
/// `/srv/app.git` in `node` (created on first use, branch `main`).
fn push_commit(fleet: &mezzanine_tests::Fleet, node: &str, files: &str, message: &str) {
    let (ok, out) = fleet.exec(
        node,
        &format!(
            "set -e; [ -d /srv/app.git ] || {{ git init -q --bare /srv/app.git; git -C /srv/app.git symbolic-ref HEAD refs/heads/main; }}; \
             rm -rf /tmp/w; git clone -q /srv/app.git /tmp/w 2>/dev/null || git init -q -b main /tmp/w; cd /tmp/w; \
             git config user.email ci@example.invalid; git config user.name ci; git checkout -q -B main; \
             {files}; git add -A; git commit -qm '{message}'; git push -q /srv/app.git main"
        ),
    );
    assert!(ok, "{out}");
}

/// A workflow with this one step is refused with a 400 naming `field`.
async fn rejected(admin: &mut Client, server: i64, step: Value, field: &str) {
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "rejected", "server_id": server, "definition": { "steps": [step] } }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(field)),
        "{field}: {}",
        r.body
    );
}

async fn run_count(admin: &mut Client, wf: i64) -> usize {
    admin.get(&format!("/api/workflows/{wf}")).await.body["runs"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_streams_stores_and_replays_every_line() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "deploy-1", 1).await;
    let wf = create(
        &mut admin,
        "hello",
        server,
        json!({
            "env": { "GREETING": "hello" },
            "steps": [
                { "name": "say", "uses": "shell", "with": { "script": "echo \"$GREETING from $MZ_TRIGGER\"; printf 'bin\\0ary\\n'; for i in 1 2 3; do echo line-$i; done; echo oops >&2" } },
                { "name": "fail", "uses": "shell", "with": { "script": "echo about to fail; exit 3" } },
                { "name": "never", "uses": "shell", "with": { "script": "echo unreachable" } },
            ],
        }),
    )
    .await;

    let r = admin
        .post(&format!("/api/workflows/{wf}/run"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let run = r.body["runId"].as_i64().expect("runId");
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    assert_eq!(resp.status(), 200);
    let live = sse(&mut resp, Duration::from_secs(20), ended).await;
    let lines: Vec<&str> = live
        .iter()
        .filter(|(_, e, _)| e == "output")
        .filter_map(|(_, _, d)| d["line"].as_str())
        .collect();
    assert_eq!(
        lines,
        [
            "hello from manual",
            // NUL is stored (on PostgreSQL too) as U+FFFD, like bytes that are not UTF-8.
            "bin\u{FFFD}ary",
            "line-1",
            "line-2",
            "line-3",
            "oops",
            "about to fail"
        ],
        "{live:?}"
    );
    assert!(live
        .iter()
        .any(|(_, e, d)| e == "output" && d["line"] == "oops" && d["stream"] == "stderr"));
    let ids: Vec<i64> = live.iter().map(|(i, _, _)| *i).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids in order: {ids:?}"
    );
    let end = &live.last().expect("end").2;
    assert_eq!(end["status"], "failed", "{end}");

    let body = wait_run(&mut admin, run, Duration::from_secs(5)).await;
    assert_eq!(body["status"], "failed");
    assert_eq!(body["trigger"], "manual");
    assert_eq!(body["trigger_detail"]["user"], "admin");
    assert!(body["duration_ms"].as_i64().is_some());
    let steps = body["steps"].as_array().expect("steps");
    assert_eq!(steps[0]["status"], "succeeded");
    assert_eq!(steps[0]["exit_code"], 0);
    assert!(steps[0]["output"]
        .as_str()
        .is_some_and(|o| o.contains("line-2\n")));
    assert_eq!(steps[1]["status"], "failed");
    assert_eq!(steps[1]["exit_code"], 3);
    assert_eq!(steps[2]["status"], "skipped");
    assert_eq!(steps[2]["output"], "");

    // A late viewer gets the same history; Last-Event-ID resumes after it.
    let mut again = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let replay = sse(&mut again, Duration::from_secs(5), ended).await;
    assert_eq!(replay, live);
    let resume_after = live[3].0;
    let resp = admin
        .raw(
            admin
                .request(
                    reqwest::Method::GET,
                    &format!("/api/deployments/runs/{run}/events"),
                )
                .header("Last-Event-ID", resume_after.to_string()),
        )
        .await;
    assert!(
        resp.body
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("id: {}\n", resume_after + 1))),
        "{}",
        resp.body
    );

    // The workflow shows its runs; validation names fields; roles hold.
    let w = admin.get(&format!("/api/workflows/{wf}")).await;
    assert_eq!(w.body["runs"][0]["id"], run);
    let bad = admin
        .post(
            "/api/workflows",
            json!({ "name": "bad", "server_id": server, "definition": { "steps": [
                { "name": "a", "uses": "shell", "with": { "script": "true" } },
                { "name": "b", "uses": "shell", "with": { "script": "" } },
            ] } }),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("definition.steps[1].with.script:")),
        "{}",
        bad.body
    );
    let bad = admin
        .post("/api/workflows", json!({ "name": "bad", "server_id": 9999, "definition": { "steps": [{ "name": "a", "uses": "shell", "with": { "script": "true" } }] } }))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let dup = admin
        .post("/api/workflows", json!({ "name": "HELLO", "server_id": server, "definition": { "steps": [{ "name": "a", "uses": "shell", "with": { "script": "true" } }] } }))
        .await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    // No field holds a NUL (PostgreSQL's text cannot): refused on every engine, in the
    // body and in the query, while the text "\u0000" is an ordinary script.
    let nul = admin
        .post("/api/workflows", json!({ "name": "n\u{0}l", "server_id": server, "definition": { "steps": [{ "name": "a", "uses": "shell", "with": { "script": "true" } }] } }))
        .await;
    assert_eq!(nul.status, 400, "{}", nul.body);
    assert!(nul.error().starts_with("body: NUL"), "{}", nul.body);
    let nul = admin.get("/api/audit?actor=a%00b").await;
    assert_eq!(nul.status, 400, "{}", nul.body);
    assert!(nul.error().starts_with("query: NUL"), "{}", nul.body);
    let nul = admin.get("/api/workflows/1%00").await;
    assert_eq!(nul.status, 400, "{}", nul.body);
    assert!(nul.error().starts_with("path: NUL"), "{}", nul.body);
    let text = admin
        .post("/api/workflows", json!({ "name": "escapes", "server_id": server, "definition": { "steps": [{ "name": "a", "uses": "shell", "with": { "script": "printf '\\u0000'" } }] } }))
        .await;
    assert_eq!(text.status, 201, "{}", text.body);
    let mut viewer = ctl.user(&mut admin, "watcher", "viewer").await;
    assert_eq!(
        viewer
            .post(&format!("/api/workflows/{wf}/run"), json!({}))
            .await
            .status,
        403
    );
    assert_eq!(
        viewer
            .get(&format!("/api/deployments/runs/{run}"))
            .await
            .status,
        200
    );
    assert_eq!(admin.get("/api/deployments/runs/424242").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_trigger_runs_and_nothing_else_does() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "deploy-2", 1).await;
    let marker = tempfile::tempdir().expect("tmp");
    let pwned = marker.path().join("pwned");
    let wf = create(
        &mut admin,
        "hook",
        server,
        json!({
            "branches": ["main"],
            "steps": [{ "name": "show", "uses": "shell", "with": { "script": "echo \"ref=$MZ_REF commit=$MZ_COMMIT repo=$MZ_REPO trigger=$MZ_TRIGGER\"" } }],
        }),
    )
    .await;
    let mut moderator = ctl.user(&mut admin, "deployer", "moderator").await;
    assert_eq!(
        moderator
            .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
            .await
            .status,
        403
    );
    let r = admin
        .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.body["url"].as_str().expect("url").to_owned();
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    assert_eq!(url, format!("{}/api/webhooks/{wf}", ctl.base));
    let shown = admin.get(&format!("/api/workflows/{wf}")).await.body;
    assert!(
        !shown.to_string().contains(&secret),
        "the secret is shown once"
    );
    assert_eq!(shown["webhook_url"], url.as_str());

    // The seed's example, verbatim, in a shell.
    let seed = |body: &str, secret: &str, extra: &str| {
        let script = format!(
            "BODY='{body}'\n\
             SIG=$(printf '%s' \"$BODY\" | openssl dgst -sha256 -hmac \"$WEBHOOK_SECRET\" | awk '{{print $2}}')\n\
             curl -sS -X POST {url} \\\n\
             -H \"Content-Type: application/json\" \\\n\
             -H \"X-Hub-Signature-256: sha256=$SIG\" {extra} \\\n\
             -d \"$BODY\" -w '\\n%{{http_code}}'"
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("WEBHOOK_SECRET", secret)
            .output()
            .expect("bash");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (
            code.trim().parse::<u16>().expect("code"),
            serde_json::from_str::<Value>(body).unwrap_or(Value::Null),
        )
    };
    let (code, body) = seed(
        r#"{"ref":"refs/heads/main","after":"abc123","repository":{"full_name":"acme/app"}}"#,
        &secret,
        "",
    );
    assert_eq!(code, 201, "{body}");
    let run = body["runId"].as_i64().expect("runId");
    let done = wait_run(&mut admin, run, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["trigger"], "webhook");
    assert_eq!(
        done["steps"][0]["output"],
        "ref=refs/heads/main commit=abc123 repo=acme/app trigger=webhook\n"
    );

    let before = run_count(&mut admin, wf).await;
    // Wrong secret, no signature, a tampered body: 401 and no run.
    let (code, body) = seed(r#"{"ref":"refs/heads/main"}"#, "not-the-secret", "");
    assert_eq!(
        (code, body["error"].clone()),
        (401, json!("invalid signature"))
    );
    let r = admin
        .raw(
            admin
                .request(reqwest::Method::POST, &url.replace(&ctl.base, ""))
                .header("content-type", "application/json")
                .body(r#"{"ref":"refs/heads/main"}"#),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = Client::new(&ctl.base)
        .post("/api/webhooks/99999", json!({}))
        .await;
    assert_eq!(
        r.status, 401,
        "an unknown workflow reveals nothing: {}",
        r.body
    );
    // A replayed delivery, a push to another branch: 200, no run.
    let (code, body) = seed(
        r#"{"ref":"refs/heads/main"}"#,
        &secret,
        "-H 'X-GitHub-Delivery: d-1'",
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = seed(
        r#"{"ref":"refs/heads/main"}"#,
        &secret,
        "-H 'X-GitHub-Delivery: d-1'",
    );
    assert_eq!(
        (code, body.clone()),
        (200, json!({ "ok": true, "duplicate": true })),
        "{body}"
    );
    let (code, body) = seed(r#"{"ref":"refs/heads/dev"}"#, &secret, "");
    assert_eq!(
        (code, body.clone()),
        (200, json!({ "ok": true, "skipped": "ref" })),
        "{body}"
    );
    assert_eq!(run_count(&mut admin, wf).await, before + 1);

    // Payload values are only environment variables: shell syntax in them stays text.
    let evil = format!("main$(touch {p}); touch {p}", p = pwned.display());
    let r = admin
        .patch(&format!("/api/workflows/{wf}"), json!({ "definition": { "steps": [{ "name": "show", "uses": "shell", "with": { "script": "echo \"ref=$MZ_REF\"" } }] } }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let payload = json!({ "ref": evil }).to_string().replace('\'', "'\\''");
    let (code, body) = seed(&payload, &secret, "");
    assert_eq!(code, 201, "{body}");
    let done = wait_run(
        &mut admin,
        body["runId"].as_i64().expect("run"),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done["steps"][0]["output"], format!("ref={evil}\n"));
    assert!(!pwned.exists(), "nothing from the payload ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_runs_queue_and_cancel() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "deploy-3", 1).await;
    let secret = "s3cr3t-value-8842";
    let wf = create(
        &mut admin,
        "masked",
        server,
        json!({
            "secrets": { "API_TOKEN": secret },
            "steps": [{ "name": "leak", "uses": "shell", "with": { "script": "echo \"token is $API_TOKEN\"; echo \"$API_TOKEN\" >&2; printf 'x%sx\\n' \"$API_TOKEN\"" } }],
        }),
    )
    .await;
    let shown = admin.get(&format!("/api/workflows/{wf}")).await.body;
    assert_eq!(shown["secrets"], json!(["API_TOKEN"]));
    assert!(!shown.to_string().contains(secret));
    let run = trigger(&mut admin, wf).await;
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let live = sse(&mut resp, Duration::from_secs(20), ended).await;
    let text = format!("{live:?}");
    assert!(!text.contains(secret), "streamed: {text}");
    assert!(
        text.contains("token is ***") && text.contains("x***x"),
        "{text}"
    );
    let done = wait_run(&mut admin, run, Duration::from_secs(5)).await;
    assert!(!done.to_string().contains(secret));
    // stdout and stderr are read separately, so only each stream's order is fixed.
    let mut got: Vec<&str> = done["steps"][0]["output"]
        .as_str()
        .expect("output")
        .lines()
        .collect();
    got.sort_unstable();
    assert_eq!(got, ["***", "token is ***", "x***x"]);

    // Queueing and cancel: a long run, a queued one behind it.
    let pidfile = tempfile::tempdir().expect("tmp");
    let pid_path = pidfile.path().join("pid");
    let slow = create(
        &mut admin,
        "slow",
        server,
        json!({ "steps": [{ "name": "wait", "uses": "shell", "with": { "script": format!("echo started; sleep 60 & echo $! > {}; wait", pid_path.display()) } }] }),
    )
    .await;
    let first = trigger(&mut admin, slow).await;
    let second = trigger(&mut admin, slow).await;
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{first}/events"))
        .await;
    sse(&mut resp, Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|(_, e, d)| e == "output" && d["line"] == "started")
    })
    .await;
    assert_eq!(
        admin
            .get(&format!("/api/deployments/runs/{second}"))
            .await
            .body["status"],
        "queued"
    );
    let r = admin
        .post(&format!("/api/deployments/runs/{second}/cancel"), json!({}))
        .await;
    assert_eq!(
        (r.status, r.body["status"].clone()),
        (200, json!("cancelled")),
        "{}",
        r.body
    );
    let t = Instant::now();
    let r = admin
        .post(&format!("/api/deployments/runs/{first}/cancel"), json!({}))
        .await;
    assert_eq!(
        (r.status, r.body["status"].clone()),
        (200, json!("cancelling")),
        "{}",
        r.body
    );
    let done = wait_run(&mut admin, first, Duration::from_secs(15)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["steps"][0]["status"], "cancelled");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "cancel took {:?}",
        t.elapsed()
    );
    let pid = std::fs::read_to_string(&pid_path)
        .expect("pid")
        .trim()
        .to_owned();
    // Gone, or a zombie waiting for whoever reaps orphans on this machine.
    let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains("State:\tZ"),
        "the step's processes ended: {state}"
    );
    let r = admin
        .post(&format!("/api/deployments/runs/{first}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        wait_run(&mut admin, second, Duration::from_secs(2)).await["status"],
        "cancelled"
    );
    let r = admin.delete(&format!("/api/workflows/{slow}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        admin
            .get(&format!("/api/deployments/runs/{first}"))
            .await
            .status,
        404
    );
}

/// A controller process the test can kill and start again, and its agents.
pub(crate) struct OwnController(ControllerProcess);

impl std::ops::Deref for OwnController {
    type Target = ControllerProcess;
    fn deref(&self) -> &ControllerProcess {
        &self.0
    }
}

impl std::ops::DerefMut for OwnController {
    fn deref_mut(&mut self) -> &mut ControllerProcess {
        &mut self.0
    }
}

impl OwnController {
    pub(crate) fn start() -> OwnController {
        OwnController(ControllerProcess::start(false, &[]))
    }

    /// Starts the controller again (after it was killed or stopped) and logs in.
    pub(crate) async fn restart(&mut self) -> Client {
        self.respawn();
        mezzanine_tests::admin_login(&self.base).await
    }

    /// Enrolls and starts an agent (`extra` flags for `run`) and waits for it online.
    pub(crate) async fn agent(
        &self,
        admin: &mut Client,
        name: &str,
        extra: &[&str],
    ) -> (i64, Agent, Process) {
        let (server, token, _) = mezzanine_tests::add_server(admin, name).await;
        let agent = Agent::new();
        let (ok, out) = agent.enroll(&token);
        assert!(ok, "{out}");
        let proc = agent.run_with(1, extra);
        mezzanine_tests::wait_server(admin, server, Duration::from_secs(10), "online", |v| {
            v["status"] == "online"
        })
        .await;
        (server, agent, proc)
    }
}

/// Opens the run's event stream and waits for its first output line.
pub(crate) async fn first_output(admin: &mut Client, run: i64) {
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    sse(&mut resp, Duration::from_secs(20), |ev| {
        ev.iter().any(|(_, e, _)| e == "output")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_end_interrupted_when_the_agent_dies_or_nobody_resumes_the_step() {
    let mut ctl = OwnController::start();
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    // A step left without a controller is stopped by the agent after 2 s.
    let grace = ["--step-grace-secs", "2"];
    let (server, agent, agent_proc) = ctl.agent(&mut admin, "deploy-4", &grace).await;
    let marks = tempfile::tempdir().expect("tmp");
    // Each run touches its own file after the sleep, which no run here may reach.
    let wf = create(
        &mut admin,
        "long",
        server,
        json!({ "steps": [{ "name": "wait", "uses": "shell", "with": { "script": format!("echo begun; sleep 7; touch {}/after-$MZ_RUN_ID", marks.path().display()) }, "timeout_s": 60 }] }),
    )
    .await;

    // The agent is killed mid-step: interrupted within the heartbeat timeout, lines kept,
    // and the step's shell dies with the agent.
    let run = trigger(&mut admin, wf).await;
    let killed_after = marks.path().join(format!("after-{run}"));
    first_output(&mut admin, run).await;
    agent_proc.signal("KILL");
    let t = Instant::now();
    let done = wait_run(&mut admin, run, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "interrupted", "{done}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert_eq!(done["steps"][0]["output"], "begun\n");
    assert_eq!(done["steps"][0]["status"], "interrupted");

    // The controller dies mid-run and stays down longer than the agent's grace: the agent
    // stops the step, so the restarted controller finds nothing to resume and says so;
    // the run queued behind it goes on.
    let agent_proc = agent.run_with(1, &grace);
    mezzanine_tests::wait_server(&mut admin, server, Duration::from_secs(10), "online", |v| {
        v["status"] == "online"
    })
    .await;
    let run = trigger(&mut admin, wf).await;
    let queued = trigger(&mut admin, wf).await;
    let after = marks.path().join(format!("after-{run}"));
    first_output(&mut admin, run).await;
    let begun = Instant::now();
    ctl.proc.signal("KILL");
    let _ = ctl.proc.wait_exit(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut admin = ctl.restart().await;
    let done = wait_run(&mut admin, run, Duration::from_secs(15)).await;
    assert_eq!(done["status"], "interrupted", "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("could not resume") && error.contains("does not hold step 0"),
        "{done}"
    );
    assert_eq!(done["steps"][0]["output"], "begun\n");
    let next = admin
        .get(&format!("/api/deployments/runs/{queued}"))
        .await
        .body;
    assert!(
        matches!(next["status"].as_str(), Some("queued" | "running")),
        "{next}"
    );
    let r = admin
        .post(&format!("/api/deployments/runs/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = wait_run(&mut admin, queued, Duration::from_secs(15)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    // The stopped step never reached its last line.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(begun.elapsed())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!after.exists(), "the abandoned step was stopped");
    assert!(
        !killed_after.exists(),
        "the killed agent's step did not carry on"
    );
    agent_proc.signal("KILL");
    ctl.proc.terminate(Duration::from_secs(10));
}

/// The controller restarts mid-step — killed, stopped gracefully, and killed for longer
/// than the step takes — while the agent keeps the step going: the new process resumes
/// the run, every line arrives exactly once (including those printed while no controller
/// was there), the step ran once and the next step runs after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumes_across_a_controller_restart() {
    let mut ctl = OwnController::start();
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let (server, _agent, agent_proc) = ctl.agent(&mut admin, "deploy-8", &[]).await;
    let marks = tempfile::tempdir().expect("tmp");
    let m = marks.path().display().to_string();
    let wf = create(
        &mut admin,
        "resumable",
        server,
        json!({ "steps": [
            { "name": "count", "uses": "shell", "with": { "script": format!("echo start >> {m}/starts; for i in $(seq 1 30); do echo tick $i; sleep 0.1; done") } },
            { "name": "next", "uses": "shell", "with": { "script": format!("echo next >> {m}/next; echo next step") } },
        ] }),
    )
    .await;
    let expected: String = (1..=30).map(|i| format!("tick {i}\n")).collect();
    // Down briefly (the step still runs when the controller is back), then down until
    // after the step has ended (the agent kept its result).
    let rounds = [("KILL", 800), ("TERM", 800), ("KILL", 4500)];
    for (round, (how, down_ms)) in rounds.into_iter().enumerate() {
        let run = trigger(&mut admin, wf).await;
        first_output(&mut admin, run).await;
        if how == "KILL" {
            ctl.proc.signal("KILL");
            let _ = ctl.proc.wait_exit(Duration::from_secs(5));
        } else {
            let status = ctl.proc.terminate(Duration::from_secs(10));
            assert!(status.success(), "graceful stop: {status}");
        }
        // The step goes on printing with no controller to receive it.
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        admin = ctl.restart().await;
        let done = wait_run(&mut admin, run, Duration::from_secs(20)).await;
        assert_eq!(done["status"], "succeeded", "after SIG{how}: {done}");
        assert_eq!(
            done["steps"][0]["output"],
            expected.as_str(),
            "after SIG{how}"
        );
        assert_eq!(done["steps"][1]["output"], "next step\n");
        let count = |f: &str| {
            std::fs::read_to_string(marks.path().join(f))
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(count("starts"), round + 1, "the step ran once per run");
        assert_eq!(count("next"), round + 1, "and so did the next one");
        // A viewer replaying the run sees each line once and the restart noted.
        let mut resp = admin
            .open(&format!("/api/deployments/runs/{run}/events"))
            .await;
        let ev = sse(&mut resp, Duration::from_secs(10), ended).await;
        let lines: Vec<&str> = ev
            .iter()
            .filter(|(_, e, d)| e == "output" && d["step"] == 0)
            .filter_map(|(_, _, d)| d["line"].as_str())
            .collect();
        assert_eq!(lines.len(), 30, "{lines:?}");
        assert!(
            ev.iter().any(|(_, e, d)| e == "note"
                && d["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("resuming"))),
            "{ev:?}"
        );
        let ids: Vec<i64> = ev.iter().map(|(id, _, _)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
    agent_proc.signal("KILL");
    ctl.proc.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_output_is_capped_with_a_marker_while_the_live_stream_has_every_line() {
    let ctl = Controller::start_with(&["--run-output-cap-bytes", "1000"]).await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "deploy-5", 1).await;
    let wf = create(
        &mut admin,
        "chatty",
        server,
        json!({ "steps": [{ "name": "talk", "uses": "shell", "with": { "script": "sleep 0.5; i=0; while [ $i -lt 200 ]; do echo \"line $i of the chatty step, padded to fifty b\"; i=$((i+1)); done" } }] }),
    )
    .await;
    let run = trigger(&mut admin, wf).await;
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let live = sse(&mut resp, Duration::from_secs(20), ended).await;
    let lines = live.iter().filter(|(_, e, _)| e == "output").count();
    assert_eq!(lines, 200, "the live stream carries every line");
    let done = wait_run(&mut admin, run, Duration::from_secs(5)).await;
    assert_eq!(done["status"], "succeeded");
    let stored = done["steps"][0]["output"].as_str().expect("output");
    assert!(stored.len() <= 1000 + 40, "stored {} bytes", stored.len());
    assert!(stored.starts_with("line 0 of"));
    assert!(
        done["dropped_lines"].as_i64().is_some_and(|d| d > 150),
        "{done}"
    );
    let notes = done["notes"].to_string();
    assert!(notes.contains("not stored"), "a visible marker: {notes}");
    assert!(live.iter().any(|(_, e, d)| e == "note"
        && d["message"]
            .as_str()
            .is_some_and(|m| m.contains("not stored"))));

    // A flood far past the cap: a viewer that keeps reading gets every line live; one
    // that stops reading does not hold the run up for long, and when it reads again it
    // is told that it fell behind, then gets the end.
    let flood = create(
        &mut admin,
        "flood",
        server,
        json!({ "steps": [{ "name": "flood", "uses": "shell", "with": { "script": format!("sleep 0.5; yes {} | head -c 33554432", "x".repeat(99)) } }] }),
    )
    .await;
    let run = trigger(&mut admin, flood).await;
    let url = format!("/api/deployments/runs/{run}/events");
    let mut stalled = admin.open(&url).await;
    let mut reader = admin.open(&url).await;
    let mut delivered = 0usize;
    let mut carry: Vec<u8> = Vec::new();
    let key = b"event: output\n";
    while let Some(chunk) = reader.chunk().await.expect("read") {
        carry.extend_from_slice(&chunk);
        delivered += memchr::memmem::find_iter(&carry, key).count();
        // Carry what could be the start of a key split across chunks, never a whole one.
        let keep = carry.len().min(key.len() - 1);
        carry.drain(..carry.len() - keep);
    }
    assert_eq!(delivered, 32 * 1024 * 1024 / 100 + 1, "every line, live");
    let done = wait_run(&mut admin, run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let mut rest = Vec::new();
    while let Some(chunk) = stalled.chunk().await.expect("read") {
        rest.extend_from_slice(&chunk);
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("this connection fell behind"),
        "told it missed output"
    );
    assert!(rest.contains("event: end\n"), "and still gets the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_pass_on_the_expected_status_and_fail_after_their_retries() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = attached_agent(&mut admin, "deploy-6", 1).await;
    let closed = free_port("127.0.0.1");
    let wf = create(
        &mut admin,
        "checks",
        server,
        json!({ "steps": [
            { "name": "up", "uses": "http.check", "with": { "url": format!("{}/healthz", ctl.base) } },
            { "name": "missing", "uses": "http.check", "with": { "url": format!("{}/nope", ctl.base), "expect_status": 404, "retries": 0 } },
            { "name": "down", "uses": "http.check", "with": { "url": format!("http://127.0.0.1:{closed}/"), "retries": 2, "interval_s": 1 } },
        ] }),
    )
    .await;
    let shown = admin.get(&format!("/api/workflows/{wf}")).await.body;
    assert_eq!(
        shown["definition"]["steps"][0]["with"]["expect_status"], 200,
        "defaults filled in: {shown}"
    );
    let t = Instant::now();
    let run = trigger(&mut admin, wf).await;
    let done = wait_run(&mut admin, run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done}");
    let steps = done["steps"].as_array().expect("steps");
    assert_eq!(steps[0]["status"], "succeeded", "{done}");
    assert!(
        steps[0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("→ 200")),
        "{done}"
    );
    assert_eq!(steps[1]["status"], "succeeded", "{done}");
    assert_eq!(steps[2]["status"], "failed");
    assert_eq!(steps[2]["exit_code"], 1);
    let out = steps[2]["output"].as_str().expect("output");
    assert_eq!(out.lines().count(), 3, "three attempts: {out}");
    assert!(out.contains("giving up after 3 attempts"), "{out}");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "attempts are interval_s apart"
    );
    rejected(
        &mut admin,
        server,
        json!({ "name": "x", "uses": "http.check", "with": { "url": "ftp://example/" } }),
        "definition.steps[0].with.url:",
    )
    .await;
    rejected(&mut admin, server, json!({ "name": "x", "uses": "http.check", "with": { "url": "http://h/", "expect_status": 42 } }), "definition.steps[0].with.expect_status:").await;
}

/// `docker.run` on a node with its own engine: deploy, replace, and roll back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_run_steps_replace_a_container_and_roll_back() {
    let fleet = mezzanine_tests::Fleet::new();
    let images = tempfile::tempdir().expect("tmp");
    let (node, ip) = fleet.docker_node("dr", 11, &[("ROOT_PASSWORD", "docker-run-pw-31")]);
    for v in ["v1", "v2"] {
        let tar = mezzanine_tests::workload_image_tar(images.path(), v);
        fleet.load_image(&node, &tar, &format!("web:{v}"));
    }
    let (_ctl, base, _data) = mezzanine_tests::fleet_controller(&fleet, false);
    let mut admin = mezzanine_tests::first_admin(&base).await;
    let server = mezzanine_tests::adopt(&mut admin, "dr", &ip, "docker-run-pw-31").await;
    let definition = |image: &str, port: u16| {
        json!({ "steps": [
            { "name": "run", "uses": "docker.run", "with": { "image": image, "name": "site", "ports": [format!("{port}:80")], "env": { "MODE": "prod" } } },
            { "name": "check", "uses": "http.check", "with": { "url": format!("http://127.0.0.1:{port}/"), "retries": 5, "interval_s": 1 } },
        ] })
    };
    let wf = create(&mut admin, "site", server, definition("web:v1", 8080)).await;
    let serves = |want: &str| {
        let (ok, out) = fleet.exec(&node, "curl -fsS http://127.0.0.1:8080/");
        assert!(ok && out.trim() == want, "serving {want:?}? {out}");
    };
    let id = trigger(&mut admin, wf).await;
    let done = wait_run(&mut admin, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        done["steps"][0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("site is running")),
        "{done}"
    );
    serves("v1");
    let (_, env) = fleet.exec(&node, "docker inspect --format '{{json .Config.Env}}' site");
    assert!(env.contains("MODE=prod"), "{env}");

    // A new version replaces the container of that name.
    let done = run_with(&mut admin, wf, definition("web:v2", 8080)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    serves("v2");
    let (_, names) = fleet.exec(&node, "docker ps -a --format '{{.Names}}' | sort");
    assert_eq!(names.trim(), "site", "only the new container is left");

    // A new container that cannot start (its port is taken): the previous one comes back.
    let (ok, out) = fleet.exec(&node, "docker run -d --name blocker -p 9090:80 web:v1");
    assert!(ok, "{out}");
    let done = run_with(&mut admin, wf, definition("web:v1", 9090)).await;
    assert_eq!(done["status"], "failed", "{done}");
    let out = done["steps"][0]["output"].as_str().expect("output");
    assert!(
        out.contains("did not start") && out.contains("previous one was started again"),
        "{out}"
    );
    serves("v2");
    rejected(&mut admin, server, json!({ "name": "x", "uses": "docker.run", "with": { "image": "web:v1", "name": "x", "ports": ["80"] } }), "definition.steps[0].with.ports[0]:").await;

    // A pull that hangs (a "registry" inside the node that accepts and never answers):
    // the step's timeout and a cancel both stop it, and the running container stays.
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static is installed by tests/run");
    let out = std::process::Command::new("docker")
        .args(["cp", busybox, &format!("{node}:/usr/local/bin/busybox")])
        .output()
        .expect("docker cp");
    assert!(out.status.success(), "{out:?}");
    // nc accepts one connection: each attempt gets a listener (and image) of its own.
    let hang = |port: u16| {
        // Started in the background; the step runs only once it listens (a probe would
        // use up its single accept, so ask the kernel instead).
        let (ok, out) = fleet.exec(
            &node,
            &format!(
                "setsid sh -c 'sleep 300 | busybox nc -l -p {port}' >/dev/null 2>&1 < /dev/null & \
                 for i in $(seq 1 100); do ss -Hltn 'sport = :{port}' | grep -q . && exit 0; sleep 0.1; done; exit 1"
            ),
        );
        assert!(ok, "the hanging listener did not start: {out}");
        json!({ "steps": [
            { "name": "run", "uses": "docker.run", "timeout_s": 3, "with": { "image": format!("127.0.0.1:{port}/hang:1"), "name": "site", "ports": ["8080:80"] } },
        ] })
    };
    let done = run_with(&mut admin, wf, hang(5999)).await;
    assert_eq!(done["status"], "timed_out", "{done}");
    assert!(
        done["steps"][0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("ran out of time while pulling")),
        "{done}"
    );
    serves("v2");
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": hang(5998) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let run = trigger(&mut admin, wf).await;
    // Cancelled while it pulls, not while it waits in the queue.
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin
        .get(&format!("/api/deployments/runs/{run}"))
        .await
        .body["steps"][0]["status"]
        != "running"
    {
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = admin
        .post(&format!("/api/deployments/runs/{run}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = wait_run(&mut admin, run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    serves("v2");

    // Secrets reach a container's environment by reference: the definition (which
    // viewers read) holds `${DBPASS}`, the container the value.
    let with_secret = |reference: &str| {
        json!({ "secrets": { "DBPASS": "s3cret-db-771" }, "steps": [
            { "name": "run", "uses": "docker.run", "with": { "image": "web:v2", "name": "site", "ports": ["8080:80"], "env": { "DB_URL": format!("postgres://app:{reference}@db/app") } } },
        ] })
    };
    let done = run_with(&mut admin, wf, with_secret("${DBPASS}")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, env) = fleet.exec(&node, "docker inspect --format '{{json .Config.Env}}' site");
    assert!(
        env.contains("DB_URL=postgres://app:s3cret-db-771@db/app"),
        "{env}"
    );
    let shown = admin
        .get(&format!("/api/workflows/{wf}"))
        .await
        .body
        .to_string();
    assert!(
        !shown.contains("s3cret-db-771") && shown.contains("${DBPASS}"),
        "{shown}"
    );
    let done = run_with(&mut admin, wf, with_secret("${NOPE}")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a secret")),
        "{done}"
    );
    serves("v2");
}

/// `git` steps over SSH with the server's deploy key against a node serving a bare repo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_steps_check_out_over_ssh_with_the_deploy_key() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, agent, _proc) = attached_agent(&mut admin, "builder", 1).await;
    let key = admin
        .get(&format!("/api/servers/{server}/deploy-key"))
        .await;
    assert_eq!(key.status, 200, "{}", key.body);
    let public = key.body["public_key"].as_str().expect("key").to_owned();
    let delivered = agent.state_dir().join("deploy_key");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !delivered.exists() {
        assert!(
            Instant::now() < deadline,
            "the deploy key reaches the agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fleet = mezzanine_tests::Fleet::new();
    let (node, ip) = fleet.node("gitsrv", 11, &[("AUTHORIZED_KEY", &public)]);
    mezzanine_tests::wait_port(&ip, 22, Duration::from_secs(30));
    let commit = |version: &str| {
        push_commit(
            &fleet,
            &node,
            &format!("echo {version} > version.txt"),
            &format!("release {version}"),
        )
    };
    commit("v1");
    let work = tempfile::tempdir().expect("tmp");
    let checkout = work.path().join("checkout");
    let wf = create(
        &mut admin,
        "from-git",
        server,
        json!({ "steps": [
            { "name": "checkout", "uses": "git", "with": { "repo": format!("root@{ip}:/srv/app.git"), "ref": "main", "path": checkout.to_str().expect("utf8") } },
            { "name": "show", "uses": "shell", "with": { "script": "cat version.txt", "workdir": checkout.to_str().expect("utf8") } },
        ] }),
    )
    .await;
    let id = trigger(&mut admin, wf).await;
    let done = wait_run(&mut admin, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        done["steps"][0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("release v1")),
        "{done}"
    );
    assert_eq!(done["steps"][1]["output"], "v1\n");
    let known =
        std::fs::read_to_string(agent.state_dir().join("known_hosts")).expect("known_hosts");
    assert!(
        known.contains(&ip),
        "the host key is pinned on first use: {known}"
    );

    commit("v2");
    let id = trigger(&mut admin, wf).await;
    let done = wait_run(&mut admin, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"][1]["output"], "v2\n");

    // Host keys given in the definition are the only ones trusted for that step.
    let keys = tempfile::tempdir().expect("tmp");
    let (_, other_pub) = mezzanine_tests::ssh_keypair(keys.path(), "impostor", "");
    let other = other_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let pinned_line = known
        .lines()
        .find(|l| l.contains(&ip))
        .expect("pinned line")
        .to_owned();
    for (name, hosts, ok) in [
        ("given-right", pinned_line.clone(), true),
        ("given-wrong", format!("{ip} {other}"), false),
    ] {
        let dest = work.path().join(name);
        let wf = create(
            &mut admin,
            name,
            server,
            json!({ "steps": [{ "name": "checkout", "uses": "git", "with": {
                "repo": format!("root@{ip}:/srv/app.git"), "ref": "main",
                "path": dest.to_str().expect("utf8"), "known_hosts": hosts,
            } }] }),
        )
        .await;
        let id = trigger(&mut admin, wf).await;
        let done = wait_run(&mut admin, id, Duration::from_secs(60)).await;
        let want = if ok { "succeeded" } else { "failed" };
        assert_eq!(done["status"], want, "{name}: {done}");
        if !ok {
            assert!(
                done["steps"][0]["output"]
                    .as_str()
                    .is_some_and(|o| o.contains("Host key verification failed")),
                "{done}"
            );
        }
    }
    rejected(
        &mut admin,
        server,
        json!({ "name": "x", "uses": "git", "with": { "repo": "git@h:r", "ref": "main", "path": "/tmp/x", "known_hosts": "just-one-field" } }),
        "definition.steps[0].with.known_hosts:",
    )
    .await;

    rejected(&mut admin, server, json!({ "name": "x", "uses": "git", "with": { "repo": "--upload-pack=touch /tmp/x", "ref": "main", "path": "/tmp/x" } }), "definition.steps[0].with.repo:").await;
}

/// The issue's headline: a push (the seed's signed curl) deploys git → docker.build →
/// docker.run → http.check on a server with its own engine; a second push replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_builds_and_replaces_the_container() {
    let fleet = mezzanine_tests::Fleet::new();
    let images = tempfile::tempdir().expect("tmp");
    let (app, app_ip) = fleet.docker_node("app", 11, &[("ROOT_PASSWORD", "app-node-pw-55")]);
    let base_tar = mezzanine_tests::workload_image_tar(images.path(), "base");
    fleet.load_image(&app, &base_tar, "web:base");
    let (_ctl, base, _data) = mezzanine_tests::fleet_controller(&fleet, false);
    let mut admin = mezzanine_tests::first_admin(&base).await;
    let server = mezzanine_tests::adopt(&mut admin, "app", &app_ip, "app-node-pw-55").await;
    let public = admin
        .get(&format!("/api/servers/{server}/deploy-key"))
        .await
        .body["public_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let (git, git_ip) = fleet.node("git", 12, &[("AUTHORIZED_KEY", &public)]);
    mezzanine_tests::wait_port(&git_ip, 22, Duration::from_secs(30));
    let release = |n: u32| {
        push_commit(
            &fleet,
            &git,
            &format!(
                "printf 'FROM web:base\\nCOPY index.html /www/index.html\\n' > Dockerfile; echo release-{n} > index.html"
            ),
            &format!("release {n}"),
        )
    };
    release(1);
    let wf = create(
        &mut admin,
        "app",
        server,
        json!({
            "branches": ["main"],
            "steps": [
                { "name": "checkout", "uses": "git", "with": { "repo": format!("root@{git_ip}:/srv/app.git"), "ref": "main", "path": "/srv/app" } },
                { "name": "build", "uses": "docker.build", "with": { "context": "/srv/app", "tag": "app:latest" } },
                { "name": "run", "uses": "docker.run", "with": { "image": "app:latest", "name": "app", "ports": ["8080:80"] } },
                { "name": "check", "uses": "http.check", "with": { "url": "http://127.0.0.1:8080/", "retries": 10, "interval_s": 1 } },
            ],
        }),
    )
    .await;
    let r = admin
        .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
        .await;
    let url = r.body["url"].as_str().expect("url").to_owned();
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let push = |after: &str| {
        let script = format!(
            "BODY='{{\"ref\":\"refs/heads/main\",\"after\":\"{after}\"}}'\n\
             SIG=$(printf '%s' \"$BODY\" | openssl dgst -sha256 -hmac \"$WEBHOOK_SECRET\" | awk '{{print $2}}')\n\
             curl -sS -X POST {url} \\\n\
             -H \"Content-Type: application/json\" \\\n\
             -H \"X-Hub-Signature-256: sha256=$SIG\" \\\n\
             -d \"$BODY\""
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("WEBHOOK_SECRET", &secret)
            .output()
            .expect("bash");
        let v: Value = serde_json::from_slice(&out.stdout).expect("json answer");
        v["runId"].as_i64().unwrap_or_else(|| panic!("no run: {v}"))
    };
    let serves = |want: &str| {
        let (ok, out) = fleet.exec(&app, "curl -fsS http://127.0.0.1:8080/");
        assert!(ok && out.trim() == want, "serving {want:?}? {out}");
    };

    let run = push("1111111111111111111111111111111111111111");
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    let events = sse(&mut resp, Duration::from_secs(120), ended).await;
    let end = &events.last().expect("end").2;
    assert_eq!(end["status"], "succeeded", "{events:?}");
    let finished: Vec<String> = events
        .iter()
        .filter(|(_, e, d)| e == "step" && d["status"] == "succeeded")
        .map(|(_, _, d)| d["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        finished,
        ["checkout", "build", "run", "check"],
        "{events:?}"
    );
    let text: Vec<&str> = events
        .iter()
        .filter(|(_, e, _)| e == "output")
        .filter_map(|(_, _, d)| d["line"].as_str())
        .collect();
    let all = text.join("\n");
    for want in [
        "checked out",
        "release 1",
        "COPY index.html",
        "app is running",
        "→ 200",
    ] {
        assert!(all.contains(want), "{want:?} in the live output:\n{all}");
    }
    serves("release-1");

    release(2);
    let run = push("2222222222222222222222222222222222222222");
    let done = wait_run(&mut admin, run, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["trigger_detail"]["commit"],
        "2222222222222222222222222222222222222222"
    );
    serves("release-2");
    let (_, names) = fleet.exec(&app, "docker ps -a --format '{{.Names}}'");
    assert_eq!(names.trim(), "app", "the old container is gone");
}

/// An agent that goes silent mid-step (frozen with SIGSTOP: the controller sees what a cut
/// network shows it — an open connection and no heartbeats) ends the run `interrupted`
/// within the heartbeat timeout; when it wakes, the step is not carried on or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_interrupts_the_run_within_the_heartbeat_timeout() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, proc) = attached_agent(&mut admin, "deploy-7", 1).await;
    let marks = tempfile::tempdir().expect("tmp");
    let after = marks.path().join("after-sleep");
    let wf = create(
        &mut admin,
        "frozen",
        server,
        json!({ "steps": [{ "name": "wait", "uses": "shell", "with": { "script": format!("echo begun; sleep 12; touch {}", after.display()) } }] }),
    )
    .await;
    let run = trigger(&mut admin, wf).await;
    let mut resp = admin
        .open(&format!("/api/deployments/runs/{run}/events"))
        .await;
    sse(&mut resp, Duration::from_secs(20), |ev| {
        ev.iter().any(|(_, e, _)| e == "output")
    })
    .await;
    proc.signal("STOP");
    let t = Instant::now();
    let done = wait_run(&mut admin, run, Duration::from_secs(15)).await;
    let took = t.elapsed();
    proc.signal("CONT");
    assert_eq!(done["status"], "interrupted", "{done}");
    assert_eq!(done["steps"][0]["output"], "begun\n");
    assert!(took < Duration::from_secs(8), "interrupted after {took:?}");
    // Awake again, the agent reconnects; the step it was running was cancelled with its
    // session, so the script never reaches its last line.
    mezzanine_tests::wait_server(
        &mut admin,
        server,
        Duration::from_secs(10),
        "online again",
        |v| v["status"] == "online",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(t.elapsed())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!after.exists(), "the interrupted step did not carry on");
    assert_eq!(run_count(&mut admin, wf).await, 1, "and nothing ran again");
}
