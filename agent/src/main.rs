//! `mezzanine-agent`: the daemon that runs on each managed server.
//!
//! Enrollment and the controller session arrive with the agent issue; today the binary
//! only identifies itself, so that packaging and the workspace are in place.

use clap::Parser;

/// The Mezzanine agent. It will dial the controller over mutually-authenticated TLS,
/// drive the local Docker engine and run deploy steps.
#[derive(Parser, Debug)]
#[command(name = "mezzanine-agent", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "mezzanine-agent {}: no subcommand is available in this build yet; see --help",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(64);
}
