//! `/api/auth/*`: first-run setup, login and logout, password change and TOTP enrolment.

use super::audit::{Actor, Target};
use super::openapi::{boolean, nullable, obj, ok_with, string, user as user_schema};
use super::session::{clear_cookie, set_cookie};
use super::ClientAddr;
use super::{ok, Access, ApiError, ApiResult, Doc, Registry, Session};
use crate::auth::limiter::Attempt;
use crate::auth::{password, totp, validate_username, Role};
use crate::state::AppState;
use crate::store::User;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;

const BAD_CREDENTIALS: &str = "invalid username or password";
const TOTP_ISSUER: &str = "Mezzanine";

pub fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "role": u.role.as_str(),
        "totp_enabled": u.totp_enabled,
    })
}

async fn state_handler(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> ApiResult<Json<Value>> {
    let needs_setup = match &session.0 {
        Some(_) => false,
        None => !state.setup_done().await?,
    };
    Ok(Json(json!({
        "needs_setup": needs_setup,
        "authenticated": session.0.is_some(),
        "user": session.0.as_ref().map(|s| user_json(&s.user)),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupBody {
    username: String,
    password: String,
}

/// Creates a session row and the response carrying its cookie.
async fn start_session(
    state: &AppState,
    user: &User,
    ip: &str,
    headers: &HeaderMap,
    status: axum::http::StatusCode,
) -> ApiResult<Response> {
    let (token, hash) = crate::auth::new_session_token()?;
    let now = crate::time::now_secs();
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect::<String>());
    state
        .store()
        .create_session(
            &hash,
            user.id,
            now,
            now + state.config().session_max_secs,
            Some(ip),
            agent.as_deref(),
        )
        .await?;
    let mut resp = (status, ok(json!({ "user": user_json(user) }))).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(state, &token));
    resp.extensions_mut().insert(Actor {
        id: Some(user.id),
        name: user.username.clone(),
    });
    Ok(resp)
}

async fn setup(
    State(state): State<AppState>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    headers: HeaderMap,
    Json(body): Json<SetupBody>,
) -> ApiResult<Response> {
    if state.setup_done().await? {
        return Err(ApiError::Conflict(
            "setup is already complete; log in instead".into(),
        ));
    }
    validate_username(&body.username).map_err(ApiError::BadRequest)?;
    password::validate(&body.password).map_err(ApiError::BadRequest)?;
    let hash = state.hasher().hash(&body.password).await?;
    let now = crate::time::now_secs();
    let Some(user) = state
        .store()
        .create_first_admin(&body.username, &hash, now)
        .await?
    else {
        return Err(ApiError::Conflict(
            "setup is already complete; log in instead".into(),
        ));
    };
    state.mark_setup_done();
    tracing::info!(user_id = user.id, username = %user.username, "first admin created");
    start_session(
        &state,
        &user,
        &client.to_string(),
        &headers,
        axum::http::StatusCode::CREATED,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
    #[serde(default, deserialize_with = "super::present")]
    totp: Option<String>,
}

/// The limiter key for a typed username: the name itself when it could be one (bounded
/// by the username rules), else a hash, so a megabyte typed into the field costs the
/// limiter 71 bytes, not a megabyte.
fn limiter_key(username: &str) -> String {
    if validate_username(username).is_ok() {
        username.to_lowercase()
    } else {
        format!(
            "invalid:{}",
            hex::encode(crate::crypto::sha256(username.as_bytes()))
        )
    }
}

/// Who a failed login is recorded as: the name of an account that exists, else a short
/// hash (a password typed into the username field must not land in the audit log).
fn audit_username(username: &str, exists: bool) -> String {
    if exists {
        username.chars().take(64).collect()
    } else {
        let h = hex::encode(crate::crypto::sha256(username.to_lowercase().as_bytes()));
        format!("unknown user #{}", &h[..12])
    }
}

fn locked(wait: std::time::Duration) -> ApiError {
    ApiError::TooManyRequests {
        retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    }
}

async fn login(
    State(state): State<AppState>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    headers: HeaderMap,
    Json(body): Json<LoginBody>,
) -> ApiResult<Response> {
    let ip = client.to_string();
    let user_key = limiter_key(&body.username);
    let now = Instant::now();
    let limits = state.limits();
    // Every attempt is reserved before any hashing, so concurrent guesses are counted as
    // they start, not as they finish. The lockout a user meets is per (address, user):
    // someone else's guesses cannot lock them out. Guessing many names from one address
    // (`by_ip`) and one name from many addresses (`by_user`) have higher limits of
    // their own.
    let by_ip = limits.by_ip.begin(&ip, now).map_err(locked)?;
    let by_pair = limits
        .by_pair
        .begin(&format!("{ip} {user_key}"), now)
        .map_err(locked)?;
    let by_user = limits.by_user.begin(&user_key, now).map_err(locked)?;
    if body.password.chars().count() > password::MAX_LEN {
        return Err(ApiError::BadRequest(format!(
            "password is too long: at most {} characters are allowed",
            password::MAX_LEN
        )));
    }
    let failed = |reason: ApiError, [by_ip, by_pair, by_user]: [Attempt<'_>; 3]| {
        by_ip.failed(now);
        by_pair.failed(now);
        by_user.failed(now);
        reason
    };
    let creds = if validate_username(&body.username).is_ok() {
        state.store().credentials_by_name(&body.username).await?
    } else {
        None
    };
    let verified = state
        .hasher()
        .verify(
            &body.password,
            creds.as_ref().map(|c| c.password_hash.as_str()),
        )
        .await?;
    let creds = match creds {
        Some(c) if verified => c,
        _ => {
            let mut resp = failed(
                ApiError::Unauthorized(BAD_CREDENTIALS.into()),
                [by_ip, by_pair, by_user],
            )
            .into_response();
            resp.extensions_mut().insert(Actor {
                id: None,
                name: audit_username(&body.username, creds.is_some()),
            });
            return Ok(resp);
        }
    };
    if let Some(sealed) = &creds.totp_secret {
        let code = body.totp.as_deref().map(str::trim).unwrap_or_default();
        if code.is_empty() {
            // Neither a failure nor a success: the reservations are just released.
            return Err(ApiError::Unauthorized("TOTP_REQUIRED".into()));
        }
        let secret = state
            .key()
            .open(&totp_context(creds.user.id), sealed)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let unix = u64::try_from(crate::time::now_secs()).unwrap_or(0);
        let Some(step) = totp::matching_step(&secret, code, unix) else {
            return Err(failed(
                ApiError::Unauthorized("invalid TOTP code".into()),
                [by_ip, by_pair, by_user],
            ));
        };
        if !state
            .store()
            .consume_totp_step(creds.user.id, step as i64)
            .await?
        {
            return Err(failed(
                ApiError::Unauthorized("TOTP code already used; wait for the next one".into()),
                [by_ip, by_pair, by_user],
            ));
        }
    }
    by_pair.succeeded();
    drop((by_ip, by_user));
    start_session(
        &state,
        &creds.user,
        &ip,
        &headers,
        axum::http::StatusCode::OK,
    )
    .await
}

async fn logout(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> ApiResult<Response> {
    let s = session.require()?;
    state.store().delete_session(&s.hash).await?;
    let mut resp = ok(json!({})).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(&state));
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePasswordBody {
    current: String,
    next: String,
}

/// Verifies the caller's own password, throttled like logins.
async fn verify_own_password(
    state: &AppState,
    user_id: i64,
    username: &str,
    password: &str,
) -> ApiResult<()> {
    let key = limiter_key(username);
    let now = Instant::now();
    let attempt = state
        .limits()
        .by_pair
        .begin(&format!("self {key}"), now)
        .map_err(locked)?;
    let creds = state
        .store()
        .credentials_by_id(user_id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("authentication required".into()))?;
    if password.chars().count() > password::MAX_LEN
        || !state
            .hasher()
            .verify(password, Some(&creds.password_hash))
            .await?
    {
        attempt.failed(now);
        return Err(ApiError::Forbidden("current password is incorrect".into()));
    }
    Ok(())
}

async fn change_password(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Json(body): Json<ChangePasswordBody>,
) -> ApiResult<Json<Value>> {
    let s = session.require()?;
    password::validate(&body.next).map_err(|m| ApiError::BadRequest(format!("next: {m}")))?;
    verify_own_password(&state, s.user.id, &s.user.username, &body.current).await?;
    let hash = state.hasher().hash(&body.next).await?;
    state
        .store()
        .set_password(s.user.id, &hash, crate::time::now_secs())
        .await?;
    let revoked = state
        .store()
        .delete_user_sessions(s.user.id, Some(&s.hash))
        .await?;
    Ok(ok(json!({ "revoked_sessions": revoked })))
}

fn totp_context(user_id: i64) -> String {
    format!("users.totp:{user_id}")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TotpSetupBody {
    password: String,
}

/// Needs the password again: a stolen session must not be able to bind its own
/// authenticator to the account.
async fn totp_setup(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Json(body): Json<TotpSetupBody>,
) -> ApiResult<Response> {
    let s = session.require()?;
    verify_own_password(&state, s.user.id, &s.user.username, &body.password).await?;
    if s.user.totp_enabled {
        return Err(ApiError::Conflict(
            "TOTP is already enabled; disable it before enrolling a new secret".into(),
        ));
    }
    let secret: [u8; 20] = crate::crypto::random_bytes()?;
    let sealed = state.key().seal(&totp_context(s.user.id), &secret)?;
    state
        .store()
        .set_totp_pending(s.user.id, &sealed, crate::time::now_secs())
        .await?;
    let b32 = totp::base32_encode(&secret);
    let url = totp::otpauth_url(TOTP_ISSUER, &s.user.username, &b32);
    let qr = totp::qr_svg(&url);
    let mut resp = ok(json!({ "secret": b32, "otpauth_url": url, "qr_svg": qr })).into_response();
    resp.extensions_mut()
        .insert(Target(s.user.username.clone()));
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

async fn totp_enable(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Json(body): Json<CodeBody>,
) -> ApiResult<Json<Value>> {
    let s = session.require()?;
    if s.user.totp_enabled {
        return Err(ApiError::Conflict("TOTP is already enabled".into()));
    }
    let Some(sealed) = state.store().totp_pending(s.user.id).await? else {
        return Err(ApiError::Conflict(
            "no TOTP secret is pending; call POST /api/auth/totp/setup first".into(),
        ));
    };
    let secret = state
        .key()
        .open(&totp_context(s.user.id), &sealed)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let unix = u64::try_from(crate::time::now_secs()).unwrap_or(0);
    let Some(step) = totp::matching_step(&secret, &body.code, unix) else {
        return Err(ApiError::Forbidden(
            "code: does not match the pending secret (check the authenticator's clock)".into(),
        ));
    };
    if !state
        .store()
        .enable_totp(s.user.id, step as i64, crate::time::now_secs())
        .await?
    {
        return Err(ApiError::Conflict(
            "TOTP state changed; run setup again".into(),
        ));
    }
    Ok(ok(json!({ "totp_enabled": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableBody {
    password: String,
    code: String,
}

async fn totp_disable(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Json(body): Json<DisableBody>,
) -> ApiResult<Json<Value>> {
    let s = session.require()?;
    verify_own_password(&state, s.user.id, &s.user.username, &body.password).await?;
    let creds = state
        .store()
        .credentials_by_id(s.user.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("authentication required".into()))?;
    let Some(sealed) = creds.totp_secret else {
        return Err(ApiError::Conflict("TOTP is not enabled".into()));
    };
    let secret = state
        .key()
        .open(&totp_context(s.user.id), &sealed)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let unix = u64::try_from(crate::time::now_secs()).unwrap_or(0);
    let step = totp::matching_step(&secret, &body.code, unix)
        .ok_or_else(|| ApiError::Forbidden("invalid TOTP code".into()))?;
    if !state
        .store()
        .consume_totp_step(s.user.id, step as i64)
        .await?
    {
        return Err(ApiError::Forbidden(
            "TOTP code already used; wait for the next one".into(),
        ));
    }
    state
        .store()
        .disable_totp(s.user.id, crate::time::now_secs())
        .await?;
    Ok(ok(json!({ "totp_enabled": false })))
}

pub(super) fn routes(reg: &mut Registry) {
    let any = Access::Role(Role::Viewer);
    let credentials = obj(
        &[
            ("username", super::openapi::name()),
            ("password", super::openapi::password()),
        ],
        &["username", "password"],
    );
    let with_user = ok_with(&[("user", user_schema())]);
    reg.add(
        Method::GET,
        "/api/auth/state",
        Access::Public,
        Doc {
            summary: "Whether setup is needed and who is logged in",
            request: None,
            response: obj(
                &[
                    ("needs_setup", boolean()),
                    ("authenticated", boolean()),
                    ("user", nullable(user_schema())),
                ],
                &["needs_setup", "authenticated", "user"],
            ),
            ..Default::default()
        },
        state_handler,
    )
    .add(
        Method::POST,
        "/api/auth/setup",
        Access::Public,
        Doc {
            summary: "Create the first admin (only while needs_setup; 409 afterwards) and log in",
            request: Some(credentials),
            response: with_user.clone(),
            status: 201,
            errors: &[409, 429],
            ..Default::default()
        },
        setup,
    )
    .add(
        Method::POST,
        "/api/auth/login",
        Access::Public,
        Doc {
            summary: "Log in; sets the cp_session cookie. 401 TOTP_REQUIRED when a code is needed",
            request: Some(obj(
                &[
                    ("username", string()),
                    ("password", super::openapi::typed_password()),
                    ("totp", string()),
                ],
                &["username", "password"],
            )),
            response: with_user,
            errors: &[401, 429],
            ..Default::default()
        },
        login,
    )
    .add(
        Method::POST,
        "/api/auth/logout",
        any,
        Doc {
            summary: "Revoke the current session",
            request: None,
            response: ok_with(&[]),
            ..Default::default()
        },
        logout,
    )
    .add(
        Method::POST,
        "/api/auth/change-password",
        any,
        Doc {
            summary: "Change one's own password; revokes one's other sessions",
            request: Some(obj(
                &[
                    ("current", super::openapi::typed_password()),
                    ("next", super::openapi::password()),
                ],
                &["current", "next"],
            )),
            response: ok_with(&[("revoked_sessions", super::openapi::integer())]),
            errors: &[429],
            ..Default::default()
        },
        change_password,
    )
    .add(
        Method::POST,
        "/api/auth/totp/setup",
        any,
        Doc {
            summary: "Start TOTP enrolment (needs the password again): a new secret and its otpauth:// URL",
            request: Some(obj(
                &[("password", super::openapi::typed_password())],
                &["password"],
            )),
            response: ok_with(&[("secret", string()), ("otpauth_url", string()), ("qr_svg", nullable(string()))]),
            errors: &[409, 429],
            ..Default::default()
        },
        totp_setup,
    )
    .add(
        Method::POST,
        "/api/auth/totp/enable",
        any,
        Doc {
            summary: "Finish TOTP enrolment with a current code",
            request: Some(obj(&[("code", string())], &["code"])),
            response: ok_with(&[("totp_enabled", boolean())]),
            errors: &[409],
            ..Default::default()
        },
        totp_enable,
    )
    .add(
        Method::POST,
        "/api/auth/totp/disable",
        any,
        Doc {
            summary: "Turn TOTP off (password and a current code)",
            request: Some(obj(
                &[
                    ("password", super::openapi::typed_password()),
                    ("code", string()),
                ],
                &["password", "code"],
            )),
            response: ok_with(&[("totp_enabled", boolean())]),
            errors: &[409, 429],
            ..Default::default()
        },
        totp_disable,
    );
}
