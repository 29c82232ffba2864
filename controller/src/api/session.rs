//! Session cookies: resolving `cp_session` to a user, enforcing each route's access rule,
//! and building the cookie headers. Only the SHA-256 of a session id is ever stored.

use super::audit::Actor;
use super::{Access, ApiError};
use crate::auth::session_hash;
use crate::state::AppState;
use crate::store::User;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub const COOKIE: &str = "cp_session";

/// The caller's session, as resolved by `authorize` for every registered route.
#[derive(Debug, Clone)]
pub struct SessionCtx {
    /// The caller; with an API token, `role` is the lesser of the token's and the user's.
    pub user: User,
    /// The SHA-256 of the session id, or of the API token.
    pub hash: [u8; 32],
    /// The API token the request carried (no cookie session then).
    pub token: Option<i64>,
}

/// Inserted into every request's extensions; `None` for anonymous callers.
#[derive(Debug, Clone)]
pub struct Session(pub Option<SessionCtx>);

impl Session {
    /// The session, or 401 (only reachable on routes that did not require one).
    pub fn require(&self) -> Result<&SessionCtx, ApiError> {
        self.0
            .as_ref()
            .ok_or_else(|| ApiError::Unauthorized("authentication required".into()))
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// `Authorization: Bearer <token>`, if the request carries one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// An API token (`mz_` and 64 hex digits) to its owner, at the lesser of the token's role
/// and the owner's current one. A token that is malformed, unknown or expired is refused
/// outright (401): a script should learn at once that its credential is wrong.
async fn resolve_token(state: &AppState, token: &str) -> Result<SessionCtx, ApiError> {
    let refused = || ApiError::Unauthorized("invalid or expired API token".into());
    let hex = token
        .strip_prefix(crate::auth::TOKEN_PREFIX)
        .ok_or_else(refused)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refused());
    }
    let hash = session_hash(token);
    let found = state
        .store()
        .token_by_hash(&hash)
        .await?
        .ok_or_else(refused)?;
    let now = crate::time::now_secs();
    if found.token.expires_at.is_some_and(|t| now >= t) {
        return Err(refused());
    }
    // Last use is a minute-grained fact: a busy script does not write on every request.
    if found.token.last_used_at.is_none_or(|t| now - t >= 60) {
        state.store().touch_token(found.token.id, now).await?;
    }
    let mut user = found.user;
    user.role = user.role.min(found.token.role);
    Ok(SessionCtx {
        user,
        hash,
        token: Some(found.token.id),
    })
}

/// Looks the cookie up, enforcing idle and absolute expiry; refreshes `last_seen` at
/// most every few seconds of activity so reads stay reads. A request without a cookie
/// may carry an API token instead.
pub async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<SessionCtx>, ApiError> {
    let Some(token) = cookie_value(headers) else {
        return match bearer(headers) {
            Some(t) => resolve_token(state, t).await.map(Some),
            None => Ok(None),
        };
    };
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let hash = session_hash(token);
    let Some(found) = state.store().session(&hash).await? else {
        return Ok(None);
    };
    let now = crate::time::now_secs();
    let idle = state.config().session_idle_secs;
    if now >= found.expires_at || now - found.last_seen >= idle {
        state.store().delete_session(&hash).await?;
        return Ok(None);
    }
    let touch_every = (idle / 8).clamp(1, 60);
    if now - found.last_seen >= touch_every {
        state.store().touch_session(&hash, now).await?;
    }
    Ok(Some(SessionCtx {
        user: found.user,
        hash,
        token: None,
    }))
}

/// Route middleware installed by `Registry::add`: resolves the session and applies the
/// route's access rule before the handler runs.
pub async fn authorize(
    State((state, access)): State<(AppState, Access)>,
    mut req: Request,
    next: Next,
) -> Response {
    let session = match resolve(&state, req.headers()).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let actor = session.as_ref().map(|s| Actor {
        id: Some(s.user.id),
        name: s.user.username.clone(),
    });
    // A token is sent by a script on purpose, never attached by a browser to a page's
    // request: the cross-site rules for cookies do not apply to it.
    let by_token = session.as_ref().is_some_and(|s| s.token.is_some());
    let denied = (if by_token {
        Ok(())
    } else {
        super::check_mutation(&state, &req)
    })
    .err()
    .or_else(|| match (access, &session) {
        (Access::Public, _) => None,
        (Access::Role(_), None) => Some(ApiError::Unauthorized("authentication required".into())),
        (Access::Role(required), Some(s)) if s.user.role < required => {
            Some(ApiError::InsufficientRole {
                required,
                role: s.user.role,
            })
        }
        (Access::Role(_), Some(_)) => None,
    });
    let mut resp = match denied {
        Some(e) => e.into_response(),
        None => {
            req.extensions_mut().insert(Session(session));
            next.run(req).await
        }
    };
    if let Some(actor) = actor {
        if resp.extensions().get::<Actor>().is_none() {
            resp.extensions_mut().insert(actor);
        }
    }
    resp
}

pub fn set_cookie(state: &AppState, token: &str) -> HeaderValue {
    let secure = if state.config().secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let max_age = state.config().session_max_secs;
    let value =
        format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
    // Hex token and fixed attributes are always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn clear_cookie(state: &AppState) -> HeaderValue {
    let secure = if state.config().secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}
