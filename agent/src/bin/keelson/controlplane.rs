//! `keelson controlplane --data-dir DIR [--listen ADDR:PORT] [--advertise-address IP]
//! [--compaction-interval DURATION]`: the
//! Kubernetes API server (see [`keelson_controlplane::server`]). Writes `DIR/admin.kubeconfig`
//! and keeps its CA and credentials in `DIR/pki`, so a restart on the same DIR keeps them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use keelson_controlplane::server::{bind, Config};

/// Arguments of `keelson controlplane`.
#[derive(Debug, clap::Args)]
pub struct ControlplaneArgs {
    /// Where the control plane keeps its credentials (and, later, its store).
    #[arg(long)]
    data_dir: PathBuf,
    /// The address to serve on (TLS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The address clients and nodes should use, when not the listen address.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// How much store history to keep (older revisions are compacted away; watches from them
    /// get 410 Gone), as upstream's --etcd-compaction-interval: `300`, `90s`, `5m`, `1h`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    compaction_interval: Duration,
}

/// A duration in whole seconds, minutes or hours: `90`, `90s`, `5m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("invalid duration {s:?} (use s, m or h)")),
    };
    if secs == 0 {
        return Err("the compaction interval must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Runs the API server until SIGINT or SIGTERM; returns the exit code.
pub fn main(args: ControlplaneArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("keelson controlplane: {e:#}");
            1
        }
    }
}

fn run(args: ControlplaneArgs) -> Result<()> {
    let config = Config {
        data_dir: args.data_dir,
        listen: args.listen,
        advertise: args.advertise_address,
        compaction_interval: args.compaction_interval,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(async {
        let listener = bind(&config).await?;
        let addr = listener.local_addr().context("listen address")?;
        eprintln!(
            "keelson controlplane: serving on https://{addr}, admin kubeconfig {}",
            listener.kubeconfig().display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        listener
            .serve(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_interval_accepts_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
