//! Agent upgrades from the controller: the agent binary this controller serves (its
//! version read from the binary's marker, its architecture from its ELF header) sent to
//! an agent over its session in acknowledged pieces, one server at a time or rolling over
//! many. The agent tries the new binary and keeps it only when it attaches
//! (`agent/src/upgrade.rs`); the upgrade ends when the agent attaches again
//! (`Store::set_server_online`): succeeded, rolled back, or failed.

use crate::gateway::{CallError, Fleet};
use crate::install::{AgentBuild, Installs};
use crate::store::{Store, StoreError};
use mezzanine_proto::v1::{command, UpgradeChunk};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Size of one piece on the wire (well inside gRPC's 4 MiB message limit).
const PIECE: usize = 1024 * 1024;
/// How long an agent has, after the binary arrived, to come back (its trial bound of
/// 60 s, plus a reconnect): past this the upgrade is recorded as failed.
pub const COME_BACK: Duration = Duration::from_secs(150);
/// Servers one rolling upgrade may touch at once.
pub const MAX_BATCH: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("server not found")]
    NotFound,
    /// The server's or the binary's state forbids it now (409).
    #[error("{0}")]
    Conflict(String),
    /// The agent refused or failed the transfer (502).
    #[error("{0}")]
    Agent(String),
    /// The agent did not answer in time (504).
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An upgrade that was handed over to the agent.
#[derive(Debug, Clone)]
pub struct Started {
    pub server_id: i64,
    pub from: Option<String>,
    pub to: String,
}

/// Agent upgrades. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upgrades(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: Store,
    agents: Arc<Fleet>,
    installs: Installs,
    tasks: TaskTracker,
}

impl Upgrades {
    pub fn new(
        store: Store,
        agents: Arc<Fleet>,
        installs: Installs,
        tasks: TaskTracker,
    ) -> Upgrades {
        Upgrades(Arc::new(Inner {
            store,
            agents,
            installs,
            tasks,
        }))
    }

    /// The version this controller's agent binary carries (to tell outdated agents), or
    /// `None` when it has none (no binary, or no marker).
    pub async fn served_version(&self) -> Option<String> {
        self.0.installs.agent_build().await.ok()?.version
    }

    async fn build(&self) -> Result<(AgentBuild, String), UpgradeError> {
        let build = self
            .0
            .installs
            .agent_build()
            .await
            .map_err(|e| UpgradeError::Conflict(e.to_string()))?;
        let version = build.version.clone().ok_or_else(|| {
            UpgradeError::Conflict(format!(
                "the agent binary {} carries no version marker: it is not a Mezzanine agent this controller can upgrade to",
                self.0.installs.agent_binary().display()
            ))
        })?;
        Ok((build, version))
    }

    /// Sends this controller's agent binary to server `id`'s agent. Returns once the
    /// agent has it (checked); the upgrade itself ends when the agent attaches again.
    pub async fn start(&self, id: i64, force: bool) -> Result<Started, UpgradeError> {
        let (build, to) = self.build().await?;
        self.start_with(id, force, &build, &to).await
    }

    async fn start_with(
        &self,
        id: i64,
        force: bool,
        build: &AgentBuild,
        to: &str,
    ) -> Result<Started, UpgradeError> {
        let st = &self.0.store;
        let server = st.server(id).await?.ok_or(UpgradeError::NotFound)?;
        if !self.0.agents.is_attached(id).await {
            return Err(UpgradeError::Conflict(format!(
                "server {} is offline: an agent is upgraded over its session",
                server.name
            )));
        }
        let arch = server
            .facts
            .as_ref()
            .and_then(|f| f["arch"].as_str())
            .unwrap_or("");
        match build.arch {
            Some(ours) if ours == arch => {}
            Some(ours) => {
                return Err(UpgradeError::Conflict(format!(
                    "this controller has an agent binary for {ours}; server {} is {}",
                    server.name,
                    if arch.is_empty() {
                        "of an unknown architecture"
                    } else {
                        arch
                    }
                )))
            }
            None => {
                return Err(UpgradeError::Conflict(format!(
                    "the agent binary {} is not an ELF executable for a known architecture",
                    self.0.installs.agent_binary().display()
                )))
            }
        }
        if server.agent_version.as_deref() == Some(to) && !force {
            return Err(UpgradeError::Conflict(format!(
                "server {} already runs agent {to}",
                server.name
            )));
        }
        let now = crate::time::now_secs();
        let stale = now - COME_BACK.as_secs() as i64;
        if !st
            .begin_agent_upgrade(id, server.agent_version.as_deref(), to, now, stale)
            .await?
        {
            return Err(UpgradeError::Conflict(format!(
                "an upgrade of server {}'s agent is under way",
                server.name
            )));
        }
        if let Err(e) = self.send(id, build, to, force).await {
            let _ = st
                .end_agent_upgrade(id, "failed", &e.to_string(), crate::time::now_secs())
                .await;
            return Err(e);
        }
        tracing::info!(server_id = id, from = ?server.agent_version, to, "agent binary delivered; the agent is trying it");
        // An agent that never comes back (or comes back elsewhere) does not leave the
        // upgrade "under way" for ever.
        let store = st.clone();
        self.0.tasks.spawn(async move {
            tokio::time::sleep(COME_BACK).await;
            let why = format!(
                "the agent did not attach again within {} s of receiving the binary",
                COME_BACK.as_secs()
            );
            if let Err(e) = store
                .end_agent_upgrade(id, "failed", &why, crate::time::now_secs())
                .await
            {
                tracing::warn!(server_id = id, error = %e, "cannot record an upgrade's end");
            }
        });
        Ok(Started {
            server_id: id,
            from: server.agent_version,
            to: to.to_owned(),
        })
    }

    async fn send(
        &self,
        id: i64,
        build: &AgentBuild,
        to: &str,
        force: bool,
    ) -> Result<(), UpgradeError> {
        let path = self.0.installs.agent_binary().clone();
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            UpgradeError::Conflict(format!(
                "cannot read the agent binary {}: {e}",
                path.display()
            ))
        })?;
        // The file may have changed since its facts were read: send what was checked.
        let sum = hex::encode(crate::crypto::sha256(&bytes));
        if sum != build.sha256 {
            return Err(UpgradeError::Conflict(format!(
                "the agent binary {} changed while being read; try again",
                path.display()
            )));
        }
        let total = bytes.len() as u64;
        let mut offset = 0usize;
        loop {
            let end = (offset + PIECE).min(bytes.len());
            let piece = UpgradeChunk {
                version: to.to_owned(),
                sha256_hex: sum.clone(),
                total_bytes: total,
                offset: offset as u64,
                data: bytes[offset..end].to_vec(),
                last: end == bytes.len(),
                force,
            };
            self.0
                .agents
                .call(
                    id,
                    command::Body::UpgradeChunk(piece),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|e| match e {
                    // Deploy steps held: the server's state, not a fault (409).
                    CallError::Agent(m) if m.contains("deploy step") => UpgradeError::Conflict(m),
                    CallError::Agent(m) => UpgradeError::Agent(format!("the agent refused the upgrade: {m}")),
                    CallError::Offline | CallError::Disconnected => UpgradeError::Conflict(format!(
                        "the agent went offline during the transfer ({offset} of {total} bytes sent)"
                    )),
                    CallError::Timeout(_) | CallError::Busy => UpgradeError::Timeout(e.to_string()),
                })?;
            if end == bytes.len() {
                return Ok(());
            }
            offset = end;
        }
    }

    /// Upgrades `ids` in order, `batch` at a time: each batch is handed over, then
    /// waited for (until every agent attached again, or `COME_BACK`). The first upgrade
    /// that does not succeed stops the rest, which are recorded as skipped with why.
    /// Returns the servers it will try, after those it will not (with why) were taken
    /// out; the rollout goes on in the background.
    pub async fn rolling(
        &self,
        ids: Vec<i64>,
        batch: usize,
        force: bool,
    ) -> Result<(Vec<i64>, Vec<(i64, String)>), UpgradeError> {
        let (build, to) = self.build().await?;
        let st = &self.0.store;
        let mut chosen = Vec::new();
        let mut left_out = Vec::new();
        for id in ids {
            let Some(s) = st.server(id).await? else {
                left_out.push((id, "no such server".to_owned()));
                continue;
            };
            if s.agent_version.as_deref() == Some(to.as_str()) && !force {
                left_out.push((id, format!("already runs agent {to}")));
            } else if !self.0.agents.is_attached(id).await {
                left_out.push((id, "offline".to_owned()));
            } else {
                chosen.push(id);
            }
        }
        let me = self.clone();
        let order = chosen.clone();
        let batch = batch.clamp(1, MAX_BATCH);
        self.0.tasks.spawn(async move {
            me.roll(order, batch, force, build, to).await;
        });
        Ok((chosen, left_out))
    }

    async fn roll(
        &self,
        order: Vec<i64>,
        batch: usize,
        force: bool,
        build: AgentBuild,
        to: String,
    ) {
        let st = &self.0.store;
        let mut stop: Option<String> = None;
        for group in order.chunks(batch) {
            if let Some(why) = &stop {
                for id in group {
                    let _ = st
                        .skip_agent_upgrade(*id, &to, why, crate::time::now_secs())
                        .await;
                }
                continue;
            }
            let started = futures_util::future::join_all(
                group
                    .iter()
                    .map(|id| self.start_with(*id, force, &build, &to)),
            )
            .await;
            for (id, r) in group.iter().zip(&started) {
                if let Err(e) = r {
                    tracing::warn!(server_id = id, error = %e, "rolling agent upgrade: not started");
                    stop.get_or_insert_with(|| {
                        format!("not attempted: the upgrade of server {id} failed to start ({e})")
                    });
                }
            }
            for r in started.into_iter().flatten() {
                match self.wait(r.server_id).await {
                    Some(status) if status == "succeeded" => {}
                    other => {
                        let status = other.unwrap_or_else(|| "unknown".into());
                        stop.get_or_insert_with(|| {
                            format!(
                                "not attempted: the upgrade of server {} ended {status}",
                                r.server_id
                            )
                        });
                    }
                }
            }
        }
    }

    /// Waits until server `id`'s upgrade is no longer under way; its end status.
    async fn wait(&self, id: i64) -> Option<String> {
        let deadline = tokio::time::Instant::now() + COME_BACK + Duration::from_secs(5);
        loop {
            let status = match self.0.store.server(id).await {
                Ok(Some(s)) => s.upgrade.map(|u| u.status),
                _ => None,
            };
            match status.as_deref() {
                Some("upgrading") if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                _ => return status,
            }
        }
    }
}
