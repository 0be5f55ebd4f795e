//! Built-in admission: what upstream's admission plugins and Service REST storage do to a
//! write before it is stored.
//!
//! - **NamespaceLifecycle**: nothing is created in a namespace that does not exist (404) or
//!   is being terminated (403), and `default`, `kube-system` and `kube-public` cannot be
//!   deleted.
//! - **DefaultTolerationSeconds**: a Pod tolerates `node.kubernetes.io/not-ready` and
//!   `node.kubernetes.io/unreachable` (`NoExecute`) for 300 s unless it says otherwise.
//! - **Service IPs and node ports**: a Service gets its ClusterIP from the service CIDR and
//!   its node ports from the node-port range, a requested one is checked to be inside and free,
//!   and every allocation is a key (`/keelson/allocations/serviceips/<ip>`,
//!   `/keelson/allocations/nodeports/<port>`, JSON with a format version) written in the same
//!   transaction as the Service, compared absent: two Services can never get the same address,
//!   and no allocation outlives its Service (the delete removes them in its transaction). An
//!   update keeps what the Service had (a PUT may leave `clusterIP` and `nodePort`s out),
//!   releases what it stops using, and refuses to change a ClusterIP.
//!
//! The service-account admission (default `serviceAccountName`, the token volume) joins with
//! the controllers and tokens that make it meaningful.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use keelson_store::KeyRange;
use serde_json::{json, Value};

use crate::objects::{ApiError, Effects, Objects, Reads, Result};
use crate::registry::Resource;

/// Where allocation keys live.
const SERVICE_IPS: &str = "/keelson/allocations/serviceips/";
const NODE_PORTS: &str = "/keelson/allocations/nodeports/";
/// The allocation record's format version.
const ALLOCATION_VERSION: u32 = 1;

/// Namespaces that exist on every cluster and cannot be deleted.
pub const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// The service network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// ClusterIPs come from here (`--service-cidr`, default `10.96.0.0/12`).
    pub cidr: IpNet,
    /// Node ports come from here (`--service-node-port-range`, default `30000-32767`).
    pub node_ports: RangeInclusive<u16>,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        ServiceNetwork {
            cidr: "10.96.0.0/12".parse().unwrap_or_else(|_| IpNet::default()),
            node_ports: 30000..=32767,
        }
    }
}

impl ServiceNetwork {
    /// The first usable address: the `kubernetes` Service's ClusterIP.
    pub fn first_ip(&self) -> IpAddr {
        self.cidr.hosts().next().unwrap_or(self.cidr.network())
    }

    fn usable(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip)
            && ip != self.cidr.network()
            && !(ip.is_ipv4() && ip == self.cidr.broadcast())
    }

    /// How many addresses the CIDR has (saturating).
    fn size(&self) -> u128 {
        let host_bits = u32::from(self.cidr.max_prefix_len() - self.cidr.prefix_len());
        1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
    }

    fn nth(&self, n: u128) -> Option<IpAddr> {
        match self.cidr.network() {
            IpAddr::V4(a) => u32::try_from(n)
                .ok()
                .and_then(|n| u32::from(a).checked_add(n))
                .map(|v| IpAddr::V4(v.into())),
            IpAddr::V6(a) => u128::from(a).checked_add(n).map(|v| IpAddr::V6(v.into())),
        }
    }
}

/// Parses `30000-32767`.
pub fn parse_port_range(s: &str) -> std::result::Result<RangeInclusive<u16>, String> {
    let (a, b) =
        s.split_once('-').ok_or_else(|| format!("{s:?} is not a port range like 30000-32767"))?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| format!("{a:?} is not a port"))?,
        b.trim().parse().map_err(|_| format!("{b:?} is not a port"))?,
    );
    if a == 0 || a > b {
        return Err(format!("{s:?} is not a port range like 30000-32767"));
    }
    Ok(a..=b)
}

/// The admission chain of one API server.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// The service network.
    pub services: ServiceNetwork,
    /// Namespaces deleted through this server lately, when: NamespaceLifecycle reads these
    /// from the store, not the watch cache, which may not have seen the deletion yet
    /// (upstream's `forceLiveLookupCache`).
    pub recently_deleted: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How long a deleted namespace is looked up in the store (upstream's `forceLiveLookupTTL`).
const FORCE_LIVE_LOOKUP: Duration = Duration::from_secs(30);

fn forbidden(message: String) -> ApiError {
    ApiError::new(403, "Forbidden", message)
}

impl Admission {
    /// NamespaceLifecycle for a create in `namespace`.
    pub async fn check_namespace(
        &self,
        objects: &Objects,
        r: &Resource,
        namespace: Option<&str>,
    ) -> Result<()> {
        let (Some(ns), true) = (namespace, r.namespaced) else { return Ok(()) };
        let namespaces = crate::registry::find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
        let live = self
            .recently_deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ns)
            .is_some_and(|at| at.elapsed() < FORCE_LIVE_LOOKUP);
        let obj = if live {
            objects.get(namespaces, None, ns).await?
        } else {
            objects.get_cached(namespaces, None, ns).await?
        };
        let terminating = obj.pointer("/metadata/deletionTimestamp").is_some()
            || obj.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating");
        if terminating {
            return Err(forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// NamespaceLifecycle for a delete.
    pub fn check_delete(&self, r: &Resource, name: &str) -> Result<()> {
        if r.gvk.kind != "Namespace" || !r.gvk.group.is_empty() {
            return Ok(());
        }
        if IMMORTAL_NAMESPACES.contains(&name) {
            return Err(forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let mut recent = self.recently_deleted.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|_, at| at.elapsed() < FORCE_LIVE_LOOKUP);
        recent.insert(name.to_owned(), Instant::now());
        Ok(())
    }

    /// The ranges a write of `r` must read for [`Admission::admit`] and
    /// [`Admission::release`].
    pub fn reads(&self, r: &Resource) -> Vec<KeyRange> {
        if is_service(r) {
            vec![KeyRange::prefix(SERVICE_IPS), KeyRange::prefix(NODE_PORTS)]
        } else {
            Vec::new()
        }
    }

    /// Mutating admission of a new (`old` None) or updated object.
    pub fn admit(
        &self,
        r: &Resource,
        old: Option<&Value>,
        obj: &mut Value,
        reads: &Reads,
        effects: &mut Effects,
    ) -> Result<()> {
        if r.gvk.kind == "Pod" && r.gvk.group.is_empty() && old.is_none() {
            default_toleration_seconds(obj);
        }
        if is_service(r) {
            Allocator { net: &self.services, r, reads }.admit(old, obj, effects)?;
        }
        Ok(())
    }

    /// The effects of removing `obj` for good: its allocations go.
    pub fn release(
        &self,
        r: &Resource,
        obj: &Value,
        reads: &Reads,
        effects: &mut Effects,
    ) -> Result<()> {
        if is_service(r) {
            let a = Allocator { net: &self.services, r, reads };
            for ip in cluster_ips(obj) {
                a.release_ip(ip, effects);
            }
            for port in node_ports(obj) {
                a.release_port(port, effects);
            }
        }
        Ok(())
    }
}

fn is_service(r: &Resource) -> bool {
    r.gvk.kind == "Service" && r.gvk.group.is_empty()
}

/// DefaultTolerationSeconds.
fn default_toleration_seconds(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else { return };
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let tolerated = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
            let k = t.get("key").and_then(Value::as_str).unwrap_or_default();
            (effect.is_empty() || effect == "NoExecute") && (k.is_empty() || k == key)
        });
        if !tolerated {
            list.push(json!({ "key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }));
        }
    }
}

fn cluster_ips(svc: &Value) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = svc
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    if let Some(ip) =
        svc.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok())
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

fn node_ports(svc: &Value) -> Vec<u16> {
    let mut ports: Vec<u16> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort")?.as_u64()?.try_into().ok())
        .filter(|&p| p != 0)
        .collect();
    if let Some(p) = svc
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
    {
        if p != 0 {
            ports.push(p);
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Allocation of one Service's IP and ports against the read set.
struct Allocator<'a> {
    net: &'a ServiceNetwork,
    r: &'a Resource,
    reads: &'a Reads,
}

impl Allocator<'_> {
    fn used_ip(&self, ip: IpAddr) -> bool {
        let key = format!("{SERVICE_IPS}{ip}");
        self.reads.get(&KeyRange::prefix(SERVICE_IPS)).iter().any(|kv| kv.key == key.as_bytes())
    }

    fn used_port(&self, port: u16) -> bool {
        let key = format!("{NODE_PORTS}{port}");
        self.reads.get(&KeyRange::prefix(NODE_PORTS)).iter().any(|kv| kv.key == key.as_bytes())
    }

    fn record(owner: &str) -> Vec<u8> {
        json!({ "v": ALLOCATION_VERSION, "service": owner }).to_string().into_bytes()
    }

    fn release_ip(&self, ip: IpAddr, effects: &mut Effects) {
        if self.used_ip(ip) {
            effects.delete(format!("{SERVICE_IPS}{ip}"));
        }
    }

    fn release_port(&self, port: u16, effects: &mut Effects) {
        if self.used_port(port) {
            effects.delete(format!("{NODE_PORTS}{port}"));
        }
    }

    fn invalid(&self, svc: &Value, field: &str, why: &str) -> ApiError {
        let name = svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        ApiError::invalid(self.r, name, field, why)
    }

    fn owner(svc: &Value) -> String {
        let m = |f: &str| {
            svc.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default()
        };
        let name = if m("name").is_empty() {
            format!("{}*", m("generateName"))
        } else {
            m("name").to_owned()
        };
        format!("{}/{name}", m("namespace"))
    }

    /// A free address, starting at a random offset so Services spread over the range.
    fn free_ip(&self) -> Option<IpAddr> {
        let size = self.net.size().min(1 << 24);
        let start = rand::random_range(0..size);
        (0..size)
            .map(|i| (start + i) % size)
            .filter_map(|n| self.net.nth(n))
            .find(|ip| self.net.usable(*ip) && !self.used_ip(*ip))
    }

    fn free_port(&self, taken: &[u16]) -> Option<u16> {
        let (lo, hi) = (*self.net.node_ports.start(), *self.net.node_ports.end());
        let span = u32::from(hi - lo) + 1;
        let start = rand::random_range(0..span);
        (0..span)
            .filter_map(|i| u16::try_from(u32::from(lo) + (start + i) % span).ok())
            .find(|p| !self.used_port(*p) && !taken.contains(p))
    }

    fn admit(&self, old: Option<&Value>, svc: &mut Value, effects: &mut Effects) -> Result<()> {
        let owner = Self::owner(svc);
        let spec = svc.get("spec").cloned().unwrap_or_else(|| json!({}));
        let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
        if !matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
            return Err(self.invalid(svc, "spec.type", &format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
        }
        let old_ips = old.map(cluster_ips).unwrap_or_default();
        let old_type = old.and_then(|o| o.pointer("/spec/type")?.as_str()).unwrap_or("ClusterIP");

        // ClusterIP.
        let requested =
            spec.get("clusterIP").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut new_ip: Option<String> = None;
        if ty == "ExternalName" {
            if !requested.is_empty()
                && requested != "None"
                && old_type != "ExternalName"
                && !old_ips.iter().any(|i| i.to_string() == requested)
            {
                return Err(self.invalid(
                    svc,
                    "spec.clusterIP",
                    "Invalid value: must be empty for type ExternalName",
                ));
            }
        } else if requested == "None" {
            new_ip = Some("None".into());
        } else if !old_ips.is_empty()
            && (requested.is_empty() || old_ips.iter().any(|i| i.to_string() == requested))
        {
            new_ip = Some(old_ips[0].to_string());
        } else if !old_ips.is_empty() && old_type != "ExternalName" {
            return Err(self.invalid(
                svc,
                "spec.clusterIPs[0]",
                "Invalid value: field is immutable",
            ));
        } else if requested.is_empty() {
            let ip = self.free_ip().ok_or_else(|| {
                ApiError::internal(format!(
                    "failed to allocate a serviceIP: range {} is full",
                    self.net.cidr
                ))
            })?;
            effects.put(format!("{SERVICE_IPS}{ip}"), Self::record(&owner));
            new_ip = Some(ip.to_string());
        } else {
            let ip: IpAddr = requested.parse().map_err(|_| {
                self.invalid(svc, "spec.clusterIPs[0]", &format!("Invalid value: {requested:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
            })?;
            if !self.net.usable(ip) {
                return Err(self.invalid(svc, "spec.clusterIPs", &format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", self.net.cidr)));
            }
            if self.used_ip(ip) {
                return Err(self.invalid(svc, "spec.clusterIPs", &format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated")));
            }
            effects.put(format!("{SERVICE_IPS}{ip}"), Self::record(&owner));
            new_ip = Some(ip.to_string());
        }
        // An address the Service no longer has goes back.
        for ip in &old_ips {
            if new_ip.as_deref() != Some(ip.to_string().as_str()) {
                self.release_ip(*ip, effects);
            }
        }

        // Node ports.
        let wants_node_ports = ty == "NodePort"
            || ty == "LoadBalancer"
                && spec.get("allocateLoadBalancerNodePorts").and_then(Value::as_bool)
                    != Some(false);
        let old_ports: Vec<(i64, String, u16)> = old
            .and_then(|o| o.pointer("/spec/ports")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some((
                    p.get("port")?.as_i64()?,
                    p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_owned(),
                    u16::try_from(p.get("nodePort")?.as_u64()?).ok().filter(|&n| n != 0)?,
                ))
            })
            .collect();
        let old_all: Vec<u16> = old.map(node_ports).unwrap_or_default();
        let mut ports: Vec<Value> =
            spec.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut kept: Vec<u16> = Vec::new();
        // Ports asked for by number are taken before free ones are chosen for the others.
        let asked: Vec<u16> = ports
            .iter()
            .filter_map(|p| p.get("nodePort")?.as_u64().and_then(|n| u16::try_from(n).ok()))
            .filter(|&n| n != 0)
            .collect();
        for (i, p) in ports.iter_mut().enumerate() {
            let given = p.get("nodePort").and_then(Value::as_i64).filter(|&n| n != 0);
            if !wants_node_ports {
                if let (Some(n), false) = (given, ty == "LoadBalancer") {
                    if old_type == ty.as_str() || !old_all.contains(&u16::try_from(n).unwrap_or(0))
                    {
                        return Err(self.invalid(
                            svc,
                            &format!("spec.ports[{i}].nodePort"),
                            &format!("Forbidden: may not be used when `type` is '{ty}'"),
                        ));
                    }
                }
                if let Some(o) = p.as_object_mut() {
                    if ty != "LoadBalancer" {
                        o.remove("nodePort");
                    }
                }
                continue;
            }
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_owned();
            let n = match given {
                Some(n) => {
                    let n16 = u16::try_from(n).ok().filter(|n| self.net.node_ports.contains(n)).ok_or_else(|| {
                        self.invalid(svc, &format!("spec.ports[{i}].nodePort"), &format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}", self.net.node_ports.start(), self.net.node_ports.end()))
                    })?;
                    if !kept.contains(&n16) && !old_all.contains(&n16) {
                        if self.used_port(n16) {
                            return Err(self.invalid(
                                svc,
                                &format!("spec.ports[{i}].nodePort"),
                                &format!("Invalid value: {n}: provided port is already allocated"),
                            ));
                        }
                        effects.put(format!("{NODE_PORTS}{n16}"), Self::record(&owner));
                    }
                    n16
                }
                None => match old_ports.iter().find(|(op, opr, _)| *op == port && *opr == proto) {
                    Some((_, _, n)) => *n,
                    None => {
                        let taken: Vec<u16> = kept.iter().chain(&asked).copied().collect();
                        let n = self.free_port(&taken).ok_or_else(|| {
                            ApiError::internal(format!(
                                "failed to allocate a nodePort: range {}-{} is full",
                                self.net.node_ports.start(),
                                self.net.node_ports.end()
                            ))
                        })?;
                        effects.put(format!("{NODE_PORTS}{n}"), Self::record(&owner));
                        n
                    }
                },
            };
            p["nodePort"] = json!(n);
            kept.push(n);
        }
        let health = spec
            .get("healthCheckNodePort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0);
        if let Some(h) = health {
            kept.push(h);
        }
        for p in &old_all {
            if !kept.contains(p) {
                self.release_port(*p, effects);
            }
        }

        let Some(s) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
            return Err(ApiError::bad_request("a Service needs a spec"));
        };
        s.insert("type".into(), json!(ty));
        if !ports.is_empty() || s.contains_key("ports") {
            s.insert("ports".into(), Value::Array(ports));
        }
        match new_ip {
            Some(ip) => {
                let family = match ip.parse::<IpAddr>() {
                    Ok(IpAddr::V6(_)) => "IPv6",
                    _ if self.net.cidr.network().is_ipv6() => "IPv6",
                    _ => "IPv4",
                };
                s.insert("clusterIP".into(), json!(ip));
                s.insert("clusterIPs".into(), json!([ip]));
                s.entry("ipFamilies").or_insert_with(|| json!([family]));
                s.entry("ipFamilyPolicy").or_insert_with(|| json!("SingleStack"));
            }
            None => {
                s.remove("clusterIP");
                s.remove("clusterIPs");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
