//! `mezzanine-agent`: the daemon on each managed server. It enrolls once with a join
//! token, then keeps a mutually-authenticated gRPC session to the controller.

use clap::{Parser, Subcommand};
use mezzanine_agent::identity::StateDir;
use mezzanine_agent::{now_secs, session};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_STATE_DIR: &str = "/var/lib/mezzanine-agent";

/// The Mezzanine agent: enrolls with a controller and keeps a mutually-authenticated
/// session to it.
#[derive(Parser, Debug)]
#[command(name = "mezzanine-agent", version = mezzanine_agent::version(), about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Enroll this server with a join token (generates the key locally; only a CSR is sent).
    Enroll {
        /// The join token from the controller (MZ1.…). Prefer the environment variable:
        /// arguments are visible to every local user while the process runs.
        #[arg(env = "MEZZANINE_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, env = "MEZZANINE_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Attach to the controller and stay attached (reconnecting as needed).
    Run {
        #[arg(long, env = "MEZZANINE_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Seconds between heartbeats.
        #[arg(long, env = "MEZZANINE_AGENT_HEARTBEAT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        heartbeat_secs: u64,
        /// The Docker engine's socket.
        #[arg(
            long,
            env = "MEZZANINE_AGENT_DOCKER_SOCKET",
            default_value = "/var/run/docker.sock"
        )]
        docker_socket: String,
        /// Seconds a deploy step keeps running without a controller session (e.g. while
        /// the controller restarts) before it is stopped, unless a controller resumes it.
        #[arg(long, env = "MEZZANINE_AGENT_STEP_GRACE_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
        step_grace_secs: u64,
    },
    /// Print identity, controller, certificate expiry and connection state.
    Status {
        #[arg(long, env = "MEZZANINE_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Internal: how the agent starts a deploy step's process (see steps.rs).
    #[command(hide = true)]
    ExecStep {
        /// The agent's pid.
        #[arg(long)]
        parent: i32,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

/// Becomes `command`, set to be killed when the agent that started it dies (a step must
/// not carry on behind a dead agent: a new run could then overlap it).
fn exec_step(parent: i32, command: &[String]) -> ExitCode {
    use rustix::process::{getppid, set_parent_process_death_signal, Signal};
    use std::os::unix::process::CommandExt;
    if let Err(e) = set_parent_process_death_signal(Some(Signal::KILL)) {
        eprintln!("mezzanine-agent: cannot tie the step to the agent: {e}");
        return ExitCode::from(126);
    }
    // The agent died before the signal was armed.
    if getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        return ExitCode::from(126);
    }
    let Some((program, args)) = command.split_first() else {
        return ExitCode::from(126);
    };
    // The environment, working directory, pipes and process group stay as the agent set
    // them; the death signal survives exec.
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("cannot start {program}: {err}");
    ExitCode::from(127)
}

fn init_logging() {
    let spec = std::env::var("MEZZANINE_AGENT_LOG").unwrap_or_else(|_| "info".into());
    let filter: tracing_subscriber::filter::Targets = spec.parse().unwrap_or_else(|_| {
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::INFO)
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only on a terminal, not in agent.log or the journal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}

fn status(state: &StateDir) -> ExitCode {
    let id = match state.load() {
        Ok(id) => id,
        Err(e) => {
            eprintln!("mezzanine-agent: {e}");
            return ExitCode::from(1);
        }
    };
    let left = id.not_after - now_secs();
    println!("server id:    {}", id.server_id);
    println!("identity:     spiffe://mezzanine/server/{}", id.server_id);
    println!("controller:   {}", id.endpoints.join(", "));
    println!(
        "certificate:  expires {} ({})",
        mezzanine_agent::rfc3339(id.not_after),
        if left > 0 {
            format!("in {left} s")
        } else {
            "EXPIRED".into()
        }
    );
    if let Some(reason) = state.removed() {
        println!("connection:   removed: {reason}");
        return ExitCode::SUCCESS;
    }
    let run = state.run_state().unwrap_or_default();
    let field = |k: &str| {
        run.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("")
            .to_owned()
    };
    let pid = field("pid");
    let alive = !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists();
    if alive {
        println!(
            "connection:   {} since unix {} ({}) [pid {pid}]",
            field("state"),
            field("since"),
            field("detail")
        );
    } else {
        println!("connection:   agent not running");
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Before anything else: this process is about to become a step's shell.
    let command = match cli.command {
        Cmd::ExecStep { parent, command } => return exec_step(parent, &command),
        other => other,
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mezzanine-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Cmd::Enroll { token, state_dir } => {
            let state = StateDir::new(&state_dir);
            match runtime.block_on(session::enroll(&state, &token)) {
                Ok(id) => {
                    println!(
                        "enrolled as server {} with {}; certificate valid until {}",
                        id.server_id,
                        id.endpoints.join(", "),
                        mezzanine_agent::rfc3339(id.not_after)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mezzanine-agent: enrollment failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run {
            state_dir,
            heartbeat_secs,
            docker_socket,
            step_grace_secs,
        } => {
            let state = StateDir::new(&state_dir);
            let run = session::run(
                &state,
                Duration::from_secs(heartbeat_secs),
                &docker_socket,
                Duration::from_secs(step_grace_secs),
            );
            let result = runtime.block_on(async {
                tokio::select! {
                    r = run => Some(r),
                    () = terminate() => None,
                }
            });
            match result {
                None => {
                    state.set_run_state("stopped", "terminated by signal");
                    ExitCode::SUCCESS
                }
                Some(Ok(session::Stopped::Removed(reason))) => {
                    eprintln!("mezzanine-agent: {reason}; stopping and not reconnecting (re-enroll to come back)");
                    ExitCode::from(session::EXIT_REMOVED)
                }
                Some(Ok(session::Stopped::Upgraded(version))) => {
                    // Detached, the new process carries on; under systemd the unit
                    // restarts on the new binary, now in this one's place.
                    eprintln!("mezzanine-agent: version {version} attached and replaced this binary; exiting");
                    ExitCode::SUCCESS
                }
                Some(Err(e)) => {
                    eprintln!("mezzanine-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { state_dir } => status(&StateDir::new(&state_dir)),
        Cmd::ExecStep { parent, command } => exec_step(parent, &command),
    }
}

async fn terminate() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
