//! Deploy steps held by this agent. A step belongs to the agent, not to the session that
//! started it: when the session ends (the controller restarts, the network blips) the step
//! goes on, its output kept until the controller acknowledges it (bounded by the step's
//! credit window, so a step that outpaces a missing controller simply waits), and a
//! controller that still wants it re-attaches it with `ResumeStep`. A step nobody claims
//! within the grace period, or one the controller stops with `StopStep`, is cancelled.
//! A `RunStep` for a step already held is refused: no step runs twice because of a
//! reconnect.

use crate::session::Streams;
use mezzanine_proto::v1::{agent_message, reply, AgentMessage, HeldStep, LogStream, Reply};
use mezzanine_proto::v1::{CommandError, StepOutput};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

/// `(run_id, step_index)`.
pub type StepKey = (u64, u32);

/// Shared with the controller: see `mezzanine_proto::CHUNK_OVERHEAD`.
pub const CHUNK_OVERHEAD: usize = mezzanine_proto::CHUNK_OVERHEAD as usize;
/// Bounds on the credit window a controller may ask for (shared with the controller).
pub use mezzanine_proto::{MAX_WINDOW, MIN_WINDOW};

/// One session's way back to the controller.
#[derive(Debug, Clone)]
pub struct Link {
    pub out: mpsc::Sender<AgentMessage>,
    /// Cleared when the session ends.
    pub alive: Arc<AtomicBool>,
    /// The session's streaming commands, to forget a request once its step has finished.
    pub streams: Arc<Streams>,
}

impl Link {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.out.is_closed()
    }
}

pub fn reply_msg(request_id: u64, body: reply::Body) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Reply(Reply {
            request_id,
            body: Some(body),
        })),
    }
}

/// Where a step's messages go now: a request of a live session.
#[derive(Debug)]
struct Sink {
    request_id: u64,
    link: Link,
}

impl Sink {
    /// Sends one message; false when the session is gone.
    async fn send(&self, body: reply::Body) -> bool {
        self.link.is_alive()
            && self
                .link
                .out
                .send(reply_msg(self.request_id, body))
                .await
                .is_ok()
    }
}

#[derive(Debug)]
struct Inner {
    sink: Option<Sink>,
    /// Chunks sent (or not yet sendable) and not yet acknowledged, oldest first.
    unacked: VecDeque<StepOutput>,
    next_seq: u64,
    result: Option<reply::Body>,
    /// When the step was first seen without a live session.
    detached_since: Option<Instant>,
}

/// A held step: its credit, its cancel switch and its undelivered output.
#[derive(Debug)]
pub struct Slot {
    key: StepKey,
    credit: Semaphore,
    cancel: watch::Sender<bool>,
    /// Every chunk up to this seq is stored by the controller.
    acked: AtomicU64,
    finished: AtomicBool,
    /// Nobody will resume it: cancelled, and forgotten once it has ended.
    abandoned: AtomicBool,
    inner: tokio::sync::Mutex<Inner>,
}

fn cost(c: &StepOutput) -> usize {
    c.data.len() + CHUNK_OVERHEAD
}

impl Slot {
    pub fn cancelled(&self) -> watch::Receiver<bool> {
        self.cancel.subscribe()
    }

    /// Sends one chunk of output (whole lines) once the controller's credit allows; false
    /// when the step was cancelled. Without a live session the chunk is kept for a resume.
    pub async fn output(&self, kind: LogStream, data: String) -> bool {
        let n = u32::try_from(data.len() + CHUNK_OVERHEAD).unwrap_or(u32::MAX);
        match self.credit.acquire_many(n).await {
            Ok(p) => p.forget(),
            Err(_) => return false,
        }
        let mut inner = self.inner.lock().await;
        let acked = self.acked.load(Ordering::Acquire);
        while inner.unacked.front().is_some_and(|c| c.seq <= acked) {
            inner.unacked.pop_front();
        }
        inner.next_seq += 1;
        let chunk = StepOutput {
            stream: kind as i32,
            data: data.into_bytes(),
            seq: inner.next_seq,
        };
        inner.unacked.push_back(chunk.clone());
        if let Some(sink) = &inner.sink {
            if !sink.send(reply::Body::StepOutput(chunk)).await {
                inner.sink = None;
            }
        }
        true
    }

    /// The controller stored every chunk up to `seq` and lets the step send `bytes` more.
    pub fn ack(&self, bytes: u64, seq: u64) {
        self.acked.fetch_max(seq, Ordering::AcqRel);
        self.add_credit(bytes as usize);
    }

    fn add_credit(&self, bytes: usize) {
        if self.credit.is_closed() {
            return;
        }
        // Never more than the largest window in hand, whatever the controller says.
        let room = (MAX_WINDOW as usize).saturating_sub(self.credit.available_permits());
        self.credit.add_permits(bytes.min(room));
    }

    /// Asks the step to stop (its result still goes to the controller).
    pub fn cancel(&self) {
        self.credit.close();
        let _ = self.cancel.send(true);
    }
}

/// Every step this agent holds.
#[derive(Debug)]
pub struct Runs {
    slots: Mutex<HashMap<StepKey, Arc<Slot>>>,
    /// How long a step without a session waits for a controller to resume it.
    grace: Duration,
}

impl Runs {
    pub fn new(grace: Duration) -> Self {
        Runs {
            slots: Mutex::default(),
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StepKey, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new step whose messages go to `request_id` on `link`; `None` when this agent
    /// already holds that step.
    pub fn start(
        &self,
        key: StepKey,
        request_id: u64,
        link: Link,
        window: u64,
    ) -> Option<Arc<Slot>> {
        let mut slots = self.lock();
        if slots.contains_key(&key) {
            return None;
        }
        let window = window.clamp(MIN_WINDOW, MAX_WINDOW) as usize;
        let (cancel, _) = watch::channel(false);
        let slot = Arc::new(Slot {
            key,
            credit: Semaphore::new(window),
            cancel,
            acked: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            inner: tokio::sync::Mutex::new(Inner {
                sink: Some(Sink { request_id, link }),
                unacked: VecDeque::new(),
                next_seq: 0,
                result: None,
                detached_since: None,
            }),
        });
        slots.insert(key, slot.clone());
        Some(slot)
    }

    /// The steps held, for the hello.
    pub fn held(&self) -> Vec<HeldStep> {
        self.lock()
            .values()
            .filter(|s| !s.abandoned.load(Ordering::Acquire))
            .map(|s| HeldStep {
                run_id: s.key.0,
                step_index: s.key.1,
                finished: s.finished.load(Ordering::Acquire),
            })
            .collect()
    }

    /// A held step a controller may still resume.
    pub fn get(&self, key: StepKey) -> Option<Arc<Slot>> {
        self.lock()
            .get(&key)
            .filter(|s| !s.abandoned.load(Ordering::Acquire))
            .cloned()
    }

    fn forget(&self, slot: &Slot) {
        let mut slots = self.lock();
        if slots
            .get(&slot.key)
            .is_some_and(|s| std::ptr::eq(s.as_ref(), slot))
        {
            slots.remove(&slot.key);
        }
    }

    /// The step ended: its result goes to the controller if a session is there, else it
    /// waits (with the output not yet acknowledged) for a resume.
    pub async fn finish(&self, slot: &Slot, result: reply::Body) {
        let mut inner = slot.inner.lock().await;
        slot.finished.store(true, Ordering::Release);
        inner.result = Some(result.clone());
        let delivered = match inner.sink.take() {
            Some(sink) if sink.send(result).await => {
                sink.link.streams.close(sink.request_id);
                true
            }
            _ => false,
        };
        if delivered || slot.abandoned.load(Ordering::Acquire) {
            self.forget(slot);
        }
    }

    /// Re-attaches a held step to `request_id` on `link`: output the controller has not
    /// stored (after `after_seq`) is sent again, then the result if the step has ended.
    pub async fn resume(&self, slot: &Slot, request_id: u64, link: Link, after_seq: u64) {
        let mut inner = slot.inner.lock().await;
        // Chunks the controller stored but whose acknowledgement never arrived: their
        // credit comes back now.
        let acked = slot.acked.load(Ordering::Acquire);
        let mut back = 0;
        inner.unacked.retain(|c| {
            if c.seq <= acked {
                false
            } else if c.seq <= after_seq {
                back += cost(c);
                false
            } else {
                true
            }
        });
        slot.acked.fetch_max(after_seq, Ordering::AcqRel);
        slot.add_credit(back);
        let sink = Sink { request_id, link };
        for c in inner.unacked.iter() {
            if !sink.send(reply::Body::StepOutput(c.clone())).await {
                return;
            }
        }
        inner.detached_since = None;
        match inner.result.clone() {
            Some(result) => {
                if sink.send(result).await {
                    sink.link.streams.close(request_id);
                    self.forget(slot);
                }
            }
            None => inner.sink = Some(sink),
        }
    }

    /// Nobody will resume this step: cancel it and forget it once it has ended.
    pub fn abandon(&self, slot: &Slot) {
        slot.abandoned.store(true, Ordering::Release);
        slot.cancel();
        if slot.finished.load(Ordering::Acquire) {
            self.forget(slot);
        }
    }

    /// Once a second: steps without a live session for longer than the grace are
    /// abandoned.
    pub async fn reap(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let slots: Vec<Arc<Slot>> = self.lock().values().cloned().collect();
            for slot in slots {
                // A step busy sending is attached; look again next time.
                let Ok(mut inner) = slot.inner.try_lock() else {
                    continue;
                };
                let attached = inner.sink.as_ref().is_some_and(|s| s.link.is_alive());
                if attached {
                    inner.detached_since = None;
                    continue;
                }
                let since = *inner.detached_since.get_or_insert_with(Instant::now);
                drop(inner);
                if since.elapsed() >= self.grace && !slot.abandoned.load(Ordering::Acquire) {
                    tracing::warn!(
                        run_id = slot.key.0,
                        step = slot.key.1,
                        grace_s = self.grace.as_secs(),
                        "no controller resumed this step; stopping it"
                    );
                    self.abandon(&slot);
                }
            }
        }
    }
}

/// The reply to a `RunStep` for a step this agent already holds.
pub fn already_held(key: StepKey) -> reply::Body {
    reply::Body::Error(CommandError {
        message: format!(
            "step {} of run {} is already held by this agent; resume it instead",
            key.1, key.0
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mezzanine_proto::v1::StepResult;

    fn link() -> (Link, mpsc::Receiver<AgentMessage>) {
        let (out, rx) = mpsc::channel(64);
        let link = Link {
            out,
            alive: Arc::new(AtomicBool::new(true)),
            streams: Arc::default(),
        };
        (link, rx)
    }

    /// `(request_id, seq, text)` of each chunk waiting in `rx`, and whether a result came.
    fn drain(rx: &mut mpsc::Receiver<AgentMessage>) -> (Vec<(u64, u64, String)>, bool) {
        let mut chunks = Vec::new();
        let mut result = false;
        while let Ok(m) = rx.try_recv() {
            let Some(agent_message::Kind::Reply(r)) = m.kind else {
                continue;
            };
            match r.body {
                Some(reply::Body::StepOutput(o)) => chunks.push((
                    r.request_id,
                    o.seq,
                    String::from_utf8_lossy(&o.data).into_owned(),
                )),
                Some(reply::Body::StepResult(_)) => result = true,
                _ => {}
            }
        }
        (chunks, result)
    }

    #[tokio::test]
    async fn a_detached_step_resends_what_was_not_stored_then_goes_on() {
        let runs = Runs::new(Duration::from_secs(60));
        let (first, mut rx1) = link();
        let slot = runs
            .start((7, 0), 1, first.clone(), MIN_WINDOW)
            .expect("new");
        assert!(
            runs.start((7, 0), 2, first.clone(), MIN_WINDOW).is_none(),
            "a held step is never started twice"
        );
        for line in ["a\n", "b\n", "c\n"] {
            assert!(slot.output(LogStream::Stdout, line.into()).await);
        }
        let (got, _) = drain(&mut rx1);
        assert_eq!(got.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 2, 3]);
        // The controller acknowledged chunk 1, then its session ended; output goes on.
        slot.ack(2 + CHUNK_OVERHEAD as u64, 1);
        first.alive.store(false, Ordering::Release);
        assert!(slot.output(LogStream::Stdout, "d\n".into()).await);
        assert!(
            drain(&mut rx1).0.is_empty(),
            "nothing sent without a session"
        );
        let held = runs.held();
        assert_eq!(
            (held.len(), held[0].run_id, held[0].finished),
            (1, 7, false)
        );
        // A new controller stored up to chunk 2: chunks 3 and 4 come again, in order, on
        // the new request, and later output follows them.
        let (second, mut rx2) = link();
        let slot = runs.get((7, 0)).expect("held");
        runs.resume(&slot, 9, second, 2).await;
        assert!(slot.output(LogStream::Stdout, "e\n".into()).await);
        let (got, _) = drain(&mut rx2);
        let want = [
            (9, 3, "c\n".to_owned()),
            (9, 4, "d\n".to_owned()),
            (9, 5, "e\n".to_owned()),
        ];
        assert_eq!(got, want);
        let done = reply::Body::StepResult(StepResult::default());
        runs.finish(&slot, done).await;
        assert!(drain(&mut rx2).1, "the result is delivered");
        assert!(runs.held().is_empty(), "and the step is forgotten");
    }

    #[tokio::test]
    async fn a_step_that_ends_while_detached_keeps_its_result_for_a_resume() {
        let runs = Runs::new(Duration::from_secs(60));
        let (first, _rx1) = link();
        let slot = runs
            .start((8, 1), 1, first.clone(), MIN_WINDOW)
            .expect("new");
        first.alive.store(false, Ordering::Release);
        assert!(slot.output(LogStream::Stderr, "last words\n".into()).await);
        runs.finish(&slot, reply::Body::StepResult(StepResult::default()))
            .await;
        assert!(runs.held()[0].finished);
        let (second, mut rx2) = link();
        runs.resume(&slot, 3, second, 0).await;
        let (got, result) = drain(&mut rx2);
        assert_eq!(got, [(3, 1, "last words\n".to_owned())]);
        assert!(result);
        assert!(runs.held().is_empty());
        // Stopping a step nobody resumes cancels it.
        let (third, _rx3) = link();
        let slot = runs.start((8, 2), 4, third, MIN_WINDOW).expect("new");
        let mut cancelled = slot.cancelled();
        runs.abandon(&slot);
        assert!(*cancelled.borrow_and_update());
        assert!(!slot.output(LogStream::Stdout, "x\n".into()).await);
        assert!(runs.get((8, 2)).is_none());
    }
}
