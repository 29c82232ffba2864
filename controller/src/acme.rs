//! Certificates for pools' domains from an ACME CA (RFC 8555, through `instant-acme`),
//! issued and renewed without a person: HTTP-01 answered by the edge's nginx (the agent
//! writes the token file), or DNS-01 through the domain's DNS provider. A certificate is
//! recorded only once the edge serves it, so an expiring certificate is never replaced by
//! one the edge refused; failures are recorded with the CA's words and retried with
//! backoff.

use crate::crypto::MasterKey;
use crate::pools::Pools;
use crate::providers::Providers;
use crate::store::{CertificateRow, Issued, Store};
use axum::body::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The sealing context of a pool's certificate key.
pub fn key_context(pool_id: i64) -> String {
    format!("certificates.key:{pool_id}")
}

fn account_context(directory: &str) -> String {
    format!("acme.account:{directory}")
}

/// How often due certificates are looked for (a forced renewal wakes the loop at once).
const TICK: Duration = Duration::from_secs(10);
/// The longest wait between attempts after failures.
const MAX_BACKOFF_S: i64 = 6 * 3600;

/// instant-acme's HTTP over our reqwest client: its TLS trusts the system roots plus
/// `--acme-ca-file`, and every request is bounded.
struct Http(reqwest::Client);

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(e))
}

impl HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            let resp = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(boxed)?;
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let bytes = resp.bytes().await.map_err(boxed)?;
            let (parts, ()) = out.body(()).map_err(boxed)?.into_parts();
            Ok(BytesResponse {
                parts,
                body: Box::new(bytes),
            })
        })
    }
}

struct Inner {
    store: Store,
    key: Arc<MasterKey>,
    pools: Pools,
    providers: Providers,
    notifier: crate::notify::Notifier,
    http: reqwest::Client,
    directory: String,
    email: Option<String>,
    /// How long a DNS-01 record is given to propagate before the CA looks.
    dns_wait: Duration,
    account: tokio::sync::Mutex<Option<Account>>,
    /// Issuances run here, so a shutdown waits for them (a certificate is not left half
    /// recorded).
    tasks: tokio_util::task::TaskTracker,
    /// Pools with an issuance in flight.
    busy: Mutex<HashSet<i64>>,
    wake: tokio::sync::Notify,
}

/// The certificate service.
#[derive(Clone)]
pub struct Acme(Arc<Inner>);

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.0.directory)
            .finish_non_exhaustive()
    }
}

/// When a certificate should be renewed: at two thirds of its lifetime.
pub fn renew_at(c: &CertificateRow) -> Option<i64> {
    let (from, to) = (c.not_before?, c.not_after?);
    Some(from + (to - from) * 2 / 3)
}

/// Whether a pool's certificate needs an attempt now.
fn due(c: Option<&CertificateRow>, now: i64) -> bool {
    let Some(c) = c else {
        return true;
    };
    if c.next_attempt_at.is_some_and(|t| t > now) {
        return false;
    }
    if c.chain_pem.is_none() || c.next_attempt_at.is_some() {
        return true;
    }
    renew_at(c).is_none_or(|t| now >= t)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Acme {
    pub fn new(
        store: Store,
        key: Arc<MasterKey>,
        pools: Pools,
        providers: Providers,
        notifier: crate::notify::Notifier,
        tasks: tokio_util::task::TaskTracker,
        config: &crate::config::Config,
    ) -> Acme {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mezzanine/", env!("CARGO_PKG_VERSION")));
        // The file was read and parsed when the configuration was checked.
        if let Some(pem) = &config.acme_ca_pem {
            for c in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the ACME HTTP client falls back to defaults");
            reqwest::Client::new()
        });
        Acme(Arc::new(Inner {
            store,
            key,
            pools,
            providers,
            notifier,
            http,
            directory: config.acme_directory_url.clone(),
            email: config.acme_email.clone(),
            dns_wait: config.acme_dns_wait,
            account: tokio::sync::Mutex::new(None),
            tasks,
            busy: Mutex::new(HashSet::new()),
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// Looks for due certificates now (TLS just turned on, or a forced renewal).
    pub fn nudge(&self) {
        self.0.wake.notify_one();
    }

    /// Makes the pool's next check try at once, whatever its certificate's age.
    pub async fn renew_now(&self, pool_id: i64) -> crate::store::Result<()> {
        self.0.store.certificate_force(pool_id).await?;
        self.nudge();
        Ok(())
    }

    /// The service's loop: every `TICK` (or when nudged), start an issuance for each pool
    /// with TLS on whose certificate is due.
    pub async fn run(self, closing: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = closing.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
                () = self.0.wake.notified() => {}
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "certificate check failed");
            }
        }
    }

    async fn round(&self) -> crate::store::Result<()> {
        let now = crate::time::now_secs();
        for p in self.0.store.pool_rows().await? {
            let s = &p.settings;
            if !s.tls_enabled || s.domain_id.is_none() || s.edge_server_id.is_none() {
                continue;
            }
            let cert = self.0.store.certificate(p.id).await?;
            if !due(cert.as_ref(), now) || !lock(&self.0.busy).insert(p.id) {
                continue;
            }
            let me = self.clone();
            self.0.tasks.spawn(async move {
                let outcome = me.issue(p.id).await;
                if let Err(e) = &outcome {
                    tracing::warn!(pool = p.id, error = %e, "certificate not issued");
                    let failures =
                        me.0.store
                            .certificate(p.id)
                            .await
                            .ok()
                            .flatten()
                            .map_or(0, |c| c.failures);
                    let now = crate::time::now_secs();
                    let wait = (60_i64 << failures.clamp(0, 12)).min(MAX_BACKOFF_S);
                    if let Err(se) =
                        me.0.store
                            .certificate_failed(p.id, e, now, now + wait)
                            .await
                    {
                        tracing::error!(pool = p.id, error = %se, "cannot record a failed certificate attempt");
                    }
                    // A certificate held and not renewed is worth a message; a first
                    // issuance still failing shows in the pool.
                    if cert.as_ref().is_some_and(|c| c.chain_pem.is_some()) {
                        me.0.notifier
                            .emit(
                                "certificate.renewal_failed",
                                &format!("certificate:{}:{now}", p.id),
                                serde_json::json!({ "pool_id": p.id, "pool": p.settings.name, "error": e }),
                            )
                            .await;
                    }
                }
                lock(&me.0.busy).remove(&p.id);
            });
        }
        Ok(())
    }

    async fn account(&self) -> Result<Account, String> {
        let mut held = self.0.account.lock().await;
        if let Some(a) = held.as_ref() {
            return Ok(a.clone());
        }
        let ctx = account_context(&self.0.directory);
        let http = || Box::new(Http(self.0.http.clone()));
        let account = match self
            .0
            .store
            .acme_account(&self.0.directory)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(sealed) => {
                let plain = self.0.key.open(&ctx, &sealed).map_err(|_| {
                    "the ACME account does not open with this master key".to_owned()
                })?;
                let creds: AccountCredentials = serde_json::from_slice(&plain)
                    .map_err(|e| format!("the stored ACME account: {e}"))?;
                Account::builder_with_http(http())
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("the ACME directory {}: {e}", self.0.directory))?
            }
            None => {
                let contact = self.0.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = Account::builder_with_http(http())
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.0.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("creating an account at {}: {e}", self.0.directory))?;
                let plain = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
                let sealed = self.0.key.seal(&ctx, &plain).map_err(|e| e.to_string())?;
                self.0
                    .store
                    .put_acme_account(&self.0.directory, &sealed, crate::time::now_secs())
                    .await
                    .map_err(|e| e.to_string())?;
                account
            }
        };
        *held = Some(account.clone());
        Ok(account)
    }

    /// Issues (or renews) the pool's certificate: order, challenges, finalize, then the
    /// edge serves it, and only then is it recorded.
    async fn issue(&self, pool_id: i64) -> Result<(), String> {
        let pool = self.0.pools.get(pool_id).await.map_err(|e| e.to_string())?;
        let s = &pool.settings;
        let domain_id = s.domain_id.ok_or("the pool has no domain")?;
        let domain = self
            .0
            .store
            .domain(domain_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the pool's domain is gone")?;
        let name = domain.name.clone();
        let dns01 = s.tls_challenge == "dns-01";
        if name.starts_with("*.") && !dns01 {
            return Err(format!(
                "{name} is a wildcard: it needs the dns-01 challenge"
            ));
        }
        let account = self.account().await?;
        let ids = [Identifier::Dns(name.clone())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("the CA refused the order: {e}"))?;
        // What to clean up afterwards: challenge files on the edge, or TXT records.
        let mut tokens = Vec::new();
        let mut txts = Vec::new();
        let result = async {
            let mut auths = order.authorizations();
            while let Some(a) = auths.next().await {
                let mut a = a.map_err(|e| format!("reading an authorization: {e}"))?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("the authorization for {name} is {other:?}")),
                }
                let kind = if dns01 {
                    ChallengeType::Dns01
                } else {
                    ChallengeType::Http01
                };
                let mut ch = a
                    .challenge(kind.clone())
                    .ok_or_else(|| format!("the CA offers no {kind:?} challenge for {name}"))?;
                let ka = ch.key_authorization();
                if dns01 {
                    let value = ka.dns_value();
                    self.0
                        .providers
                        .put_acme_txt(&self.0.store, domain_id, &value)
                        .await
                        .map_err(|e| format!("writing the _acme-challenge TXT record: {e}"))?;
                    txts.push(value);
                    // The CA asks the zone's nameservers, which learn the record later.
                    tokio::time::sleep(self.0.dns_wait).await;
                } else {
                    self.0
                        .pools
                        .acme_challenge(pool_id, &ch.token, ka.as_str(), false)
                        .await
                        .map_err(|e| format!("placing the challenge on the edge: {e}"))?;
                    tokens.push(ch.token.clone());
                }
                ch.set_ready()
                    .await
                    .map_err(|e| format!("the CA refused the challenge: {e}"))?;
            }
            let retry = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(Duration::from_secs(90));
            let status = order
                .poll_ready(&retry)
                .await
                .map_err(|e| format!("waiting for the CA to validate {name}: {e}"))?;
            if status != OrderStatus::Ready {
                let why = order
                    .state()
                    .error
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| format!("the order is {status:?}"));
                return Err(format!("the CA did not validate {name}: {why}"));
            }
            let key_pem = order
                .finalize()
                .await
                .map_err(|e| format!("finalizing the order: {e}"))?;
            let chain = order
                .poll_certificate(&retry)
                .await
                .map_err(|e| format!("downloading the certificate: {e}"))?;
            Ok((chain, key_pem))
        }
        .await;
        for token in &tokens {
            if let Err(e) = self.0.pools.acme_challenge(pool_id, token, "", true).await {
                tracing::warn!(pool = pool_id, error = %e, "cannot remove a challenge file");
            }
        }
        for value in &txts {
            if let Err(e) = self
                .0
                .providers
                .remove_acme_txt(&self.0.store, domain_id, value)
                .await
            {
                tracing::warn!(pool = pool_id, error = %e, "cannot remove the _acme-challenge TXT record");
            }
        }
        let (chain, key_pem) = result?;
        let facts = facts(&chain)?;
        // The edge serves it first; a refusal keeps the old certificate everywhere.
        self.0
            .pools
            .apply_tls(pool_id, &chain, &key_pem)
            .await
            .map_err(|e| format!("the edge did not take the new certificate: {e}"))?;
        let sealed = self
            .0
            .key
            .seal(&key_context(pool_id), key_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        self.0
            .store
            .put_certificate(
                pool_id,
                &Issued {
                    names: &[name],
                    chain_pem: &chain,
                    key_sealed: &sealed,
                    issuer: &facts.issuer,
                    not_before: facts.not_before,
                    not_after: facts.not_after,
                },
                crate::time::now_secs(),
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            pool = pool_id,
            not_after = facts.not_after,
            "certificate issued"
        );
        Ok(())
    }
}

struct Facts {
    issuer: String,
    not_before: i64,
    not_after: i64,
}

/// The leaf's issuer and validity, from the first certificate of the chain.
fn facts(chain: &str) -> Result<Facts, String> {
    let der = x509_parser::pem::parse_x509_pem(chain.as_bytes())
        .map_err(|e| format!("the certificate is not PEM: {e}"))?
        .1;
    let cert = der
        .parse_x509()
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let v = cert.validity();
    Ok(Facts {
        issuer: cert.issuer().to_string(),
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_renew_at_two_thirds_and_back_off_after_failures() {
        assert!(due(None, 100));
        let fresh = CertificateRow {
            chain_pem: Some("x".into()),
            not_before: Some(0),
            not_after: Some(90),
            ..Default::default()
        };
        assert_eq!(renew_at(&fresh), Some(60));
        assert!(!due(Some(&fresh), 59));
        assert!(due(Some(&fresh), 60));
        let waiting = CertificateRow {
            next_attempt_at: Some(200),
            ..fresh.clone()
        };
        assert!(!due(Some(&waiting), 199));
        assert!(due(Some(&waiting), 200));
    }

    #[test]
    fn facts_come_from_the_leaf() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["app.example.com".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1);
        let cert = params.self_signed(&key).expect("cert");
        let f = facts(&cert.pem()).expect("facts");
        assert_eq!(f.not_before, 1_767_225_600);
        assert_eq!(f.not_after, 1_775_001_600);
        assert!(facts("nope").is_err());
    }
}
