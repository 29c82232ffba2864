//! Deploy runs: one queue per workflow (one run at a time, later triggers wait in order),
//! each step carried out by the server's agent, every event of a run numbered and stored
//! (output up to a per-run cap) before it is handed to live viewers.
//!
//! A controller restart does not end a run: the agent keeps the step going (runs.rs on
//! the agent side), the new process finds the run still `running` in the store and
//! resumes the step after the last output chunk it stored; steps that never started run
//! as usual. If the agent no longer holds the step, the run is `interrupted`.

pub mod agents;
pub mod definition;
pub mod follow;
#[cfg(test)]
mod tests;

use crate::crypto::MasterKey;
use crate::gateway::CallError;
use crate::store::Store;
use crate::store::{self, RunEvent, StoreError};
use definition::{Action, Definition};
use mezzanine_proto::mask::Masker;
use mezzanine_proto::v1::{
    command, reply, HttpCheckStep, LogStream, ResumeStep, RunStep, ShellStep,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

/// Credit the agent may run ahead of the controller by, per step.
const STEP_WINDOW: u64 = mezzanine_proto::DEFAULT_WINDOW;
use mezzanine_proto::CHUNK_OVERHEAD;
/// Extra time the controller waits for a step beyond its own timeout before calling the
/// run interrupted (the agent enforces the timeout; this covers a silent agent).
const STEP_GRACE: Duration = Duration::from_secs(60);
/// How long a step waits for its server's agent to be attached before the run is
/// called interrupted.
const OFFLINE_GRACE: Duration = Duration::from_secs(20);
/// Runs of one workflow that may wait at once. Bounds what a replayed webhook body (its
/// signature has no timestamp) or a runaway script can pile up.
pub const MAX_QUEUED_RUNS: i64 = 20;

/// Batches (output chunks) queued for one viewer.
const VIEWER_BATCHES: usize = 64;
/// How long a run waits for a viewer whose queue is full before leaving it behind (it
/// then continues from the store, told what it missed).
const VIEWER_WAIT: Duration = Duration::from_secs(2);

/// One live viewer's queue, as the run sees it.
#[derive(Debug)]
struct ViewerTx {
    tx: mpsc::Sender<Arc<Vec<RunEvent>>>,
    left_behind: Arc<AtomicBool>,
}

/// A live viewer: the run's batches in order; `None` once the run ended or left this
/// viewer behind (then `left_behind()` says so).
#[derive(Debug)]
pub struct Viewer {
    rx: mpsc::Receiver<Arc<Vec<RunEvent>>>,
    left_behind: Arc<AtomicBool>,
}

impl Viewer {
    pub async fn recv(&mut self) -> Option<Arc<Vec<RunEvent>>> {
        self.rx.recv().await
    }

    pub fn left_behind(&self) -> bool {
        self.left_behind.load(Ordering::Acquire)
    }
}

/// A running run's live side: its viewers and its cancel switch.
#[derive(Debug)]
pub struct LiveRun {
    viewers: Mutex<Vec<ViewerTx>>,
    cancel: watch::Sender<bool>,
}

impl LiveRun {
    /// A new viewer, which receives every batch recorded from now on.
    pub fn subscribe(&self) -> Viewer {
        let (tx, rx) = mpsc::channel(VIEWER_BATCHES);
        let left_behind = Arc::new(AtomicBool::new(false));
        lock(&self.viewers).push(ViewerTx {
            tx,
            left_behind: left_behind.clone(),
        });
        Viewer { rx, left_behind }
    }

    /// Hands a batch to every viewer. A viewer whose queue is full is waited for (so one
    /// that keeps up on average gets every line, and the step's output waits too, through
    /// its credit), but for at most VIEWER_WAIT per batch in all: a viewer still full then
    /// is left behind and dropped from the run.
    async fn publish(&self, batch: Arc<Vec<RunEvent>>) {
        let viewers: Vec<(mpsc::Sender<_>, Arc<AtomicBool>)> = lock(&self.viewers)
            .iter()
            .map(|v| (v.tx.clone(), v.left_behind.clone()))
            .collect();
        if viewers.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + VIEWER_WAIT;
        let mut dropped = false;
        for (tx, left_behind) in viewers {
            let sent = match tx.try_send(batch.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(b)) => {
                    match tokio::time::timeout_at(deadline, tx.send(b)).await {
                        Ok(r) => r.is_ok(),
                        Err(_) => {
                            left_behind.store(true, Ordering::Release);
                            false
                        }
                    }
                }
            };
            dropped |= !sent;
        }
        if dropped {
            lock(&self.viewers)
                .retain(|v| !v.tx.is_closed() && !v.left_behind.load(Ordering::Acquire));
        }
    }
}

/// What the engine takes from the controller's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Output bytes stored per run (live viewers still get the rest).
    pub output_cap: i64,
    /// Ended runs kept per workflow.
    pub keep_runs: i64,
}

/// The deploy engine: the only owner of run lifecycles. It holds exactly the handles it
/// works with (the store, the key that opens workflow secrets, the task tracker the
/// controller drains on shutdown, the way to agents), so it can be built and tested
/// without an HTTP server or a gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Deploys(Arc<Engine>);

impl std::ops::Deref for Deploys {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.0
    }
}

#[derive(Debug)]
pub struct Engine {
    store: Store,
    key: Arc<MasterKey>,
    tasks: TaskTracker,
    settings: Settings,
    /// How the engine reaches agents (the gateway; a fake in the engine's tests).
    agents: std::sync::RwLock<Arc<dyn agents::Agents>>,
    /// How long a step waits for its server's agent before the run is interrupted.
    offline_grace: Mutex<Duration>,
    /// Workflows whose queue is being driven, and whether a run arrived since the driver
    /// last looked.
    drivers: Mutex<HashMap<i64, bool>>,
    live: Mutex<HashMap<i64, Arc<LiveRun>>>,
    /// Runs a previous controller process left running, by workflow, to resume first.
    resume: Mutex<HashMap<i64, i64>>,
    /// Their steps that were running, `(run, step)`: an agent holding any other step is
    /// told to stop it.
    resuming: Mutex<HashSet<(i64, i64)>>,
    /// Set as the controller shuts down: runs then stay `running` for the next process.
    shutting_down: AtomicBool,
    /// Runs whose output grew on another controller: wakes their followers here.
    woken: tokio::sync::broadcast::Sender<i64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Deploys {
    pub fn new(
        store: Store,
        key: Arc<MasterKey>,
        tasks: TaskTracker,
        settings: Settings,
        agents: Arc<dyn agents::Agents>,
    ) -> Deploys {
        Deploys(Arc::new(Engine {
            store,
            key,
            tasks,
            settings,
            agents: std::sync::RwLock::new(agents),
            offline_grace: Mutex::new(OFFLINE_GRACE),
            drivers: Mutex::default(),
            live: Mutex::default(),
            resume: Mutex::default(),
            woken: tokio::sync::broadcast::channel(1024).0,
            resuming: Mutex::default(),
            shutting_down: AtomicBool::new(false),
        }))
    }
}

impl Engine {
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    fn agents(&self) -> Arc<dyn agents::Agents> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Tests: the engine against a scripted agent, with a short offline grace.
    #[cfg(test)]
    pub(crate) fn set_agents(&self, agents: Arc<dyn agents::Agents>, offline_grace: Duration) {
        *self.agents.write().unwrap_or_else(|p| p.into_inner()) = agents;
        *lock(&self.offline_grace) = offline_grace;
    }

    pub fn live(&self, run_id: i64) -> Option<Arc<LiveRun>> {
        lock(&self.live).get(&run_id).cloned()
    }

    /// The live side of a run, created when the run is queued so that viewers who arrive
    /// before it starts are subscribed from its first event.
    pub fn register(&self, run_id: i64) -> Arc<LiveRun> {
        lock(&self.live)
            .entry(run_id)
            .or_insert_with(|| {
                let (cancel, _) = watch::channel(false);
                Arc::new(LiveRun {
                    viewers: Mutex::default(),
                    cancel,
                })
            })
            .clone()
    }

    fn forget(&self, run_id: i64) {
        lock(&self.live).remove(&run_id);
    }

    /// Whether this controller will resume `step` of `run` (an agent reports it holds it).
    pub fn wants(&self, run_id: i64, step: i64) -> bool {
        lock(&self.resuming).contains(&(run_id, step))
    }

    /// From now on a step whose agent session ends is left to the next controller
    /// process rather than called interrupted.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Another controller stored output of run `run_id`: its followers here look again.
    pub fn wake(&self, run_id: i64) {
        let _ = self.woken.send(run_id);
    }

    /// Subscribes to `wake`.
    pub fn wakes(&self) -> tokio::sync::broadcast::Receiver<i64> {
        self.woken.subscribe()
    }

    /// Asks a running run to stop; false when it is not running here.
    pub(crate) fn signal_cancel(&self, run_id: i64) -> bool {
        match self.live(run_id) {
            Some(l) => {
                let _ = l.cancel.send(true);
                true
            }
            None => false,
        }
    }
}

const SECRETS_HELD: &str = "this workflow's secrets were set by an admin and its definition was last changed by a moderator: they are not released to it until an admin approves the definition (POST /api/workflows/:id/approve, or an admin's edit of it)";

/// Whether the workflow's secrets are withheld from its definition: secrets set by a
/// higher role than the definition's last author are not released to it (a moderator's
/// edit could otherwise print an admin's secrets).
pub fn secrets_held(wf: &crate::store::WorkflowRow) -> bool {
    use crate::auth::Role;
    // An unknown stored role reads as the most privileged setter / least privileged author.
    let setter = Role::parse(&wf.secrets_role).unwrap_or(Role::Admin);
    let author = Role::parse(&wf.definition_role).unwrap_or(Role::Viewer);
    wf.secrets.is_some() && setter > author
}

/// Why a run was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("the stored definition is invalid: {0}")]
    InvalidDefinition(String),
    #[error("{0} runs of this workflow are already queued; cancel some or wait for them")]
    Full(i64),
    #[error("{SECRETS_HELD}")]
    SecretsHeld,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Queues a run of `wf` on its server and makes sure the workflow's queue is worked on;
/// `Ok(None)` when `delivery` (a webhook's delivery id) was seen before. The run keeps the
/// definition it was queued with.
pub async fn enqueue(
    engine: &Deploys,
    wf: &crate::store::WorkflowRow,
    trigger: &str,
    detail: Value,
    delivery: Option<&str>,
) -> Result<Option<i64>, EnqueueError> {
    enqueue_on(engine, wf, wf.server_id, trigger, detail, delivery).await
}

/// `enqueue` on a given server (a pool runs its one workflow on each member).
pub async fn enqueue_on(
    engine: &Deploys,
    wf: &crate::store::WorkflowRow,
    server_id: i64,
    trigger: &str,
    detail: Value,
    delivery: Option<&str>,
) -> Result<Option<i64>, EnqueueError> {
    let parsed = definition::parse(&wf.definition)
        .map_err(|e| EnqueueError::InvalidDefinition(e.to_string()))?;
    if secrets_held(wf) {
        return Err(EnqueueError::SecretsHeld);
    }
    let names: Vec<String> = parsed
        .definition
        .steps
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let run = crate::store::NewRun {
        workflow_id: wf.id,
        server_id,
        trigger,
        detail: &detail,
        definition: &wf.definition,
        steps: &names,
        delivery,
    };
    let queued = engine
        .store()
        .create_run(&run, MAX_QUEUED_RUNS, crate::time::now_ms())
        .await?;
    let run_id = match queued {
        crate::store::Queued::Run(id) => id,
        crate::store::Queued::Duplicate => return Ok(None),
        crate::store::Queued::Full(n) => return Err(EnqueueError::Full(n)),
    };
    engine.register(run_id);
    kick(engine, wf.id);
    Ok(Some(run_id))
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The run had not started: it is over (`cancelled`).
    Queued,
    /// The run is running: its step is being stopped; the run ends `cancelled` shortly.
    Cancelling,
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("run {0} not found")]
    NotFound(i64),
    #[error("run {id} already ended ({status})")]
    Ended { id: i64, status: String },
    #[error("run {id} is {status}; try again")]
    Busy { id: i64, status: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

const TERMINAL: &[&str] = &[
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "interrupted",
];

/// Whether a stored run status is final.
pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// Cancels a run: a queued one at once (one conditional update, then its `end`), a
/// running one by stopping its step.
pub async fn cancel(engine: &Deploys, run_id: i64) -> Result<Cancel, CancelError> {
    let store = engine.store();
    let run = store
        .run(run_id)
        .await?
        .ok_or(CancelError::NotFound(run_id))?;
    if run.status == "queued"
        && store
            .cancel_queued_run(run_id, crate::time::now_ms())
            .await?
    {
        cancelled_while_queued(engine, run_id).await;
        return Ok(Cancel::Queued);
    }
    if engine.signal_cancel(run_id) {
        return Ok(Cancel::Cancelling);
    }
    // Driven by another living controller: it hears the cancel there.
    if let Ok(Some((driver, true))) = store
        .run_driver(run_id, crate::gateway::fleet::fresh_since())
        .await
    {
        if driver != store.controller_id() {
            store.changes().tell(crate::changes::Notice::Cancel(run_id));
            return Ok(Cancel::Cancelling);
        }
    }
    let now = store
        .run(run_id)
        .await?
        .map(|r| r.status)
        .unwrap_or_default();
    if is_terminal(&now) {
        return Err(CancelError::Ended {
            id: run_id,
            status: now,
        });
    }
    // Started between our two reads: cancel the live run.
    if engine.signal_cancel(run_id) {
        return Ok(Cancel::Cancelling);
    }
    Err(CancelError::Busy {
        id: run_id,
        status: now,
    })
}

/// Makes sure `workflow_id`'s queue is being worked on.
fn kick(engine: &Deploys, workflow_id: i64) {
    let mut drivers = lock(&engine.drivers);
    match drivers.get_mut(&workflow_id) {
        Some(kicked) => *kicked = true,
        None => {
            drivers.insert(workflow_id, false);
            engine.tasks().spawn(drive(engine.clone(), workflow_id));
        }
    }
}

/// At start (before agents can attach): runs a previous process left running are resumed
/// first, then each workflow's queue goes on.
pub async fn recover(engine: &Deploys) {
    adopt_orphans(engine, true).await;
    match engine.store().workflows_with_queued_runs().await {
        Ok(ids) => {
            for id in ids {
                kick(engine, id);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot resume queued runs"),
    }
}

/// Takes over the running runs whose driver is gone (a previous process of this
/// controller, or another controller sharing the database that stopped renewing its
/// lease) and resumes them. Each is claimed with a compare-and-set on its driver, so of
/// several controllers adopting at once, one drives each run. `mine`: this controller's
/// own too (at start, they are its previous process's).
pub async fn adopt_orphans(engine: &Deploys, mine: bool) {
    let store = engine.store();
    let runs = match store
        .orphaned_runs(crate::gateway::fleet::fresh_since(), mine)
        .await
    {
        Ok(runs) => runs,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the runs left running");
            return;
        }
    };
    for (run_id, workflow_id, previous) in runs {
        match store.take_run(run_id, previous.as_deref()).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(run_id, error = %e, "cannot take over a run");
                continue;
            }
        }
        if let Ok(steps) = store.run_steps(run_id).await {
            if let Some(s) = steps
                .iter()
                .find(|s| StepStatus::parse(&s.status) == StepStatus::Running)
            {
                lock(&engine.resuming).insert((run_id, s.idx));
            }
        }
        tracing::info!(
            run_id,
            previous_driver = previous.as_deref().unwrap_or("none"),
            "resuming a run its previous controller left running"
        );
        lock(&engine.resume).insert(workflow_id, run_id);
        engine.register(run_id);
        kick(engine, workflow_id);
    }
}

async fn drive(engine: Deploys, workflow_id: i64) {
    loop {
        if let Some(k) = lock(&engine.drivers).get_mut(&workflow_id) {
            *k = false;
        }
        loop {
            // A run taken over (at start, or from a controller that went away) first.
            let resume = lock(&engine.resume).remove(&workflow_id);
            if let Some(run_id) = resume {
                execute(&engine, run_id, true).await;
                // However it ended, this process no longer wants that run's step.
                lock(&engine.resuming).retain(|(run, _)| *run != run_id);
                continue;
            }
            let next = match engine.store().next_queued(workflow_id).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(workflow_id, error = %e, "cannot read the run queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(run_id) = next else { break };
            if execute(&engine, run_id, false).await == Executed::Busy {
                // Another controller drives this workflow's running run and goes on with
                // the queue after it.
                break;
            }
        }
        let mut drivers = lock(&engine.drivers);
        if drivers.get(&workflow_id) == Some(&true) {
            continue;
        }
        drivers.remove(&workflow_id);
        return;
    }
}

/// How `execute` left a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Executed {
    /// Driven to its end (or left for the next process at shutdown, or found cancelled).
    Done,
    /// Not started: another run of its workflow is running elsewhere.
    Busy,
}

/// Numbers, masks, stores and publishes a run's events.
struct Recorder {
    engine: Deploys,
    run_id: i64,
    seq: i64,
    cap: i64,
    stored: i64,
    dropped: i64,
    dropped_bytes: i64,
    noted_cap: bool,
    mask: Masker,
    live: Arc<LiveRun>,
    /// The last output chunk of the current step that was recorded (agent numbering).
    agent_seq: i64,
}

impl Recorder {
    fn event(&mut self, step: Option<i64>, kind: &str, text: String) -> RunEvent {
        self.seq += 1;
        RunEvent {
            seq: self.seq,
            step,
            kind: kind.to_owned(),
            text,
            at: crate::time::now_ms(),
        }
    }

    /// Stores then publishes: a viewer that subscribes and then reads the store misses
    /// nothing. Events the store refused are not published and `ack` is not recorded:
    /// the caller ends the run (and never acknowledges output that was not stored).
    async fn emit(
        &mut self,
        events: Vec<RunEvent>,
        stored: Vec<bool>,
        ack: Option<(i64, i64)>,
    ) -> Result<(), StoreError> {
        let keep: Vec<RunEvent> = events
            .iter()
            .zip(&stored)
            .filter(|(_, s)| **s)
            .map(|(e, _)| e.clone())
            .collect();
        let bytes: i64 = keep
            .iter()
            .filter(|e| e.kind == "stdout" || e.kind == "stderr")
            .map(|e| e.text.len() as i64)
            .sum();
        let dropped = stored.iter().filter(|s| !**s).count() as i64;
        if let Err(e) = self
            .engine
            .store()
            .append_events(self.run_id, &keep, bytes, dropped, ack)
            .await
        {
            tracing::error!(run_id = self.run_id, error = %e, "cannot store run events");
            return Err(e);
        }
        self.live.publish(Arc::new(events)).await;
        Ok(())
    }

    async fn note(&mut self, step: Option<i64>, kind: &str, data: Value) -> Result<(), StoreError> {
        let e = self.event(step, kind, data.to_string());
        self.emit(vec![e], vec![true], None).await
    }

    /// The run's last event. Live viewers get it even when the store refuses it, so
    /// nobody waits for a run that is over.
    async fn end(&mut self, status: RunStatus, error: Option<&str>) {
        let e = self.event(
            None,
            "end",
            json!({ "status": status.as_str(), "error": error }).to_string(),
        );
        if let Err(err) = self
            .engine
            .store()
            .append_events(self.run_id, std::slice::from_ref(&e), 0, 0, None)
            .await
        {
            tracing::error!(run_id = self.run_id, error = %err, "cannot store a run's end");
        }
        self.live.publish(Arc::new(vec![e])).await;
    }

    /// One chunk of a step's output (the agent's chunk `seq`): whole lines, masked, stored
    /// while under the cap. A chunk already recorded (sent again after a resume) is
    /// dropped.
    async fn output(
        &mut self,
        step: i64,
        stream: &str,
        data: &[u8],
        seq: u64,
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        if seq != 0 && seq <= self.agent_seq {
            return Ok(());
        }
        self.agent_seq = seq;
        // Bytes that are not UTF-8 become U+FFFD, and so does NUL: PostgreSQL's text
        // cannot hold it, and a step that prints one (binary output) must not fail its
        // run on one engine only.
        let lossy = String::from_utf8_lossy(data);
        let text = crate::validate::storable(&lossy);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let mut events = Vec::new();
        let mut stored = Vec::new();
        let mut cap_note = None;
        for line in text.split('\n') {
            let mut line = line.strip_suffix('\r').unwrap_or(line).to_owned();
            self.mask.apply(&mut line);
            let len = line.len() as i64;
            let keep = self.stored + len <= self.cap;
            if keep {
                self.stored += len;
            } else {
                self.dropped += 1;
                self.dropped_bytes += len;
                if !self.noted_cap {
                    self.noted_cap = true;
                    cap_note = Some(self.event(
                        Some(step),
                        "note",
                        json!({ "message": format!("output beyond {} bytes is not stored; live viewers still receive it", self.cap) }).to_string(),
                    ));
                }
            }
            if let Some(n) = cap_note.take() {
                events.push(n);
                stored.push(true);
            }
            events.push(self.event(Some(step), stream, line));
            stored.push(keep);
        }
        self.emit(events, stored, (seq != 0).then_some((step, seq)))
            .await
    }
}

fn trigger_env(detail: &Value, trigger: &str, run_id: i64) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("MZ_TRIGGER".into(), trigger.to_owned());
    env.insert("MZ_RUN_ID".into(), run_id.to_string());
    for (key, var) in [
        ("ref", "MZ_REF"),
        ("commit", "MZ_COMMIT"),
        ("repo", "MZ_REPO"),
    ] {
        if let Some(v) = detail.get(key).and_then(Value::as_str) {
            env.insert(var.into(), v.to_owned());
        }
    }
    env
}

/// The run's secrets, opened.
pub fn open_secrets(
    key: &MasterKey,
    workflow_id: i64,
    sealed: Option<&[u8]>,
) -> BTreeMap<String, String> {
    let Some(sealed) = sealed else {
        return BTreeMap::new();
    };
    match key
        .open(&format!("workflows.secrets:{workflow_id}"), sealed)
        .ok()
        .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(&b).ok())
    {
        Some(m) => m,
        None => {
            tracing::error!(workflow_id, "workflow secrets do not open");
            BTreeMap::new()
        }
    }
}

/// How a run ended (`queued` and `running` are the store's business until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// A step's engine, as stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Interrupted,
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::TimedOut => "timed_out",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Interrupted => "interrupted",
            StepStatus::Skipped => "skipped",
        }
    }

    /// A stored status; an unknown one reads as interrupted (it cannot be resumed).
    pub fn parse(s: &str) -> StepStatus {
        match s {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            "timed_out" => StepStatus::TimedOut,
            "cancelled" => StepStatus::Cancelled,
            "skipped" => StepStatus::Skipped,
            _ => StepStatus::Interrupted,
        }
    }

    /// Not ended yet.
    fn open(self) -> bool {
        matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

/// How one step ended.
enum StepEnd {
    Exited(i32),
    TimedOut,
    Cancelled,
    /// The run cannot go on (agent gone, server offline): the reason.
    Interrupted(String),
    /// The step could not start on the agent.
    Error(String),
    /// The controller could not store the step's output: the step was stopped (its
    /// unstored output never acknowledged) and the run fails with the reason.
    NotStored(StoreError),
    /// The controller is shutting down: the step is left to the next process.
    Detached,
}

impl StepEnd {
    /// `(step status, exit code, run status if the run ends here, the run's error)`.
    fn outcome(
        self,
        name: &str,
        timeout_s: u32,
    ) -> (StepStatus, Option<i64>, Option<RunStatus>, Option<String>) {
        match self {
            StepEnd::Exited(0) => (StepStatus::Succeeded, Some(0), None, None),
            StepEnd::Exited(code) => (
                StepStatus::Failed,
                Some(i64::from(code)),
                Some(RunStatus::Failed),
                Some(format!("step {name:?} exited with {code}")),
            ),
            StepEnd::TimedOut => (
                StepStatus::TimedOut,
                None,
                Some(RunStatus::TimedOut),
                Some(format!("step {name:?} ran longer than {timeout_s} s")),
            ),
            StepEnd::Cancelled => (
                StepStatus::Cancelled,
                None,
                Some(RunStatus::Cancelled),
                Some("cancelled".into()),
            ),
            StepEnd::Interrupted(why) => (
                StepStatus::Interrupted,
                None,
                Some(RunStatus::Interrupted),
                Some(why),
            ),
            StepEnd::Error(why) => (StepStatus::Failed, None, Some(RunStatus::Failed), Some(why)),
            StepEnd::NotStored(e) => (
                StepStatus::Failed,
                None,
                Some(RunStatus::Failed),
                Some(not_stored(&e)),
            ),
            // Handled before: the run is left as it is.
            StepEnd::Detached => (StepStatus::Running, None, None, None),
        }
    }
}

fn not_stored(e: &StoreError) -> String {
    format!("the controller could not store the run's output, so the run was stopped: {e}")
}

/// Where a run starts: its first step, or for a run resumed after a restart, the first
/// step that had not ended (and the agent's last stored output chunk if it was running).
struct Start {
    from: usize,
    resume_after: Option<i64>,
}

/// Carries out a run: a queued one from its first step, or (`resumed`) one a previous
/// controller process left running. Every way out of here but a shutdown gives the run
/// its end in the store and one `end` event for its viewers.
async fn execute(engine: &Deploys, run_id: i64, resumed: bool) -> Executed {
    let mut outcome = Executed::Done;
    execute_run(engine, run_id, resumed, &mut outcome).await;
    outcome
}

async fn execute_run(engine: &Deploys, run_id: i64, resumed: bool, outcome: &mut Executed) {
    let store = engine.store();
    let run = match store.run(run_id).await {
        Ok(Some(run)) => run,
        // Deleted meanwhile (with its workflow): nothing is left to end but the viewers.
        Ok(None) => {
            return end_without_steps(
                engine,
                run_id,
                RunStatus::Interrupted,
                "the run no longer exists",
            )
            .await
        }
        Err(e) => {
            return end_without_steps(engine, run_id, RunStatus::Failed, &not_stored(&e)).await
        }
    };
    let wf = match store.workflow(run.workflow_id).await {
        Ok(Some(wf)) => wf,
        Ok(None) => {
            return end_without_steps(
                engine,
                run_id,
                RunStatus::Interrupted,
                "the workflow no longer exists",
            )
            .await
        }
        Err(e) => {
            return end_without_steps(engine, run_id, RunStatus::Failed, &not_stored(&e)).await
        }
    };
    let def = match definition::parse(run.definition.as_ref().unwrap_or(&wf.definition)) {
        Ok(p) => p.definition,
        Err(e) => {
            let why = format!("stored definition is invalid: {e}");
            return end_without_steps(engine, run_id, RunStatus::Failed, &why).await;
        }
    };
    // Checked again here: the secrets or the definition may have changed since the run
    // was queued.
    if secrets_held(&wf) {
        return end_without_steps(engine, run_id, RunStatus::Failed, SECRETS_HELD).await;
    }
    // A run goes to the server it was queued for (pools queue one workflow for many).
    let server_id = run.server_id.unwrap_or(wf.server_id);
    let secrets = open_secrets(&engine.key, wf.id, wf.secrets.as_deref());
    let live = engine.register(run_id);
    let cancel_rx = live.cancel.subscribe();
    let start = if resumed {
        let steps = store.run_steps(run_id).await.unwrap_or_default();
        match steps
            .iter()
            .position(|s| StepStatus::parse(&s.status).open())
        {
            Some(i) if steps.len() == def.steps.len() => Start {
                from: i,
                resume_after: (StepStatus::parse(&steps[i].status) == StepStatus::Running)
                    .then_some(steps[i].agent_seq),
            },
            // Every step had ended (the restart came between the last one and the run's
            // end), or the steps no longer match the definition.
            _ => Start {
                from: def.steps.len(),
                resume_after: None,
            },
        }
    } else {
        match store.start_run(run_id, crate::time::now_ms()).await {
            Ok(store::Start::Started) => {}
            // Cancelled while queued: that path gave it its end.
            Ok(store::Start::NotQueued) => {
                engine.forget(run_id);
                return;
            }
            Ok(store::Start::Busy) => {
                engine.forget(run_id);
                *outcome = Executed::Busy;
                return;
            }
            Err(e) => {
                return end_without_steps(engine, run_id, RunStatus::Failed, &not_stored(&e)).await
            }
        }
        Start {
            from: 0,
            resume_after: None,
        }
    };
    let seq = store.last_event_seq(run_id).await.unwrap_or(0);
    let mut rec = Recorder {
        engine: engine.clone(),
        run_id,
        seq,
        cap: engine.settings.output_cap,
        stored: run.stored_bytes,
        dropped: 0,
        dropped_bytes: 0,
        noted_cap: false,
        mask: Masker::new(secrets.values().map(String::as_str)),
        live: live.clone(),
        agent_seq: 0,
    };
    let noted = if resumed {
        rec.note(
            None,
            "note",
            json!({ "message": "the controller restarted during the run; resuming it" }),
        )
        .await
    } else {
        Ok(())
    };
    let ended = match noted {
        Err(e) => Some((RunStatus::Failed, Some(not_stored(&e)))),
        Ok(()) if resumed && start.from == def.steps.len() => {
            Some(ended_before_restart(engine, run_id).await)
        }
        Ok(()) => {
            let target = Target {
                server_id,
                def: &def,
                secrets: &secrets,
            };
            run_steps(engine, &run, target, &mut rec, cancel_rx, start).await
        }
    };
    // None: the controller is shutting down and leaves the run to its next start.
    let Some((status, error)) = ended else {
        return;
    };
    if rec.dropped > 0 {
        let msg = format!(
            "{} lines ({} bytes) of output were not stored (cap {} bytes)",
            rec.dropped, rec.dropped_bytes, rec.cap
        );
        // A failure here is logged by emit; the end below still goes out.
        let _ = rec.note(None, "note", json!({ "message": msg })).await;
    }
    let now = crate::time::now_ms();
    if let Err(e) = store
        .finish_run(run_id, status.as_str(), error.as_deref(), now)
        .await
    {
        tracing::error!(run_id, error = %e, "cannot record the end of a run");
    }
    rec.end(status, error.as_deref()).await;
    end_run_on_agent(engine, server_id, run_id);
    match store.prune_runs(wf.id, engine.settings.keep_runs).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(workflow_id = wf.id, deleted = n, "old runs deleted"),
        Err(e) => tracing::warn!(workflow_id = wf.id, error = %e, "cannot prune old runs"),
    }
    engine.forget(run_id);
}

/// Tells the run's agent the run is over (it removes the run's work directory). Best
/// effort: an agent that is offline now keeps the directory.
fn end_run_on_agent(engine: &Deploys, server_id: i64, run_id: i64) {
    let agents = engine.agents();
    engine.tasks().spawn(async move {
        let body = command::Body::EndRun(mezzanine_proto::v1::EndRun {
            run_id: run_id as u64,
        });
        if let Err(e) = agents.call(server_id, body, Duration::from_secs(10)).await {
            if !matches!(e, CallError::Offline) {
                tracing::debug!(run_id, server_id, error = %e, "the agent did not confirm a run's end");
            }
        }
    });
}

/// How a resumed run whose steps had all ended (or no longer match its definition)
/// ends: as its first unsuccessful step did, else succeeded.
async fn ended_before_restart(engine: &Deploys, run_id: i64) -> (RunStatus, Option<String>) {
    let steps = engine.store().run_steps(run_id).await.unwrap_or_default();
    if steps.iter().any(|s| StepStatus::parse(&s.status).open()) {
        return (
            RunStatus::Interrupted,
            Some("the workflow's steps changed while the controller was down".into()),
        );
    }
    for s in &steps {
        let status = match StepStatus::parse(&s.status) {
            StepStatus::Succeeded | StepStatus::Skipped => continue,
            StepStatus::Failed => RunStatus::Failed,
            StepStatus::TimedOut => RunStatus::TimedOut,
            StepStatus::Cancelled => RunStatus::Cancelled,
            _ => RunStatus::Interrupted,
        };
        return (
            status,
            Some(format!("step {:?} ended {}", s.name, s.status)),
        );
    }
    (RunStatus::Succeeded, None)
}

/// Ends a run cancelled before it started: its `end` event, for anyone watching.
async fn cancelled_while_queued(engine: &Deploys, run_id: i64) {
    let end = json!({ "status": "cancelled", "error": "cancelled before it started" });
    publish_end(engine, run_id, end).await;
}

/// Ends a run that cannot start (its workflow is gone, its definition does not parse,
/// the store failed): in the store if it can, and for its viewers in any case.
async fn end_without_steps(engine: &Deploys, run_id: i64, status: RunStatus, why: &str) {
    tracing::warn!(
        run_id,
        status = status.as_str(),
        reason = why,
        "a run ended before its first step"
    );
    if let Err(e) = engine
        .store()
        .finish_run(run_id, status.as_str(), Some(why), crate::time::now_ms())
        .await
    {
        tracing::error!(run_id, error = %e, "cannot record the end of a run");
    }
    publish_end(
        engine,
        run_id,
        json!({ "status": status.as_str(), "error": why }),
    )
    .await;
}

/// Stores (if it can) and publishes a run's `end` event.
async fn publish_end(engine: &Deploys, run_id: i64, end: Value) {
    let store = engine.store();
    let seq = store.last_event_seq(run_id).await.unwrap_or(0) + 1;
    let e = RunEvent {
        seq,
        step: None,
        kind: "end".into(),
        text: end.to_string(),
        at: crate::time::now_ms(),
    };
    if let Err(err) = store
        .append_events(run_id, std::slice::from_ref(&e), 0, 0, None)
        .await
    {
        tracing::error!(run_id, error = %err, "cannot store a run's end");
    }
    if let Some(live) = engine.live(run_id) {
        live.publish(Arc::new(vec![e])).await;
    }
    engine.forget(run_id);
}

/// Where and what a run executes.
struct Target<'a> {
    server_id: i64,
    def: &'a Definition,
    secrets: &'a BTreeMap<String, String>,
}

/// Runs the definition's steps from `start`; `None` when the controller is shutting down
/// and leaves the run to its next start.
async fn run_steps(
    engine: &Deploys,
    run: &crate::store::RunRow,
    target: Target<'_>,
    rec: &mut Recorder,
    mut cancel: watch::Receiver<bool>,
    start: Start,
) -> Option<(RunStatus, Option<String>)> {
    let store = engine.store();
    let def = target.def;
    for (i, step) in def.steps.iter().enumerate().skip(start.from) {
        let idx = i as i64;
        let resume_after = start.resume_after.filter(|_| i == start.from);
        if *cancel.borrow() && resume_after.is_none() {
            return Some((RunStatus::Cancelled, Some("cancelled before step".into())));
        }
        rec.agent_seq = resume_after.unwrap_or(0);
        let cmd = match resume_after {
            Some(after) => command::Body::ResumeStep(ResumeStep {
                run_id: run.id as u64,
                step_index: i as u32,
                after_seq: after as u64,
            }),
            None => {
                let _ = store
                    .set_step(
                        run.id,
                        idx,
                        StepStatus::Running.as_str(),
                        None,
                        crate::time::now_ms(),
                    )
                    .await;
                if let Err(e) = rec
                    .note(
                        Some(idx),
                        "step",
                        json!({ "index": idx, "name": step.name, "status": StepStatus::Running.as_str() }),
                    )
                    .await
                {
                    return Some((RunStatus::Failed, Some(not_stored(&e))));
                }
                match step_command(run, def, step, i, target.secrets, &rec.mask) {
                    Ok(cmd) => cmd,
                    Err(why) => {
                        let why = format!("step {:?}: {why}", step.name);
                        let _ = store
                            .set_step(
                                run.id,
                                idx,
                                StepStatus::Failed.as_str(),
                                None,
                                crate::time::now_ms(),
                            )
                            .await;
                        let _ = rec
                            .note(
                                Some(idx),
                                "step",
                                json!({ "index": idx, "name": step.name, "status": StepStatus::Failed.as_str(), "exit_code": null }),
                            )
                            .await;
                        return Some((RunStatus::Failed, Some(why)));
                    }
                }
            }
        };
        let end = run_step(
            engine,
            target.server_id,
            cmd,
            idx,
            step.timeout_s,
            rec,
            &mut cancel,
            resume_after.is_some(),
        )
        .await;
        if resume_after.is_some() {
            lock(&engine.resuming).remove(&(run.id, idx));
        }
        if matches!(end, StepEnd::Detached) {
            return None;
        }
        let (step_status, exit, run_status, err) = end.outcome(&step.name, step.timeout_s);
        let _ = store
            .set_step(
                run.id,
                idx,
                step_status.as_str(),
                exit,
                crate::time::now_ms(),
            )
            .await;
        let noted = rec
            .note(
                Some(idx),
                "step",
                json!({ "index": idx, "name": step.name, "status": step_status.as_str(), "exit_code": exit }),
            )
            .await;
        if let Some(s) = run_status {
            return Some((s, err));
        }
        if let Err(e) = noted {
            return Some((RunStatus::Failed, Some(not_stored(&e))));
        }
    }
    Some((RunStatus::Succeeded, None))
}

/// The command that starts step `i` of `run`: its action, and its environment (the
/// workflow's, the step's, the secrets, then the trigger's values, which win).
fn step_command(
    run: &crate::store::RunRow,
    def: &Definition,
    step: &definition::Step,
    i: usize,
    secrets: &BTreeMap<String, String>,
    mask: &Masker,
) -> Result<command::Body, String> {
    let mut env: BTreeMap<String, String> = def.env.clone();
    env.extend(step.env.clone());
    env.extend(secrets.clone());
    env.extend(trigger_env(&run.trigger_detail, &run.trigger, run.id));
    let kind = match &step.action {
        Action::Shell { script, workdir } => {
            mezzanine_proto::v1::run_step::Kind::Shell(ShellStep {
                script: script.clone(),
                workdir: workdir.clone().unwrap_or_default(),
            })
        }
        Action::HttpCheck {
            url,
            expect_status,
            retries,
            interval_s,
        } => mezzanine_proto::v1::run_step::Kind::HttpCheck(HttpCheckStep {
            url: url.clone(),
            expect_status: u32::from(*expect_status),
            retries: *retries,
            interval_secs: *interval_s,
        }),
        Action::DockerBuild {
            context,
            dockerfile,
            tag,
            build_args,
        } => {
            mezzanine_proto::v1::run_step::Kind::DockerBuild(mezzanine_proto::v1::DockerBuildStep {
                context: context.clone(),
                dockerfile: dockerfile.clone(),
                tag: tag.clone(),
                build_args: build_args.clone().into_iter().collect(),
            })
        }
        Action::Git {
            repo,
            git_ref,
            path,
            known_hosts,
        } => mezzanine_proto::v1::run_step::Kind::Git(mezzanine_proto::v1::GitStep {
            repo: repo.clone(),
            git_ref: git_ref.clone(),
            path: path.clone(),
            known_hosts: known_hosts.clone().unwrap_or_default(),
        }),
        Action::DockerRun(d) => {
            mezzanine_proto::v1::run_step::Kind::DockerRun(mezzanine_proto::v1::DockerRunStep {
                image: d.image.clone(),
                name: d.name.clone(),
                ports: d
                    .ports
                    .iter()
                    .map(|p| mezzanine_proto::v1::PortPublish {
                        host_ip: p.host_ip.clone().unwrap_or_default(),
                        host_port: u32::from(p.host_port),
                        container_port: u32::from(p.container_port),
                        protocol: p.protocol.clone(),
                    })
                    .collect(),
                env: d
                    .env
                    .iter()
                    .map(|(k, v)| {
                        with_secrets(v, secrets)
                            .map(|v| (k.clone(), v))
                            .map_err(|e| format!("with.env.{k}: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
                volumes: d.volumes.clone(),
                restart: d.restart.clone(),
            })
        }
    };
    Ok(command::Body::RunStep(RunStep {
        run_id: run.id as u64,
        step_index: i as u32,
        env: env.into_iter().collect::<HashMap<_, _>>(),
        mask: mask.needles().to_vec(),
        timeout_secs: step.timeout_s,
        window: STEP_WINDOW,
        kind: Some(kind),
    }))
}

/// A `docker.run` env value with `${NAME}` replaced by the workflow secret `NAME` (so
/// definitions, which viewers read, never hold the value; output is masked as usual).
/// `$${` stands for a literal `${`. A reference to a name that is not a secret is an error.
fn with_secrets(value: &str, secrets: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "an unclosed ${ (write $${ for a literal one)".to_owned())?;
            let name = &tail[..end];
            let secret = secrets.get(name).ok_or_else(|| {
                format!("references ${{{name}}}, which is not a secret of this workflow")
            })?;
            out.push_str(secret);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Carries out one step (or, `resuming`, re-attaches to one the agent kept running while
/// the controller restarted) and records its output.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    engine: &Deploys,
    server_id: i64,
    cmd: command::Body,
    idx: i64,
    timeout_s: u32,
    rec: &mut Recorder,
    cancel: &mut watch::Receiver<bool>,
    resuming: bool,
) -> StepEnd {
    // A server that is reconnecting (after a controller restart, say) gets a moment.
    let agents = engine.agents();
    // A server that never had an agent will not get one in the next seconds: say so now
    // rather than after the offline grace.
    if !resuming && !agents.is_attached(server_id).await {
        if let Ok(false) = engine.store().is_enrolled(server_id).await {
            return StepEnd::Interrupted(
                "the server has no agent yet: install it with the server's install command".into(),
            );
        }
    }
    let wait_until = tokio::time::Instant::now() + *lock(&engine.offline_grace);
    while !agents.is_attached(server_id).await && tokio::time::Instant::now() < wait_until {
        // A step being resumed is stopped through the agent once it is back.
        if *cancel.borrow() && !resuming {
            return StepEnd::Cancelled;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if *cancel.borrow() && !resuming {
        return StepEnd::Cancelled;
    }
    let lost = |why: String| {
        if engine.is_shutting_down() {
            StepEnd::Detached
        } else if resuming {
            StepEnd::Interrupted(format!(
                "the controller restarted during step {idx} and could not resume it: {why}"
            ))
        } else {
            StepEnd::Interrupted(why)
        }
    };
    let mut stream = match agents.open(server_id, cmd).await {
        Ok(s) => s,
        Err(CallError::Offline) => return lost("server offline".into()),
        Err(e) => return lost(e.to_string()),
    };
    let limit = Duration::from_secs(u64::from(timeout_s)) + STEP_GRACE;
    let deadline = tokio::time::Instant::now() + limit;
    // Cancelled while the step waited to be resumed: stop it now.
    let mut cancelling = *cancel.borrow();
    if cancelling {
        stream.cancel();
    }
    loop {
        let body = tokio::select! {
            b = tokio::time::timeout_at(deadline, stream.next()) => b,
            r = cancel.changed(), if !cancelling => {
                if r.is_ok() && *cancel.borrow() {
                    cancelling = true;
                    stream.cancel();
                }
                continue;
            }
        };
        match body {
            Err(_) => {
                return StepEnd::Interrupted(format!(
                    "the agent did not finish step {idx} within {} s",
                    limit.as_secs()
                ))
            }
            Ok(None) => return lost("the agent disconnected during the step".into()),
            Ok(Some(reply::Body::StepOutput(o))) => {
                let name = if o.stream == LogStream::Stderr as i32 {
                    "stderr"
                } else {
                    "stdout"
                };
                // Acknowledged only once stored: the agent drops what we acknowledge.
                if let Err(e) = rec.output(idx, name, &o.data, o.seq).await {
                    stream.cancel();
                    return StepEnd::NotStored(e);
                }
                stream
                    .credit(o.data.len() as u64 + CHUNK_OVERHEAD, o.seq)
                    .await;
            }
            Ok(Some(reply::Body::StepResult(r))) => {
                return if r.cancelled {
                    StepEnd::Cancelled
                } else if r.timed_out {
                    StepEnd::TimedOut
                } else if r.exit_code < 0 && !r.error.is_empty() {
                    StepEnd::Error(crate::validate::storable(&r.error).into_owned())
                } else {
                    StepEnd::Exited(r.exit_code)
                };
            }
            Ok(Some(reply::Body::Error(e))) if resuming => {
                return lost(crate::validate::storable(&e.message).into_owned())
            }
            Ok(Some(reply::Body::Error(e))) => {
                return StepEnd::Error(crate::validate::storable(&e.message).into_owned())
            }
            Ok(Some(_)) => return StepEnd::Error("the agent sent an unexpected answer".into()),
        }
    }
}
