//! The Mezzanine controller as a library: `prepare` turns validated configuration into
//! application state (data dir, master key, migrated database) and `serve` runs the HTTP
//! API and panel on a listener until the shutdown future resolves. `main` only parses
//! flags and calls these, so tests run many controllers side by side.

pub mod api;
pub mod auth;
pub mod config;
pub mod crypto;
mod panel;
pub mod state;
pub mod store;
pub mod time;

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
    let create_key = config.master_key_file == config.data_dir.join("master.key");
    let key = crypto::MasterKey::load_or_create(&config.master_key_file, create_key)?;
    let store = store::Store::open(&config.database_url).await?;
    Ok(AppState::new(config, store, key))
}

/// Serves until `shutdown` resolves, then finishes in-flight requests and closes the
/// database.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(state.clone());
    let janitor = tokio::spawn(purge_sessions(state.clone()));
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    janitor.abort();
    state.store().close().await;
    result
}

/// Deletes expired sessions every ten minutes.
async fn purge_sessions(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let now = time::now_secs();
        match state
            .store()
            .purge_sessions(now, state.config().session_idle_secs)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired sessions removed"),
            Err(e) => tracing::warn!(error = %e, "could not purge expired sessions"),
        }
    }
}
