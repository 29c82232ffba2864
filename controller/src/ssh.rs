//! Adoption over SSH: connect once (russh), pin the host key on first contact, check the
//! OS, arch and privileges, upload the installer and the agent binary over the session
//! itself, run the installer with a fresh join token, and wait for the agent to attach.
//! Credentials live only in this task's memory unless the user asked to keep them
//! (then sealed at rest); they never reach a log line, an event or a response.

use crate::config::Config;
use crate::crypto::MasterKey;
use crate::gateway::Fleet;
use crate::install::Installs;
use crate::store::Store;
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg};
use russh::ChannelMsg;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

/// How the controller logs in.
#[derive(Clone)]
pub enum SshAuth {
    Password(String),
    Key {
        pem: String,
        passphrase: Option<String>,
    },
}

impl std::fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SshAuth::Password(_) => "Password(..)",
            SshAuth::Key { .. } => "Key(..)",
        })
    }
}

#[derive(Clone, Debug)]
pub struct SshLogin {
    pub username: String,
    pub auth: SshAuth,
}

impl SshLogin {
    /// The sealed-at-rest form (JSON, never logged).
    pub fn to_json(&self) -> Value {
        match &self.auth {
            SshAuth::Password(p) => json!({ "username": self.username, "password": p }),
            SshAuth::Key { pem, passphrase } => {
                json!({ "username": self.username, "private_key": pem, "passphrase": passphrase })
            }
        }
    }

    pub fn from_json(v: &Value) -> Option<SshLogin> {
        let username = v["username"].as_str()?.to_owned();
        let auth = match (v["password"].as_str(), v["private_key"].as_str()) {
            (Some(p), _) => SshAuth::Password(p.to_owned()),
            (None, Some(k)) => SshAuth::Key {
                pem: k.to_owned(),
                passphrase: v["passphrase"].as_str().map(str::to_owned),
            },
            _ => return None,
        };
        Some(SshLogin { username, auth })
    }
}

pub fn credentials_context(server_id: i64) -> String {
    format!("servers.ssh:{server_id}")
}

/// Checks a private key (and passphrase) decode, without connecting.
pub fn check_key(pem: &str, passphrase: Option<&str>) -> Result<(), String> {
    russh::keys::decode_secret_key(pem, passphrase)
        .map(|_| ())
        .map_err(|e| match e {
            russh::keys::Error::KeyIsEncrypted => {
                "the key is encrypted: give its passphrase".to_owned()
            }
            other => format!("cannot read the private key: {other}"),
        })
}

/// Why an adoption failed, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("host unreachable: {0}")]
    Unreachable(String),
    #[error("timed out after {0} s {1}")]
    Timeout(u64, &'static str),
    #[error("host key mismatch: expected {expected}, the server presented {presented}; if the server was legitimately rebuilt, PATCH the server with {{\"forget_host_key\": true}} and reinstall")]
    HostKeyMismatch { expected: String, presented: String },
    #[error("authentication failed for {0}")]
    AuthFailed(String),
    #[error("{0}")]
    Privileges(String),
    #[error("unsupported system: {0}")]
    Unsupported(String),
    #[error("installer failed (exit {code}): {tail}")]
    Installer { code: u32, tail: String },
    #[error("ssh: {0}")]
    Ssh(String),
    #[error("{0}")]
    Internal(String),
}

struct HostKeys {
    expected: Option<String>,
    presented: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeys {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fp = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(HashAlg::Sha256).to_string()
            }
            russh::keys::PublicKeyOrCertificate::Certificate(c) => {
                c.public_key().fingerprint(HashAlg::Sha256).to_string()
            }
        };
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp.clone());
        Ok(self.expected.as_ref().is_none_or(|e| *e == fp))
    }
}

/// The output of a remote command.
struct Output {
    code: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Output {
    /// The last `lines` non-empty lines, joined: what an adoption error says (and the
    /// server's status detail stores, so a NUL becomes U+FFFD as in run output).
    fn tail(&self, lines: usize) -> String {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        );
        let text = crate::validate::storable(&text);
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }
}

async fn exec(
    handle: &client::Handle<HostKeys>,
    command: &str,
    stdin: Option<&[u8]>,
) -> Result<Output, AdoptError> {
    let ssh = |e: russh::Error| AdoptError::Ssh(e.to_string());
    let mut ch = handle.channel_open_session().await.map_err(ssh)?;
    ch.exec(true, command).await.map_err(ssh)?;
    if let Some(data) = stdin {
        ch.data(data).await.map_err(ssh)?;
    }
    ch.eof().await.map_err(ssh)?;
    let mut out = Output {
        code: 255,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => out.code = exit_status,
            _ => {}
        }
    }
    Ok(out)
}

/// Records a step: the status (if any) and an event.
async fn step(adoptions: &Adoptions, id: i64, status: Option<&str>, message: &str) {
    let store = &adoptions.store;
    if let Some(s) = status {
        let _ = store
            .set_server_status(id, s, Some(message), crate::time::now_secs())
            .await;
    }
    let _ = store.add_event(id, message, crate::time::now_ms()).await;
    tracing::info!(server_id = id, status, "{message}");
}

/// Adoptions over SSH: what a bootstrap works with, and which servers have one running.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Adoptions(Arc<AdoptionsInner>);

#[derive(Debug)]
pub struct AdoptionsInner {
    store: Store,
    key: Arc<MasterKey>,
    config: Arc<Config>,
    installs: Installs,
    agents: Arc<Fleet>,
    tasks: TaskTracker,
    running: Mutex<HashSet<i64>>,
}

impl std::ops::Deref for Adoptions {
    type Target = AdoptionsInner;
    fn deref(&self) -> &AdoptionsInner {
        &self.0
    }
}

impl Adoptions {
    pub fn new(
        store: Store,
        key: Arc<MasterKey>,
        config: Arc<Config>,
        installs: Installs,
        agents: Arc<Fleet>,
        tasks: TaskTracker,
    ) -> Adoptions {
        Adoptions(Arc::new(AdoptionsInner {
            store,
            key,
            config,
            installs,
            agents,
            tasks,
            running: Mutex::default(),
        }))
    }

    /// Claims the right to run a bootstrap for `id`; false if one is running.
    fn claim(&self, id: i64) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    fn release(&self, id: i64) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// Why an adoption could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("an adoption of this server is already running")]
    Running,
    #[error(transparent)]
    Seal(#[from] crate::crypto::KeyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Seals (`keep`) or forgets the credentials, then runs the bootstrap in the background;
/// its progress is the server's status. One bootstrap per server at a time.
pub async fn start(
    adoptions: &Adoptions,
    id: i64,
    base: String,
    login: SshLogin,
    keep: bool,
    fingerprint: Option<String>,
) -> Result<(), StartError> {
    if !adoptions.claim(id) {
        return Err(StartError::Running);
    }
    let sealed = if keep {
        match adoptions.key.seal(
            &credentials_context(id),
            login.to_json().to_string().as_bytes(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                adoptions.release(id);
                return Err(e.into());
            }
        }
    } else {
        None
    };
    if let Err(e) = adoptions
        .store
        .set_ssh_credentials(id, sealed.as_deref())
        .await
    {
        adoptions.release(id);
        return Err(e.into());
    }
    let _ = adoptions
        .store
        .set_server_status(
            id,
            "pending",
            Some("adoption queued"),
            crate::time::now_secs(),
        )
        .await;
    adoptions
        .tasks
        .spawn(adopt(adoptions.clone(), id, base, login, fingerprint));
    Ok(())
}

/// Runs the whole bootstrap and records the outcome; never panics the controller.
/// `base`: the URL the install is made for (see `Config::base_url`).
async fn adopt(
    adoptions: Adoptions,
    id: i64,
    base: String,
    login: SshLogin,
    expected: Option<String>,
) {
    let started = Instant::now();
    match run(&adoptions, id, &base, &login, expected).await {
        Ok(()) => {
            let msg = format!("adopted in {:.1} s", started.elapsed().as_secs_f64());
            step(&adoptions, id, None, &msg).await;
        }
        Err(e) => {
            let msg = e.to_string();
            step(&adoptions, id, Some("failed"), &msg).await;
        }
    }
    adoptions.release(id);
}

async fn run(
    adoptions: &Adoptions,
    id: i64,
    base: &str,
    login: &SshLogin,
    request_fp: Option<String>,
) -> Result<(), AdoptError> {
    let store = &adoptions.store;
    let server = store
        .server(id)
        .await
        .map_err(|e| AdoptError::Internal(e.to_string()))?
        .ok_or_else(|| AdoptError::Internal("server was deleted".into()))?;
    let timeout = Duration::from_secs(adoptions.config.ssh_timeout_secs);
    let target = format!("{}:{}", server.host, server.port);
    step(
        adoptions,
        id,
        Some("connecting"),
        &format!("connecting to {target} over SSH"),
    )
    .await;

    let pinned = server.host_key_fingerprint.clone();
    let expected = pinned.clone().or(request_fp);
    let presented = Arc::new(Mutex::new(None));
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    // A server that is still booting refuses connections for a moment: retry refusals
    // until the timeout, then report the last error.
    let deadline = Instant::now() + timeout;
    let mut handle = loop {
        let handler = HostKeys {
            expected: expected.clone(),
            presented: presented.clone(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let connect = client::connect(
            config.clone(),
            (server.host.as_str(), server.port as u16),
            handler,
        );
        match tokio::time::timeout(left, connect).await {
            Err(_) => {
                return Err(AdoptError::Timeout(
                    timeout.as_secs(),
                    "connecting (host unreachable?)",
                ))
            }
            Ok(Ok(h)) => break h,
            Ok(Err(russh::Error::IO(e)))
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && deadline.saturating_duration_since(Instant::now())
                        > Duration::from_millis(500) =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(Err(e)) => {
                let seen = presented.lock().unwrap_or_else(|p| p.into_inner()).clone();
                return Err(match (expected, seen) {
                    (Some(exp), Some(got)) if exp != got => AdoptError::HostKeyMismatch {
                        expected: exp,
                        presented: got,
                    },
                    _ => AdoptError::Unreachable(e.to_string()),
                });
            }
        }
    };
    let fingerprint = presented
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| AdoptError::Internal("no host key seen".into()))?;
    if pinned.is_none() {
        store
            .set_host_key(id, Some(&fingerprint))
            .await
            .map_err(|e| AdoptError::Internal(e.to_string()))?;
        step(
            adoptions,
            id,
            None,
            &format!("host key {fingerprint} pinned (first contact)"),
        )
        .await;
    }

    let who = format!("{}@{}", login.username, target);
    let auth = async {
        match &login.auth {
            SshAuth::Password(p) => handle.authenticate_password(&login.username, p).await,
            SshAuth::Key { pem, passphrase } => {
                let key = russh::keys::decode_secret_key(pem, passphrase.as_deref())
                    .map_err(russh::Error::from)?;
                let hash = handle.best_supported_rsa_hash().await?.flatten();
                handle
                    .authenticate_publickey(
                        &login.username,
                        PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                    )
                    .await
            }
        }
    };
    // sshd delays failed logins on purpose (pam_faildelay), so logging in gets its own,
    // longer limit than connecting.
    let login_limit = timeout.max(Duration::from_secs(30));
    match tokio::time::timeout(login_limit, auth).await {
        Err(_) => return Err(AdoptError::Timeout(login_limit.as_secs(), "authenticating")),
        Ok(Err(e)) => return Err(AdoptError::Ssh(e.to_string())),
        Ok(Ok(r)) if !r.success() => return Err(AdoptError::AuthFailed(who)),
        Ok(Ok(_)) => {}
    }
    step(
        adoptions,
        id,
        Some("installing"),
        &format!("logged in as {who}; checking the system"),
    )
    .await;

    let probe = exec(
        &handle,
        "uname -s; uname -m; id -u; if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then echo sudo; else echo nosudo; fi",
        None,
    )
    .await?;
    let text = String::from_utf8_lossy(&probe.stdout).into_owned();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let (os, arch, uid, sudo) = match lines.as_slice() {
        [os, arch, uid, sudo, ..] => (*os, *arch, *uid, *sudo == "sudo"),
        _ => {
            return Err(AdoptError::Unsupported(format!(
                "unexpected answer to uname/id: {}",
                probe.tail(3)
            )))
        }
    };
    if os != "Linux" {
        return Err(AdoptError::Unsupported(format!(
            "{os} (only Linux is supported)"
        )));
    }
    if arch != std::env::consts::ARCH {
        return Err(AdoptError::Unsupported(format!(
            "{arch} (this controller serves a {} agent)",
            std::env::consts::ARCH
        )));
    }
    let prefix = if uid == "0" {
        ""
    } else if sudo {
        "sudo -n "
    } else {
        return Err(AdoptError::Privileges(format!(
            "{} is not root and has no passwordless sudo",
            login.username
        )));
    };

    let (script, _) = adoptions
        .installs
        .script(base)
        .await
        .map_err(|e| AdoptError::Internal(e.to_string()))?;
    let binary = tokio::fs::read(&adoptions.config.agent_binary)
        .await
        .map_err(|e| AdoptError::Internal(format!("agent binary: {e}")))?;
    let dir = exec(&handle, "mktemp -d /tmp/mezzanine.XXXXXXXX", None).await?;
    let dir = String::from_utf8_lossy(&dir.stdout).trim().to_owned();
    if !dir.starts_with("/tmp/mezzanine.") || !dir[15..].bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(AdoptError::Unsupported(format!("mktemp answered {dir:?}")));
    }
    step(
        adoptions,
        id,
        None,
        &format!(
            "uploading the installer and agent ({} KiB)",
            binary.len() / 1024
        ),
    )
    .await;
    let up = exec(
        &handle,
        &format!("cat > {dir}/mezzanine-agent"),
        Some(&binary),
    )
    .await?;
    if up.code != 0 {
        return Err(AdoptError::Installer {
            code: up.code,
            tail: up.tail(5),
        });
    }
    let up = exec(
        &handle,
        &format!("cat > {dir}/install.sh"),
        Some(script.as_bytes()),
    )
    .await?;
    if up.code != 0 {
        return Err(AdoptError::Installer {
            code: up.code,
            tail: up.tail(5),
        });
    }

    let token = adoptions
        .installs
        .mint(id, base)
        .await
        .map_err(|e| AdoptError::Internal(e.to_string()))?
        .token;
    step(adoptions, id, None, "running the installer").await;
    // The token goes on standard input: on the command line any local user could read
    // it from /proc while the installer runs, and enroll first.
    let cmd = format!(
        "{prefix}sh {dir}/install.sh --token-stdin --binary {dir}/mezzanine-agent --reenroll; rc=$?; rm -rf {dir}; exit $rc"
    );
    let stdin = format!("{token}\n");
    let install = tokio::time::timeout(
        Duration::from_secs(180),
        exec(&handle, &cmd, Some(stdin.as_bytes())),
    )
    .await
    .map_err(|_| AdoptError::Timeout(180, "running the installer"))??;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    if install.code != 0 {
        return Err(AdoptError::Installer {
            code: install.code,
            tail: install.tail(8),
        });
    }
    // The agent may have attached (and marked the server online) before the installer
    // returned: that mark must not be overwritten with "enrolling".
    let waiting = "installer finished; waiting for the agent to attach";
    let _ = adoptions
        .store
        .set_server_status_unless_online(id, "enrolling", waiting, crate::time::now_secs())
        .await;
    step(adoptions, id, None, waiting).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !adoptions.agents.is_attached(id).await {
        if Instant::now() > deadline {
            return Err(AdoptError::Timeout(
                60,
                "waiting for the agent to attach: can the server reach the agent endpoint?",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A new ed25519 deploy key: `(public key line "ssh-ed25519 … comment", OpenSSH private key)`.
pub fn generate_deploy_key(comment: &str) -> Result<(String, String), String> {
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::ssh_key::LineEnding;
    let seed: [u8; 32] = crate::crypto::random_bytes().map_err(|e| e.to_string())?;
    let mut key = russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let public = key.public_key().to_openssh().map_err(|e| e.to_string())?;
    let private = key.to_openssh(LineEnding::LF).map_err(|e| e.to_string())?;
    Ok((public, private.to_string()))
}

/// `SHA256:…` of an OpenSSH public key line.
pub fn public_fingerprint(public: &str) -> Option<String> {
    russh::keys::PublicKey::from_openssh(public)
        .ok()
        .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
}
