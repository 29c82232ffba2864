//! Connection exhaustion: idle or slow connections from one host can no longer take the
//! controller down. Attackers connect from 127.0.0.2 (still loopback), so the test's own
//! requests from 127.0.0.1 show that everyone else is still served.

use mezzanine_tests::{attached_agent, Controller};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind source");
    socket.connect(to).await.expect("connect")
}

/// Whether the server closes `s` within `within` (EOF or a reset), reading what it sends.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_cannot_exhaust_the_api() {
    let ctl = Controller::start_with(&[
        "--max-connections-per-ip",
        "8",
        "--http-header-timeout-secs",
        "1",
    ])
    .await;
    let mut admin = ctl.admin().await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect_from([127, 0, 0, 2], ctl.addr).await);
    }
    // Everyone else is still served while the idle connections are open.
    assert_eq!(admin.get("/healthz").await.status, 200);
    assert_eq!(admin.get("/api/auth/state").await.status, 200);
    // Beyond the cap at once, the rest when the header timeout passes; generous ceilings.
    let started = Instant::now();
    for s in idle.iter_mut().skip(8) {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "over the cap"
        );
    }
    for s in idle.iter_mut().take(8) {
        assert!(
            closed_within(s, Duration::from_secs(20)).await,
            "idle past the header timeout"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // A slow client dribbling its headers is cut off too.
    let mut slow = connect_from([127, 0, 0, 2], ctl.addr).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let dribble = async {
        for _ in 0..100 {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), dribble).await;
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "a slowloris client is disconnected"
    );
    // Slots are given back: the same address is served again.
    let mut again = connect_from([127, 0, 0, 2], ctl.addr).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    again.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_agent_connections_are_capped_and_short_lived() {
    let ctl = Controller::start_with(&[
        "--agent-anonymous-per-ip",
        "4",
        "--agent-anonymous-secs",
        "2",
    ])
    .await;
    let mut admin = ctl.admin().await;
    // Ten connections that never start TLS: six are closed at once, the others when the
    // handshake limit (10 s) passes.
    let mut raw = Vec::new();
    for _ in 0..10 {
        raw.push(connect_from([127, 0, 0, 2], ctl.agent_addr).await);
    }
    // Meanwhile a real agent (from another address) enrolls and attaches.
    let (server, _agent, _proc) = attached_agent(&mut admin, "limited", 1).await;
    assert!(server > 0);
    let mut closed_now = 0;
    for s in raw.iter_mut() {
        if closed_within(s, Duration::from_millis(1500)).await {
            closed_now += 1;
        }
    }
    assert!(closed_now >= 6, "{closed_now} of 10 closed at once");
    for s in raw.iter_mut() {
        assert!(
            closed_within(s, Duration::from_secs(20)).await,
            "handshake limit"
        );
    }
    // A TLS connection without a client certificate (what enrollment uses) that then
    // says nothing is closed after --agent-anonymous-secs.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = connect_from([127, 0, 0, 2], ctl.agent_addr).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "an anonymous connection outlived its deadline");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// Accepts any server certificate: this test is about the connection, not who answers.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Anonymous requests that are refused cannot grow the audit log by a record each (500
/// of them with 60 KB paths used to add ~33 MB to the database and as much to the log):
/// the first of a kind is recorded with its target cut short, the repeats are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_denials_do_not_flood_the_audit_log() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let before = admin.get("/api/audit?per_page=1").await.body["total"]
        .as_i64()
        .expect("total");
    let long = "x".repeat(60_000);
    let mut anon = ctl.client();
    for _ in 0..300 {
        let r = anon
            .post(&format!("/api/servers/{long}/ping"), serde_json::json!({}))
            .await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let page = admin.get("/api/audit?per_page=500").await.body;
    let after = page["total"].as_i64().expect("total");
    assert!(
        after - before <= 2,
        "300 refusals wrote {} records",
        after - before
    );
    let refused: Vec<&serde_json::Value> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "POST /api/servers/{id}/ping")
        .collect();
    assert_eq!(refused.len(), 1, "{page}");
    assert_eq!(refused[0]["outcome"], "denied");
    let target = refused[0]["target"].as_str().expect("target");
    assert!(target.chars().count() <= 257, "{} chars", target.len());
}
