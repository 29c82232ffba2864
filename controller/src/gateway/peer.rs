//! The holder's half of `Peer.Relay`: another controller sharing the database sends a
//! command for an agent attached here; it goes out on the agent's session and the
//! replies go back as they come. The caller must present a controller certificate from
//! this CA (an agent's certificate is refused).

use super::fleet::call_status;
use super::registry::Registry;
use mezzanine_proto::v1::{peer_message, peer_server::Peer, PeerMessage, Reply};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};

/// The longest a relayed one-reply command may wait for its agent.
const MAX_CALL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct PeerService {
    registry: Arc<Registry>,
}

impl PeerService {
    pub fn new(registry: Arc<Registry>) -> Self {
        PeerService { registry }
    }
}

/// The calling controller's id, from its verified client certificate.
fn caller<T>(req: &Request<T>) -> Result<String, Status> {
    let leaf = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| Status::unauthenticated("a controller certificate is required"))?;
    super::ca::controller_identity(&leaf)
        .ok_or_else(|| Status::permission_denied("only controllers may relay commands"))
}

type RelayStream = ReceiverStream<Result<Reply, Status>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type RelayStream = RelayStream;

    async fn relay(
        &self,
        req: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<Self::RelayStream>, Status> {
        let from = caller(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no command within 10 s"))??;
        let Some(PeerMessage {
            kind: Some(peer_message::Kind::Command(cmd)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a command",
            ));
        };
        let body = cmd
            .command
            .and_then(|c| c.body)
            .ok_or_else(|| Status::invalid_argument("the command is empty"))?;
        let server_id = cmd.server_id;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        if !cmd.stream {
            let timeout = Duration::from_millis(u64::from(cmd.timeout_ms)).min(MAX_CALL);
            let reply = self
                .registry
                .call(server_id, body, timeout)
                .await
                .map_err(|e| call_status(&e))?;
            let _ = tx
                .send(Ok(Reply {
                    request_id: 0,
                    body: Some(reply),
                }))
                .await;
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let mut stream = self
            .registry
            .open_stream(server_id, body)
            .map_err(|e| call_status(&e))?;
        tracing::debug!(server_id, peer = %from, "relaying a stream for another controller");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = stream.next() => {
                        let Some(body) = next else { break };
                        let reply = Reply { request_id: 0, body: Some(body) };
                        // The caller left: dropping the stream cancels it on the agent.
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(PeerMessage { kind: Some(peer_message::Kind::Credit(c)) })) => {
                            stream.credit(c.bytes, c.acked_seq).await;
                        }
                        Ok(Some(PeerMessage { kind: Some(peer_message::Kind::Cancel(_)) })) => {
                            stream.cancel();
                        }
                        Ok(Some(_)) => {}
                        // The caller is gone: its stream is dropped with this task.
                        Ok(None) | Err(_) => break,
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
