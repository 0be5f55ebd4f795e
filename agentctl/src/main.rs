//! `agentctl`: the command line of the Keelson node API, a thin front over the
//! `keelson_agentctl` library (one module per subcommand under `cmd/`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use keelson_agentctl::{AgentctlConfig, Client, Context, DEFAULT_CONFIG, DEFAULT_SOCKET};

mod cmd;
mod output;

/// Talk to a Keelson node's agent.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, about, propagate_version = true)]
pub struct Cli {
    /// The agentctl config (default: $AGENTCTL_CONFIG, then /var/lib/keelson/agentctl.yaml
    /// if readable, else the local socket).
    #[arg(long, global = true, env = "AGENTCTL_CONFIG")]
    config: Option<PathBuf>,
    /// The context of the config to use (default: its current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Endpoints to use instead of the context's (`unix:PATH` or `host:port`).
    #[arg(short, long, global = true, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List pods (and manifests that could not be used).
    Pods(cmd::pods::Args),
    /// List containers.
    Ps(cmd::ps::Args),
    /// Show a pod as JSON (or YAML).
    Inspect(cmd::inspect::Args),
    /// Print a container's log.
    Logs(cmd::logs::Args),
    /// Run a command in a container.
    Exec(cmd::exec::Args),
    /// Manage the node's images.
    Images(cmd::images::Args),
    /// Show the pod network.
    Net(cmd::net::Args),
    /// Show the agent's health.
    Health(cmd::health::Args),
    /// Show the agent's version.
    Version(cmd::version::Args),
    /// Print shell completions.
    Completion(cmd::completion::Args),
}

impl Cli {
    /// The context to connect with, from the flags, the environment and the defaults.
    fn context(&self) -> anyhow::Result<Context> {
        let path = self.config.clone().or_else(|| {
            let p = PathBuf::from(DEFAULT_CONFIG);
            std::fs::File::open(&p).is_ok().then_some(p)
        });
        let mut ctx = match &path {
            Some(p) => AgentctlConfig::load(p)?.context(self.context.as_deref())?.clone(),
            None => Context::unix(DEFAULT_SOCKET.as_ref()),
        };
        if !self.endpoints.is_empty() {
            ctx.endpoints = self.endpoints.clone();
        }
        Ok(ctx)
    }

    /// Connects.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.context()?).await?)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Pods(a) => cmd::pods::run(&cli, a).await,
        Command::Ps(a) => cmd::ps::run(&cli, a).await,
        Command::Inspect(a) => cmd::inspect::run(&cli, a).await,
        Command::Logs(a) => cmd::logs::run(&cli, a).await,
        Command::Exec(a) => cmd::exec::run(&cli, a).await,
        Command::Images(a) => cmd::images::run(&cli, a).await,
        Command::Net(a) => cmd::net::run(&cli, a).await,
        Command::Health(a) => cmd::health::run(&cli, a).await,
        Command::Version(a) => cmd::version::run(&cli, a).await,
        Command::Completion(a) => cmd::completion::run(&mut Cli::command(), a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_command_after_a_double_dash() {
        let cli = Cli::try_parse_from([
            "agentctl", "exec", "-it", "web", "-c", "app", "--", "sh", "-c", "exit 3",
        ])
        .expect("parses");
        let Command::Exec(a) = cli.command else { panic!("not exec") };
        assert_eq!(a.command, ["sh", "-c", "exit 3"]);
        assert!(a.interactive && a.tty);
        assert_eq!(a.container.as_deref(), Some("app"));
    }
}
