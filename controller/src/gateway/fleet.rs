//! Every agent, wherever it is attached. Controllers sharing a database each hold some of
//! the fleet's sessions; `Fleet` carries a command to the agent through this controller's
//! own session when it has one, and otherwise through the controller that holds it (the
//! `Peer.Relay` RPC on that controller's gateway, over mutual TLS with a controller
//! certificate from the shared CA). Callers — the deploy engine, pools, upgrades, the API
//! — see one fleet and never which controller a server is on.

use super::registry::{Registry, ReplyStream};
use super::CallError;
use crate::deploy::agents::{Agents, StepStream};
use crate::store::Store;
use mezzanine_proto::v1::peer_client::PeerClient;
use mezzanine_proto::v1::{command, peer_message, reply, Command, PeerCommand, PeerMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// How long a controller that stopped renewing its row still counts as holding its
/// agents (after that, the others take over what it held).
pub const STALE: Duration = Duration::from_secs(10);

/// How long dialling another controller may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The oldest renewal of a living controller, now.
pub fn fresh_since() -> i64 {
    crate::time::now_ms() - STALE.as_millis() as i64
}

#[derive(Debug)]
pub struct Fleet {
    registry: Arc<Registry>,
    store: Store,
    /// TLS toward the other controllers (`None`: this controller relays nothing, as with
    /// SQLite, where it is the only one).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// One HTTP/2 connection per peer address, shared by every relayed command.
    channels: Mutex<HashMap<String, Channel>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status_error(s: &tonic::Status, timeout: Duration) -> CallError {
    match s.code() {
        tonic::Code::DeadlineExceeded => CallError::Timeout(timeout),
        tonic::Code::ResourceExhausted => CallError::Busy,
        tonic::Code::Aborted => CallError::Agent(s.message().to_owned()),
        tonic::Code::Cancelled => CallError::Disconnected,
        // Unavailable (the server is not held there after all, or the peer is gone), and
        // anything unexpected: as good as offline from here.
        _ => CallError::Offline,
    }
}

/// The status a holder answers a relayed command's failure with (`status_error` reads it).
pub fn call_status(e: &CallError) -> tonic::Status {
    match e {
        CallError::Offline => tonic::Status::unavailable(e.to_string()),
        CallError::Timeout(_) => tonic::Status::deadline_exceeded(e.to_string()),
        CallError::Busy => tonic::Status::resource_exhausted(e.to_string()),
        CallError::Agent(m) => tonic::Status::aborted(m.clone()),
        CallError::Disconnected => tonic::Status::cancelled(e.to_string()),
    }
}

impl Fleet {
    pub fn new(
        registry: Arc<Registry>,
        store: Store,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Fleet {
            registry,
            store,
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The peer address of the other controller holding `server_id`, if one does.
    async fn holder(&self, server_id: i64) -> Option<String> {
        self.tls.as_ref()?;
        match self.store.holder(server_id, fresh_since()).await {
            Ok(h) => h.map(|(_, peer)| peer),
            Err(e) => {
                tracing::warn!(server_id, error = %e, "cannot look up which controller holds a server");
                None
            }
        }
    }

    async fn channel(&self, peer: &str) -> Result<Channel, CallError> {
        if let Some(c) = lock(&self.channels).get(peer) {
            return Ok(c.clone());
        }
        let tls = self.tls.clone().ok_or(CallError::Offline)?;
        let channel = tokio::time::timeout(DIAL_TIMEOUT, dial(peer, tls))
            .await
            .map_err(|_| CallError::Offline)?
            .map_err(|e| {
                tracing::warn!(peer, error = %e, "cannot reach another controller");
                CallError::Offline
            })?;
        lock(&self.channels).insert(peer.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Sends the opening message of a relayed command; the peer's reply stream.
    async fn relay(
        &self,
        peer: &str,
        server_id: i64,
        body: command::Body,
        stream: bool,
        timeout: Duration,
    ) -> Result<
        (
            tonic::Streaming<mezzanine_proto::v1::Reply>,
            mpsc::Sender<PeerMessage>,
        ),
        CallError,
    > {
        let channel = self.channel(peer).await?;
        let (tx, rx) = mpsc::channel(16);
        let first = PeerMessage {
            kind: Some(peer_message::Kind::Command(PeerCommand {
                server_id,
                command: Some(Command {
                    request_id: 0,
                    body: Some(body),
                }),
                stream,
                timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            })),
        };
        tx.send(first).await.map_err(|_| CallError::Offline)?;
        let mut client = PeerClient::new(channel);
        match client
            .relay(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => Ok((r.into_inner(), tx)),
            Err(s) => {
                if s.code() == tonic::Code::Unknown || s.code() == tonic::Code::Unavailable {
                    // A dead connection is not kept for the next command.
                    lock(&self.channels).remove(peer);
                }
                Err(status_error(&s, timeout))
            }
        }
    }

    /// Sends one command to the server's agent and waits for its answer.
    pub async fn call(
        &self,
        server_id: i64,
        body: command::Body,
        timeout: Duration,
    ) -> Result<reply::Body, CallError> {
        if self.registry.is_attached(server_id) {
            return self.registry.call(server_id, body, timeout).await;
        }
        let Some(peer) = self.holder(server_id).await else {
            return Err(CallError::Offline);
        };
        let relayed = async {
            let (mut replies, _tx) = self.relay(&peer, server_id, body, false, timeout).await?;
            match replies.message().await {
                Ok(Some(r)) => match r.body {
                    Some(reply::Body::Error(e)) => Err(CallError::Agent(e.message)),
                    Some(b) => Ok(b),
                    None => Err(CallError::Disconnected),
                },
                Ok(None) => Err(CallError::Disconnected),
                Err(s) => Err(status_error(&s, timeout)),
            }
        };
        // The holder enforces `timeout` toward the agent; this bounds the hop itself.
        tokio::time::timeout(timeout + DIAL_TIMEOUT, relayed)
            .await
            .unwrap_or(Err(CallError::Timeout(timeout)))
    }

    /// Starts a streaming command on the server's agent.
    pub async fn open_stream(
        &self,
        server_id: i64,
        body: command::Body,
    ) -> Result<FleetStream, CallError> {
        if self.registry.is_attached(server_id) {
            return Ok(FleetStream::Local(
                self.registry.open_stream(server_id, body)?,
            ));
        }
        let Some(peer) = self.holder(server_id).await else {
            return Err(CallError::Offline);
        };
        let (replies, tx) = self
            .relay(&peer, server_id, body, true, Duration::ZERO)
            .await?;
        Ok(FleetStream::Remote(Box::new(Relayed {
            replies,
            tx,
            finished: false,
        })))
    }

    /// Whether the server's agent has a session here or on a living controller.
    pub async fn is_attached(&self, server_id: i64) -> bool {
        self.registry.is_attached(server_id) || self.holder(server_id).await.is_some()
    }
}

/// A dialled peer: TLS 1.3 with our controller certificate, the peer's gateway
/// certificate checked against the shared CA under the name every gateway carries.
async fn dial(peer: &str, tls: Arc<rustls::ClientConfig>) -> Result<Channel, String> {
    use rustls::pki_types::ServerName;
    let name = ServerName::try_from(mezzanine_proto::GATEWAY_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .to_owned();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let addr = peer.to_owned();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{peer}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(DIAL_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(2 << 20);
    let dial = tower::service_fn(move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        let name = name.clone();
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(dial)
        .await
        .map_err(|e| e.to_string())
}

/// The TLS client configuration of a controller toward its peers.
pub fn peer_tls(
    ca: &rustls::pki_types::CertificateDer<'static>,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

/// A streaming command's replies, from this controller's session or relayed by the
/// holder. Dropping it before the end cancels the command (a relayed one: the holder
/// sees the relay end and drops its own stream, which cancels on the agent).
#[derive(Debug)]
pub enum FleetStream {
    Local(ReplyStream),
    Remote(Box<Relayed>),
}

/// A stream relayed by the controller holding the agent.
#[derive(Debug)]
pub struct Relayed {
    replies: tonic::Streaming<mezzanine_proto::v1::Reply>,
    tx: mpsc::Sender<PeerMessage>,
    finished: bool,
}

impl FleetStream {
    /// The next reply; `None` once the stream ended or the agent (or the relay) is gone.
    pub async fn next(&mut self) -> Option<reply::Body> {
        match self {
            FleetStream::Local(s) => s.next().await,
            FleetStream::Remote(r) => {
                let Relayed {
                    replies, finished, ..
                } = &mut **r;
                if *finished {
                    return None;
                }
                let body = match replies.message().await {
                    Ok(Some(r)) => r.body,
                    Ok(None) => None,
                    Err(s) => Some(reply::Body::Error(mezzanine_proto::v1::CommandError {
                        message: format!("relayed through another controller: {}", s.message()),
                    }))
                    .filter(|_| s.code() == tonic::Code::Aborted),
                };
                if !body.as_ref().is_some_and(|b| {
                    matches!(b, reply::Body::LogChunk(_) | reply::Body::StepOutput(_))
                }) {
                    *finished = true;
                }
                body
            }
        }
    }

    /// Asks the agent to stop the command; its last reply still arrives.
    pub fn cancel(&self) {
        match self {
            FleetStream::Local(s) => s.cancel(),
            FleetStream::Remote(r) => {
                let _ = r.tx.try_send(PeerMessage {
                    kind: Some(peer_message::Kind::Cancel(mezzanine_proto::v1::Cancel {
                        request_id: 0,
                    })),
                });
            }
        }
    }

    /// Lets the stream send `bytes` more (and acknowledges a step's output up to
    /// `acked_seq`). False when the session (or relay) is gone.
    pub async fn credit(&self, bytes: u64, acked_seq: u64) -> bool {
        match self {
            FleetStream::Local(s) => s.credit(bytes, acked_seq).await,
            FleetStream::Remote(r) => {
                r.tx.send(PeerMessage {
                    kind: Some(peer_message::Kind::Credit(mezzanine_proto::v1::Credit {
                        request_id: 0,
                        bytes,
                        acked_seq,
                    })),
                })
                .await
                .is_ok()
            }
        }
    }
}

#[tonic::async_trait]
impl Agents for Fleet {
    async fn is_attached(&self, server_id: i64) -> bool {
        Fleet::is_attached(self, server_id).await
    }

    async fn open(
        &self,
        server_id: i64,
        cmd: command::Body,
    ) -> Result<Box<dyn StepStream>, CallError> {
        Ok(Box::new(self.open_stream(server_id, cmd).await?))
    }

    async fn call(
        &self,
        server_id: i64,
        cmd: command::Body,
        timeout: Duration,
    ) -> Result<reply::Body, CallError> {
        Fleet::call(self, server_id, cmd, timeout).await
    }
}

#[tonic::async_trait]
impl StepStream for FleetStream {
    async fn next(&mut self) -> Option<reply::Body> {
        FleetStream::next(self).await
    }

    fn cancel(&self) {
        FleetStream::cancel(self);
    }

    async fn credit(&self, bytes: u64, acked_seq: u64) {
        FleetStream::credit(self, bytes, acked_seq).await;
    }
}
