//! `agentctl pods`.

use std::process::ExitCode;

use crate::output::{age, print};
use crate::Cli;

/// Arguments of `pods`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Lists pods, then manifest errors on stderr.
pub async fn run(cli: &Cli, _: &Args) -> anyhow::Result<ExitCode> {
    let r = cli.connect().await?.list_pods().await?;
    let rows = r
        .pods
        .iter()
        .map(|p| {
            vec![
                p.namespace.clone(),
                p.name.clone(),
                format!("{}/{}", p.ready_containers, p.total_containers),
                p.phase.clone(),
                p.restarts.to_string(),
                if p.host_network { "host".into() } else { p.pod_ips.join(",") },
                age(p.start_time),
            ]
        })
        .collect();
    print(
        cli.output,
        &r,
        &["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP", "AGE"],
        rows,
    )?;
    if cli.output == crate::Format::Table {
        for e in &r.manifest_errors {
            eprintln!("manifest {}: {}", e.path, e.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}
