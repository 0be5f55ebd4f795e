//! The CNI result types (spec section 5): the ADD success result, which is also the
//! `prevResult` CHECK receives, the VERSION result and the error result.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Attachment;

/// An ADD success result, or a `prevResult`. Unknown fields of a `prevResult` (another
/// plugin's additions) are accepted and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The protocol version; empty in a `prevResult` that lacks it.
    #[serde(rename = "cniVersion", default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    /// Every interface the attachment created, host ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses, each naming its interface by index.
    #[serde(default)]
    pub ips: Vec<IpEntry>,
    /// Routes created inside the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Resolver settings.
    #[serde(default)]
    pub dns: Dns,
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its hardware address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its MTU (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The sandbox (network namespace path) holding it; absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// A socket backing the interface, if any.
    #[serde(rename = "socketPath", default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// A PCI device backing the interface, if any.
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpEntry {
    /// `"4"` or `"6"`; only in results of versions before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address with its prefix length.
    pub address: IpNet,
    /// The subnet's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination.
    pub dst: IpNet,
    /// The next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Path MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// MSS to advertise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority (metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// Resolver settings of a configuration or result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The VERSION result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionResult {
    /// The version the caller asked with.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version this plugin speaks.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// The error result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorResult {
    /// The protocol version in use.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code (spec table; 100 and up are ours).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// A longer description.
    pub details: String,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Whether `version` is before `other` (both `major.minor.patch`; unparsable parts count
/// as 0, callers check versions against the supported list first).
pub(crate) fn version_lt(version: &str, other: &str) -> bool {
    let parse = |v: &str| -> (u32, u32, u32) {
        let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    parse(version) < parse(other)
}

impl CniResult {
    /// The result of an ADD that wired `attachment` into the sandbox `netns`, in the shape of
    /// spec version `version`: bridge, host veth, pod interface (with its sandbox); one
    /// address per range set on the pod interface; a default route per family through that
    /// family's first gateway.
    pub fn from_attachment(
        version: &str,
        attachment: &Attachment,
        netns: &std::path::Path,
        dns: Dns,
    ) -> Self {
        let with_mtu = !version_lt(version, "1.1.0");
        let with_ip_version = version_lt(version, "1.0.0");
        let mtu = with_mtu.then_some(attachment.mtu);
        let interfaces = vec![
            Interface {
                name: attachment.bridge.clone(),
                mac: Some(format_mac(&attachment.bridge_mac)),
                mtu,
                ..Interface::default()
            },
            Interface {
                name: attachment.host_veth.clone(),
                mac: Some(format_mac(&attachment.host_mac)),
                mtu,
                ..Interface::default()
            },
            Interface {
                name: attachment.pod_ifname.clone(),
                mac: Some(format_mac(&attachment.pod_mac)),
                mtu,
                sandbox: Some(netns.display().to_string()),
                ..Interface::default()
            },
        ];
        let ips = attachment
            .ips
            .iter()
            .map(|ip| IpEntry {
                version: with_ip_version
                    .then(|| if ip.address.addr().is_ipv4() { "4" } else { "6" }.to_string()),
                address: ip.address,
                gateway: Some(ip.gateway),
                interface: Some(2),
            })
            .collect();
        let mut routes: Vec<Route> = Vec::new();
        for ip in &attachment.ips {
            let v4 = ip.address.addr().is_ipv4();
            if routes.iter().any(|r| r.dst.addr().is_ipv4() == v4) {
                continue;
            }
            let dst = if v4 {
                IpNet::V4(ipnet::Ipv4Net::default())
            } else {
                IpNet::V6(ipnet::Ipv6Net::default())
            };
            routes.push(Route {
                dst,
                gw: Some(ip.gateway),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            });
        }
        CniResult { cni_version: version.to_string(), interfaces, ips, routes, dns }
    }

    /// Appends `self` to a previous plugin's result (spec: a plugin given a `prevResult` on
    /// ADD passes it through with its own changes): interfaces, addresses and routes of
    /// `prev` first, `self`'s interface indices shifted; `self`'s DNS unless it is empty.
    pub fn after(self, prev: CniResult) -> Self {
        let shift = prev.interfaces.len();
        let mut out = prev;
        out.cni_version = self.cni_version;
        out.interfaces.extend(self.interfaces);
        out.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + shift);
            ip
        }));
        out.routes.extend(self.routes);
        if self.dns != Dns::default() {
            out.dns = self.dns;
        }
        out
    }
}
