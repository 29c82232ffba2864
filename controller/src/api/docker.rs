//! `/api/servers/:id/docker/*`: each server's own Docker engine, reached through its agent
//! (which uses the Engine API), plus `/api/registries` credentials for image update checks.

use super::openapi::{self, array, boolean, integer, nullable, obj, ok_with, string};
use super::servers::call_error;
use super::{ok, Access, ApiError, ApiResult, BodyKind, Doc, Registry};
use crate::auth::Role;
use crate::docker_logs::{self, LogError, Piece};
use crate::images::{self, Credential, ImageRef};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mezzanine_proto::v1::{
    command, reply, ContainerAction, DockerContainerAction, DockerError, DockerListContainers,
    DockerListImages,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Cap on a non-follow log answer.
const MAX_LOG_JSON: usize = 8 * 1024 * 1024;

fn parse_server(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id: {raw:?} is not a server id")))
}

/// Container ids and names as the engine accepts them (they travel as one path segment):
/// the first character alphanumeric, so `.` and `..` never reach the engine's URL.
fn check_container(raw: &str) -> ApiResult<&str> {
    let ok = raw.len() <= 128
        && raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(raw)
    } else {
        Err(ApiError::BadRequest(format!(
            "container: {raw:?} is not a container id or name"
        )))
    }
}

/// 404 for an unknown server; the agent session is checked by the call itself.
async fn known_server(state: &AppState, raw: &str) -> ApiResult<i64> {
    let id = parse_server(raw)?;
    if !state.store().server_exists(id).await? {
        return Err(ApiError::NotFound(format!("server {id} not found")));
    }
    Ok(id)
}

/// Maps the engine's refusal to the API's errors: its own status where that is a client
/// error, 409 when the server has no working engine, 502 when the engine failed.
fn engine_error(e: DockerError) -> ApiError {
    match e.status {
        0 => ApiError::Conflict(format!(
            "Docker is not available on this server: {}",
            e.message
        )),
        400 => ApiError::BadRequest(e.message),
        404 => ApiError::NotFound(e.message),
        409 => ApiError::Conflict(e.message),
        s if (400..500).contains(&s) => ApiError::Conflict(e.message),
        _ => ApiError::BadGateway(format!("the Docker engine failed: {}", e.message)),
    }
}

fn unexpected() -> ApiError {
    ApiError::BadGateway("the agent sent an unexpected answer; is it up to date?".into())
}

async fn call(
    state: &AppState,
    id: i64,
    body: command::Body,
    timeout: Duration,
) -> ApiResult<reply::Body> {
    let body = state
        .gateway()
        .fleet
        .call(id, body, timeout)
        .await
        .map_err(call_error)?;
    match body {
        reply::Body::DockerError(e) => Err(engine_error(e)),
        other => Ok(other),
    }
}

fn rfc3339(secs: i64) -> Value {
    json!(crate::time::rfc3339(secs))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    all: Option<bool>,
}

async fn list_containers(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let id = known_server(&state, &raw).await?;
    let cmd = command::Body::DockerListContainers(DockerListContainers {
        all: q.all.unwrap_or(true),
    });
    let reply::Body::DockerContainers(list) =
        call(&state, id, cmd, state.config().docker_timeout).await?
    else {
        return Err(unexpected());
    };
    let out: Vec<Value> = list
        .containers
        .into_iter()
        .map(|c| {
            json!({
                "id": c.id,
                "names": c.names,
                "image": c.image,
                "image_id": c.image_id,
                "state": c.state,
                "status": c.status,
                "created": rfc3339(c.created),
                "ports": c.ports.iter().map(|p| json!({
                    "ip": (!p.ip.is_empty()).then_some(&p.ip),
                    "private_port": p.private_port,
                    "public_port": (p.public_port != 0).then_some(p.public_port),
                    "type": p.protocol,
                })).collect::<Vec<_>>(),
                "labels": c.labels,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// Seconds between SIGTERM and SIGKILL for stop and restart (default 10).
    #[serde(default, deserialize_with = "super::present")]
    timeout_secs: Option<u32>,
    /// Remove a running container (it is killed first).
    #[serde(default, deserialize_with = "super::present")]
    force: Option<bool>,
}

async fn container_action(
    state: AppState,
    raw: String,
    cid: String,
    action: ContainerAction,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let id = known_server(&state, &raw).await?;
    let container = check_container(&cid)?;
    let opts: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?
    };
    let timeout_secs = opts.timeout_secs.unwrap_or(10);
    if timeout_secs > 600 {
        return Err(ApiError::BadRequest("timeout_secs: at most 600".into()));
    }
    let cmd = command::Body::DockerContainerAction(DockerContainerAction {
        container: container.to_owned(),
        action: action as i32,
        stop_timeout_secs: timeout_secs,
        force: opts.force.unwrap_or(false),
    });
    let wait = state.config().docker_timeout + Duration::from_secs(u64::from(timeout_secs));
    let reply::Body::DockerActionResult(r) = call(&state, id, cmd, wait).await? else {
        return Err(unexpected());
    };
    Ok(ok(json!({
        "id": r.id,
        "state": (!r.state.is_empty()).then_some(&r.state),
        "changed": !r.unchanged,
        "detail": r.detail,
    })))
}

async fn start(
    State(state): State<AppState>,
    Path((raw, cid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    container_action(state, raw, cid, ContainerAction::Start, body).await
}

async fn stop(
    State(state): State<AppState>,
    Path((raw, cid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    container_action(state, raw, cid, ContainerAction::Stop, body).await
}

async fn restart(
    State(state): State<AppState>,
    Path((raw, cid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    container_action(state, raw, cid, ContainerAction::Restart, body).await
}

async fn remove(
    State(state): State<AppState>,
    Path((raw, cid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    container_action(state, raw, cid, ContainerAction::Remove, body).await
}

#[derive(Debug, Deserialize)]
struct ImagesQuery {
    check: Option<bool>,
}

async fn credential_for(state: &AppState, registry: &str) -> ApiResult<Option<Credential>> {
    images::registry_credential(state.store(), state.key(), registry)
        .await
        .map_err(ApiError::Internal)
}

/// The update status of one image, from a check result.
fn update_json(
    image: Result<&ImageRef, &str>,
    local: &[String],
    checked: Option<&images::Checked>,
) -> Value {
    let status = |status: &str, remote: Option<&str>, at: Option<i64>, detail: &str| {
        json!({
            "status": status,
            "remote_digest": remote,
            "checked_at": at.map(crate::time::rfc3339),
            "detail": (!detail.is_empty()).then_some(detail),
        })
    };
    let image = match image {
        Ok(i) => i,
        Err(why) => return status("unknown", None, None, why),
    };
    if local.is_empty() {
        return status(
            "unknown",
            None,
            None,
            "built or loaded on the server, never pulled from a registry: there is no registry digest to compare",
        );
    }
    match checked {
        None => status(
            "unknown",
            None,
            None,
            "not checked yet (a check has started; ask with ?check=true to wait for it)",
        ),
        Some(c) => match &c.digest {
            Ok(remote) if local.iter().any(|l| l == remote) => {
                status("up_to_date", Some(remote), Some(c.checked_at), "")
            }
            Ok(remote) => status(
                "update_available",
                Some(remote),
                Some(c.checked_at),
                &format!(
                    "{}:{} now points at another image",
                    image.repository, image.tag
                ),
            ),
            Err(e) => status("error", None, Some(c.checked_at), e),
        },
    }
}

async fn list_images(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<ImagesQuery>,
) -> ApiResult<Json<Value>> {
    let id = known_server(&state, &raw).await?;
    let cmd = command::Body::DockerListImages(DockerListImages {});
    let reply::Body::DockerImages(list) =
        call(&state, id, cmd, state.config().docker_timeout).await?
    else {
        return Err(unexpected());
    };
    let checker = state
        .updates()
        .map_err(|e| ApiError::Unavailable(format!("image update checks are unavailable: {e}")))?;
    let plans: Vec<Result<(ImageRef, Vec<String>), String>> = list
        .images
        .iter()
        .map(|img| images::plan(&img.repo_tags, &img.repo_digests))
        .collect();
    let wanted = checker.to_check(
        plans.iter().filter_map(|p| p.as_ref().ok()),
        q.check == Some(true),
    );
    let mut credentials: HashMap<String, Option<Credential>> = HashMap::new();
    for r in &wanted {
        if !credentials.contains_key(&r.registry) {
            let c = credential_for(&state, &r.registry).await?;
            credentials.insert(r.registry.clone(), c);
        }
    }
    let jobs = wanted.into_iter().map(|r| {
        let cred = credentials.get(&r.registry).cloned().flatten();
        (r, cred)
    });
    if q.check == Some(true) {
        let checks = jobs.map(|(r, cred)| async move { checker.check(&r, cred).await });
        futures_util::future::join_all(checks).await;
    } else {
        for (r, cred) in jobs {
            if checker.start(&r) {
                let state = state.clone();
                let tasks = state.tasks().clone();
                tasks.spawn(async move {
                    if let Ok(c) = state.updates() {
                        c.check(&r, cred).await;
                        c.finish(&r);
                    }
                });
            }
        }
    }
    // What this listing found out is news for the notifiers too (each update once).
    let found: Vec<_> = plans
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .filter_map(|(r, local)| Some((r.clone(), local.clone(), checker.cached(r)?)))
        .collect();
    if !found.is_empty() {
        if let Ok(Some(s)) = state.store().server(id).await {
            crate::image_watch::announce(&state, id, &s.name, found).await;
        }
    }
    let out: Vec<Value> = list
        .images
        .iter()
        .zip(plans)
        .map(|(img, plan)| {
            let update = match &plan {
                Ok((r, local)) => update_json(Ok(r), local, checker.cached(r).as_ref()),
                Err(why) => update_json(Err(why), &[], None),
            };
            json!({
                "id": img.id,
                "repo_tags": img.repo_tags,
                "repo_digests": img.repo_digests,
                "size": img.size,
                "created": rfc3339(img.created),
                "update": update,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    tail: Option<String>,
    follow: Option<bool>,
    timestamps: Option<bool>,
}

/// Appends one SSE event carrying `data` (split into lines; `\r` counts as a break, so no
/// byte of the log can end the event or start a field).
fn sse_event(out: &mut Vec<u8>, event: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    // One UTF-8 pass over the chunk (borrowed when valid, which is the common case).
    let text = String::from_utf8_lossy(data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    out.reserve(text.len() + text.len() / 8 + 16);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        for piece in line.split('\r') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(piece.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

async fn logs(
    State(state): State<AppState>,
    Path((raw, cid)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let id = known_server(&state, &raw).await?;
    let container = check_container(&cid)?;
    let follow = q.follow.unwrap_or(false);
    let tail = match q.tail.as_deref() {
        None => Some(if follow { 100 } else { 1000 }),
        Some("all") => None,
        Some(n) => Some(n.parse::<u32>().map_err(|_| {
            ApiError::BadRequest(format!("tail: {n:?} is not a number of lines or \"all\""))
        })?),
    };
    let req = docker_logs::LogRequest {
        container: container.to_owned(),
        tail,
        follow,
        timestamps: q.timestamps.unwrap_or(false),
    };
    let timeout = state.config().docker_timeout;
    let logs = docker_logs::open(&state.gateway().fleet, id, req, timeout)
        .await
        .map_err(log_error)?;
    if !follow {
        let c = logs.collect(MAX_LOG_JSON).await.map_err(log_error)?;
        // The lines arrive already encoded (see docker_logs::Collected).
        let mut body = b"{\"lines\":".to_vec();
        body.extend_from_slice(&c.lines_json);
        body.extend_from_slice(format!(",\"truncated\":{}}}", c.truncated).as_bytes());
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    state.tasks().spawn(async move {
        let gone = tx.clone();
        logs.follow(async move { gone.closed().await }, |piece| {
            let tx = tx.clone();
            async move {
                let mut out = Vec::new();
                match piece {
                    Piece::Output { stream, data } => sse_event(&mut out, stream, &data),
                    Piece::End(reason) => sse_event(
                        &mut out,
                        "end",
                        json!({ "reason": reason }).to_string().as_bytes(),
                    ),
                    Piece::Failed(e) => sse_event(
                        &mut out,
                        "error",
                        json!({ "error": log_error(e).to_string() })
                            .to_string()
                            .as_bytes(),
                    ),
                    Piece::Idle => out.extend_from_slice(b": keep-alive\n\n"),
                }
                tx.send(Ok(out.into())).await.is_ok()
            }
        })
        .await;
    });
    Ok(super::event_stream(rx, &state))
}

/// The log service's errors as the API's.
fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::Call(c) => call_error(c),
        LogError::Engine(d) => engine_error(d),
        LogError::Agent(m) => ApiError::BadGateway(m),
        LogError::Timeout(m) => ApiError::Timeout(m.into()),
        LogError::Unexpected => unexpected(),
    }
}

// ---- registry credentials ------------------------------------------------------------

fn check_registry_host(raw: &str) -> ApiResult<String> {
    let host = raw.to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok {
        Ok(host)
    } else {
        Err(ApiError::BadRequest(format!(
            "host: {raw:?} is not a registry host (host or host:port, as in image references)"
        )))
    }
}

async fn list_registries(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let rows = state.store().registry_credentials().await?;
    Ok(Json(Value::Array(
        rows.into_iter()
            .map(|r| {
                json!({ "host": r.host, "username": r.username, "updated_at": crate::time::rfc3339(r.updated_at) })
            })
            .collect(),
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialBody {
    username: String,
    password: String,
}

async fn put_registry(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Json(body): Json<CredentialBody>,
) -> ApiResult<Json<Value>> {
    let host = check_registry_host(&raw)?;
    // Taken as given (no trimming): what is stored is what the registry will be sent.
    let username = body.username.as_str();
    let chars = username.chars().count();
    if chars == 0 || chars > 255 || username.contains(':') {
        return Err(ApiError::BadRequest(
            "username: 1 to 255 characters, no colon".into(),
        ));
    }
    let chars = body.password.chars().count();
    if chars == 0 || chars > 4096 {
        return Err(ApiError::BadRequest(
            "password: 1 to 4096 characters".into(),
        ));
    }
    let sealed = state
        .key()
        .seal(&format!("registries:{host}"), body.password.as_bytes())?;
    state
        .store()
        .put_registry_credential(&host, username, &sealed, crate::time::now_secs())
        .await?;
    Ok(ok(json!({ "host": host, "username": username })))
}

async fn delete_registry(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let host = check_registry_host(&raw)?;
    if !state.store().delete_registry_credential(&host).await? {
        return Err(ApiError::NotFound(format!(
            "no credentials for registry {host}"
        )));
    }
    Ok(ok(json!({})))
}

pub(super) fn routes(reg: &mut Registry) {
    let viewer = Access::Role(Role::Viewer);
    let moderator = Access::Role(Role::Moderator);
    let admin = Access::Role(Role::Admin);
    let container = obj(
        &[
            ("id", string()),
            ("names", array(string())),
            ("image", string()),
            ("image_id", string()),
            ("state", string()),
            ("status", string()),
            ("created", string()),
            (
                "ports",
                array(obj(
                    &[
                        ("ip", nullable(string())),
                        ("private_port", integer()),
                        ("public_port", nullable(integer())),
                        ("type", string()),
                    ],
                    &["private_port"],
                )),
            ),
            (
                "labels",
                json!({ "type": "object", "additionalProperties": { "type": "string" } }),
            ),
        ],
        &[
            "id", "names", "image", "image_id", "state", "status", "created", "ports", "labels",
        ],
    );
    let action_result = ok_with(&[
        ("id", string()),
        ("state", nullable(string())),
        ("changed", boolean()),
        ("detail", string()),
    ]);
    let action_body = Some(obj(
        &[
            (
                "timeout_secs",
                json!({ "type": "integer", "minimum": 0, "maximum": 600 }),
            ),
            ("force", boolean()),
        ],
        &[],
    ));
    let update = obj(
        &[
            (
                "status",
                json!({ "enum": ["up_to_date", "update_available", "unknown", "error"] }),
            ),
            ("remote_digest", nullable(string())),
            ("checked_at", nullable(string())),
            ("detail", nullable(string())),
        ],
        &["status", "remote_digest", "checked_at", "detail"],
    );
    let image = obj(
        &[
            ("id", string()),
            ("repo_tags", array(string())),
            ("repo_digests", array(string())),
            ("size", integer()),
            ("created", string()),
            ("update", update),
        ],
        &[
            "id",
            "repo_tags",
            "repo_digests",
            "size",
            "created",
            "update",
        ],
    );
    let registry = obj(
        &[
            ("host", string()),
            ("username", string()),
            ("updated_at", string()),
        ],
        &["host", "username", "updated_at"],
    );
    reg.add(
        Method::GET,
        "/api/servers/{id}/docker/containers",
        viewer,
        Doc {
            summary: "The server's containers, stopped ones included (?all=false: running only)",
            request: None,
            response: array(container),
            query: vec![(
                "all",
                boolean(),
                "false: running containers only (default true)",
            )],
            errors: &[409, 502, 504],
            ..Default::default()
        },
        list_containers,
    );
    let doc = |summary: &'static str| Doc {
        summary,
        request: action_body.clone(),
        optional_body: true,
        response: action_result.clone(),
        path: vec![("cid", openapi::container())],
        errors: &[409, 502, 504],
        ..Default::default()
    };
    reg.add(
        Method::POST,
        "/api/servers/{id}/docker/containers/{cid}/start",
        moderator,
        doc("Start a container (200 with changed=false when it already runs)"),
        start,
    )
    .add(
        Method::POST,
        "/api/servers/{id}/docker/containers/{cid}/stop",
        moderator,
        doc("Stop a container (SIGTERM, then SIGKILL after timeout_secs; changed=false when already stopped)"),
        stop,
    )
    .add(
        Method::POST,
        "/api/servers/{id}/docker/containers/{cid}/restart",
        moderator,
        doc("Restart a container"),
        restart,
    )
    .add(
        Method::POST,
        "/api/servers/{id}/docker/containers/{cid}/remove",
        admin,
        doc("Remove a container (a running one only with force: true)"),
        remove,
    );
    reg.add(
        Method::GET,
        "/api/servers/{id}/docker/containers/{cid}/logs",
        viewer,
        Doc {
            summary: "A container's log: JSON { lines, truncated } (?tail=N|all, default 1000), or with ?follow=true Server-Sent Events `stdout`/`stderr` (data: one line each) ending with `end` or `error`",
            request: None,
            response: obj(
                &[
                    ("lines", array(obj(&[("stream", string()), ("line", string())], &["stream", "line"]))),
                    ("truncated", boolean()),
                ],
                &["lines", "truncated"],
            ),
            body: BodyKind::JsonOrEventStream,
            path: vec![("cid", openapi::container())],
            query: vec![
                ("tail", json!({ "type": "string", "pattern": "^(all|[0-9]{1,9})$" }), "last lines to start from, or all (default 1000; 100 when following)"),
                ("follow", boolean(), "true: a text/event-stream that follows the log until the container stops"),
                ("timestamps", boolean(), "prefix each line with the engine's timestamp"),
            ],
            errors: &[409, 502, 504],
            ..Default::default()
        },
        logs,
    )
    .add(
        Method::GET,
        "/api/servers/{id}/docker/images",
        viewer,
        Doc {
            summary: "The server's images with update status (cached; ?check=true asks the registries now)",
            request: None,
            response: array(image),
            query: vec![("check", boolean(), "true: ask the registries now rather than answer from the cache")],
            errors: &[409, 502, 504],
            ..Default::default()
        },
        list_images,
    );
    // `check_registry_host`: host or host:port as image references name a registry.
    let registry_host = json!({ "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[A-Za-z0-9.:\\[\\]-]+$" });
    reg.tag("registries")
        .add(
            Method::GET,
            "/api/registries",
            admin,
            Doc {
                summary: "Registries with stored credentials (never the password)",
                request: None,
                response: array(registry),
                ..Default::default()
            },
            list_registries,
        )
        .add(
            Method::PUT,
            "/api/registries/{host}",
            admin,
            Doc {
                summary: "Store credentials for a registry (sealed; used by image update checks)",
                request: Some(obj(
                    &[
                        ("username", json!({ "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^:]*$" })),
                        ("password", json!({ "type": "string", "minLength": 1, "maxLength": 4096 })),
                    ],
                    &["username", "password"],
                )),
                response: ok_with(&[("host", string()), ("username", string())]),
                path: vec![("host", registry_host.clone())],
                ..Default::default()
            },
            put_registry,
        )
        .add(
            Method::DELETE,
            "/api/registries/{host}",
            admin,
            Doc {
                summary: "Forget a registry's credentials",
                request: None,
                response: ok_with(&[]),
                path: vec![("host", registry_host)],
                ..Default::default()
            },
            delete_registry,
        );
}

#[cfg(test)]
mod tests {
    use super::sse_event;

    #[test]
    fn sse_events_carry_each_line_and_no_stray_breaks() {
        let mut out = Vec::new();
        sse_event(&mut out, "stdout", b"one\ntwo\r\nthree\rfour\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: stdout\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
        );
        let mut out = Vec::new();
        sse_event(&mut out, "stderr", b"bad \xff byte");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: stderr\ndata: bad \u{fffd} byte\n\n"
        );
    }
}
