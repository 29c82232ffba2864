//! `/api/servers`: the fleet. Adding a server without SSH returns a join token and the
//! install one-liner; live status comes from the agent gateway's registry.

use super::audit::Target;
use super::openapi::{self, array, boolean, integer, nullable, obj, ok_with, string};
use super::{ok, Access, ApiError, ApiResult, Doc, Registry};
use super::{BaseUrl, Session};
use crate::auth::Role;
use crate::gateway::{CallError, LiveView};
use crate::ssh::{SshAuth, SshLogin};
use crate::state::AppState;
use crate::store::{NewServer, ServerDelete, ServerPatch, ServerRow, Written};
use crate::validate;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mezzanine_proto::v1::{command, reply, Ping};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn parse_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id: {raw:?} is not a server id")))
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("server {id} not found"))
}

fn opt_rfc3339(secs: Option<i64>) -> Value {
    secs.map_or(Value::Null, |s| json!(crate::time::rfc3339(s)))
}

/// The list shape; `detail` adds facts, metrics and connection data.
/// `live` must be read before `s`: a session records "offline" in the database before it
/// leaves the registry, so a row read after a missing session already says why.
/// `served`: the agent version this controller serves, to tell outdated agents.
/// `elsewhere`: whether another living controller holds the server's session.
fn server_json(
    s: &ServerRow,
    live: Option<LiveView>,
    elsewhere: bool,
    detail: bool,
    served: Option<&str>,
) -> Value {
    let (status, last_seen) = match &live {
        Some(l) => ("online", Some(l.last_seen_ms / 1000)),
        None if s.status == "online" && elsewhere => ("online", s.last_seen),
        None if s.status == "online" => ("offline", s.last_seen),
        None => (s.status.as_str(), s.last_seen),
    };
    let mut v = json!({
        "id": s.id,
        "name": s.name,
        "host": s.host,
        "status": status,
        "last_seen": opt_rfc3339(last_seen),
        "agent_version": s.agent_version,
        "agent_outdated": match (served, s.agent_version.as_deref()) {
            (Some(want), Some(have)) => json!(want != have),
            _ => Value::Null,
        },
        "agent_upgrade": s.upgrade.as_ref().map_or(Value::Null, |u| json!({
            "status": u.status,
            "from": u.from,
            "to": u.to,
            "error": u.error,
            "started_at": crate::time::rfc3339(u.started_at),
            "ended_at": opt_rfc3339(u.ended_at),
        })),
        "tags": s.tags,
    });
    if detail {
        let metrics = live
            .as_ref()
            .and_then(|l| l.metrics.clone())
            .or_else(|| s.metrics.clone());
        v["status_detail"] = json!(if live.is_some() || (elsewhere && s.status == "online") {
            None
        } else {
            s.status_detail.clone()
        });
        v["port"] = json!(s.port);
        v["username"] = json!(s.username);
        v["auth_type"] = json!(s.auth_type);
        v["facts"] = s.facts.clone().unwrap_or(Value::Null);
        v["metrics"] = metrics.unwrap_or(Value::Null);
        v["connected_since"] = live.as_ref().map_or(Value::Null, |l| {
            json!(crate::time::rfc3339_ms(l.connected_at_ms))
        });
        v["enrolled_at"] = opt_rfc3339(s.enrolled_at);
        v["cert_expires_at"] = opt_rfc3339(s.cert_not_after);
        v["created_at"] = json!(crate::time::rfc3339(s.created_at));
        v["host_key_fingerprint"] = json!(s.host_key_fingerprint);
        v["keep_credentials"] = json!(s.has_credentials);
    }
    v
}

/// Whether another controller sharing the database, still renewing its lease, holds the
/// server's agent session.
fn held_elsewhere(state: &AppState, s: &ServerRow) -> bool {
    s.controller_id.as_deref().is_some_and(|c| {
        c != state.store().controller_id() && state.living_controllers().contains(c)
    })
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let live = state.gateway().registry.views();
    let servers = state.store().servers().await?;
    let served = state.upgrades().served_version().await;
    Ok(Json(Value::Array(
        servers
            .iter()
            .map(|s| {
                server_json(
                    s,
                    live.get(&s.id).cloned(),
                    held_elsewhere(&state, s),
                    false,
                    served.as_deref(),
                )
            })
            .collect(),
    )))
}

async fn detail(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let live = state.gateway().registry.view(id);
    let s = state
        .store()
        .server(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let served = state.upgrades().served_version().await;
    let elsewhere = held_elsewhere(&state, &s);
    let mut v = server_json(&s, live, elsewhere, true, served.as_deref());
    let events: Vec<Value> = state
        .store()
        .events(id, 20)
        .await?
        .into_iter()
        .map(|(at, message)| json!({ "at": crate::time::rfc3339_ms(at), "message": message }))
        .collect();
    v["events"] = Value::Array(events);
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    host: String,
    auth_type: String,
    #[serde(default, deserialize_with = "super::present")]
    tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::present")]
    port: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    username: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    password: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    private_key: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    passphrase: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    host_key_fingerprint: Option<String>,
    #[serde(default)]
    keep_credentials: bool,
}

/// SSH credentials from a request body, validated (without connecting).
fn ssh_login(
    auth_type: &str,
    username: Option<&str>,
    password: Option<&str>,
    private_key: Option<&str>,
    passphrase: Option<&str>,
) -> ApiResult<SshLogin> {
    if !matches!(auth_type, "password" | "key") {
        return Err(ApiError::BadRequest(format!(
            "auth_type: {auth_type:?} is not one of manual, password, key"
        )));
    }
    let username = username
        .ok_or_else(|| ApiError::BadRequest("username: required for SSH adoption".into()))?;
    validate::username(username).map_err(|m| ApiError::BadRequest(format!("username: {m}")))?;
    let auth = match auth_type {
        "password" => {
            let p = password.filter(|p| !p.is_empty()).ok_or_else(|| {
                ApiError::BadRequest("password: required when auth_type is \"password\"".into())
            })?;
            if p.chars().count() > 4096 {
                return Err(ApiError::BadRequest(
                    "password: at most 4096 characters".into(),
                ));
            }
            SshAuth::Password(p.to_owned())
        }
        "key" => {
            let pem = private_key
                .filter(|k| !k.trim().is_empty())
                .ok_or_else(|| {
                    ApiError::BadRequest("private_key: required when auth_type is \"key\"".into())
                })?;
            crate::ssh::check_key(pem, passphrase)
                .map_err(|m| ApiError::BadRequest(format!("private_key: {m}")))?;
            SshAuth::Key {
                pem: pem.to_owned(),
                passphrase: passphrase.map(str::to_owned),
            }
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "auth_type: {other:?} is not one of manual, password, key"
            )))
        }
    };
    Ok(SshLogin {
        username: username.to_owned(),
        auth,
    })
}

fn check_fingerprint(fp: &str) -> ApiResult<()> {
    let ok = fp.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "host_key_fingerprint: {fp:?} is not of the form SHA256:<43 base64 characters> (as ssh-keygen -lf prints)"
        )))
    }
}

fn check_fields(
    name: Option<&str>,
    host: Option<&str>,
    port: Option<i64>,
    username: Option<&str>,
    tags: Option<&[String]>,
) -> ApiResult<()> {
    let field =
        |f: &str, r: Result<(), String>| r.map_err(|m| ApiError::BadRequest(format!("{f}: {m}")));
    if let Some(n) = name {
        field("name", validate::name(n))?;
    }
    if let Some(h) = host {
        field("host", validate::host(h))?;
    }
    if let Some(p) = port {
        if !(1..=65535).contains(&p) {
            return Err(ApiError::BadRequest(format!("port: {p} is not in 1-65535")));
        }
    }
    if let Some(u) = username {
        field("username", validate::username(u))?;
    }
    if let Some(t) = tags {
        field("tags", validate::tags(t))?;
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    Extension(BaseUrl(base)): Extension<BaseUrl>,
    Json(body): Json<CreateBody>,
) -> ApiResult<Response> {
    check_fields(
        Some(&body.name),
        Some(&body.host),
        body.port,
        body.username.as_deref(),
        body.tags.as_deref(),
    )?;
    let login = match body.auth_type.as_str() {
        "manual" => None,
        other => Some(ssh_login(
            other,
            body.username.as_deref(),
            body.password.as_deref(),
            body.private_key.as_deref(),
            body.passphrase.as_deref(),
        )?),
    };
    if let Some(fp) = &body.host_key_fingerprint {
        check_fingerprint(fp)?;
    }
    // Fail before creating anything if no agent binary can be served.
    state
        .installs()
        .script(&base)
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let tags = body.tags.clone().unwrap_or_default();
    let new = NewServer {
        name: &body.name,
        host: &body.host,
        port: body.port.unwrap_or(22),
        username: body.username.as_deref(),
        auth_type: &body.auth_type,
        tags: &tags,
    };
    let server = state
        .store()
        .create_server(&new, crate::time::now_secs())
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("a server named {:?} exists", body.name)))?;
    state.deploy_keys().create(server.id, false).await?;
    let mut resp = match login {
        Some(login) => {
            crate::ssh::start(
                state.adoptions(),
                server.id,
                base,
                login,
                body.keep_credentials,
                body.host_key_fingerprint.clone(),
            )
            .await?;
            (StatusCode::CREATED, ok(json!({ "id": server.id }))).into_response()
        }
        None => {
            let m = state.installs().mint(server.id, &base).await?;
            let (tok, cmd, expires) = (m.token, m.command, crate::time::rfc3339(m.expires_at));
            (
                StatusCode::CREATED,
                ok(json!({ "id": server.id, "token": tok, "install_command": cmd, "token_expires_at": expires })),
            )
                .into_response()
        }
    };
    resp.extensions_mut()
        .insert(Target(format!("server {}", server.name)));
    Ok(resp)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InstallCommandBody {
    /// Required to mint a token for a server that already has an agent: enrolling with it
    /// replaces that agent (which is told it was removed and stops).
    #[serde(default)]
    reenroll: bool,
}

async fn install_command(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Extension(BaseUrl(base)): Extension<BaseUrl>,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    // The body is optional; when sent, it is read strictly (a typo is not ignored).
    let body: InstallCommandBody = if body.iter().all(u8::is_ascii_whitespace) {
        InstallCommandBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?
    };
    if !state.store().server_exists(id).await? {
        return Err(not_found(id));
    }
    // A token for an enrolled server lets whoever holds it take the server's identity
    // (deploy key, future runs): only an admin, and only on purpose.
    if state.store().is_enrolled(id).await? {
        if session.require()?.user.role < Role::Admin {
            return Err(ApiError::Forbidden(
                "this server already has an agent; replacing it (re-enrolling) is admin-only"
                    .into(),
            ));
        }
        if !body.reenroll {
            return Err(ApiError::Conflict(
                "this server already has an agent; send {\"reenroll\": true} to mint a token that replaces it".into(),
            ));
        }
    }
    let m = state.installs().mint(id, &base).await?;
    let (tok, cmd, expires) = (m.token, m.command, crate::time::rfc3339(m.expires_at));
    Ok(ok(
        json!({ "id": id, "token": tok, "install_command": cmd, "token_expires_at": expires }),
    ))
}

fn deploy_key_json(k: &crate::deploy_keys::PublicKey) -> Value {
    json!({ "public_key": k.openssh, "fingerprint": k.fingerprint })
}

/// Reads only: keys are made with the server (or by rotation), never by a viewer's GET.
async fn deploy_key(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    if !state.store().server_exists(id).await? {
        return Err(not_found(id));
    }
    let key = state.deploy_keys().get(id).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "server {id} has no deploy key; POST /api/servers/{id}/deploy-key/rotate creates one"
        ))
    })?;
    Ok(Json(deploy_key_json(&key)))
}

async fn rotate_deploy_key(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let key = state.deploy_keys().create(id, true).await?;
    Ok(ok(deploy_key_json(&key)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReinstallBody {
    /// Pins the host key for this bootstrap (required with kept credentials when no key
    /// is pinned: they are never sent to a host whose key was not confirmed).
    #[serde(default, deserialize_with = "super::present")]
    host_key_fingerprint: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    auth_type: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    username: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    password: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    private_key: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    passphrase: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    keep_credentials: Option<bool>,
}

async fn reinstall(
    State(state): State<AppState>,
    Extension(BaseUrl(base)): Extension<BaseUrl>,
    Path(raw): Path<String>,
    Json(body): Json<ReinstallBody>,
) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    let server = state
        .store()
        .server(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let given = body.password.is_some() || body.private_key.is_some();
    let (login, keep) = if given {
        let auth_type = body.auth_type.clone().unwrap_or_else(|| {
            if body.private_key.is_some() {
                "key".into()
            } else {
                "password".into()
            }
        });
        let username = body.username.clone().or(server.username.clone());
        let login = ssh_login(
            &auth_type,
            username.as_deref(),
            body.password.as_deref(),
            body.private_key.as_deref(),
            body.passphrase.as_deref(),
        )?;
        (
            login,
            body.keep_credentials.unwrap_or(server.has_credentials),
        )
    } else {
        if server.host_key_fingerprint.is_none() && body.host_key_fingerprint.is_none() {
            return Err(ApiError::Conflict(
                "the server's host key is not pinned (it was forgotten): kept credentials are sent only to a confirmed host; give host_key_fingerprint, or the credentials again".into(),
            ));
        }
        let sealed = state.store().ssh_credentials(id).await?.ok_or_else(|| {
            ApiError::BadRequest(
                "no credentials: give password or private_key (they were not kept)".into(),
            )
        })?;
        let plain = state
            .key()
            .open(&crate::ssh::credentials_context(id), &sealed)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let login = serde_json::from_slice::<Value>(&plain)
            .ok()
            .and_then(|v| SshLogin::from_json(&v))
            .ok_or_else(|| ApiError::Internal("kept credentials are unreadable".into()))?;
        (login, body.keep_credentials.unwrap_or(true))
    };
    if let Some(fp) = &body.host_key_fingerprint {
        check_fingerprint(fp)?;
    }
    crate::ssh::start(
        state.adoptions(),
        id,
        base,
        login,
        keep,
        body.host_key_fingerprint.clone(),
    )
    .await?;
    let mut resp = (StatusCode::ACCEPTED, ok(json!({ "id": id }))).into_response();
    resp.extensions_mut()
        .insert(Target(format!("server {}", server.name)));
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "super::present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    host: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    port: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    username: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    tags: Option<Vec<String>>,
    #[serde(default)]
    forget_host_key: bool,
}

async fn update(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
    Json(body): Json<PatchBody>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    if body.name.is_none()
        && body.host.is_none()
        && body.port.is_none()
        && body.username.is_none()
        && body.tags.is_none()
        && !body.forget_host_key
    {
        // Nothing to change: the server as it is (a PATCH of nothing is a no-op).
        let s = state
            .store()
            .server(id)
            .await?
            .ok_or_else(|| not_found(id))?;
        let live = state.gateway().registry.view(id);
        let served = state.upgrades().served_version().await;
        let elsewhere = held_elsewhere(&state, &s);
        return Ok(ok(
            json!({ "server": server_json(&s, live, elsewhere, true, served.as_deref()) }),
        ));
    }
    // Where kept root credentials are sent is an admin's decision: a moderator who could
    // point the server at their own host would receive them at the next reinstall.
    let connection = body.host.is_some()
        || body.port.is_some()
        || body.username.is_some()
        || body.forget_host_key;
    if connection && session.require()?.user.role < Role::Admin {
        return Err(ApiError::Forbidden(
            "changing host, port or username, or forgetting the host key, is admin-only".into(),
        ));
    }
    let before = state
        .store()
        .server(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    check_fields(
        body.name.as_deref(),
        body.host.as_deref(),
        body.port,
        body.username.as_deref(),
        body.tags.as_deref(),
    )?;
    if body.forget_host_key {
        if !state.store().server_exists(id).await? {
            return Err(not_found(id));
        }
        state.store().set_host_key(id, None).await?;
    }
    let patch = ServerPatch {
        name: body.name.clone(),
        host: body.host,
        port: body.port,
        username: body.username,
        tags: body.tags,
    };
    match state
        .store()
        .update_server(id, &patch, crate::time::now_secs())
        .await?
    {
        Written::Done(s) => {
            // Kept credentials belong to the host they were given for.
            let moved =
                s.host != before.host || s.port != before.port || s.username != before.username;
            if moved && before.has_credentials {
                state.store().set_ssh_credentials(id, None).await?;
                tracing::info!(
                    server_id = id,
                    "connection changed: kept SSH credentials forgotten"
                );
            }
            let s = state.store().server(id).await?.unwrap_or(s);
            let live = state.gateway().registry.view(id);
            let served = state.upgrades().served_version().await;
            let elsewhere = held_elsewhere(&state, &s);
            Ok(ok(
                json!({ "server": server_json(&s, live, elsewhere, true, served.as_deref()) }),
            ))
        }
        Written::NotFound => Err(not_found(id)),
        Written::NameTaken => Err(ApiError::Conflict(format!(
            "name: a server named {:?} exists",
            body.name.unwrap_or_default()
        ))),
    }
}

async fn remove(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let serials = match state
        .store()
        .delete_server(id, crate::time::now_secs())
        .await?
    {
        ServerDelete::Deleted(serials) => serials,
        ServerDelete::NotFound => return Err(not_found(id)),
        ServerDelete::HasWorkflows(names) => {
            return Err(ApiError::Conflict(format!(
                "workflows run on this server: {}; deleting it would delete them and their run history, so delete or move them first",
                names.join(", ")
            )))
        }
    };
    let registry = &state.gateway().registry;
    registry.revoke(serials);
    let reason = "this server was deleted from Mezzanine";
    registry.remove(id, reason);
    // Another controller sharing the database may hold the session.
    state
        .store()
        .changes()
        .tell(crate::changes::Notice::Remove {
            server_id: id,
            reason: reason.into(),
        });
    Ok(ok(json!({})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeBody {
    #[serde(default)]
    force: bool,
}

fn upgrade_error(e: crate::upgrades::UpgradeError) -> ApiError {
    use crate::upgrades::UpgradeError as E;
    match e {
        E::NotFound => ApiError::NotFound(e.to_string()),
        E::Conflict(m) => ApiError::Conflict(m),
        E::Agent(m) => ApiError::BadGateway(m),
        E::Timeout(m) => ApiError::Timeout(m),
        E::Store(e) => e.into(),
    }
}

/// Sends this controller's agent binary to the server's agent (202 once the agent has
/// it, checked); the upgrade ends when the agent attaches again (`agent_upgrade`).
async fn upgrade_agent(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Option<Json<UpgradeBody>>,
) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    let force = body.is_some_and(|b| b.force);
    let started = state
        .upgrades()
        .start(id, force)
        .await
        .map_err(upgrade_error)?;
    Ok((
        StatusCode::ACCEPTED,
        ok(json!({ "from": started.from, "to": started.to })),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollingBody {
    #[serde(default, deserialize_with = "super::present")]
    server_ids: Option<Vec<i64>>,
    #[serde(default, deserialize_with = "super::present")]
    tag: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    batch_size: Option<i64>,
    #[serde(default)]
    force: bool,
}

/// A rolling upgrade over `server_ids`, the servers tagged `tag`, or (neither) every
/// server whose agent is outdated; `batch_size` at a time, stopping at the first upgrade
/// that does not succeed.
async fn upgrade_agents(
    State(state): State<AppState>,
    body: Option<Json<RollingBody>>,
) -> ApiResult<Response> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let batch = match body.batch_size {
        None => 1,
        Some(n) if (1..=crate::upgrades::MAX_BATCH as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "batch_size: {n} is not between 1 and {}",
                crate::upgrades::MAX_BATCH
            )))
        }
    };
    let servers = state.store().servers().await?;
    let ids: Vec<i64> = match (&body.server_ids, &body.tag) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "server_ids, tag: give one of them (or neither, for every outdated agent)".into(),
            ))
        }
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > 1000 {
                return Err(ApiError::BadRequest(
                    "server_ids: give between 1 and 1000 server ids".into(),
                ));
            }
            if let Some(bad) = ids.iter().find(|id| !servers.iter().any(|s| s.id == **id)) {
                return Err(ApiError::BadRequest(format!(
                    "server_ids: server {bad} does not exist"
                )));
            }
            let mut seen = std::collections::HashSet::new();
            ids.iter().copied().filter(|id| seen.insert(*id)).collect()
        }
        (None, Some(tag)) => {
            validate::tags(std::slice::from_ref(tag))
                .map_err(|e| ApiError::BadRequest(format!("tag: {e}")))?;
            servers
                .iter()
                .filter(|s| s.tags.iter().any(|t| t == tag))
                .map(|s| s.id)
                .collect()
        }
        (None, None) => {
            let served = state.upgrades().served_version().await;
            servers
                .iter()
                .filter(|s| {
                    s.agent_version.is_some() && s.agent_version.as_deref() != served.as_deref()
                })
                .map(|s| s.id)
                .collect()
        }
    };
    let (chosen, left_out) = state
        .upgrades()
        .rolling(ids, batch, body.force)
        .await
        .map_err(upgrade_error)?;
    Ok((
        StatusCode::ACCEPTED,
        ok(json!({
            "server_ids": chosen,
            "skipped": left_out
                .into_iter()
                .map(|(id, reason)| json!({ "server_id": id, "reason": reason }))
                .collect::<Vec<_>>(),
        })),
    )
        .into_response())
}

/// Maps a failed agent command to the API's errors.
pub fn call_error(e: CallError) -> ApiError {
    match e {
        // The server's state, not the controller's: 409, so clients that retry 5xx
        // against the whole API are not sent into a loop by one offline server.
        CallError::Offline => ApiError::Conflict("server offline".into()),
        CallError::Timeout(_) | CallError::Disconnected | CallError::Busy => {
            ApiError::Timeout(e.to_string())
        }
        CallError::Agent(m) => ApiError::BadGateway(m),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {
    range: Option<String>,
}

/// The ranges `?range=` takes: how far back, and the bucket size that serves it.
const RANGES: [(&str, i64, i64); 5] = [
    ("1h", 3_600, 60),
    ("6h", 6 * 3_600, 60),
    ("24h", 86_400, 60),
    ("7d", 7 * 86_400, 900),
    ("30d", 30 * 86_400, 900),
];

/// The recent heartbeats the controller holds for a server (its live chart), or with
/// `?range=` its stored history at one-minute or fifteen-minute points.
async fn metrics(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    let range = q
        .range
        .as_deref()
        .map(|r| {
            RANGES
                .iter()
                .find(|(name, _, _)| *name == r)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "range: one of {}",
                        RANGES.map(|(n, _, _)| n).join(", ")
                    ))
                })
        })
        .transpose()?;
    if !state.store().server_exists(id).await? {
        return Err(not_found(id));
    }
    let Some((name, span, step)) = range else {
        let samples = state.gateway().registry.samples(id);
        return Ok(Json(json!({ "samples": samples })));
    };
    let since = crate::time::now_secs() - span;
    let points = state.store().metric_points(id, *step, since).await?;
    Ok(Json(json!({
        "range": name,
        "step_s": step,
        "points": points.iter().map(|p| json!({
            "at": crate::time::rfc3339(p.at),
            "load1": p.load1,
            "memory_used_bytes": p.memory_used,
            "memory_total_bytes": p.memory_total,
            "disk_used_bytes": p.disk_used,
            "disk_total_bytes": p.disk_total,
        })).collect::<Vec<_>>(),
    })))
}

async fn ping(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw)?;
    if !state.store().server_exists(id).await? {
        return Err(not_found(id));
    }
    let started = Instant::now();
    let payload = crate::crypto::random_bytes::<16>()?.to_vec();
    let body = state
        .gateway()
        .fleet
        .call(
            id,
            command::Body::Ping(Ping {
                payload: payload.clone(),
            }),
            Duration::from_secs(10),
        )
        .await
        .map_err(call_error)?;
    match body {
        reply::Body::Pong(p) if p.payload == payload => Ok(ok(json!({
            "rtt_ms": started.elapsed().as_secs_f64() * 1000.0,
        }))),
        _ => Err(ApiError::BadGateway(
            "the agent answered with something other than the ping".into(),
        )),
    }
}

pub(super) fn routes(reg: &mut Registry) {
    let viewer = Access::Role(Role::Viewer);
    let moderator = Access::Role(Role::Moderator);
    let admin = Access::Role(Role::Admin);
    let tags = array(string());
    let summary = obj(
        &[
            ("id", integer()),
            ("name", string()),
            ("host", string()),
            (
                "status",
                json!({ "enum": ["pending", "connecting", "installing", "enrolling", "online", "offline", "failed"] }),
            ),
            ("last_seen", nullable(string())),
            ("agent_version", nullable(string())),
            ("agent_outdated", json!({ "type": ["boolean", "null"] })),
            (
                "agent_upgrade",
                json!({ "type": ["object", "null"], "properties": {
                    "status": { "enum": ["upgrading", "succeeded", "rolled_back", "failed", "skipped"] },
                    "from": { "type": ["string", "null"] },
                    "to": { "type": "string" },
                    "error": { "type": ["string", "null"] },
                    "started_at": { "type": "string" },
                    "ended_at": { "type": ["string", "null"] },
                }, "required": ["status", "from", "to", "error", "started_at", "ended_at"] }),
            ),
            ("tags", tags.clone()),
        ],
        &[
            "id",
            "name",
            "host",
            "status",
            "last_seen",
            "agent_version",
            "agent_outdated",
            "agent_upgrade",
            "tags",
        ],
    );
    let mut detailed = summary.clone();
    for (k, v) in [
        ("status_detail", nullable(string())),
        ("port", integer()),
        ("username", nullable(string())),
        ("auth_type", string()),
        ("facts", json!({ "type": ["object", "null"] })),
        ("metrics", json!({ "type": ["object", "null"] })),
        ("connected_since", nullable(string())),
        ("enrolled_at", nullable(string())),
        ("cert_expires_at", nullable(string())),
        ("created_at", string()),
        ("host_key_fingerprint", nullable(string())),
        ("keep_credentials", json!({ "type": "boolean" })),
        (
            "events",
            array(obj(
                &[("at", string()), ("message", string())],
                &["at", "message"],
            )),
        ),
    ] {
        detailed["properties"][k] = v;
    }
    let minted = ok_with(&[
        ("id", integer()),
        ("token", string()),
        ("install_command", string()),
        ("token_expires_at", string()),
    ]);
    // SSH adoption answers only { ok, id }; the token fields come with "manual".
    let mut created = minted.clone();
    created["required"] = json!(["ok", "id"]);
    reg.add(
        Method::GET,
        "/api/servers",
        viewer,
        Doc { summary: "List servers with live status", request: None, response: array(summary) , ..Default::default() },
        list,
    )
    .add(
        Method::POST,
        "/api/servers",
        moderator,
        Doc {
            summary: "Add a server. \"password\"/\"key\" adopt it over SSH in the background (watch status); \"manual\" returns a join token and the install one-liner",
            request: Some(obj(
                &[
                    ("name", openapi::name()),
                    ("host", openapi::host()),
                    ("auth_type", json!({ "enum": ["manual", "password", "key"] })),
                    ("tags", openapi::tags()),
                    ("port", openapi::port()),
                    ("username", openapi::ssh_username()),
                    ("password", json!({ "type": "string", "minLength": 1, "maxLength": 4096 })),
                    ("private_key", string()),
                    ("passphrase", string()),
                    ("host_key_fingerprint", openapi::fingerprint()),
                    ("keep_credentials", json!({ "type": "boolean" })),
                ],
                &["name", "host", "auth_type"],
            )),
            response: created,
            status: 201,
            // 400 also for what a schema cannot say: "password" needs username and
            // password, "key" a private key that parses (with its passphrase).
            errors: &[409],
            ..Default::default()
        },
        create,
    )
    .add(
        Method::GET,
        "/api/servers/{id}",
        viewer,
        Doc { summary: "Server detail: facts, latest metrics, connection", request: None, response: detailed.clone() , ..Default::default() },
        detail,
    )
    .add(
        Method::PATCH,
        "/api/servers/{id}",
        moderator,
        Doc {
            summary: "Update name, host, port, username or tags",
            request: Some(obj(
                &[
                    ("name", openapi::name()),
                    ("host", openapi::host()),
                    ("port", openapi::port()),
                    ("username", openapi::ssh_username()),
                    ("tags", openapi::tags()),
                    ("forget_host_key", json!({ "type": "boolean" })),
                ],
                &[],
            )),
            response: ok_with(&[("server", detailed)]),
            errors: &[409],
            ..Default::default()
        },
        update,
    )
    .add(
        Method::DELETE,
        "/api/servers/{id}",
        admin,
        Doc {
            summary: "Remove a server: its agent session closes and its certificate is refused from then on (409 while workflows use it)",
            request: None,
            response: ok_with(&[]),
            errors: &[409],
            ..Default::default()
        },
        remove,
    )
    .add(
        Method::POST,
        "/api/servers/{id}/install-command",
        moderator,
        Doc {
            summary: "Mint a fresh join token and install one-liner (older unused tokens stop working); for a server that has an agent, {\"reenroll\": true} (admin)",
            request: Some(obj(&[("reenroll", boolean())], &[])),
            optional_body: true,
            response: minted,
            errors: &[409],
            ..Default::default()
        },
        install_command,
    )
    .add(
        Method::POST,
        "/api/servers/{id}/reinstall",
        admin,
        Doc {
            summary: "Run the SSH bootstrap again (credentials in the body unless they were kept); also upgrades the agent",
            request: Some(obj(
                &[
                    ("auth_type", json!({ "enum": ["password", "key"] })),
                    ("username", openapi::ssh_username()),
                    ("password", json!({ "type": "string", "minLength": 1, "maxLength": 4096 })),
                    ("private_key", string()),
                    ("passphrase", string()),
                    ("keep_credentials", json!({ "type": "boolean" })),
                    ("host_key_fingerprint", openapi::fingerprint()),
                ],
                &[],
            )),
            response: ok_with(&[("id", integer())]),
            status: 202,
            errors: &[409],
            ..Default::default()
        },
        reinstall,
    )
    .add(
        Method::GET,
        "/api/servers/{id}/deploy-key",
        viewer,
        Doc {
            summary: "The server's ed25519 deploy key (public part), made when the server was added (reading never creates one); the private key is sealed and delivered to the server's agent",
            request: None,
            response: obj(
                &[("public_key", string()), ("fingerprint", string())],
                &["public_key", "fingerprint"],
            ),
            ..Default::default()
        },
        deploy_key,
    )
    .add(
        Method::POST,
        "/api/servers/{id}/deploy-key/rotate",
        admin,
        Doc {
            summary: "Replace the deploy key (the agent gets the new one; add it where the old one was authorized)",
            request: None,
            response: ok_with(&[("public_key", string()), ("fingerprint", string())]),
            ..Default::default()
        },
        rotate_deploy_key,
    )
    .add(
        Method::POST,
        "/api/servers/{id}/agent/upgrade",
        admin,
        Doc {
            summary: "Send this controller's agent binary to the server's agent over its session (SHA-256 and architecture checked); 202 once the agent has it. The agent tries it and keeps it only if it attaches (else rolls back); the outcome is the server's agent_upgrade. 409: offline, already on this version (unless force), another architecture, deploy steps held (unless force: they are stopped)",
            request: Some(obj(&[("force", boolean())], &[])),
            optional_body: true,
            response: ok_with(&[("from", nullable(string())), ("to", string())]),
            status: 202,
            errors: &[409, 502, 504],
            ..Default::default()
        },
        upgrade_agent,
    )
    .add(
        Method::POST,
        "/api/servers/agent/upgrade",
        admin,
        Doc {
            summary: "Rolling agent upgrade of server_ids, of the servers tagged tag, or of every outdated agent: batch_size at a time (default 1), each batch waited for, stopping at the first that does not succeed (the rest end skipped). Offline servers and those already on the version (unless force) are left out, listed in skipped",
            request: Some(obj(
                &[
                    ("server_ids", json!({ "type": "array", "items": { "type": "integer", "minimum": 1 }, "minItems": 1, "maxItems": 1000 })),
                    ("tag", openapi::tags()["items"].clone()),
                    ("batch_size", json!({ "type": "integer", "minimum": 1, "maximum": crate::upgrades::MAX_BATCH })),
                    ("force", boolean()),
                ],
                &[],
            )),
            optional_body: true,
            response: ok_with(&[
                ("server_ids", array(integer())),
                ("skipped", array(obj(&[("server_id", integer()), ("reason", string())], &["server_id", "reason"]))),
            ]),
            status: 202,
            errors: &[409],
            ..Default::default()
        },
        upgrade_agents,
    )
    .add(
        Method::POST,
        "/api/servers/{id}/ping",
        moderator,
        Doc {
            summary: "Round-trip a command through the agent session (409 when offline)",
            request: None,
            response: ok_with(&[("rtt_ms", json!({ "type": "number" }))]),
            errors: &[409, 502, 504],
            ..Default::default()
        },
        ping,
    )
    .add(
        Method::GET,
        "/api/servers/{id}/metrics",
        Access::Role(Role::Viewer),
        Doc {
            summary: "Load, memory and disk: the last heartbeats (up to 60, oldest first, while the agent is attached), or with ?range= the stored history (1h, 6h, 24h at one-minute points; 7d, 30d at fifteen-minute points; load averaged over each point)",
            response: {
                let point = obj(
                    &[
                        ("at", string()),
                        ("load1", json!({ "type": "number" })),
                        ("memory_used_bytes", integer()),
                        ("memory_total_bytes", integer()),
                        ("disk_used_bytes", integer()),
                        ("disk_total_bytes", integer()),
                    ],
                    &["at", "load1", "memory_used_bytes", "memory_total_bytes", "disk_used_bytes", "disk_total_bytes"],
                );
                obj(
                    &[
                        ("samples", array(point.clone())),
                        ("range", string()),
                        ("step_s", integer()),
                        ("points", array(point)),
                    ],
                    &[],
                )
            },
            query: vec![(
                "range",
                json!({ "enum": RANGES.map(|(n, _, _)| n) }),
                "the stored history over this range instead of the live samples",
            )],
            ..Default::default()
        },
        metrics,
    );
}
