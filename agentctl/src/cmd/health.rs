//! `agentctl health`.

use std::process::ExitCode;

use crate::output::print;
use crate::Cli;

/// Arguments of `health`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints each check; fails when one does.
pub async fn run(cli: &Cli, _: &Args) -> anyhow::Result<ExitCode> {
    let r = cli.connect().await?.health().await?;
    let rows = r
        .checks
        .iter()
        .map(|c| vec![c.name.clone(), if c.ok { "ok" } else { "FAIL" }.into(), c.message.clone()])
        .collect();
    print(cli.output, &r, &["CHECK", "STATUS", "MESSAGE"], rows)?;
    Ok(if r.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
