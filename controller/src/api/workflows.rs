//! `/api/workflows`, `/api/deployments/runs` and `/api/webhooks`: deploy workflows, their
//! runs with live events, and HMAC-signed webhook triggers.

use super::openapi::{array, boolean, integer, nullable, obj, ok_with, page_params, paged, string};
use super::{ok, Access, ApiError, ApiResult, BaseUrl, BodyKind, Doc, Registry, Session};
use crate::auth::Role;
use crate::deploy::follow::Follow;
use crate::deploy::{self, definition};
use crate::state::AppState;
use crate::store::WorkflowDelete;
use crate::store::{RunEvent, RunRow};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hmac::Mac;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const RECENT_RUNS: i64 = 20;

fn parse_id(raw: &str, what: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id: {raw:?} is not a {what} id")))
}

fn ms(v: Option<i64>) -> Value {
    v.map_or(Value::Null, |ms| json!(crate::time::rfc3339(ms / 1000)))
}

fn run_summary(r: &RunRow) -> Value {
    json!({
        "id": r.id,
        "workflow_id": r.workflow_id,
        "status": r.status,
        "trigger": r.trigger,
        "trigger_detail": r.trigger_detail,
        "queued_at": ms(Some(r.queued_at)),
        "started_at": ms(r.started_at),
        "finished_at": ms(r.finished_at),
        "duration_ms": match (r.started_at, r.finished_at) {
            (Some(s), Some(f)) => json!(f - s),
            _ => Value::Null,
        },
        "error": r.error,
    })
}

async fn workflow_or_404(state: &AppState, id: i64) -> ApiResult<crate::store::WorkflowRow> {
    state
        .store()
        .workflow(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("workflow {id} not found")))
}

async fn run_or_404(state: &AppState, id: i64) -> ApiResult<RunRow> {
    state
        .store()
        .run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run {id} not found")))
}

/// The URL a CI system posts to, on the address the caller uses (see `BaseUrl`).
fn webhook_url(base: &str, id: i64) -> String {
    format!("{}/api/webhooks/{id}", base.trim_end_matches('/'))
}

/// A workflow's schedule as the API shows it.
fn schedule_json(w: &crate::store::WorkflowRow) -> Value {
    match &w.schedule {
        Some((cron, tz)) => json!({
            "cron": cron,
            "timezone": tz,
            "next_at": w.schedule_next_at.map(crate::time::rfc3339),
        }),
        None => Value::Null,
    }
}

/// `schedule` in a create or patch body: `{cron, timezone?}` (UTC by default), or `null`
/// to remove it. Returns what to store: the expression, the zone and the first tick.
fn parse_schedule(v: &Value) -> ApiResult<Option<(String, String, i64)>> {
    if v.is_null() {
        return Ok(None);
    }
    let Some(obj) = v.as_object() else {
        return Err(ApiError::BadRequest(
            "schedule: expected {cron, timezone} or null".into(),
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "cron" && *k != "timezone") {
        return Err(ApiError::BadRequest(format!("schedule.{k}: unknown field")));
    }
    let cron = obj
        .get("cron")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("schedule.cron: expected a cron expression".into()))?;
    let tz = match obj.get("timezone") {
        None => "UTC",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "schedule.timezone: expected an IANA time zone such as Europe/Berlin".into(),
            ))
        }
    };
    let s = crate::schedule::Schedule::parse(cron, tz).map_err(ApiError::BadRequest)?;
    let first = s
        .next_after(crate::time::now_secs())
        .ok_or_else(|| ApiError::BadRequest("schedule.cron: this expression never fires".into()))?;
    Ok(Some((cron.trim().to_owned(), tz.to_owned(), first)))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    let last_runs = state.store().last_runs().await?;
    for w in state.store().workflows().await? {
        let last = last_runs.get(&w.id);
        out.push(json!({
            "id": w.id,
            "name": w.name,
            "server_id": w.server_id,
            "webhook": w.webhook_secret.is_some(),
            "secrets_held": deploy::secrets_held(&w),
            "last_run": last.map(run_summary),
            "schedule": schedule_json(&w),
            "created_at": crate::time::rfc3339(w.created_at),
            "updated_at": crate::time::rfc3339(w.updated_at),
        }));
    }
    Ok(Json(Value::Array(out)))
}

async fn get_one(
    State(state): State<AppState>,
    Extension(BaseUrl(base)): Extension<BaseUrl>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "workflow")?;
    let w = workflow_or_404(&state, id).await?;
    let secrets: Vec<String> = deploy::open_secrets(state.key(), w.id, w.secrets.as_deref())
        .into_keys()
        .collect();
    let runs = state.store().recent_runs(id, RECENT_RUNS).await?;
    Ok(Json(json!({
        "id": w.id,
        "name": w.name,
        "server_id": w.server_id,
        "definition": w.definition,
        "secrets": secrets,
        "secrets_held": deploy::secrets_held(&w),
        "definition_role": w.definition_role,
        "webhook_url": w.webhook_secret.is_some().then(|| webhook_url(&base, w.id)),
        "schedule": schedule_json(&w),
        "created_at": crate::time::rfc3339(w.created_at),
        "updated_at": crate::time::rfc3339(w.updated_at),
        "runs": runs.iter().map(run_summary).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    server_id: i64,
    definition: Value,
    #[serde(default)]
    schedule: Option<Value>,
}

fn check_name(name: &str) -> ApiResult<()> {
    crate::validate::name(name).map_err(|e| ApiError::BadRequest(format!("name: {e}")))
}

async fn check_server(state: &AppState, id: i64) -> ApiResult<()> {
    if state.store().server_exists(id).await? {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "server_id: server {id} does not exist"
        )))
    }
}

fn parse_definition(v: &Value) -> ApiResult<definition::Parsed> {
    definition::parse(v).map_err(|e| ApiError::BadRequest(format!("definition.{e}")))
}

async fn store_secrets(
    state: &AppState,
    id: i64,
    secrets: &BTreeMap<String, String>,
    role: Role,
) -> ApiResult<()> {
    let sealed = if secrets.is_empty() {
        None
    } else {
        let raw = serde_json::to_vec(secrets).map_err(|e| ApiError::Internal(e.to_string()))?;
        Some(state.key().seal(&format!("workflows.secrets:{id}"), &raw)?)
    };
    state
        .store()
        .set_workflow_secrets(id, sealed.as_deref(), role.as_str())
        .await?;
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Json(body): Json<CreateBody>,
) -> ApiResult<Response> {
    let role = session.require()?.user.role;
    check_name(&body.name)?;
    let parsed = parse_definition(&body.definition)?;
    let schedule = body
        .schedule
        .as_ref()
        .map(parse_schedule)
        .transpose()?
        .flatten();
    check_server(&state, body.server_id).await?;
    let now = crate::time::now_secs();
    let id = state
        .store()
        .create_workflow(
            &body.name,
            body.server_id,
            &parsed.definition.to_json(),
            role.as_str(),
            now,
        )
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("a workflow named {:?} exists", body.name)))?;
    if let Some(secrets) = &parsed.secrets {
        store_secrets(&state, id, secrets, role).await?;
    }
    if let Some((cron, tz, first)) = &schedule {
        state
            .store()
            .set_schedule(id, Some((cron, tz, *first)))
            .await?;
    }
    let mut resp = (StatusCode::CREATED, ok(json!({ "id": id }))).into_response();
    resp.extensions_mut()
        .insert(super::audit::Target(format!("workflow {}", body.name)));
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "super::present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    server_id: Option<i64>,
    definition: Option<Value>,
    /// `null` removes the schedule; absent leaves it.
    #[serde(default, deserialize_with = "some_value")]
    schedule: Option<Value>,
}

/// Keeps an explicit `null` as `Some(Value::Null)` (serde's `Option` would make it `None`,
/// indistinguishable from an absent field).
fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

async fn patch(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
    Json(body): Json<PatchBody>,
) -> ApiResult<Json<Value>> {
    let role = session.require()?.user.role;
    let id = parse_id(&raw, "workflow")?;
    workflow_or_404(&state, id).await?;
    if let Some(n) = &body.name {
        check_name(n)?;
    }
    if let Some(s) = body.server_id {
        check_server(&state, s).await?;
    }
    let parsed = body.definition.as_ref().map(parse_definition).transpose()?;
    let schedule = body.schedule.as_ref().map(parse_schedule).transpose()?;
    let def_json = parsed.as_ref().map(|p| p.definition.to_json());
    let done = state
        .store()
        .update_workflow(
            id,
            body.name.as_deref(),
            body.server_id,
            def_json.as_ref(),
            role.as_str(),
            crate::time::now_secs(),
        )
        .await?;
    if !done {
        return Err(ApiError::Conflict(
            "a workflow with that name exists".into(),
        ));
    }
    if let Some(secrets) = parsed.as_ref().and_then(|p| p.secrets.as_ref()) {
        store_secrets(&state, id, secrets, role).await?;
    }
    if let Some(schedule) = &schedule {
        let s = schedule
            .as_ref()
            .map(|(c, t, f)| (c.as_str(), t.as_str(), *f));
        state.store().set_schedule(id, s).await?;
    }
    let wf = workflow_or_404(&state, id).await?;
    Ok(ok(
        json!({ "id": id, "secrets_held": deploy::secrets_held(&wf) }),
    ))
}

/// An admin approves the definition as it stands: the secrets are released to it.
async fn approve(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "workflow")?;
    if !state.store().approve_definition(id).await? {
        return Err(ApiError::NotFound(format!("workflow {id} not found")));
    }
    Ok(ok(json!({ "id": id, "secrets_held": false })))
}

async fn delete(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "workflow")?;
    match state.store().delete_workflow(id).await? {
        WorkflowDelete::Deleted => Ok(ok(json!({}))),
        WorkflowDelete::NotFound => Err(ApiError::NotFound(format!("workflow {id} not found"))),
        WorkflowDelete::Busy => Err(ApiError::Conflict(
            "a run of this workflow is queued or running; cancel it first".into(),
        )),
    }
}

async fn run_now(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&raw, "workflow")?;
    let wf = workflow_or_404(&state, id).await?;
    let user = session.require()?.user.username.clone();
    let run_id = deploy::enqueue(
        state.deploys(),
        &wf,
        "manual",
        json!({ "user": user }),
        None,
    )
    .await?
    .ok_or_else(|| ApiError::Internal("a manual run was taken for a duplicate".into()))?;
    Ok((StatusCode::CREATED, ok(json!({ "runId": run_id }))).into_response())
}

async fn rotate_webhook(
    State(state): State<AppState>,
    Extension(BaseUrl(base)): Extension<BaseUrl>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "workflow")?;
    workflow_or_404(&state, id).await?;
    let secret = hex::encode(crate::crypto::random_bytes::<32>()?);
    let sealed = state
        .key()
        .seal(&format!("workflows.webhook:{id}"), secret.as_bytes())?;
    state.store().set_webhook_secret(id, &sealed).await?;
    Ok(ok(
        json!({ "url": webhook_url(&base, id), "secret": secret }),
    ))
}

/// Stored events read per query while writing a run's detail.
const DETAIL_BATCH: i64 = 1000;
/// Bytes of a run's detail buffered before they are handed to the connection.
const DETAIL_CHUNK: usize = 64 * 1024;

/// A run with each step's stored output. The output can be many megabytes, so the body is
/// written as it is read from the store, a batch at a time, at the client's pace: a slow
/// reader holds one chunk of it, not the whole run.
const RUN_STATUSES: [&str; 7] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "interrupted",
];
const TRIGGERS: [&str; 3] = ["manual", "webhook", "schedule"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    workflow_id: Option<i64>,
    server_id: Option<i64>,
    status: Option<String>,
    trigger: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// Run history across workflows, newest first, filtered and paged.
async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Value>> {
    let (page, per_page, offset) = super::page_bounds(q.page, q.per_page)?;
    for (name, v) in [("workflow_id", q.workflow_id), ("server_id", q.server_id)] {
        if v.is_some_and(|v| v < 1) {
            return Err(ApiError::BadRequest(format!("{name} must be 1 or more")));
        }
    }
    if let Some(s) = q.status.as_deref().filter(|s| !RUN_STATUSES.contains(s)) {
        return Err(ApiError::BadRequest(format!(
            "status {s:?} is not one of {}",
            RUN_STATUSES.join(", ")
        )));
    }
    if let Some(t) = q.trigger.as_deref().filter(|t| !TRIGGERS.contains(t)) {
        return Err(ApiError::BadRequest(format!(
            "trigger {t:?} is not one of {}",
            TRIGGERS.join(", ")
        )));
    }
    let filter = crate::store::RunFilter {
        workflow_id: q.workflow_id,
        server_id: q.server_id,
        status: q.status.as_deref(),
        trigger: q.trigger.as_deref(),
    };
    let (runs, total) = state.store().runs_page(&filter, offset, per_page).await?;
    let names: std::collections::HashMap<i64, (String, i64)> = state
        .store()
        .workflows()
        .await?
        .into_iter()
        .map(|w| (w.id, (w.name, w.server_id)))
        .collect();
    let items: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut v = run_summary(r);
            let wf = names.get(&r.workflow_id);
            v["workflow"] = json!(wf.map(|w| &w.0));
            v["server_id"] = json!(r.server_id.or(wf.map(|w| w.1)));
            v
        })
        .collect();
    Ok(Json(
        json!({ "items": items, "page": page, "per_page": per_page, "total": total }),
    ))
}

async fn get_run(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&raw, "run")?;
    let run = run_or_404(&state, id).await?;
    let steps = state.store().run_steps(id).await?;
    let notes: Vec<Value> = state
        .store()
        .run_notes(id)
        .await?
        .iter()
        .map(|t| {
            serde_json::from_str::<Value>(t)
                .ok()
                .and_then(|v| v.get("message").cloned())
                .unwrap_or(Value::Null)
        })
        .collect();
    let mut head = run_summary(&run);
    head["stored_bytes"] = json!(run.stored_bytes);
    head["dropped_lines"] = json!(run.dropped_lines);
    head["notes"] = Value::Array(notes);
    // `{…}` without its closing brace, then `"steps":[…]}` as the events are read.
    let mut first = serde_json::to_vec(&head).map_err(|e| ApiError::Internal(e.to_string()))?;
    first.pop();
    first.extend_from_slice(b",\"steps\":[");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let store = state.store().clone();
    state.tasks().spawn(async move {
        let mut out = StepsWriter {
            buf: first,
            steps,
            open: None,
            next: 0,
        };
        let mut after = 0;
        loop {
            let batch = match store.run_events(id, after, DETAIL_BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    // The status line is gone: ending the body early is all that is left.
                    tracing::error!(run_id = id, error = %e, "cannot read a run's output");
                    let _ = tx.send(Err(std::io::Error::other("store error"))).await;
                    return;
                }
            };
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for e in &batch {
                if let ("stdout" | "stderr", Some(step)) = (e.kind.as_str(), e.step) {
                    out.line(step, &e.text);
                }
                if out.buf.len() >= DETAIL_CHUNK {
                    let chunk = std::mem::take(&mut out.buf);
                    if tx.send(Ok(chunk.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
        out.finish();
        let _ = tx.send(Ok(out.buf.into())).await;
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Writes a run's `steps` array, each step's `output` filled line by line in event order
/// (a run's steps run one after another, so their output does not interleave).
struct StepsWriter {
    buf: Vec<u8>,
    steps: Vec<crate::store::StepRow>,
    /// The step whose `output` string is open.
    open: Option<usize>,
    /// The next step to open.
    next: usize,
}

impl StepsWriter {
    fn open_next(&mut self) {
        if self.open.take().is_some() {
            self.buf.extend_from_slice(b"\"}");
        }
        let s = &self.steps[self.next];
        if self.next > 0 {
            self.buf.push(b',');
        }
        let mut obj = serde_json::to_vec(&json!({
            "index": s.idx,
            "name": s.name,
            "status": s.status,
            "exit_code": s.exit_code,
            "started_at": ms(s.started_at),
            "finished_at": ms(s.finished_at),
        }))
        .unwrap_or_else(|_| b"{}".to_vec());
        obj.pop();
        if obj.len() > 1 {
            obj.push(b',');
        }
        self.buf.extend_from_slice(&obj);
        self.buf.extend_from_slice(b"\"output\":\"");
        self.open = Some(self.next);
        self.next += 1;
    }

    /// Appends a line (and its newline) to step `step`'s output.
    fn line(&mut self, step: i64, text: &str) {
        let Some(pos) = self.steps.iter().position(|s| s.idx == step) else {
            return;
        };
        if self.open.is_some_and(|o| o > pos) {
            // Output of an earlier step after a later one started: never written by the
            // engine; skipped rather than reordering the document.
            return;
        }
        while self.open != Some(pos) {
            self.open_next();
        }
        // A JSON string's inside: the encoded text without its quotes.
        let start = self.buf.len();
        let _ = serde_json::to_writer(&mut self.buf, text);
        self.buf.pop();
        self.buf.remove(start);
        self.buf.extend_from_slice(b"\\n");
    }

    fn finish(&mut self) {
        while self.next < self.steps.len() {
            self.open_next();
        }
        if self.open.take().is_some() {
            self.buf.extend_from_slice(b"\"}");
        }
        self.buf.extend_from_slice(b"]}");
    }
}

async fn cancel(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "run")?;
    let status = match deploy::cancel(state.deploys(), id).await? {
        deploy::Cancel::Queued => "cancelled",
        deploy::Cancel::Cancelling => "cancelling",
    };
    Ok(ok(json!({ "status": status })))
}

/// One SSE event for a stored or live run event.
fn sse(out: &mut Vec<u8>, e: &RunEvent) {
    use std::io::Write;
    match e.kind.as_str() {
        "stdout" | "stderr" => {
            // Written by hand: this is the hot path of a chatty step.
            let _ = write!(
                out,
                "id: {}\nevent: output\ndata: {{\"step\":{},\"stream\":\"{}\",\"line\":",
                e.seq,
                e.step.unwrap_or(0),
                e.kind,
            );
            if serde_json::to_writer(&mut *out, &e.text).is_err() {
                out.extend_from_slice(b"\"\"");
            }
            let _ = write!(out, ",\"at\":{}}}\n\n", e.at);
        }
        kind => {
            let _ = write!(out, "id: {}\nevent: {kind}\ndata: {}\n\n", e.seq, e.text);
        }
    }
}

async fn events(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(&raw, "run")?;
    run_or_404(&state, id).await?;
    let after: i64 = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|n: &i64| *n >= 0)
            .ok_or_else(|| ApiError::BadRequest("Last-Event-ID: not an event id".into()))?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    state
        .tasks()
        .spawn(pump_events(state.clone(), id, after, tx));
    Ok(super::event_stream(rx, &state))
}

/// Encodes what `deploy::follow` yields as SSE.
async fn pump_events(
    state: AppState,
    run_id: i64,
    after: i64,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let viewer = tx.clone();
    let left = async move { viewer.closed().await };
    deploy::follow::follow(state.deploys(), run_id, after, left, |piece| {
        let out = match piece {
            Follow::Events(batch) => {
                let mut out = Vec::new();
                for e in batch.iter() {
                    sse(&mut out, e);
                }
                Bytes::from(out)
            }
            Follow::LeftBehind => {
                let note = json!({ "message": "this connection fell behind and live output was skipped; continuing from stored output" });
                Bytes::from(format!("event: note\ndata: {note}\n\n"))
            }
            Follow::Idle => Bytes::from_static(b": keep-alive\n\n"),
        };
        let tx = tx.clone();
        async move { tx.send(Ok(out)).await.is_ok() }
    })
    .await;
}

/// Constant-time check of `X-Hub-Signature-256: sha256=<hex>` over the raw body.
fn signature_ok(secret: &[u8], body: &[u8], header: Option<&HeaderValue>) -> bool {
    let Some(given) = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn payload_string(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
        .filter(|s| s.len() <= 1024 && !s.contains('\0'))
        .map(str::to_owned)
}

async fn webhook(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let denied = || ApiError::Unauthorized("invalid signature".into());
    let id = raw.parse::<i64>().map_err(|_| denied())?;
    let wf = state.store().workflow(id).await?.ok_or_else(denied)?;
    let sealed = wf.webhook_secret.as_deref().ok_or_else(denied)?;
    let secret = state
        .key()
        .open(&format!("workflows.webhook:{id}"), sealed)
        .map_err(|_| {
            ApiError::Internal(format!("webhook secret of workflow {id} does not open"))
        })?;
    if !signature_ok(&secret, &body, headers.get("x-hub-signature-256")) {
        return Err(denied());
    }
    let payload: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("body: not JSON ({e})")))?
    };
    let delivery = headers
        .get("x-github-delivery")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.len() <= 200);
    let git_ref = payload_string(&payload, &["ref"]);
    let parsed = definition::parse(&wf.definition)
        .map_err(|e| ApiError::Conflict(format!("the stored definition is invalid: {e}")))?;
    if !parsed.definition.branches.is_empty()
        && !git_ref
            .as_deref()
            .is_some_and(|r| parsed.definition.accepts_ref(r))
    {
        return Ok(ok(json!({ "skipped": "ref" })).into_response());
    }
    let commit = payload_string(&payload, &["after"])
        .or_else(|| payload_string(&payload, &["head_commit", "id"]));
    let repo = payload_string(&payload, &["repository", "full_name"])
        .or_else(|| payload_string(&payload, &["repository", "clone_url"]));
    let detail = json!({ "ref": git_ref, "commit": commit, "repo": repo, "delivery": delivery });
    // A pool's workflow: the push rolls out across the pool's members instead.
    let pools = state.pools().pools_of_workflow(wf.id).await?;
    if !pools.is_empty() {
        let store = state.store();
        if let Some(d) = delivery {
            if !store
                .record_delivery(wf.id, d, crate::time::now_secs())
                .await?
            {
                return Ok(ok(json!({ "duplicate": true })).into_response());
            }
        }
        let mut rollouts = Vec::new();
        for pool in pools {
            let mut d = detail.clone();
            d["user"] = json!("webhook");
            match state.pools().deploy(pool, None, d).await {
                Ok(id) => rollouts.push(id),
                Err(e) => {
                    // Nothing started: the provider's retry of this delivery may.
                    if let (true, Some(d)) = (rollouts.is_empty(), delivery) {
                        store.forget_delivery(wf.id, d).await?;
                    }
                    return Err(e.into());
                }
            }
        }
        return Ok((StatusCode::ACCEPTED, ok(json!({ "rolloutIds": rollouts }))).into_response());
    }
    // The delivery id is recorded with the run: if queuing fails, the provider's retry
    // queues it rather than being told it is a duplicate.
    match deploy::enqueue(state.deploys(), &wf, "webhook", detail, delivery).await? {
        Some(run_id) => Ok((StatusCode::CREATED, ok(json!({ "runId": run_id }))).into_response()),
        None => Ok(ok(json!({ "duplicate": true })).into_response()),
    }
}

pub(super) fn routes(reg: &mut Registry) {
    let viewer = Access::Role(Role::Viewer);
    let moderator = Access::Role(Role::Moderator);
    let admin = Access::Role(Role::Admin);
    let any = json!({});
    let run = obj(
        &[
            ("id", integer()),
            ("workflow_id", integer()),
            (
                "status",
                json!({ "enum": ["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "interrupted"] }),
            ),
            (
                "trigger",
                json!({ "enum": ["manual", "webhook", "schedule"] }),
            ),
            ("trigger_detail", any.clone()),
            ("queued_at", string()),
            ("started_at", nullable(string())),
            ("finished_at", nullable(string())),
            ("duration_ms", nullable(integer())),
            ("error", nullable(string())),
        ],
        &["id", "workflow_id", "status", "trigger", "queued_at"],
    );
    let definition_schema = obj(
        &[
            (
                "steps",
                json!({ "type": "array", "minItems": 1, "maxItems": 50, "items": obj(
                    &[
                        ("name", string()),
                        ("uses", string()),
                        ("with", any.clone()),
                        ("timeout_s", integer()),
                        ("env", any.clone()),
                    ],
                    &["name", "uses"],
                ) }),
            ),
            ("env", any.clone()),
            ("secrets", any.clone()),
            ("branches", array(string())),
        ],
        &["steps"],
    );
    // Cron: five crontab fields, or six with seconds first; an IANA zone (UTC default).
    let schedule_schema = nullable(obj(
        &[
            (
                "cron",
                json!({ "type": "string", "minLength": 9, "maxLength": 200 }),
            ),
            (
                "timezone",
                json!({ "type": "string", "minLength": 1, "maxLength": 64 }),
            ),
        ],
        &["cron"],
    ));
    reg.add(
        Method::GET,
        "/api/workflows",
        viewer,
        Doc {
            summary: "Workflows with their last run",
            request: None,
            response: array(any.clone()),
            ..Default::default()
        },
        list,
    )
    .add(
        Method::POST,
        "/api/workflows",
        moderator,
        Doc {
            summary: "Create a workflow { name, server_id, definition, schedule? } (400 names the offending field)",
            request: Some(obj(
                &[("name", super::openapi::name()), ("server_id", super::openapi::id()), ("definition", definition_schema.clone()), ("schedule", schedule_schema.clone())],
                &["name", "server_id", "definition"],
            )),
            response: ok_with(&[("id", integer())]),
            status: 201,
            errors: &[409],
            ..Default::default()
        },
        create,
    )
    .add(
        Method::GET,
        "/api/workflows/{id}",
        viewer,
        Doc {
            summary: "A workflow (definition without secret values) and its recent runs",
            request: None,
            response: any.clone(),
            ..Default::default()
        },
        get_one,
    )
    .add(
        Method::PATCH,
        "/api/workflows/{id}",
        moderator,
        Doc {
            summary: "Change name, server_id, definition or schedule (`null` removes it; a definition without `secrets` keeps the stored ones; secrets an admin set are then held until an admin approves — `secrets_held`)",
            request: Some(obj(
                &[("name", super::openapi::name()), ("server_id", super::openapi::id()), ("definition", definition_schema), ("schedule", schedule_schema)],
                &[],
            )),
            response: ok_with(&[("id", integer()), ("secrets_held", boolean())]),
            errors: &[409],
            ..Default::default()
        },
        patch,
    )
    .add(
        Method::POST,
        "/api/workflows/{id}/approve",
        admin,
        Doc {
            summary: "Approve the definition as it stands: secrets an admin set are released to its runs again",
            request: None,
            response: ok_with(&[("id", integer()), ("secrets_held", boolean())]),
            ..Default::default()
        },
        approve,
    )
    .add(
        Method::DELETE,
        "/api/workflows/{id}",
        admin,
        Doc {
            summary: "Delete a workflow and its runs (409 while one is queued or running)",
            request: None,
            response: ok_with(&[]),
            errors: &[409],
            ..Default::default()
        },
        delete,
    )
    .add(
        Method::POST,
        "/api/workflows/{id}/run",
        moderator,
        Doc {
            summary: "Trigger a manual run → { runId } (runs of a workflow queue one after another)",
            request: None,
            response: ok_with(&[("runId", integer())]),
            status: 201,
            errors: &[409],
            ..Default::default()
        },
        run_now,
    )
    .add(
        Method::POST,
        "/api/workflows/{id}/webhook/rotate",
        admin,
        Doc {
            summary: "Mint a new webhook URL and HMAC secret (shown once, stored sealed)",
            request: None,
            response: ok_with(&[("url", string()), ("secret", string())]),
            ..Default::default()
        },
        rotate_webhook,
    );
    let mut listed = run.clone();
    listed["properties"]["workflow"] = nullable(string());
    listed["properties"]["server_id"] = nullable(integer());
    let id_filter = json!({ "type": "integer", "minimum": 1, "maximum": i64::MAX });
    reg.tag("deployments")
        .add(
            Method::GET,
            "/api/deployments/runs",
            viewer,
            Doc {
                summary: "Run history of every workflow, newest first, filtered by workflow, server, status and trigger, paged",
                response: paged(listed),
                query: [
                    vec![
                        ("workflow_id", id_filter.clone(), "only runs of this workflow"),
                        ("server_id", id_filter, "only runs on this server"),
                        ("status", json!({ "enum": RUN_STATUSES }), "only runs in this state"),
                        ("trigger", json!({ "enum": TRIGGERS }), "only runs started this way"),
                    ],
                    page_params("runs per page, 1 to 500 (default 50)"),
                ]
                .concat(),
                ..Default::default()
            },
            list_runs,
        )
        .add(
            Method::GET,
            "/api/deployments/runs/{id}",
            viewer,
            Doc {
                summary: "Run status, timings, trigger and per-step { name, status, exit_code, started_at, finished_at, output }",
                request: None,
                response: run,
                ..Default::default()
            },
            get_run,
        )
        .add(
            Method::GET,
            "/api/deployments/runs/{id}/events",
            viewer,
            Doc {
                summary: "Server-Sent Events: `step`, `output` ({step, stream, line}), `note`, `end`; ids are sequence numbers, resumable with Last-Event-ID; replays from the start",
                request: None,
                response: string(),
                body: BodyKind::EventStream,
                ..Default::default()
            },
            events,
        )
        .add(
            Method::POST,
            "/api/deployments/runs/{id}/cancel",
            moderator,
            Doc {
                summary: "Cancel a queued run, or stop a running one (its step's processes are terminated)",
                request: None,
                response: ok_with(&[("status", json!({ "enum": ["cancelled", "cancelling"] }))]),
                errors: &[409],
                ..Default::default()
            },
            cancel,
        );
    reg.tag("webhooks").add(
        Method::POST,
        "/api/webhooks/{id}",
        Access::Public,
        Doc {
            summary: "Trigger a workflow: body signed with its secret in X-Hub-Signature-256: sha256=<hex> (401 otherwise); X-GitHub-Delivery seen before → duplicate; branch filter → skipped",
            // The CI system's JSON payload (GitHub's push event: `ref`, `after`, `repository`).
            request: Some(json!({ "type": "object" })),
            // 201 { runId } when a run was queued; 200 { duplicate } or { skipped }.
            response: obj(
                &[
                    ("ok", json!({ "const": true })),
                    ("runId", integer()),
                    ("rolloutIds", array(integer())),
                    ("duplicate", boolean()),
                    ("skipped", string()),
                ],
                &["ok"],
            ),
            status: 201,
            also: &[200, 202],
            errors: &[401, 409],
            ..Default::default()
        },
        webhook,
    );
}

#[cfg(test)]
mod tests {
    use super::signature_ok;
    use axum::http::HeaderValue;

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        // printf '%s' '{"ref":"refs/heads/main"}' | openssl dgst -sha256 -hmac s3cret
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = HeaderValue::from_static(
            "sha256=232a5e067b6a5aa567ed5a1d21a0dffaf6ef0eeecb6bd9bcf43b3d5ef3fc4f43",
        );
        assert!(signature_ok(b"s3cret", body, Some(&good)));
        assert!(!signature_ok(
            b"s3cret",
            br#"{"ref":"refs/heads/dev"}"#,
            Some(&good)
        ));
        assert!(!signature_ok(b"other", body, Some(&good)));
        assert!(!signature_ok(b"s3cret", body, None));
        assert!(!signature_ok(
            b"s3cret",
            body,
            Some(&HeaderValue::from_static("sha256=zz"))
        ));
        assert!(!signature_ok(
            b"s3cret",
            body,
            Some(&HeaderValue::from_static("sha1=00"))
        ));
    }
}
