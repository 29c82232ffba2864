//! `GET /api/events`: one Server-Sent Events stream per panel tab saying what changed
//! (`{kind, id}`), so the panel refetches only that instead of polling. Resumable with
//! `Last-Event-ID`; `reset` means "refetch everything" (a restart or a long absence).

use super::openapi::string;
use super::{Access, ApiError, ApiResult, BodyKind, Doc, Registry, Session};
use crate::auth::Role;
use crate::changes::{Change, Resume};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// How often an idle stream sends a comment (proxies drop silent connections) and
/// re-checks that its session still holds.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Servers whose heartbeats one stream may follow.
const MAX_METRICS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Comma-separated server ids whose heartbeat metrics to include.
    metrics: Option<String>,
}

fn parse_metrics(raw: Option<&str>) -> Result<HashSet<i64>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(HashSet::new());
    };
    let ids = raw
        .split(',')
        .map(|p| p.trim().parse::<i64>().ok().filter(|n| *n > 0))
        .collect::<Option<HashSet<i64>>>()
        .ok_or_else(|| {
            ApiError::BadRequest("metrics: a comma-separated list of server ids".into())
        })?;
    if ids.len() > MAX_METRICS {
        return Err(ApiError::BadRequest(format!(
            "metrics: at most {MAX_METRICS} servers"
        )));
    }
    Ok(ids)
}

async fn stream(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let ctx = session.require()?.clone();
    let metrics = parse_metrics(q.metrics.as_deref())?;
    let last = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| s.len() <= 64)
                .ok_or_else(|| ApiError::BadRequest("Last-Event-ID: not an event id".into()))?
                .trim()
                .to_owned(),
        ),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let (live, resume) = state.store().changes().subscribe(last.as_deref());
    let store = state.store().clone();
    state.tasks().spawn(async move {
        let mut pump = Pump {
            store,
            tx,
            admin: ctx.user.role == Role::Admin,
            metrics,
            seen: 0,
        };
        pump.run(live, resume, ctx.hash, ctx.token.is_some()).await;
    });
    Ok(super::event_stream(rx, &state))
}

struct Pump {
    store: crate::store::Store,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    admin: bool,
    metrics: HashSet<i64>,
    /// The newest change sent, so one both replayed and live goes once.
    seen: u64,
}

impl Pump {
    async fn send(&self, text: String) -> bool {
        self.tx.send(Ok(Bytes::from(text))).await.is_ok()
    }

    /// Sends `event` with the newest change's id (the client resumes from there), and
    /// skips whatever is already older.
    async fn mark(&mut self, event: &str) -> bool {
        let feed = self.store.changes();
        self.seen = feed.current();
        let id = feed.event_id(self.seen);
        self.send(format!("id: {id}\nevent: {event}\ndata: {{}}\n\n"))
            .await
    }

    async fn change(&mut self, c: &Change) -> bool {
        match c {
            Change::Entity { seq, kind, .. } => {
                if *seq <= self.seen || (kind.admin_only() && !self.admin) {
                    return true;
                }
                self.seen = *seq;
                let id = self.store.changes().event_id(*seq);
                self.send(format!("id: {id}\nevent: change\ndata: {}\n\n", c.data()))
                    .await
            }
            Change::Metrics { server_id, .. } => {
                if !self.metrics.contains(server_id) {
                    return true;
                }
                self.send(format!("event: metrics\ndata: {}\n\n", c.data()))
                    .await
            }
        }
    }

    async fn run(
        &mut self,
        mut live: tokio::sync::broadcast::Receiver<Change>,
        resume: Resume,
        hash: [u8; 32],
        by_token: bool,
    ) {
        // A client reconnects after three seconds by default; say so explicitly.
        if !self.send("retry: 3000\n\n".into()).await {
            return;
        }
        let started = match resume {
            // Refetch everything, and resume from now next time.
            Resume::Reset => self.mark("reset").await,
            Resume::Replay(missed) if missed.is_empty() => self.mark("ready").await,
            Resume::Replay(missed) => {
                let mut ok = true;
                for c in &missed {
                    ok = ok && self.change(c).await;
                }
                ok
            }
        };
        if !started {
            return;
        }
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        tick.tick().await;
        loop {
            let alive = tokio::select! {
                got = live.recv() => match got {
                    Ok(c) => self.change(&c).await,
                    // Too slow to keep up: whatever was missed, refetching covers it.
                    Err(RecvError::Lagged(_)) => self.mark("reset").await,
                    Err(RecvError::Closed) => false,
                },
                _ = tick.tick() => {
                    // A stream lives no longer than its session (logout, expiry,
                    // password change), and follows a changed role.
                    let role = if by_token {
                        let now = crate::time::now_secs();
                        self.store.token_by_hash(&hash).await.map(|t| {
                            t.filter(|t| t.token.expires_at.is_none_or(|e| now < e))
                                .map(|t| t.user.role.min(t.token.role))
                        })
                    } else {
                        self.store.session(&hash).await.map(|s| s.map(|s| s.user.role))
                    };
                    match role {
                        Ok(Some(role)) => {
                            self.admin = role == Role::Admin;
                            self.send(": keep-alive\n\n".into()).await
                        }
                        Ok(None) => false,
                        // A store hiccup is not the session ending: try again later.
                        Err(_) => self.send(": keep-alive\n\n".into()).await,
                    }
                }
                () = self.tx.closed() => false,
            };
            if !alive {
                break;
            }
        }
    }
}

pub(super) fn routes(reg: &mut Registry) {
    reg.add(
        Method::GET,
        "/api/events",
        Access::Role(Role::Viewer),
        Doc {
            summary: "Server-Sent Events of what changed: `change` ({kind: server|run|workflow|user, id, workflow_id?}; users for admins only), `metrics` ({kind: \"metrics\", id, metrics}) for the servers named in ?metrics=, `ready`, and `reset` (refetch everything). Resumable with Last-Event-ID",
            response: string(),
            body: BodyKind::EventStream,
            query: vec![(
                "metrics",
                json!({ "type": "string", "pattern": "^[1-9][0-9]{0,17}(,[1-9][0-9]{0,17}){0,15}$" }),
                "comma-separated ids of servers (at most 16) whose heartbeat metrics to include",
            )],
            ..Default::default()
        },
        stream,
    );
}
