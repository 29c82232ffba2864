//! Several controllers on one database. Each serving process has a row in `controllers`
//! that it renews every `RENEW`; that renewal is its lease on everything it holds (agent
//! sessions, runs, rollouts). Every controller also reaps: what a controller that
//! stopped renewing (for `fleet::STALE`) held is taken over — its servers are marked
//! offline until their agents reattach elsewhere, its runs are resumed here, its rollouts
//! end as failed. One controller, chosen by PostgreSQL's advisory lock (`Store::try_lead`),
//! runs the fleet-wide background work.
//!
//! Controllers tell each other what changed through PostgreSQL's LISTEN/NOTIFY on one
//! channel: committed changes (for `GET /api/events` everywhere), run output (to wake
//! followers, who read the store), cancels of runs driven elsewhere, and removals of
//! servers whose session another controller holds. The store stays the source of truth;
//! a lost notice delays a follower by one poll, never loses a line.
//!
//! With SQLite there is one controller: it has its row (forgetting its previous
//! process's at start) and the lead, and renews, reaps, relays and notifies nothing.

use crate::changes::{Kind, Notice};
use crate::gateway::fleet::fresh_since;
use crate::state::AppState;
use crate::store::Engine;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a controller renews its lease and reaps the others'.
pub const RENEW: Duration = Duration::from_secs(2);
/// The NOTIFY channel.
const CHANNEL: &str = "mezzanine";
/// PostgreSQL's limit on a payload is 8000 bytes; batches stay under it.
const PAYLOAD_MAX: usize = 7000;
/// Rows of controllers gone this long are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Enters this controller in the table and, on a shared database, starts telling the
/// others what changes here. `peer`: host:port where the others reach its gateway.
pub async fn join(state: &AppState, peer: &str) -> Result<(), crate::store::StoreError> {
    let store = state.store();
    store
        .register_controller(peer, crate::time::now_ms())
        .await?;
    if store.engine() == Engine::Sqlite {
        // One controller per SQLite file: any other row is this one's previous process.
        store.forget_controllers(i64::MAX).await?;
    }
    let released = store
        .release_orphaned_servers(
            fresh_since(),
            true,
            "its controller stopped",
            crate::time::now_secs(),
        )
        .await?;
    if !released.is_empty() {
        tracing::info!(
            count = released.len(),
            "servers whose controller is gone marked offline"
        );
    }
    if store.engine() == Engine::Postgres {
        let (tx, rx) = mpsc::unbounded_channel();
        store.changes().set_outbox(tx);
        state.tasks().spawn(publish(state.clone(), rx));
        state.tasks().spawn(listen(state.clone()));
    }
    tracing::info!(
        controller = store.controller_id(),
        peer,
        "controller joined"
    );
    Ok(())
}

/// Renews the lease, reaps what gone controllers held and takes the lead when it is
/// free, until shutdown; then leaves the table so the others take over at once.
pub async fn run(state: AppState, lead_tasks: impl FnOnce(&AppState) + Send + 'static) {
    let closing = state.closing().clone();
    let store = state.store().clone();
    if store.engine() == Engine::Sqlite {
        // The only controller of its file: it leads, and has nobody to renew a lease for
        // or to reap (a write every 2 s would only contend with the run engine's).
        state.set_living_controllers([store.controller_id().to_owned()].into());
        lead_tasks(&state);
        return;
    }
    let mut lead_tasks = Some(lead_tasks);
    let mut tick = tokio::time::interval(RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut forgotten_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = closing.cancelled() => break,
        }
        match store.renew_controller(crate::time::now_ms()).await {
            Ok(true) => {}
            Ok(false) => {
                // Taken for dead (a long stall): what it held may have moved; its
                // sessions here still hold and re-mark themselves as they attach again.
                tracing::warn!("this controller's row was reaped by another; entering again");
                let peer = state.gateway_peer();
                if let Err(e) = store
                    .register_controller(&peer, crate::time::now_ms())
                    .await
                {
                    tracing::warn!(error = %e, "cannot re-enter the controllers table");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew this controller's lease");
                continue;
            }
        }
        match store.living_controllers(fresh_since()).await {
            Ok(rows) => state.set_living_controllers(rows.into_iter().map(|c| c.id).collect()),
            Err(e) => tracing::warn!(error = %e, "cannot read the living controllers"),
        }
        reap(&state).await;
        if lead_tasks.is_some() {
            match store.try_lead().await {
                Ok(true) => {
                    tracing::info!("this controller leads the fleet-wide background work");
                    if let Some(start) = lead_tasks.take() {
                        start(&state);
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot ask for the lead"),
            }
        }
        if forgotten_at.elapsed() > FORGET_AFTER / 4 {
            forgotten_at = tokio::time::Instant::now();
            let before = crate::time::now_ms() - FORGET_AFTER.as_millis() as i64;
            if let Err(e) = store.forget_controllers(before).await {
                tracing::debug!(error = %e, "cannot forget long-gone controllers");
            }
        }
    }
    if let Err(e) = store.retire_controller().await {
        tracing::warn!(error = %e, "cannot leave the controllers table");
    }
}

/// Takes over what controllers gone quiet held.
async fn reap(state: &AppState) {
    let store = state.store();
    match store
        .release_orphaned_servers(
            fresh_since(),
            false,
            "its controller stopped answering",
            crate::time::now_secs(),
        )
        .await
    {
        Ok(ids) if !ids.is_empty() => {
            tracing::info!(
                count = ids.len(),
                "servers of a controller gone quiet marked offline"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot release the servers of gone controllers"),
    }
    crate::deploy::adopt_orphans(state.deploys(), false).await;
    state.pools().adopt_orphaned_rollouts(false).await;
}

/// One NOTIFY payload: `{o: origin, c: [[kind, id, parent]], w: [run], x: [run],
/// d: [[server, reason]]}`.
#[derive(Default)]
struct Batch {
    changes: Vec<Value>,
    output: Vec<i64>,
    cancel: Vec<i64>,
    remove: Vec<Value>,
    size: usize,
}

impl Batch {
    fn add(&mut self, n: Notice) {
        let item_len = match n {
            Notice::Changed { kind, id, parent } => {
                self.changes.push(json!([kind.as_str(), id, parent]));
                32
            }
            Notice::Output(run) => {
                if self.output.contains(&run) {
                    return;
                }
                self.output.push(run);
                12
            }
            Notice::Cancel(run) => {
                self.cancel.push(run);
                12
            }
            Notice::Remove { server_id, reason } => {
                let len = reason.len() + 24;
                self.remove.push(json!([server_id, reason]));
                len
            }
        };
        self.size += item_len;
    }

    fn payload(&self, origin: &str) -> String {
        json!({
            "o": origin,
            "c": self.changes,
            "w": self.output,
            "x": self.cancel,
            "d": self.remove,
        })
        .to_string()
    }
}

/// Sends what this controller tells the others, batched: whatever queued while the
/// previous NOTIFY was in flight goes in the next.
async fn publish(state: AppState, mut rx: mpsc::UnboundedReceiver<Notice>) {
    let store = state.store().clone();
    let origin = store.controller_id().to_owned();
    let closing = state.closing().clone();
    loop {
        let first = tokio::select! {
            n = rx.recv() => n,
            () = closing.cancelled() => None,
        };
        let Some(first) = first else { return };
        let mut batch = Batch::default();
        batch.add(first);
        while batch.size < PAYLOAD_MAX {
            match rx.try_recv() {
                Ok(n) => batch.add(n),
                Err(_) => break,
            }
        }
        if let Err(e) = store.notify(CHANNEL, &batch.payload(&origin)).await {
            tracing::warn!(error = %e, "cannot notify the other controllers");
        }
    }
}

/// Applies what the other controllers tell, until shutdown.
async fn listen(state: AppState) {
    let closing = state.closing().clone();
    let me = state.store().controller_id().to_owned();
    let mut listener = loop {
        match state.store().listener(CHANNEL).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen to the other controllers; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    () = closing.cancelled() => return,
                }
            }
        }
    };
    loop {
        let got = tokio::select! {
            n = listener.recv() => n,
            () = closing.cancelled() => return,
        };
        match got {
            Ok(n) => apply(&state, &me, n.payload()).await,
            Err(e) => {
                // The listener reconnects on its next receive; notices sent meanwhile are
                // lost, which costs followers one poll and feeds a refetch at most.
                tracing::warn!(error = %e, "lost the connection listening to other controllers");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = closing.cancelled() => return,
                }
            }
        }
    }
}

async fn apply(state: &AppState, me: &str, payload: &str) {
    let Ok(v) = serde_json::from_str::<Value>(payload) else {
        tracing::warn!("ignored a malformed notice from another controller");
        return;
    };
    if v["o"].as_str() == Some(me) {
        return;
    }
    let feed = state.store().changes();
    for c in v["c"].as_array().into_iter().flatten() {
        if let (Some(kind), Some(id)) = (c[0].as_str().and_then(Kind::parse), c[1].as_i64()) {
            feed.changed_elsewhere(kind, id, c[2].as_i64());
        }
    }
    for run in v["w"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
    {
        state.deploys().wake(run);
    }
    for run in v["x"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
    {
        if state.deploys().signal_cancel(run) {
            tracing::info!(run_id = run, "run cancelled from another controller");
        }
    }
    let removals: Vec<(i64, String)> = v["d"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d[0].as_i64()?, d[1].as_str()?.to_owned())))
        .collect();
    if !removals.is_empty() {
        let registry = &state.gateway().registry;
        // The removed certificates, so they are refused here too at the next handshake.
        match state.store().revoked_serials(crate::time::now_secs()).await {
            Ok(serials) => registry.revoke(serials),
            Err(e) => tracing::warn!(error = %e, "cannot reload revoked certificates"),
        }
        for (server_id, reason) in removals {
            registry.remove(server_id, &reason);
        }
    }
}
