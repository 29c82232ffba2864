//! Servers' deploy keys (the SSH key `git` steps fetch with): generated when a server is
//! created (and at start for servers from before that), sealed at rest, delivered to the
//! server's agent. Reading a key never creates one; only creation and rotation write.

use crate::crypto::MasterKey;
use crate::gateway::{CallError, Fleet};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum DeployKeyError {
    #[error("server {0} not found")]
    NotFound(i64),
    #[error("cannot generate a deploy key: {0}")]
    Generate(String),
    #[error(transparent)]
    Seal(#[from] crate::crypto::KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A deploy key's public half as shown to users.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub openssh: String,
    pub fingerprint: Option<String>,
}

/// Generates, seals and delivers deploy keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeployKeys {
    store: Store,
    key: Arc<MasterKey>,
    agents: Arc<Fleet>,
    /// Deliveries run here, so a shutdown waits for them.
    tasks: TaskTracker,
}

impl DeployKeys {
    pub fn new(
        store: Store,
        key: Arc<MasterKey>,
        agents: Arc<Fleet>,
        tasks: TaskTracker,
    ) -> DeployKeys {
        DeployKeys {
            store,
            key,
            agents,
            tasks,
        }
    }

    /// The server's deploy key, if it has one.
    pub async fn get(&self, server_id: i64) -> Result<Option<PublicKey>, StoreError> {
        Ok(self
            .store
            .deploy_key(server_id)
            .await?
            .map(|(public, _)| PublicKey {
                fingerprint: crate::ssh::public_fingerprint(&public),
                openssh: public,
            }))
    }

    /// Gives the server a key if it has none (`rotate`: a new one in any case), and sends
    /// it to the agent in the background (an offline agent gets it when it next attaches).
    pub async fn create(&self, server_id: i64, rotate: bool) -> Result<PublicKey, DeployKeyError> {
        let server = self
            .store
            .server(server_id)
            .await?
            .ok_or(DeployKeyError::NotFound(server_id))?;
        if !rotate {
            if let Some(k) = self.get(server_id).await? {
                return Ok(k);
            }
        }
        let (public, private) =
            crate::ssh::generate_deploy_key(&format!("mezzanine@{}", server.name))
                .map_err(DeployKeyError::Generate)?;
        let sealed = self.key.seal(&context(server_id), private.as_bytes())?;
        // Without `rotate`, a key another request stored first wins (both then agree).
        self.store
            .set_deploy_key(server_id, &public, &sealed, !rotate)
            .await?;
        self.deliver_later(server_id);
        self.get(server_id)
            .await?
            .ok_or(DeployKeyError::NotFound(server_id))
    }

    /// Sends the key in the background; a failure is logged (the agent gets it when it
    /// next attaches).
    pub fn deliver_later(&self, server_id: i64) {
        let keys = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = keys.deliver(server_id).await {
                tracing::warn!(server_id, error = %e, "could not deliver the deploy key");
            }
        });
    }

    /// Sends the server's deploy key (if it has one) to its agent, which keeps it for git
    /// over SSH. A server that is offline gets it when it next attaches.
    pub async fn deliver(&self, server_id: i64) -> Result<(), String> {
        use mezzanine_proto::v1::{command, reply, DeployKey};
        let Some((_, sealed)) = self
            .store
            .deploy_key(server_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let private = self
            .key
            .open(&context(server_id), &sealed)
            .map_err(|e| e.to_string())?;
        let body = command::Body::DeployKey(DeployKey {
            private_key_openssh: String::from_utf8(private).map_err(|e| e.to_string())?,
        });
        match self
            .agents
            .call(server_id, body, Duration::from_secs(10))
            .await
        {
            Ok(reply::Body::Ack(_)) | Err(CallError::Offline) => Ok(()),
            Ok(_) => Err("the agent answered the deploy key with something else".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// At start: servers created before keys were made with the server get theirs now.
    pub async fn backfill(&self) {
        let servers = match self.store.servers().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot list servers to give them deploy keys");
                return;
            }
        };
        for s in servers {
            match self.get(s.id).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    if let Err(e) = self.create(s.id, false).await {
                        tracing::error!(server_id = s.id, error = %e, "cannot create a deploy key");
                    }
                }
                Err(e) => {
                    tracing::error!(server_id = s.id, error = %e, "cannot read a deploy key")
                }
            }
        }
    }
}

/// The sealing context of server `server_id`'s deploy key.
fn context(server_id: i64) -> String {
    format!("servers.deploy_key:{server_id}")
}
