//! Servers' deploy keys (the SSH key `git` steps fetch with): generated when a server is
//! created (and at start for servers from before that), sealed at rest, delivered to the
//! server's agent. Reading a key never creates one; only creation and rotation write.

use crate::state::AppState;
use crate::store::StoreError;

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

/// The server's deploy key, if it has one.
pub async fn get(state: &AppState, server_id: i64) -> Result<Option<PublicKey>, StoreError> {
    Ok(state
        .store()
        .deploy_key(server_id)
        .await?
        .map(|(public, _)| PublicKey {
            fingerprint: crate::ssh::public_fingerprint(&public),
            openssh: public,
        }))
}

/// Gives the server a key if it has none (`rotate`: a new one in any case), and sends it
/// to the agent in the background (an offline agent gets it when it next attaches).
pub async fn create(
    state: &AppState,
    server_id: i64,
    rotate: bool,
) -> Result<PublicKey, DeployKeyError> {
    let server = state
        .store()
        .server(server_id)
        .await?
        .ok_or(DeployKeyError::NotFound(server_id))?;
    if !rotate {
        if let Some(k) = get(state, server_id).await? {
            return Ok(k);
        }
    }
    let (public, private) = crate::ssh::generate_deploy_key(&format!("mezzanine@{}", server.name))
        .map_err(DeployKeyError::Generate)?;
    let sealed = state.key().seal(
        &crate::ssh::deploy_key_context(server_id),
        private.as_bytes(),
    )?;
    // Without `rotate`, a key another request stored first wins (both then agree).
    state
        .store()
        .set_deploy_key(server_id, &public, &sealed, !rotate)
        .await?;
    let deliver = state.clone();
    state.tasks().spawn(async move {
        if let Err(e) = crate::gateway::deliver_deploy_key(&deliver, server_id).await {
            tracing::warn!(server_id, error = %e, "could not deliver the deploy key");
        }
    });
    get(state, server_id)
        .await?
        .ok_or(DeployKeyError::NotFound(server_id))
}

/// At start: servers created before keys were made with the server get theirs now.
pub async fn backfill(state: &AppState) {
    let servers = match state.store().servers().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot list servers to give them deploy keys");
            return;
        }
    };
    for s in servers {
        match get(state, s.id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Err(e) = create(state, s.id, false).await {
                    tracing::error!(server_id = s.id, error = %e, "cannot create a deploy key");
                }
            }
            Err(e) => tracing::error!(server_id = s.id, error = %e, "cannot read a deploy key"),
        }
    }
}
