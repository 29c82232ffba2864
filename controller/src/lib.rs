//! The Mezzanine controller as a library: `prepare` turns validated configuration into
//! application state (data dir, master key, migrated database) and `serve` runs the HTTP
//! API and panel on a listener until the shutdown future resolves. `main` only parses
//! flags and calls these, so tests run many controllers side by side.

pub mod acme;
pub mod api;
pub mod auth;
pub mod changes;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod denials;
pub mod deploy;
pub mod deploy_keys;
pub mod docker_logs;
pub mod gateway;
pub mod image_watch;
pub mod images;
pub mod install;
pub mod metrics;
pub mod net;
pub mod notify;
mod panel;
pub mod pools;
pub mod providers;
pub mod schedule;
pub mod ssh;
pub mod state;
pub mod store;
pub mod time;
pub mod upgrades;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::time::Duration;

pub use config::{Cli, Command, Config, ServeArgs};
pub use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crypto::KeyError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Ca(#[from] gateway::ca::CaError),
    #[error("{0}")]
    Serve(String),
}

impl StartError {
    /// Whether the operator must fix configuration (exit 64) rather than the environment.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Key(crypto::KeyError::Permissive { .. } | crypto::KeyError::Length { .. })
                | StartError::Store(store::StoreError::Unsupported(_))
        )
    }
}

/// Creates the data dir (0700) and master key on first start, opens and migrates the
/// database, and returns the state the server runs on.
pub async fn prepare(config: Config) -> Result<AppState, StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    restrict_data_dir(&config.data_dir)?;
    let create_key = config.master_key_file == config.data_dir.join("master.key");
    let key = crypto::MasterKey::load_or_create(&config.master_key_file, create_key)?;
    let store = store::Store::open(&config.database_url).await?;
    let store = store.identified_as(&controller_id(&config.data_dir)?);
    let gateway = gateway::Gateway::load(&store, &key).await?;
    Ok(AppState::new(config, store, key, gateway))
}

/// This controller's id, made on first start and kept in its data dir: what a process
/// holds in a shared database (agent sessions, runs, rollouts) is recorded under it, so
/// the next process on the same data dir takes it back at start, while another
/// controller waits until the lease runs out.
fn controller_id(dir: &std::path::Path) -> Result<String, StartError> {
    let path = dir.join("controller-id");
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim().len() == 16 && id.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(id.trim().to_owned())
        }
        Ok(_) => tracing::warn!(path = %path.display(), "unreadable controller id replaced"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let id = hex::encode(crypto::random_bytes::<8>()?);
    std::fs::write(&path, format!("{id}\n")).map_err(err)?;
    Ok(id)
}

/// A data dir that already existed keeps the mode it had; one that others may read or
/// enter would expose the database (hashes, sealed secrets, run output), so it is made
/// 0700 with a warning.
fn restrict_data_dir(dir: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        tracing::warn!(
            data_dir = %dir.display(),
            was = format!("{mode:o}"),
            "the data dir was readable by other users; its mode is now 0700"
        );
    }
    Ok(())
}

/// Serves the HTTP API and panel on `http` and the agent gateway on `agents` until
/// `shutdown` resolves; then ends agent sessions, finishes in-flight requests and closes
/// the database.
pub async fn serve(
    http: tokio::net::TcpListener,
    agents: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    use futures_util::FutureExt;
    let agent_port = agents
        .local_addr()
        .map_err(|e| StartError::Serve(e.to_string()))?
        .port();
    state.installs().set_agent_port(agent_port);
    let bound = agents
        .local_addr()
        .map_err(|e| StartError::Serve(e.to_string()))?;
    let peer = state.config().peer_address.clone().unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            format!("127.0.0.1:{}", bound.port())
        } else {
            bound.to_string()
        }
    });
    state.set_gateway_peer(peer.clone());
    // In the controllers table before any agent can attach: servers still marked online
    // by a controller that is gone are released, the others' are left alone.
    cluster::join(&state, &peer).await?;
    // The first thing a shutdown does: end event streams (so the HTTP server's graceful
    // stop is not held by viewers) and tell background work to wind down.
    let closing = state.closing().clone();
    let shutdown = async move {
        shutdown.await;
        closing.cancel();
    }
    .shared();
    let app = api::router(state.clone());
    let janitor = tokio::spawn(purge_sessions(state.clone()));
    let denials = tokio::spawn(api::audit::flush_denials(state.clone()));
    state.deploy_keys().backfill().await;
    crate::deploy::recover(state.deploys()).await;
    // Rollouts this controller's previous process (or a gone controller) was driving.
    state.pools().adopt_orphaned_rollouts(true).await;
    // Events reach the notifiers subscribed to them (each controller delivers its own).
    state
        .tasks()
        .spawn(state.notifier().clone().run(state.closing().clone()));
    // The lease renewal and reaping, and the fleet-wide work of the lead controller.
    state
        .tasks()
        .spawn(cluster::run(state.clone(), start_lead_tasks));
    let web = serve_http(http, app, &state, shutdown.clone());
    // The gateway runs on its own single-threaded runtime: thousands of mostly idle
    // sessions then cost no cross-core wake-ups (see BENCHMARKS.md), and a burst of API
    // work cannot delay heartbeats.
    let agents = agents
        .into_std()
        .map_err(|e| StartError::Serve(format!("agent listener: {e}")))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let gw_state = state.gateway_handles();
    std::thread::Builder::new()
        .name("agent-gateway".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("agent gateway runtime: {e}"))
                .and_then(|rt| {
                    rt.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(agents)
                            .map_err(|e| format!("agent listener: {e}"))?;
                        gateway::serve(listener, gw_state, shutdown).await
                    })
                });
            let _ = done_tx.send(result);
        })
        .map_err(|e| StartError::Serve(format!("agent gateway thread: {e}")))?;
    let grpc = async {
        done_rx
            .await
            .unwrap_or_else(|_| Err("agent gateway thread ended unexpectedly".into()))
    };
    let (web, grpc) = tokio::join!(web, grpc);
    janitor.abort();
    denials.abort();
    // Runs detach from their steps once the agent sessions are gone (the next process
    // resumes them), adoptions and deliveries finish or give up: wait for them, within a
    // bound, so none writes to a closed database.
    state.tasks().close();
    if tokio::time::timeout(SHUTDOWN_DRAIN, state.tasks().wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.tasks().len(),
            "background tasks still running at shutdown were abandoned"
        );
    }
    state.store().close().await;
    web.map_err(|e| StartError::Serve(format!("HTTP server: {e}")))?;
    grpc.map_err(StartError::Serve)
}

/// The fleet-wide background work, run by one controller of those sharing a database
/// (the lead; see `cluster`).
fn start_lead_tasks(state: &AppState) {
    // Pools follow their members' deploys and check their health until shutdown.
    state
        .tasks()
        .spawn(state.pools().clone().run(state.closing().clone()));
    // Scheduled workflows queue their runs.
    state.tasks().spawn(crate::schedule::run(
        state.deploys().clone(),
        state.closing().clone(),
    ));
    // Pulled images are checked against their registries now and then; updates are news.
    if let Some(every) = state.config().image_check_interval {
        state.tasks().spawn(crate::image_watch::run(
            state.clone(),
            every,
            state.closing().clone(),
        ));
    }
    // Pools with HTTPS get and renew their certificates.
    state
        .tasks()
        .spawn(state.acme().clone().run(state.closing().clone()));
}

/// The API's accept loop: connection caps (in all and per address; a connection over a
/// cap is closed at once), an HTTP/1 header-read timeout, TCP_NODELAY, the peer address
/// for handlers (`ConnectInfo`), and on shutdown a graceful close of every connection
/// (event streams have already ended through `closing()`).
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    state: &AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let config = state.config();
    let limits = net::ConnLimits::new(
        net::api_connection_cap(config.max_connections),
        config.max_connections_per_ip,
    );
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.http_header_timeout);
    let connections = tokio_util::task::TaskTracker::new();
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = limits.try_acquire(peer.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, open = limits.open(), "API connection refused: connection cap reached");
            }
            continue;
        };
        // Responses (event streams especially) go out as written: without TCP_NODELAY a
        // small write can wait ~40 ms for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        // hyper's header timeout starts with a request's first bytes, and the HTTP/1-or-2
        // detection before it waits for them with no limit: a connection must send its
        // first 24 bytes (the HTTP/2 preface's length) within the header timeout too.
        let io = TokioIo::new(
            net::Guarded::new(tcp, slot, Some(config.http_header_timeout)).disarm_after(24),
        );
        let app = app.clone();
        let svc = hyper_util::service::TowerToHyperService::new(tower::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                tower::ServiceExt::oneshot(app.clone(), req)
            },
        ));
        let builder = builder.clone();
        let mut close = close_rx.clone();
        connections.spawn(async move {
            let conn = builder.serve_connection_with_upgrades(io, svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = close.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = close_tx.send(true);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "HTTP connections still open at shutdown were abandoned"
        );
    }
    Ok(())
}

/// How long a graceful stop waits for background tasks.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Housekeeping, at start and every ten minutes: expired sessions, idle login-limiter
/// entries, and audit records and webhook delivery ids past their retention (runs are
/// pruned as they end).
async fn purge_sessions(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let now = time::now_secs();
        let store = state.store();
        let config = state.config();
        match store.purge_sessions(now, config.session_idle_secs).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired sessions removed"),
            Err(e) => tracing::warn!(error = %e, "could not purge expired sessions"),
        }
        let before_ms = |keep: Duration| {
            time::now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
        };
        match store.prune_metrics(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "metrics buckets past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "could not prune metrics history"),
        }
        match store.prune_audit(before_ms(config.keep_audit)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "audit records past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "could not prune the audit log"),
        }
        let instant = std::time::Instant::now();
        let limits = state.limits();
        let freed = limits.by_pair.prune(instant)
            + limits.by_user.prune(instant)
            + limits.by_ip.prune(instant);
        if freed > 0 {
            tracing::debug!(freed, "idle login limiter entries dropped");
        }
        match store
            .prune_deliveries(before_ms(config.keep_deliveries) / 1000)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "old webhook delivery ids forgotten"),
            Err(e) => tracing::warn!(error = %e, "could not prune webhook deliveries"),
        }
    }
}
