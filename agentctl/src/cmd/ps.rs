//! `agentctl ps`.

use std::process::ExitCode;

use crate::output::{age, print};
use crate::Cli;

/// Arguments of `ps`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Lists containers.
pub async fn run(cli: &Cli, _: &Args) -> anyhow::Result<ExitCode> {
    let list = cli.connect().await?.list_containers().await?;
    let rows = list
        .iter()
        .map(|c| {
            let state = match (c.state.as_str(), c.exit_code) {
                ("exited", Some(code)) => format!("exited ({code})"),
                (s, _) => s.to_owned(),
            };
            vec![
                c.id.chars().take(12).collect(),
                c.pod.clone(),
                c.name.clone(),
                c.image.clone(),
                state,
                c.restart_count.to_string(),
                age(c.created_at),
            ]
        })
        .collect();
    print(
        cli.output,
        &list,
        &["ID", "POD", "CONTAINER", "IMAGE", "STATE", "RESTARTS", "CREATED"],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}
