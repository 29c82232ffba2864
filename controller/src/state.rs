//! The shared application state handed to every handler: configuration, the store, the
//! master key, the password hasher and the login limiters.

use crate::auth::limiter::{Limiter, Policy};
use crate::auth::password::Hasher;
use crate::config::Config;
use crate::crypto::MasterKey;
use crate::gateway::Gateway;
use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug)]
pub struct Limits {
    pub by_user: Limiter,
    pub by_ip: Limiter,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    store: Store,
    key: MasterKey,
    hasher: Hasher,
    limits: Limits,
    setup_done: AtomicBool,
    gateway: Arc<Gateway>,
    agent_endpoint: OnceLock<String>,
    agent_digest: crate::install::AgentDigest,
    adopting: std::sync::Mutex<std::collections::HashSet<i64>>,
    updates: Result<crate::images::UpdateChecker, String>,
    deploys: crate::deploy::Deploys,
    tasks: tokio_util::task::TaskTracker,
    closing: tokio_util::sync::CancellationToken,
}

#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(config: Config, store: Store, key: MasterKey, gateway: Gateway) -> Self {
        let limits = Limits {
            by_user: Limiter::new(
                Policy {
                    max_failures: 5,
                    window: Duration::from_secs(15 * 60),
                    base_lockout: Duration::from_secs(30),
                    max_lockout: Duration::from_secs(15 * 60),
                },
                100_000,
            ),
            by_ip: Limiter::new(
                Policy {
                    max_failures: 30,
                    window: Duration::from_secs(15 * 60),
                    base_lockout: Duration::from_secs(60),
                    max_lockout: Duration::from_secs(15 * 60),
                },
                100_000,
            ),
        };
        let hasher = Hasher::new(config.hash_concurrency);
        let updates = crate::images::UpdateChecker::new(
            config.insecure_registries.clone(),
            Duration::from_secs(10),
        );
        if let Err(e) = &updates {
            tracing::error!(error = %e, "image update checks are unavailable");
        }
        let gateway = Arc::new(gateway);
        let deploys = crate::deploy::Deploys::new(gateway.registry.clone());
        AppState(Arc::new(Inner {
            config,
            store,
            key,
            hasher,
            limits,
            setup_done: AtomicBool::new(false),
            gateway,
            agent_endpoint: OnceLock::new(),
            agent_digest: Default::default(),
            adopting: Default::default(),
            updates,
            deploys,
            tasks: tokio_util::task::TaskTracker::new(),
            closing: tokio_util::sync::CancellationToken::new(),
        }))
    }

    /// Background work (run drivers, adoptions, deliveries): `serve` waits for it, with
    /// a deadline, before it closes the database.
    pub fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.0.tasks
    }

    /// Cancelled when the controller begins to shut down: long-lived responses (event
    /// streams) end on it so a graceful stop does not wait for their clients.
    pub fn closing(&self) -> &tokio_util::sync::CancellationToken {
        &self.0.closing
    }

    pub fn deploys(&self) -> &crate::deploy::Deploys {
        &self.0.deploys
    }

    /// The image update checker (absent only if its HTTP client could not be built).
    pub fn updates(&self) -> Result<&crate::images::UpdateChecker, &str> {
        self.0.updates.as_ref().map_err(String::as_str)
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }
    pub fn store(&self) -> &Store {
        &self.0.store
    }
    pub fn key(&self) -> &MasterKey {
        &self.0.key
    }
    pub fn hasher(&self) -> &Hasher {
        &self.0.hasher
    }
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }
    /// Claims the right to run an SSH bootstrap for `id`; false if one is running.
    pub fn try_start_adoption(&self, id: i64) -> bool {
        self.0
            .adopting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    pub fn adoptions_done(&self, id: i64) {
        self.0
            .adopting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn agent_digest(&self) -> &crate::install::AgentDigest {
        &self.0.agent_digest
    }
    pub fn gateway(&self) -> &Gateway {
        &self.0.gateway
    }

    /// Host agents dial (and the gateway certificate names).
    pub fn agent_endpoint_host(&self) -> &str {
        &self.0.config.agent_endpoint_host
    }

    /// Fixes the endpoint once the agent listener is bound.
    pub(crate) fn set_agent_port(&self, bound: u16) {
        let port = self.0.config.agent_endpoint_port.unwrap_or(bound);
        let host = &self.0.config.agent_endpoint_host;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let _ = self.0.agent_endpoint.set(format!("https://{host}:{port}"));
    }

    /// `https://host:port` agents dial.
    pub fn agent_endpoint(&self) -> &str {
        self.0.agent_endpoint.get().map_or("", String::as_str)
    }

    /// True once any user exists. Users never drop back to zero (the last admin cannot
    /// be deleted), so the answer is cached once true.
    pub async fn setup_done(&self) -> Result<bool, crate::store::StoreError> {
        if self.0.setup_done.load(Ordering::Acquire) {
            return Ok(true);
        }
        let done = self.store().user_count().await? > 0;
        if done {
            self.mark_setup_done();
        }
        Ok(done)
    }

    pub fn mark_setup_done(&self) {
        self.0.setup_done.store(true, Ordering::Release);
    }
}
