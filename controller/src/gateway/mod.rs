//! The agent gateway: a tonic gRPC server behind our own TLS acceptor. `Enroll` trades a
//! join token and CSR for a client certificate; `Attach` is the long-lived session;
//! `Renew` re-issues the caller's certificate. Proto types never leave this module tree:
//! the rest of the controller sees `Registry`, `CallError` and JSON values.

pub mod ca;
pub mod fleet;
mod peer;
pub mod registry;
mod service;
mod tls;

use mezzanine_proto::v1::enrollment_server::EnrollmentServer;
use mezzanine_proto::v1::peer_server::PeerServer;
use mezzanine_proto::v1::session_server::SessionServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub use fleet::{Fleet, FleetStream};
pub use registry::{CallError, LiveView, Registry, ReplyStream};

/// Join tokens: `MZ1.<endpoint, base64url>.<CA pin, hex>.<id, hex>.<secret, hex>`.
/// The join token format, shared with the agent.
pub mod token {
    pub use mezzanine_proto::token::{format, PREFIX};

    /// `(id, secret)` of a well-formed token.
    pub fn parse(token: &str) -> Option<(&str, &str)> {
        mezzanine_proto::token::parse(token)
            .ok()
            .map(|t| (t.id, t.secret))
    }
}

/// Socket options for an agent connection: no Nagle delay; kernel keepalive probes (20 s
/// idle, 5 s × 3) and `TCP_USER_TIMEOUT` 30 s, so a vanished agent's connection is torn
/// down by the kernel without a timer in this process.
fn tune(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    tcp.set_nodelay(true)?;
    sockopt::set_socket_keepalive(tcp, true)?;
    sockopt::set_tcp_keepidle(tcp, Duration::from_secs(20))?;
    sockopt::set_tcp_keepintvl(tcp, Duration::from_secs(5))?;
    sockopt::set_tcp_keepcnt(tcp, 3)?;
    sockopt::set_tcp_user_timeout(tcp, 30_000)?;
    Ok(())
}

/// Unauthenticated connections (handshaking or enrolling) the agent port holds at once.
const ANONYMOUS_TOTAL: usize = 256;
/// Descriptors kept for the database, logs and outbound calls.
const RESERVED_FDS: usize = 128;

impl tonic::transport::server::Connected
    for crate::net::Guarded<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>
{
    type ConnectInfo = <tokio_rustls::server::TlsStream<tokio::net::TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}

/// What the gateway works with: it never sees the HTTP side.
#[derive(Debug, Clone)]
pub struct Handles {
    pub store: crate::store::Store,
    pub config: Arc<crate::config::Config>,
    pub gateway: Arc<Gateway>,
    /// Which steps a run here will resume (the rest an agent holds are stopped), and
    /// told when the controller shuts down.
    pub deploys: crate::deploy::Deploys,
    /// Delivered to each agent as it attaches.
    pub deploy_keys: crate::deploy_keys::DeployKeys,
}

/// Serves the gateway on `listener` until `shutdown`, then ends every session.
pub async fn serve(
    listener: TcpListener,
    state: Handles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let gw = state.gateway.clone();
    // The constant name is what agents verify (see GATEWAY_SERVER_NAME); the endpoint
    // host is kept for agents installed before they did.
    let mut names = vec![
        mezzanine_proto::GATEWAY_SERVER_NAME.to_owned(),
        state.config.agent_endpoint_host.clone(),
        "localhost".to_owned(),
    ];
    names.extend(
        state
            .config
            .agent_endpoints
            .iter()
            .map(|(h, _)| h.clone())
            .filter(|h| h != &state.config.agent_endpoint_host),
    );
    let (chain, key) = gw.ca.server_cert(&names).map_err(|e| e.to_string())?;
    let config = tls::server_config(gw.ca.cert_der(), chain, key, gw.registry.clone())
        .map_err(|e| format!("agent gateway TLS: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    // Connections without a client certificate (handshaking, or enrolling) are capped per
    // address and live at most `agent_anonymous`; attached agents count only against the
    // total, which leaves the API its share of the descriptors.
    let conf = &state.config;
    let anonymous = crate::net::ConnLimits::new(ANONYMOUS_TOTAL, conf.agent_anonymous_per_ip);
    let api_share = crate::net::api_connection_cap(conf.max_connections);
    let sessions = crate::net::ConnLimits::new(
        crate::net::fd_limit_count()
            .saturating_sub(api_share + ANONYMOUS_TOTAL + RESERVED_FDS)
            .max(64),
        usize::MAX,
    );
    let anonymous_for = conf.agent_anonymous;
    let accept = tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "agent gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = anonymous.try_acquire(peer.ip()) else {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, refused, "agent connection refused: too many unauthenticated connections");
                }
                continue;
            };
            if let Err(e) = tune(&tcp) {
                tracing::debug!(%peer, error = %e, "could not set socket options");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let sessions = sessions.clone();
            tokio::spawn(async move {
                let accept = acceptor.accept(tcp).into_fallible();
                match tokio::time::timeout(Duration::from_secs(10), accept).await {
                    Ok(Ok(tls)) => {
                        let authenticated = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .is_some_and(|c| !c.is_empty());
                        let io = if authenticated {
                            let Some(session) = sessions.try_acquire(peer.ip()) else {
                                tracing::warn!(%peer, "agent connection refused: connection cap reached");
                                return;
                            };
                            crate::net::Guarded::new(tls, session, None)
                        } else {
                            crate::net::Guarded::new(tls, slot, Some(anonymous_for))
                        };
                        let _ = tx.send(Ok::<_, std::io::Error>(io)).await;
                    }
                    Ok(Err((e, mut io))) => {
                        tracing::info!(%peer, error = %e, "agent TLS handshake refused");
                        // rustls has sent its alert (e.g. certificate_revoked). Read what
                        // the peer already sent before closing, so it gets the alert
                        // rather than a reset, and can tell "removed" from "unreachable".
                        let drain = async {
                            let mut buf = [0u8; 4096];
                            while matches!(
                                tokio::io::AsyncReadExt::read(&mut io, &mut buf).await,
                                Ok(n) if n > 0
                            ) {}
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                    }
                    Err(_) => tracing::info!(%peer, "agent TLS handshake timed out"),
                }
            });
        }
    });
    let flusher = tokio::spawn(flush_heartbeats(state.clone()));
    let registry = gw.registry.clone();
    let shut_down_state = state.clone();
    let svc = service::Gateway::new(state.clone());
    let result = tonic::transport::Server::builder()
        // Liveness comes from heartbeats (three missed: offline) and kernel TCP
        // keepalives; an HTTP/2 PING timer per connection only cost CPU (BENCHMARKS.md).
        .http2_keepalive_interval(None)
        // Room for streamed output (logs, deploy steps) to flow without waiting on
        // WINDOW_UPDATEs; windows are limits, not allocations.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(2 << 20)
        .tcp_nodelay(true)
        .add_service(EnrollmentServer::new(svc.clone()))
        .add_service(SessionServer::new(svc))
        .add_service(PeerServer::new(peer::PeerService::new(gw.registry.clone())))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            async move {
                shutdown.await;
                // Runs keep their steps on the agents for the next controller process.
                shut_down_state.deploys.shut_down();
                registry.close_all();
            },
        )
        .await
        .map_err(|e| format!("agent gateway: {e}"));
    accept.abort();
    flusher.abort();
    // Keep what the last heartbeats said.
    let beats = gw.registry.take_dirty();
    if let Err(e) = state.store.flush_heartbeats(&beats).await {
        tracing::warn!(error = %e, "could not save final heartbeats");
    }
    result
}

/// Writes heartbeats to the database in batches, so 10,000 agents cost one
/// transaction every few seconds instead of a write per heartbeat.
async fn flush_heartbeats(state: Handles) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let beats = state.gateway.registry.take_dirty();
        if let Err(e) = state.store.flush_heartbeats(&beats).await {
            tracing::warn!(error = %e, count = beats.len(), "could not save heartbeats");
        }
        // The same batch feeds the history the charts' longer ranges read.
        if let Err(e) = state.store.record_metrics(&beats).await {
            tracing::warn!(error = %e, count = beats.len(), "could not record metrics history");
        }
    }
}

/// The gateway's long-lived parts, shared with the API.
#[derive(Debug)]
pub struct Gateway {
    pub ca: ca::Ca,
    /// The sessions attached to this controller.
    pub registry: Arc<Registry>,
    /// Every agent: this controller's sessions, and those the controllers sharing its
    /// database hold (relayed).
    pub fleet: Arc<Fleet>,
}

/// How long a controller's peer certificate lasts (a new one is made at each start).
const PEER_CERT_TTL: Duration = Duration::from_secs(365 * 86_400);

impl Gateway {
    pub async fn load(
        store: &crate::store::Store,
        key: &crate::crypto::MasterKey,
    ) -> Result<Gateway, ca::CaError> {
        let ca = ca::Ca::load_or_create(store, key).await?;
        let registry = Arc::new(Registry::default());
        registry.revoke(store.revoked_serials(crate::time::now_secs()).await?);
        // Only a shared (PostgreSQL) database can have other controllers to relay to.
        let tls = if store.engine() == crate::store::Engine::Postgres {
            let (chain, key) = ca.issue_controller_cert(store.controller_id(), PEER_CERT_TTL)?;
            let config = fleet::peer_tls(ca.cert_der(), chain, key)
                .map_err(|e| ca::CaError::Invalid(format!("peer TLS: {e}")))?;
            Some(Arc::new(config))
        } else {
            None
        };
        let fleet = Arc::new(Fleet::new(registry.clone(), store.clone(), tls));
        Ok(Gateway {
            ca,
            registry,
            fleet,
        })
    }
}
