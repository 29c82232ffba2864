//! Image update checks: compare the repo digest a server has for an image with the digest
//! its registry now serves for the tag, over the registry HTTP API (Docker Registry v2 /
//! OCI distribution): anonymous, HTTP basic, or the bearer-token exchange that Docker Hub
//! and GHCR use. Results are cached per (registry, repository, tag), so a fleet running
//! one image makes one request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Where Docker Hub's API lives.
const HUB_API: &str = "registry-1.docker.io";
const HUB: &str = mezzanine_proto::image::HUB;
/// Manifest media types we accept, so the registry answers with the digest of what a pull
/// of the tag resolves to (an index when there is one).
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.manifest.v1+json";
const MAX_MANIFEST: usize = 4 * 1024 * 1024;

/// What an update check looks up: `registry/repository:tag` (a reference without a tag
/// checks `latest`, as a pull of it would).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io` for Docker Hub, else `host[:port]`.
    pub registry: String,
    /// With `library/` for official Hub images.
    pub repository: String,
    pub tag: String,
}

/// Parses a reference with the parser the agent pulls with.
pub fn parse_reference(reference: &str) -> Result<ImageRef, String> {
    let r = mezzanine_proto::image::parse(reference)?;
    Ok(ImageRef {
        tag: r.tag_or_latest().to_owned(),
        registry: r.registry,
        repository: r.repository,
    })
}

use mezzanine_proto::image::split_registry;

/// The digests an image has in `registry/repository`, from its `RepoDigests`
/// (`name@sha256:…`).
pub fn local_digests(repo_digests: &[String], image: &ImageRef) -> Vec<String> {
    repo_digests
        .iter()
        .filter_map(|d| {
            let (name, digest) = d.split_once('@')?;
            let (registry, repository) = split_registry(name);
            (registry == image.registry && repository == image.repository)
                .then(|| digest.to_owned())
        })
        .collect()
}

/// One check's outcome: the registry's digest for the tag, or why there is none.
#[derive(Debug, Clone)]
pub struct Checked {
    pub digest: Result<String, String>,
    pub checked_at: i64,
}

/// `host[:port]` patterns and networks where plain HTTP is allowed (as Docker's
/// `--insecure-registry`). Loopback always is.
#[derive(Debug, Clone, Default)]
pub struct Insecure {
    hosts: Vec<String>,
    nets: Vec<crate::net::Network>,
}

impl Insecure {
    pub fn parse(values: &[String]) -> Result<Insecure, String> {
        let mut out = Insecure::default();
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            if v.contains('/') {
                let net = crate::net::Network::parse(v)
                    .map_err(|e| format!("--insecure-registry {e}"))?;
                out.nets.push(net);
            } else {
                out.hosts.push(v.to_ascii_lowercase());
            }
        }
        Ok(out)
    }

    pub fn allows(&self, registry: &str) -> bool {
        let registry = registry.to_ascii_lowercase();
        if self.hosts.contains(&registry) {
            return true;
        }
        let host = host_of(&registry);
        if host == "localhost" {
            return true;
        }
        let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() else {
            return false;
        };
        ip.is_loopback() || self.nets.iter().any(|n| n.contains(ip))
    }
}

fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.split(']').next().map_or(registry, |h| &h[1..]);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Registries update checks may reach at private addresses (loopback, RFC 1918,
/// link-local, CGNAT, unique-local): named hosts or networks (`--private-registry`). Any
/// other registry whose address is private is refused, so a check cannot be pointed at
/// the controller's own services or its LAN.
#[derive(Debug, Clone, Default)]
pub struct Private {
    hosts: Vec<String>,
    nets: Vec<crate::net::Network>,
}

impl Private {
    pub fn parse(values: &[String]) -> Result<Private, String> {
        let mut out = Private::default();
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            if v.contains('/') || v.parse::<IpAddr>().is_ok() {
                let net =
                    crate::net::Network::parse(v).map_err(|e| format!("--private-registry {e}"))?;
                out.nets.push(net);
            } else {
                // A name, with or without a port: addresses are checked per host.
                out.hosts.push(host_of(&v.to_ascii_lowercase()).to_owned());
            }
        }
        Ok(out)
    }

    /// Whether `host` may be reached at `ip`.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        !is_private(ip)
            || self
                .hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host.trim_matches(['[', ']'])))
            || self.nets.iter().any(|n| n.contains(ip))
    }

    /// Refuses a URL whose host is a private address literal that is not allowed (names
    /// are checked as they resolve, by `Guard`).
    fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let host = url.host_str().unwrap_or_default();
        let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() else {
            return Ok(());
        };
        if self.allows(host, ip) {
            Ok(())
        } else {
            Err(private_refusal(host, ip))
        }
    }
}

fn private_refusal(host: &str, ip: IpAddr) -> String {
    format!(
        "{host} is at a private address ({ip}); update checks reach private addresses only for registries named with --private-registry"
    )
}

/// Loopback, private, link-local, CGNAT, unique-local, unspecified, multicast and
/// broadcast addresses: not on the public internet.
pub fn is_private(ip: IpAddr) -> bool {
    match crate::net::canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The update checker's resolver: a name's private addresses are dropped unless the
/// registry is allowed them; a name with nothing left is an error naming the flag.
#[derive(Debug, Clone)]
struct Guard(std::sync::Arc<Private>);

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let private = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let refused = found
                .iter()
                .find(|a| !private.allows(&host, a.ip()))
                .copied();
            let allowed: Vec<std::net::SocketAddr> = found
                .into_iter()
                .filter(|a| private.allows(&host, a.ip()))
                .collect();
            if allowed.is_empty() {
                if let Some(a) = refused {
                    return Err(private_refusal(&host, a.ip()).into());
                }
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Credentials for one registry.
#[derive(Clone)]
pub struct Credential {
    pub username: String,
    pub secret: String,
}

/// The credential stored for `registry` (`PUT /api/registries/…`), opened.
pub async fn registry_credential(
    store: &crate::store::Store,
    key: &crate::crypto::MasterKey,
    registry: &str,
) -> Result<Option<Credential>, String> {
    let Some((username, sealed)) = store
        .registry_secret(registry)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let secret = key
        .open(&format!("registries:{registry}"), &sealed)
        .map_err(|_| format!("registry credential for {registry} does not open"))?;
    Ok(Some(Credential {
        username,
        secret: String::from_utf8_lossy(&secret).into_owned(),
    }))
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct UpdateChecker {
    http: reqwest::Client,
    insecure: Insecure,
    private: std::sync::Arc<Private>,
    cache: Mutex<HashMap<ImageRef, Checked>>,
    /// Background checks under way, so repeated listings do not pile them up.
    inflight: Mutex<std::collections::HashSet<ImageRef>>,
    /// Registry requests at once: a listing of many images must not open a connection per
    /// image all together.
    slots: tokio::sync::Semaphore,
}

/// Whether a registry API request may follow a redirect from `from` to `to`: same host and
/// port, no downgrade from https, and still under `/v2/`.
pub fn redirect_allowed(from: &reqwest::Url, to: &reqwest::Url) -> bool {
    let downgrade = from.scheme() == "https" && to.scheme() != "https";
    let scheme_ok = matches!(to.scheme(), "http" | "https") && !downgrade;
    scheme_ok
        && from.host_str() == to.host_str()
        && from.port_or_known_default() == to.port_or_known_default()
        && to.path().starts_with("/v2/")
}

/// Registry checks in flight at once, for the whole controller.
const CONCURRENT_CHECKS: usize = 8;
/// References whose result is kept; past it the oldest results are dropped.
const CACHE_ENTRIES: usize = 4096;

/// How an image's update status is checked: the reference (its first tag that has a
/// registry digest in the same repository, else its first tag) and the local digests
/// to compare with, or why it cannot be checked.
pub fn plan(
    repo_tags: &[String],
    repo_digests: &[String],
) -> Result<(ImageRef, Vec<String>), String> {
    if repo_tags.is_empty() {
        return Err("untagged image: nothing to compare with a registry".into());
    }
    let parsed: Vec<(ImageRef, Vec<String>)> = repo_tags
        .iter()
        .filter_map(|t| parse_reference(t).ok())
        .map(|r| {
            let local = local_digests(repo_digests, &r);
            (r, local)
        })
        .collect();
    parsed
        .iter()
        .find(|(_, local)| !local.is_empty())
        .or(parsed.first())
        .cloned()
        .ok_or_else(|| "its tags are not references a registry can answer for".into())
}

impl UpdateChecker {
    pub fn new(
        insecure: Insecure,
        private: Private,
        timeout: Duration,
    ) -> Result<UpdateChecker, String> {
        let private = std::sync::Arc::new(private);
        let http = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(Guard(private.clone())))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("mezzanine/", env!("CARGO_PKG_VERSION")))
            // Answers come back to viewers (a digest, a status): a redirect must not turn
            // a check into a probe of some other host or path.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let from = attempt.previous().last().cloned();
                match from {
                    Some(from)
                        if attempt.previous().len() < 4
                            && redirect_allowed(&from, attempt.url()) =>
                    {
                        attempt.follow()
                    }
                    _ => attempt.error("the registry redirected off its own /v2/ API"),
                }
            }))
            .build()
            .map_err(|e| format!("cannot build the registry HTTP client: {e}"))?;
        Ok(UpdateChecker {
            http,
            insecure,
            private,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::default(),
            slots: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
        })
    }

    /// The references among `plans` that need a registry request now: pulled images not
    /// yet checked (or all of them, with `force`), each once.
    pub fn to_check<'a>(
        &self,
        plans: impl Iterator<Item = &'a (ImageRef, Vec<String>)>,
        force: bool,
    ) -> Vec<ImageRef> {
        let mut wanted: Vec<ImageRef> = plans
            .filter(|(r, local)| !local.is_empty() && (force || self.cached(r).is_none()))
            .map(|(r, _)| r.clone())
            .collect();
        wanted.sort_by(|a, b| {
            (&a.registry, &a.repository, &a.tag).cmp(&(&b.registry, &b.repository, &b.tag))
        });
        wanted.dedup();
        wanted
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<ImageRef, Checked>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cached(&self, image: &ImageRef) -> Option<Checked> {
        self.cache().get(image).cloned()
    }

    /// Claims a background check of `image`; false when one is already under way.
    pub fn start(&self, image: &ImageRef) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.clone())
    }

    pub fn finish(&self, image: &ImageRef) {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(image);
    }

    /// Asks the registry now (at most `CONCURRENT_CHECKS` at once) and caches the answer.
    pub async fn check(&self, image: &ImageRef, credential: Option<Credential>) -> Checked {
        let digest = match self.slots.acquire().await {
            Ok(_permit) => self.remote_digest(image, credential.as_ref()).await,
            Err(_) => Err("image update checks are shutting down".into()),
        };
        let checked = Checked {
            digest,
            checked_at: crate::time::now_secs(),
        };
        let mut cache = self.cache();
        if cache.len() >= CACHE_ENTRIES && !cache.contains_key(image) {
            // Drop the oldest half: a re-check costs one request.
            let mut ages: Vec<i64> = cache.values().map(|c| c.checked_at).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            cache.retain(|_, c| c.checked_at > cutoff);
        }
        cache.insert(image.clone(), checked.clone());
        checked
    }

    async fn remote_digest(
        &self,
        image: &ImageRef,
        credential: Option<&Credential>,
    ) -> Result<String, String> {
        let api = if image.registry == HUB {
            HUB_API
        } else {
            image.registry.as_str()
        };
        let insecure = self.insecure.allows(&image.registry);
        let schemes: &[&str] = if insecure {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut last = String::new();
        for (i, scheme) in schemes.iter().enumerate() {
            let url = format!(
                "{scheme}://{api}/v2/{}/manifests/{}",
                image.repository, image.tag
            );
            if let Ok(parsed) = reqwest::Url::parse(&url) {
                self.private.check_url(&parsed)?;
            }
            match self
                .manifest_digest(&url, image, credential, insecure)
                .await
            {
                Err(Fetch::Connect(e)) if i + 1 < schemes.len() => last = e,
                Err(Fetch::Connect(e) | Fetch::Failed(e)) => return Err(e),
                Ok(d) => return Ok(d),
            }
        }
        Err(last)
    }

    async fn manifest_digest(
        &self,
        url: &str,
        image: &ImageRef,
        credential: Option<&Credential>,
        insecure: bool,
    ) -> Result<String, Fetch> {
        let mut auth: Option<String> = None;
        for attempt in 0..2 {
            let mut req = self.http.head(url).header(reqwest::header::ACCEPT, ACCEPT);
            if let Some(a) = &auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|e| {
                let text = format!("cannot reach registry {}: {}", image.registry, chain(&e));
                if e.is_connect() || e.is_request() {
                    Fetch::Connect(text)
                } else {
                    Fetch::Failed(text)
                }
            })?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                auth = Some(
                    self.authorize(&challenge, image, credential, insecure)
                        .await
                        .map_err(Fetch::Failed)?,
                );
                continue;
            }
            return match status.as_u16() {
                200 => match header_digest(&resp) {
                    Some(d) => Ok(d),
                    None => self.digest_by_get(url, auth.as_deref(), image).await,
                },
                401 | 403 => Err(Fetch::Failed(format!(
                    "registry {} refused access to {} ({status}); check the credentials (PUT /api/registries/{})",
                    image.registry, image.repository, image.registry
                ))),
                404 => Err(Fetch::Failed(format!(
                    "registry {} has no {}:{}",
                    image.registry, image.repository, image.tag
                ))),
                _ => Err(Fetch::Failed(format!(
                    "registry {} answered {status} for {}:{}",
                    image.registry, image.repository, image.tag
                ))),
            };
        }
        Err(Fetch::Failed(format!(
            "registry {} kept asking for authentication",
            image.registry
        )))
    }

    /// Registries that do not send `Docker-Content-Digest` on HEAD: hash the manifest.
    async fn digest_by_get(
        &self,
        url: &str,
        auth: Option<&str>,
        image: &ImageRef,
    ) -> Result<String, Fetch> {
        let mut req = self.http.get(url).header(reqwest::header::ACCEPT, ACCEPT);
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let failed = |e: reqwest::Error| {
            Fetch::Failed(format!("registry {}: {}", image.registry, chain(&e)))
        };
        let resp = req.send().await.map_err(failed)?;
        if !resp.status().is_success() {
            return Err(Fetch::Failed(format!(
                "registry {} answered {} for the manifest",
                image.registry,
                resp.status()
            )));
        }
        if let Some(d) = header_digest(&resp) {
            return Ok(d);
        }
        let body = resp.bytes().await.map_err(failed)?;
        if body.len() > MAX_MANIFEST {
            return Err(Fetch::Failed("the manifest is implausibly large".into()));
        }
        Ok(format!(
            "sha256:{}",
            hex::encode(crate::crypto::sha256(&body))
        ))
    }

    /// The `Authorization` value answering a `WWW-Authenticate` challenge.
    async fn authorize(
        &self,
        challenge: &str,
        image: &ImageRef,
        credential: Option<&Credential>,
        insecure: bool,
    ) -> Result<String, String> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let c = credential.ok_or_else(|| {
                    format!(
                        "registry {} needs a username and password; add them with PUT /api/registries/{}",
                        image.registry, image.registry
                    )
                })?;
                Ok(basic(c))
            }
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    format!(
                        "registry {} sent a bearer challenge without a realm",
                        image.registry
                    )
                })?;
                let realm_url = reqwest::Url::parse(realm).map_err(|_| {
                    format!("registry {} sent an unusable token realm", image.registry)
                })?;
                // A registry reached over HTTPS may only send us to an HTTPS token service.
                if realm_url.scheme() != "https" && !(insecure && realm_url.scheme() == "http") {
                    return Err(format!(
                        "registry {} sent a token realm that is not HTTPS",
                        image.registry
                    ));
                }
                self.private.check_url(&realm_url)?;
                let scope = format!("repository:{}:pull", image.repository);
                let mut req = self.http.get(realm_url).query(&[("scope", scope.as_str())]);
                if let Some(service) = params.get("service") {
                    req = req.query(&[("service", service.as_str())]);
                }
                if let Some(c) = credential {
                    req = req.header(reqwest::header::AUTHORIZATION, basic(c));
                }
                let resp = req.send().await.map_err(|e| {
                    format!(
                        "cannot get a token for registry {}: {}",
                        image.registry,
                        chain(&e)
                    )
                })?;
                if !resp.status().is_success() {
                    return Err(format!(
                        "the token service of registry {} answered {}{}",
                        image.registry,
                        resp.status(),
                        if credential.is_none() {
                            format!("; if the repository is private, add credentials with PUT /api/registries/{}", image.registry)
                        } else {
                            String::new()
                        }
                    ));
                }
                let body: serde_json::Value = resp.json().await.map_err(|e| {
                    format!(
                        "the token service of registry {} sent no JSON: {e}",
                        image.registry
                    )
                })?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "the token service of registry {} sent no token",
                            image.registry
                        )
                    })?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(format!(
                "registry {} asked for an unsupported authentication scheme",
                image.registry
            )),
        }
    }
}

enum Fetch {
    /// No connection (try the next scheme).
    Connect(String),
    Failed(String),
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

fn basic(c: &Credential) -> String {
    use base64::Engine;
    let raw = format!("{}:{}", c.username, c.secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn header_digest(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.starts_with("sha256:") && d.len() == 71)
        .map(str::to_owned)
}

/// `Bearer realm="…",service="…",scope="a:b:pull,push"` → ("Bearer", {realm, service, scope}).
pub fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_owned(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_known() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["192.0.2.1", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_private(ip.parse().expect("ip")), "{ip}");
        }
    }

    /// A registry at a private address is refused without a request (a literal address)
    /// or at resolution (a name), unless it is named with `--private-registry`; then the
    /// check goes ahead (and here finds nothing listening).
    #[tokio::test]
    async fn private_registries_are_refused_unless_named() {
        let image = |registry: &str| ImageRef {
            registry: registry.to_owned(),
            repository: "app".into(),
            tag: "1".into(),
        };
        let refused = UpdateChecker::new(
            Insecure::default(),
            Private::default(),
            Duration::from_secs(5),
        )
        .expect("checker");
        for registry in ["127.0.0.1:9", "localhost:9", "[::1]:9", "169.254.169.254"] {
            let e = refused
                .check(&image(registry), None)
                .await
                .digest
                .expect_err("refused");
            assert!(e.contains("--private-registry"), "{registry}: {e}");
        }
        let allowed = UpdateChecker::new(
            Insecure::default(),
            Private::parse(&["127.0.0.0/8".into(), "localhost".into()]).expect("flags"),
            Duration::from_secs(5),
        )
        .expect("checker");
        for registry in ["127.0.0.1:9", "localhost:9"] {
            let e = allowed
                .check(&image(registry), None)
                .await
                .digest
                .expect_err("nothing listens on port 9");
            assert!(!e.contains("--private-registry"), "{registry}: {e}");
        }
    }

    #[test]
    fn references_normalize_as_docker_does() {
        let r = parse_reference("nginx").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("docker.io", "library/nginx", "latest")
        );
        let r = parse_reference("ghcr.io/acme/api:1.2.3").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("ghcr.io", "acme/api", "1.2.3")
        );
        let r = parse_reference("10.0.0.1:5000/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("10.0.0.1:5000", "app", "latest")
        );
        let r = parse_reference(
            "localhost/app:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!((r.registry.as_str(), r.tag.as_str()), ("localhost", "v1"));
        assert!(parse_reference("Upper/Case").is_err());
        assert!(parse_reference("a/../b").is_err());
        assert!(parse_reference("app:-x").is_err());
    }

    #[test]
    fn an_image_is_checked_by_its_first_tag_with_a_registry_digest() {
        let d = |s: &str| vec![s.to_owned()];
        let tags = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        // (tags, repo digests) → the reference checked, or the reason there is none.
        type Case = (Vec<String>, Vec<String>, Result<&'static str, &'static str>);
        let cases: Vec<Case> = vec![
            (
                tags(&["app:1", "ghcr.io/a/app:1"]),
                d("ghcr.io/a/app@sha256:x"),
                Ok("ghcr.io a/app 1"),
            ),
            (tags(&["app:1"]), vec![], Ok("docker.io library/app 1")),
            (vec![], d("app@sha256:x"), Err("untagged")),
            (tags(&["Not A Reference"]), vec![], Err("not references")),
        ];
        for (t, digests, want) in cases {
            let got = plan(&t, &digests)
                .map(|(r, _)| format!("{} {} {}", r.registry, r.repository, r.tag));
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(w), "{t:?}"),
                Err(w) => assert!(got.as_ref().is_err_and(|e| e.contains(w)), "{t:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn redirects_stay_on_the_registry_api() {
        let u = |s: &str| reqwest::Url::parse(s).expect("url");
        let from = u("https://reg.example:5000/v2/app/manifests/1");
        for (to, ok) in [
            ("https://reg.example:5000/v2/app/manifests/sha256:x", true),
            ("https://reg.example:5000/admin", false),
            ("http://reg.example:5000/v2/app/manifests/1", false),
            ("https://169.254.169.254:5000/v2/x", false),
            ("https://reg.example/v2/app/manifests/1", false),
            ("file:///etc/passwd", false),
        ] {
            assert_eq!(redirect_allowed(&from, &u(to)), ok, "{to}");
        }
        // An insecure registry may be upgraded to https, not the other way.
        let plain = u("http://10.0.0.5:5000/v2/app/manifests/1");
        assert!(redirect_allowed(
            &plain,
            &u("https://10.0.0.5:5000/v2/app/manifests/1")
        ));
    }

    #[test]
    fn local_digests_match_the_normalized_repository() {
        let image = parse_reference("nginx:1.25").unwrap();
        let digests = vec![
            "nginx@sha256:aaa".to_owned(),
            "docker.io/library/nginx@sha256:bbb".to_owned(),
            "ghcr.io/x/nginx@sha256:ccc".to_owned(),
        ];
        assert_eq!(
            local_digests(&digests, &image),
            vec!["sha256:aaa", "sha256:bbb"]
        );
    }

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull,push");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (scheme.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
    }

    #[test]
    fn insecure_registries_by_host_and_network() {
        let i = Insecure::parse(&["reg.local:5000".into(), "10.213.0.0/16".into()]).unwrap();
        assert!(i.allows("reg.local:5000"));
        assert!(!i.allows("reg.local:5001"));
        assert!(i.allows("10.213.7.1:5000"));
        assert!(!i.allows("10.214.0.1:5000"));
        assert!(i.allows("127.0.0.1:5000"));
        assert!(i.allows("localhost:5000"));
        assert!(!i.allows("ghcr.io"));
        assert!(Insecure::parse(&["10.0.0.0/40".into()]).is_err());
    }
}
