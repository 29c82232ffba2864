//! The shared application state handed to every handler: configuration, the store, the
//! master key, the password hasher and the login limiters.

use crate::auth::limiter::{Limiter, Policy};
use crate::auth::password::Hasher;
use crate::config::Config;
use crate::crypto::MasterKey;
use crate::deploy::Deploys;
use crate::deploy_keys::DeployKeys;
use crate::gateway::Gateway;
use crate::install::Installs;
use crate::ssh::Adoptions;
use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

#[derive(Debug)]
pub struct Limits {
    /// One username from one address: the lockout a user with typos meets.
    pub by_pair: Limiter,
    /// One username from everywhere: distributed guessing of one account.
    pub by_user: Limiter,
    /// One address, every username: spraying.
    pub by_ip: Limiter,
}

#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    store: Store,
    key: Arc<MasterKey>,
    hasher: Hasher,
    limits: Limits,
    setup_done: AtomicBool,
    gateway: Arc<Gateway>,
    installs: Installs,
    adoptions: Adoptions,
    deploy_keys: DeployKeys,
    pools: crate::pools::Pools,
    providers: crate::providers::Providers,
    acme: crate::acme::Acme,
    metrics: Arc<crate::metrics::Metrics>,
    notifier: crate::notify::Notifier,
    updates: Result<crate::images::UpdateChecker, String>,
    deploys: Deploys,
    upgrades: crate::upgrades::Upgrades,
    tasks: TaskTracker,
    closing: tokio_util::sync::CancellationToken,
    denials: crate::denials::Denials,
    /// host:port where the other controllers reach this one's gateway (set by `serve`).
    peer: std::sync::OnceLock<String>,
    /// The controllers renewing their lease, as of the last renewal here.
    living: std::sync::RwLock<Arc<std::collections::HashSet<String>>>,
}

/// The handles the HTTP layer works with. Domain services (the deploy engine, adoptions,
/// installs, deploy keys, the gateway) each hold only the handles they need and never
/// this; it only composes them for handlers.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(config: Config, store: Store, key: MasterKey, gateway: Gateway) -> Self {
        // Failures counted over 15 minutes; a lockout doubles from `first` up to 15 minutes.
        let limiter = |max_failures, first| {
            Limiter::new(
                Policy {
                    max_failures,
                    window: Duration::from_secs(15 * 60),
                    base_lockout: Duration::from_secs(first),
                    max_lockout: Duration::from_secs(15 * 60),
                },
                100_000,
            )
        };
        let limits = Limits {
            by_pair: limiter(5, 30),
            by_user: limiter(50, 30),
            by_ip: limiter(30, 60),
        };
        let hasher = Hasher::new(config.hash_concurrency);
        let updates = crate::images::UpdateChecker::new(
            config.insecure_registries.clone(),
            config.private_registries.clone(),
            Duration::from_secs(10),
        );
        if let Err(e) = &updates {
            tracing::error!(error = %e, "image update checks are unavailable");
        }
        let config = Arc::new(config);
        let gateway = Arc::new(gateway);
        let key = Arc::new(key);
        let tasks = TaskTracker::new();
        let agents = gateway.fleet.clone();
        let deploys = Deploys::new(
            store.clone(),
            key.clone(),
            tasks.clone(),
            crate::deploy::Settings {
                output_cap: config.run_output_cap_bytes,
                keep_runs: config.keep_runs,
            },
            agents.clone() as Arc<dyn crate::deploy::agents::Agents>,
        );
        let installs = Installs::new(config.clone(), store.clone(), gateway.ca.pin_hex());
        let adoptions = Adoptions::new(
            store.clone(),
            key.clone(),
            config.clone(),
            installs.clone(),
            agents.clone(),
            tasks.clone(),
        );
        let pools = crate::pools::Pools::new(
            store.clone(),
            key.clone(),
            agents.clone(),
            deploys.clone(),
            tasks.clone(),
        );
        let providers = crate::providers::Providers::new(
            store.clone(),
            key.clone(),
            config.provider_timeout,
            config.insecure_registries.clone(),
        );
        let notifier = crate::notify::Notifier::new(store.clone(), key.clone());
        let acme = crate::acme::Acme::new(
            store.clone(),
            key.clone(),
            pools.clone(),
            providers.clone(),
            notifier.clone(),
            tasks.clone(),
            &config,
        );
        let upgrades = crate::upgrades::Upgrades::new(
            store.clone(),
            agents.clone(),
            installs.clone(),
            tasks.clone(),
        );
        let deploy_keys = DeployKeys::new(store.clone(), key.clone(), agents, tasks.clone());
        AppState(Arc::new(Inner {
            config,
            store,
            key,
            hasher,
            limits,
            setup_done: AtomicBool::new(false),
            gateway,
            installs,
            adoptions,
            deploy_keys,
            pools,
            providers,
            acme,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            notifier,
            updates,
            deploys,
            upgrades,
            tasks,
            closing: tokio_util::sync::CancellationToken::new(),
            denials: Default::default(),
            peer: std::sync::OnceLock::new(),
            living: Default::default(),
        }))
    }

    /// What the agent gateway is given.
    pub fn gateway_handles(&self) -> crate::gateway::Handles {
        crate::gateway::Handles {
            store: self.0.store.clone(),
            config: self.0.config.clone(),
            gateway: self.0.gateway.clone(),
            deploys: self.0.deploys.clone(),
            deploy_keys: self.0.deploy_keys.clone(),
        }
    }

    /// Records where the other controllers reach this one's gateway.
    pub fn set_gateway_peer(&self, peer: String) {
        let _ = self.0.peer.set(peer);
    }

    /// host:port where the other controllers reach this one's gateway.
    pub fn gateway_peer(&self) -> String {
        self.0.peer.get().cloned().unwrap_or_default()
    }

    /// The controllers renewing their lease (refreshed by `cluster` every renewal).
    pub fn living_controllers(&self) -> Arc<std::collections::HashSet<String>> {
        self.0
            .living
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_living_controllers(&self, ids: std::collections::HashSet<String>) {
        *self.0.living.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ids);
    }

    /// Anonymous denials counted for the audit log (see `denials`).
    pub fn denials(&self) -> &crate::denials::Denials {
        &self.0.denials
    }

    pub fn upgrades(&self) -> &crate::upgrades::Upgrades {
        &self.0.upgrades
    }

    pub fn installs(&self) -> &Installs {
        &self.0.installs
    }

    pub fn adoptions(&self) -> &Adoptions {
        &self.0.adoptions
    }

    pub fn deploy_keys(&self) -> &DeployKeys {
        &self.0.deploy_keys
    }

    pub fn pools(&self) -> &crate::pools::Pools {
        &self.0.pools
    }

    pub fn providers(&self) -> &crate::providers::Providers {
        &self.0.providers
    }

    pub fn acme(&self) -> &crate::acme::Acme {
        &self.0.acme
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.0.metrics
    }

    pub fn notifier(&self) -> &crate::notify::Notifier {
        &self.0.notifier
    }

    /// Background work (run drivers, adoptions, deliveries): `serve` waits for it, with
    /// a deadline, before it closes the database.
    pub fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }

    /// Cancelled when the controller begins to shut down: long-lived responses (event
    /// streams) end on it so a graceful stop does not wait for their clients.
    pub fn closing(&self) -> &tokio_util::sync::CancellationToken {
        &self.0.closing
    }

    pub fn deploys(&self) -> &Deploys {
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
    pub fn gateway(&self) -> &Gateway {
        &self.0.gateway
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
