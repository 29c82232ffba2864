//! `/api/users`: user management (admin only). The last admin can be neither deleted
//! nor demoted; a changed password revokes that user's sessions.

use super::audit::Target;
use super::auth::user_json;
use super::openapi::{array, integer, obj, ok_with, role, string, user as user_schema};
use super::{ok, Access, ApiError, ApiResult, Doc, Registry, Session};
use crate::auth::{password, validate_username, Role};
use crate::state::AppState;
use crate::store::Guarded;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

fn parse_role(s: &str) -> ApiResult<Role> {
    Role::parse(s).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "role: {s:?} is not one of viewer, moderator, admin"
        ))
    })
}

fn parse_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id: {raw:?} is not a user id")))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let users = state.store().users().await?;
    let out: Vec<Value> = users
        .iter()
        .map(|u| {
            let mut v = user_json(u);
            v["created_at"] = json!(crate::time::rfc3339(u.created_at));
            v
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    username: String,
    password: String,
    role: String,
}

async fn create(
    State(state): State<AppState>,
    Json(body): Json<CreateBody>,
) -> ApiResult<Response> {
    validate_username(&body.username)
        .map_err(|m| ApiError::BadRequest(format!("username: {m}")))?;
    password::validate(&body.password)
        .map_err(|m| ApiError::BadRequest(format!("password: {m}")))?;
    let role = parse_role(&body.role)?;
    let hash = state.hasher().hash(&body.password).await?;
    let user = state
        .store()
        .create_user(&body.username, &hash, role, crate::time::now_secs())
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("username {:?} is taken", body.username)))?;
    let mut resp = (StatusCode::CREATED, ok(json!({ "user": user_json(&user) }))).into_response();
    resp.extensions_mut()
        .insert(Target(format!("user {}", user.username)));
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "super::present")]
    role: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    password: Option<String>,
}

async fn update(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
    Json(body): Json<PatchBody>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    // One's own account changes through /api/auth/change-password, which asks for the
    // current password: a stolen admin session cannot take the account over for good.
    // Nor does an admin demote themself here (another admin does).
    if session.require()?.user.id == id {
        return Err(ApiError::Forbidden(
            "this is your own account: change your password with POST /api/auth/change-password; another admin changes your role".into(),
        ));
    }
    if body.role.is_none() && body.password.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give role and/or password".into(),
        ));
    }
    let role = body.role.as_deref().map(parse_role).transpose()?;
    if let Some(p) = &body.password {
        password::validate(p).map_err(|m| ApiError::BadRequest(format!("password: {m}")))?;
    }
    if state.store().user(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("user {id} not found")));
    }
    let now = crate::time::now_secs();
    if let Some(role) = role {
        match state.store().set_role(id, role, now).await? {
            Guarded::Done => {}
            Guarded::NotFound => return Err(ApiError::NotFound(format!("user {id} not found"))),
            Guarded::LastAdmin => {
                return Err(ApiError::Conflict(
                    "cannot demote the last admin; promote another user first".into(),
                ))
            }
        }
    }
    if let Some(p) = &body.password {
        let hash = state.hasher().hash(p).await?;
        state.store().set_password(id, &hash, now).await?;
        let keep = session
            .0
            .as_ref()
            .filter(|s| s.user.id == id)
            .map(|s| s.hash);
        state
            .store()
            .delete_user_sessions(id, keep.as_ref().map(|h| &h[..]))
            .await?;
    }
    let user = state
        .store()
        .user(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    Ok(ok(json!({ "user": user_json(&user) })))
}

async fn remove(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    if session.require()?.user.id == id {
        return Err(ApiError::Forbidden(
            "this is your own account: another admin deletes it".into(),
        ));
    }
    match state.store().delete_user(id).await? {
        Guarded::Done => Ok(ok(json!({}))),
        Guarded::NotFound => Err(ApiError::NotFound(format!("user {id} not found"))),
        Guarded::LastAdmin => Err(ApiError::Conflict(
            "cannot delete the last admin; promote another user first".into(),
        )),
    }
}

pub(super) fn routes(reg: &mut Registry) {
    let admin = Access::Role(Role::Admin);
    let listed = obj(
        &[
            ("id", integer()),
            ("username", string()),
            ("role", role()),
            ("totp_enabled", super::openapi::boolean()),
            ("created_at", string()),
        ],
        &["id", "username", "role", "totp_enabled", "created_at"],
    );
    reg.add(
        Method::GET,
        "/api/users",
        admin,
        Doc {
            summary: "List users",
            request: None,
            response: array(listed),
            ..Default::default()
        },
        list,
    )
    .add(
        Method::POST,
        "/api/users",
        admin,
        Doc {
            summary: "Create a user",
            request: Some(obj(
                &[
                    ("username", super::openapi::name()),
                    ("password", super::openapi::password()),
                    ("role", role()),
                ],
                &["username", "password", "role"],
            )),
            response: ok_with(&[("user", user_schema())]),
            status: 201,
            errors: &[409],
            ..Default::default()
        },
        create,
    )
    .add(
        Method::PATCH,
        "/api/users/{id}",
        admin,
        Doc {
            summary: "Change a user's role and/or password (revokes that user's sessions)",
            request: Some(super::openapi::at_least_one(obj(
                &[("role", role()), ("password", super::openapi::password())],
                &[],
            ))),
            response: ok_with(&[("user", user_schema())]),
            errors: &[409],
            ..Default::default()
        },
        update,
    )
    .add(
        Method::DELETE,
        "/api/users/{id}",
        admin,
        Doc {
            summary: "Delete a user and its sessions (409 for the last admin)",
            request: None,
            response: ok_with(&[]),
            errors: &[409],
            ..Default::default()
        },
        remove,
    );
}
