//! `/api/notifiers` (admin): where events are sent, a test button, and the delivery log.
//! URLs and secrets are sealed and never returned; the URL's host stands for it.

use super::audit::Target;
use super::openapi::{array, integer, nullable, obj, ok_with, string};
use super::{ok, Access, ApiError, ApiResult, Doc, Registry};
use crate::auth::Role;
use crate::notify::email::Smtp;
use crate::notify::{check_url, secret_context, url_context, EVENTS, KINDS};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    kind: String,
    #[serde(default, deserialize_with = "super::present")]
    url: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    smtp: Option<Smtp>,
    #[serde(default, deserialize_with = "super::present")]
    secret: Option<String>,
    events: Vec<String>,
}

fn parse_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id: {raw:?} is not a notifier id")))
}

/// The notifier a path names, or 404.
async fn notifier_or_404(state: &AppState, raw: &str) -> ApiResult<crate::store::NotifierRow> {
    let id = parse_id(raw)?;
    state
        .store()
        .notifier(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("notifier {id} not found")))
}

async fn create(State(state): State<AppState>, Json(b): Json<CreateBody>) -> ApiResult<Response> {
    let bad = |m: String| ApiError::BadRequest(m);
    crate::validate::name(&b.name).map_err(|e| bad(format!("name: {e}")))?;
    if !KINDS.contains(&b.kind.as_str()) {
        return Err(bad(format!("kind: one of {}", KINDS.join(", "))));
    }
    // Where it sends: a URL, or for e-mail its SMTP settings; sealed either way (a URL
    // may carry a token, SMTP settings a password).
    let insecure = &state.config().insecure_registries;
    let (host, destination) = match (b.kind.as_str(), &b.url, &b.smtp) {
        ("email", None, Some(smtp)) => {
            let host = smtp.check(insecure).map_err(bad)?;
            let sealed = serde_json::to_vec(smtp)
                .map_err(|e| ApiError::Internal(format!("smtp: {e}")))?;
            (host, sealed)
        }
        ("email", Some(_), _) => {
            return Err(bad("url: an e-mail notifier takes smtp, not url".into()))
        }
        ("email", None, None) => {
            return Err(bad(
                "smtp: required for an e-mail notifier ({host, port?, security?, username?, password?, from, to})".into(),
            ))
        }
        (_, _, Some(_)) => return Err(bad("smtp: only for kind email".into())),
        (_, None, None) => return Err(bad("url: required".into())),
        (_, Some(url), None) => (check_url(url, insecure).map_err(bad)?, url.clone().into_bytes()),
    };
    if b.events.is_empty() {
        return Err(bad("events: at least one".into()));
    }
    for (i, e) in b.events.iter().enumerate() {
        if !EVENTS.contains(&e.as_str()) {
            return Err(bad(format!("events[{i}]: one of {}", EVENTS.join(", "))));
        }
    }
    if let Some(s) = &b.secret {
        if !(16..=256).contains(&s.chars().count()) {
            return Err(bad("secret: 16 to 256 characters".into()));
        }
        if b.kind != "webhook" {
            return Err(bad("secret: only a webhook signs its bodies".into()));
        }
    }
    let mut events = b.events.clone();
    events.sort();
    events.dedup();
    // The row's id is part of the sealing context: insert with placeholders, then seal.
    let now = crate::time::now_secs();
    let store = state.store();
    let id = store
        .create_notifier(&b.name, &b.kind, &[], &host, None, &events, now)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("a notifier named {:?} exists", b.name)))?;
    let seal = |ctx: String, v: &[u8]| {
        state
            .key()
            .seal(&ctx, v)
            .map_err(|e| ApiError::Internal(format!("seal: {e}")))
    };
    let sealed = async {
        let url = seal(url_context(id), &destination)?;
        let secret = b
            .secret
            .as_ref()
            .map(|s| seal(secret_context(id), s.as_bytes()))
            .transpose()?;
        store
            .seal_notifier(id, &url, secret.as_deref())
            .await
            .map_err(ApiError::from)
    }
    .await;
    if let Err(e) = sealed {
        let _ = store.delete_notifier(id).await;
        return Err(e);
    }
    let mut resp = (StatusCode::CREATED, ok(json!({ "id": id }))).into_response();
    resp.extensions_mut()
        .insert(Target(format!("notifier {} ({}, {host})", b.name, b.kind)));
    Ok(resp)
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let all = state.store().notifiers().await?;
    Ok(Json(Value::Array(
        all.iter()
            .map(|n| {
                json!({
                    "id": n.id, "name": n.name, "kind": n.kind, "host": n.url_host,
                    "signed": n.secret_sealed.is_some(), "events": n.events,
                    "created_at": crate::time::rfc3339(n.created_at),
                })
            })
            .collect(),
    )))
}

async fn remove(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Response> {
    let n = notifier_or_404(&state, &raw).await?;
    let id = n.id;
    state.store().delete_notifier(id).await?;
    let mut resp = ok(json!({})).into_response();
    resp.extensions_mut()
        .insert(Target(format!("notifier {}", n.name)));
    Ok(resp)
}

async fn test(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Response> {
    let n = notifier_or_404(&state, &raw).await?;
    let id = n.id;
    state.notifier().test(id).await;
    let mut resp = (StatusCode::ACCEPTED, ok(json!({}))).into_response();
    resp.extensions_mut()
        .insert(Target(format!("test of notifier {}", n.name)));
    Ok(resp)
}

async fn deliveries(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = notifier_or_404(&state, &raw).await?.id;
    let ts = |t: Option<i64>| t.map(crate::time::rfc3339);
    let list = state.store().deliveries(id, 100).await?;
    Ok(Json(Value::Array(
        list.iter()
            .map(|d| {
                json!({
                    "id": d.id, "event": d.event, "subject": d.subject, "status": d.status,
                    "attempts": d.attempts, "last_error": d.last_error,
                    "created_at": crate::time::rfc3339(d.created_at),
                    "next_attempt_at": (d.status == "pending").then(|| crate::time::rfc3339(d.next_attempt_at)),
                    "delivered_at": ts(d.delivered_at),
                })
            })
            .collect(),
    )))
}

pub(super) fn routes(reg: &mut Registry) {
    let admin = Access::Role(Role::Admin);
    reg.add(
        Method::GET,
        "/api/notifiers",
        admin,
        Doc {
            summary: "Notifiers: name, kind, the URL's or SMTP server's host (never the URL or the SMTP settings), whether bodies are signed, events",
            response: array(obj(
                &[
                    ("id", integer()),
                    ("name", string()),
                    ("kind", json!({ "enum": KINDS })),
                    ("host", string()),
                    ("signed", json!({ "type": "boolean" })),
                    ("events", array(json!({ "enum": EVENTS }))),
                    ("created_at", string()),
                ],
                &["id", "name", "kind", "events"],
            )),
            ..Default::default()
        },
        list,
    )
    .add(
        Method::POST,
        "/api/notifiers",
        admin,
        Doc {
            summary: "Add a notifier { name, kind: webhook | slack | discord | email, url (webhook, slack, discord) or smtp (email), secret? (webhook: signs bodies), events }",
            request: Some(obj(
                &[
                    ("name", json!({ "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$" })),
                    ("kind", json!({ "enum": KINDS })),
                    ("url", json!({ "type": "string", "format": "uri" })),
                    ("smtp", obj(
                        &[
                            ("host", string()),
                            ("port", json!({ "type": "integer", "minimum": 1, "maximum": 65535 })),
                            ("security", json!({ "enum": ["starttls", "tls", "none"] })),
                            ("username", string()),
                            ("password", string()),
                            ("from", string()),
                            ("to", json!({ "type": "array", "minItems": 1, "maxItems": 20, "items": { "type": "string" } })),
                        ],
                        &["host", "from", "to"],
                    )),
                    ("secret", json!({ "type": "string", "minLength": 16, "maxLength": 256 })),
                    ("events", json!({ "type": "array", "minItems": 1, "items": { "enum": EVENTS } })),
                ],
                &["name", "kind", "events"],
            )),
            response: ok_with(&[("id", integer())]),
            status: 201,
            errors: &[400, 409],
            ..Default::default()
        },
        create,
    )
    .add(
        Method::DELETE,
        "/api/notifiers/{id}",
        admin,
        Doc {
            summary: "Remove a notifier and its delivery log",
            response: ok_with(&[]),
            errors: &[404],
            ..Default::default()
        },
        remove,
    )
    .add(
        Method::POST,
        "/api/notifiers/{id}/test",
        admin,
        Doc {
            summary: "Send a `test` event to this notifier now (see its deliveries)",
            request: None,
            optional_body: true,
            response: ok_with(&[]),
            status: 202,
            errors: &[404],
            ..Default::default()
        },
        test,
    )
    .add(
        Method::GET,
        "/api/notifiers/{id}/deliveries",
        admin,
        Doc {
            summary: "The last 100 deliveries: event, status (pending | delivered | failed), attempts, last error",
            response: array(obj(
                &[
                    ("id", integer()),
                    ("event", string()),
                    ("subject", string()),
                    ("status", json!({ "enum": ["pending", "delivered", "failed"] })),
                    ("attempts", integer()),
                    ("last_error", nullable(string())),
                    ("created_at", string()),
                    ("next_attempt_at", nullable(string())),
                    ("delivered_at", nullable(string())),
                ],
                &["id", "event", "status", "attempts"],
            )),
            errors: &[404],
            ..Default::default()
        },
        deliveries,
    );
}
