//! The install downloads: `/install.sh` and `/agent/mezzanine-agent` (public: a server
//! being installed has no session). What they serve is `crate::install`'s business.

use super::BaseUrl;
use crate::install::MissingAgent;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;

fn unavailable(e: MissingAgent) -> Response {
    tracing::warn!(error = %e, "install requested but the agent binary is missing");
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn install_sh(
    State(state): State<AppState>,
    Extension(BaseUrl(base)): Extension<BaseUrl>,
) -> Response {
    match state.installs().script(&base).await {
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
    if let Err(e) = state.installs().agent_sha256().await {
        return unavailable(e);
    }
    let path = state.installs().agent_binary();
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
