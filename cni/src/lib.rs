//! Keelson's pod network: what a pod sandbox's network namespace is wired to.
//!
//! Design (see `docs/ARCHITECTURE.md`, "Pod network"):
//! - [`config`]: the native configuration, [`config::NetworkConfig`]. The CNI entry point
//!   maps a CNI network configuration onto it; the agent builds it from its own settings.
//! - [`ipam`]: host-local address management. One durable, versioned file per allocated
//!   address, created with `O_EXCL` and fsynced before ADD returns, so concurrent plugin
//!   processes never hand out one address twice and a crash loses nothing.
//! - [`netns`]: runs work inside a network namespace on a dedicated thread with its own
//!   netlink socket; no async worker ever calls `setns`.
//! - [`link`]: the node bridge and the per-pod veth pair as plans of netlink operations,
//!   applied through a narrow [`link::Netlink`] trait (rtnetlink in production, a fake in
//!   unit tests).
//! - [`nft`]: a small nf_tables encoder of our own over netlink, used for egress masquerade.
//! - [`Network`]: the facade the agent calls in process and the plugin calls per command.
//!   DEL does not delete the veth: deleting a link makes the kernel wait for RCU (about
//!   20 ms here, most of the reference plugin's DEL). It takes the pod off the network at
//!   once (pod end down and renamed, host end moved to a "retired" device group) and a
//!   background reaper deletes the whole group in one request, one RCU wait per batch; a
//!   pod namespace that ends first takes its pair with it. Measured here (release, 300
//!   sequential cycles, dual stack, hairpin, on a shared 2-core machine): ADD 1.7 ms and DEL
//!   0.95 ms median, of which IPAM's fsynced files are 0.42 and 0.27 ms; a reap 14 ms.
//! - [`plugin`]: the CNI spec 1.0 entry point behind `keelson cni`.
//!
//! Limits: one bridge per node; overlay and inter-node routes come with the cluster issues.

pub mod config;
pub mod ipam;
pub mod link;
pub mod netns;
mod network;
pub mod nft;
pub mod plugin;

pub use network::{
    BoxError, Error, ErrorKind, GcReport, Masquerader, Network, NftMasquerader, Status,
};

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One pod interface to wire: CNI's `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attach {
    /// The sandbox's id; with `ifname` the key of every allocation.
    pub container_id: String,
    /// The pod's network namespace (a bind-mounted nsfs file).
    pub netns: PathBuf,
    /// The interface name inside the pod, `eth0` for the agent.
    pub ifname: String,
}

/// What ADD wired: enough for a CNI result and for the pod's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The bridge the host end is enslaved to.
    pub bridge: String,
    /// The bridge's MAC address.
    pub bridge_mac: [u8; 6],
    /// The host end of the veth pair.
    pub host_veth: String,
    /// Its MAC address.
    pub host_mac: [u8; 6],
    /// The pod end's name (`Attach::ifname`).
    pub pod_ifname: String,
    /// Its MAC address.
    pub pod_mac: [u8; 6],
    /// The MTU of both ends.
    pub mtu: u32,
    /// One address per configured range set, with its gateway; a default route per family
    /// points at that gateway.
    pub ips: Vec<IpConfig>,
}

/// An address of the pod and its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with the subnet's prefix length.
    pub address: IpNet,
    /// The gateway (held by the bridge).
    pub gateway: IpAddr,
}
