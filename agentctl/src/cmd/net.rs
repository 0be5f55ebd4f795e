//! `agentctl net`.

use std::process::ExitCode;

use crate::output::{print, table};
use crate::Cli;

/// Arguments of `net`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the bridge, the ranges, the routes pods get and the allocations.
pub async fn run(cli: &Cli, _: &Args) -> anyhow::Result<ExitCode> {
    let r = cli.connect().await?.net_status().await?;
    if cli.output != crate::Format::Table {
        print(cli.output, &r, &[], Vec::new())?;
        return Ok(ExitCode::SUCCESS);
    }
    if !r.configured {
        println!("the agent runs without a pod network");
        return Ok(ExitCode::SUCCESS);
    }
    let present = if r.bridge_present { "present" } else { "absent" };
    let mtu = if r.mtu == 0 { "auto".to_owned() } else { r.mtu.to_string() };
    println!("network {}: bridge {} ({present}), mtu {mtu}\n", r.name, r.bridge);
    let rows: Vec<_> = r
        .ranges
        .iter()
        .map(|x| {
            vec![x.subnet.clone(), x.gateway.clone(), if x.exhausted { "yes" } else { "no" }.into()]
        })
        .collect();
    print!("{}", table(&["SUBNET", "GATEWAY", "EXHAUSTED"], &rows));
    let rows: Vec<_> = r
        .routes
        .iter()
        .map(|x| {
            vec![
                x.destination.clone(),
                if x.via.is_empty() { "-".into() } else { x.via.clone() },
                x.device.clone(),
            ]
        })
        .collect();
    print!("\n{}", table(&["ROUTE", "VIA", "DEVICE"], &rows));
    let rows: Vec<_> = r
        .allocations
        .iter()
        .map(|x| vec![x.ip.clone(), x.pod.clone(), x.sandbox_id.clone(), x.ifname.clone()])
        .collect();
    print!("\n{}", table(&["IP", "POD", "SANDBOX", "IFNAME"], &rows));
    Ok(ExitCode::SUCCESS)
}
