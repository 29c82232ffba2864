//! TLS toward the controller. Enrollment trusts exactly the CA whose public key matches
//! the pin in the join token (the CA arrives in the handshake's chain and the gateway
//! certificate must verify against it); later sessions trust the CA saved at enrollment
//! and present the agent's client certificate.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts the controller only if its chain carries a CA matching `pin` and the gateway
/// certificate verifies against that CA for the dialled name.
#[derive(Debug)]
pub struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// The CA certificate that matched, kept for the state dir.
    pub found: Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCa {
    pub fn new(pin: [u8; 32]) -> Self {
        Self {
            pin,
            provider: provider(),
            found: Mutex::new(None),
        }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        for ca in intermediates {
            if crate::identity::spki_pin(ca) != Some(self.pin) {
                continue;
            }
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone().into_owned())?;
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| Error::General(e.to_string()))?;
            verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
            *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.clone().into_owned());
            return Ok(ServerCertVerified::assertion());
        }
        Err(Error::General(
            "the controller's CA does not match the pin in the join token".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, Error> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
}

/// Enrollment: pinned CA, no client certificate.
pub fn enroll_config(verifier: Arc<PinnedCa>) -> Result<ClientConfig, Error> {
    let mut c = builder()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

/// Sessions: the saved CA as the only root, and our client certificate.
pub fn session_config(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut c = builder()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

/// `(host, port)` of an `https://host:port` endpoint.
pub fn split_endpoint(endpoint: &str) -> Result<(String, u16), String> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| format!("endpoint {endpoint:?} is not https://HOST:PORT"))?
        .trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6
            .split_once("]:")
            .ok_or_else(|| format!("endpoint {endpoint:?} has no port"))?;
        (h.to_owned(), p)
    } else {
        let (h, p) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("endpoint {endpoint:?} has no port"))?;
        (h.to_owned(), p)
    };
    let port = port
        .parse()
        .map_err(|_| format!("endpoint {endpoint:?} has a bad port"))?;
    Ok((host, port))
}

/// Dead-controller detection. The kernel's TCP keepalive probes (answered by the
/// controller's kernel, waking no process) find a vanished peer within
/// `idle + interval × count` = 35 s, and `TCP_USER_TIMEOUT` drops a connection whose sent
/// data stays unacknowledged for 30 s. HTTP/2 PINGs remain as a slow backstop: at 10,000
/// agents, a 15 s PING cost the controller as much CPU as the heartbeats themselves.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(20);
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const TCP_KEEPALIVE_COUNT: u32 = 3;
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
pub const HTTP2_KEEPALIVE: Duration = Duration::from_secs(120);

fn tune(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    tcp.set_nodelay(true)?;
    sockopt::set_socket_keepalive(tcp, true)?;
    sockopt::set_tcp_keepidle(tcp, TCP_KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(tcp, TCP_KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(tcp, TCP_KEEPALIVE_COUNT)?;
    sockopt::set_tcp_user_timeout(tcp, TCP_USER_TIMEOUT.as_millis() as u32)?;
    Ok(())
}

/// A gRPC channel over our TLS to `endpoint`, with HTTP/2 keepalives.
pub async fn connect(endpoint: &str, config: ClientConfig) -> Result<Channel, String> {
    let (host, port) = split_endpoint(endpoint)?;
    // Verified against the name every gateway certificate carries, not the address
    // dialled: the pinned CA is what identifies the controller (see GATEWAY_SERVER_NAME).
    let name = ServerName::try_from(mezzanine_proto::GATEWAY_SERVER_NAME)
        .map_err(|e| format!("gateway name: {e}"))?
        .to_owned();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let uri = format!("http://{authority}");
    let endpoint_cfg = Endpoint::from_shared(uri)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(HTTP2_KEEPALIVE)
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let dial = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let name = name.clone();
        let addr = (host.clone(), port);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tune(&tcp)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    endpoint_cfg
        .connect_with_connector(dial)
        .await
        .map_err(|e| crate::error_chain(&e))
}
