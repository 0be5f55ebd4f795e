//! A standalone node: the [`Agent`] over the real runtime ([`ShimRuntime`] with the
//! in-process pod network [`CniNetwork`]), the image store, and a watched manifest directory.
//! `keelson agent` runs it; the privileged tests run it in process.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use keelson_cni::config::NetworkConfig;
use keelson_runtime::api::Runtime;
use keelson_runtime::image::ImageStore;
use keelson_runtime::sandbox::{RuntimeConfig, ShimRuntime};
use tokio::sync::watch;

use crate::manifests::{Snapshot, Watcher};
use crate::network::CniNetwork;
use crate::node::{Agent, AgentConfig, StoreImages};
use crate::pod::probe::HostNet;
use crate::worker::{DisplayChain, SysMounter, WorkerEnv};

/// Errors of starting a standalone node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image store could not be opened.
    #[error("open the image store {path}")]
    Images {
        /// Its root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: keelson_runtime::image::Error,
    },
    /// The pod network configuration is invalid.
    #[error("pod network")]
    Network(#[source] crate::network::Error),
    /// The runtime could not start.
    #[error("start the runtime")]
    RuntimeStart(#[source] keelson_runtime::api::Error),
    /// The agent's state directory could not be created.
    #[error("create {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Everything a standalone node needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The manifest directory.
    pub manifests: PathBuf,
    /// The node's name.
    pub node_name: String,
    /// The node's IP, reported as `hostIP` and as the IP of `hostNetwork` pods.
    pub node_ip: Option<IpAddr>,
    /// The agent's state (`/var/lib/keelson/agent`).
    pub state_dir: PathBuf,
    /// Persistent data: the image store is `<data_dir>/images`.
    pub data_dir: PathBuf,
    /// The runtime's configuration (see [`crate::run::runtime_config`]).
    pub runtime: RuntimeConfig,
    /// The pod network.
    pub network: NetworkConfig,
    /// The node's `/etc/hosts`, for `hostNetwork` pods.
    pub host_hosts: PathBuf,
    /// The node's `/etc/resolv.conf`.
    pub host_resolv: PathBuf,
}

/// A running standalone node.
pub struct Standalone {
    /// The agent (the node API's [`crate::api::registry::PodRegistry`]).
    pub agent: Agent,
    /// The runtime.
    pub runtime: Arc<dyn Runtime>,
    /// The pod network.
    pub network: Arc<CniNetwork>,
    /// The image store.
    pub images: ImageStore,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Standalone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standalone").field("agent", &self.agent).finish_non_exhaustive()
    }
}

impl Standalone {
    /// Starts the node: runtime (re-adopting its shims), network, agent (re-adopting its pods),
    /// manifest watcher.
    pub async fn start(opts: Options) -> Result<Self, Error> {
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|source| Error::StateDir { path: opts.state_dir.clone(), source })?;
        let root = opts.data_dir.join("images");
        let r = root.clone();
        let images = tokio::task::spawn_blocking(move || ImageStore::open(r))
            .await
            .map_err(|e| Error::StateDir {
                path: root.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| Error::Images { path: root, source })?;
        let network = Arc::new(CniNetwork::new(opts.network.clone()).map_err(Error::Network)?);
        let rt = ShimRuntime::new(opts.runtime.clone(), network.clone())
            .await
            .map_err(Error::RuntimeStart)?;
        let runtime: Arc<dyn Runtime> = Arc::new(rt);
        let env = Arc::new(WorkerEnv {
            rt: runtime.clone(),
            images: Arc::new(StoreImages::new(images.clone())),
            host_ip: opts.node_ip,
            host_hosts: opts.host_hosts.clone(),
            host_resolv: opts.host_resolv.clone(),
            mounter: Arc::new(SysMounter),
            probe_net: Arc::new(HostNet { host_netns: opts.network.host_netns.clone() }),
        });
        let agent = Agent::new(
            env,
            AgentConfig {
                node_name: opts.node_name.clone(),
                state_dir: opts.state_dir.clone(),
                seccomp_root: opts.state_dir.join("seccomp"),
            },
        );
        // Addresses held by sandboxes the runtime no longer has are released.
        match runtime.list_sandboxes().await {
            Ok(list) => {
                let live: Vec<_> = list.into_iter().map(|s| s.id).collect();
                if let Err(e) = network.gc(&live).await {
                    tracing::warn!(error = %DisplayChain(&e), "pod network gc");
                }
            }
            Err(e) => tracing::warn!(error = %DisplayChain(&e), "list sandboxes for gc"),
        }
        let (tx, rx) = watch::channel(Snapshot::default());
        // The first snapshot is read before the agent adopts, so that it knows what to keep.
        let first = {
            let (dir, node) = (opts.manifests.clone(), opts.node_name.clone());
            tokio::task::spawn_blocking(move || crate::manifests::scan(&dir, &node))
                .await
                .unwrap_or_default()
        };
        tx.send_replace(first);
        let watcher = tokio::spawn(Watcher::new(&opts.manifests, &opts.node_name).run(tx));
        let runner = tokio::spawn({
            let agent = agent.clone();
            async move { agent.run(rx).await }
        });
        tracing::info!(node = %opts.node_name, manifests = %opts.manifests.display(), "agent started");
        Ok(Standalone { agent, runtime, network, images, tasks: vec![watcher, runner] })
    }

    /// Stops watching and lets the pod workers go; the pods keep running for the next agent.
    pub async fn detach(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.agent.detach().await;
    }
}
