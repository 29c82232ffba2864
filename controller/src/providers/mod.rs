//! Cloud provider integrations: credentials (checked against the provider, sealed at
//! rest, never returned) and one thin client per provider over one HTTP layer that owns
//! what they share — bearer auth, timeouts, one bounded retry on 429, and turning the
//! provider's error answers into typed errors that name the provider and carry its
//! message.

pub mod cloudflare;
pub mod contabo;
pub mod digitalocean;
pub mod dns;
pub mod hostinger;

use crate::crypto::MasterKey;
use crate::store::{ProviderRow, Store, StoreError};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The providers Mezzanine speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    DigitalOcean,
    Cloudflare,
    Hostinger,
    Contabo,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::DigitalOcean,
        Provider::Cloudflare,
        Provider::Hostinger,
        Provider::Contabo,
    ];

    pub fn parse(raw: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::DigitalOcean => "digitalocean",
            Provider::Cloudflare => "cloudflare",
            Provider::Hostinger => "hostinger",
            Provider::Contabo => "contabo",
        }
    }

    /// The provider's own name, for messages.
    pub fn label(self) -> &'static str {
        match self {
            Provider::DigitalOcean => "DigitalOcean",
            Provider::Cloudflare => "Cloudflare",
            Provider::Hostinger => "Hostinger",
            Provider::Contabo => "Contabo",
        }
    }

    fn default_base(self) -> &'static str {
        match self {
            Provider::DigitalOcean => "https://api.digitalocean.com/v2",
            Provider::Cloudflare => "https://api.cloudflare.com/client/v4",
            // Paths are under /api/… on the host itself.
            Provider::Hostinger => "https://developers.hostinger.com",
            // Paths are under /v1/…; tokens come from `contabo::AUTH_URL`.
            Provider::Contabo => "https://api.contabo.com",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Our own check of the request refused it (400, naming the field).
    #[error("{0}")]
    Invalid(String),
    /// The provider has no credentials here (409).
    #[error("{0} is not configured: PUT /api/providers/{1} first")]
    NotConfigured(&'static str, &'static str),
    /// 401/403 from the provider.
    #[error("{provider} refused the credentials: {message}")]
    Refused {
        provider: &'static str,
        message: String,
    },
    #[error("{provider}: {message}")]
    NotFound {
        provider: &'static str,
        message: String,
    },
    /// 400/422 from the provider: the request's values.
    #[error("{provider} rejected the request: {message}")]
    Rejected {
        provider: &'static str,
        message: String,
    },
    /// 429 that did not clear within our one bounded retry.
    #[error("{provider} is limiting the rate of requests; retry in {retry_after} s")]
    RateLimited {
        provider: &'static str,
        retry_after: u64,
    },
    #[error("{provider} did not answer within {secs} s")]
    Timeout { provider: &'static str, secs: u64 },
    /// Unreachable, a 5xx, or an answer that is not what the API documents (502).
    #[error("{provider}: {message}")]
    Upstream {
        provider: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored credentials of {0} do not open with this master key")]
    Sealed(&'static str),
    /// Sealing failed (the system's random source).
    #[error("cannot seal the credentials: {0}")]
    Seal(String),
}

pub type Result<T> = std::result::Result<T, ProviderError>;

/// The longest a 429's wait may be for us to wait it out once ourselves.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(3);
/// Pages a list follows at most (a bound, not a limit anyone should meet).
pub(crate) const MAX_PAGES: usize = 50;

/// One provider's API at a base URL with a bearer token.
pub(crate) struct Api {
    http: reqwest::Client,
    provider: Provider,
    base: String,
    auth: HeaderValue,
    timeout: Duration,
}

/// A random (version 4) UUID, as Contabo wants in `x-request-id` on every request.
pub(crate) fn uuid_v4() -> String {
    let mut b = crate::crypto::random_bytes::<16>().unwrap_or_else(|_| {
        // The system's random source failing is not a reason to refuse a call: a unique
        // enough id from the clock keeps requests distinguishable.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        n.to_le_bytes()
    });
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Api {
    fn new(
        http: reqwest::Client,
        provider: Provider,
        base: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Api> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ProviderError::Invalid("token: not a valid header value".into()))?;
        auth.set_sensitive(true);
        Ok(Api {
            http,
            provider,
            base: base.trim_end_matches('/').to_owned(),
            auth,
            timeout,
        })
    }

    /// Calls `path` (below the base URL) and returns the answer's JSON (`Null` for an
    /// empty body). A 429 whose wait is short is retried once after that wait.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let label = self.provider.label();
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .header(AUTHORIZATION, self.auth.clone())
                .header("accept", "application/json")
                .timeout(self.timeout)
                .query(query);
            if self.provider == Provider::Contabo {
                req = req.header("x-request-id", uuid_v4());
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| self.transport(e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
            let json: Value = if bytes.is_empty() {
                Value::Null
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(v) => v,
                    Err(_) if status.is_success() => {
                        return Err(ProviderError::Upstream {
                            provider: label,
                            message: format!("answered {status} with a body that is not JSON"),
                        })
                    }
                    Err(_) => Value::Null,
                }
            };
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = retry_after(&headers);
                if attempt == 0 && wait <= MAX_RETRY_WAIT {
                    tracing::info!(
                        provider = label,
                        wait_ms = wait.as_millis() as u64,
                        "rate limited; retrying once"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(ProviderError::RateLimited {
                    provider: label,
                    retry_after: wait.as_secs().max(1),
                });
            }
            return self.answer(status, json);
        }
        Err(ProviderError::RateLimited {
            provider: label,
            retry_after: 1,
        })
    }

    fn transport(&self, e: reqwest::Error) -> ProviderError {
        let provider = self.provider.label();
        if e.is_timeout() {
            return ProviderError::Timeout {
                provider,
                secs: self.timeout.as_secs(),
            };
        }
        // reqwest's message names the URL, which holds no secret (the token is a header).
        ProviderError::Upstream {
            provider,
            message: format!("cannot reach the API: {}", error_chain(&e)),
        }
    }

    fn answer(&self, status: StatusCode, json: Value) -> Result<Value> {
        let provider = self.provider.label();
        // Cloudflare can answer 200 with `success: false`.
        let failed = json.get("success") == Some(&Value::Bool(false));
        if status.is_success() && !failed {
            return Ok(json);
        }
        let message =
            message_of(self.provider, &json).unwrap_or_else(|| format!("answered {status}"));
        Err(match status.as_u16() {
            401 | 403 => ProviderError::Refused { provider, message },
            404 => ProviderError::NotFound { provider, message },
            400 | 409 | 412 | 422 => ProviderError::Rejected { provider, message },
            s if s < 300 => ProviderError::Rejected { provider, message },
            _ => ProviderError::Upstream {
                provider,
                message: format!("answered {status}: {message}"),
            },
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// How long a 429 asks us to wait: `Retry-After` (seconds), else DigitalOcean's
/// `ratelimit-reset` (epoch seconds), else one second.
fn retry_after(h: &HeaderMap) -> Duration {
    let num = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(s) = num("retry-after") {
        return Duration::from_secs(s);
    }
    if let Some(reset) = num("ratelimit-reset") {
        let now = u64::try_from(crate::time::now_secs()).unwrap_or(0);
        return Duration::from_secs(reset.saturating_sub(now));
    }
    Duration::from_secs(1)
}

/// The provider's own words from an error answer.
fn message_of(provider: Provider, v: &Value) -> Option<String> {
    let text = match provider {
        // {"id": "not_found", "message": "…"}
        Provider::DigitalOcean => v.get("message")?.as_str()?.to_owned(),
        // {"success": false, "errors": [{"code", "message"}]}
        Provider::Cloudflare => {
            let errs: Vec<String> = v
                .get("errors")?
                .as_array()?
                .iter()
                .filter_map(|e| {
                    let m = e.get("message")?.as_str()?;
                    Some(match e.get("code").and_then(Value::as_i64) {
                        Some(c) => format!("{m} ({c})"),
                        None => m.to_owned(),
                    })
                })
                .collect();
            if errs.is_empty() {
                return None;
            }
            errs.join("; ")
        }
        // {"statusCode", "message"}
        Provider::Contabo => match v.get("message")? {
            Value::String(m) => m.clone(),
            Value::Array(ms) => ms
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; "),
            _ => return None,
        },
        // {"message", "correlation_id"}, 422 adding {"errors": {"field": ["msg", …]}};
        // some answers carry `error` instead.
        Provider::Hostinger => {
            let base = v
                .get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)?
                .to_owned();
            let fields: Vec<String> = v
                .get("errors")
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, msgs)| {
                            let m: Vec<&str> = msgs
                                .as_array()
                                .map(|a| a.iter().filter_map(Value::as_str).collect())
                                .unwrap_or_default();
                            format!("{k}: {}", m.join(", "))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if fields.is_empty() {
                base
            } else {
                format!("{base} ({})", fields.join("; "))
            }
        }
    };
    // A provider's message is shown to our user: keep it one bounded line.
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    Some(one_line)
}

/// A provider's credentials as the API takes them and the store keeps them (sealed):
/// a token (DigitalOcean, Cloudflare with an optional account, Hostinger), or Contabo's
/// OAuth client and API user.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::present"
    )]
    pub token: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::present"
    )]
    pub account_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::present"
    )]
    pub api_url: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::present"
    )]
    pub client_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::present"
    )]
    pub client_secret: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::present"
    )]
    pub username: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::present"
    )]
    pub password: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::present"
    )]
    pub auth_url: Option<String>,
}

/// Printable ASCII without spaces, as tokens and OAuth values are; anything else cannot
/// travel in a header or a form intact.
fn printable(field: &str, v: Option<&str>) -> Result<()> {
    match v {
        Some(t) if !t.is_empty() && t.len() <= 512 && t.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(())
        }
        Some(_) => Err(ProviderError::Invalid(format!(
            "{field}: 1–512 printable characters without spaces"
        ))),
        None => Err(ProviderError::Invalid(format!("{field}: required"))),
    }
}

impl Credentials {
    fn check(&self, provider: Provider, insecure: &crate::images::Insecure) -> Result<()> {
        let unused = |field: &str, v: &Option<String>| match v {
            Some(_) => Err(ProviderError::Invalid(format!(
                "{field}: {} takes no {field}",
                provider.label()
            ))),
            None => Ok(()),
        };
        if provider == Provider::Contabo {
            unused("token", &self.token)?;
            printable("client_id", self.client_id.as_deref())?;
            printable("client_secret", self.client_secret.as_deref())?;
            printable("username", self.username.as_deref())?;
            // A password may hold spaces; it goes in a form body, never a header.
            match self.password.as_deref() {
                Some(p)
                    if !p.is_empty()
                        && p.chars().count() <= 512
                        && !p.chars().any(char::is_control) => {}
                _ => {
                    return Err(ProviderError::Invalid(
                        "password: 1–512 characters, no control characters".into(),
                    ))
                }
            }
            if let Some(u) = &self.auth_url {
                check_api_url(u, insecure).map_err(|e| {
                    ProviderError::Invalid(e.to_string().replacen("api_url", "auth_url", 1))
                })?;
            }
        } else {
            printable("token", self.token.as_deref())?;
            for (f, v) in [
                ("client_id", &self.client_id),
                ("client_secret", &self.client_secret),
                ("username", &self.username),
                ("password", &self.password),
                ("auth_url", &self.auth_url),
            ] {
                unused(f, v)?;
            }
        }
        if let Some(a) = &self.account_id {
            if provider != Provider::Cloudflare {
                return Err(ProviderError::Invalid(format!(
                    "account_id: {} takes no account_id",
                    provider.label()
                )));
            }
            if a.is_empty() || a.len() > 64 || !a.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ProviderError::Invalid(
                    "account_id: a Cloudflare account id (hexadecimal)".into(),
                ));
            }
        }
        if let Some(u) = &self.api_url {
            check_api_url(u, insecure)?;
        }
        Ok(())
    }
}

/// A replacement base URL: https, or plain http for loopback and the networks named
/// with `--insecure-registry`; no credentials, query or fragment in it.
fn check_api_url(raw: &str, insecure: &crate::images::Insecure) -> Result<()> {
    let bad = |why: &str| ProviderError::Invalid(format!("api_url: {why}"));
    let url = reqwest::Url::parse(raw).map_err(|_| bad("not a URL"))?;
    let host = url.host_str().ok_or_else(|| bad("no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials do not belong in the URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let port = url.port_or_known_default().unwrap_or(80);
            if insecure.allows(&format!("{host}:{port}")) {
                Ok(())
            } else {
                Err(bad(
                    "plain http only for loopback or a network named with --insecure-registry",
                ))
            }
        }
        _ => Err(bad("https (or http for loopback)")),
    }
}

/// A configured provider as the API lists it.
#[derive(Debug, Clone)]
pub struct Configured {
    pub provider: Provider,
    pub account: Option<String>,
    pub api_url: Option<String>,
    pub updated_at: i64,
}

struct Inner {
    store: Store,
    key: Arc<MasterKey>,
    http: reqwest::Client,
    timeout: Duration,
    insecure: crate::images::Insecure,
    /// Contabo's access token, for the credentials it was issued to (a hash of them).
    contabo_token: tokio::sync::Mutex<Option<contabo::CachedToken>>,
}

/// The provider service: credentials, and clients built from them.
#[derive(Clone)]
pub struct Providers(Arc<Inner>);

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("timeout", &self.0.timeout)
            .finish_non_exhaustive()
    }
}

fn context(p: Provider) -> String {
    format!("providers:{}", p.as_str())
}

impl Providers {
    pub fn new(
        store: Store,
        key: Arc<MasterKey>,
        timeout: Duration,
        insecure: crate::images::Insecure,
    ) -> Providers {
        // No redirects: a provider API does not redirect, and following one could carry
        // the token elsewhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .user_agent(concat!("mezzanine/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Providers(Arc::new(Inner {
            store,
            key,
            http,
            timeout,
            insecure,
            contabo_token: tokio::sync::Mutex::new(None),
        }))
    }

    fn api(&self, provider: Provider, creds: &Credentials) -> Result<Api> {
        self.api_with(provider, creds, creds.token.as_deref().unwrap_or_default())
    }

    fn api_with(&self, provider: Provider, creds: &Credentials, token: &str) -> Result<Api> {
        Api::new(
            self.0.http.clone(),
            provider,
            creds.api_url.as_deref().unwrap_or(provider.default_base()),
            token,
            self.0.timeout,
        )
    }

    /// A Contabo client: the cached access token while it has a minute left, else a new
    /// one from the password grant.
    async fn contabo_api(&self, creds: &Credentials) -> Result<Api> {
        let mut cache = self.0.contabo_token.lock().await;
        let token = contabo::token(&self.0.http, creds, self.0.timeout, &mut cache).await?;
        self.api_with(Provider::Contabo, creds, &token)
    }

    /// Checks the credentials with the provider's own identity call and saves them
    /// sealed; a token the provider refuses is not kept.
    pub async fn configure(&self, provider: Provider, creds: Credentials) -> Result<Configured> {
        creds.check(provider, &self.0.insecure)?;
        let api = match provider {
            Provider::Contabo => self.contabo_api(&creds).await?,
            _ => self.api(provider, &creds)?,
        };
        let account = match provider {
            Provider::DigitalOcean => digitalocean::DigitalOcean(api).account().await?,
            Provider::Cloudflare => cloudflare::Cloudflare::new(api, None).verify().await?,
            Provider::Hostinger => hostinger::Hostinger(api).verify().await?,
            Provider::Contabo => {
                contabo::Contabo(api).verify().await?;
                creds.username.clone()
            }
        };
        let plain = serde_json::to_vec(&creds)
            .map_err(|e| ProviderError::Invalid(format!("credentials: {e}")))?;
        let sealed = self
            .0
            .key
            .seal(&context(provider), &plain)
            .map_err(|e| ProviderError::Seal(e.to_string()))?;
        let now = crate::time::now_secs();
        self.0
            .store
            .put_provider(
                provider.as_str(),
                &sealed,
                account.as_deref(),
                creds.api_url.as_deref(),
                now,
            )
            .await?;
        Ok(Configured {
            provider,
            account,
            api_url: creds.api_url,
            updated_at: now,
        })
    }

    pub async fn list(&self) -> Result<Vec<Configured>> {
        let rows: Vec<ProviderRow> = self.0.store.provider_rows().await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Configured {
                    provider: Provider::parse(&r.provider)?,
                    account: r.account,
                    api_url: r.api_url,
                    updated_at: r.updated_at,
                })
            })
            .collect())
    }

    /// Returns whether there were credentials to forget.
    pub async fn remove(&self, provider: Provider) -> Result<bool> {
        Ok(self.0.store.delete_provider(provider.as_str()).await?)
    }

    /// `NotConfigured` unless the provider has credentials.
    pub async fn check_configured(&self, provider: Provider) -> Result<()> {
        match self.0.store.provider_sealed(provider.as_str()).await? {
            Some(_) => Ok(()),
            None => Err(ProviderError::NotConfigured(
                provider.label(),
                provider.as_str(),
            )),
        }
    }

    async fn credentials(&self, provider: Provider) -> Result<Credentials> {
        let sealed = self
            .0
            .store
            .provider_sealed(provider.as_str())
            .await?
            .ok_or(ProviderError::NotConfigured(
                provider.label(),
                provider.as_str(),
            ))?;
        let plain = self
            .0
            .key
            .open(&context(provider), &sealed)
            .map_err(|_| ProviderError::Sealed(provider.label()))?;
        serde_json::from_slice(&plain).map_err(|_| ProviderError::Sealed(provider.label()))
    }

    pub async fn digitalocean(&self) -> Result<digitalocean::DigitalOcean> {
        let creds = self.credentials(Provider::DigitalOcean).await?;
        Ok(digitalocean::DigitalOcean(
            self.api(Provider::DigitalOcean, &creds)?,
        ))
    }

    pub async fn contabo(&self) -> Result<contabo::Contabo> {
        let creds = self.credentials(Provider::Contabo).await?;
        Ok(contabo::Contabo(self.contabo_api(&creds).await?))
    }

    pub async fn hostinger(&self) -> Result<hostinger::Hostinger> {
        let creds = self.credentials(Provider::Hostinger).await?;
        Ok(hostinger::Hostinger(self.api(Provider::Hostinger, &creds)?))
    }

    pub async fn cloudflare(&self) -> Result<cloudflare::Cloudflare> {
        let creds = self.credentials(Provider::Cloudflare).await?;
        let api = self.api(Provider::Cloudflare, &creds)?;
        Ok(cloudflare::Cloudflare::new(api, creds.account_id))
    }
}

/// An optional integer that JSON may also write as `3.0` (JSON Schema's `integer` allows
/// it, and so do the providers).
pub(crate) fn whole<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<i64>, D::Error> {
    use serde::Deserialize;
    // Absent is `None` (serde's default); `null` is refused like any other wrong type.
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // Beyond i64 it saturates; the field's own range check then refuses it by name.
        Some(f) if f.fract() == 0.0 => Ok(Some(f as i64)),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole number"
        ))),
    }
}

/// Checks shared by the clients' request validation.
pub(crate) mod check {
    use super::{ProviderError, Result};

    pub fn invalid(field: &str, why: &str) -> ProviderError {
        ProviderError::Invalid(format!("{field}: {why}"))
    }

    /// A provider's slug (`nyc3`, `s-1vcpu-1gb`, `ubuntu-24-04-x64`).
    pub fn slug(field: &str, v: &str) -> Result<()> {
        if v.is_empty()
            || v.len() > 100
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(invalid(field, "a slug of letters, digits, '-', '_' or '.'"));
        }
        Ok(())
    }

    /// One line of printable text of at most `max` characters.
    pub fn text(field: &str, v: &str, max: usize) -> Result<()> {
        if v.chars().count() > max || v.chars().any(char::is_control) {
            return Err(invalid(
                field,
                &format!("at most {max} characters, no control characters"),
            ));
        }
        Ok(())
    }

    /// A DNS name as a zone or record holds it (`example.com`, `www`, `@`, `*.example`,
    /// `_dmarc`): labels of letters, digits, '-' and '_', at most 253 characters.
    pub fn dns_name(field: &str, v: &str) -> Result<()> {
        if v == "@" {
            return Ok(());
        }
        let v = v.strip_prefix("*.").unwrap_or(v);
        let ok = !v.is_empty()
            && v.len() <= 253
            && v.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            });
        if !ok && v != "*" {
            return Err(invalid(
                field,
                "a DNS name (labels of letters, digits, '-', '_')",
            ));
        }
        Ok(())
    }

    /// A record type among the common ones both DNS providers take.
    pub fn record_type(field: &str, v: &str) -> Result<()> {
        const TYPES: &[&str] = &["A", "AAAA", "CAA", "CNAME", "MX", "NS", "SRV", "TXT"];
        if !TYPES.contains(&v) {
            return Err(invalid(field, &format!("one of {}", TYPES.join(", "))));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_https_or_loopback_http() {
        let none = crate::images::Insecure::default();
        assert!(check_api_url("https://api.example.com/v2", &none).is_ok());
        assert!(check_api_url("http://127.0.0.1:9000/v2", &none).is_ok());
        assert!(check_api_url("http://localhost:9000", &none).is_ok());
        for bad in [
            "http://api.example.com/v2",
            "ftp://127.0.0.1/",
            "https://user:pw@api.example.com",
            "https://api.example.com/?x=1",
            "not a url",
        ] {
            assert!(check_api_url(bad, &none).is_err(), "{bad}");
        }
        let nets = crate::images::Insecure::parse(&["10.213.0.0/16".into()]).expect("nets");
        assert!(check_api_url("http://10.213.4.1:8080/v2", &nets).is_ok());
    }

    #[test]
    fn a_429_waits_as_the_provider_says() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), Duration::from_secs(1));
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Duration::from_secs(7));
        let mut h = HeaderMap::new();
        let reset = crate::time::now_secs() + 30;
        h.insert("ratelimit-reset", HeaderValue::from(reset));
        let wait = retry_after(&h);
        assert!(
            wait >= Duration::from_secs(29) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn provider_messages_are_one_bounded_line() {
        let v = serde_json::json!({ "id": "x", "message": "bad\nthing" });
        assert_eq!(
            message_of(Provider::DigitalOcean, &v).as_deref(),
            Some("bad thing")
        );
        let v = serde_json::json!({ "success": false, "errors": [{ "code": 9109, "message": "Invalid access token" }] });
        assert_eq!(
            message_of(Provider::Cloudflare, &v).as_deref(),
            Some("Invalid access token (9109)")
        );
        let long = "x".repeat(2000);
        let v = serde_json::json!({ "message": long });
        assert_eq!(
            message_of(Provider::DigitalOcean, &v).map(|m| m.len()),
            Some(500)
        );
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, uuid_v4());
    }

    #[test]
    fn dns_names_and_slugs() {
        for ok in [
            "@",
            "www",
            "example.com",
            "*.example.com",
            "_dmarc",
            "a-b_c.d",
        ] {
            assert!(check::dns_name("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "a b", "a;b", "x\ny", &"a".repeat(64)] {
            assert!(check::dns_name("name", bad).is_err(), "{bad}");
        }
        assert!(check::slug("size", "s-1vcpu-1gb").is_ok());
        assert!(check::slug("size", "s 1").is_err());
    }
}
