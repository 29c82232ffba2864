//! Enrollment and the long-lived session: attach, hello, heartbeats, commands,
//! certificate renewal at about 70% of its life, and reconnects with jittered
//! exponential backoff.

use crate::identity::{Identity, StateDir};
use crate::runs::{reply_msg, Link, Runs, Slot, MAX_WINDOW, MIN_WINDOW};
use crate::{error_chain, now_secs, tls};
use mezzanine_proto::v1::{
    agent_message, command, controller_message, enrollment_client::EnrollmentClient, reply,
    session_client::SessionClient, Ack, AgentMessage, Command, CommandError, EnrollRequest, Hello,
    Pong, RenewRequest, RunStep,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

/// Exit status meaning "this server was removed from Mezzanine; do not restart me".
pub const EXIT_REMOVED: u8 = 78;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    State(#[from] crate::identity::StateError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot reach the controller at {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
}

/// `(endpoints, pin)` carried by a join token `MZ1.<endpoints>.<pin>.<id>.<secret>`.
pub fn parse_token(token: &str) -> Result<(Vec<String>, [u8; 32]), EnrollError> {
    let t = mezzanine_proto::token::parse(token).map_err(EnrollError::Token)?;
    for e in &t.endpoints {
        tls::split_endpoint(e).map_err(EnrollError::Token)?;
    }
    Ok((t.endpoints, t.pin))
}

/// Enrolls through the token's endpoints in turn: one that cannot be reached gives way to
/// the next; a controller that refuses the token ends it.
pub async fn enroll(state: &StateDir, token: &str) -> Result<Identity, EnrollError> {
    let (endpoints, pin) = parse_token(token)?;
    state.create()?;
    let key = state.key()?;
    let mut unreachable = Vec::new();
    for endpoint in &endpoints {
        match enroll_at(state, &key, token, endpoint, &endpoints, pin).await {
            Err(EnrollError::Connect { endpoint, detail }) => {
                tracing::warn!(%endpoint, "{detail}");
                unreachable.push(format!("{endpoint}: {detail}"));
            }
            other => return other,
        }
    }
    Err(EnrollError::Connect {
        endpoint: endpoints.join(", "),
        detail: unreachable.join("; "),
    })
}

async fn enroll_at(
    state: &StateDir,
    key: &rcgen::KeyPair,
    token: &str,
    endpoint: &str,
    endpoints: &[String],
    pin: [u8; 32],
) -> Result<Identity, EnrollError> {
    let csr = StateDir::csr(key)?;
    let verifier = Arc::new(tls::PinnedCa::new(pin));
    let config =
        tls::enroll_config(verifier.clone()).map_err(|e| EnrollError::Refused(e.to_string()))?;
    let channel = tls::connect(endpoint, config)
        .await
        .map_err(|detail| EnrollError::Connect {
            endpoint: endpoint.to_owned(),
            detail,
        })?;
    let mut client = EnrollmentClient::new(channel);
    let resp = client
        .enroll(EnrollRequest {
            token: token.trim().to_owned(),
            csr_der: csr,
            agent_version: crate::version().to_owned(),
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::PermissionDenied || s.code() == tonic::Code::InvalidArgument
            {
                EnrollError::Refused(s.message().to_owned())
            } else {
                EnrollError::Connect {
                    endpoint: endpoint.to_owned(),
                    detail: error_chain(&s),
                }
            }
        })?
        .into_inner();
    let pinned = verifier
        .found
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| EnrollError::Refused("the controller's CA was not seen".into()))?;
    if pinned.as_ref() != resp.ca_certificate_der.as_slice() {
        return Err(EnrollError::Refused(
            "the controller returned a CA other than the pinned one".into(),
        ));
    }
    let id = Identity {
        server_id: resp.server_id,
        endpoints: endpoints.to_vec(),
        cert: resp.certificate_der.into(),
        ca: pinned,
        issued_at: now_secs(),
        not_after: resp.not_after_unix,
    };
    state.save(&id)?;
    let _ = std::fs::remove_file(state.path("removed"));
    Ok(id)
}

/// How a session ended.
enum End {
    Removed(String),
    Closed,
    /// A new binary arrived and passed its checks: try it.
    Upgrade(crate::upgrade::Staged),
}

/// Why `run` returned.
#[derive(Debug)]
pub enum Stopped {
    /// The server was removed from Mezzanine (the reason); the agent must not come back.
    Removed(String),
    /// A new binary (this version) attached and took this one's place.
    Upgraded(String),
}

/// Runs until the server is removed or a new binary took over — reconnecting forever
/// otherwise.
pub async fn run(
    state: &StateDir,
    heartbeat: Duration,
    docker_socket: &str,
    step_grace: Duration,
) -> Result<Stopped, String> {
    if let Some(reason) = state.removed() {
        return Ok(Stopped::Removed(reason));
    }
    let key = state.key().map_err(|e| e.to_string())?;
    let mut id = state.load().map_err(|e| e.to_string())?;
    let ctx = Context {
        engine: Arc::new(crate::docker::Engine::new(docker_socket)),
        streams: Arc::default(),
        runs: Arc::new(Runs::new(step_grace)),
        deploy_key_path: state.path("deploy_key"),
        work_root: state.path("work"),
        running: Arc::default(),
    };
    let _reaper = AbortOnDrop(tokio::spawn(ctx.runs.clone().reap()));
    let mut failures = 0u32;
    // Why the last upgrade was taken back (the reason names the version), told in the
    // next hello.
    let mut rolled_back: Option<String> = None;
    // Which of the endpoints this attempt dials: a session that ends or fails moves to the
    // next, so an agent whose controller is gone attaches to another within one backoff.
    let mut at = 0usize;
    loop {
        let endpoint = id.endpoints[at % id.endpoints.len()].clone();
        state.set_run_state("connecting", &endpoint);
        let started = Instant::now();
        let result = session(
            state,
            &key,
            &endpoint,
            &mut id,
            heartbeat,
            &ctx,
            &mut rolled_back,
        )
        .await;
        let detail = match result {
            Ok(End::Removed(reason)) => {
                state.mark_removed(&reason);
                state.set_run_state("removed", &reason);
                return Ok(Stopped::Removed(reason));
            }
            Ok(End::Upgrade(staged)) => {
                state.set_run_state("upgrading", &staged.version);
                tracing::info!(version = %staged.version, "trying a new agent binary");
                match crate::upgrade::trial(&staged, state).await {
                    crate::upgrade::Trial::Took => {
                        return Ok(Stopped::Upgraded(staged.version.clone()))
                    }
                    crate::upgrade::Trial::RolledBack(why) => {
                        rolled_back = Some(why);
                        failures = 0;
                        continue;
                    }
                }
            }
            Ok(End::Closed) => "the controller closed the session".to_owned(),
            Err(e) if is_revoked(&e) => {
                let reason =
                    "this server was removed from Mezzanine (certificate revoked)".to_owned();
                state.mark_removed(&reason);
                state.set_run_state("removed", &reason);
                return Ok(Stopped::Removed(reason));
            }
            Err(e) => e,
        };
        if started.elapsed() > Duration::from_secs(10) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        at = (at + 1) % id.endpoints.len();
        let wait = backoff(failures);
        tracing::warn!(%endpoint, next = %id.endpoints[at], retry_in_ms = wait.as_millis() as u64, "{detail}");
        state.set_run_state("disconnected", &detail);
        tokio::time::sleep(wait).await;
    }
}

/// Jittered exponential backoff: 250 ms doubling to a 5 s cap, each wait drawn
/// uniformly from half to all of the step, so a fleet does not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    let step = Duration::from_millis(250).saturating_mul(1 << failures.min(5).saturating_sub(1));
    let step = step.min(Duration::from_secs(5));
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    let frac = 0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0;
    step.mul_f64(frac)
}

fn is_revoked(detail: &str) -> bool {
    detail.contains("CertificateRevoked") || detail.contains("was removed from Mezzanine")
}

fn renew_at(id: &Identity) -> Instant {
    let life = (id.not_after - id.issued_at).max(1) as f64;
    let at = id.issued_at as f64 + life * 0.7;
    let wait = (at - now_secs() as f64).max(0.0);
    Instant::now() + Duration::from_secs_f64(wait)
}

async fn session(
    state: &StateDir,
    key: &rcgen::KeyPair,
    endpoint: &str,
    id: &mut Identity,
    heartbeat: Duration,
    ctx: &Context,
    rolled_back: &mut Option<String>,
) -> Result<End, String> {
    let running = ctx.running.clone();
    // Request ids belong to one session (a restarted controller counts from 1 again): each
    // session has its own stream table. When the session ends its log streams are
    // cancelled; its deploy steps go on, held for a resume (runs.rs).
    let ctx = &Context {
        streams: Arc::default(),
        ..ctx.clone()
    };
    let alive = Arc::new(AtomicBool::new(true));
    let _end = SessionEnd(ctx.streams.clone(), alive.clone());
    let config = tls::session_config(&id.ca, id.cert.clone(), StateDir::rustls_key(key))
        .map_err(|e| e.to_string())?;
    let channel = tls::connect(endpoint, config).await?;
    let mut client = SessionClient::new(channel);
    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(256);
    let link = Link {
        out: out_tx.clone(),
        alive,
        streams: ctx.streams.clone(),
    };
    let hello = Hello {
        agent_version: crate::version().to_owned(),
        facts: Some(crate::facts::facts(ctx.engine.socket()).await),
        heartbeat_secs: heartbeat.as_secs().max(1) as u32,
        running: running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect(),
        steps: ctx.runs.held(),
        upgrade_rolled_back: rolled_back.clone().unwrap_or_default(),
    };
    out_tx
        .send(AgentMessage {
            kind: Some(agent_message::Kind::Hello(hello)),
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut inbound = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(|s| error_chain(&s))?
        .into_inner();
    tracing::info!(%endpoint, server_id = id.server_id, version = crate::version(), "attached");
    state.set_run_state("connected", endpoint);
    // The controller has heard about the rollback (it answered the hello).
    *rolled_back = None;
    crate::upgrade::report_attached();

    let beats = out_tx.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        tick.tick().await;
        loop {
            tick.tick().await;
            let hb = AgentMessage {
                kind: Some(agent_message::Kind::Heartbeat(crate::facts::heartbeat())),
            };
            if beats.send(hb).await.is_err() {
                break;
            }
        }
    });
    let _ticker = AbortOnDrop(ticker);
    let mut renew = renew_at(id);
    let mut upload = crate::upgrade::Upload::default();
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.kind {
                    Some(controller_message::Kind::Command(cmd)) => match cmd.body {
                        Some(command::Body::Cancel(c)) => ctx.streams.cancel(c.request_id),
                        Some(command::Body::Credit(c)) => ctx.streams.credit(c.request_id, c.bytes, c.acked_seq),
                        Some(command::Body::RunStep(step)) => start_step(ctx, &link, cmd.request_id, step),
                        Some(command::Body::ResumeStep(r)) => {
                            let key = (r.run_id, r.step_index);
                            match ctx.runs.get(key) {
                                Some(slot) => {
                                    // Registered before the next message is read, like a new step.
                                    ctx.streams.insert_step(cmd.request_id, slot.clone());
                                    let (runs, link) = (ctx.runs.clone(), link.clone());
                                    tokio::spawn(async move {
                                        runs.resume(&slot, cmd.request_id, link, r.after_seq).await;
                                    });
                                }
                                None => answer(&out_tx, cmd.request_id, reply::Body::Error(CommandError {
                                    message: format!(
                                        "this agent does not hold step {} of run {} (it was stopped, or the agent restarted)",
                                        r.step_index, r.run_id
                                    ),
                                })),
                            }
                        }
                        Some(command::Body::UpgradeChunk(c)) => {
                            match upload.piece(c, ctx.runs.held().len()) {
                                Ok(None) => answer(&out_tx, cmd.request_id, reply::Body::Ack(Ack {})),
                                Ok(Some(staged)) => {
                                    answer(&out_tx, cmd.request_id, reply::Body::Ack(Ack {}));
                                    flush(&out_tx).await;
                                    return Ok(End::Upgrade(staged));
                                }
                                Err(message) => answer(&out_tx, cmd.request_id, reply::Body::Error(CommandError { message })),
                            }
                        }
                        Some(command::Body::StopStep(s)) => {
                            if let Some(slot) = ctx.runs.get((s.run_id, s.step_index)) {
                                tracing::info!(run_id = s.run_id, step = s.step_index, "stopping a step the controller will not resume");
                                ctx.runs.abandon(&slot);
                            }
                            answer(&out_tx, cmd.request_id, reply::Body::Ack(Ack {}));
                        }
                        _ => {
                            running.lock().unwrap_or_else(|p| p.into_inner()).insert(cmd.request_id);
                            // A streaming command's entry exists before the next message
                            // is read, so a Cancel right behind it finds it.
                            let window = match &cmd.body {
                                Some(command::Body::DockerLogs(l)) => Some(l.window),
                                _ => None,
                            };
                            let stream = window.map(|w| ctx.streams.open(cmd.request_id, w));
                            tokio::spawn(execute(cmd, out_tx.clone(), running.clone(), ctx.clone(), stream));
                        }
                    },
                    Some(controller_message::Kind::Removed(r)) => return Ok(End::Removed(r.reason)),
                    None => {}
                },
                Ok(None) => return Ok(End::Closed),
                Err(status) => return Err(error_chain(&status)),
            },
            () = tokio::time::sleep_until(renew.into()) => {
                match renew_cert(&mut client, key, id, state).await {
                    Ok(()) => {
                        tracing::info!(not_after = id.not_after, "certificate renewed");
                        renew = renew_at(id);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate renewal failed; retrying in 5 s");
                        renew = Instant::now() + Duration::from_secs(5);
                    }
                }
            }
        }
    }
}

/// Waits (briefly) until the messages queued for the controller have been taken by the
/// transport, so the last reply of a session is not dropped with it.
async fn flush(out: &mpsc::Sender<AgentMessage>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while out.capacity() < out.max_capacity() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Taken from the queue is not yet written to the socket: a moment more for that.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn renew_cert(
    client: &mut SessionClient<tonic::transport::Channel>,
    key: &rcgen::KeyPair,
    id: &mut Identity,
    state: &StateDir,
) -> Result<(), String> {
    let csr = StateDir::csr(key).map_err(|e| e.to_string())?;
    let resp = client
        .renew(RenewRequest { csr_der: csr })
        .await
        .map_err(|s| error_chain(&s))?
        .into_inner();
    id.cert = resp.certificate_der.into();
    id.issued_at = now_secs();
    id.not_after = resp.not_after_unix;
    state.save(id).map_err(|e| e.to_string())
}

/// What commands need from the agent, shared by every session of this process.
#[derive(Debug, Clone)]
pub struct Context {
    pub engine: Arc<crate::docker::Engine>,
    pub streams: Arc<Streams>,
    /// Deploy steps, which outlive sessions.
    pub runs: Arc<Runs>,
    pub deploy_key_path: std::path::PathBuf,
    /// Where deploy steps without a workdir run (`<state>/work/run-<id>`).
    pub work_root: std::path::PathBuf,
    /// Request ids of commands still running, told in the hello after a reconnect.
    pub running: Arc<Mutex<HashSet<u64>>>,
}

/// A streaming command's flow control and cancel switch.
#[derive(Debug)]
enum StreamCtl {
    /// A log stream: the bytes it may still send, and its cancel switch.
    Logs(Arc<Semaphore>, watch::Sender<bool>),
    /// A deploy step, attached to this session by this request.
    Step(Arc<Slot>),
}

/// A session's streaming commands, by request id.
#[derive(Debug, Default)]
pub struct Streams {
    map: Mutex<HashMap<u64, StreamCtl>>,
}

impl Streams {
    fn open(&self, request_id: u64, window: u64) -> (Arc<Semaphore>, watch::Receiver<bool>) {
        let window = window.clamp(MIN_WINDOW, MAX_WINDOW) as usize;
        let credit = Arc::new(Semaphore::new(window));
        let (tx, rx) = watch::channel(false);
        self.lock()
            .insert(request_id, StreamCtl::Logs(credit.clone(), tx));
        (credit, rx)
    }

    fn insert_step(&self, request_id: u64, slot: Arc<Slot>) {
        self.lock().insert(request_id, StreamCtl::Step(slot));
    }

    pub fn close(&self, request_id: u64) {
        self.lock().remove(&request_id);
    }

    fn cancel(&self, request_id: u64) {
        match self.lock().remove(&request_id) {
            Some(StreamCtl::Logs(credit, cancel)) => {
                credit.close();
                let _ = cancel.send(true);
            }
            Some(StreamCtl::Step(slot)) => slot.cancel(),
            None => {}
        }
    }

    /// The session ended: its log streams stop; its steps are left to be resumed.
    fn end_session(&self) {
        let all: Vec<StreamCtl> = self.lock().drain().map(|(_, v)| v).collect();
        for ctl in all {
            if let StreamCtl::Logs(credit, cancel) = ctl {
                credit.close();
                let _ = cancel.send(true);
            }
        }
    }

    fn credit(&self, request_id: u64, bytes: u64, acked_seq: u64) {
        match self.lock().get(&request_id) {
            Some(StreamCtl::Logs(credit, _)) => {
                // Never more than the largest window in hand, whatever the controller says.
                let room = (MAX_WINDOW as usize).saturating_sub(credit.available_permits());
                credit.add_permits((bytes as usize).min(room));
            }
            Some(StreamCtl::Step(slot)) => slot.ack(bytes, acked_seq),
            None => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, StreamCtl>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends a reply without holding up the session loop.
fn answer(out: &mpsc::Sender<AgentMessage>, request_id: u64, body: reply::Body) {
    let out = out.clone();
    tokio::spawn(async move {
        let _ = out.send(reply_msg(request_id, body)).await;
    });
}

/// Starts a deploy step, unless this agent already holds it.
fn start_step(ctx: &Context, link: &Link, request_id: u64, step: RunStep) {
    let key = (step.run_id, step.step_index);
    let Some(slot) = ctx.runs.start(key, request_id, link.clone(), step.window) else {
        answer(&link.out, request_id, crate::runs::already_held(key));
        return;
    };
    ctx.streams.insert_step(request_id, slot.clone());
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let result = crate::steps::run(
            step,
            &ctx.engine,
            &ctx.deploy_key_path,
            &ctx.work_root,
            &slot,
        )
        .await;
        ctx.runs.finish(&slot, result).await;
    });
}

/// Runs one command and sends its reply (streaming commands send chunks first).
/// Commands are idempotent where they can be.
async fn execute(
    cmd: Command,
    out: mpsc::Sender<AgentMessage>,
    running: Arc<Mutex<HashSet<u64>>>,
    ctx: Context,
    stream: Option<(Arc<Semaphore>, watch::Receiver<bool>)>,
) {
    let id = cmd.request_id;
    let body = match cmd.body {
        Some(command::Body::Ping(p)) => reply::Body::Pong(Pong { payload: p.payload }),
        Some(command::Body::DeployKey(k)) => {
            match crate::identity::write_secret(
                &ctx.deploy_key_path,
                k.private_key_openssh.as_bytes(),
            ) {
                Ok(()) => reply::Body::Ack(Ack {}),
                Err(e) => reply::Body::Error(CommandError {
                    message: e.to_string(),
                }),
            }
        }
        Some(command::Body::ApplyPool(p)) => {
            crate::nginx::apply(&crate::nginx::Layout::default(), &p).await
        }
        Some(command::Body::AcmeChallenge(c)) => {
            match crate::nginx::challenge(&crate::nginx::Layout::default(), &c).await {
                Ok(()) => reply::Body::Ack(Ack {}),
                Err(message) => reply::Body::Error(CommandError { message }),
            }
        }
        Some(command::Body::Probe(p)) => {
            let started = std::time::Instant::now();
            let timeout =
                std::time::Duration::from_millis(u64::from(p.timeout_ms.clamp(100, 60_000)));
            let (status, error) = match crate::httpcheck::get_status(&p.url, timeout).await {
                Ok(s) => (u32::from(s), String::new()),
                Err(e) => (0, e),
            };
            reply::Body::ProbeResult(mezzanine_proto::v1::ProbeResult {
                status,
                error,
                elapsed_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            })
        }
        Some(command::Body::DockerListContainers(c)) => ctx.engine.list_containers(c.all).await,
        Some(command::Body::DockerListImages(_)) => ctx.engine.list_images().await,
        Some(command::Body::DockerContainerAction(a)) => ctx.engine.container_action(a).await,
        Some(command::Body::DockerLogs(l)) => {
            let (credit, cancel) = stream.unwrap_or_else(|| ctx.streams.open(id, l.window));
            let chunks = out.clone();
            let last = ctx
                .engine
                .logs(l, credit, cancel, |body| {
                    let chunks = chunks.clone();
                    async move { chunks.send(reply_msg(id, body)).await.is_ok() }
                })
                .await;
            ctx.streams.close(id);
            last
        }
        Some(command::Body::EndRun(e)) => {
            // Steps that named their own workdir keep it; the run's default one goes.
            let dir = crate::steps::default_workdir(&ctx.work_root, e.run_id);
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => tracing::debug!(run_id = e.run_id, "removed the run's work directory"),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(run_id = e.run_id, error = %err, "cannot remove the run's work directory")
                }
            }
            reply::Body::Ack(Ack {})
        }
        Some(
            command::Body::Cancel(_)
            | command::Body::Credit(_)
            | command::Body::RunStep(_)
            | command::Body::ResumeStep(_)
            | command::Body::StopStep(_)
            | command::Body::UpgradeChunk(_),
        )
        | None => reply::Body::Error(CommandError {
            message: "this agent does not know that command; upgrade it".into(),
        }),
    };
    running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    let _ = out.send(reply_msg(id, body)).await;
}

/// Marks a session ended: its link is dead, its log streams are cancelled.
struct SessionEnd(Arc<Streams>, Arc<AtomicBool>);

impl Drop for SessionEnd {
    fn drop(&mut self) {
        self.1.store(false, Ordering::Release);
        self.0.end_session();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
