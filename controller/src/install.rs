//! What a server downloads to install the agent: `install.sh` (rendered with this
//! controller's URL and the agent binary's SHA-256) and the agent binary itself, plus
//! the one-liner that fetches the script and checks its SHA-256 before running it, and
//! the join tokens it carries. The HTTP side is `api::install`.

use crate::config::Config;
use crate::store::Store;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

const TEMPLATE: &str = include_str!("../../installer/install.sh");

/// What the controller knows of the agent binary it serves, read from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBuild {
    pub sha256: String,
    /// From its version marker; `None`: not a Mezzanine agent (or a very old one).
    pub version: Option<String>,
    /// From its ELF header.
    pub arch: Option<&'static str>,
}

/// The agent binary's build facts, cached against its size and modification time.
#[derive(Debug, Default)]
struct AgentDigest(Mutex<Option<(u64, Option<SystemTime>, AgentBuild)>>);

/// Installs: the rendered script, the agent binary's digest, join tokens. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Installs(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    store: Store,
    /// The CA pin join tokens carry.
    ca_pin: String,
    /// The port agents dial, fixed once the agent listener is bound.
    port: OnceLock<u16>,
    /// The port the agent listener is bound to (for endpoints given without one).
    bound: OnceLock<u16>,
    digest: AgentDigest,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the agent binary {path} is not available on this controller ({reason}); set --agent-binary"
)]
pub struct MissingAgent {
    pub path: String,
    pub reason: String,
}

impl Installs {
    pub fn new(config: Arc<Config>, store: Store, ca_pin: String) -> Installs {
        Installs(Arc::new(Inner {
            config,
            store,
            ca_pin,
            port: OnceLock::new(),
            bound: OnceLock::new(),
            digest: AgentDigest::default(),
        }))
    }

    /// Fixes the endpoint once the agent listener is bound on `bound`.
    pub fn set_agent_port(&self, bound: u16) {
        let conf = &self.0.config;
        let _ = self.0.port.set(conf.agent_endpoint_port.unwrap_or(bound));
        let _ = self.0.bound.set(bound);
    }

    /// The `https://host:port` endpoints agents dial, in order: the configured ones
    /// (`--agent-endpoint`; one without a port gets the agent listener's), else the public
    /// URL's host when `--public-url` was given, else the host servers were told to
    /// download from (`base`), on the agent port.
    pub fn agent_endpoints(&self, base: &str) -> Vec<String> {
        let conf = &self.0.config;
        let port = self.0.port.get().copied().unwrap_or(0);
        if conf.agent_endpoint_given {
            let bound = self.0.bound.get().copied().unwrap_or(port);
            return conf
                .agent_endpoints
                .iter()
                .map(|(host, p)| endpoint_url(host, p.unwrap_or(bound)))
                .collect();
        }
        if conf.public_url_given {
            return vec![endpoint_url(&conf.agent_endpoint_host, port)];
        }
        vec![endpoint_url(&crate::config::url_host(base), port)]
    }

    /// Where the agent binary served to servers is.
    pub fn agent_binary(&self) -> &PathBuf {
        &self.0.config.agent_binary
    }

    /// The agent binary's SHA-256 (it also tells whether the binary is there).
    pub async fn agent_sha256(&self) -> Result<String, MissingAgent> {
        Ok(self.agent_build().await?.sha256)
    }

    /// The agent binary's SHA-256, version and architecture.
    pub async fn agent_build(&self) -> Result<AgentBuild, MissingAgent> {
        let path = self.0.config.agent_binary.clone();
        let missing = |reason: String| MissingAgent {
            path: path.display().to_string(),
            reason,
        };
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| missing(e.to_string()))?;
        let key = (meta.len(), meta.modified().ok());
        let cache = &self.0.digest;
        {
            let guard = cache.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((len, mtime, build)) = guard.as_ref() {
                if (*len, *mtime) == key {
                    return Ok(build.clone());
                }
            }
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| missing(e.to_string()))?;
        let build = tokio::task::spawn_blocking(move || AgentBuild {
            sha256: hex::encode(crate::crypto::sha256(&bytes)),
            version: mezzanine_proto::binary::version_of(&bytes),
            arch: mezzanine_proto::binary::elf_arch(&bytes),
        })
        .await
        .map_err(|e| missing(e.to_string()))?;
        *cache.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((key.0, key.1, build.clone()));
        Ok(build)
    }

    /// The script rendered for servers that download from `base`, and its SHA-256.
    pub async fn script(&self, base: &str) -> Result<(String, String), MissingAgent> {
        let sum = self.agent_sha256().await?;
        let body = TEMPLATE
            .replace("@MZ_URL@", base)
            .replace("@AGENT_SHA256@", &sum)
            .replace("@AGENT_ARCH@", std::env::consts::ARCH);
        let digest = hex::encode(crate::crypto::sha256(body.as_bytes()));
        Ok((body, digest))
    }
}

/// A fresh join token and the one-liner that carries it.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub command: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    MissingAgent(#[from] MissingAgent),
    #[error(transparent)]
    Random(#[from] crate::crypto::KeyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Mints a single-use join token for `server_id` (only the SHA-256 of its secret is
/// stored; older unused tokens of the server stop working) and the install one-liner.
impl Installs {
    /// Servers download from `base` and dial the agent endpoint that goes with it.
    pub async fn mint(&self, server_id: i64, base: &str) -> Result<Minted, MintError> {
        let (_, sha) = self.script(base).await?;
        let id = hex::encode(crate::crypto::random_bytes::<16>()?);
        let secret = hex::encode(crate::crypto::random_bytes::<32>()?);
        let now = crate::time::now_secs();
        let expires_at = now + self.0.config.join_token_ttl_secs;
        self.0
            .store
            .create_join_token(
                server_id,
                &id,
                &crate::crypto::sha256(secret.as_bytes()),
                now,
                expires_at,
            )
            .await?;
        let token = crate::gateway::token::format(
            &self.agent_endpoints(base),
            &self.0.ca_pin,
            &id,
            &secret,
        );
        let command = command(base, &sha, &token);
        Ok(Minted {
            token,
            command,
            expires_at,
        })
    }
}

/// The one-liner to paste into a root shell. No `sh -c` around it and the token only in
/// the installer's environment: a process's arguments are readable by every local user
/// (`/proc/*/cmdline`), its environment only by root. The URL is validated at start and
/// the token is `[A-Za-z0-9._-]`, so neither needs quoting. It ends with the installer's
/// status (`(exit $rc)` in a subshell, so a pasted line does not close the terminal).
pub fn command(public_url: &str, script_sha256: &str, token: &str) -> String {
    format!(
        "f=$(mktemp) && {{ curl -fsSL {public_url}/install.sh -o \"$f\" || wget -qO \"$f\" {public_url}/install.sh; }} && echo \"{script_sha256}  $f\" | sha256sum -c --quiet - && MZ_TOKEN={token} sh \"$f\"; rc=$?; rm -f \"$f\"; (exit $rc)"
    )
}

fn endpoint_url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}
