//! The audit trail: a middleware that records every mutation (who, what, target, when,
//! outcome) after its handler ran, and `GET /api/audit` to page through it.

use super::openapi::{integer, nullable, obj, page_params, paged, string};
use super::{Access, ApiError, ApiResult, Doc, Registry};
use crate::auth::Role;
use crate::denials::{Admit, DenialKey, DENIAL_WINDOW};
use crate::state::AppState;
use crate::store::{AuditFilter, NewAudit};
use axum::extract::{Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;

/// Who acted; set by `authorize` from the session, or by a handler (login) that knows
/// better. Travels in the response's extensions.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: Option<i64>,
    pub name: String,
}

/// What was acted on, when a handler can name it better than the URL does.
#[derive(Debug, Clone)]
pub struct Target(pub String);

/// Why a request failed, as the API told the caller; set by `ApiError`'s response.
#[derive(Debug, Clone)]
pub struct Reason(pub String);

/// A failure's reason as the audit log keeps it: bounded, and with quoted values blanked —
/// an error may quote what the caller sent (`port: "hunter2" is not a number`), and the
/// log must not keep a secret typed into the wrong field.
pub fn reason_for_log(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_TARGET));
    let mut quoted = false;
    let mut escaped = false;
    for c in message.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
                out.push_str("…\"");
            }
            continue;
        }
        if c == '"' {
            quoted = true;
            out.push('"');
            continue;
        }
        out.push(c);
    }
    if quoted {
        out.push_str("…\"");
    }
    bounded(out, MAX_TARGET)
}

fn summary(key: &DenialKey, repeats: u64) -> NewAudit {
    let (ip, action, actor, status) = key.clone();
    NewAudit {
        actor_id: None,
        actor,
        action,
        target: Some(format!(
            "{repeats} more like this from this address within {} s, counted, not recorded one by one",
            DENIAL_WINDOW.as_secs()
        )),
        outcome: "denied",
        status,
        ip,
        reason: None,
    }
}

/// Writes the summaries of anonymous denials whose window ended, every window.
pub async fn flush_denials(state: AppState) {
    let mut tick = tokio::time::interval(DENIAL_WINDOW);
    loop {
        tick.tick().await;
        let (due, overflow) = state.denials().ended(Instant::now());
        for (key, repeats) in due {
            write(&state, &summary(&key, repeats)).await;
        }
        if overflow > 0 {
            tracing::warn!(
                count = overflow,
                "anonymous denials not recorded: too many distinct sources at once"
            );
        }
    }
}

async fn write(state: &AppState, rec: &NewAudit) {
    tracing::info!(
        action = %rec.action,
        actor = rec.actor.as_deref().unwrap_or("-"),
        target = rec.target.as_deref().unwrap_or("-"),
        status = rec.status,
        "audit"
    );
    if let Err(e) = state.store().audit(rec, crate::time::now_ms()).await {
        tracing::error!(error = %e, action = %rec.action, "could not write audit record");
    }
}

pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let Some(template) = super::matched(req.extensions()) else {
        return next.run(req).await;
    };
    let action = format!("{} {}", req.method(), template);
    let path = req.uri().path().to_owned();
    let ip = super::client_ip(req.extensions());
    let resp = next.run(req).await;
    let status = resp.status();
    if status == axum::http::StatusCode::METHOD_NOT_ALLOWED {
        // No handler ran: nothing was attempted on the resource.
        return resp;
    }
    let actor = resp.extensions().get::<Actor>();
    let target = resp
        .extensions()
        .get::<Target>()
        .map(|t| t.0.clone())
        .or_else(|| (path != template).then_some(path))
        // Anyone can send a 64 KB path; a record keeps enough to say what was asked.
        .map(|t| bounded(t, MAX_TARGET));
    let outcome = if status.is_success() {
        "success"
    } else if status.as_u16() == 401 || status.as_u16() == 403 {
        "denied"
    } else {
        "failure"
    };
    let reason = (!status.is_success())
        .then(|| resp.extensions().get::<Reason>())
        .flatten()
        .map(|r| reason_for_log(&r.0));
    let rec = NewAudit {
        reason,
        actor_id: actor.and_then(|a| a.id),
        actor: actor.map(|a| a.name.clone()),
        action,
        target,
        outcome,
        status: status.as_u16(),
        ip,
    };
    let anonymous_denial = rec.actor_id.is_none() && matches!(rec.status, 401 | 403 | 429);
    if anonymous_denial {
        let key = (
            rec.ip.clone(),
            rec.action.clone(),
            rec.actor.clone(),
            rec.status,
        );
        match state.denials().admit(key.clone(), Instant::now()) {
            Admit::Count => return resp,
            Admit::Record { ended: 0 } => {}
            Admit::Record { ended } => write(&state, &summary(&key, ended)).await,
        }
    }
    write(&state, &rec).await;
    resp
}

/// Characters of a target kept in the audit log and the log line.
const MAX_TARGET: usize = 256;

fn bounded(mut text: String, max: usize) -> String {
    if let Some((i, _)) = text.char_indices().nth(max) {
        text.truncate(i);
        text.push('…');
    }
    text
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    page: Option<i64>,
    per_page: Option<i64>,
    actor: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
}

async fn list(State(state): State<AppState>, Query(q): Query<PageQuery>) -> ApiResult<Json<Value>> {
    let (page, per_page, offset) = super::page_bounds(q.page, q.per_page)?;
    fn nonempty(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }
    // An outcome, when given, must be one (`?outcome=` is not "any": leave it out).
    if let Some(o) = q.outcome.as_deref() {
        if !["success", "denied", "failure"].contains(&o) {
            return Err(ApiError::BadRequest(format!(
                "outcome: {o:?} is not one of success, denied, failure"
            )));
        }
    }
    for (name, v) in [("actor", &q.actor), ("action", &q.action)] {
        if v.as_ref().is_some_and(|v| v.chars().count() > 300) {
            return Err(ApiError::BadRequest(format!(
                "{name}: longer than 300 characters"
            )));
        }
    }
    let filter = AuditFilter {
        actor: nonempty(&q.actor),
        action: nonempty(&q.action),
        outcome: nonempty(&q.outcome),
    };
    let (items, total) = state.store().audit_page(&filter, offset, per_page).await?;
    let items: Vec<Value> = items
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "at": crate::time::rfc3339_ms(r.at_ms),
                "actor_id": r.actor_id,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "outcome": r.outcome,
                "status": r.status,
                "ip": r.ip,
                "reason": r.reason,
            })
        })
        .collect();
    Ok(Json(
        json!({ "items": items, "page": page, "per_page": per_page, "total": total }),
    ))
}

pub(super) fn routes(reg: &mut Registry) {
    let entry = obj(
        &[
            ("id", integer()),
            ("at", string()),
            ("actor_id", nullable(integer())),
            ("actor", nullable(string())),
            ("action", string()),
            ("target", nullable(string())),
            (
                "outcome",
                json!({ "enum": ["success", "denied", "failure"] }),
            ),
            ("status", integer()),
            ("ip", nullable(string())),
            ("reason", nullable(string())),
        ],
        &["id", "at", "action", "outcome", "status"],
    );
    reg.add(
        Method::GET,
        "/api/audit",
        Access::Role(Role::Admin),
        Doc {
            summary: "Page through the audit log, newest first (?page=1&per_page=50&actor=&action=&outcome=)",
            request: None,
            response: paged(entry),
            query: {
                let mut q = page_params("records per page, 1 to 500 (default 50)");
                q.push(("actor", json!({ "type": "string", "maxLength": 300 }), "only this user's records"));
                q.push(("action", json!({ "type": "string", "maxLength": 300 }), "only this action, e.g. DELETE /api/servers/{id}"));
                q.push(("outcome", json!({ "enum": ["success", "denied", "failure"] }), "only this outcome"));
                q
            },
            errors: &[400],
            ..Default::default()
        },
        list,
    );
}

#[cfg(test)]
mod tests {
    use super::reason_for_log;

    #[test]
    fn a_reason_keeps_the_message_but_not_quoted_values() {
        assert_eq!(
            reason_for_log(r#"port: "hunter2" is not a number"#),
            "port: \"…\" is not a number"
        );
        assert_eq!(
            reason_for_log(r#"name: "a\"b" taken; id: "x"#),
            "name: \"…\" taken; id: \"…\""
        );
        assert_eq!(
            reason_for_log("invalid username or password"),
            "invalid username or password"
        );
        assert!(reason_for_log(&"x".repeat(1000)).chars().count() <= 257);
    }
}
