//! The one error type of the HTTP layer and its mapping to the `{ "error": … }` shape.
//! Database and internal error texts are logged, never sent to clients.

use crate::auth::Role;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("INSUFFICIENT_ROLE")]
    InsufficientRole { required: Role, role: Role },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many failed attempts; retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    /// A 429 passed on from elsewhere (a provider's rate limit), with its own message.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Timeout(String),
    #[error("internal error")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::auth::password::HashError> for ApiError {
    fn from(e: crate::auth::password::HashError) -> Self {
        match e {
            // Too many hashes at once: the caller is asked to come back in a second.
            crate::auth::password::HashError::Busy => ApiError::TooManyRequests { retry_after: 1 },
            crate::auth::password::HashError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<crate::ssh::StartError> for ApiError {
    fn from(e: crate::ssh::StartError) -> Self {
        match e {
            crate::ssh::StartError::Running => ApiError::Conflict(e.to_string()),
            crate::ssh::StartError::Seal(k) => k.into(),
            crate::ssh::StartError::Store(s) => s.into(),
        }
    }
}

impl From<crate::install::MintError> for ApiError {
    fn from(e: crate::install::MintError) -> Self {
        match e {
            // The install command needs an agent binary to serve: the operator's setup.
            crate::install::MintError::MissingAgent(m) => ApiError::Conflict(m.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::deploy::EnqueueError> for ApiError {
    fn from(e: crate::deploy::EnqueueError) -> Self {
        use crate::deploy::EnqueueError as E;
        match e {
            E::InvalidDefinition(_) | E::Full(_) | E::SecretsHeld => {
                ApiError::Conflict(e.to_string())
            }
            E::Store(s) => s.into(),
        }
    }
}

impl From<crate::deploy::CancelError> for ApiError {
    fn from(e: crate::deploy::CancelError) -> Self {
        use crate::deploy::CancelError as E;
        match e {
            E::NotFound(_) => ApiError::NotFound(e.to_string()),
            E::Ended { .. } | E::Busy { .. } => ApiError::Conflict(e.to_string()),
            E::Store(s) => s.into(),
        }
    }
}

impl From<crate::deploy_keys::DeployKeyError> for ApiError {
    fn from(e: crate::deploy_keys::DeployKeyError) -> Self {
        match e {
            crate::deploy_keys::DeployKeyError::NotFound(_) => ApiError::NotFound(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::crypto::KeyError> for ApiError {
    fn from(e: crate::crypto::KeyError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::InsufficientRole { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::InsufficientRole { required, role } => json!({
                "error": "INSUFFICIENT_ROLE",
                "required": required.as_str(),
                "role": role.as_str(),
            }),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                json!({ "error": "internal error" })
            }
            other => json!({ "error": other.to_string() }),
        };
        let mut resp = (status, Json(body.clone())).into_response();
        if let Some(msg) = body.get("error").and_then(|e| e.as_str()) {
            resp.extensions_mut()
                .insert(super::audit::Reason(msg.to_owned()));
        }
        let retry = match &self {
            ApiError::TooManyRequests { retry_after }
            | ApiError::RateLimited { retry_after, .. } => Some((*retry_after).max(1)),
            ApiError::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
