//! The agent's state directory: its private key (generated here, mode 0600, never
//! sent), its certificate, the controller's CA, where to dial, and markers for the
//! running process and for a removed server.

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("not enrolled: {0} holds no identity; run `mezzanine-agent enroll TOKEN` first")]
    NotEnrolled(String),
}

/// Everything needed to attach.
#[derive(Debug, Clone)]
pub struct Identity {
    pub server_id: u64,
    /// The controller's agent endpoints, in the order to try them (at least one).
    pub endpoints: Vec<String>,
    pub cert: CertificateDer<'static>,
    pub ca: CertificateDer<'static>,
    pub issued_at: i64,
    pub not_after: i64,
}

pub struct StateDir {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temp file + rename) with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes a secret the agent keeps (mode 0600, atomically).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_atomic(path, bytes, 0o600)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl StateDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn display(&self) -> String {
        self.dir.display().to_string()
    }

    pub fn create(&self) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.dir))
    }

    /// The private key, generated on first use. Refused if readable by others.
    pub fn key(&self) -> Result<KeyPair, StateError> {
        let path = self.path("key.pem");
        if !path.exists() {
            let key = KeyPair::generate().map_err(|e| StateError::Invalid(e.to_string()))?;
            write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
            return Ok(key);
        }
        let mode = std::fs::metadata(&path)
            .map_err(io_err(&path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(StateError::Invalid(format!(
                "{} is readable by group or others (mode {:o}); run `chmod 600` on it",
                path.display(),
                mode & 0o777
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        KeyPair::from_pem(&text)
            .map_err(|e| StateError::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn rustls_key(key: &KeyPair) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
    }

    /// A CSR over this agent's key. Subject and extensions are irrelevant: the controller
    /// decides the identity.
    pub fn csr(key: &KeyPair) -> Result<Vec<u8>, StateError> {
        let req = rcgen::CertificateParams::default()
            .serialize_request(key)
            .map_err(|e| StateError::Invalid(format!("cannot build a certificate request: {e}")))?;
        Ok(req.der().to_vec())
    }

    pub fn save(&self, id: &Identity) -> Result<(), StateError> {
        write_atomic(
            &self.path("ca.pem"),
            pem("CERTIFICATE", &id.ca).as_bytes(),
            0o644,
        )?;
        write_atomic(
            &self.path("cert.pem"),
            pem("CERTIFICATE", &id.cert).as_bytes(),
            0o644,
        )?;
        let meta = format!(
            "server_id={}\nendpoint={}\nissued_at={}\nnot_after={}\n",
            id.server_id,
            id.endpoints.join(","),
            id.issued_at,
            id.not_after
        );
        write_atomic(&self.path("identity"), meta.as_bytes(), 0o644)
    }

    pub fn is_enrolled(&self) -> bool {
        self.path("cert.pem").exists() && self.path("identity").exists()
    }

    pub fn load(&self) -> Result<Identity, StateError> {
        if !self.is_enrolled() {
            return Err(StateError::NotEnrolled(self.display()));
        }
        let meta_path = self.path("identity");
        let meta = std::fs::read_to_string(&meta_path).map_err(io_err(&meta_path))?;
        let field = |k: &str| {
            meta.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .map(str::to_owned)
                .ok_or_else(|| StateError::Invalid(format!("{}: missing {k}", meta_path.display())))
        };
        let num = |k: &str| -> Result<i64, StateError> {
            field(k)?
                .parse()
                .map_err(|_| StateError::Invalid(format!("{}: bad {k}", meta_path.display())))
        };
        let cert_path = self.path("cert.pem");
        let ca_path = self.path("ca.pem");
        let cert = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| StateError::Invalid(format!("{}: {e}", cert_path.display())))?;
        let ca = CertificateDer::from_pem_file(&ca_path)
            .map_err(|e| StateError::Invalid(format!("{}: {e}", ca_path.display())))?;
        Ok(Identity {
            server_id: num("server_id")? as u64,
            // One endpoint, or several separated by commas (an identity written before
            // agents knew several reads the same).
            endpoints: {
                let list: Vec<String> = field("endpoint")?
                    .split(',')
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .collect();
                if list.is_empty() {
                    return Err(StateError::Invalid(format!(
                        "{}: no endpoint",
                        meta_path.display()
                    )));
                }
                list
            },
            cert,
            ca,
            issued_at: num("issued_at")?,
            not_after: num("not_after")?,
        })
    }

    /// Marks the server as removed, so later runs stop at once.
    pub fn mark_removed(&self, reason: &str) {
        let _ = write_atomic(&self.path("removed"), reason.as_bytes(), 0o644);
    }

    pub fn removed(&self) -> Option<String> {
        std::fs::read_to_string(self.path("removed")).ok()
    }

    /// Records what the running agent is doing, for `mezzanine-agent status`.
    pub fn set_run_state(&self, state: &str, detail: &str) {
        let body = format!(
            "pid={}\nstate={state}\nsince={}\ndetail={}\n",
            std::process::id(),
            crate::now_secs(),
            detail.replace('\n', " ")
        );
        let _ = write_atomic(&self.path("run.state"), body.as_bytes(), 0o644);
    }

    pub fn run_state(&self) -> Option<String> {
        std::fs::read_to_string(self.path("run.state")).ok()
    }
}

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo, found by walking the DER:
/// Certificate → tbsCertificate → (version) serial, signature, issuer, validity,
/// subject, subjectPublicKeyInfo.
pub fn spki_pin(cert_der: &[u8]) -> Option<[u8; 32]> {
    use sha2::Digest;
    fn tlv(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)?;
        if first < 0x80 {
            return Some((tag, 2, usize::from(first)));
        }
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        Some((tag, 2 + n, len))
    }
    let (tag, h, _) = tlv(cert_der)?;
    if tag != 0x30 {
        return None;
    }
    let tbs = cert_der.get(h..)?;
    let (tag, h, len) = tlv(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs.get(h..h + len)?;
    if let Some((0xa0, h, len)) = tlv(rest) {
        rest = rest.get(h + len..)?;
    }
    for _ in 0..5 {
        let (_, h, len) = tlv(rest)?;
        rest = rest.get(h + len..)?;
    }
    let (tag, h, len) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    Some(sha2::Sha256::digest(rest.get(..h + len)?).into())
}
