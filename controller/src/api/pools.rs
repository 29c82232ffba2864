//! `/api/domains` and `/api/pools`: HTTP only; the pools service owns the rules.

use super::audit::Target;
use super::openapi::{array, boolean, id, integer, nullable, obj, ok_with, string};
use super::{ok, Access, ApiError, ApiResult, BodyKind, Doc, Registry, Session};
use crate::auth::Role;
use crate::pools::{PoolError, STATES, STRATEGIES};
use crate::state::AppState;
use crate::store::{MemberRow, PoolRow, PoolSettings};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Invalid(m) => ApiError::BadRequest(m),
            PoolError::NotFound(m) => ApiError::NotFound(m),
            PoolError::Conflict(m) => ApiError::Conflict(m),
            PoolError::Unavailable(m) => ApiError::Unavailable(m),
            PoolError::Store(e) => e.into(),
            PoolError::Enqueue(e) => e.into(),
        }
    }
}

fn parse_id(raw: &str, what: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id: {raw:?} is not a {what} id")))
}

// ---- Domains ---------------------------------------------------------------------------

async fn list_domains(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let domains = state.store().domains().await?;
    Ok(Json(Value::Array(
        domains.iter().map(domain_json).collect(),
    )))
}

fn domain_json(d: &crate::store::DomainRow) -> Value {
    let mut v =
        json!({ "id": d.id, "name": d.name, "created_at": crate::time::rfc3339(d.created_at) });
    if let Some((provider, zone)) = &d.dns {
        v["dns"] = json!({
            "provider": provider,
            "zone": zone,
            "address": d.dns_address,
            "synced_at": d.dns_synced_at.map(crate::time::rfc3339),
            "error": d.dns_error,
        });
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainBody {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainPatch {
    /// `null` unlinks the domain from its zone.
    provider: Option<String>,
    zone: Option<String>,
}

/// Links a domain to a DNS zone (or unlinks it): the record is written at once when a
/// pool with an edge uses the domain; a link the provider refuses is not kept.
async fn patch_domain(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Json(b): Json<DomainPatch>,
) -> ApiResult<Response> {
    let id = parse_id(&raw, "domain")?;
    let d = state
        .store()
        .domain(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("domain {id} not found")))?;
    let link = match (&b.provider, &b.zone) {
        (None, None) => None,
        (Some(p), Some(z)) => Some(crate::providers::dns::check_link(&d.name, p, z)?),
        (Some(_), None) => {
            return Err(ApiError::BadRequest(
                "zone: required with a provider".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "provider: required with a zone".into(),
            ))
        }
    };
    if let Some((p, _)) = &link {
        // The provider must be configured before anything is kept.
        state.providers().check_configured(*p).await?;
    }
    state
        .store()
        .link_domain(id, link.as_ref().map(|(p, z)| (p.as_str(), z.as_str())))
        .await?;
    if link.is_some() {
        if let Err(e) = state.providers().sync_domain(state.store(), id).await {
            // The record could not be written: the domain goes back as it was.
            let st = state.store();
            st.link_domain(id, d.dns.as_ref().map(|(p, z)| (p.as_str(), z.as_str())))
                .await?;
            st.set_domain_dns(
                id,
                d.dns_address.as_deref(),
                d.dns_synced_at,
                d.dns_error.as_deref(),
            )
            .await?;
            return Err(e.into());
        }
    }
    let now = state
        .store()
        .domain(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("domain {id} not found")))?;
    let mut resp = Json(domain_json(&now)).into_response();
    resp.extensions_mut()
        .insert(Target(format!("domain {}", d.name)));
    Ok(resp)
}

/// A domain a pool can serve: a host name (or `*.name`), stored lower-case.
fn check_domain(name: &str) -> ApiResult<String> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
    if bare.parse::<std::net::IpAddr>().is_ok()
        || !bare.contains('.')
        || crate::validate::host(bare).is_err()
    {
        return Err(ApiError::BadRequest(format!(
            "name: {name:?} is not a domain name (labels of letters, digits and -, at least two, optionally *.)"
        )));
    }
    Ok(lower)
}

async fn create_domain(
    State(state): State<AppState>,
    Json(body): Json<DomainBody>,
) -> ApiResult<Response> {
    let name = check_domain(&body.name)?;
    let id = state
        .store()
        .create_domain(&name, crate::time::now_secs())
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("the domain {name} exists")))?;
    let mut resp = (StatusCode::CREATED, ok(json!({ "id": id }))).into_response();
    resp.extensions_mut()
        .insert(Target(format!("domain {name}")));
    Ok(resp)
}

async fn delete_domain(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&raw, "domain")?;
    let d = state
        .store()
        .domain(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("domain {id} not found")))?;
    match state.store().delete_domain(id).await? {
        Ok(_) => {
            let mut resp = ok(json!({})).into_response();
            resp.extensions_mut()
                .insert(Target(format!("domain {}", d.name)));
            Ok(resp)
        }
        Err(pools) => Err(ApiError::Conflict(format!(
            "pools still serve {}: {}; point them elsewhere first",
            d.name,
            pools.join(", ")
        ))),
    }
}

// ---- Pools -------------------------------------------------------------------------------

fn member_json(m: &MemberRow, names: &HashMap<i64, (String, String)>) -> Value {
    let (name, address) = names.get(&m.server_id).cloned().unwrap_or_default();
    json!({
        "server_id": m.server_id,
        "name": name,
        "address": address,
        "state": m.state,
        "weight": m.weight,
        "last_run_id": m.last_run_id,
        "last_health_at": m.last_health_at.map(crate::time::rfc3339),
        "health_detail": m.health_detail,
    })
}

/// A pool as the API shows it. References that are not set are left out rather than
/// `null` (a generic client following `*_id` fields must not be handed a null id).
fn pool_json(p: &PoolRow, domain: Option<&str>) -> Value {
    let s = &p.settings;
    let mut v = json!({
        "id": p.id,
        "name": s.name,
        "min_replicas": s.min_replicas,
        "max_replicas": s.max_replicas,
        "lb_strategy": s.lb_strategy,
        "sticky_cookie": s.sticky_cookie,
        "ports": { "listen": s.listen_port, "target": s.target_port },
        "health": {
            "path": s.health_path,
            "interval_s": s.health_interval_s,
            "timeout_s": s.health_timeout_s,
            "unhealthy_after": s.unhealthy_after,
            "healthy_after": s.healthy_after,
            "grace_s": s.health_grace_s,
        },
        "proxy": {
            "client_max_body_mb": s.client_max_body_mb,
            "connect_timeout_s": s.connect_timeout_s,
            "read_timeout_s": s.read_timeout_s,
            "keepalive": s.keepalive,
        },
        "drain_timeout_s": s.drain_timeout_s,
        "tls": { "enabled": s.tls_enabled, "challenge": s.tls_challenge, "port": s.tls_port },
        "lb": {
            "applied_at": p.lb_applied_at.map(crate::time::rfc3339),
            "error": p.lb_error,
        },
        "created_at": crate::time::rfc3339(p.created_at),
        "updated_at": crate::time::rfc3339(p.updated_at),
    });
    for (key, value) in [
        ("workflow_id", s.workflow_id.map(Value::from)),
        ("domain_id", s.domain_id.map(Value::from)),
        ("domain", domain.map(Value::from)),
        ("edge_server_id", s.edge_server_id.map(Value::from)),
    ] {
        if let Some(value) = value {
            v[key] = value;
        }
    }
    v
}

async fn domain_names(state: &AppState) -> ApiResult<HashMap<i64, String>> {
    Ok(state
        .store()
        .domains()
        .await?
        .into_iter()
        .map(|d| (d.id, d.name))
        .collect())
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let pools = state.store().pool_rows().await?;
    let members = state.store().all_members().await?;
    let domains = domain_names(&state).await?;
    let out = pools
        .iter()
        .map(|p| {
            let mut v = pool_json(
                p,
                p.settings
                    .domain_id
                    .and_then(|d| domains.get(&d))
                    .map(String::as_str),
            );
            let mine: Vec<&MemberRow> = members.iter().filter(|m| m.pool_id == p.id).collect();
            let mut health = serde_json::Map::new();
            for s in STATES {
                health.insert(
                    (*s).into(),
                    json!(mine.iter().filter(|m| m.state == *s).count()),
                );
            }
            v["members"] = json!(mine.len());
            v["health"]["members"] = Value::Object(health);
            v
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

async fn detail(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "pool")?;
    let p = state.pools().get(id).await?;
    let domains = domain_names(&state).await?;
    let names: HashMap<i64, (String, String)> = state
        .store()
        .servers()
        .await?
        .into_iter()
        .map(|s| (s.id, (s.name, s.host)))
        .collect();
    let members = state.store().pool_members(id).await?;
    let mut v = pool_json(
        &p,
        p.settings
            .domain_id
            .and_then(|d| domains.get(&d))
            .map(String::as_str),
    );
    v["members"] = Value::Array(members.iter().map(|m| member_json(m, &names)).collect());
    if let Some(c) = state.store().certificate(id).await? {
        let ts = |t: Option<i64>| t.filter(|t| *t > 0).map(crate::time::rfc3339);
        v["certificate"] = json!({
            "names": c.names,
            "issuer": c.issuer,
            "not_before": ts(c.not_before),
            "not_after": ts(c.not_after),
            "renew_at": ts(crate::acme::renew_at(&c)),
            "last_attempt_at": ts(c.last_attempt_at),
            "next_attempt_at": ts(c.next_attempt_at),
            "error": c.error,
        });
    }
    Ok(Json(v))
}

/// `POST /api/pools/:id/certificate/renew`: the pool's certificate is issued again now
/// (in the background; its state shows in the pool).
async fn renew_certificate(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&raw, "pool")?;
    let p = state.pools().get(id).await?;
    if !p.settings.tls_enabled {
        return Err(ApiError::Conflict(
            "HTTPS is off for this pool: PATCH {\"tls\": {\"enabled\": true}} first".into(),
        ));
    }
    state.acme().renew_now(id).await?;
    let mut resp = (StatusCode::ACCEPTED, ok(json!({}))).into_response();
    resp.extensions_mut()
        .insert(Target(format!("certificate of pool {}", p.settings.name)));
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default, deserialize_with = "super::present")]
    workflow_id: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    domain_id: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    min_replicas: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    max_replicas: Option<i64>,
}

async fn create(State(state): State<AppState>, Json(b): Json<CreateBody>) -> ApiResult<Response> {
    let mut s = crate::pools::defaults(&b.name);
    s.workflow_id = b.workflow_id;
    s.domain_id = b.domain_id;
    if let Some(v) = b.min_replicas {
        s.min_replicas = v;
    }
    if let Some(v) = b.max_replicas {
        s.max_replicas = v;
    }
    let id = state.pools().create(s).await?;
    let mut resp = (StatusCode::CREATED, ok(json!({ "id": id }))).into_response();
    resp.extensions_mut()
        .insert(Target(format!("pool {}", b.name)));
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ports {
    listen: Option<i64>,
    target: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Health {
    path: Option<String>,
    interval_s: Option<i64>,
    timeout_s: Option<i64>,
    unhealthy_after: Option<i64>,
    healthy_after: Option<i64>,
    grace_s: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Proxy {
    client_max_body_mb: Option<i64>,
    connect_timeout_s: Option<i64>,
    read_timeout_s: Option<i64>,
    keepalive: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Weight {
    server_id: i64,
    weight: i64,
}

/// Absent fields keep their value; `null` clears the nullable ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "super::present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    workflow_id: Option<Option<i64>>,
    #[serde(default, deserialize_with = "super::present")]
    domain_id: Option<Option<i64>>,
    #[serde(default, deserialize_with = "super::present")]
    edge_server_id: Option<Option<i64>>,
    #[serde(default, deserialize_with = "super::present")]
    min_replicas: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    max_replicas: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    lb_strategy: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    sticky_cookie: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::present")]
    ports: Option<Ports>,
    #[serde(default, deserialize_with = "super::present")]
    health: Option<Health>,
    #[serde(default, deserialize_with = "super::present")]
    proxy: Option<Proxy>,
    #[serde(default, deserialize_with = "super::present")]
    drain_timeout_s: Option<i64>,
    #[serde(default, deserialize_with = "super::present")]
    members: Option<Vec<Weight>>,
    #[serde(default, deserialize_with = "super::present")]
    tls: Option<Tls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    #[serde(default, deserialize_with = "super::present")]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "super::present")]
    challenge: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    port: Option<i64>,
}

fn patched(mut s: PoolSettings, b: PatchBody) -> (PoolSettings, Vec<(i64, i64)>) {
    let set = |dst: &mut i64, v: Option<i64>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    if let Some(n) = b.name {
        s.name = n;
    }
    if let Some(v) = b.workflow_id {
        s.workflow_id = v;
    }
    if let Some(v) = b.domain_id {
        s.domain_id = v;
    }
    if let Some(v) = b.edge_server_id {
        s.edge_server_id = v;
    }
    set(&mut s.min_replicas, b.min_replicas);
    set(&mut s.max_replicas, b.max_replicas);
    if let Some(v) = b.lb_strategy {
        s.lb_strategy = v;
    }
    if let Some(v) = b.sticky_cookie {
        s.sticky_cookie = v;
    }
    if let Some(p) = b.ports {
        set(&mut s.listen_port, p.listen);
        set(&mut s.target_port, p.target);
    }
    if let Some(h) = b.health {
        if let Some(p) = h.path {
            s.health_path = p;
        }
        set(&mut s.health_interval_s, h.interval_s);
        set(&mut s.health_timeout_s, h.timeout_s);
        set(&mut s.unhealthy_after, h.unhealthy_after);
        set(&mut s.healthy_after, h.healthy_after);
        set(&mut s.health_grace_s, h.grace_s);
    }
    if let Some(p) = b.proxy {
        set(&mut s.client_max_body_mb, p.client_max_body_mb);
        set(&mut s.connect_timeout_s, p.connect_timeout_s);
        set(&mut s.read_timeout_s, p.read_timeout_s);
        set(&mut s.keepalive, p.keepalive);
    }
    set(&mut s.drain_timeout_s, b.drain_timeout_s);
    if let Some(t) = b.tls {
        if let Some(e) = t.enabled {
            s.tls_enabled = e;
        }
        if let Some(c) = t.challenge {
            s.tls_challenge = c;
        }
        set(&mut s.tls_port, t.port);
    }
    let weights = b
        .members
        .unwrap_or_default()
        .into_iter()
        .map(|w| (w.server_id, w.weight))
        .collect();
    (s, weights)
}

async fn patch(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Json(b): Json<PatchBody>,
) -> ApiResult<Response> {
    let id = parse_id(&raw, "pool")?;
    let old = state.pools().get(id).await?;
    let old_domain = old.settings.domain_id;
    let (s, weights) = patched(old.settings, b);
    let name = s.name.clone();
    let new_domain = s.domain_id;
    let tls = s.tls_enabled;
    state.pools().update(id, s, weights).await?;
    sync_dns(&state, [old_domain, new_domain]);
    if tls {
        state.acme().nudge();
    }
    let mut resp = ok(json!({})).into_response();
    resp.extensions_mut().insert(Target(format!("pool {name}")));
    Ok(resp)
}

#[derive(Deserialize)]
struct ForceQuery {
    force: Option<bool>,
}

async fn delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Response> {
    let id = parse_id(&raw, "pool")?;
    let p = state.pools().get(id).await?;
    state.pools().delete(id, q.force.unwrap_or(false)).await?;
    sync_dns(&state, [p.settings.domain_id, None]);
    let mut resp = ok(json!({})).into_response();
    resp.extensions_mut()
        .insert(Target(format!("pool {}", p.settings.name)));
    Ok(resp)
}

/// Brings the DNS records of linked domains in line with the pools' edges, in the
/// background: a slow provider does not hold up the pool change, and the domain shows
/// the outcome (`GET /api/domains`).
fn sync_dns(state: &AppState, domains: [Option<i64>; 2]) {
    if domains.iter().all(Option::is_none) {
        return;
    }
    let st = state.clone();
    state.tasks().spawn(async move {
        st.providers().sync_domains(st.store(), &domains).await;
    });
}

async fn sync_lb(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "pool")?;
    let applied = state.pools().apply(id).await?;
    Ok(ok(
        json!({ "path": applied.path, "started": applied.started }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleOutBody {
    server_id: i64,
}

async fn scale_out(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
    Json(b): Json<ScaleOutBody>,
) -> ApiResult<Response> {
    let user = session.require()?.user.username.clone();
    let id = parse_id(&raw, "pool")?;
    let run = state.pools().scale_out(id, b.server_id, &user).await?;
    Ok((StatusCode::ACCEPTED, ok(json!({ "runId": run }))).into_response())
}

async fn remove_member(
    State(state): State<AppState>,
    Path((raw, raw_server)): Path<(String, String)>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "pool")?;
    let server = raw_server
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("server_id: {raw_server:?} is not a server id"))
        })?;
    state
        .pools()
        .remove_member(id, server, q.force.unwrap_or(false))
        .await?;
    Ok(ok(json!({})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    #[serde(default, deserialize_with = "super::present")]
    max_unavailable: Option<i64>,
}

async fn deploy(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(raw): Path<String>,
    body: Option<Json<DeployBody>>,
) -> ApiResult<Response> {
    let user = session.require()?.user.username.clone();
    let id = parse_id(&raw, "pool")?;
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let rid = state
        .pools()
        .deploy(id, b.max_unavailable, json!({ "user": user }))
        .await?;
    Ok((StatusCode::ACCEPTED, ok(json!({ "rolloutId": rid }))).into_response())
}

fn parse_rollout(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("rollout_id: {raw:?} is not a rollout id")))
}

/// A rollout as the API shows it; 404 when it is not the pool's.
async fn rollout_json(state: &AppState, id: i64, rid: i64) -> ApiResult<Value> {
    let Some((r, members)) = state
        .store()
        .rollout(rid)
        .await?
        .filter(|(r, _)| r.pool_id == id)
    else {
        return Err(ApiError::NotFound(format!(
            "rollout {rid} of pool {id} not found"
        )));
    };
    let status = if r.status == "running" && state.pools().is_cancelling(rid) {
        "cancelling".to_owned()
    } else {
        r.status.clone()
    };
    Ok(json!({
        "id": r.id,
        "pool_id": r.pool_id,
        "status": status,
        "max_unavailable": r.max_unavailable,
        "trigger_detail": r.trigger_detail,
        "error": r.error,
        "created_at": crate::time::rfc3339(r.created_at),
        "finished_at": r.finished_at.map(crate::time::rfc3339),
        "members": members.iter().map(|m| json!({
            "server_id": m.server_id,
            "status": m.status,
            "runId": m.run_id,
            "detail": m.detail,
        })).collect::<Vec<_>>(),
    }))
}

async fn rollout(
    State(state): State<AppState>,
    Path((raw, raw_rollout)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "pool")?;
    let rid = parse_rollout(&raw_rollout)?;
    Ok(Json(rollout_json(&state, id, rid).await?))
}

/// How often an idle rollout stream sends a comment and reads the rollout again (a
/// cancellation being asked for is not a stored change).
const ROLLOUT_TICK: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET …/rollouts/:rid/events`: `event: rollout` with the whole rollout (as the GET
/// returns it) now and after every change of it, then `event: end` once it finished.
/// Each event is the full state, so a client that reconnects needs no `Last-Event-ID`.
async fn rollout_events(
    State(state): State<AppState>,
    Path((raw, raw_rollout)): Path<(String, String)>,
) -> ApiResult<Response> {
    use crate::changes::{Change, Kind};
    use tokio::sync::broadcast::error::RecvError;
    let id = parse_id(&raw, "pool")?;
    let rid = parse_rollout(&raw_rollout)?;
    // Subscribed before the first read: a change between the two is not lost.
    let (mut live, _) = state.store().changes().subscribe(None);
    let mut current = rollout_json(&state, id, rid).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(16);
    let reader = state.clone();
    state.tasks().spawn(async move {
        let event = |name: &str, data: &Value| {
            Ok(axum::body::Bytes::from(format!(
                "event: {name}\ndata: {data}\n\n"
            )))
        };
        let mut tick = tokio::time::interval(ROLLOUT_TICK);
        tick.tick().await;
        let mut sent = String::new();
        loop {
            let text = current.to_string();
            if text != sent {
                if tx.send(event("rollout", &current)).await.is_err() {
                    return;
                }
                sent = text;
            }
            if !matches!(current["status"].as_str(), Some("running" | "cancelling")) {
                let _ = tx
                    .send(event("end", &json!({ "status": current["status"] })))
                    .await;
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                got = live.recv() => match got {
                    Ok(Change::Entity { kind: Kind::Pool, id: pool, .. }) if pool == id => {}
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    let alive = axum::body::Bytes::from_static(b": keep-alive\n\n");
                    if tx.send(Ok(alive)).await.is_err() {
                        return;
                    }
                }
            }
            match rollout_json(&reader, id, rid).await {
                Ok(v) => current = v,
                // The pool (and its rollouts) went away: nothing more to follow.
                Err(_) => return,
            }
        }
    });
    Ok(super::event_stream(rx, &state))
}

async fn cancel_rollout(
    State(state): State<AppState>,
    Path((raw, raw_rollout)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&raw, "pool")?;
    let rid = parse_rollout(&raw_rollout)?;
    let status = state.pools().cancel_rollout(id, rid).await?;
    Ok(ok(json!({ "status": status })))
}

pub(super) fn routes(reg: &mut Registry) {
    let viewer = Access::Role(Role::Viewer);
    let moderator = Access::Role(Role::Moderator);
    let admin = Access::Role(Role::Admin);
    let ts = nullable(string());
    let domain = obj(
        &[
            ("id", integer()),
            ("name", string()),
            ("created_at", string()),
            (
                "dns",
                obj(
                    &[
                        ("provider", string()),
                        ("zone", string()),
                        ("address", nullable(string())),
                        ("synced_at", nullable(string())),
                        ("error", nullable(string())),
                    ],
                    &["provider", "zone"],
                ),
            ),
        ],
        &["id", "name", "created_at"],
    );
    let member = obj(
        &[
            ("server_id", integer()),
            ("name", string()),
            ("address", string()),
            ("state", json!({ "enum": STATES })),
            ("weight", integer()),
            ("last_run_id", nullable(integer())),
            ("last_health_at", ts.clone()),
            ("health_detail", nullable(string())),
        ],
        &["server_id", "state", "weight"],
    );
    let int = |lo: i64, hi: i64| json!({ "type": "integer", "minimum": lo, "maximum": hi });
    let ports = obj(&[("listen", int(1, 65535)), ("target", int(1, 65535))], &[]);
    let health = obj(
        &[
            (
                "path",
                json!({ "type": "string", "pattern": "^/[A-Za-z0-9/._~?=&%+-]*$", "maxLength": 256 }),
            ),
            ("interval_s", int(1, 3600)),
            ("timeout_s", int(1, 60)),
            ("unhealthy_after", int(1, 20)),
            ("healthy_after", int(1, 20)),
            ("grace_s", int(1, 3600)),
        ],
        &[],
    );
    let proxy = obj(
        &[
            ("client_max_body_mb", int(0, 10240)),
            ("connect_timeout_s", int(1, 75)),
            ("read_timeout_s", int(1, 86400)),
            ("keepalive", int(0, 1024)),
        ],
        &[],
    );
    let pool = obj(
        &[
            ("id", integer()),
            ("name", string()),
            ("workflow_id", integer()),
            ("domain_id", integer()),
            ("domain", string()),
            ("edge_server_id", integer()),
            ("min_replicas", integer()),
            ("max_replicas", integer()),
            ("lb_strategy", json!({ "enum": STRATEGIES })),
            ("sticky_cookie", nullable(string())),
            ("ports", json!({ "type": "object" })),
            ("health", json!({ "type": "object" })),
            ("proxy", json!({ "type": "object" })),
            ("drain_timeout_s", integer()),
            ("tls", json!({ "type": "object" })),
            ("certificate", json!({ "type": "object" })),
            (
                "lb",
                obj(
                    &[("applied_at", ts.clone()), ("error", nullable(string()))],
                    &[],
                ),
            ),
            ("created_at", string()),
            ("updated_at", string()),
        ],
        &[
            "id",
            "name",
            "lb_strategy",
            "ports",
            "health",
            "min_replicas",
            "max_replicas",
        ],
    );
    let mut listed = pool.clone();
    listed["properties"]["members"] = integer();
    let mut detailed = pool.clone();
    detailed["properties"]["members"] = array(member);
    let cookie = json!({ "type": ["string", "null"], "pattern": "^[A-Za-z0-9_]{1,64}$" });
    let force = vec![(
        "force",
        boolean(),
        "true: go ahead even when the edge cannot be reached or min_replicas would not be met",
    )];
    reg.add(
        Method::GET,
        "/api/domains",
        viewer,
        Doc { summary: "Domains pools can serve", response: array(domain.clone()), ..Default::default() },
        list_domains,
    )
    .add(
        Method::POST,
        "/api/domains",
        moderator,
        Doc {
            summary: "Add a domain { name } (a host name, or *.name)",
            request: Some(obj(&[("name", json!({ "type": "string", "minLength": 1, "maxLength": 253 }))], &["name"])),
            response: ok_with(&[("id", integer())]),
            status: 201,
            errors: &[409],
            ..Default::default()
        },
        create_domain,
    )
    .add(
        Method::PATCH,
        "/api/domains/{id}",
        moderator,
        Doc {
            summary: "Link a domain to a DNS zone { provider: cloudflare | digitalocean | hostinger, zone } (a Cloudflare zone id, else the zone's domain name), or unlink it { provider: null, zone: null }; its A record then points at the edge of the pools using it",
            request: Some(obj(
                &[
                    ("provider", nullable(json!({ "enum": ["cloudflare", "digitalocean", "hostinger"] }))),
                    ("zone", nullable(string())),
                ],
                &[],
            )),
            response: domain.clone(),
            errors: &[400, 404, 409, 429, 502, 504],
            ..Default::default()
        },
        patch_domain,
    )
    .add(
        Method::DELETE,
        "/api/domains/{id}",
        admin,
        Doc { summary: "Delete a domain no pool uses", response: ok_with(&[]), errors: &[404, 409], ..Default::default() },
        delete_domain,
    )
    .add(
        Method::GET,
        "/api/pools",
        viewer,
        Doc { summary: "Pools with member counts and health", response: array(listed), ..Default::default() },
        list,
    )
    .add(
        Method::POST,
        "/api/pools",
        moderator,
        Doc {
            summary: "Create a pool { name, workflow_id?, domain_id?, min_replicas?, max_replicas? }",
            request: Some(obj(
                &[
                    ("name", super::openapi::name()),
                    ("workflow_id", id()),
                    ("domain_id", id()),
                    ("min_replicas", int(0, 256)),
                    ("max_replicas", int(1, 256)),
                ],
                &["name"],
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
        "/api/pools/{id}",
        viewer,
        Doc { summary: "A pool with its members", response: detailed, errors: &[404], ..Default::default() },
        detail,
    )
    .add(
        Method::PATCH,
        "/api/pools/{id}",
        moderator,
        Doc {
            summary: "Change a pool's settings (each checked; the edge's config is applied, and nothing is kept if it refuses)",
            request: Some(obj(
                &[
                    ("name", super::openapi::name()),
                    ("workflow_id", nullable(id())),
                    ("domain_id", nullable(id())),
                    ("edge_server_id", nullable(id())),
                    ("min_replicas", int(0, 256)),
                    ("max_replicas", int(1, 256)),
                    ("lb_strategy", json!({ "enum": STRATEGIES })),
                    ("sticky_cookie", cookie),
                    ("ports", ports),
                    ("health", health),
                    ("proxy", proxy),
                    ("drain_timeout_s", int(0, 600)),
                    (
                        "tls",
                        obj(
                            &[
                                ("enabled", boolean()),
                                ("challenge", json!({ "enum": ["http-01", "dns-01"] })),
                                ("port", int(1, 65535)),
                            ],
                            &[],
                        ),
                    ),
                    (
                        "members",
                        array(obj(&[("server_id", id()), ("weight", int(1, 100))], &["server_id", "weight"])),
                    ),
                ],
                &[],
            )),
            response: ok_with(&[]),
            errors: &[404, 409],
            ..Default::default()
        },
        patch,
    )
    .add(
        Method::DELETE,
        "/api/pools/{id}",
        admin,
        Doc {
            summary: "Delete a pool, removing its config from the edge",
            response: ok_with(&[]),
            query: force.clone(),
            errors: &[404, 409],
            ..Default::default()
        },
        delete,
    )
    .add(
        Method::POST,
        "/api/pools/{id}/certificate/renew",
        moderator,
        Doc {
            summary: "Issue the pool's certificate again now (in the background; `certificate` in the pool shows how it went)",
            request: None,
            optional_body: true,
            response: ok_with(&[]),
            status: 202,
            errors: &[404, 409],
            ..Default::default()
        },
        renew_certificate,
    )
    .add(
        Method::POST,
        "/api/pools/{id}/sync-lb",
        moderator,
        Doc {
            summary: "Render and reload the pool's config on its edge now",
            request: None,
            optional_body: true,
            response: ok_with(&[("path", string()), ("started", boolean())]),
            errors: &[404, 409],
            ..Default::default()
        },
        sync_lb,
    )
    .add(
        Method::POST,
        "/api/pools/{id}/scale-out",
        moderator,
        Doc {
            summary: "Add a member { server_id }: its deploy runs, and it enters the upstream when that succeeded and its health check passed",
            request: Some(obj(&[("server_id", id())], &["server_id"])),
            response: ok_with(&[("runId", integer())]),
            status: 202,
            errors: &[404, 409],
            ..Default::default()
        },
        scale_out,
    )
    .add(
        Method::POST,
        "/api/pools/{id}/deploy",
        moderator,
        Doc {
            summary: "Roll the pool's workflow out to its members { max_unavailable? }: each batch drained, deployed, checked and put back; the first failure stops it",
            request: Some(obj(&[("max_unavailable", int(1, 255))], &[])),
            optional_body: true,
            response: ok_with(&[("rolloutId", integer())]),
            status: 202,
            errors: &[404, 409],
            ..Default::default()
        },
        deploy,
    )
    .add(
        Method::GET,
        "/api/pools/{id}/rollouts/{rollout_id}",
        viewer,
        Doc {
            summary: "A rollout and each member's step in it",
            response: obj(
                &[
                    ("id", integer()),
                    ("pool_id", integer()),
                    ("status", json!({ "enum": ["running", "cancelling", "succeeded", "failed", "cancelled"] })),
                    ("max_unavailable", integer()),
                    ("trigger_detail", json!({})),
                    ("error", nullable(string())),
                    ("created_at", string()),
                    ("finished_at", ts.clone()),
                    (
                        "members",
                        array(obj(
                            &[
                                ("server_id", integer()),
                                ("status", json!({ "enum": ["pending", "draining", "deploying", "checking", "succeeded", "failed", "skipped"] })),
                                ("runId", nullable(integer())),
                                ("detail", nullable(string())),
                            ],
                            &["server_id", "status"],
                        )),
                    ),
                ],
                &["id", "status", "members"],
            ),
            path: vec![("rollout_id", id())],
            errors: &[404],
            ..Default::default()
        },
        rollout,
    )
    .add(
        Method::GET,
        "/api/pools/{id}/rollouts/{rollout_id}/events",
        viewer,
        Doc {
            summary: "Server-Sent Events: `rollout` (the whole rollout, as GET returns it) now and after each change, then `end` {status} once it finished",
            response: string(),
            body: BodyKind::EventStream,
            path: vec![("rollout_id", id())],
            errors: &[404],
            ..Default::default()
        },
        rollout_events,
    )
    .add(
        Method::POST,
        "/api/pools/{id}/rollouts/{rollout_id}/cancel",
        moderator,
        Doc {
            summary: "Stop a rollout after the batch in progress (members done keep the new version)",
            request: None,
            optional_body: true,
            response: ok_with(&[("status", string())]),
            path: vec![("rollout_id", id())],
            errors: &[404, 409],
            ..Default::default()
        },
        cancel_rollout,
    )
    .add(
        Method::DELETE,
        "/api/pools/{id}/members/{server_id}",
        admin,
        Doc {
            summary: "Drain a member (out of the upstream, reload, wait drain_timeout_s) and remove it",
            response: ok_with(&[]),
            path: vec![("server_id", id())],
            query: force,
            errors: &[404, 409],
            ..Default::default()
        },
        remove_member,
    );
}
