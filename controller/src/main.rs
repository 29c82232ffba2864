//! The `mezzanine` binary: parse flags, set up logging, and hand over to the library.

use clap::Parser;
use mezzanine::{Cli, Command};
use std::process::ExitCode;

/// sysexits' EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

fn init_logging() {
    let spec = std::env::var("MEZZANINE_LOG").unwrap_or_else(|_| "info".into());
    let filter: tracing_subscriber::filter::Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("MEZZANINE_LOG={spec:?} is not a valid filter ({e}); using \"info\"");
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::INFO)
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let json = std::env::var("MEZZANINE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only on a terminal, not in files or the journal.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init();
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a SIGTERM right after the ready line (before `serve`
/// polls it) must stop the controller gracefully, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(int, "SIGINT") => {},
            () = wait(term, "SIGTERM") => {},
        }
        tracing::info!("shutting down: finishing in-flight requests");
    }
}

/// `mezzanine migrate-db --from sqlite://… --to postgres://…`: prints what it copied.
fn migrate_db(args: &mezzanine::config::MigrateDbArgs) -> ExitCode {
    use mezzanine::store::Engine;
    if Engine::of(&args.from) != Some(Engine::Sqlite) {
        eprintln!(
            "mezzanine: --from {}: expected sqlite://PATH",
            mezzanine::config::redact_url(&args.from)
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if Engine::of(&args.to) != Some(Engine::Postgres) {
        eprintln!(
            "mezzanine: --to {}: expected postgres://USER@HOST[:PORT]/DATABASE",
            mezzanine::config::redact_url(&args.to)
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    // The source must exist: opening would otherwise create an empty one and copy nothing.
    let path = args
        .from
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if !std::path::Path::new(path).is_file() {
        eprintln!("mezzanine: --from: no SQLite database at {path}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let from = format!("sqlite://{path}?mode=rw");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mezzanine: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mezzanine::store::copy_database(&from, &args.to)) {
        Ok(copied) => {
            let total: i64 = copied.iter().map(|(_, n)| n).sum();
            for (table, n) in &copied {
                println!("{table:<24} {n:>10}");
            }
            println!(
                "copied {total} rows into {}",
                mezzanine::config::redact_url(&args.to)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mezzanine: migrate-db: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging();
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::MigrateDb(m) => return migrate_db(&m),
    };
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mezzanine: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mezzanine: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut config = config;
        let listen = config.listen;
        let agent_listen = config.agent_listen;
        // Bound before anything else, so a defaulted public URL can name the real port.
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mezzanine: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let agents = match tokio::net::TcpListener::bind(agent_listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mezzanine: cannot listen for agents on {agent_listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Every connection costs a descriptor: take what the system allows (systemd's
        // LimitNOFILE, or the shell's hard limit) rather than the 1024 soft default.
        let fds = mezzanine::net::raise_fd_limit();
        if let Ok(bound) = listener.local_addr() {
            config.listening_on(bound);
        }
        let public_url = config.public_url.clone();
        let hint = open_hint(&config, listener.local_addr().ok());
        let state = match mezzanine::prepare(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mezzanine: {e}");
                return ExitCode::from(if e.is_config() { EXIT_CONFIG } else { 1 });
            }
        };
        let shutdown = shutdown_signal();
        let local = listener.local_addr().map_or(listen, |a| a);
        let agent_local = agents.local_addr().map_or(agent_listen, |a| a);
        let mut metrics_local = None;
        if let Some(addr) = state.config().metrics_listen {
            let l = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("mezzanine: cannot listen for metrics on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            metrics_local = l.local_addr().ok();
            let app = mezzanine::api::metrics_router(state.clone());
            let closing = state.closing().clone();
            tokio::spawn(async move {
                let served = axum::serve(l, app)
                    .with_graceful_shutdown(async move { closing.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let metrics_listen = metrics_local.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %local, agent_listen = %agent_local, metrics_listen = %metrics_listen, url = %public_url, open_files_limit = fds, "Mezzanine is ready: {hint}");
        match mezzanine::serve(listener, agents, state, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mezzanine: server error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// What the ready line tells the user to open. A wildcard listen address (`0.0.0.0`,
/// `::`) is not something a browser can open: name the local URL and say that any
/// address of this machine works (install commands then name whichever the panel was
/// opened by). A loopback public URL is said to be reachable from this machine only.
fn open_hint(config: &mezzanine::config::Config, bound: Option<std::net::SocketAddr>) -> String {
    let url = &config.public_url;
    match bound {
        Some(b) if !config.public_url_given && b.ip().is_unspecified() => format!(
            "open http://<an address of this machine>:{port} (listening on every address; http://localhost:{port} from this machine). Servers are told to reach the controller by the address the panel was opened with; set --public-url to fix one",
            port = b.port()
        ),
        Some(b) if !config.public_url_given && b.ip().is_loopback() => format!(
            "open {url} (from this machine only: to manage other servers, listen on an address they can reach, e.g. --listen 0.0.0.0:{}, or set --public-url)",
            b.port()
        ),
        _ => format!("open {url}"),
    }
}
