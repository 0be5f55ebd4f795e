//! The native network configuration. The agent builds it from its settings (a standalone
//! node's configured pod CIDR, or the `Node.spec.podCIDR(s)` the control plane assigns); the
//! CNI entry point maps a CNI network configuration onto it.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The bridge every pod on the node is attached to.
pub const DEFAULT_BRIDGE: &str = "keel0";
/// A standalone node's pod CIDR when none is configured (k3s uses 10.42.0.0/16 for the
/// cluster and a /24 per node).
pub const DEFAULT_POD_CIDR_V4: &str = "10.42.0.0/24";
/// Where durable network state lives (IPAM under `<state_dir>/networks/<name>`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/keelson/cni";

/// Everything [`crate::Network`] needs to wire pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    /// Network name; names the IPAM directory. CNI's `name`.
    pub name: String,
    /// The node bridge, `keel0` by default.
    pub bridge: String,
    /// Address ranges, at most one range set per family is typical (dual stack: one IPv4 and
    /// one IPv6). Every pod gets one address from each entry.
    pub ranges: Vec<RangeSet>,
    /// MTU of the bridge and of every veth.
    pub mtu: Mtu,
    /// Egress masquerade; `None` turns it off.
    pub masquerade: Option<Masquerade>,
    /// Hairpin mode on bridge ports, so a pod reaches itself through a service address.
    pub hairpin: bool,
    /// Root of durable state (IPAM files).
    pub state_dir: PathBuf,
    /// The namespace holding the bridge and the uplink; `None` is the caller's. Tests point it
    /// at a "host" namespace they created.
    pub host_netns: Option<PathBuf>,
}

/// One entry of [`NetworkConfig::ranges`]: alternatives for one address of the pod, tried in
/// order (host-local's "range set").
pub type RangeSet = Vec<IpRange>;

/// A subnet to allocate from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpRange {
    /// The subnet, e.g. `10.42.0.0/24`.
    pub subnet: IpNet,
    /// First allocatable address; default the subnet's second address (`.1` is the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Last allocatable address; default the last address before broadcast (IPv4) or the
    /// subnet's last address (IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// The gateway, held by the bridge; default the subnet's first host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// How the MTU is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Mtu {
    /// The uplink's (the interface of the host namespace's default route, 1500 when there is
    /// none) minus the overlay's overhead.
    Auto {
        /// The overlay between nodes, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        overlay: Option<Overlay>,
    },
    /// Exactly this.
    Fixed(u32),
}

/// An encapsulation between nodes, and so an MTU overhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Overlay {
    /// VXLAN over IPv4 (50 bytes).
    VxlanV4,
    /// VXLAN over IPv6 (70 bytes).
    VxlanV6,
}

impl Overlay {
    /// Bytes the encapsulation takes from every packet.
    pub fn overhead(self) -> u32 {
        match self {
            Overlay::VxlanV4 => 50,
            Overlay::VxlanV6 => 70,
        }
    }
}

/// Egress masquerade: traffic from pod addresses leaving through any interface but the
/// bridge gets the node's address, unless it goes to a cluster or service CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Masquerade {
    /// All pods of the cluster (every node's pod CIDR); never masqueraded towards.
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs; never masqueraded towards.
    pub service_cidrs: Vec<IpNet>,
}

impl NetworkConfig {
    /// A standalone node's network: `keel0`, the default IPv4 pod CIDR, automatic MTU,
    /// masquerade with the pod CIDR as the cluster CIDR, hairpin on.
    pub fn standalone(pod_cidrs: &[IpNet]) -> Self {
        let ranges = pod_cidrs
            .iter()
            .map(|subnet| {
                vec![IpRange { subnet: *subnet, range_start: None, range_end: None, gateway: None }]
            })
            .collect();
        NetworkConfig {
            name: "keelson".into(),
            bridge: DEFAULT_BRIDGE.into(),
            ranges,
            mtu: Mtu::Auto { overlay: None },
            masquerade: Some(Masquerade {
                cluster_cidrs: pod_cidrs.to_vec(),
                service_cidrs: Vec::new(),
            }),
            hairpin: true,
            state_dir: DEFAULT_STATE_DIR.into(),
            host_netns: None,
        }
    }
}
