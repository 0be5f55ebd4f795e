//! The pod network the runtime is given: [`CniNetwork`] implements the runtime's
//! [`PodNetwork`] over the in-process [`keelson_cni::Network`] (no plugin process).
//!
//! Every sandbox gets one interface, [`POD_IFNAME`], keyed by the sandbox id: `setup` is the
//! library's ADD on the namespace the shim pinned (idempotent, so a retried sandbox creation
//! gets the same addresses), `teardown` its DEL (harmless when repeated or when nothing was
//! wired). The pod's IPs are the addresses ADD allocated, one per configured range set, in
//! the configuration's order (IPv4 first in the standalone dual-stack configuration).
//! [`CniNetwork::gc`] releases what sandboxes that no longer exist still hold.

use std::net::IpAddr;
use std::path::Path;

use keelson_cni::config::NetworkConfig;
use keelson_cni::ipam::AllocKey;
use keelson_cni::{Attach, Attachment, GcReport, Network};
use keelson_runtime::config::{PodMeta, SandboxId};
use keelson_runtime::network::{self, PodNetwork};

/// The pod's interface name, as the kubelet's CNI callers name it.
pub const POD_IFNAME: &str = "eth0";

/// Errors of the pod network outside `setup` and `teardown` (those return the library's
/// error boxed, and the runtime names the sandbox).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network configuration does not validate.
    #[error("pod network configuration")]
    Config(#[source] keelson_cni::Error),
    /// Garbage collection failed.
    #[error("garbage-collect the pod network")]
    Gc(#[source] keelson_cni::Error),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The runtime's pod network: one [`Network`] (bridge, veths, IPAM) for every sandbox.
#[derive(Debug)]
pub struct CniNetwork {
    net: Network,
}

impl CniNetwork {
    /// Validates `cfg`; touches nothing until the first sandbox (see [`Network::new`]).
    pub fn new(cfg: NetworkConfig) -> Result<Self> {
        Network::new(cfg).map(Self::with_network).map_err(Error::Config)
    }

    /// Over a network built by the caller (e.g. with its own masquerade implementation).
    pub fn with_network(net: Network) -> Self {
        CniNetwork { net }
    }

    /// The library's network, for status and for tools.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The attachment of `sandbox`'s pod interface in the namespace pinned at `netns`.
    pub fn attach(sandbox: &SandboxId, netns: &Path) -> Attach {
        Attach {
            container_id: sandbox.as_str().to_owned(),
            netns: netns.to_owned(),
            ifname: POD_IFNAME.to_owned(),
        }
    }

    /// The allocation key of `sandbox`'s pod interface.
    pub fn key(sandbox: &SandboxId) -> AllocKey {
        AllocKey::new(sandbox.as_str(), POD_IFNAME)
    }

    /// Releases the addresses and retires the veths of every sandbox not in `live`.
    pub async fn gc<'a>(&self, live: impl IntoIterator<Item = &'a SandboxId>) -> Result<GcReport> {
        let live: Vec<AllocKey> = live.into_iter().map(Self::key).collect();
        let report = self.net.gc(&live).await.map_err(Error::Gc)?;
        for (key, ip) in &report.released {
            tracing::info!(%key, %ip, "released the address of a sandbox that is gone");
        }
        Ok(report)
    }
}

/// The pod's IPs from what ADD wired, in range-set order.
pub fn pod_ips(attachment: &Attachment) -> Vec<IpAddr> {
    attachment.ips.iter().map(|c| c.address.addr()).collect()
}

#[async_trait::async_trait]
impl PodNetwork for CniNetwork {
    async fn setup(
        &self,
        sandbox: &SandboxId,
        netns: &Path,
        pod: &PodMeta,
    ) -> Result<Vec<IpAddr>, network::Error> {
        let attachment = self.net.add(&Self::attach(sandbox, netns)).await?;
        let ips = pod_ips(&attachment);
        tracing::debug!(%sandbox, pod = %pod.name, namespace = %pod.namespace, ?ips, "pod wired");
        Ok(ips)
    }

    async fn teardown(
        &self,
        sandbox: &SandboxId,
        netns: &Path,
        _pod: &PodMeta,
    ) -> Result<(), network::Error> {
        Ok(self.net.del(&Self::attach(sandbox, netns)).await?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use keelson_cni::config::{IpRange, Mtu};
    use keelson_cni::{ErrorKind, IpConfig};

    fn cfg(dir: &Path) -> NetworkConfig {
        let mut c = NetworkConfig::standalone(&["10.42.0.0/24".parse().unwrap()]);
        c.state_dir = dir.join("state");
        c.masquerade = None;
        c
    }

    fn pod() -> PodMeta {
        PodMeta::new("web", "default", "0000-1111")
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_sandbox_is_attached_as_eth0_keyed_by_its_id() {
        let id = SandboxId::new("0a1b2c3d4e5f").unwrap();
        let a = CniNetwork::attach(&id, Path::new("/run/keelson/netns/0a1b2c3d4e5f"));
        assert_eq!(a.container_id, "0a1b2c3d4e5f");
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.netns, Path::new("/run/keelson/netns/0a1b2c3d4e5f"));
        assert_eq!(CniNetwork::key(&id), AllocKey::new("0a1b2c3d4e5f", "eth0"));
    }

    #[test]
    fn pod_ips_are_the_addresses_without_prefix_in_range_set_order() {
        let ip = |a: &str, g: &str| IpConfig {
            address: a.parse().unwrap(),
            gateway: g.parse().unwrap(),
        };
        let att = Attachment {
            bridge: "keel0".into(),
            bridge_mac: [2; 6],
            host_veth: "veth00000000".into(),
            host_mac: [2; 6],
            pod_ifname: "eth0".into(),
            pod_mac: [2; 6],
            mtu: 1500,
            ips: vec![ip("10.42.0.7/24", "10.42.0.1"), ip("fd42::7/64", "fd42::1")],
        };
        let want: Vec<IpAddr> = vec!["10.42.0.7".parse().unwrap(), "fd42::7".parse().unwrap()];
        assert_eq!(pod_ips(&att), want);
    }

    #[test]
    fn an_invalid_configuration_is_refused_at_construction() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.mtu = Mtu::Fixed(10);
        assert!(matches!(CniNetwork::new(c), Err(Error::Config(_))));
        let mut c = cfg(dir.path());
        c.ranges = vec![vec![IpRange {
            subnet: "10.42.0.0/24".parse().unwrap(),
            range_start: Some("10.50.0.1".parse().unwrap()),
            range_end: None,
            gateway: None,
        }]];
        let err = CniNetwork::new(c).unwrap_err();
        let Error::Config(inner) = &err else { panic!("{err}") };
        assert_eq!(inner.kind(), ErrorKind::InvalidConfig, "{inner}");
    }

    #[test]
    fn setup_of_a_namespace_that_is_gone_fails_and_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let net = CniNetwork::new(cfg(dir.path())).unwrap();
        let id = SandboxId::new("0a1b2c3d4e5f").unwrap();
        let err = rt().block_on(net.setup(&id, &dir.path().join("gone"), &pod())).unwrap_err();
        let err = err.downcast::<keelson_cni::Error>().unwrap();
        assert_eq!(err.kind(), ErrorKind::NetnsMissing, "{err}");
        assert!(!dir.path().join("state").exists(), "no allocation was made");
    }

    #[test]
    fn teardown_with_an_unreachable_host_namespace_is_an_error() {
        // The runtime must not forget a sandbox whose addresses could not be released.
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.host_netns = Some(dir.path().join("no-host-netns"));
        let net = CniNetwork::new(c).unwrap();
        let id = SandboxId::new("0a1b2c3d4e5f").unwrap();
        let err = rt().block_on(net.teardown(&id, &dir.path().join("gone"), &pod()));
        assert!(err.is_err(), "teardown reported success without reaching the host namespace");
    }
}
