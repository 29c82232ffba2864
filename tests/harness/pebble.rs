//! Debian's `pebble` (an RFC 8555 test CA) and `pebble-challtestsrv` (its DNS) as
//! processes on the fleet network's gateway, for the HTTPS tests and benchmark.

use crate::free_port;
use serde_json::json;
use std::time::{Duration, Instant};

/// A program that dies with the test.
pub struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble and its DNS on `gateway`: the directory URL, the root the directory's own
/// HTTPS is signed by (for `--acme-ca-file`), and the management URL.
pub struct Pebble {
    _pebble: Daemon,
    _dns: Daemon,
    _dir: tempfile::TempDir,
    pub directory: String,
    pub ca_file: std::path::PathBuf,
    pub ca_pem: String,
    pub management: String,
    pub dns_management: String,
}

/// Waits until `addr` accepts TCP connections.
fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Pebble {
    /// `http_port`: where pebble checks HTTP-01 (the pools' plain HTTP port); `edge`: the
    /// address every name resolves to; `validity_s`: the certificates' lifetime.
    pub fn start(gateway: &str, http_port: u16, edge: &str, validity_s: u64) -> Pebble {
        let dir = tempfile::tempdir().expect("tmp");
        // A CA for pebble's own listener, and its certificate for the gateway address.
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Mezzanine test ACME listener CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        leaf.subject_alt_names = vec![rcgen::SanType::IpAddress(
            gateway.parse().expect("gateway ip"),
        )];
        let leaf = leaf
            .signed_by(&key, &rcgen::Issuer::from_params(&ca, &ca_key))
            .expect("leaf");
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, leaf.pem()).expect("cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("key");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("ca");
        let (acme, mgmt) = (free_port(gateway), free_port(gateway));
        let (dns, dns_mgmt) = (free_port(gateway), free_port(gateway));
        let config = json!({ "pebble": {
            "listenAddress": format!("{gateway}:{acme}"),
            "managementListenAddress": format!("{gateway}:{mgmt}"),
            "certificate": cert_path, "privateKey": key_path,
            "httpPort": http_port, "tlsPort": free_port(gateway),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_s,
        } });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("config");
        let dns_daemon = Daemon(
            std::process::Command::new("pebble-challtestsrv")
                .args([
                    "-dns01",
                    &format!("{gateway}:{dns}"),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    &format!("{gateway}:{dns_mgmt}"),
                    "-defaultIPv4",
                    edge,
                    "-defaultIPv6",
                    "",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv (tests/run installs Debian's pebble)"),
        );
        let pebble = Daemon(
            std::process::Command::new("pebble")
                .args([
                    "-config",
                    config_path.to_str().expect("utf8"),
                    "-dnsserver",
                    &format!("{gateway}:{dns}"),
                ])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("pebble (tests/run installs Debian's pebble)"),
        );
        wait_port(&format!("{gateway}:{acme}"));
        wait_port(&format!("{gateway}:{mgmt}"));
        wait_port(&format!("{gateway}:{dns_mgmt}"));
        Pebble {
            _pebble: pebble,
            _dns: dns_daemon,
            _dir: dir,
            directory: format!("https://{gateway}:{acme}/dir"),
            ca_file,
            ca_pem: ca_cert.pem(),
            management: format!("https://{gateway}:{mgmt}"),
            dns_management: format!("http://{gateway}:{dns_mgmt}"),
        }
    }

    /// The root pebble signs issued certificates with (new at every start).
    pub async fn issuing_root(&self) -> reqwest::Certificate {
        let http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca"),
            )
            .build()
            .expect("client");
        let pem = http
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .expect("roots")
            .bytes()
            .await
            .expect("root");
        reqwest::Certificate::from_pem(&pem).expect("root pem")
    }

    /// Points `host` at `ip` in pebble's DNS.
    pub async fn point(&self, host: &str, ip: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/add-a", self.dns_management))
            .json(&json!({ "host": host, "addresses": [ip] }))
            .send()
            .await
            .expect("add-a");
        assert!(r.status().is_success(), "{r:?}");
    }
}

/// A client of `host` that reaches it at `ip` and trusts only `root`.
pub fn https_client(
    host: &str,
    ip: &str,
    port: u16,
    root: reqwest::Certificate,
) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve(host, format!("{ip}:{port}").parse().expect("addr"))
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}
