//! The node bridge and the per-pod veth pair, as plans of netlink operations.
//!
//! Every function here observes a namespace through the narrow [`Netlink`] trait, computes
//! the [`Op`]s that are missing (a plan), and applies them in one pipelined batch: the real
//! client ([`RtNetlink`]) sends every request of a batch before reading any answer, so a plan
//! costs one round trip to the kernel, and the kernel applies the requests in order. The fake
//! ([`fake::FakeNetlink`]) records the operations and simulates the state they produce, so
//! the unit tests check both the plans and their idempotence.
//!
//! - [`bridge`]: the node bridge, created once and repaired idempotently.
//! - [`pod`]: the veth pair whose pod end is created directly inside the pod's namespace
//!   (`IFLA_NET_NS_FD` on the peer, never create-then-move), the pod's addresses and routes,
//!   CHECK and DEL.
//!
//! Which thread runs which namespace is the caller's business ([`crate::netns`]).

pub mod bridge;
pub mod fake;
pub mod pod;
mod rtnl;

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnet::IpNet;

pub use rtnl::RtNetlink;

/// Index of `lo` in every network namespace (the kernel's `LOOPBACK_IFINDEX`).
pub const LOOPBACK_INDEX: u32 = 1;

/// Prefix of the alias every host veth carries, followed by `<container id>/<ifname>`, so DEL
/// and GC can tell our ports (and their keys) from anything else on the bridge.
pub const ALIAS_PREFIX: &str = "keelson:";

/// The device group that marks retired host ends: DEL takes a pod off the network at once
/// (interface down and renamed, host end moved to this group) and one `RTM_DELLINK` of the
/// whole group later deletes every retired pair together, paying the kernel's RCU wait on
/// unregistration (about 20 ms here) once per batch instead of once per pod.
pub const RETIRED_GROUP: u32 = 0x6b65_656c;

/// Errors of link handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed; `source` carries the kernel's errno when there is one.
    #[error("netlink: {op}")]
    Netlink {
        /// The operation, e.g. `add address 10.42.0.2/24 to link 7`.
        op: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A sysctl could not be read or written.
    #[error("sysctl {key}")]
    Sysctl {
        /// The key under `/proc/sys`, e.g. `net/ipv4/ip_forward`.
        key: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The configured bridge name is taken by a link of another kind.
    #[error("{name} exists and is a {kind}, not a bridge")]
    NotABridge {
        /// The link's name.
        name: String,
        /// Its kind (`veth`, `dummy`, or `none`).
        kind: String,
    },
    /// The host end's name is taken by a link that is not this pod's.
    #[error("link {name} exists and is not {want}'s: {}", describe_owner(.owner))]
    NameClash {
        /// The host end's name.
        name: String,
        /// The alias it carries.
        owner: Option<String>,
        /// The key that wanted it.
        want: String,
    },
    /// A link the plan needs is missing.
    #[error("link {name} not found")]
    NoSuchLink {
        /// Its name (or index).
        name: String,
    },
    /// CHECK found the wiring different from what ADD made.
    #[error("check: {0}")]
    Check(String),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The kernel's errno behind a netlink error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Reads and writes sysctls (the keys below `/proc/sys`, with `/` separators) of one
/// namespace. The real implementation is [`crate::netns::ProcSys`].
pub trait Sysctl {
    /// The value, trimmed.
    fn get(&mut self, key: &str) -> io::Result<String>;
    /// Writes `value`.
    fn set(&mut self, key: &str, value: &str) -> io::Result<()>;
}

/// Sets `key` to `value` unless it already is (writing `ip_forward` resets per-interface
/// settings, and a read is cheaper than a write).
pub fn ensure_sysctl(sys: &mut impl Sysctl, key: &str, value: &str) -> Result<()> {
    let err = |source| Error::Sysctl { key: key.to_owned(), source };
    if sys.get(key).map_err(err)? != value {
        sys.set(key, value).map_err(err)?;
    }
    Ok(())
}

/// A link as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, …), `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// MAC address (zeros when the link has none).
    pub mac: [u8; 6],
    /// The bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// `IFLA_IFALIAS`.
    pub alias: Option<String>,
    /// Hairpin mode, for a bridge port.
    pub hairpin: Option<bool>,
    /// Device group (0 by default; [`RETIRED_GROUP`] once retired).
    pub group: u32,
}

/// A route of the main table, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination (`0.0.0.0/0` or `::/0` for a default route).
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface, if any.
    pub oif: Option<u32>,
}

/// How an operation names a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRef {
    /// By index.
    Index(u32),
    /// By name (the kernel looks it up: usable for a link created earlier in the same batch).
    Name(String),
}

impl std::fmt::Display for LinkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkRef::Index(i) => write!(f, "link {i}"),
            LinkRef::Name(n) => write!(f, "{n}"),
        }
    }
}

/// The veth pair of [`Op::CreateVeth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// The host end's name.
    pub host: String,
    /// The host end's MAC.
    pub host_mac: [u8; 6],
    /// The bridge the host end joins, up.
    pub master: u32,
    /// MTU of both ends.
    pub mtu: u32,
    /// The pod end's name.
    pub peer: String,
    /// The pod end's MAC.
    pub peer_mac: [u8; 6],
    /// A descriptor of the pod's network namespace, where the pod end is created (down).
    pub peer_netns: RawFd,
}

/// One netlink operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a bridge, up, with this MTU and MAC.
    CreateBridge {
        /// Its name.
        name: String,
        /// MTU (set explicitly, so ports never change it).
        mtu: u32,
        /// MAC (set explicitly, so ports never change it).
        mac: [u8; 6],
    },
    /// Create a veth pair.
    CreateVeth(VethSpec),
    /// Set a link administratively up.
    SetUp(LinkRef),
    /// Set a link's MTU.
    SetMtu(LinkRef, u32),
    /// Enslave a link to a bridge.
    SetMaster(LinkRef, u32),
    /// Set a link's alias (`IFLA_IFALIAS`; the kernel ignores it in a create request).
    SetAlias(LinkRef, String),
    /// Set hairpin mode on a bridge port.
    SetHairpin(LinkRef, bool),
    /// Add an address; `nodad` skips duplicate address detection (IPv6).
    AddAddress {
        /// The link's index.
        index: u32,
        /// Address and prefix length.
        address: IpNet,
        /// `IFA_F_NODAD`.
        nodad: bool,
    },
    /// Add a route through a gateway.
    AddRoute {
        /// Destination.
        dst: IpNet,
        /// Next hop.
        gateway: IpAddr,
        /// Output interface.
        oif: u32,
    },
    /// Set a link administratively down.
    SetDown(LinkRef),
    /// Rename the link of this index (it must be down).
    Rename(u32, String),
    /// Move a link to a device group.
    SetGroup(LinkRef, u32),
    /// Delete a link (a veth takes its peer with it).
    DeleteLink(LinkRef),
    /// Delete every link of a device group in one unregistration batch.
    DeleteGroup(u32),
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::CreateBridge { name, mtu, .. } => write!(f, "create bridge {name} mtu {mtu}"),
            Op::CreateVeth(v) => {
                write!(f, "create veth {} (peer {}) on {}", v.host, v.peer, v.master)
            }
            Op::SetUp(l) => write!(f, "set {l} up"),
            Op::SetMtu(l, m) => write!(f, "set {l} mtu {m}"),
            Op::SetMaster(l, m) => write!(f, "enslave {l} to link {m}"),
            Op::SetAlias(l, a) => write!(f, "set alias {a:?} on {l}"),
            Op::SetHairpin(l, on) => write!(f, "set hairpin {on} on {l}"),
            Op::AddAddress { index, address, .. } => {
                write!(f, "add address {address} to link {index}")
            }
            Op::AddRoute { dst, gateway, oif } => {
                write!(f, "add route {dst} via {gateway} dev {oif}")
            }
            Op::SetDown(l) => write!(f, "set {l} down"),
            Op::Rename(i, n) => write!(f, "rename link {i} to {n}"),
            Op::SetGroup(l, g) => write!(f, "move {l} to group {g}"),
            Op::DeleteLink(l) => write!(f, "delete {l}"),
            Op::DeleteGroup(g) => write!(f, "delete group {g}"),
        }
    }
}

/// A netlink client bound to one network namespace.
pub trait Netlink {
    /// The link `r` names, if it exists.
    fn link(&mut self, r: &LinkRef) -> impl Future<Output = Result<Option<Link>>>;
    /// Every link.
    fn links(&mut self) -> impl Future<Output = Result<Vec<Link>>>;
    /// The addresses of link `index`, with their prefix lengths (IPv6 link-local excluded).
    fn addresses(&mut self, index: u32) -> impl Future<Output = Result<Vec<IpNet>>>;
    /// The default routes (both families) of the main table.
    fn default_routes(&mut self) -> impl Future<Output = Result<Vec<Route>>>;
    /// Applies `ops` in order; the first failure is the error (the kernel may have applied
    /// later operations of the batch: plans are idempotent, so a retry re-plans).
    fn apply(&mut self, ops: &[Op]) -> impl Future<Output = Result<()>>;
}

/// The host end's name for a pod interface: `veth` and 8 hex digits of a stable hash of
/// container id and interface name, so DEL finds it without state (15 bytes at most, the
/// kernel's limit).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a 64, folded to 32 bits: stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:08x}", (h ^ (h >> 32)) as u32)
}

/// The alias of a pod's host end.
pub fn host_veth_alias(container_id: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX}{container_id}/{ifname}")
}

/// Whether `name` has the shape of [`host_veth_name`]'s names.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 12
        && name.starts_with("veth")
        && name[4..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The key (container id, ifname) of a host end's alias, if it is one of ours.
pub fn parse_alias(alias: &str) -> Option<(&str, &str)> {
    alias.strip_prefix(ALIAS_PREFIX)?.rsplit_once('/')
}

/// A name for a retired pod interface: `kr` and 8 random hex digits.
pub fn retired_name() -> String {
    format!("kr{:08x}", rand::random::<u32>())
}

/// Who holds a clashing name, for [`Error::NameClash`].
fn describe_owner(owner: &Option<String>) -> String {
    match owner {
        Some(alias) => format!("it carries alias {alias:?}"),
        None => "it is not one of ours".to_owned(),
    }
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        // The hash is part of the on-node format: DEL of another release must find it.
        assert_eq!(host_veth_name("0123456789abcdef", "eth0"), "vethba844365");
    }

    #[test]
    fn aliases_round_trip_keys_with_slashes_in_the_id() {
        let alias = host_veth_alias("ns/pod", "eth0");
        assert_eq!(parse_alias(&alias), Some(("ns/pod", "eth0")));
        assert_eq!(parse_alias("something else"), None);
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..100 {
            let m = random_mac();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
    }
}
