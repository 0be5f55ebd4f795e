//! `agentctl version`.

use std::process::ExitCode;

use crate::output::print;
use crate::Cli;

/// Arguments of `version`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this agentctl's version, without asking the agent.
    #[arg(long)]
    pub client: bool,
}

/// Prints this agentctl's and the agent's versions.
pub async fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let mut rows = vec![vec![
        "agentctl".into(),
        env!("CARGO_PKG_VERSION").into(),
        keelson_agentctl::API_VERSION.into(),
        format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    ]];
    let server = if a.client { None } else { Some(cli.connect().await?.version().await?) };
    if let Some(v) = &server {
        rows.push(vec![
            "agent".into(),
            v.version.clone(),
            v.api.clone(),
            format!("{}/{}", v.os, v.arch),
        ]);
    }
    print(cli.output, &server, &["COMPONENT", "VERSION", "API", "PLATFORM"], rows)?;
    Ok(ExitCode::SUCCESS)
}
