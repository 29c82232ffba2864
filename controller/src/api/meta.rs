//! Service endpoints: the OpenAPI document and the health probe.

use super::openapi::obj;
use super::{Access, Doc, Registry};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

async fn openapi(axum::Extension(doc): axum::Extension<super::OpenApiDoc>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}

/// `GET /healthz`: 200 while the database answers.
pub async fn healthz(State(state): State<AppState>) -> Response {
    match state.store().ping().await {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "database unavailable" })),
            )
                .into_response()
        }
    }
}

pub(super) fn routes(reg: &mut Registry) {
    reg.add(
        Method::GET,
        "/api/openapi.json",
        Access::Public,
        Doc {
            summary: "This OpenAPI 3.1 document",
            request: None,
            response: obj(&[], &[]),
            ..Default::default()
        },
        openapi,
    );
}
