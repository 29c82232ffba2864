//! Simulated agents for the fleet benchmarks: each has its own key generated here and its
//! own certificate from a real `Enroll`, opens its own TLS connection and `Attach`
//! stream, says hello, heartbeats every 10 s and answers pings — what the controller
//! sees of a real agent, without a process per agent.

use mezzanine_agent::identity::StateDir;
use mezzanine_agent::tls;
use mezzanine_proto::v1::{
    agent_message, controller_message, enrollment_client::EnrollmentClient, reply,
    session_client::SessionClient, AgentMessage, EnrollRequest, Facts, Heartbeat, Hello, Pong,
    Reply,
};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// An enrolled simulated agent.
pub struct Enrolled {
    pub id: u64,
    pub key: rcgen::KeyPair,
    pub cert: Vec<u8>,
}

impl Enrolled {
    /// For handing the agent to another load-generator process.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "key": hex::encode(self.key.serialize_der()),
            "cert": hex::encode(&self.cert),
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Enrolled {
        let bytes = |k: &str| hex::decode(v[k].as_str().expect("hex")).expect("hex");
        Enrolled {
            id: v["id"].as_u64().expect("id"),
            key: rcgen::KeyPair::try_from(bytes("key").as_slice()).expect("key"),
            cert: bytes("cert"),
        }
    }
}

/// Creates `n` servers through the API; their `(id, join token)`.
pub async fn create_servers(admin: &crate::Client, n: usize) -> Vec<(i64, String)> {
    let slots = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = admin.clone();
        let slots = slots.clone();
        tasks.push(tokio::spawn(async move {
            let _p = slots.acquire().await.expect("sem");
            let r = c
                .post("/api/servers", json!({ "name": format!("sim-{i}"), "host": "127.0.0.1", "auth_type": "manual" }))
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
            (r.body["id"].as_i64().expect("id"), r.body["token"].as_str().expect("token").to_owned())
        }));
    }
    let mut tokens = Vec::with_capacity(n);
    for t in tasks {
        tokens.push(t.await.expect("join"));
    }
    tokens
}

/// Enrolls one simulated agent per token through `endpoint` (real keys, CSRs and
/// `Enroll` calls, multiplexed on a few connections); the agents and the CA.
pub async fn enroll_all(
    endpoint: &str,
    tokens: Vec<(i64, String)>,
) -> (Vec<Enrolled>, CertificateDer<'static>) {
    let (_, pin) = mezzanine_agent::session::parse_token(&tokens[0].1).expect("token");
    let verifier = Arc::new(tls::PinnedCa::new(pin));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let cfg = tls::enroll_config(verifier.clone()).expect("cfg");
        clients.push(EnrollmentClient::new(
            tls::connect(endpoint, cfg).await.expect("connect"),
        ));
    }
    let slots = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(tokens.len());
    for (i, (id, token)) in tokens.into_iter().enumerate() {
        let mut client = clients[i % clients.len()].clone();
        let slots = slots.clone();
        tasks.push(tokio::spawn(async move {
            let _p = slots.acquire().await.expect("sem");
            let key = rcgen::KeyPair::generate().expect("key");
            let csr = StateDir::csr(&key).expect("csr");
            let resp = client
                .enroll(EnrollRequest {
                    token,
                    csr_der: csr,
                    agent_version: "bench".into(),
                })
                .await
                .expect("enroll")
                .into_inner();
            assert_eq!(resp.server_id as i64, id);
            Enrolled {
                id: resp.server_id,
                key,
                cert: resp.certificate_der,
            }
        }));
    }
    let mut enrolled = Vec::with_capacity(tasks.len());
    for t in tasks {
        enrolled.push(t.await.expect("join"));
    }
    let ca = verifier.found.lock().expect("lock").clone().expect("ca");
    (enrolled, ca)
}

fn heartbeat_msg() -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Heartbeat(Heartbeat {
            load1: 0.1,
            load5: 0.2,
            load15: 0.3,
            memory_used_bytes: 512 << 20,
            memory_total_bytes: 2 << 30,
            disk_used_bytes: 5 << 30,
            disk_total_bytes: 40 << 30,
            uptime_secs: 1000,
        })),
    }
}

fn hello(id: u64) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_version: "bench".into(),
            facts: Some(Facts {
                hostname: format!("sim-{id}"),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel: "6.1.0".into(),
                arch: "x86_64".into(),
                cpus: 2,
                memory_bytes: 2 << 30,
                disk_bytes: 40 << 30,
                docker_version: String::new(),
            }),
            heartbeat_secs: 10,
            upgrade_rolled_back: String::new(),
            running: vec![],
            steps: vec![],
        })),
    }
}

/// Attaches `e` through `endpoint` and keeps the session (heartbeats, pongs) in the
/// background. Returns once attached (the controller has marked the server online), with
/// a receiver that resolves when the session ends.
pub async fn attach(
    endpoint: &str,
    ca: &CertificateDer<'static>,
    e: &Enrolled,
) -> Result<tokio::sync::oneshot::Receiver<()>, String> {
    let config = tls::session_config(ca, e.cert.clone().into(), StateDir::rustls_key(&e.key))
        .map_err(|x| x.to_string())?;
    let channel = tls::connect(endpoint, config).await?;
    let mut client = SessionClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(8);
    tx.send(hello(e.id)).await.map_err(|x| x.to_string())?;
    let mut inbound = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let beats = tx.clone();
    let id = e.id;
    let beat_task = tokio::spawn(async move {
        // Spread the fleet's heartbeats over the interval, as real agents started at
        // different times would be.
        tokio::time::sleep(Duration::from_millis((id * 7919) % 10_000)).await;
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            if beats.send(heartbeat_msg()).await.is_err() {
                break;
            }
        }
    });
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            let Some(controller_message::Kind::Command(c)) = m.kind else {
                continue;
            };
            let body = match c.body {
                Some(mezzanine_proto::v1::command::Body::Ping(p)) => {
                    reply::Body::Pong(Pong { payload: p.payload })
                }
                Some(mezzanine_proto::v1::command::Body::DeployKey(_)) => {
                    reply::Body::Ack(mezzanine_proto::v1::Ack {})
                }
                // The simulated agents have no Docker engine.
                Some(_) => reply::Body::DockerError(mezzanine_proto::v1::DockerError {
                    status: 0,
                    message: "no Docker engine on this simulated server".into(),
                }),
                None => continue,
            };
            let r = AgentMessage {
                kind: Some(agent_message::Kind::Reply(Reply {
                    request_id: c.request_id,
                    body: Some(body),
                })),
            };
            if tx.send(r).await.is_err() {
                break;
            }
        }
        beat_task.abort();
        let _ = ended_tx.send(());
    });
    Ok(ended)
}

/// The real agent's reconnect wait (see the agent's `session.rs`): 250 ms doubling to a
/// 5 s cap, drawn from half to all of the step.
pub fn backoff(failures: u32, draw: f64) -> Duration {
    let step = Duration::from_millis(250).saturating_mul(1 << failures.min(5).saturating_sub(1));
    step.min(Duration::from_secs(5))
        .mul_f64(0.5 + draw.clamp(0.0, 1.0) / 2.0)
}
