//! The change feed behind `GET /api/events`: the store announces each committed change
//! (a server's state, a run's state, a workflow, a user) as `{kind, id}` so a panel
//! refetches only what changed instead of polling. Heartbeat metrics are announced too,
//! with their values, but only to streams that ask for that server's metrics.
//!
//! Recent changes are kept in a bounded ring so a reconnecting stream resumes from its
//! `Last-Event-ID`; ids carry this process's boot id, so an id from before a restart (or
//! one older than the ring) is answered with a `reset` (refetch everything) rather than a
//! silent gap.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// How many changes a reconnecting stream can catch up on.
const RING: usize = 4096;
/// How many changes a slow stream may lag before it is told to reset.
const CHANNEL: usize = 1024;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Run,
    Workflow,
    /// A pool, its members and their health.
    Pool,
    /// Users are visible to admins only.
    User,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "server" => Kind::Server,
            "run" => Kind::Run,
            "workflow" => Kind::Workflow,
            "pool" => Kind::Pool,
            "user" => Kind::User,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::Run => "run",
            Kind::Workflow => "workflow",
            Kind::Pool => "pool",
            Kind::User => "user",
        }
    }

    /// Whether only admins may hear of it.
    pub fn admin_only(self) -> bool {
        matches!(self, Kind::User)
    }
}

/// One announced change.
#[derive(Debug, Clone)]
pub enum Change {
    /// `seq` orders it in the ring; `parent` is a run's workflow.
    Entity {
        seq: u64,
        kind: Kind,
        id: i64,
        parent: Option<i64>,
    },
    /// A heartbeat's metrics (not kept in the ring: a newer sample replaces it).
    Metrics { server_id: i64, metrics: Value },
}

impl Change {
    /// The JSON `data` of the event.
    pub fn data(&self) -> Value {
        match self {
            Change::Entity {
                kind, id, parent, ..
            } => {
                let mut v = json!({ "kind": kind.as_str(), "id": id });
                if let Some(p) = parent {
                    v["workflow_id"] = json!(p);
                }
                v
            }
            Change::Metrics { server_id, metrics } => {
                json!({ "kind": "metrics", "id": server_id, "metrics": metrics })
            }
        }
    }
}

/// Where a resuming stream starts.
#[derive(Debug)]
pub enum Resume {
    /// Every change after the given id, in order.
    Replay(Vec<Change>),
    /// The id is from another boot or older than the ring: refetch everything.
    Reset,
}

/// What this controller tells the controllers sharing its database (see `cluster`).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A committed change, for their feeds.
    Changed {
        kind: Kind,
        id: i64,
        parent: Option<i64>,
    },
    /// A run's output grew (its followers there read the store).
    Output(i64),
    /// Whoever drives this run: cancel it.
    Cancel(i64),
    /// Whoever holds this server's session: end it, the server was removed or
    /// re-enrolled (`reason` goes to the agent).
    Remove { server_id: i64, reason: String },
}

#[derive(Debug)]
pub struct Feed {
    boot: u32,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Change>,
    /// Set when other controllers may be listening.
    outbox: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Notice>>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    recent: VecDeque<Change>,
}

impl Default for Feed {
    fn default() -> Self {
        let mut b = [0u8; 4];
        // A failed draw still yields a usable (if predictable) boot id; it only tells boots
        // apart, it guards nothing.
        let _ = getrandom::fill(&mut b);
        let (tx, _) = broadcast::channel(CHANNEL);
        Feed {
            boot: u32::from_le_bytes(b) & 0x7fff_ffff,
            inner: Mutex::new(Inner {
                next: 1,
                recent: VecDeque::with_capacity(RING),
            }),
            tx,
            outbox: std::sync::OnceLock::new(),
        }
    }
}

impl Feed {
    /// Announces that `kind` `id` changed.
    pub fn changed(&self, kind: Kind, id: i64) {
        self.announce(kind, id, None);
    }

    /// Announces that run `id` of workflow `workflow_id` changed.
    pub fn run_changed(&self, id: i64, workflow_id: i64) {
        self.announce(Kind::Run, id, Some(workflow_id));
    }

    /// From now on, notices for the other controllers go to `outbox`.
    pub fn set_outbox(&self, outbox: tokio::sync::mpsc::UnboundedSender<Notice>) {
        let _ = self.outbox.set(outbox);
    }

    /// Tells the other controllers (if any listen).
    pub fn tell(&self, notice: Notice) {
        if let Some(o) = self.outbox.get() {
            let _ = o.send(notice);
        }
    }

    /// A change another controller committed: announced here, not told back.
    pub fn changed_elsewhere(&self, kind: Kind, id: i64, parent: Option<i64>) {
        self.publish(kind, id, parent);
    }

    fn announce(&self, kind: Kind, id: i64, parent: Option<i64>) {
        self.tell(Notice::Changed { kind, id, parent });
        self.publish(kind, id, parent);
    }

    fn publish(&self, kind: Kind, id: i64, parent: Option<i64>) {
        // Numbered and sent under the lock so streams see changes in ring order.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let change = Change::Entity {
            seq: inner.next,
            kind,
            id,
            parent,
        };
        inner.next += 1;
        if inner.recent.len() == RING {
            inner.recent.pop_front();
        }
        inner.recent.push_back(change.clone());
        // No receivers is not an error: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Announces a heartbeat's metrics.
    pub fn metrics(&self, server_id: i64, metrics: Value) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Change::Metrics { server_id, metrics });
        }
    }

    /// The sequence number of the newest change (where a stream that starts now resumes
    /// from; its SSE id is `event_id` of it).
    pub fn current(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).next - 1
    }

    /// The SSE id of a change in the ring.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.boot)
    }

    /// Subscribes, and says what a stream resuming after `last_event_id` missed. The
    /// subscription is taken first, so nothing falls between the replay and the live feed
    /// (a change in both is skipped by its sequence number).
    pub fn subscribe(&self, last_event_id: Option<&str>) -> (broadcast::Receiver<Change>, Resume) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let Some(last) = last_event_id else {
            return (rx, Resume::Replay(Vec::new()));
        };
        let seq = last
            .split_once('-')
            .filter(|(boot, _)| boot.parse::<u32>().ok() == Some(self.boot))
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        let Some(seq) = seq.filter(|s| *s < inner.next) else {
            return (rx, Resume::Reset);
        };
        let oldest = inner.recent.front().map_or(inner.next, |c| match c {
            Change::Entity { seq, .. } => *seq,
            Change::Metrics { .. } => inner.next,
        });
        // A gap: what came right after `seq` has left the ring.
        if seq + 1 < oldest {
            return (rx, Resume::Reset);
        }
        let missed = inner
            .recent
            .iter()
            .filter(|c| matches!(c, Change::Entity { seq: s, .. } if *s > seq))
            .cloned()
            .collect();
        (rx, Resume::Replay(missed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(r: Resume) -> Vec<u64> {
        match r {
            Resume::Replay(v) => v
                .iter()
                .filter_map(|c| match c {
                    Change::Entity { seq, .. } => Some(*seq),
                    Change::Metrics { .. } => None,
                })
                .collect(),
            Resume::Reset => vec![u64::MAX],
        }
    }

    #[test]
    fn a_stream_resumes_after_its_last_event() {
        let feed = Feed::default();
        for id in 1..=5 {
            feed.changed(Kind::Server, id);
        }
        let last = feed.event_id(3);
        assert_eq!(seqs(feed.subscribe(Some(&last)).1), vec![4, 5]);
        assert_eq!(
            seqs(feed.subscribe(Some(&feed.event_id(5))).1),
            Vec::<u64>::new()
        );
        assert!(seqs(feed.subscribe(None).1).is_empty());
    }

    #[test]
    fn ids_from_another_boot_the_future_or_beyond_the_ring_reset() {
        let feed = Feed::default();
        feed.changed(Kind::Run, 1);
        let other = format!("{}-1", feed.boot.wrapping_add(1) & 0x7fff_ffff);
        assert!(matches!(feed.subscribe(Some(&other)).1, Resume::Reset));
        assert!(matches!(
            feed.subscribe(Some(&feed.event_id(99))).1,
            Resume::Reset
        ));
        assert!(matches!(feed.subscribe(Some("junk")).1, Resume::Reset));
        for id in 0..(RING as i64 + 10) {
            feed.changed(Kind::Server, id);
        }
        assert!(matches!(
            feed.subscribe(Some(&feed.event_id(2))).1,
            Resume::Reset
        ));
        // The newest still resume.
        let newest = RING as u64 + 11;
        assert_eq!(
            seqs(feed.subscribe(Some(&feed.event_id(newest - 1))).1),
            vec![newest]
        );
    }

    #[tokio::test]
    async fn live_changes_reach_subscribers_in_order() {
        let feed = Feed::default();
        let (mut rx, _) = feed.subscribe(None);
        feed.changed(Kind::Workflow, 7);
        feed.run_changed(9, 7);
        feed.metrics(3, json!({"load1": 0.5}));
        let a = rx.recv().await.expect("a").data();
        let b = rx.recv().await.expect("b").data();
        let c = rx.recv().await.expect("c").data();
        assert_eq!(a, json!({"kind": "workflow", "id": 7}));
        assert_eq!(b, json!({"kind": "run", "id": 9, "workflow_id": 7}));
        assert_eq!(c["kind"], "metrics");
    }
}
