//! Pools: one workflow on several servers (members) behind an nginx upstream on an edge
//! server. This service owns the pool lifecycle: settings (validated whole), the edge's
//! config (sent as values to the edge agent, which renders, tests and reloads nginx),
//! scale-out (a member deploys, passes its health check, then enters the upstream),
//! active health checks from the edge to each member, and draining on removal.
//!
//! A member is in the upstream when its state is `healthy`. When none is, the edge fails
//! open: the members that are merely `unhealthy` (not draining, deploying or failed) take
//! the traffic, as AWS's and Google's load balancers and Envoy's panic mode do. A checker
//! that reaches no member at all is more often wrong (an overloaded edge, a wrong health
//! path) than every member at once, and an empty upstream fails every request for sure;
//! nginx's own passive check still skips a member that refuses connections.

use crate::deploy::{Deploys, EnqueueError};
use crate::gateway::{CallError, Fleet};
use crate::store::{MemberRow, PoolRow, PoolSettings, Store, StoreError};
use mezzanine_proto::v1::{command, reply, ApplyPool, LbStrategy, PoolMember, Probe};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A value is not acceptable (`field: why`).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the pool's state (full, no edge, nginx refused, …).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

type Result<T> = std::result::Result<T, PoolError>;

pub const STRATEGIES: &[&str] = &[
    "round_robin",
    "least_conn",
    "ip_hash",
    "random",
    "cookie_hash",
];
pub const STATES: &[&str] = &["deploying", "healthy", "unhealthy", "draining", "failed"];

/// A new pool's settings before the user's values.
pub fn defaults(name: &str) -> PoolSettings {
    PoolSettings {
        name: name.to_owned(),
        workflow_id: None,
        domain_id: None,
        edge_server_id: None,
        min_replicas: 1,
        max_replicas: 10,
        lb_strategy: "round_robin".into(),
        sticky_cookie: None,
        listen_port: 80,
        target_port: 8080,
        health_path: "/".into(),
        health_interval_s: 5,
        health_timeout_s: 2,
        unhealthy_after: 2,
        healthy_after: 2,
        health_grace_s: 60,
        client_max_body_mb: 10,
        connect_timeout_s: 5,
        read_timeout_s: 60,
        keepalive: 16,
        drain_timeout_s: 5,
        tls_enabled: false,
        tls_challenge: "http-01".into(),
        tls_port: 443,
    }
}

/// The pool's edge server, or why there is none.
fn edge_of(pool: &PoolRow) -> Result<i64> {
    pool.settings.edge_server_id.ok_or_else(|| {
        PoolError::Conflict("the pool has no edge server: set edge_server_id".into())
    })
}

fn range(field: &str, v: i64, lo: i64, hi: i64) -> std::result::Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{field}: {v} is not in {lo}-{hi}"))
    }
}

/// A health check path: `/` then URL path and query characters only — nothing that could
/// end a request line or a config token.
fn health_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 256
        && p.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'.' | b'_' | b'-' | b'~' | b'?' | b'=' | b'&' | b'%' | b'+'
                )
        })
}

/// Checks every value of a pool's settings; the message names the field.
pub fn check(s: &PoolSettings) -> std::result::Result<(), String> {
    crate::validate::name(&s.name).map_err(|e| format!("name: {e}"))?;
    range("min_replicas", s.min_replicas, 0, 256)?;
    range("max_replicas", s.max_replicas, 1, 256)?;
    if s.min_replicas > s.max_replicas {
        return Err(format!(
            "min_replicas: {} is more than max_replicas ({})",
            s.min_replicas, s.max_replicas
        ));
    }
    if !STRATEGIES.contains(&s.lb_strategy.as_str()) {
        return Err(format!(
            "lb_strategy: {:?} is not one of {}",
            s.lb_strategy,
            STRATEGIES.join(", ")
        ));
    }
    match (&s.sticky_cookie, s.lb_strategy.as_str()) {
        (Some(c), _)
            if !((1..=64).contains(&c.len())
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')) =>
        {
            return Err("sticky_cookie: a cookie name of 1 to 64 letters, digits and _".into())
        }
        (None, "cookie_hash") => {
            return Err("sticky_cookie: required with lb_strategy cookie_hash".into())
        }
        _ => {}
    }
    range("ports.listen", s.listen_port, 1, 65535)?;
    range("ports.target", s.target_port, 1, 65535)?;
    if !health_path(&s.health_path) {
        return Err("health.path: a path starting with / (letters, digits and / . _ - ~ ? = & % +, at most 256)".into());
    }
    range("health.interval_s", s.health_interval_s, 1, 3600)?;
    range("health.timeout_s", s.health_timeout_s, 1, 60)?;
    if s.health_timeout_s > s.health_interval_s {
        return Err("health.timeout_s: longer than health.interval_s".into());
    }
    range("health.unhealthy_after", s.unhealthy_after, 1, 20)?;
    range("health.healthy_after", s.healthy_after, 1, 20)?;
    range("health.grace_s", s.health_grace_s, 1, 3600)?;
    range("proxy.client_max_body_mb", s.client_max_body_mb, 0, 10240)?;
    range("proxy.connect_timeout_s", s.connect_timeout_s, 1, 75)?;
    range("proxy.read_timeout_s", s.read_timeout_s, 1, 86400)?;
    range("proxy.keepalive", s.keepalive, 0, 1024)?;
    range("drain_timeout_s", s.drain_timeout_s, 0, 600)?;
    if !matches!(s.tls_challenge.as_str(), "http-01" | "dns-01") {
        return Err(format!(
            "tls.challenge: {:?} is not http-01 or dns-01",
            s.tls_challenge
        ));
    }
    range("tls.port", s.tls_port, 1, 65535)?;
    if s.tls_port == s.listen_port {
        return Err("tls.port: the same as ports.listen (plain HTTP)".into());
    }
    if s.tls_enabled && s.domain_id.is_none() {
        return Err(
            "tls.enabled: a certificate names the pool's domain; set domain_id first".into(),
        );
    }
    Ok(())
}

#[derive(Clone)]
pub struct Pools(Arc<Inner>);

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").finish_non_exhaustive()
    }
}

struct Inner {
    store: Store,
    /// Opens the pools' certificate keys to send them to their edges.
    key: Arc<crate::crypto::MasterKey>,
    agents: Arc<Fleet>,
    deploys: Deploys,
    tasks: TaskTracker,
    /// One apply on an edge at a time: the health checker and the API must not interleave.
    applying: tokio::sync::Mutex<()>,
    /// Consecutive probe results per member: (successes, failures).
    streaks: Mutex<HashMap<(i64, i64), (i64, i64)>>,
    /// Members with a probe or an admission in flight.
    busy: Mutex<HashSet<(i64, i64)>>,
    /// Rollouts asked to stop (their drivers stop before the next batch).
    cancelled: Mutex<HashSet<i64>>,
}

/// The members the upstream holds: the healthy ones, else the unhealthy ones (fail open).
fn serving<'a>(members: &'a [MemberRow], change: Option<(i64, &str)>) -> Vec<&'a MemberRow> {
    let state = |m: &MemberRow| match change {
        Some((server, state)) if server == m.server_id => state.to_owned(),
        _ => m.state.clone(),
    };
    let healthy: Vec<&MemberRow> = members.iter().filter(|m| state(m) == "healthy").collect();
    if !healthy.is_empty() {
        return healthy;
    }
    members.iter().filter(|m| state(m) == "unhealthy").collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> i64 {
    crate::time::now_secs()
}

impl Pools {
    pub fn new(
        store: Store,
        key: Arc<crate::crypto::MasterKey>,
        agents: Arc<Fleet>,
        deploys: Deploys,
        tasks: TaskTracker,
    ) -> Pools {
        Pools(Arc::new(Inner {
            store,
            key,
            agents,
            deploys,
            tasks,
            applying: tokio::sync::Mutex::new(()),
            streaks: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            cancelled: Mutex::new(HashSet::new()),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub async fn get(&self, id: i64) -> Result<PoolRow> {
        self.0
            .store
            .pool_row(id)
            .await?
            .ok_or_else(|| PoolError::NotFound(format!("pool {id} not found")))
    }

    /// The references a pool's settings make exist.
    async fn check_refs(&self, s: &PoolSettings) -> Result<()> {
        let st = &self.0.store;
        if let Some(w) = s.workflow_id {
            if st.workflow(w).await?.is_none() {
                return Err(PoolError::Invalid(format!(
                    "workflow_id: workflow {w} does not exist"
                )));
            }
        }
        if let Some(d) = s.domain_id {
            if st.domain(d).await?.is_none() {
                return Err(PoolError::Invalid(format!(
                    "domain_id: domain {d} does not exist"
                )));
            }
        }
        if let Some(e) = s.edge_server_id {
            if !st.server_exists(e).await? {
                return Err(PoolError::Invalid(format!(
                    "edge_server_id: server {e} does not exist"
                )));
            }
        }
        Ok(())
    }

    pub async fn create(&self, s: PoolSettings) -> Result<i64> {
        check(&s).map_err(PoolError::Invalid)?;
        self.check_refs(&s).await?;
        self.0
            .store
            .create_pool(&s, now())
            .await?
            .ok_or_else(|| PoolError::Conflict(format!("a pool named {:?} exists", s.name)))
    }

    /// Replaces a pool's settings (and member weights) after checking all of them; when
    /// the pool has an edge, its config is applied, and if the edge refuses it the old
    /// settings are put back: a change that cannot be served is not kept anywhere.
    pub async fn update(&self, id: i64, s: PoolSettings, weights: Vec<(i64, i64)>) -> Result<()> {
        let old = self.get(id).await?;
        check(&s).map_err(PoolError::Invalid)?;
        self.check_refs(&s).await?;
        let members = self.0.store.pool_members(id).await?;
        for (i, (server, weight)) in weights.iter().enumerate() {
            if !members.iter().any(|m| m.server_id == *server) {
                return Err(PoolError::Invalid(format!(
                    "members[{i}].server_id: server {server} is not a member"
                )));
            }
            range(&format!("members[{i}].weight"), *weight, 1, 100).map_err(PoolError::Invalid)?;
        }
        if s.max_replicas < members.len() as i64 {
            return Err(PoolError::Invalid(format!(
                "max_replicas: the pool has {} members",
                members.len()
            )));
        }
        let old_weights: Vec<(i64, i64)> =
            members.iter().map(|m| (m.server_id, m.weight)).collect();
        if !self.0.store.update_pool(id, &s, &weights, now()).await? {
            return Err(PoolError::Conflict(format!(
                "a pool named {:?} exists",
                s.name
            )));
        }
        // An edge that was removed from the pool loses the pool's config.
        if let Some(old_edge) = old
            .settings
            .edge_server_id
            .filter(|e| Some(*e) != s.edge_server_id)
        {
            let _ = self
                .send(
                    old_edge,
                    ApplyPool {
                        pool_id: id as u64,
                        remove: true,
                        ..Default::default()
                    },
                )
                .await;
        }
        if s.edge_server_id.is_some() {
            if let Err(e) = self.apply(id).await {
                self.0
                    .store
                    .update_pool(id, &old.settings, &old_weights, now())
                    .await?;
                if s.edge_server_id != old.settings.edge_server_id
                    && old.settings.edge_server_id.is_some()
                {
                    let _ = self.apply(id).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes the pool, removing its config from the edge first (unless `force`, when an
    /// unreachable edge keeps a config that no longer changes).
    pub async fn delete(&self, id: i64, force: bool) -> Result<()> {
        let pool = self.get(id).await?;
        if let Some(edge) = pool.settings.edge_server_id {
            let removed = self
                .send(
                    edge,
                    ApplyPool {
                        pool_id: id as u64,
                        remove: true,
                        ..Default::default()
                    },
                )
                .await;
            if let Err(e) = removed {
                if !force {
                    return Err(e);
                }
            }
        }
        self.0.store.delete_pool(id).await?;
        Ok(())
    }

    /// The certificate and key a pool's edge serves: the stored ones, while TLS is on.
    async fn stored_tls(&self, pool: &PoolRow) -> Result<Option<(String, String)>> {
        if !pool.settings.tls_enabled {
            return Ok(None);
        }
        let Some(c) = self.0.store.certificate(pool.id).await? else {
            return Ok(None);
        };
        let (Some(chain), Some(sealed)) = (c.chain_pem, c.key_sealed) else {
            return Ok(None);
        };
        let key = self
            .0
            .key
            .open(&crate::acme::key_context(pool.id), &sealed)
            .map_err(|_| {
                PoolError::Unavailable(format!(
                    "the certificate key of pool {} does not open with this master key",
                    pool.id
                ))
            })?;
        let key = String::from_utf8(key).map_err(|_| {
            PoolError::Unavailable(format!(
                "the certificate key of pool {} is not PEM",
                pool.id
            ))
        })?;
        Ok(Some((chain, key)))
    }

    /// What the edge is told for the pool now: its healthy members, or its unhealthy ones
    /// when none is healthy (see the module's comment), with `change` counting one member
    /// in the state it is about to get.
    async fn config(
        &self,
        pool: &PoolRow,
        change: Option<(i64, &str)>,
        tls: Option<(String, String)>,
    ) -> Result<ApplyPool> {
        let s = &pool.settings;
        let tls = match tls {
            Some(t) => Some(t),
            None => self.stored_tls(pool).await?,
        };
        let members = self.0.store.pool_members(pool.id).await?;
        let hosts: HashMap<i64, String> = self
            .0
            .store
            .servers()
            .await?
            .into_iter()
            .map(|s| (s.id, s.host))
            .collect();
        let server_name = match s.domain_id {
            Some(d) => self
                .0
                .store
                .domain(d)
                .await?
                .map(|d| d.name)
                .unwrap_or_default(),
            None => String::new(),
        };
        let strategy = match s.lb_strategy.as_str() {
            "least_conn" => LbStrategy::LbLeastConn,
            "ip_hash" => LbStrategy::LbIpHash,
            "random" => LbStrategy::LbRandom,
            "cookie_hash" => LbStrategy::LbCookieHash,
            _ => LbStrategy::LbRoundRobin,
        };
        let u = |v: i64| u32::try_from(v).unwrap_or(0);
        Ok(ApplyPool {
            pool_id: pool.id as u64,
            pool_name: s.name.clone(),
            listen_port: u(s.listen_port),
            server_name,
            strategy: strategy as i32,
            sticky_cookie: s.sticky_cookie.clone().unwrap_or_default(),
            members: serving(&members, change)
                .into_iter()
                .filter_map(|m| {
                    Some(PoolMember {
                        address: hosts.get(&m.server_id)?.clone(),
                        port: u(s.target_port),
                        weight: u(m.weight),
                    })
                })
                .collect(),
            // nginx's own passive check stays as a second line behind ours.
            max_fails: u(s.unhealthy_after),
            fail_timeout_s: u(s.health_interval_s.max(1) * s.unhealthy_after.max(1)).min(3600),
            client_max_body_mb: u(s.client_max_body_mb),
            connect_timeout_s: u(s.connect_timeout_s),
            read_timeout_s: u(s.read_timeout_s),
            keepalive: u(s.keepalive),
            remove: false,
            acme_challenges: s.tls_enabled,
            tls_port: if tls.is_some() { u(s.tls_port) } else { 0 },
            tls_certificate_pem: tls.as_ref().map(|t| t.0.clone()).unwrap_or_default(),
            tls_key_pem: tls.map(|t| t.1).unwrap_or_default(),
        })
    }

    async fn send(&self, edge: i64, body: ApplyPool) -> Result<mezzanine_proto::v1::PoolApplied> {
        match self
            .0
            .agents
            .call(
                edge,
                command::Body::ApplyPool(body),
                Duration::from_secs(30),
            )
            .await
        {
            Ok(reply::Body::PoolApplied(a)) => Ok(a),
            Ok(reply::Body::PoolError(e)) => Err(PoolError::Conflict(e.message)),
            Ok(_) => Err(PoolError::Unavailable(
                "the edge agent answered with something else; upgrade it".into(),
            )),
            Err(CallError::Offline) => Err(PoolError::Conflict(format!(
                "the edge server ({edge}) is offline"
            ))),
            Err(CallError::Agent(m)) => Err(PoolError::Conflict(m)),
            Err(e) => Err(PoolError::Unavailable(format!("the edge server: {e}"))),
        }
    }

    /// Renders the pool's config on its edge now (test, reload; the previous file is kept
    /// when nginx refuses). The outcome is recorded on the pool.
    pub async fn apply(&self, id: i64) -> Result<mezzanine_proto::v1::PoolApplied> {
        self.apply_with(id, None).await
    }

    /// Renders the pool's config with a certificate not stored yet: `Ok` once the edge
    /// serves it; on refusal the edge keeps what it served (and the caller keeps the old
    /// certificate too).
    pub async fn apply_tls(
        &self,
        id: i64,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<mezzanine_proto::v1::PoolApplied> {
        let _one = self.0.applying.lock().await;
        let pool = self.get(id).await?;
        let edge = edge_of(&pool)?;
        let body = self
            .config(
                &pool,
                None,
                Some((chain_pem.to_owned(), key_pem.to_owned())),
            )
            .await?;
        let result = self.send(edge, body).await;
        let error = result.as_ref().err().map(ToString::to_string);
        self.0
            .store
            .set_pool_lb(id, error.as_deref(), now())
            .await?;
        result
    }

    /// Writes (or removes) the file answering one ACME HTTP-01 challenge on the pool's edge.
    pub async fn acme_challenge(
        &self,
        id: i64,
        token: &str,
        key_authorization: &str,
        remove: bool,
    ) -> Result<()> {
        let pool = self.get(id).await?;
        let edge = edge_of(&pool)?;
        let body = command::Body::AcmeChallenge(mezzanine_proto::v1::AcmeChallenge {
            token: token.to_owned(),
            key_authorization: key_authorization.to_owned(),
            remove,
        });
        match self
            .0
            .agents
            .call(edge, body, Duration::from_secs(30))
            .await
        {
            Ok(reply::Body::Ack(_)) => Ok(()),
            Ok(_) => Err(PoolError::Unavailable(
                "the edge agent cannot answer ACME challenges; upgrade it".into(),
            )),
            Err(CallError::Offline) => Err(PoolError::Conflict(format!(
                "the edge server ({edge}) is offline"
            ))),
            Err(CallError::Agent(m)) => Err(PoolError::Conflict(m)),
            Err(e) => Err(PoolError::Unavailable(format!("the edge server: {e}"))),
        }
    }

    /// `apply`, with one member's state changing: the config is built with its new state,
    /// and the state is written only once the edge serves that config — a member the API
    /// calls healthy is in the upstream. Applies are serialised, so one cannot build from
    /// a state another has not written yet.
    async fn apply_with(
        &self,
        id: i64,
        change: Option<(i64, &str, &str)>,
    ) -> Result<mezzanine_proto::v1::PoolApplied> {
        let _one = self.0.applying.lock().await;
        let pool = self.get(id).await?;
        let edge = edge_of(&pool)?;
        let body = self
            .config(&pool, change.map(|(s, st, _)| (s, st)), None)
            .await?;
        let result = self.send(edge, body).await;
        let error = result.as_ref().err().map(ToString::to_string);
        self.0
            .store
            .set_pool_lb(id, error.as_deref(), now())
            .await?;
        if let (Ok(_), Some((server, state, detail))) = (&result, change) {
            self.0
                .store
                .set_member_state(id, server, state, Some(detail), Some(now()))
                .await?;
        }
        result
    }

    /// Starts a rolling deploy of the pool's workflow over its members, `max_unavailable`
    /// at a time (default 1, and never the whole pool while it has more than one member).
    pub async fn deploy(
        &self,
        id: i64,
        max_unavailable: Option<i64>,
        detail: serde_json::Value,
    ) -> Result<i64> {
        let pool = self.get(id).await?;
        let st = &self.0.store;
        let Some(wf) = pool.settings.workflow_id else {
            return Err(PoolError::Conflict(
                "the pool has no workflow: set workflow_id first".into(),
            ));
        };
        if st.workflow(wf).await?.is_none() {
            return Err(PoolError::Conflict(format!(
                "the pool's workflow {wf} is gone"
            )));
        }
        if pool.settings.edge_server_id.is_none() {
            return Err(PoolError::Conflict(
                "the pool has no edge server: set edge_server_id".into(),
            ));
        }
        let members = st.pool_members(id).await?;
        if let Some(busy) = members
            .iter()
            .find(|m| m.state == "deploying" || m.state == "draining")
        {
            return Err(PoolError::Conflict(format!(
                "member {} is {}; wait for it",
                busy.server_id, busy.state
            )));
        }
        if members.is_empty() {
            return Err(PoolError::Conflict(
                "the pool has no members: scale out first".into(),
            ));
        }
        let n = members.len() as i64;
        let most = if n > 1 { n - 1 } else { 1 };
        let mu = max_unavailable.unwrap_or(1);
        range("max_unavailable", mu, 1, most).map_err(PoolError::Invalid)?;
        // Healthy members first would leave the failing ones for last; the order is the
        // pool's, so a rollout is predictable.
        let order: Vec<i64> = members.iter().map(|m| m.server_id).collect();
        let rid = st
            .create_rollout(id, mu, &detail, &order, now())
            .await?
            .ok_or_else(|| PoolError::Conflict("a rollout of this pool is running".into()))?;
        let me = self.clone();
        self.0
            .tasks
            .spawn(async move { me.drive(rid, detail).await });
        Ok(rid)
    }

    pub fn is_cancelling(&self, rid: i64) -> bool {
        lock(&self.0.cancelled).contains(&rid)
    }

    /// Asks a running rollout to stop after the batch in progress.
    pub async fn cancel_rollout(&self, pool_id: i64, rid: i64) -> Result<String> {
        let Some((r, _)) = self
            .0
            .store
            .rollout(rid)
            .await?
            .filter(|(r, _)| r.pool_id == pool_id)
        else {
            return Err(PoolError::NotFound(format!(
                "rollout {rid} of pool {pool_id} not found"
            )));
        };
        if r.status != "running" {
            return Err(PoolError::Conflict(format!("the rollout is {}", r.status)));
        }
        lock(&self.0.cancelled).insert(rid);
        Ok("cancelling".into())
    }

    async fn drive(&self, rid: i64, detail: serde_json::Value) {
        let outcome = self.drive_batches(rid, detail).await;
        lock(&self.0.cancelled).remove(&rid);
        let (status, error) = match &outcome {
            Ok(true) => ("succeeded", None),
            Ok(false) => ("cancelled", None),
            Err(e) => ("failed", Some(e.as_str())),
        };
        let pool = match self.0.store.rollout(rid).await {
            Ok(Some((r, _))) => r.pool_id,
            _ => return,
        };
        tracing::info!(
            rollout = rid,
            pool,
            status,
            error = error.unwrap_or(""),
            "rollout ended"
        );
        if let Err(e) = self
            .0
            .store
            .finish_rollout(rid, pool, status, error, now())
            .await
        {
            tracing::error!(rollout = rid, error = %e, "cannot record a rollout's end");
        }
    }

    /// Each batch: drained (out of the upstream, reload, drain time), deployed, checked
    /// from the edge and put back; the first member that fails stops the rollout and
    /// stays out. `Ok(false)` when cancelled.
    async fn drive_batches(
        &self,
        rid: i64,
        detail: serde_json::Value,
    ) -> std::result::Result<bool, String> {
        let st = &self.0.store;
        let (r, members) = st
            .rollout(rid)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the rollout is gone")?;
        let pool_id = r.pool_id;
        let batch_size = usize::try_from(r.max_unavailable.max(1)).unwrap_or(1);
        for batch in members.chunks(batch_size) {
            if lock(&self.0.cancelled).contains(&rid) {
                return Ok(false);
            }
            let pool = self.get(pool_id).await.map_err(|e| e.to_string())?;
            let wf_id = pool
                .settings
                .workflow_id
                .ok_or("the pool lost its workflow")?;
            let wf = st
                .workflow(wf_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the pool's workflow is gone")?;
            let why = format!("redeploying (rollout {rid})");
            for m in batch {
                st.set_rollout_member(rid, pool_id, m.server_id, "draining", None, None)
                    .await
                    .map_err(|e| e.to_string())?;
                self.apply_with(pool_id, Some((m.server_id, "draining", &why)))
                    .await
                    .map_err(|e| format!("draining server {}: {e}", m.server_id))?;
            }
            // New requests go elsewhere since the reload; these finish on the old workers.
            tokio::time::sleep(Duration::from_secs(
                pool.settings.drain_timeout_s.max(0) as u64
            ))
            .await;
            for m in batch {
                let run_detail = json!({ "user": detail["user"], "pool": pool_id, "pool_name": pool.settings.name, "rollout": rid });
                let run = match crate::deploy::enqueue_on(
                    &self.0.deploys,
                    &wf,
                    m.server_id,
                    "manual",
                    run_detail,
                    None,
                )
                .await
                {
                    Ok(Some(run)) => run,
                    Ok(None) => return Err("a run was not queued".into()),
                    Err(e) => {
                        let msg = e.to_string();
                        st.set_member_state(
                            pool_id,
                            m.server_id,
                            "failed",
                            Some(&msg),
                            Some(now()),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        st.set_rollout_member(
                            rid,
                            pool_id,
                            m.server_id,
                            "failed",
                            None,
                            Some(&msg),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        return Err(format!("server {}: {msg}", m.server_id));
                    }
                };
                st.set_member_run(pool_id, m.server_id, run)
                    .await
                    .map_err(|e| e.to_string())?;
                st.set_rollout_member(rid, pool_id, m.server_id, "deploying", Some(run), None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // The admission (run ended → checked from the edge → in the upstream) is the
            // scale-out's; wait for each member's outcome.
            for m in batch {
                let mut checking = false;
                loop {
                    let member = st
                        .pool_members(pool_id)
                        .await
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .find(|x| x.server_id == m.server_id)
                        .ok_or_else(|| {
                            format!("server {} left the pool during the rollout", m.server_id)
                        })?;
                    match member.state.as_str() {
                        "healthy" => {
                            st.set_rollout_member(
                                rid,
                                pool_id,
                                m.server_id,
                                "succeeded",
                                None,
                                member.health_detail.as_deref(),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                            break;
                        }
                        "failed" | "unhealthy" => {
                            let why = member.health_detail.unwrap_or_else(|| "failed".into());
                            st.set_rollout_member(
                                rid,
                                pool_id,
                                m.server_id,
                                "failed",
                                None,
                                Some(&why),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                            let name = st
                                .server(m.server_id)
                                .await
                                .ok()
                                .flatten()
                                .map(|s| s.name)
                                .unwrap_or_default();
                            return Err(format!("{name} (server {}): {why}", m.server_id));
                        }
                        _ => {}
                    }
                    if !checking {
                        if let Some(run) = member.last_run_id {
                            if st
                                .run(run)
                                .await
                                .ok()
                                .flatten()
                                .is_some_and(|r| r.status == "succeeded")
                            {
                                checking = true;
                                st.set_rollout_member(
                                    rid,
                                    pool_id,
                                    m.server_id,
                                    "checking",
                                    None,
                                    None,
                                )
                                .await
                                .map_err(|e| e.to_string())?;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(true)
    }

    /// Rollouts whose driver is gone (this controller's previous process, or another
    /// controller that stopped renewing its lease) end as failed — each claimed first,
    /// so one controller ends it — and their pools' members left drained (still on the
    /// old version) go back into the upstream. `mine`: this controller's own too (at
    /// start, they are its previous process's).
    pub async fn adopt_orphaned_rollouts(&self, mine: bool) {
        let st = &self.0.store;
        let orphans = match st
            .orphaned_rollouts(crate::gateway::fleet::fresh_since(), mine)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rollouts left running");
                return;
            }
        };
        let mut pools = Vec::new();
        for (rid, previous) in orphans {
            if !matches!(st.take_rollout(rid, previous.as_deref()).await, Ok(true)) {
                continue;
            }
            if let Ok(Some((r, _))) = st.rollout(rid).await {
                let _ = st
                    .finish_rollout(rid, r.pool_id, "failed", Some("its controller restarted or went away during the rollout; members not yet redeployed keep the previous version"), now())
                    .await;
                pools.push(r.pool_id);
            }
        }
        if pools.is_empty() {
            return;
        }
        let Ok(members) = st.all_members().await else {
            return;
        };
        for m in members
            .into_iter()
            .filter(|m| m.state == "draining" && pools.contains(&m.pool_id))
        {
            if let Err(e) = self
                .apply_with(
                    m.pool_id,
                    Some((
                        m.server_id,
                        "healthy",
                        "back in the upstream after its rollout's controller stopped",
                    )),
                )
                .await
            {
                tracing::warn!(pool = m.pool_id, server = m.server_id, error = %e, "cannot put a drained member back");
            }
        }
    }

    /// Pools whose workflow is `workflow_id` and that can roll out (members and an edge).
    pub async fn pools_of_workflow(&self, workflow_id: i64) -> Result<Vec<i64>> {
        let pools = self.0.store.pool_rows().await?;
        let members = self.0.store.all_members().await?;
        Ok(pools
            .into_iter()
            .filter(|p| {
                p.settings.workflow_id == Some(workflow_id)
                    && p.settings.edge_server_id.is_some()
                    && members.iter().any(|m| m.pool_id == p.id)
            })
            .map(|p| p.id)
            .collect())
    }

    /// Adds `server` to the pool and deploys the pool's workflow on it; the member enters
    /// the upstream once the run succeeded and its health check passed.
    pub async fn scale_out(&self, id: i64, server: i64, user: &str) -> Result<i64> {
        let pool = self.get(id).await?;
        let st = &self.0.store;
        if !st.server_exists(server).await? {
            return Err(PoolError::Invalid(format!(
                "server_id: server {server} does not exist"
            )));
        }
        let Some(wf_id) = pool.settings.workflow_id else {
            return Err(PoolError::Conflict(
                "the pool has no workflow: set workflow_id first".into(),
            ));
        };
        let wf = st
            .workflow(wf_id)
            .await?
            .ok_or_else(|| PoolError::Conflict(format!("the pool's workflow {wf_id} is gone")))?;
        if !st
            .add_member(id, server, pool.settings.max_replicas, now())
            .await?
        {
            let members = st.pool_members(id).await?;
            return Err(PoolError::Conflict(
                if members.iter().any(|m| m.server_id == server) {
                    format!("server {server} is already a member of this pool")
                } else {
                    format!(
                        "the pool has its max_replicas ({}) members",
                        pool.settings.max_replicas
                    )
                },
            ));
        }
        let detail = json!({ "user": user, "pool": id, "pool_name": pool.settings.name });
        let run =
            match crate::deploy::enqueue_on(&self.0.deploys, &wf, server, "manual", detail, None)
                .await
            {
                Ok(Some(run)) => run,
                Ok(None) => {
                    st.remove_member(id, server).await?;
                    return Err(PoolError::Conflict("the run was not queued".into()));
                }
                Err(e) => {
                    st.remove_member(id, server).await?;
                    return Err(e.into());
                }
            };
        st.set_member_run(id, server, run).await?;
        Ok(run)
    }

    /// Takes a member out of the upstream (reload: new requests go elsewhere, requests in
    /// flight finish on nginx's old workers), waits the pool's drain timeout, then removes
    /// it. Leaving fewer than `min_replicas` needs `force`.
    pub async fn remove_member(&self, id: i64, server: i64, force: bool) -> Result<()> {
        let pool = self.get(id).await?;
        let st = &self.0.store;
        let members = st.pool_members(id).await?;
        let Some(m) = members.iter().find(|m| m.server_id == server) else {
            return Err(PoolError::NotFound(format!(
                "server {server} is not a member of this pool"
            )));
        };
        let left = members.len() as i64 - 1;
        if left < pool.settings.min_replicas && !force {
            return Err(PoolError::Conflict(format!(
                "removing it leaves {left} members, below min_replicas ({}); add ?force=true to remove it anyway",
                pool.settings.min_replicas
            )));
        }
        let in_upstream = serving(&members, None)
            .iter()
            .any(|x| x.server_id == server);
        if in_upstream && pool.settings.edge_server_id.is_some() {
            st.set_member_state(id, server, "draining", Some("leaving the pool"), None)
                .await?;
            if let Err(e) = self.apply(id).await {
                st.set_member_state(id, server, &m.state, None, None)
                    .await?;
                if !force {
                    return Err(e);
                }
            }
            tokio::time::sleep(Duration::from_secs(
                pool.settings.drain_timeout_s.max(0) as u64
            ))
            .await;
        }
        st.remove_member(id, server).await?;
        lock(&self.0.streaks).remove(&(id, server));
        Ok(())
    }

    /// The URL the edge checks a member at.
    fn health_url(host: &str, s: &PoolSettings) -> String {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!("http://{host}:{}{}", s.target_port, s.health_path)
    }

    /// One GET from the edge to the member: Ok(detail) when it answered 2xx/3xx.
    async fn probe(
        &self,
        edge: i64,
        url: &str,
        timeout_s: i64,
    ) -> std::result::Result<String, String> {
        let timeout_ms = u32::try_from(timeout_s * 1000).unwrap_or(60_000);
        let body = command::Body::Probe(Probe {
            url: url.to_owned(),
            timeout_ms,
        });
        match self
            .0
            .agents
            .call(
                edge,
                body,
                Duration::from_millis(u64::from(timeout_ms) + 5000),
            )
            .await
        {
            Ok(reply::Body::ProbeResult(r)) if (200..400).contains(&r.status) => {
                Ok(format!("HTTP {} in {} ms", r.status, r.elapsed_ms))
            }
            Ok(reply::Body::ProbeResult(r)) if r.status > 0 => Err(format!("HTTP {}", r.status)),
            Ok(reply::Body::ProbeResult(r)) => Err(r.error),
            Ok(_) => Err("the edge agent cannot probe; upgrade it".into()),
            Err(e) => Err(format!("the edge could not check: {e}")),
        }
    }

    /// A member whose deploy succeeded: checked from the edge until `healthy_after`
    /// answers in a row (or it gives up), then put in the upstream.
    async fn admit(&self, m: MemberRow) {
        let key = (m.pool_id, m.server_id);
        if !lock(&self.0.busy).insert(key) {
            return;
        }
        let outcome = self.admit_inner(&m).await;
        lock(&self.0.busy).remove(&key);
        if let Err(e) = outcome {
            tracing::warn!(pool = m.pool_id, server = m.server_id, error = %e, "admitting a member failed");
        }
    }

    async fn admit_inner(&self, m: &MemberRow) -> Result<()> {
        let pool = self.get(m.pool_id).await?;
        let s = &pool.settings;
        let st = &self.0.store;
        let Some(edge) = s.edge_server_id else {
            st.set_member_state(
                m.pool_id,
                m.server_id,
                "failed",
                Some("the pool has no edge server to check it from"),
                Some(now()),
            )
            .await?;
            return Ok(());
        };
        let Some(server) = st.server(m.server_id).await? else {
            return Ok(());
        };
        let url = Self::health_url(&server.host, s);
        let mut ok_in_a_row = 0;
        let mut last = String::new();
        // The app has `health.grace_s` to come up (then `healthy_after` checks in a row).
        let tries = (s.health_grace_s / s.health_interval_s.max(1)).max(1) + s.healthy_after;
        for _ in 0..tries {
            match self.probe(edge, &url, s.health_timeout_s).await {
                Ok(d) => {
                    ok_in_a_row += 1;
                    last = d;
                    if ok_in_a_row >= s.healthy_after {
                        lock(&self.0.streaks).insert((m.pool_id, m.server_id), (ok_in_a_row, 0));
                        let change = Some((m.server_id, "healthy", last.as_str()));
                        if let Err(e) = self.apply_with(m.pool_id, change).await {
                            // Healthy but not in the upstream: the health checks try again.
                            let why = format!("healthy, but the edge did not take it: {e}");
                            st.set_member_state(
                                m.pool_id,
                                m.server_id,
                                "unhealthy",
                                Some(&why),
                                Some(now()),
                            )
                            .await?;
                        }
                        return Ok(());
                    }
                }
                Err(e) => {
                    ok_in_a_row = 0;
                    last = e;
                }
            }
            tokio::time::sleep(Duration::from_secs(s.health_interval_s.max(1) as u64)).await;
        }
        st.set_member_state(
            m.pool_id,
            m.server_id,
            "failed",
            Some(&format!(
                "deployed, but its health check did not pass at {url}: {last}"
            )),
            Some(now()),
        )
        .await?;
        Ok(())
    }

    /// A member's deploy run changed: on its end the member is admitted or failed.
    async fn run_changed(&self, run_id: i64) -> Result<()> {
        let st = &self.0.store;
        let Some(m) = st.member_of_run(run_id).await? else {
            return Ok(());
        };
        if m.state != "deploying" {
            return Ok(());
        }
        let Some(run) = st.run(run_id).await? else {
            return Ok(());
        };
        match run.status.as_str() {
            "queued" | "running" => {}
            "succeeded" => {
                let me = self.clone();
                self.0.tasks.spawn(async move { me.admit(m).await });
            }
            other => {
                let why = format!(
                    "its deploy (run {run_id}) ended {other}{}",
                    run.error.map(|e| format!(": {e}")).unwrap_or_default()
                );
                st.set_member_state(m.pool_id, m.server_id, "failed", Some(&why), Some(now()))
                    .await?;
            }
        }
        Ok(())
    }

    /// Members left deploying (a restart, a lagging feed): look at their runs again.
    async fn recheck_deploying(&self) {
        let Ok(members) = self.0.store.all_members().await else {
            return;
        };
        for m in members.into_iter().filter(|m| m.state == "deploying") {
            if let Some(run) = m.last_run_id {
                if let Err(e) = self.run_changed(run).await {
                    tracing::warn!(run, error = %e, "cannot follow a member's deploy");
                }
            }
        }
    }

    /// Follows run endings (for scale-out) and checks members' health from their edges,
    /// until the controller shuts down.
    pub async fn run(self, closing: tokio_util::sync::CancellationToken) {
        let (mut feed, _) = self.0.store.changes().subscribe(None);
        self.recheck_deploying().await;
        // Probes start within 100 ms of being due: detection is the interval, not the tick.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due: HashMap<(i64, i64), tokio::time::Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = closing.cancelled() => return,
                change = feed.recv() => match change {
                    Ok(crate::changes::Change::Entity { kind: crate::changes::Kind::Run, id, .. }) => {
                        if let Err(e) = self.run_changed(id).await {
                            tracing::warn!(run = id, error = %e, "cannot follow a member's deploy");
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.recheck_deploying().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => self.health_round(&mut due).await,
            }
        }
    }

    /// Starts the probes that are due: each healthy or unhealthy member every
    /// `health.interval_s`, from its pool's edge.
    async fn health_round(&self, due: &mut HashMap<(i64, i64), tokio::time::Instant>) {
        // Every 100 ms: cheap when there is nothing to check (no members, or none due).
        let Ok(members) = self.0.store.all_members().await else {
            return;
        };
        let now_i = tokio::time::Instant::now();
        due.retain(|k, _| members.iter().any(|m| (m.pool_id, m.server_id) == *k));
        let checkable = |m: &&MemberRow| {
            (m.state == "healthy" || m.state == "unhealthy")
                && due
                    .get(&(m.pool_id, m.server_id))
                    .is_none_or(|t| *t <= now_i)
        };
        if !members.iter().any(|m| checkable(&m)) {
            return;
        }
        let Ok(pools) = self.0.store.pool_rows().await else {
            return;
        };
        let pools: HashMap<i64, PoolRow> = pools.into_iter().map(|p| (p.id, p)).collect();
        for m in members
            .into_iter()
            .filter(|m| m.state == "healthy" || m.state == "unhealthy")
        {
            let key = (m.pool_id, m.server_id);
            let Some(pool) = pools.get(&m.pool_id) else {
                continue;
            };
            let Some(edge) = pool.settings.edge_server_id else {
                continue;
            };
            // Due first: whether the edge is attached may take a database read (an edge
            // held by another controller).
            if due.get(&key).is_some_and(|t| *t > now_i) || !self.0.agents.is_attached(edge).await {
                continue;
            }
            if !lock(&self.0.busy).insert(key) {
                continue;
            }
            due.insert(
                key,
                now_i + Duration::from_secs(pool.settings.health_interval_s.max(1) as u64),
            );
            let Ok(Some(server)) = self.0.store.server(m.server_id).await else {
                lock(&self.0.busy).remove(&key);
                continue;
            };
            let url = Self::health_url(&server.host, &pool.settings);
            let (me, s) = (self.clone(), pool.settings.clone());
            self.0.tasks.spawn(async move {
                let result = me.probe(edge, &url, s.health_timeout_s).await;
                if let Err(e) = me.judge(&m, &s, result).await {
                    tracing::warn!(pool = m.pool_id, server = m.server_id, error = %e, "health check bookkeeping failed");
                }
                lock(&me.0.busy).remove(&key);
            });
        }
    }

    /// Counts a probe's result; enough failures in a row take a healthy member out of the
    /// upstream, enough successes put an unhealthy one back.
    async fn judge(
        &self,
        m: &MemberRow,
        s: &PoolSettings,
        result: std::result::Result<String, String>,
    ) -> Result<()> {
        let key = (m.pool_id, m.server_id);
        let (ok, fail) = {
            let mut streaks = lock(&self.0.streaks);
            let e = streaks.entry(key).or_insert((0, 0));
            if result.is_ok() {
                *e = (e.0 + 1, 0);
            } else {
                *e = (0, e.1 + 1);
            }
            *e
        };
        let st = &self.0.store;
        // The member may have left or changed state while the probe ran.
        let Some(current) = st
            .pool_members(m.pool_id)
            .await?
            .into_iter()
            .find(|x| x.server_id == m.server_id)
        else {
            return Ok(());
        };
        let detail = match &result {
            Ok(d) => d.clone(),
            Err(e) => e.clone(),
        };
        let next = match (current.state.as_str(), &result) {
            ("healthy", Err(_)) if fail >= s.unhealthy_after => Some("unhealthy"),
            ("unhealthy", Ok(_)) if ok >= s.healthy_after => Some("healthy"),
            _ => None,
        };
        match next {
            Some(state) => {
                tracing::info!(pool = m.pool_id, server = m.server_id, state, detail = %detail, "member health changed");
                let change = Some((m.server_id, state, detail.as_str()));
                if let Err(e) = self.apply_with(m.pool_id, change).await {
                    // In the upstream or not, a failing member is unhealthy; one that
                    // recovered stays out until the edge takes it.
                    if state == "unhealthy" {
                        st.set_member_state(
                            m.pool_id,
                            m.server_id,
                            state,
                            Some(&detail),
                            Some(now()),
                        )
                        .await?;
                    }
                    return Err(e);
                }
            }
            _ => {
                // Record the check without announcing it (a heartbeat-like write every
                // interval would otherwise flood the change feed).
                st.touch_member_health(m.pool_id, m.server_id, &detail, now())
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_field_by_field() {
        assert_eq!(check(&defaults("web")), Ok(()));
        let bad = |f: &dyn Fn(&mut PoolSettings), field: &str| {
            let mut s = defaults("web");
            f(&mut s);
            let e = check(&s).expect_err(field);
            assert!(e.starts_with(field), "{field}: {e}");
        };
        bad(&|s| s.name = "we b".into(), "name");
        bad(&|s| s.min_replicas = 11, "min_replicas");
        bad(&|s| s.max_replicas = 0, "max_replicas");
        bad(&|s| s.lb_strategy = "sticky".into(), "lb_strategy");
        bad(&|s| s.lb_strategy = "cookie_hash".into(), "sticky_cookie");
        bad(&|s| s.sticky_cookie = Some("a b".into()), "sticky_cookie");
        bad(&|s| s.listen_port = 70000, "ports.listen");
        bad(&|s| s.target_port = 0, "ports.target");
        for path in ["health", "/a b", "/a;b", "/a\n", "/{x}", "/\"", "/'"] {
            bad(&|s| s.health_path = path.into(), "health.path");
        }
        bad(&|s| s.health_timeout_s = 10, "health.timeout_s");
        bad(&|s| s.unhealthy_after = 0, "health.unhealthy_after");
        bad(&|s| s.keepalive = -1, "proxy.keepalive");
        bad(&|s| s.drain_timeout_s = 601, "drain_timeout_s");
        let mut s = defaults("web");
        s.lb_strategy = "cookie_hash".into();
        s.sticky_cookie = Some("session_id".into());
        s.health_path = "/healthz?full=1".into();
        assert_eq!(check(&s), Ok(()));
    }
}
