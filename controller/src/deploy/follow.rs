//! The live viewer protocol, without HTTP: a viewer gets a run's stored events after the
//! one it names, then the live ones as they are recorded, each event exactly once and in
//! order, until the run's `end`. A viewer the run left behind (see `LiveRun::publish`) is
//! told so and continues from the store. The HTTP layer only encodes what this yields.

use super::{is_terminal, Deploys, Viewer};
use crate::store::RunEvent;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Stored events read per query while catching up.
const REPLAY_BATCH: i64 = 2000;
/// How often a viewer of a run not live here (queued, or driven by another controller)
/// looks again when nothing woke it.
const QUEUED_POLL: Duration = Duration::from_millis(200);
/// A viewer that hears nothing this long gets `Idle` (the HTTP layer sends a keep-alive).
const IDLE: Duration = Duration::from_secs(15);

/// What a viewer receives.
#[derive(Debug)]
pub enum Follow {
    /// Events in order, none at or below the last one delivered.
    Events(Arc<Vec<RunEvent>>),
    /// The run stopped waiting for this viewer: live output was skipped; what follows
    /// comes from the store.
    LeftBehind,
    /// Nothing happened for a while.
    Idle,
}

/// Follows run `run_id` from after event `after`, handing each piece to `deliver` until
/// the run's `end` has been delivered, the viewer leaves (`deliver` answers false, or
/// `left` resolves — noticed even while nothing is delivered), or the store fails.
pub async fn follow<F, Fut>(
    engine: &Deploys,
    run_id: i64,
    mut after: i64,
    left: impl Future<Output = ()>,
    mut deliver: F,
) where
    F: FnMut(Follow) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut left = std::pin::pin!(left);
    // Subscribe before reading the store: events are stored before they are published,
    // so nothing falls between the two.
    let subscribe = |engine: &Deploys| engine.live(run_id).map(|l| l.subscribe());
    let mut live: Option<Viewer> = subscribe(engine);
    // Output stored by another controller driving the run wakes this viewer at once;
    // the poll below is the backstop.
    let mut woken = engine.wakes();
    loop {
        // Catch up from the store.
        loop {
            let Ok(batch) = engine.store().run_events(run_id, after, REPLAY_BATCH).await else {
                return;
            };
            let Some(last) = batch.last() else { break };
            after = last.seq;
            let ended = batch.iter().any(|e| e.kind == "end");
            if !deliver(Follow::Events(Arc::new(batch))).await || ended {
                return;
            }
        }
        let Some(rx) = live.as_mut() else {
            // Not live here: a queued run starts later; look again shortly.
            match engine.store().run(run_id).await {
                Ok(Some(r)) if !is_terminal(&r.status) => {}
                _ => return,
            }
            let wake = async {
                loop {
                    match woken.recv().await {
                        Ok(id) if id == run_id => return,
                        Ok(_) => {}
                        // Missed some: look anyway.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(QUEUED_POLL) => {}
                () = wake => {}
                () = &mut left => return,
            }
            live = subscribe(engine);
            continue;
        };
        loop {
            let waited = tokio::select! {
                w = tokio::time::timeout(IDLE, rx.recv()) => w,
                () = &mut left => return,
            };
            let Ok(next) = waited else {
                if !deliver(Follow::Idle).await {
                    return;
                }
                continue;
            };
            let Some(batch) = next else {
                // Left behind, or the run ended: what is left is in the store.
                if rx.left_behind() && !deliver(Follow::LeftBehind).await {
                    return;
                }
                live = None;
                break;
            };
            // A batch is in order; only one that overlaps the replay is cut (copying every
            // live batch cost a third of the throughput of a chatty step).
            let seen = batch.iter().take_while(|e| e.seq <= after).count();
            let Some(last) = batch.last().filter(|_| seen < batch.len()) else {
                continue;
            };
            after = last.seq;
            let ended = batch.iter().any(|e| e.kind == "end");
            let fresh = if seen == 0 {
                batch
            } else {
                Arc::new(batch[seen..].to_vec())
            };
            if !deliver(Follow::Events(fresh)).await || ended {
                return;
            }
        }
    }
}
