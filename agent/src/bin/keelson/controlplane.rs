//! `keelson controlplane --data-dir DIR [--listen ADDR:PORT] [--advertise-address IP]
//! [--store embedded|etcd:URL,…] [--service-cidr CIDR] [--service-node-port-range A-B]
//! [--compaction-interval DURATION] [--encryption-key-file FILE]
//! [--audit-log-path FILE]`: the Kubernetes API server (see
//! [`keelson_controlplane::server`]). Writes `DIR/admin.kubeconfig` and keeps its CA and
//! credentials in `DIR/pki` and (embedded store) its objects in `DIR/store.redb`, so a restart
//! on the same DIR keeps them.
//!
//! `keelson controlplane snapshot save FILE --data-dir DIR` and `… snapshot restore FILE
//! --data-dir DIR` copy the embedded store out and back (see
//! [`keelson_controlplane::snapshot`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use keelson_controlplane::admission::ServiceNetwork;
use keelson_controlplane::server::{bind, Config, StoreChoice};

/// Arguments of `keelson controlplane`.
#[derive(Debug, clap::Args)]
pub struct ControlplaneArgs {
    /// Where the control plane keeps its credentials and its embedded store.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// A maintenance command instead of serving.
    #[command(subcommand)]
    command: Option<Command>,
    /// The address to serve on (TLS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The address clients and nodes should use, when not the listen address.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// The store: `embedded` (in the data dir) or `etcd:URL[,URL…]`.
    #[arg(long, default_value = "embedded")]
    store: StoreChoice,
    /// The audit log (JSON lines, `audit.k8s.io/v1` Events at the Metadata level; default
    /// `DIR/audit.log`).
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// The key file Secrets are encrypted at rest with (`name:base64-key` lines, the first
    /// encrypts; default `DIR/pki/secrets-encryption.key`, created on first start).
    #[arg(long)]
    encryption_key_file: Option<PathBuf>,
    /// Services' ClusterIPs come from this CIDR; its first address is the `kubernetes`
    /// Service's.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::IpNet,
    /// Services' node ports come from this range.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: std::ops::RangeInclusive<u16>,
    /// How much store history to keep (older revisions are compacted away; watches from them
    /// get 410 Gone), as upstream's --etcd-compaction-interval: `300`, `90s`, `5m`, `1h`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    compaction_interval: Duration,
}

/// Maintenance commands.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Save or restore the embedded store.
    #[command(subcommand)]
    Snapshot(Snapshot),
}

#[derive(Debug, clap::Subcommand)]
enum Snapshot {
    /// Write a consistent copy of the store to FILE (from the running server, or from the
    /// data dir when none runs).
    Save {
        /// The snapshot file to create.
        file: PathBuf,
    },
    /// Replace the stopped server's store with FILE (the current one is kept beside it).
    Restore {
        /// The snapshot file.
        file: PathBuf,
    },
}

fn parse_port_range(s: &str) -> std::result::Result<std::ops::RangeInclusive<u16>, String> {
    keelson_controlplane::admission::parse_port_range(s)
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
    let data_dir = args.data_dir.context("--data-dir is required")?;
    if let Some(Command::Snapshot(snapshot)) = args.command {
        return run_snapshot(&data_dir, snapshot);
    }
    let config = Config {
        data_dir,
        listen: args.listen,
        advertise: args.advertise_address,
        store: args.store,
        encryption_key_file: args.encryption_key_file,
        audit_log: args.audit_log_path,
        compaction_interval: args.compaction_interval,
        services: ServiceNetwork {
            cidr: args.service_cidr,
            node_ports: args.service_node_port_range,
        },
    };
    keelson_controlplane::memory::tune();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(async {
        let _trimmer = keelson_controlplane::memory::spawn_trimmer();
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

fn run_snapshot(data_dir: &std::path::Path, command: Snapshot) -> Result<()> {
    use keelson_controlplane::snapshot;
    match command {
        Snapshot::Save { file } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the runtime")?;
            let _ = rustls::crypto::ring::default_provider().install_default();
            let revision = rt.block_on(snapshot::save(data_dir, &file))?;
            println!("saved {} at revision {revision}", file.display());
        }
        Snapshot::Restore { file } => {
            let (revision, kept) = snapshot::restore(data_dir, &file)?;
            println!(
                "restored {} (revision {revision}) into {}",
                file.display(),
                data_dir.display()
            );
            if let Some(k) = kept {
                println!("the previous store is kept as {}", k.display());
            }
        }
    }
    Ok(())
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
