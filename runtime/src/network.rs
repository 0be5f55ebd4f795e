//! The pod network as the runtime sees it: an injected [`PodNetwork`] that wires a sandbox's
//! network namespace (the `cni/` library implements it) and a [`NoNetwork`] for tests and
//! `--network none` setups.
//!
//! The shim brings up `lo` in every new network namespace itself, so [`NoNetwork`] has
//! nothing to do and returns no addresses.

use std::net::IpAddr;
use std::path::Path;

use crate::config::{PodMeta, SandboxId};

/// An error of a network plugin, boxed so that any implementation can report its own.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Wires and unwires pod network namespaces.
#[async_trait::async_trait]
pub trait PodNetwork: Send + Sync + std::fmt::Debug {
    /// Connects the namespace pinned at `netns` to the node's network; returns the pod's IPs.
    async fn setup(
        &self,
        sandbox: &SandboxId,
        netns: &Path,
        pod: &PodMeta,
    ) -> Result<Vec<IpAddr>, Error>;
    /// Releases what `setup` allocated. Must succeed when nothing (or part) was set up.
    async fn teardown(&self, sandbox: &SandboxId, netns: &Path, pod: &PodMeta)
        -> Result<(), Error>;
}

/// No network beyond loopback.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNetwork;

#[async_trait::async_trait]
impl PodNetwork for NoNetwork {
    async fn setup(&self, _: &SandboxId, _: &Path, _: &PodMeta) -> Result<Vec<IpAddr>, Error> {
        Ok(Vec::new())
    }

    async fn teardown(&self, _: &SandboxId, _: &Path, _: &PodMeta) -> Result<(), Error> {
        Ok(())
    }
}
