//! What a server downloads to install the agent: `install.sh` (rendered with this
//! controller's URL and the agent binary's SHA-256) and the agent binary itself, plus
//! the one-liner that fetches the script and checks its SHA-256 before running it.

use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Mutex;
use std::time::SystemTime;

const TEMPLATE: &str = include_str!("../../installer/install.sh");

/// The agent binary's digest, cached against its size and modification time.
#[derive(Debug, Default)]
pub struct AgentDigest(Mutex<Option<(u64, Option<SystemTime>, String)>>);

#[derive(Debug, thiserror::Error)]
#[error(
    "the agent binary {path} is not available on this controller ({reason}); set --agent-binary"
)]
pub struct MissingAgent {
    path: String,
    reason: String,
}

async fn agent_sha256(state: &AppState) -> Result<String, MissingAgent> {
    let path = state.config().agent_binary.clone();
    let missing = |reason: String| MissingAgent {
        path: path.display().to_string(),
        reason,
    };
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| missing(e.to_string()))?;
    let key = (meta.len(), meta.modified().ok());
    let cache = state.agent_digest();
    {
        let guard = cache.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((len, mtime, sum)) = guard.as_ref() {
            if (*len, *mtime) == key {
                return Ok(sum.clone());
            }
        }
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| missing(e.to_string()))?;
    let sum = tokio::task::spawn_blocking(move || hex::encode(crate::crypto::sha256(&bytes)))
        .await
        .map_err(|e| missing(e.to_string()))?;
    *cache.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((key.0, key.1, sum.clone()));
    Ok(sum)
}

/// The rendered script and its SHA-256.
pub async fn script(state: &AppState) -> Result<(String, String), MissingAgent> {
    let sum = agent_sha256(state).await?;
    let body = TEMPLATE
        .replace("@MZ_URL@", &state.config().public_url)
        .replace("@AGENT_SHA256@", &sum)
        .replace("@AGENT_ARCH@", std::env::consts::ARCH);
    let digest = hex::encode(crate::crypto::sha256(body.as_bytes()));
    Ok((body, digest))
}

/// A fresh join token and the one-liner that carries it.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub command: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    MissingAgent(#[from] MissingAgent),
    #[error(transparent)]
    Random(#[from] crate::crypto::KeyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Mints a single-use join token for `server_id` (only the SHA-256 of its secret is
/// stored; older unused tokens of the server stop working) and the install one-liner.
pub async fn mint(state: &AppState, server_id: i64) -> Result<Minted, MintError> {
    let (_, sha) = script(state).await?;
    let id = hex::encode(crate::crypto::random_bytes::<16>()?);
    let secret = hex::encode(crate::crypto::random_bytes::<32>()?);
    let now = crate::time::now_secs();
    let expires_at = now + state.config().join_token_ttl_secs;
    state
        .store()
        .create_join_token(
            server_id,
            &id,
            &crate::crypto::sha256(secret.as_bytes()),
            now,
            expires_at,
        )
        .await?;
    let token = crate::gateway::token::format(
        state.agent_endpoint(),
        &state.gateway().ca.pin_hex(),
        &id,
        &secret,
    );
    let command = command(&state.config().public_url, &sha, &token);
    Ok(Minted {
        token,
        command,
        expires_at,
    })
}

/// The one-liner to paste into a root shell. No `sh -c` around it and the token only in
/// the installer's environment: a process's arguments are readable by every local user
/// (`/proc/*/cmdline`), its environment only by root. The URL is validated at start and
/// the token is `[A-Za-z0-9._-]`, so neither needs quoting. It ends with the installer's
/// status (`(exit $rc)` in a subshell, so a pasted line does not close the terminal).
pub fn command(public_url: &str, script_sha256: &str, token: &str) -> String {
    format!(
        "f=$(mktemp) && {{ curl -fsSL {public_url}/install.sh -o \"$f\" || wget -qO \"$f\" {public_url}/install.sh; }} && echo \"{script_sha256}  $f\" | sha256sum -c --quiet - && MZ_TOKEN={token} sh \"$f\"; rc=$?; rm -f \"$f\"; (exit $rc)"
    )
}

fn unavailable(e: MissingAgent) -> Response {
    tracing::warn!(error = %e, "install requested but the agent binary is missing");
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn install_sh(State(state): State<AppState>) -> Response {
    match script(&state).await {
        Ok((body, _)) => (
            [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

/// Streams the binary from disk (64 KiB at a time): many slow downloads cost a buffer
/// each, not a copy of the binary each.
async fn agent_binary(State(state): State<AppState>) -> Response {
    if let Err(e) = agent_sha256(&state).await {
        return unavailable(e);
    }
    let path = &state.config().agent_binary;
    let opened = match tokio::fs::File::open(path).await {
        Ok(f) => f.metadata().await.map(|m| (f, m.len())),
        Err(e) => Err(e),
    };
    match opened {
        Ok((file, len)) => {
            let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                64 * 1024,
            ));
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"mezzanine-agent\"".to_owned(),
                    ),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => unavailable(MissingAgent {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/install.sh", get(install_sh))
        .route("/agent/mezzanine-agent", get(agent_binary))
}
