//! `keelson agent --manifests DIR [--state-dir DIR] [--pod-cidr CIDR]…`: a standalone node
//! running the static pods of a manifest directory (see [`keelson_agent::standalone`]).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use keelson_agent::run::Paths;
use keelson_agent::standalone::{Options, Standalone};
use keelson_cni::config::NetworkConfig;

/// Arguments of `keelson agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The directory of static pod manifests (core/v1 Pod, YAML or JSON, one per file).
    #[arg(long)]
    manifests: PathBuf,
    /// The agent's state: pod directories and volumes.
    #[arg(long, default_value = "/var/lib/keelson/agent")]
    state_dir: PathBuf,
    /// Persistent data (the image store is `<data-dir>/images`).
    #[arg(long, default_value = "/var/lib/keelson")]
    data_dir: PathBuf,
    /// Runtime state: sandboxes, shim sockets, network namespace pins.
    #[arg(long, default_value = "/run/keelson")]
    run_dir: PathBuf,
    /// Root of the pods' CRI logs.
    #[arg(long, default_value = "/var/log/pods")]
    log_root: PathBuf,
    /// The pod network's ranges (one IPv4 and/or one IPv6).
    #[arg(long = "pod-cidr", default_value = "10.42.0.0/24")]
    pod_cidrs: Vec<ipnet::IpNet>,
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's IP, reported as hostIP and as the IP of hostNetwork pods.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Do not masquerade pod traffic leaving the node.
    #[arg(long)]
    no_masquerade: bool,
    /// The node's hosts file, the base of hostNetwork pods' /etc/hosts.
    #[arg(long, default_value = "/etc/hosts")]
    hosts_file: PathBuf,
    /// The resolver configuration pods get (with their dnsConfig merged in).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Put the pod bridge in this network namespace instead of the agent's (tests, simulated
    /// nodes).
    #[arg(long, hide = true)]
    bridge_netns: Option<PathBuf>,
    /// The pod network's allocation state (default: the CNI library's).
    #[arg(long, hide = true)]
    network_state_dir: Option<PathBuf>,
    /// The top cgroup of pods (tests, simulated nodes).
    #[arg(long, hide = true, default_value = "keelson")]
    cgroup_base: PathBuf,
    /// The `keelson-shim` binary (default: next to this one).
    #[arg(long, env = "KEELSON_SHIM")]
    shim: Option<PathBuf>,
    /// The node API's unix socket (local admin access for `agentctl`).
    #[arg(long, default_value = "/run/keelson/agent.sock")]
    api_socket: PathBuf,
    /// Also serve the node API on this TCP address, with mutual TLS (e.g. `0.0.0.0:50000`).
    #[arg(long)]
    api_listen: Option<std::net::SocketAddr>,
    /// The node API's CA, serving and client certificates (created on first start, then kept).
    #[arg(long, default_value = "/var/lib/keelson/pki")]
    pki_dir: PathBuf,
    /// Where the admin's agentctl configuration is written.
    #[arg(long, default_value = "/var/lib/keelson/agentctl.yaml")]
    agentctl_config: PathBuf,
}

/// Runs the subcommand; returns the process's exit status.
pub fn main(args: AgentArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("keelson agent: {e:#}");
            1
        }
    }
}

fn run(args: AgentArgs) -> Result<()> {
    let mut paths = Paths::system().context("find the keelson-shim binary")?;
    paths.data_dir = args.data_dir;
    paths.state_dir = args.run_dir;
    paths.log_root = args.log_root;
    if let Some(shim) = args.shim {
        paths.shim = shim;
    }
    let node_name = match args.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("read the host name (or pass --node-name)")?
            .to_string_lossy()
            .to_lowercase(),
    };
    let mut network = NetworkConfig::standalone(&args.pod_cidrs);
    if args.no_masquerade {
        network.masquerade = None;
    }
    network.host_netns = args.bridge_netns;
    if let Some(d) = args.network_state_dir {
        network.state_dir = d;
    }
    let mut runtime = keelson_agent::run::runtime_config(&paths)?;
    if let Some(c) = runtime.cgroup.as_mut() {
        c.layout.base = args.cgroup_base;
    }
    let api = ApiArgs {
        socket: args.api_socket,
        tcp: args.api_listen,
        pki_dir: args.pki_dir,
        agentctl_config: args.agentctl_config,
        node_name: node_name.clone(),
        node_ip: args.node_ip,
    };
    let upload_dir = args.state_dir.join("uploads");
    let opts = Options {
        manifests: args.manifests,
        node_name,
        node_ip: args.node_ip,
        state_dir: args.state_dir,
        data_dir: paths.data_dir.clone(),
        runtime,
        network,
        host_hosts: args.hosts_file,
        host_resolv: args.resolv_conf,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let node = Standalone::start(opts).await?;
        let server = serve_api(&node, &api, upload_dir).await?;
        interrupted().await;
        eprintln!("keelson agent: stopping; pods keep running and are adopted at the next start");
        server.shutdown().await;
        node.detach().await;
        Ok(())
    })
}

/// Where and how the node API is served.
struct ApiArgs {
    socket: PathBuf,
    tcp: Option<std::net::SocketAddr>,
    pki_dir: PathBuf,
    agentctl_config: PathBuf,
    node_name: String,
    node_ip: Option<IpAddr>,
}

/// Starts the node API over the running node and writes the admin's agentctl configuration.
async fn serve_api(
    node: &Standalone,
    api: &ApiArgs,
    upload_dir: PathBuf,
) -> Result<keelson_agent::api::ApiServer> {
    use keelson_agent::api::{self, pki, service::NodeApi};
    let mut addresses: Vec<IpAddr> = api.node_ip.into_iter().collect();
    if let Some(tcp) = api.tcp.filter(|a| !a.ip().is_unspecified()) {
        addresses.push(tcp.ip());
    }
    let names = pki::server_names(&api.node_name, &addresses);
    let pki = pki::Pki::load_or_create(&api.pki_dir, &names)
        .with_context(|| format!("node API certificates in {}", api.pki_dir.display()))?;
    let tls = match api.tcp {
        Some(_) => Some(pki.server_config().context("node API TLS configuration")?),
        None => None,
    };
    let service = NodeApi::new(
        std::sync::Arc::new(node.agent.clone()),
        node.runtime.clone(),
        Some(node.images.clone()),
        Some(node.network.clone()),
        upload_dir,
    );
    let listen = api::Listen { socket: Some(api.socket.clone()), tcp: api.tcp };
    let server = api::serve(service, &listen, tls).await.context("serve the node API")?;
    let endpoints: Vec<String> = server
        .tcp_addr()
        .map(|a| {
            let host = match (a.ip().is_unspecified(), api.node_ip) {
                (true, Some(ip)) => ip.to_string(),
                (true, None) => api.node_name.clone(),
                (false, _) => a.ip().to_string(),
            };
            format!("{host}:{}", a.port())
        })
        .into_iter()
        .collect();
    let reader = api::write_agentctl_config(
        &pki,
        &api.agentctl_config,
        &api.node_name,
        Some(&api.socket),
        &endpoints,
    )
    .context("write the agentctl configuration")?;
    eprintln!(
        "keelson agent: node API on {}{}; agentctl config in {}{}",
        api.socket.display(),
        server.tcp_addr().map(|a| format!(" and {a} (mutual TLS)")).unwrap_or_default(),
        api.agentctl_config.display(),
        reader.map(|r| format!(" (read-only: {})", r.display())).unwrap_or_default()
    );
    Ok(server)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
