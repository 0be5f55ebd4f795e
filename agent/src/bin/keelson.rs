//! The multi-call `keelson` binary: a thin clap front over the agent library, one module per
//! subcommand under `keelson/`.
//!
//! Today it has `run` (one container in its own pod sandbox, see [`keelson_agent::run`]); the
//! cluster subcommands (`controlplane`, `agent`, `up`, `init`, `cni`, `image`) come with later
//! issues.

#[path = "keelson/run.rs"]
mod run;

use clap::{Parser, Subcommand};

/// Keelson: a bare-metal Kubernetes node OS.
#[derive(Debug, Parser)]
#[command(name = "keelson", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one container from an image in its own pod sandbox (no network) and wait for it.
    Run(run::RunArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The only TLS provider the workspace builds (see TOOLCHAIN.md: no aws-lc-rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
