//! The run engine without processes: a real store in a temporary directory and a scripted
//! agent (`FakeAgents`) in place of the gateway. What the engine sends (credits, acks,
//! cancels, commands) is recorded and asserted; replies come from the script.
//!
//! Real time with short bounds, not `tokio::time::pause`: sqlx's SQLite worker is an OS
//! thread, so a paused runtime waiting on it counts as idle and auto-advances the clock,
//! firing step deadlines that never expired.

use super::agents::{Agents, StepStream};
use super::*;
use crate::store::NewServer;
use mezzanine_proto::v1::{run_step, StepOutput, StepResult};
use std::collections::VecDeque;
use tokio::sync::Notify;

/// What a fake step does: send these chunks, then exit with `exit` — or, with `hang`,
/// wait for a cancel and then report one.
#[derive(Debug, Clone, Default)]
struct Script {
    lines: Vec<&'static str>,
    exit: i32,
    hang: bool,
}

impl Script {
    /// Runs until cancelled.
    fn hang() -> Script {
        Script {
            hang: true,
            ..Default::default()
        }
    }

    /// Prints `lines`, then exits with `exit`.
    fn prints(lines: &[&'static str], exit: i32) -> Script {
        Script {
            lines: lines.to_vec(),
            exit,
            hang: false,
        }
    }
}

#[derive(Debug, Default)]
struct Recorded {
    /// `(bytes, acked_seq)` of every credit.
    credits: Vec<(u64, u64)>,
    cancels: usize,
    /// Steps started, by `(run, index)`, and other commands by name.
    started: Vec<(u64, u32)>,
    commands: Vec<String>,
}

#[derive(Debug, Default)]
struct FakeAgents {
    attached: AtomicBool,
    scripts: Mutex<VecDeque<Script>>,
    seen: Arc<Mutex<Recorded>>,
    /// Wakes hanging steps when a cancel arrives.
    cancelled: Arc<Notify>,
}

impl FakeAgents {
    fn new(attached: bool, scripts: Vec<Script>) -> Arc<FakeAgents> {
        Arc::new(FakeAgents {
            attached: AtomicBool::new(attached),
            scripts: Mutex::new(scripts.into()),
            ..Default::default()
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Recorded> {
        lock(&self.seen)
    }
}

struct FakeStream {
    replies: VecDeque<reply::Body>,
    hang: bool,
    seen: Arc<Mutex<Recorded>>,
    cancelled: Arc<Notify>,
    was_cancelled: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Agents for FakeAgents {
    async fn is_attached(&self, _server_id: i64) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    async fn open(
        &self,
        _server_id: i64,
        cmd: command::Body,
    ) -> Result<Box<dyn StepStream>, CallError> {
        if !self.attached.load(Ordering::Acquire) {
            return Err(CallError::Offline);
        }
        if let command::Body::RunStep(s) = &cmd {
            lock(&self.seen).started.push((s.run_id, s.step_index));
            assert!(matches!(s.kind, Some(run_step::Kind::Shell(_))));
        }
        let script = lock(&self.scripts).pop_front().unwrap_or_default();
        let mut replies: VecDeque<reply::Body> = script
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                reply::Body::StepOutput(StepOutput {
                    stream: LogStream::Stdout as i32,
                    data: format!("{l}\n").into_bytes(),
                    seq: i as u64 + 1,
                })
            })
            .collect();
        if !script.hang {
            replies.push_back(reply::Body::StepResult(StepResult {
                exit_code: script.exit,
                timed_out: false,
                cancelled: false,
                error: String::new(),
            }));
        }
        Ok(Box::new(FakeStream {
            replies,
            hang: script.hang,
            seen: self.seen.clone(),
            cancelled: self.cancelled.clone(),
            was_cancelled: Arc::new(AtomicBool::new(false)),
        }))
    }

    async fn call(
        &self,
        _server_id: i64,
        cmd: command::Body,
        _timeout: Duration,
    ) -> Result<reply::Body, CallError> {
        let name = match cmd {
            command::Body::EndRun(e) => format!("end-run {}", e.run_id),
            other => format!("{other:?}"),
        };
        lock(&self.seen).commands.push(name);
        Ok(reply::Body::Ack(mezzanine_proto::v1::Ack {}))
    }
}

#[tonic::async_trait]
impl StepStream for FakeStream {
    async fn next(&mut self) -> Option<reply::Body> {
        if let Some(r) = self.replies.pop_front() {
            return Some(r);
        }
        if !self.hang {
            return None;
        }
        while !self.was_cancelled.load(Ordering::Acquire) {
            self.cancelled.notified().await;
        }
        self.hang = false;
        Some(reply::Body::StepResult(StepResult {
            exit_code: -1,
            timed_out: false,
            cancelled: true,
            error: String::new(),
        }))
    }

    fn cancel(&self) {
        lock(&self.seen).cancels += 1;
        self.was_cancelled.store(true, Ordering::Release);
        self.cancelled.notify_waiters();
        // Also cover a step that is not waiting yet.
        self.cancelled.notify_one();
    }

    async fn credit(&self, bytes: u64, acked_seq: u64) {
        lock(&self.seen).credits.push((bytes, acked_seq));
    }
}

struct Bench {
    engine: Deploys,
    store: Store,
    _dir: tempfile::TempDir,
    server: i64,
}

/// The engine alone: a store in a temporary directory, a fresh key, the fake agents.
async fn bench(agents: Arc<FakeAgents>) -> Bench {
    let dir = tempfile::tempdir().expect("tmp");
    let url = Store::sqlite_url(&dir.path().join("db.sqlite"));
    let store = Store::open(&url).await.expect("store");
    let engine = Deploys::new(
        store.clone(),
        Arc::new(MasterKey::from_bytes(&[7; crate::crypto::MASTER_KEY_LEN])),
        TaskTracker::new(),
        Settings {
            output_cap: 1 << 20,
            keep_runs: 100,
        },
        agents.clone(),
    );
    engine.set_agents(agents, Duration::from_millis(300));
    let server = store
        .create_server(
            &NewServer {
                name: "fake",
                host: "fake.invalid",
                port: 22,
                username: None,
                auth_type: "manual",
                tags: &[],
            },
            crate::time::now_secs(),
        )
        .await
        .expect("store")
        .expect("created")
        .id;
    Bench {
        engine,
        store,
        _dir: dir,
        server,
    }
}

impl Bench {
    /// A workflow with `steps` shell steps.
    async fn workflow(&self, name: &str, steps: usize) -> crate::store::WorkflowRow {
        let steps: Vec<Value> = (0..steps)
            .map(|i| json!({ "name": format!("s{i}"), "uses": "shell", "with": { "script": "true" } }))
            .collect();
        let id = self
            .store
            .create_workflow(name, self.server, &json!({ "steps": steps }), "admin", 0)
            .await
            .expect("store")
            .expect("created");
        self.store
            .workflow(id)
            .await
            .expect("store")
            .expect("exists")
    }

    async fn run(&self, wf: &crate::store::WorkflowRow) -> i64 {
        enqueue(&self.engine, wf, "manual", json!({}), None)
            .await
            .expect("enqueue")
            .expect("queued")
    }

    /// Waits for the run to end; its row.
    async fn ended(&self, run: i64) -> crate::store::RunRow {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.store.run(run).await.expect("store").expect("run");
            if is_terminal(&r.status) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {run} still {}",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn events(&self, run: i64) -> Vec<RunEvent> {
        self.store.run_events(run, 0, 10_000).await.expect("events")
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn lines(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == "stdout")
        .map(|e| e.text.clone())
        .collect()
}

#[tokio::test]
async fn output_is_stored_then_acknowledged_chunk_by_chunk() {
    let fake = FakeAgents::new(true, vec![Script::prints(&["one", "two", "three"], 0)]);
    let b = bench(fake.clone()).await;
    let wf = b.workflow("acks", 1).await;
    let run = b.run(&wf).await;
    let r = b.ended(run).await;
    assert_eq!(r.status, "succeeded", "{:?}", r.error);
    assert_eq!(lines(&b.events(run).await), ["one", "two", "three"]);
    let acked: Vec<u64> = fake.seen().credits.iter().map(|c| c.1).collect();
    assert_eq!(acked, [1, 2, 3]);
    let ends: Vec<RunEvent> = b
        .events(run)
        .await
        .into_iter()
        .filter(|e| e.kind == "end")
        .collect();
    assert_eq!(ends.len(), 1);
    b.wait_for("EndRun", || {
        fake.seen().commands.contains(&format!("end-run {run}"))
    })
    .await;
}

#[tokio::test]
async fn output_the_store_refuses_is_never_acknowledged() {
    let fake = FakeAgents::new(
        true,
        vec![Script {
            hang: true,
            ..Script::prints(&["fine", "poison", "after"], 0)
        }],
    );
    let b = bench(fake.clone()).await;
    b.store
        .execute_raw(
            "CREATE TRIGGER refuse BEFORE INSERT ON run_events WHEN NEW.text = 'poison'
             BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;",
        )
        .await
        .expect("trigger");
    let wf = b.workflow("unstorable", 1).await;
    let run = b.run(&wf).await;
    let r = b.ended(run).await;
    assert_eq!(r.status, "failed");
    let why = r.error.unwrap_or_default();
    assert!(
        why.contains("could not store") && why.contains("disk full"),
        "{why}"
    );
    let (acked, cancels) = {
        let seen = fake.seen();
        let acked: Vec<u64> = seen.credits.iter().map(|c| c.1).collect();
        (acked, seen.cancels)
    };
    assert_eq!(acked, [1], "only the stored chunk is acknowledged");
    assert!(cancels >= 1, "the step was stopped");
    assert_eq!(lines(&b.events(run).await), ["fine"]);
}

#[tokio::test]
async fn runs_of_a_workflow_go_one_at_a_time_in_order() {
    let fake = FakeAgents::new(true, vec![Script::hang(), Script::prints(&["second"], 0)]);
    let b = bench(fake.clone()).await;
    let wf = b.workflow("queue", 1).await;
    let first = b.run(&wf).await;
    let second = b.run(&wf).await;
    b.wait_for("the first step", || !fake.seen().started.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = b.store.run(second).await.expect("store").expect("run");
    assert_eq!(waiting.status, "queued", "the second waits for the first");
    assert_eq!(
        cancel(&b.engine, first).await.expect("cancel"),
        Cancel::Cancelling
    );
    assert_eq!(b.ended(first).await.status, "cancelled");
    assert_eq!(b.ended(second).await.status, "succeeded");
    let started: Vec<u64> = fake.seen().started.iter().map(|s| s.0).collect();
    assert_eq!(started, [first as u64, second as u64]);
}

#[tokio::test]
async fn a_queued_run_cancelled_ends_once_and_never_starts() {
    let fake = FakeAgents::new(true, vec![Script::hang()]);
    let b = bench(fake.clone()).await;
    let wf = b.workflow("skip", 1).await;
    let first = b.run(&wf).await;
    let second = b.run(&wf).await;
    b.wait_for("the first step", || !fake.seen().started.is_empty())
        .await;
    assert_eq!(
        cancel(&b.engine, second).await.expect("cancel"),
        Cancel::Queued
    );
    assert!(matches!(
        cancel(&b.engine, second).await,
        Err(CancelError::Ended { .. })
    ));
    assert!(matches!(
        cancel(&b.engine, 9999).await,
        Err(CancelError::NotFound(9999))
    ));
    cancel(&b.engine, first).await.expect("cancel");
    b.ended(first).await;
    let ends = b
        .events(second)
        .await
        .into_iter()
        .filter(|e| e.kind == "end")
        .count();
    assert_eq!(ends, 1);
    assert_eq!(
        fake.seen().started.len(),
        1,
        "the cancelled run never started"
    );
}

#[tokio::test]
async fn a_server_that_never_had_an_agent_interrupts_the_run_at_once() {
    let fake = FakeAgents::new(false, vec![]);
    let b = bench(fake.clone()).await;
    let wf = b.workflow("never", 1).await;
    let started = tokio::time::Instant::now();
    let run = b.run(&wf).await;
    let r = b.ended(run).await;
    assert_eq!(r.status, "interrupted");
    assert!(r.error.unwrap_or_default().contains("no agent yet"));
    // Not after the offline grace (300 ms here, 20 s in production).
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_step_whose_server_stays_offline_interrupts_the_run() {
    let fake = FakeAgents::new(false, vec![]);
    let b = bench(fake.clone()).await;
    b.store
        .record_cert("01", b.server, 0, i64::MAX, false)
        .await
        .expect("an enrolled server");
    let wf = b.workflow("offline", 2).await;
    let run = b.run(&wf).await;
    let r = b.ended(run).await;
    assert_eq!(r.status, "interrupted");
    assert_eq!(r.error.as_deref(), Some("server offline"));
    let steps = b.store.run_steps(run).await.expect("steps");
    assert_eq!(steps[0].status, "interrupted");
    assert_eq!(steps[1].status, "skipped");
}

#[tokio::test]
async fn a_failing_step_ends_the_run_and_skips_the_rest() {
    let fake = FakeAgents::new(true, vec![Script::prints(&["boom"], 3)]);
    let b = bench(fake.clone()).await;
    let wf = b.workflow("fails", 3).await;
    let run = b.run(&wf).await;
    let r = b.ended(run).await;
    assert_eq!(r.status, "failed");
    assert_eq!(r.error.as_deref(), Some("step \"s0\" exited with 3"));
    let steps: Vec<String> = b
        .store
        .run_steps(run)
        .await
        .expect("steps")
        .into_iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(steps, ["failed", "skipped", "skipped"]);
}

#[tokio::test]
async fn the_queue_is_bounded_and_deliveries_are_recorded_with_their_run() {
    let fake = FakeAgents::new(true, vec![Script::hang()]);
    let b = bench(fake.clone()).await;
    let wf = b.workflow("bounded", 1).await;
    let first = b.run(&wf).await;
    b.wait_for("the first step", || !fake.seen().started.is_empty())
        .await;
    let hook = |d: &'static str| enqueue(&b.engine, &wf, "webhook", json!({}), Some(d));
    assert!(hook("d-1").await.expect("queued").is_some());
    assert!(
        hook("d-1").await.expect("duplicate").is_none(),
        "a repeated delivery"
    );
    for _ in 1..MAX_QUEUED_RUNS {
        b.run(&wf).await;
    }
    assert!(matches!(
        hook("d-2").await,
        Err(EnqueueError::Full(MAX_QUEUED_RUNS))
    ));
    // Refused, so not recorded: once there is room, the same delivery queues.
    let queued = b
        .store
        .next_queued(wf.id)
        .await
        .expect("store")
        .expect("one");
    cancel(&b.engine, queued).await.expect("cancel");
    assert!(hook("d-2").await.expect("queued").is_some());
    cancel(&b.engine, first).await.expect("cancel");
}

/// Collects what a viewer receives (event sequence numbers and kinds) until the end.
async fn watch(engine: &Deploys, run: i64, after: i64) -> Vec<(i64, String)> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    follow::follow(engine, run, after, std::future::pending(), |piece| {
        if let follow::Follow::Events(batch) = piece {
            lock(&sink).extend(batch.iter().map(|e| (e.seq, e.kind.clone())));
        }
        async { true }
    })
    .await;
    let out = lock(&got).clone();
    out
}

#[tokio::test]
async fn viewers_get_every_event_once_in_order_live_or_replayed() {
    let fake = FakeAgents::new(
        true,
        vec![Script::hang(), Script::prints(&["a", "b", "c"], 0)],
    );
    let b = bench(fake.clone()).await;
    let wf = b.workflow("watched", 1).await;
    let blocker = b.run(&wf).await;
    let run = b.run(&wf).await;
    // Subscribed while the run is still queued: it sees the run from its first event.
    let live = tokio::spawn({
        let engine = b.engine.clone();
        async move { watch(&engine, run, 0).await }
    });
    b.wait_for("the first step", || !fake.seen().started.is_empty())
        .await;
    cancel(&b.engine, blocker).await.expect("cancel");
    let live = tokio::time::timeout(Duration::from_secs(20), live)
        .await
        .expect("the viewer ends with the run")
        .expect("join");
    let seqs: Vec<i64> = live.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{live:?}"
    );
    assert_eq!(live.last().map(|e| e.1.as_str()), Some("end"));
    assert_eq!(live.iter().filter(|e| e.1 == "stdout").count(), 3);
    // Replayed after the end, from a Last-Event-ID: the rest, once.
    let replay = watch(&b.engine, run, 2).await;
    assert_eq!(replay, live[2..].to_vec());
}

#[test]
fn docker_env_takes_secret_references() {
    let secrets: BTreeMap<String, String> = [("DBPASS".to_owned(), "s3cret".to_owned())]
        .into_iter()
        .collect();
    let cases = [
        ("${DBPASS}", Ok("s3cret")),
        (
            "postgres://app:${DBPASS}@db/app",
            Ok("postgres://app:s3cret@db/app"),
        ),
        ("$${DBPASS} and $5", Ok("${DBPASS} and $5")),
        ("plain", Ok("plain")),
        ("${NOPE}", Err("not a secret")),
        ("${DBPASS", Err("unclosed")),
    ];
    for (input, want) in cases {
        let got = super::with_secrets(input, &secrets);
        match want {
            Ok(w) => assert_eq!(got.as_deref(), Ok(w), "{input}"),
            Err(w) => assert!(
                got.as_ref().is_err_and(|e| e.contains(w)),
                "{input}: {got:?}"
            ),
        }
    }
}
