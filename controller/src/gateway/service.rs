//! The gRPC services. Each RPC but `Enroll` starts by reading the caller's identity from
//! its verified client certificate and refuses callers without one.

use super::registry::{Live, Registry};
use super::token;
use super::Handles;
use mezzanine_proto::v1::{
    agent_message, command, enrollment_server::Enrollment, session_server::Session, AgentMessage,
    ControllerMessage, EnrollRequest, EnrollResponse, Facts, RenewRequest, RenewResponse, StopStep,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, Debug)]
pub struct Gateway {
    state: Handles,
}

impl Gateway {
    pub fn new(state: Handles) -> Self {
        Self { state }
    }

    /// The caller's server id, once its certificate is known to be neither revoked nor
    /// orphaned (the TLS layer checked the chain; this checks the database).
    async fn active_identity<T>(&self, req: &Request<T>) -> Result<i64, Status> {
        let (server_id, serial) = identity(req)?;
        let store = &self.state.store;
        let active = store
            .cert_active(&serial, server_id)
            .await
            .map_err(internal)?;
        if !active {
            return Err(Status::permission_denied(
                "this server was removed from Mezzanine",
            ));
        }
        // The agent holds this certificate, so the ones issued before it are retired:
        // a copy of an old key cannot be used for the rest of its lifetime.
        let retired = store
            .revoke_superseded(server_id, &serial, crate::time::now_secs())
            .await
            .map_err(internal)?;
        if !retired.is_empty() {
            tracing::info!(
                server_id,
                count = retired.len(),
                "superseded agent certificates revoked"
            );
            self.state.gateway.registry.revoke(retired);
        }
        Ok(server_id)
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "agent gateway error");
    Status::internal("internal error")
}

/// `(server_id, serial)` from the verified client certificate.
fn identity<T>(req: &Request<T>) -> Result<(i64, String), Status> {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .ok_or_else(|| Status::unauthenticated("a client certificate is required: enroll first"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required: enroll first"))?;
    super::ca::agent_identity(leaf)
        .ok_or_else(|| Status::unauthenticated("client certificate carries no Mezzanine identity"))
}

/// The facts an agent reports, as stored and shown. A NUL becomes U+FFFD, as in run
/// output: the panel has no use for one, and what is stored stays the same on both
/// engines (PostgreSQL's JSON functions refuse a `\u0000`).
fn facts_json(f: &Facts) -> Value {
    let t = |s: &str| crate::validate::storable(s).into_owned();
    json!({
        "hostname": t(&f.hostname),
        "os": t(&f.os),
        "kernel": t(&f.kernel),
        "arch": t(&f.arch),
        "cpus": f.cpus,
        "memory_bytes": f.memory_bytes,
        "disk_bytes": f.disk_bytes,
        "docker_version": (!f.docker_version.is_empty()).then(|| t(&f.docker_version)),
    })
}

#[tonic::async_trait]
impl Enrollment for Gateway {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr());
        let body = req.into_inner();
        let store = &self.state.store;
        let (id, secret) = token::parse(&body.token)
            .ok_or_else(|| Status::invalid_argument("malformed join token (expected MZ1.…)"))?;
        let row = store.join_token(id).await.map_err(internal)?;
        let unknown = || Status::permission_denied("join token is not valid for this controller");
        let row = row.ok_or_else(unknown)?;
        if !crate::crypto::ct_eq(&crate::crypto::sha256(secret.as_bytes()), &row.secret_hash) {
            return Err(unknown());
        }
        if row.used_at.is_some() {
            return Err(Status::permission_denied(format!(
                "join token was already used; mint a new one with POST /api/servers/{}/install-command",
                row.server_id
            )));
        }
        let now = crate::time::now_secs();
        if row.expires_at <= now {
            return Err(Status::permission_denied(format!(
                "join token expired; mint a new one with POST /api/servers/{}/install-command",
                row.server_id
            )));
        }
        let ttl = Duration::from_secs(self.state.config.agent_cert_ttl_secs);
        let issued = self
            .state
            .gateway
            .ca
            .issue_agent_cert(row.server_id, &body.csr_der, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !store.use_join_token(id, now).await.map_err(internal)? {
            return Err(Status::permission_denied(
                "join token was already used or expired",
            ));
        }
        let replaced = store
            .record_cert(
                &issued.serial_hex,
                row.server_id,
                issued.issued_at,
                issued.not_after,
                true,
            )
            .await
            .map_err(internal)?;
        let registry = &self.state.gateway.registry;
        registry.revoke(replaced);
        let reason = "replaced by a new enrollment of this server";
        registry.remove(row.server_id, reason);
        store.changes().tell(crate::changes::Notice::Remove {
            server_id: row.server_id,
            reason: reason.into(),
        });
        store
            .set_server_status(
                row.server_id,
                "enrolling",
                Some("certificate issued; waiting for the agent to attach"),
                now,
            )
            .await
            .map_err(internal)?;
        let version = crate::validate::agent_text(&body.agent_version, 64);
        tracing::info!(server_id = row.server_id, ?peer, agent_version = %version, "agent enrolled");
        Ok(Response::new(EnrollResponse {
            server_id: row.server_id as u64,
            certificate_der: issued.der,
            ca_certificate_der: self.state.gateway.ca.cert_der().to_vec(),
            not_after_unix: issued.not_after,
        }))
    }
}

type AttachStream = ReceiverStream<Result<ControllerMessage, Status>>;

#[tonic::async_trait]
impl Session for Gateway {
    type AttachStream = AttachStream;

    async fn attach(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let server_id = self.active_identity(&req).await?;
        let store = &self.state.store;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(AgentMessage {
            kind: Some(agent_message::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        let heartbeat = Duration::from_secs(u64::from(hello.heartbeat_secs.clamp(1, 300)));
        // Stored, shown and logged: never raw.
        let version = crate::validate::agent_text(&hello.agent_version, 64);
        let facts = hello.facts.as_ref().map(facts_json).unwrap_or(Value::Null);
        let rolled_back = if hello.upgrade_rolled_back.is_empty() {
            String::new()
        } else {
            let why = crate::validate::agent_text(&hello.upgrade_rolled_back, 300);
            tracing::warn!(server_id, agent_version = %version, "agent upgrade rolled back: {why}");
            format!("rolled back, still on {version}: {why}")
        };
        // The database says online before the session is registered, so the session's
        // own "offline" write can never be overtaken by this one.
        store
            .set_server_online(
                server_id,
                &version,
                &facts,
                crate::time::now_secs(),
                &rolled_back,
            )
            .await
            .map_err(internal)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let registry = self.state.gateway.registry.clone();
        let live = registry.attach(server_id, tx, heartbeat);
        tracing::info!(server_id, agent_version = %version, running = hello.running.len(), "agent attached");
        tokio::spawn(read_session(
            self.state.clone(),
            registry,
            live,
            server_id,
            inbound,
        ));
        self.state.deploy_keys.deliver_later(server_id);
        // Steps the agent kept going without a session that no run here will resume (the
        // run was interrupted meanwhile, or cancelled): stop them, so nothing carries on
        // that the controller has already called over.
        for held in hello.steps {
            let (run_id, step) = (held.run_id as i64, i64::from(held.step_index));
            if self.state.deploys.wants(run_id, step) {
                continue;
            }
            // A run another controller drives (or will take over from one that went
            // away) resumes its step through this session: not this one's to stop.
            if let Ok(Some((driver, _))) = store.run_driver(run_id, i64::MIN).await {
                if driver != store.controller_id() {
                    continue;
                }
            }
            tracing::info!(
                server_id,
                run_id,
                step,
                "stopping a step no run will resume"
            );
            let state = self.state.clone();
            tokio::spawn(async move {
                let stop = command::Body::StopStep(StopStep {
                    run_id: held.run_id,
                    step_index: held.step_index,
                });
                let timeout = Duration::from_secs(10);
                if let Err(e) = state.gateway.registry.call(server_id, stop, timeout).await {
                    tracing::warn!(server_id, run_id, step, error = %e, "could not stop a step");
                }
            });
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let server_id = self.active_identity(&req).await?;
        let store = &self.state.store;
        let ttl = Duration::from_secs(self.state.config.agent_cert_ttl_secs);
        let issued = self
            .state
            .gateway
            .ca
            .issue_agent_cert(server_id, &req.get_ref().csr_der, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        store
            .record_cert(
                &issued.serial_hex,
                server_id,
                issued.issued_at,
                issued.not_after,
                false,
            )
            .await
            .map_err(internal)?;
        tracing::info!(
            server_id,
            not_after = issued.not_after,
            "agent certificate renewed"
        );
        Ok(Response::new(RenewResponse {
            certificate_der: issued.der,
            not_after_unix: issued.not_after,
        }))
    }
}

/// Reads the agent's messages until the stream ends, the agent falls silent for three
/// heartbeat intervals, or the session is stopped; then records the server offline.
async fn read_session(
    state: Handles,
    registry: Arc<Registry>,
    live: Arc<Live>,
    server_id: i64,
    mut inbound: Streaming<AgentMessage>,
) {
    let silence = live.heartbeat * 3;
    // One timer, pushed forward by every message, and one stop waiter for the session.
    let reason = {
        let stop = live.stop.notified();
        let quiet = tokio::time::sleep(silence);
        tokio::pin!(stop, quiet);
        loop {
            tokio::select! {
                () = &mut stop => break "session closed by the controller",
                () = &mut quiet => break "missed three heartbeats",
                msg = inbound.message() => {
                    quiet.as_mut().reset(tokio::time::Instant::now() + silence);
                    match msg {
                        Err(_) => break "connection lost",
                        Ok(None) => break "agent closed the session",
                        Ok(Some(m)) => match m.kind {
                            Some(agent_message::Kind::Heartbeat(h)) => Registry::seen(&live, Some(h)),
                            Some(agent_message::Kind::Reply(r)) => {
                                Registry::seen(&live, None);
                                if let Some(body) = r.body {
                                    if !Registry::complete(&live, r.request_id, body) {
                                        tracing::warn!(server_id, request_id = r.request_id, "agent sent a stream more than its credit; ending its session");
                                        break "the agent sent more output than it was credited";
                                    }
                                }
                            }
                            Some(agent_message::Kind::Hello(_)) | None => Registry::seen(&live, None),
                        },
                    }
                }
            }
        }
    };
    // Record the reason before leaving the registry, so nobody sees "offline" without it.
    if registry.is_current(server_id, live.conn_id) {
        tracing::info!(server_id, reason, "agent offline");
        let store = &state.store;
        if let Some(beat) = Registry::last_beat(&live) {
            if let Err(e) = store.flush_heartbeats(&[(server_id, beat.0, beat.1)]).await {
                tracing::warn!(server_id, error = %e, "could not save the last heartbeat");
            }
        }
        if let Err(e) = store
            .set_server_offline(server_id, reason, crate::time::now_secs())
            .await
        {
            tracing::warn!(server_id, error = %e, "could not record agent offline");
        }
    }
    registry.detach(server_id, live.conn_id);
    // Whoever still waits on this session's commands learns it ended now.
    Registry::abandon(&live);
    if reason == "session closed by the controller" {
        // Dropping the request stream now would reset the HTTP/2 stream and could discard
        // a queued `Removed` notice. Release the sending side, and let the agent read to
        // the end and close its half first (bounded).
        drop(live);
        let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}
