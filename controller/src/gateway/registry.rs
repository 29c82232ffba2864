//! Live agent sessions on this controller: who is attached, their latest heartbeat, the
//! request/reply command path with ids and timeouts, and the set of revoked certificate
//! serials the TLS layer consults at every handshake.

use mezzanine_proto::v1::{command, reply, Command, ControllerMessage, Heartbeat, Removed};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

pub type Outbound = mpsc::Sender<Result<ControllerMessage, tonic::Status>>;

/// Why a command did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("server offline")]
    Offline,
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent disconnected before answering")]
    Disconnected,
    #[error("the agent's command queue is full; retry shortly")]
    Busy,
    #[error("agent error: {0}")]
    Agent(String),
}

#[derive(Debug)]
struct Beat {
    last_seen_ms: i64,
    /// The last heartbeat as received; turned into JSON only when someone reads it.
    metrics: Option<Heartbeat>,
    dirty: bool,
    /// The last heartbeats, oldest first, for the panel's charts (a few KiB a server).
    samples: VecDeque<Sample>,
}

/// How many heartbeats a server's chart shows (10 minutes at the default 10 s beat).
const SAMPLES: usize = 60;

/// One heartbeat, kept small: only what the charts draw.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: i64,
    load1: f32,
    memory_used: u64,
    memory_total: u64,
    disk_used: u64,
    disk_total: u64,
}

impl Sample {
    fn json(&self) -> Value {
        serde_json::json!({
            "at": crate::time::rfc3339_ms(self.at_ms),
            "load1": self.load1,
            "memory_used_bytes": self.memory_used,
            "memory_total_bytes": self.memory_total,
            "disk_used_bytes": self.disk_used,
            "disk_total_bytes": self.disk_total,
        })
    }
}

fn metrics_json(h: &Heartbeat, at_ms: i64) -> Value {
    serde_json::json!({
        "load": [h.load1, h.load5, h.load15],
        "memory_used_bytes": h.memory_used_bytes,
        "memory_total_bytes": h.memory_total_bytes,
        "disk_used_bytes": h.disk_used_bytes,
        "disk_total_bytes": h.disk_total_bytes,
        "uptime_secs": h.uptime_secs,
        "at": crate::time::rfc3339(at_ms / 1000),
    })
}

/// The window assumed for a stream whose command names none (a resumed step).
const DEFAULT_STREAM_WINDOW: u64 = mezzanine_proto::DEFAULT_WINDOW;

/// One attached agent.
#[derive(Debug)]
pub struct Live {
    pub conn_id: u64,
    pub connected_at_ms: i64,
    pub heartbeat: Duration,
    tx: Outbound,
    pending: Mutex<HashMap<u64, Waiter>>,
    beat: Mutex<Beat>,
    /// Wakes the session's reader task to end the session.
    pub stop: Notify,
}

/// Who waits for a command's replies: one reply, or a stream of chunks ending in a
/// `StreamEnd` or an error.
#[derive(Debug)]
enum Waiter {
    Once(oneshot::Sender<reply::Body>),
    Stream(mpsc::UnboundedSender<reply::Body>, Arc<InFlight>),
}

/// What a stream's agent has sent beyond the credit it was given, counted on the
/// controller: the agent is trusted to respect its window, but not relied on — the
/// channel to the consumer is unbounded (a full one would stall the whole session), so
/// an agent past `limit` has its session ended instead.
#[derive(Debug)]
struct InFlight {
    bytes: std::sync::atomic::AtomicU64,
    limit: u64,
}

/// The replies of a streaming command. The agent sends only as much as it was credited
/// (see `credit`), which bounds what waits here. Dropping the stream before its end
/// cancels the command on the agent.
#[derive(Debug)]
pub struct ReplyStream {
    live: Arc<Live>,
    request_id: u64,
    rx: mpsc::UnboundedReceiver<reply::Body>,
    finished: bool,
    in_flight: Arc<InFlight>,
}

impl ReplyStream {
    /// The next reply; `None` once the stream ended or the agent disconnected.
    pub async fn next(&mut self) -> Option<reply::Body> {
        if self.finished {
            return None;
        }
        let body = self.rx.recv().await;
        if !body.as_ref().is_some_and(is_chunk) {
            self.finished = true;
        }
        body
    }

    /// Asks the agent to stop the command; its last reply still arrives.
    pub fn cancel(&self) {
        let msg = notice(command::Body::Cancel(mezzanine_proto::v1::Cancel {
            request_id: self.request_id,
        }));
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.live.tx.try_send(Ok(msg)) {
            let tx = self.live.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    /// Lets the agent send `bytes` more.
    /// Lets the stream send `bytes` more; for a deploy step, `acked_seq` also tells the
    /// agent every chunk up to it is stored (0 for other streams).
    pub async fn credit(&self, bytes: u64, acked_seq: u64) -> bool {
        let _ = self.in_flight.bytes.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |b| Some(b.saturating_sub(bytes)),
        );
        let msg = notice(command::Body::Credit(mezzanine_proto::v1::Credit {
            request_id: self.request_id,
            bytes,
            acked_seq,
        }));
        self.live.tx.send(Ok(msg)).await.is_ok()
    }
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        lock(&self.live.pending).remove(&self.request_id);
        if self.finished {
            return;
        }
        let msg = notice(command::Body::Cancel(mezzanine_proto::v1::Cancel {
            request_id: self.request_id,
        }));
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.live.tx.try_send(Ok(msg)) {
            let tx = self.live.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }
}

/// Replies that a streaming command sends before its last one.
fn is_chunk(body: &reply::Body) -> bool {
    matches!(body, reply::Body::LogChunk(_) | reply::Body::StepOutput(_))
}

/// A command that gets no reply (request id 0).
fn notice(body: command::Body) -> ControllerMessage {
    ControllerMessage {
        kind: Some(mezzanine_proto::v1::controller_message::Kind::Command(
            Command {
                request_id: 0,
                body: Some(body),
            },
        )),
    }
}

/// A plain view of a live session for the API.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub connected_at_ms: i64,
    pub last_seen_ms: i64,
    pub metrics: Option<Value>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every map here stays consistent between statements; a panic elsewhere does not
    // leave half-written entries, so continuing with the data is safe.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn view_of(live: &Live) -> LiveView {
    let beat = lock(&live.beat);
    LiveView {
        connected_at_ms: live.connected_at_ms,
        last_seen_ms: beat.last_seen_ms,
        metrics: beat
            .metrics
            .as_ref()
            .map(|h| metrics_json(h, beat.last_seen_ms)),
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<i64, Arc<Live>>>,
    revoked: RwLock<HashSet<String>>,
    next_conn: AtomicU64,
    next_request: AtomicU64,
}

impl Registry {
    /// Registers a new session for `server_id`, replacing (and stopping) any older one.
    pub fn attach(&self, server_id: i64, tx: Outbound, heartbeat: Duration) -> Arc<Live> {
        let now = crate::time::now_ms();
        let live = Arc::new(Live {
            conn_id: self.next_conn.fetch_add(1, Ordering::Relaxed) + 1,
            connected_at_ms: now,
            heartbeat,
            tx,
            pending: Mutex::new(HashMap::new()),
            beat: Mutex::new(Beat {
                last_seen_ms: now,
                metrics: None,
                dirty: false,
                samples: VecDeque::new(),
            }),
            stop: Notify::new(),
        });
        if let Some(old) = lock(&self.sessions).insert(server_id, live.clone()) {
            old.stop.notify_one();
        }
        live
    }

    /// Removes the session if it is still the current one for `server_id`.
    pub fn detach(&self, server_id: i64, conn_id: u64) -> bool {
        let mut map = lock(&self.sessions);
        match map.get(&server_id) {
            Some(l) if l.conn_id == conn_id => {
                map.remove(&server_id);
                true
            }
            _ => false,
        }
    }

    pub fn is_current(&self, server_id: i64, conn_id: u64) -> bool {
        lock(&self.sessions)
            .get(&server_id)
            .is_some_and(|l| l.conn_id == conn_id)
    }

    pub fn is_attached(&self, server_id: i64) -> bool {
        lock(&self.sessions).contains_key(&server_id)
    }

    pub fn attached_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Commands sent to attached agents and not answered yet.
    pub fn commands_in_flight(&self) -> usize {
        let sessions: Vec<_> = lock(&self.sessions).values().cloned().collect();
        sessions.iter().map(|l| lock(&l.pending).len()).sum()
    }

    pub fn view(&self, server_id: i64) -> Option<LiveView> {
        let live = lock(&self.sessions).get(&server_id).cloned()?;
        Some(view_of(&live))
    }

    /// The recent heartbeats of an attached server, oldest first (empty when detached).
    pub fn samples(&self, server_id: i64) -> Vec<Value> {
        let Some(live) = lock(&self.sessions).get(&server_id).cloned() else {
            return Vec::new();
        };
        let beat = lock(&live.beat);
        beat.samples.iter().map(Sample::json).collect()
    }

    /// Views of every attached session, by server id.
    pub fn views(&self) -> HashMap<i64, LiveView> {
        let sessions: Vec<(i64, Arc<Live>)> = lock(&self.sessions)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        sessions
            .into_iter()
            .map(|(id, live)| (id, view_of(&live)))
            .collect()
    }

    /// Notes that the agent spoke (any message counts as a sign of life).
    pub fn seen(live: &Live, metrics: Option<Heartbeat>) {
        let mut beat = lock(&live.beat);
        beat.last_seen_ms = crate::time::now_ms();
        if let Some(m) = metrics {
            if beat.samples.len() == SAMPLES {
                beat.samples.pop_front();
            }
            let sample = Sample {
                at_ms: beat.last_seen_ms,
                load1: m.load1 as f32,
                memory_used: m.memory_used_bytes,
                memory_total: m.memory_total_bytes,
                disk_used: m.disk_used_bytes,
                disk_total: m.disk_total_bytes,
            };
            beat.samples.push_back(sample);
            beat.metrics = Some(m);
        }
        beat.dirty = true;
    }

    /// Heartbeats received since the last call: `(server_id, last_seen_secs, metrics)`.
    pub fn take_dirty(&self) -> Vec<(i64, i64, Value)> {
        let sessions: Vec<(i64, Arc<Live>)> = lock(&self.sessions)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut out = Vec::new();
        for (id, live) in sessions {
            let mut beat = lock(&live.beat);
            if beat.dirty {
                beat.dirty = false;
                out.push((
                    id,
                    beat.last_seen_ms / 1000,
                    beat.metrics
                        .as_ref()
                        .map_or(Value::Null, |h| metrics_json(h, beat.last_seen_ms)),
                ));
            }
        }
        out
    }

    /// The unsaved heartbeat of a session that just ended: `(last_seen_secs, metrics)`.
    pub fn last_beat(live: &Live) -> Option<(i64, Value)> {
        let beat = lock(&live.beat);
        beat.dirty.then(|| {
            (
                beat.last_seen_ms / 1000,
                beat.metrics
                    .as_ref()
                    .map_or(Value::Null, |h| metrics_json(h, beat.last_seen_ms)),
            )
        })
    }

    /// Completes a pending command with the agent's reply. False when the agent sent a
    /// stream more than its credit allows: the caller ends the session.
    #[must_use]
    pub fn complete(live: &Live, request_id: u64, body: reply::Body) -> bool {
        let mut pending = lock(&live.pending);
        let chunk = is_chunk(&body);
        match pending.get(&request_id) {
            Some(Waiter::Stream(tx, in_flight)) if chunk => {
                let size = match &body {
                    reply::Body::LogChunk(c) => c.data.len(),
                    reply::Body::StepOutput(o) => o.data.len(),
                    _ => 0,
                } as u64
                    + mezzanine_proto::CHUNK_OVERHEAD;
                let total = in_flight
                    .bytes
                    .fetch_add(size, std::sync::atomic::Ordering::AcqRel)
                    + size;
                if total > in_flight.limit {
                    pending.remove(&request_id);
                    return false;
                }
                let gone = tx.send(body).is_err();
                if gone {
                    pending.remove(&request_id);
                }
            }
            Some(_) => match pending.remove(&request_id) {
                Some(Waiter::Once(tx)) => {
                    let _ = tx.send(body);
                }
                Some(Waiter::Stream(tx, _)) => {
                    let _ = tx.send(body);
                }
                None => {}
            },
            None => {}
        }
        true
    }

    /// Drops every waiter of an ended session: calls fail as disconnected, streams end.
    pub fn abandon(live: &Live) {
        lock(&live.pending).clear();
    }

    /// Registers `waiter` under a fresh request id and queues the command on the server's
    /// session; on failure nothing stays registered.
    fn dispatch(
        &self,
        server_id: i64,
        body: command::Body,
        waiter: Waiter,
    ) -> Result<(Arc<Live>, u64), CallError> {
        let live = lock(&self.sessions)
            .get(&server_id)
            .cloned()
            .ok_or(CallError::Offline)?;
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&live.pending).insert(request_id, waiter);
        let msg = ControllerMessage {
            kind: Some(mezzanine_proto::v1::controller_message::Kind::Command(
                Command {
                    request_id,
                    body: Some(body),
                },
            )),
        };
        if let Err(e) = live.tx.try_send(Ok(msg)) {
            lock(&live.pending).remove(&request_id);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => CallError::Busy,
                mpsc::error::TrySendError::Closed(_) => CallError::Offline,
            });
        }
        Ok((live, request_id))
    }

    /// Starts a streaming command; read its replies from the returned stream.
    pub fn open_stream(
        &self,
        server_id: i64,
        body: command::Body,
    ) -> Result<ReplyStream, CallError> {
        let window = match &body {
            command::Body::RunStep(s) => s.window,
            command::Body::DockerLogs(l) => l.window,
            // A resumed step keeps the window it started with; the default is the
            // engine's, and the limit allows for the re-sent backlog on top of it.
            _ => DEFAULT_STREAM_WINDOW,
        };
        let in_flight = Arc::new(InFlight {
            bytes: std::sync::atomic::AtomicU64::new(0),
            limit: mezzanine_proto::in_flight_limit(window),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (live, request_id) =
            self.dispatch(server_id, body, Waiter::Stream(tx, in_flight.clone()))?;
        Ok(ReplyStream {
            live,
            request_id,
            rx,
            finished: false,
            in_flight,
        })
    }

    /// Sends one command and waits for its reply.
    pub async fn call(
        &self,
        server_id: i64,
        body: command::Body,
        timeout: Duration,
    ) -> Result<reply::Body, CallError> {
        let (tx, rx) = oneshot::channel();
        let (live, request_id) = self.dispatch(server_id, body, Waiter::Once(tx))?;
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, rx).await;
        lock(&live.pending).remove(&request_id);
        match result {
            Err(_) => Err(CallError::Timeout(started.elapsed())),
            Ok(Err(_)) => Err(CallError::Disconnected),
            Ok(Ok(reply::Body::Error(e))) => Err(CallError::Agent(e.message)),
            Ok(Ok(body)) => Ok(body),
        }
    }

    /// Tells the agent it was removed and ends its session.
    pub fn remove(&self, server_id: i64, reason: &str) {
        if let Some(live) = lock(&self.sessions).remove(&server_id) {
            let msg = ControllerMessage {
                kind: Some(mezzanine_proto::v1::controller_message::Kind::Removed(
                    Removed {
                        reason: reason.to_owned(),
                    },
                )),
            };
            let _ = live.tx.try_send(Ok(msg));
            live.stop.notify_one();
        }
    }

    /// Ends every session (controller shutdown); agents will reconnect elsewhere or later.
    pub fn close_all(&self) {
        let all: Vec<Arc<Live>> = lock(&self.sessions).drain().map(|(_, v)| v).collect();
        for live in all {
            live.stop.notify_one();
        }
    }

    pub fn revoke<I: IntoIterator<Item = String>>(&self, serials: I) {
        let mut set = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        set.extend(serials);
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }
}
