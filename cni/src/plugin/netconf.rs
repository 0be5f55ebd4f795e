//! Parsing a CNI network configuration (the JSON on stdin) onto [`NetworkConfig`]. The field
//! names follow the reference `bridge` and `host-local` plugins; the table is in the
//! [module docs](super).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::result::{CniResult, Dns};
use super::Error;
use crate::config::{
    IpRange, Masquerade, Mtu, NetworkConfig, Overlay, RangeSet, DEFAULT_BRIDGE,
    DEFAULT_POD_CIDR_V4, DEFAULT_STATE_DIR,
};
use crate::ipam::{self, AllocKey};

/// The `type` this plugin answers to.
pub const PLUGIN_TYPE: &str = "keelson";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    overlay: Option<Overlay>,
    hairpin_mode: Option<bool>,
    ip_masq: Option<bool>,
    #[serde(rename = "clusterCIDRs")]
    cluster_cidrs: Option<Vec<IpNet>>,
    #[serde(rename = "serviceCIDRs")]
    service_cidrs: Option<Vec<IpNet>>,
    is_gateway: Option<bool>,
    is_default_gateway: Option<bool>,
    host_netns: Option<PathBuf>,
    ipam: Option<RawIpam>,
    dns: Option<Dns>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    subnet: Option<IpNet>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    ranges: Option<Vec<Vec<IpRange>>>,
    data_dir: Option<PathBuf>,
    routes: Option<Vec<RawRoute>>,
    resolv_conf: Option<String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RawRoute {
    dst: IpNet,
    gw: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// A parsed request configuration.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The configuration's `cniVersion`, one of [`super::SUPPORTED_VERSIONS`].
    pub(crate) version: String,
    /// The native configuration.
    pub(crate) network: NetworkConfig,
    /// `dns`, echoed in ADD results.
    pub(crate) dns: Dns,
    /// `prevResult`, decoded.
    pub(crate) prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC).
    pub(crate) valid_attachments: Option<Vec<AllocKey>>,
}

/// Fields of the reference bridge plugin that change behaviour we do not implement, with the
/// value that means "off" (accepted). Anything else under these keys is refused (code 2).
const UNSUPPORTED: &[(&str, Value)] = &[
    ("vlan", Value::Null),
    ("vlanTrunk", Value::Null),
    ("promiscMode", Value::Bool(false)),
    ("macspoofchk", Value::Bool(false)),
    ("enabledad", Value::Bool(false)),
    ("disableContainerInterface", Value::Bool(false)),
    ("portIsolation", Value::Bool(false)),
];

fn unsupported(field: &str, value: &impl serde::Serialize) -> Error {
    Error::UnsupportedField {
        field: field.to_string(),
        value: serde_json::to_string(value).unwrap_or_default(),
    }
}

fn invalid(details: impl Into<String>) -> Error {
    Error::InvalidConfig { details: details.into() }
}

/// Whether `name` is a valid Linux interface name (the reference `ValidateInterfaceName`).
pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Parses and validates a configuration. `version` was already checked against the
/// supported list by the caller.
pub(crate) fn parse(value: Value, version: String) -> Result<Parsed, Error> {
    let raw: RawConfig = serde_json::from_value(value)
        .map_err(|source| Error::Decode { what: "network configuration", source })?;
    match raw.plugin_type.as_deref() {
        Some(PLUGIN_TYPE) => {}
        Some(other) => {
            return Err(invalid(format!("type is {other:?}, this plugin is {PLUGIN_TYPE:?}")))
        }
        None => return Err(invalid("type is missing")),
    }
    let name = raw.name.ok_or_else(|| invalid("name is missing"))?;
    if !ipam::valid_network_name(&name) {
        return Err(invalid(format!(
            "name {name:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        )));
    }
    for (field, off) in UNSUPPORTED {
        if let Some(value) = raw.other.get(*field) {
            let harmless =
                value == off || value.is_null() || (*field == "vlan" && value == &Value::from(0));
            if !harmless {
                return Err(unsupported(field, value));
            }
        }
    }
    for (field, value) in
        [("isGateway", raw.is_gateway), ("isDefaultGateway", raw.is_default_gateway)]
    {
        if value == Some(false) {
            return Err(unsupported(field, &false));
        }
    }
    for field in raw.other.keys().filter(|f| *f != "cniVersion") {
        tracing::debug!(field, "ignoring a configuration field");
    }

    let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    if !valid_ifname(&bridge) {
        return Err(invalid(format!("bridge {bridge:?} is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)")));
    }

    let (ranges, state_dir) = ipam_ranges(raw.ipam.as_ref())?;
    let resolved = ipam::resolve(&ranges).map_err(|e| invalid(format!("ipam: {e}")))?;
    if let Some(routes) = raw.ipam.as_ref().and_then(|i| i.routes.as_ref()) {
        for route in routes {
            let family_gateway = resolved
                .iter()
                .map(|set| set[0].gateway)
                .find(|gw| gw.is_ipv4() == route.dst.addr().is_ipv4());
            let ok = route.dst.prefix_len() == 0
                && family_gateway.is_some()
                && (route.gw.is_none() || route.gw == family_gateway);
            if !ok {
                let shown = serde_json::json!({"dst": route.dst, "gw": route.gw});
                return Err(unsupported("ipam.routes", &shown));
            }
        }
    }
    let has_v6 = resolved.iter().any(|set| set[0].subnet.addr().is_ipv6());

    let mtu = match (raw.mtu, raw.overlay) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "mtu and overlay are exclusive: overlay only adjusts an automatic MTU",
            ))
        }
        (Some(mtu), None) => {
            let min = if has_v6 { 1280 } else { 68 };
            if !(min..=65535).contains(&mtu) {
                return Err(invalid(format!("mtu {mtu} is outside {min}..=65535")));
            }
            Mtu::Fixed(mtu)
        }
        (None, overlay) => Mtu::Auto { overlay },
    };

    let masquerade = raw.ip_masq.unwrap_or(false).then(|| Masquerade {
        cluster_cidrs: raw
            .cluster_cidrs
            .clone()
            .unwrap_or_else(|| resolved.iter().flatten().map(|r| r.subnet).collect()),
        service_cidrs: raw.service_cidrs.clone().unwrap_or_default(),
    });

    let prev_result = match raw.prev_result {
        None | Some(Value::Null) => None,
        Some(prev) => Some(
            serde_json::from_value::<CniResult>(prev)
                .map_err(|source| Error::Decode { what: "prevResult", source })?,
        ),
    };
    let valid_attachments = raw
        .valid_attachments
        .map(|list| list.into_iter().map(|a| AllocKey::new(a.container_id, a.ifname)).collect());

    let network = NetworkConfig {
        name,
        bridge,
        ranges,
        mtu,
        masquerade,
        hairpin: raw.hairpin_mode.unwrap_or(true),
        state_dir,
        host_netns: raw.host_netns,
    };
    Ok(Parsed {
        version,
        network,
        dns: raw.dns.unwrap_or_default(),
        prev_result,
        valid_attachments,
    })
}

/// The range sets and state directory of the `ipam` section; the default pod CIDR when the
/// section is absent.
fn ipam_ranges(ipam: Option<&RawIpam>) -> Result<(Vec<RangeSet>, PathBuf), Error> {
    let Some(ipam) = ipam else {
        let subnet = DEFAULT_POD_CIDR_V4
            .parse()
            .map_err(|_| invalid("the built-in default pod CIDR does not parse"))?;
        let range = IpRange { subnet, range_start: None, range_end: None, gateway: None };
        return Ok((vec![vec![range]], PathBuf::from(DEFAULT_STATE_DIR)));
    };
    match ipam.ipam_type.as_deref() {
        None | Some("host-local") => {}
        Some(other) => return Err(unsupported("ipam.type", &other)),
    }
    if let Some(resolv_conf) = &ipam.resolv_conf {
        return Err(unsupported("ipam.resolvConf", resolv_conf));
    }
    for field in ipam.other.keys() {
        tracing::debug!(field, "ignoring an ipam field");
    }
    let mut ranges: Vec<RangeSet> = Vec::new();
    // host-local's old single-range form comes first, then `ranges`.
    match ipam.subnet {
        Some(subnet) => ranges.push(vec![IpRange {
            subnet,
            range_start: ipam.range_start,
            range_end: ipam.range_end,
            gateway: ipam.gateway,
        }]),
        None => {
            if ipam.range_start.is_some() || ipam.range_end.is_some() || ipam.gateway.is_some() {
                return Err(invalid(
                    "ipam.rangeStart, ipam.rangeEnd and ipam.gateway need ipam.subnet",
                ));
            }
        }
    }
    ranges.extend(ipam.ranges.iter().flatten().cloned());
    if ranges.is_empty() {
        return Err(invalid("ipam has neither subnet nor ranges"));
    }
    let state_dir = ipam.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Ok((ranges, state_dir))
}
