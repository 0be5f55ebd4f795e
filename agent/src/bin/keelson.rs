//! The multi-call `keelson` binary: a thin clap front over the agent library, one module per
//! subcommand under `keelson/`.
//!
//! Today it has `run` (one container in its own pod sandbox, see [`keelson_agent::run`]),
//! `agent` (a standalone node running static pods, see [`keelson_agent::standalone`]) and
//! `cni` (the CNI plugin, see [`keelson_cni::plugin`]) and `controlplane` (the API server, see
//! [`keelson_controlplane::server`]); the other cluster subcommands (`up`, `init`, `image`) come
//! with later issues.

#[path = "keelson/agent.rs"]
mod agent;
#[path = "keelson/cni.rs"]
mod cni;
#[path = "keelson/controlplane.rs"]
mod controlplane;
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
    /// Run the static pods of a manifest directory (a standalone node).
    Agent(Box<agent::AgentArgs>),
    /// The CNI plugin (spec 1.0 and 1.1): reads CNI_COMMAND and the CNI_* environment, the
    /// network configuration on stdin, and writes the result on stdout.
    Cni,
    /// The Kubernetes API server.
    Controlplane(controlplane::ControlplaneArgs),
}

fn main() {
    init_tracing();
    // The CNI plugin first: runtimes start it once per pod and command, so it skips the rest
    // of the front (TLS provider, the whole command-line parser). Called as `keelson cni`, or
    // through a symlink named after the plugin type, as runtimes call plugins.
    let mut args = std::env::args_os();
    let invoked_as = args.next().map(std::path::PathBuf::from);
    let first = args.next();
    let as_plugin = match (&first, args.next()) {
        (Some(a), None) => a == "cni",
        (None, _) => {
            invoked_as.as_deref().and_then(|p| p.file_name()).is_some_and(|n| n == "keelson")
                && std::env::var_os("CNI_COMMAND").is_some()
        }
        _ => false,
    };
    if as_plugin {
        std::process::exit(cni::main());
    }
    // The only TLS provider the workspace builds (see TOOLCHAIN.md: no aws-lc-rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Agent(args) => agent::main(*args),
        Command::Cni => cni::main(),
        Command::Controlplane(args) => controlplane::main(args),
    };
    std::process::exit(code);
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
