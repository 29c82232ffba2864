//! A registry token service for Debian's `docker-registry` configured with `auth: token`,
//! doing what Docker Hub's and GHCR's do: `GET /token?service=…&scope=repository:<name>:<actions>`
//! answered with `{ "token": <ES256 JWT> }`, signed by a key whose self-signed certificate
//! is the registry's `rootcertbundle` and travels in the JWT's `x5c` header. Anonymous
//! callers get `pull` on repositories outside `private/`; the one account gets what it asks.

use base64::Engine;
use rcgen::SigningKey;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SERVICE: &str = "mezzanine-test-registry";
pub const ISSUER: &str = "mezzanine-test-token-issuer";

pub struct TokenService {
    pub realm: String,
    pub cert_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Signer {
    key: rcgen::KeyPair,
    cert_der: Vec<u8>,
    user: String,
    pass: String,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// An ECDSA signature from DER `SEQUENCE { r INTEGER, s INTEGER }` to JOSE's raw r‖s.
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    fn int(b: &[u8]) -> (&[u8], &[u8]) {
        assert_eq!(b[0], 0x02, "INTEGER");
        let len = b[1] as usize;
        (&b[2..2 + len], &b[2 + len..])
    }
    assert_eq!(der[0], 0x30, "SEQUENCE");
    let body = &der[2..];
    let (r, rest) = int(body);
    let (s, _) = int(rest);
    let mut out = vec![0u8; 64];
    for (i, v) in [r, s].iter().enumerate() {
        let v = if v.len() > 32 { &v[v.len() - 32..] } else { v };
        out[i * 32 + 32 - v.len()..(i + 1) * 32].copy_from_slice(v);
    }
    out
}

impl Signer {
    fn token(&self, name: &str, actions: &[&str]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let x5c = base64::engine::general_purpose::STANDARD.encode(&self.cert_der);
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [x5c] });
        let access = if actions.is_empty() {
            serde_json::json!([])
        } else {
            serde_json::json!([{ "type": "repository", "name": name, "actions": actions }])
        };
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "tester", "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{name}"), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let der = self.key.sign(signing_input.as_bytes()).expect("sign");
        format!("{signing_input}.{}", b64url(&der_to_raw(&der)))
    }

    fn answer(&self, request: &str) -> String {
        let line = request.lines().next().unwrap_or_default();
        let target = line.split(' ').nth(1).unwrap_or_default();
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let authed = request.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("authorization: basic ")
                && base64::engine::general_purpose::STANDARD
                    .decode(l[21..].trim())
                    .ok()
                    .is_some_and(|d| d == format!("{}:{}", self.user, self.pass).as_bytes())
        });
        let basic_given = request
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("authorization: basic "));
        if basic_given && !authed {
            return "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned();
        }
        let mut name = String::new();
        let mut actions: Vec<String> = Vec::new();
        for pair in query.split('&') {
            if let Some(scope) = pair.strip_prefix("scope=") {
                let scope = scope
                    .replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",");
                let parts: Vec<&str> = scope.split(':').collect();
                if parts.len() == 3 && parts[0] == "repository" {
                    name = parts[1].to_owned();
                    actions = parts[2].split(',').map(str::to_owned).collect();
                }
            }
        }
        let granted: Vec<&str> = actions
            .iter()
            .map(String::as_str)
            .filter(|a| authed || (*a == "pull" && !name.starts_with("private/")))
            .collect();
        let body = serde_json::json!({ "token": self.token(&name, &granted), "expires_in": 300 })
            .to_string();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

impl TokenService {
    /// Serves tokens on `ip` for the account `user:pass`.
    pub async fn start(ip: &str, user: &str, pass: &str) -> TokenService {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["mezzanine-test-token".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.self_signed(&key).expect("cert");
        let signer = Arc::new(Signer {
            cert_der: cert.der().to_vec(),
            key,
            user: user.to_owned(),
            pass: pass.to_owned(),
        });
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let realm = format!("http://{}/token", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let signer = signer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                        match conn.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    let answer = signer.answer(&String::from_utf8_lossy(&buf[..got]));
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        TokenService {
            realm,
            cert_pem: cert.pem(),
            task,
        }
    }
}
