//! Command-line and environment configuration, validated into a `Config` before anything
//! starts. Invalid configuration is reported with a message and exit code 64.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Mezzanine: a self-hosted control plane for a fleet of Linux servers.
#[derive(Parser, Debug)]
#[command(name = "mezzanine", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once at start and taken apart at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the controller: REST API under /api, the browser panel, and the agent gateway.
    Serve(ServeArgs),
    /// Copy a SQLite installation into a new, empty PostgreSQL database (ids kept, so
    /// secrets open with the same master key). Stop the controller first.
    MigrateDb(MigrateDbArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MigrateDbArgs {
    /// The SQLite database to read, e.g. sqlite:///var/lib/mezzanine/mezzanine.db
    #[arg(long)]
    pub from: String,
    /// The empty PostgreSQL database to fill, e.g. postgres://mezzanine@db.internal/mezzanine
    #[arg(long)]
    pub to: String,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address the HTTP API and panel listen on.
    #[arg(long, env = "MEZZANINE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the database, the master key and other state. Created on first start.
    #[arg(long, env = "MEZZANINE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Database URL. Default: the SQLite file `mezzanine.db` in the data dir.
    #[arg(long, env = "MEZZANINE_DATABASE_URL")]
    pub database_url: Option<String>,

    /// The URL users open (e.g. https://panel.example.com). Decides the cookie's Secure flag,
    /// the Origin accepted on mutations, and the address install commands, install scripts
    /// and webhook URLs name. Default: none fixed — those name the address each request
    /// was made to (`http://<Host>`), and the rest follows `http://<listen>`.
    #[arg(long, env = "MEZZANINE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// File holding the 32-byte master key that seals secrets at rest. Default: `master.key`
    /// in the data dir, created with mode 0600 on first start. Refused if group/world-readable.
    #[arg(long, env = "MEZZANINE_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "MEZZANINE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// A session ends after this many seconds without a request.
    #[arg(long, env = "MEZZANINE_SESSION_IDLE_SECS", default_value_t = 12 * 3600)]
    pub session_idle_secs: u64,

    /// A session ends this many seconds after login, however active.
    #[arg(long, env = "MEZZANINE_SESSION_MAX_SECS", default_value_t = 7 * 24 * 3600)]
    pub session_max_secs: u64,

    /// Password hashes computed at once (each takes about 19 MiB). Default: the CPU count.
    #[arg(long, env = "MEZZANINE_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    /// Address the agent gateway (gRPC over mutually-authenticated TLS) listens on.
    #[arg(long, env = "MEZZANINE_AGENT_LISTEN", default_value = "0.0.0.0:7443")]
    pub agent_listen: SocketAddr,

    /// Where the other controllers sharing this PostgreSQL database reach this one's agent
    /// gateway, to relay commands to the agents attached here (HOST:PORT). Default: the
    /// agent listen address, with 127.0.0.1 for an unspecified one (controllers on one
    /// machine); set it when they run on several.
    #[arg(long, env = "MEZZANINE_PEER_ADDRESS", value_parser = parse_peer_address)]
    pub peer_address: Option<String>,

    /// Connections the API port holds at once (beyond it, new ones are closed at once).
    /// Default: a quarter of the descriptor limit, at most 4096.
    #[arg(long, env = "MEZZANINE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Connections one client address may hold on the API port (a reverse proxy in front
    /// counts as one address: raise it there).
    #[arg(long, env = "MEZZANINE_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Seconds an HTTP/1 client has to send a request's headers.
    #[arg(long, env = "MEZZANINE_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,

    /// Seconds a connection to the agent port without a client certificate (enrollment
    /// only) may stay open, counted from its TLS handshake.
    #[arg(long, env = "MEZZANINE_AGENT_ANONYMOUS_SECS", default_value_t = 30)]
    pub agent_anonymous_secs: u64,

    /// Connections one address may have on the agent port before presenting a client
    /// certificate (handshaking or enrolling). Attached agents are not counted here.
    #[arg(long, env = "MEZZANINE_AGENT_ANONYMOUS_PER_IP", default_value_t = 32)]
    pub agent_anonymous_per_ip: usize,

    /// The URL agents dial, https://HOST[:PORT]; several (repeated, or separated by
    /// commas) are tried in turn, and an agent that loses one moves to the next. Default:
    /// the host install commands name (the public URL's, or the address the request was
    /// made to) and the agent port.
    #[arg(long, env = "MEZZANINE_AGENT_ENDPOINT", value_delimiter = ',')]
    pub agent_endpoint: Vec<String>,

    /// Lifetime of agent client certificates in seconds; agents renew at about 70%.
    #[arg(long, env = "MEZZANINE_AGENT_CERT_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub agent_cert_ttl_secs: u64,

    /// Lifetime of join tokens (install commands) in seconds.
    #[arg(long, env = "MEZZANINE_JOIN_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub join_token_ttl_secs: u64,

    /// Seconds allowed to reach a server over SSH during adoption (login gets at least 30 s).
    #[arg(long, env = "MEZZANINE_SSH_TIMEOUT_SECS", default_value_t = 15)]
    pub ssh_timeout_secs: u64,

    /// The agent binary served to install scripts. Default: `mezzanine-agent` next to
    /// this executable.
    #[arg(long, env = "MEZZANINE_AGENT_BINARY")]
    pub agent_binary: Option<PathBuf>,

    /// Seconds a Docker request through an agent may take before the caller gets a 504.
    #[arg(long, env = "MEZZANINE_DOCKER_TIMEOUT_SECS", default_value_t = 15)]
    pub docker_timeout_secs: u64,

    /// Seconds between checks of every online server's pulled images against their
    /// registries; an update newly seen is the notifier event `image.update_available`.
    /// 0: no periodic checks (the API still checks when asked).
    #[arg(
        long,
        env = "MEZZANINE_IMAGE_CHECK_INTERVAL_SECS",
        default_value_t = 21600
    )]
    pub image_check_interval_secs: u64,

    /// An address to serve `GET /metrics` on without authentication (for a Prometheus on a
    /// private network). Without it, `/metrics` on the API address needs an API token.
    #[arg(long, env = "MEZZANINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Seconds a call to a cloud provider's API may take (each attempt) before the caller
    /// gets a 504.
    #[arg(long, env = "MEZZANINE_PROVIDER_TIMEOUT_SECS", default_value_t = 20)]
    pub provider_timeout_secs: u64,

    /// The ACME directory pools' certificates come from (Let's Encrypt production unless
    /// set: its staging directory, ZeroSSL, a private CA).
    #[arg(
        long,
        env = "MEZZANINE_ACME_DIRECTORY_URL",
        default_value = "https://acme-v02.api.letsencrypt.org/directory"
    )]
    pub acme_directory_url: String,

    /// Contact e-mail given to the ACME CA with the account (expiry warnings).
    #[arg(long, env = "MEZZANINE_ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// Seconds to let a DNS-01 TXT record reach the provider's nameservers before the CA
    /// is asked to look.
    #[arg(long, env = "MEZZANINE_ACME_DNS_WAIT_SECS", default_value_t = 20)]
    pub acme_dns_wait_secs: u64,

    /// A PEM file of extra roots trusted for the ACME directory's HTTPS (a private CA, tests).
    #[arg(long, env = "MEZZANINE_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,

    /// Bytes of output stored per deploy run; past it a marker says what was dropped (live
    /// viewers still receive every line).
    #[arg(long, env = "MEZZANINE_RUN_OUTPUT_CAP_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub run_output_cap_bytes: u64,

    /// Finished runs kept per workflow (with their output); older ones are deleted when a
    /// run ends. At least 1.
    #[arg(long, env = "MEZZANINE_KEEP_RUNS", default_value_t = 200)]
    pub keep_runs: u32,

    /// Days audit records are kept (0 keeps none past the next sweep, which runs at start
    /// and hourly).
    #[arg(long, env = "MEZZANINE_KEEP_AUDIT_DAYS", default_value_t = 180)]
    pub keep_audit_days: u32,

    /// Days webhook delivery ids are remembered for duplicate detection (providers retry
    /// within hours).
    #[arg(long, env = "MEZZANINE_KEEP_DELIVERIES_DAYS", default_value_t = 30)]
    pub keep_deliveries_days: u32,

    /// Registries image update checks may reach over plain HTTP: `host:port` or a network
    /// (`10.0.0.0/8`), as Docker's option of the same name. Loopback always may. Repeat
    /// the flag or separate with commas.
    #[arg(
        long = "insecure-registry",
        env = "MEZZANINE_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,

    /// Registries image update checks may reach at private addresses (loopback, RFC 1918,
    /// link-local, unique-local): `host[:port]` names or networks (`10.0.0.0/8`). Others
    /// whose address is private are refused, so a check cannot probe the controller's own
    /// network. Repeat the flag or separate with commas.
    #[arg(
        long = "private-registry",
        env = "MEZZANINE_PRIVATE_REGISTRIES",
        value_delimiter = ','
    )]
    pub private_registries: Vec<String>,

    /// Reverse proxies in front of the controller (addresses or networks): for requests
    /// from them the client's address is read from `X-Forwarded-For`, so login limits,
    /// sessions and the audit log see the real client. Without this the header is
    /// ignored. Repeat the flag or separate with commas.
    #[arg(
        long = "trusted-proxy",
        env = "MEZZANINE_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub public_url: String,
    /// Whether `--public-url` was given (else it follows the bound listen address).
    pub public_url_given: bool,
    /// `scheme://host[:port]` of the public URL, compared with `Origin` headers.
    pub public_origin: String,
    pub secure_cookies: bool,
    pub master_key_file: PathBuf,
    pub max_body_bytes: usize,
    pub session_idle_secs: i64,
    pub session_max_secs: i64,
    pub hash_concurrency: usize,
    pub agent_listen: SocketAddr,
    pub peer_address: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: usize,
    pub http_header_timeout: std::time::Duration,
    pub agent_anonymous: std::time::Duration,
    pub agent_anonymous_per_ip: usize,
    /// Host (DNS name or IP) agents dial; the gateway certificate is issued for it.
    pub agent_endpoint_host: String,
    /// Whether `--agent-endpoint` was given (else agents dial the host servers were told
    /// to download from, on the agent port).
    pub agent_endpoint_given: bool,
    /// Port agents dial; `None` means the port the agent listener is bound to.
    pub agent_endpoint_port: Option<u16>,
    /// Every `--agent-endpoint` as (host, port), in order; the first is also
    /// `agent_endpoint_host`/`_port`.
    pub agent_endpoints: Vec<(String, Option<u16>)>,
    pub agent_cert_ttl_secs: u64,
    pub join_token_ttl_secs: i64,
    pub agent_binary: PathBuf,
    pub ssh_timeout_secs: u64,
    pub insecure_registries: crate::images::Insecure,
    pub trusted_proxies: Vec<crate::net::Network>,
    pub private_registries: crate::images::Private,
    pub docker_timeout: std::time::Duration,
    /// `None`: no periodic image checks.
    pub image_check_interval: Option<std::time::Duration>,
    pub provider_timeout: std::time::Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub acme_directory_url: String,
    pub acme_email: Option<String>,
    pub acme_dns_wait: std::time::Duration,
    /// The extra roots' PEM, read at start.
    pub acme_ca_pem: Option<Vec<u8>>,
    pub run_output_cap_bytes: i64,
    pub keep_runs: i64,
    pub keep_audit: std::time::Duration,
    pub keep_deliveries: std::time::Duration,
}

/// HOST:PORT with a DNS name or an IP address (brackets for IPv6) and a port 1..65535.
fn parse_peer_address(raw: &str) -> Result<String, String> {
    let bad = || format!("{raw:?} is not HOST:PORT");
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(raw.to_owned())
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Splits `scheme://authority/...` and returns `(scheme, authority)` when it is a plain
/// http(s) URL without user info, query or fragment.
fn parse_public_url(url: &str) -> Result<(String, String), ConfigError> {
    let bad = |why: &str| ConfigError(format!("--public-url {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected http://host[:port] or https://host[:port]"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("scheme must be http or https"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let path = &rest[authority.len()..];
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._~-".contains(&b))
    {
        return Err(bad("path may contain only letters, digits and / . _ ~ -"));
    }
    if authority.is_empty() {
        return Err(bad("host is missing"));
    }
    if authority.contains('@') || rest.contains('?') || rest.contains('#') {
        return Err(bad("user info, query and fragment are not allowed"));
    }
    if !authority
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return Err(bad("host contains characters that are not allowed"));
    }
    let authority = authority.to_ascii_lowercase();
    // Browsers omit default ports from Origin.
    let authority = match (scheme.as_str(), authority.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_owned(),
        _ => authority,
    };
    Ok((scheme, authority))
}

/// The host part of an authority (`host`, `host:port`, `[v6]:port`), without brackets.
/// `host[:port]` as a `Host` header may carry it: a DNS name, IPv4 or `[IPv6]`.
fn valid_authority(authority: &str) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return false,
            },
            None => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    port_ok && !host.is_empty() && crate::validate::host(host).is_ok()
}

/// The host of a base URL (`scheme://host[:port]`).
pub fn url_host(url: &str) -> String {
    let authority = url.split_once("://").map_or(url, |(_, r)| r);
    host_of(authority.split('/').next().unwrap_or_default())
}

fn host_of(authority: &str) -> String {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    authority.split(':').next().unwrap_or_default().to_owned()
}

fn parse_agent_endpoint(url: &str) -> Result<(String, Option<u16>), ConfigError> {
    let bad = |why: &str| ConfigError(format!("--agent-endpoint {url:?}: {why}"));
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("expected https://HOST[:PORT]"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return Err(bad("expected https://HOST[:PORT] with no path"));
    }
    let host = host_of(authority);
    let port_part = if authority.starts_with('[') {
        authority.split("]:").nth(1)
    } else {
        authority.split_once(':').map(|(_, p)| p)
    };
    let port = port_part
        .map(|p| p.parse::<u16>().map_err(|_| bad("port must be 1-65535")))
        .transpose()?;
    if crate::validate::host(&host).is_err() {
        return Err(bad("host is not a valid hostname or IP address"));
    }
    Ok((host, port))
}

impl Config {
    /// The URL servers are told to download from and webhooks are shown with: the public
    /// URL when `--public-url` was given; otherwise the address the caller used (`Host`,
    /// and `X-Forwarded-Proto` from a trusted proxy) — a panel opened at
    /// `http://192.168.1.10:8080` hands out commands that fetch from there, which other
    /// machines of that network can reach, where the listen address (`0.0.0.0`,
    /// `127.0.0.1`) would not do. A `Host` that is not a plain `host[:port]` falls back
    /// to the public URL.
    pub fn base_url(&self, host: Option<&str>, forwarded_https: bool) -> String {
        if self.public_url_given {
            return self.public_url.clone();
        }
        match host.filter(|h| valid_authority(h)) {
            Some(h) => format!("{}://{h}", if forwarded_https { "https" } else { "http" }),
            None => self.public_url.clone(),
        }
    }

    /// Once the API listener is bound: a public URL that was not given follows the
    /// address really bound (`--listen 127.0.0.1:0` then names the port it got).
    pub fn listening_on(&mut self, bound: SocketAddr) {
        if self.public_url_given || bound == self.listen {
            return;
        }
        self.listen = bound;
        self.public_url = format!("http://{bound}");
        self.public_origin = self.public_url.clone();
    }
}

/// A database URL with its password (if any) replaced, fit for a message or a log line.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // Not a URL at all: nothing in it can be told from a password.
        Err(_) => "<not a URL>".into(),
    }
}

impl ServeArgs {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let public_url = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen));
        let (scheme, authority) = parse_public_url(&public_url)?;
        let public_url = public_url.trim_end_matches('/').to_owned();
        let database_url = match &self.database_url {
            Some(url) if crate::store::Engine::of(url).is_some() => url.clone(),
            Some(url) => {
                return Err(ConfigError(format!(
                    "--database-url {:?}: expected sqlite://PATH or postgres://USER@HOST[:PORT]/DATABASE",
                    redact_url(url)
                )))
            }
            None => crate::store::Store::sqlite_url(&self.data_dir.join("mezzanine.db")),
        };
        if self.max_body_bytes < 1024 {
            return Err(ConfigError("--max-body-bytes must be at least 1024".into()));
        }
        if self.session_idle_secs == 0 || self.session_max_secs == 0 {
            return Err(ConfigError(
                "session lifetimes must be at least 1 second".into(),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hash_concurrency = self.hash_concurrency.unwrap_or(cores);
        if hash_concurrency == 0 || hash_concurrency > 256 {
            return Err(ConfigError("--hash-concurrency must be 1 to 256".into()));
        }
        if self.agent_endpoint.len() > mezzanine_proto::token::MAX_ENDPOINTS {
            return Err(ConfigError(format!(
                "--agent-endpoint: at most {} endpoints",
                mezzanine_proto::token::MAX_ENDPOINTS
            )));
        }
        let agent_endpoints = self
            .agent_endpoint
            .iter()
            .map(|url| parse_agent_endpoint(url.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let (agent_endpoint_host, agent_endpoint_port) = match agent_endpoints.first() {
            Some(first) => first.clone(),
            None => (host_of(&authority), None),
        };
        if !(2..=366 * 86_400).contains(&self.agent_cert_ttl_secs) {
            return Err(ConfigError(
                "--agent-cert-ttl-secs must be 2 to 31622400 (366 days)".into(),
            ));
        }
        if self.join_token_ttl_secs == 0 {
            return Err(ConfigError(
                "--join-token-ttl-secs must be at least 1".into(),
            ));
        }
        let agent_binary = match &self.agent_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("mezzanine-agent")))
                .unwrap_or_else(|| PathBuf::from("mezzanine-agent")),
        };
        let clamp = |v: u64| {
            i64::try_from(v)
                .unwrap_or(i64::MAX / 4)
                .min(10 * 365 * 86400)
        };
        Ok(Config {
            listen: self.listen,
            master_key_file: self
                .master_key_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("master.key")),
            data_dir: self.data_dir,
            database_url,
            secure_cookies: scheme == "https",
            public_origin: format!("{scheme}://{authority}"),
            public_url,
            public_url_given: self.public_url.is_some(),
            max_body_bytes: self.max_body_bytes,
            session_idle_secs: clamp(self.session_idle_secs),
            session_max_secs: clamp(self.session_max_secs),
            hash_concurrency,
            agent_listen: self.agent_listen,
            peer_address: self.peer_address,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip.max(1),
            http_header_timeout: std::time::Duration::from_secs(
                self.http_header_timeout_secs.clamp(1, 600),
            ),
            agent_anonymous: std::time::Duration::from_secs(
                self.agent_anonymous_secs.clamp(1, 3600),
            ),
            agent_anonymous_per_ip: self.agent_anonymous_per_ip.max(1),
            agent_endpoint_host,
            agent_endpoint_given: !agent_endpoints.is_empty(),
            agent_endpoints,
            agent_endpoint_port,
            agent_cert_ttl_secs: self.agent_cert_ttl_secs,
            join_token_ttl_secs: clamp(self.join_token_ttl_secs),
            agent_binary,
            ssh_timeout_secs: self.ssh_timeout_secs.clamp(1, 600),
            run_output_cap_bytes: i64::try_from(self.run_output_cap_bytes).unwrap_or(i64::MAX),
            keep_runs: i64::from(self.keep_runs.max(1)),
            keep_audit: days(self.keep_audit_days),
            keep_deliveries: days(self.keep_deliveries_days),
            docker_timeout: std::time::Duration::from_secs(self.docker_timeout_secs.clamp(1, 600)),
            image_check_interval: (self.image_check_interval_secs > 0)
                .then(|| std::time::Duration::from_secs(self.image_check_interval_secs)),
            provider_timeout: std::time::Duration::from_secs(
                self.provider_timeout_secs.clamp(1, 600),
            ),
            metrics_listen: self.metrics_listen,
            acme_directory_url: {
                let u = reqwest::Url::parse(&self.acme_directory_url)
                    .map_err(|_| ConfigError("--acme-directory-url: not a URL".into()))?;
                if u.scheme() != "https" {
                    return Err(ConfigError("--acme-directory-url: must be https".into()));
                }
                self.acme_directory_url.clone()
            },
            acme_email: match &self.acme_email {
                Some(e)
                    if e.len() > 254
                        || !e.split_once('@').is_some_and(|(l, d)| {
                            !l.is_empty()
                                && d.contains('.')
                                && !e.chars().any(|c| c.is_whitespace() || c.is_control())
                        }) =>
                {
                    return Err(ConfigError("--acme-email: not an e-mail address".into()))
                }
                e => e.clone(),
            },
            acme_dns_wait: std::time::Duration::from_secs(self.acme_dns_wait_secs.min(600)),
            acme_ca_pem: match &self.acme_ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        ConfigError(format!("--acme-ca-file {}: {e}", path.display()))
                    })?;
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                        ConfigError(format!(
                            "--acme-ca-file {}: not PEM certificates ({e})",
                            path.display()
                        ))
                    })?;
                    Some(pem)
                }
                None => None,
            },
            insecure_registries: crate::images::Insecure::parse(&self.insecure_registries)
                .map_err(ConfigError)?,
            private_registries: crate::images::Private::parse(&self.private_registries)
                .map_err(ConfigError)?,
            trusted_proxies: self
                .trusted_proxies
                .iter()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    crate::net::Network::parse(v)
                        .map_err(|e| ConfigError(format!("--trusted-proxy {e}")))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

fn days(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(n) * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_origin_drops_default_port_and_path() {
        assert_eq!(
            parse_public_url("https://Panel.example.com:443/x").expect("ok"),
            ("https".into(), "panel.example.com".into())
        );
        assert_eq!(
            parse_public_url("http://127.0.0.1:8080").expect("ok"),
            ("http".into(), "127.0.0.1:8080".into())
        );
        assert!(parse_public_url("ftp://x").is_err());
        assert!(parse_public_url("http://a@b").is_err());
        assert!(parse_public_url("example.com").is_err());
    }
}
