//! `/api/tokens`: API tokens for scripts and CI (`Authorization: Bearer mz_…`). The token
//! is shown once; only its SHA-256 is kept. A token's role is at most its creator's.

use super::audit::Target;
use super::openapi::{array, id, integer, nullable, obj, ok_with, role, string};
use super::{ok, Access, ApiError, ApiResult, Doc, Registry, Session};
use crate::auth::{Role, TOKEN_PREFIX};
use crate::state::AppState;
use crate::store::TokenRow;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

fn token_json(t: &TokenRow) -> Value {
    let ts = |v: Option<i64>| v.map(crate::time::rfc3339);
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role.as_str(),
        "user": t.username,
        "prefix": t.prefix,
        "created_at": crate::time::rfc3339(t.created_at),
        "expires_at": ts(t.expires_at),
        "last_used_at": ts(t.last_used_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    // Left out means the default; `null` is refused like any value of the wrong type.
    #[serde(default, deserialize_with = "super::present")]
    role: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    expires_in_days: Option<i64>,
}

async fn create(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Json(b): Json<CreateBody>,
) -> ApiResult<Response> {
    let me = session.require()?;
    if me.token.is_some() {
        return Err(ApiError::Forbidden(
            "API tokens are made by a signed-in user, not by another token".into(),
        ));
    }
    let name = b.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "name: 1 to 64 characters, no control characters".into(),
        ));
    }
    let role = match b.role.as_deref() {
        None => me.user.role,
        Some(r) => Role::parse(r)
            .ok_or_else(|| ApiError::BadRequest("role: viewer, moderator or admin".into()))?,
    };
    if role > me.user.role {
        return Err(ApiError::BadRequest(format!(
            "role: a token's role is at most yours ({})",
            me.user.role.as_str()
        )));
    }
    let now = crate::time::now_secs();
    let expires_at = match b.expires_in_days {
        None => None,
        Some(d) if (1..=3650).contains(&d) => Some(now + d * 86_400),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "expires_in_days: 1 to 3650 (leave it out for a token that does not expire)".into(),
            ))
        }
    };
    let secret = hex::encode(
        crate::crypto::random_bytes::<32>()
            .map_err(|e| ApiError::Internal(format!("random: {e}")))?,
    );
    let token = format!("{TOKEN_PREFIX}{secret}");
    let prefix: String = token.chars().take(TOKEN_PREFIX.len() + 6).collect();
    let id = state
        .store()
        .create_token(
            me.user.id,
            name,
            role,
            &crate::auth::session_hash(&token),
            &prefix,
            now,
            expires_at,
        )
        .await?;
    let mut resp = (
        StatusCode::CREATED,
        ok(json!({
            "id": id,
            "token": token,
            "name": name,
            "role": role.as_str(),
            "expires_at": expires_at.map(crate::time::rfc3339),
        })),
    )
        .into_response();
    resp.extensions_mut()
        .insert(Target(format!("API token {name} ({})", role.as_str())));
    Ok(resp)
}

async fn list(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> ApiResult<Json<Value>> {
    let me = session.require()?;
    let whose = (me.user.role < Role::Admin).then_some(me.user.id);
    let tokens = state.store().tokens(whose).await?;
    Ok(Json(Value::Array(tokens.iter().map(token_json).collect())))
}

async fn remove(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let me = session.require()?;
    let id = raw
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id: {raw:?} is not a token id")))?;
    // Someone else's token is not there, as far as a non-admin can tell.
    let t = state
        .store()
        .token(id)
        .await?
        .filter(|t| t.user_id == me.user.id || me.user.role == Role::Admin)
        .ok_or_else(|| ApiError::NotFound(format!("token {id} not found")))?;
    state.store().delete_token(id).await?;
    let mut resp = ok(json!({})).into_response();
    resp.extensions_mut()
        .insert(Target(format!("API token {} of {}", t.name, t.username)));
    Ok(resp)
}

pub(super) fn routes(reg: &mut Registry) {
    let viewer = Access::Role(Role::Viewer);
    let token = obj(
        &[
            ("id", integer()),
            ("name", string()),
            ("role", role()),
            ("user", string()),
            ("prefix", string()),
            ("created_at", string()),
            ("expires_at", nullable(string())),
            ("last_used_at", nullable(string())),
        ],
        &["id", "name", "role", "user", "prefix", "created_at"],
    );
    reg.add(
        Method::GET,
        "/api/tokens",
        viewer,
        Doc {
            summary: "API tokens: your own (an admin sees everyone's); never the tokens themselves",
            response: array(token),
            ..Default::default()
        },
        list,
    )
    .add(
        Method::POST,
        "/api/tokens",
        viewer,
        Doc {
            summary: "Make an API token { name, role? (at most yours), expires_in_days? }; the answer holds the token, shown this once",
            request: Some(obj(
                &[
                    ("name", json!({ "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$" })),
                    ("role", role()),
                    ("expires_in_days", json!({ "type": "integer", "minimum": 1, "maximum": 3650 })),
                ],
                &["name"],
            )),
            response: ok_with(&[
                ("id", integer()),
                ("token", string()),
                ("name", string()),
                ("role", role()),
                ("expires_at", nullable(string())),
            ]),
            status: 201,
            errors: &[400, 403],
            ..Default::default()
        },
        create,
    )
    .add(
        Method::DELETE,
        "/api/tokens/{id}",
        viewer,
        Doc {
            summary: "Revoke an API token (yours; an admin's may be anyone's): refused at once from then on",
            response: ok_with(&[]),
            path: vec![("id", id())],
            errors: &[404],
            ..Default::default()
        },
        remove,
    );
}
