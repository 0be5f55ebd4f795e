//! A Kubernetes `Pod` turned into what the runtime runs: a [`PodPlan`] holding the
//! [`SandboxConfig`], one [`ContainerPlan`] per init and app container, the volumes to prepare
//! and the pod's `/etc/hosts` and `/etc/resolv.conf`.
//!
//! [`plan`] is pure and validates everything up front; every refusal names the field path
//! (`spec.containers[0].volumeMounts[1].name: no volume "data"`). What needs the sandbox
//! (the pod IPs for `status.podIP` references) is resolved later by
//! [`PodPlan::container_config`]. Defaults are the API server's: `restartPolicy: Always`,
//! grace period 30 s, `imagePullPolicy` `Always` for `:latest` or untagged images and
//! `IfNotPresent` otherwise, requests defaulted to limits. The QoS class is computed like the
//! kubelet's `GetPodQOS`. Only the kubelet's safe sysctls are accepted.
//!
//! Limits: no configMap, secret, projected or downwardAPI volumes (there is no API server),
//! no `envFrom`, no probes, no `postStart` hooks, no `hostPort` outside `hostNetwork`: those
//! are refused, never silently ignored.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1 as k8s;
use keelson_runtime::config::{
    Capabilities, ContainerConfig, HostNamespaces, Mount, MountPropagation, PodMeta, QosClass,
    Resources, SandboxConfig, SeccompProfile, SecurityContext,
};

use super::expand::expand;
use super::quantity;

/// Label of sandboxes and containers: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: the pod's uid.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label of containers: the container's name in the pod.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Label of containers: `init` or `app`.
pub const LABEL_CONTAINER_KIND: &str = "keelson.dev/container-kind";
/// Label of containers: the hash of the container's spec, to tell a changed spec.
pub const LABEL_CONTAINER_HASH: &str = "keelson.dev/container-hash";

/// The kubelet's safe sysctls (allowed without `--allowed-unsafe-sysctls`).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// A pod that cannot be run, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field is invalid or unsupported.
    #[error("{path}: {message}")]
    Field {
        /// The field path (`spec.containers[0].image`).
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn field(path: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Field { path: path.into(), message: message.into() }
}

/// `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Restart whatever way a container ends (the default).
    #[default]
    Always,
    /// Restart only after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "Always",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Never => "Never",
        }
    }
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time a container is created.
    Always,
    /// Pull only when the store lacks it.
    IfNotPresent,
    /// Never pull; a missing image is an error.
    Never,
}

/// What the node contributes to a plan.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// The node's name (`spec.nodeName`, static pod name suffix).
    pub node_name: String,
    /// The agent's state directory; pod volumes live under `pods/<uid>/volumes/`.
    pub state_dir: PathBuf,
    /// Where `Localhost` seccomp profiles are looked up.
    pub seccomp_root: PathBuf,
}

/// Where a volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A directory of the pod (under the agent's state dir), removed with the pod.
    EmptyDir {
        /// `medium: Memory`: a tmpfs is mounted on the directory.
        memory: bool,
        /// `sizeLimit` in bytes (the tmpfs size with `medium: Memory`).
        size_limit: Option<u64>,
    },
    /// A path on the node.
    HostPath {
        /// The `type` check done before the pod starts.
        kind: HostPathType,
    },
}

/// `hostPath.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathType {
    /// `""`: no check.
    Unchecked,
    /// `DirectoryOrCreate`: created (0755) when missing.
    DirectoryOrCreate,
    /// `Directory`: must be a directory.
    Directory,
    /// `FileOrCreate`: an empty file (0644) created when missing; the parent must exist.
    FileOrCreate,
    /// `File`: must be a regular file.
    File,
    /// `Socket`: must be a unix socket.
    Socket,
    /// `CharDevice`.
    CharDevice,
    /// `BlockDevice`.
    BlockDevice,
}

/// A volume of the pod with its host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePlan {
    /// `spec.volumes[].name`.
    pub name: String,
    /// Where it is on the host.
    pub host_path: PathBuf,
    /// What it is.
    pub source: VolumeSource,
}

/// An environment variable whose value is only known at container creation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EnvValue {
    /// A value (expanded against the previous variables).
    Literal(String),
    /// `status.podIP`.
    PodIp,
    /// `status.podIPs` (comma-separated).
    PodIps,
}

/// One container of the pod, ready to be created once the sandbox exists.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Its name.
    pub name: String,
    /// Its image reference.
    pub image: String,
    /// `imagePullPolicy`, defaulted.
    pub pull_policy: PullPolicy,
    /// The `preStop` exec command, if any.
    pub pre_stop: Option<Vec<String>>,
    /// Startup, liveness and readiness probes.
    pub probes: super::probe::Probes,
    /// `runAsNonRoot` (merged): checked against the image's user at creation.
    pub run_as_non_root: bool,
    /// A hash of the container's spec.
    pub hash: String,
    env: Vec<(String, EnvValue)>,
    template: ContainerConfig,
}

/// The runtime's view of a whole pod.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// The sandbox to create.
    pub sandbox: SandboxConfig,
    /// `restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `terminationGracePeriodSeconds`.
    pub grace_period: Duration,
    /// Volumes to prepare before any container.
    pub volumes: Vec<VolumePlan>,
    /// Init containers, in order.
    pub init_containers: Vec<ContainerPlan>,
    /// App containers.
    pub containers: Vec<ContainerPlan>,
    /// The pod's directory under the agent's state dir.
    pub pod_dir: PathBuf,
    host_aliases: Vec<(String, Vec<String>)>,
    dns: Dns,
}

#[derive(Debug, Clone, Default)]
struct Dns {
    /// `dnsPolicy: None`: only `dnsConfig`.
    none: bool,
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

/// The pod's QoS class, like the kubelet's `GetPodQOS` (requests already defaulted to limits).
pub fn qos_class(spec: &k8s::PodSpec) -> QosClass {
    let mut requests: BTreeMap<&str, u64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, u64> = BTreeMap::new();
    let mut guaranteed = true;
    let all = spec.init_containers.iter().flatten().chain(&spec.containers);
    for c in all {
        let Some(r) = &c.resources else {
            guaranteed = false;
            continue;
        };
        let (reqs, lims) = (effective_requests(r), r.limits.clone().unwrap_or_default());
        for (name, q) in &reqs {
            if let Some(v) = supported_value(name, &q.0).filter(|v| *v > 0) {
                *requests.entry(key(name)).or_default() += v;
            }
        }
        let mut found = 0;
        for (name, q) in &lims {
            if let Some(v) = supported_value(name, &q.0).filter(|v| *v > 0) {
                found += 1;
                *limits.entry(key(name)).or_default() += v;
            }
        }
        if found < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed
        && requests.iter().all(|(k, v)| limits.get(k) == Some(v))
        && requests.len() == limits.len()
    {
        return QosClass::Guaranteed;
    }
    QosClass::Burstable
}

fn key(name: &str) -> &'static str {
    if name == "cpu" {
        "cpu"
    } else {
        "memory"
    }
}

fn supported_value(name: &str, q: &str) -> Option<u64> {
    match name {
        "cpu" => quantity::cpu_millis(q).ok(),
        "memory" => quantity::bytes(q).ok(),
        _ => None,
    }
}

/// Requests with the API server's defaulting: a resource with a limit and no request
/// requests its limit.
fn effective_requests(
    r: &k8s::ResourceRequirements,
) -> BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity> {
    let mut reqs = r.requests.clone().unwrap_or_default();
    for (k, v) in r.limits.iter().flatten() {
        reqs.entry(k.clone()).or_insert_with(|| v.clone());
    }
    reqs
}

fn resources(r: Option<&k8s::ResourceRequirements>, path: &str) -> Result<Resources> {
    let mut out = Resources::default();
    let Some(r) = r else { return Ok(out) };
    if r.claims.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(field(format!("{path}.claims"), "resource claims are not supported"));
    }
    let check = |kind: &str, map: &BTreeMap<String, _>| -> Result<()> {
        for name in map.keys() {
            if !matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage")
                && !name.starts_with("hugepages-")
            {
                return Err(field(
                    format!("{path}.{kind}[{name}]"),
                    "unsupported resource (cpu, memory and ephemeral-storage are)",
                ));
            }
        }
        Ok(())
    };
    // Limits first: a request defaulted from a bad limit is reported as the limit.
    let reqs = effective_requests(r);
    let lims = r.limits.clone().unwrap_or_default();
    check("limits", &lims)?;
    check("requests", &reqs)?;
    let q = |kind: &str, name: &str, v: &str, cpu: bool| -> Result<u64> {
        let parsed = if cpu { quantity::cpu_millis(v) } else { quantity::bytes(v) };
        parsed.map_err(|e| field(format!("{path}.{kind}[{name}]"), e.to_string()))
    };
    if let Some(v) = lims.get("cpu") {
        out.cpu_limit_millis = Some(q("limits", "cpu", &v.0, true)?);
    }
    if let Some(v) = lims.get("memory") {
        out.memory_limit_bytes = Some(q("limits", "memory", &v.0, false)?);
    }
    if let Some(v) = reqs.get("cpu") {
        out.cpu_request_millis = Some(q("requests", "cpu", &v.0, true)?);
    }
    if let Some(v) = reqs.get("memory") {
        out.memory_request_bytes = Some(q("requests", "memory", &v.0, false)?);
    }
    for name in ["cpu", "memory"] {
        let (req, lim) = match name {
            "cpu" => (out.cpu_request_millis, out.cpu_limit_millis),
            _ => (out.memory_request_bytes, out.memory_limit_bytes),
        };
        if let (Some(req), Some(lim)) = (req, lim) {
            if req > lim {
                return Err(field(
                    format!("{path}.requests[{name}]"),
                    format!("must be less than or equal to the {name} limit"),
                ));
            }
        }
    }
    Ok(out)
}

/// Pod-level resources: the sum over app containers (a limit only when every app container has
/// one), at least the largest init container's.
fn pod_resources(app: &[Resources], init: &[Resources]) -> Resources {
    fn sum(v: impl Iterator<Item = Option<u64>>) -> Option<u64> {
        v.collect::<Option<Vec<u64>>>().map(|v| v.iter().sum())
    }
    fn sum_present(v: impl Iterator<Item = Option<u64>>) -> Option<u64> {
        let v: Vec<u64> = v.flatten().collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
    fn max_with(a: Option<u64>, init: impl Iterator<Item = Option<u64>>) -> Option<u64> {
        init.flatten().fold(a, |acc, v| Some(acc.map_or(v, |a| a.max(v))))
    }
    let limit = |f: fn(&Resources) -> Option<u64>| {
        let s = sum(app.iter().map(f))?;
        // An init container without a limit makes the pod unlimited.
        if init.iter().any(|r| f(r).is_none()) {
            return None;
        }
        max_with(Some(s), init.iter().map(f))
    };
    let request = |f: fn(&Resources) -> Option<u64>| {
        let s = sum_present(app.iter().map(f));
        max_with(s, init.iter().map(f))
    };
    Resources {
        cpu_request_millis: request(|r| r.cpu_request_millis),
        cpu_limit_millis: limit(|r| r.cpu_limit_millis),
        memory_request_bytes: request(|r| r.memory_request_bytes),
        memory_limit_bytes: limit(|r| r.memory_limit_bytes),
        pids_limit: None,
    }
}

fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(valid_dns_label)
}

/// The pod's identity from its metadata (name, namespace `default` when unset, uid).
pub fn pod_meta(pod: &k8s::Pod) -> Result<PodMeta> {
    let md = &pod.metadata;
    let name = md.name.clone().ok_or_else(|| field("metadata.name", "required"))?;
    if !valid_dns_subdomain(&name) {
        return Err(field("metadata.name", format!("{name:?} is not a DNS subdomain name")));
    }
    let namespace = md.namespace.clone().unwrap_or_else(|| "default".to_owned());
    if !valid_dns_label(&namespace) {
        return Err(field("metadata.namespace", format!("{namespace:?} is not a DNS label")));
    }
    let uid = md.uid.clone().ok_or_else(|| field("metadata.uid", "required"))?;
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(field("metadata.uid", format!("{uid:?} is not a uid")));
    }
    Ok(PodMeta {
        name,
        namespace,
        uid,
        labels: md.labels.clone().unwrap_or_default(),
        annotations: md.annotations.clone().unwrap_or_default(),
    })
}

/// Plans `pod` for this node. The pod's `metadata.uid` must be set (static pods get theirs from
/// the manifest's hash).
pub fn plan(pod: &k8s::Pod, node: &NodeContext) -> Result<PodPlan> {
    let meta = pod_meta(pod)?;
    let spec = pod.spec.as_ref().ok_or_else(|| field("spec", "required"))?;
    let host_network = spec.host_network.unwrap_or(false);
    if spec.containers.is_empty() {
        return Err(field("spec.containers", "at least one container is required"));
    }
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => RestartPolicy::Always,
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        Some(o) => {
            return Err(field(
                "spec.restartPolicy",
                format!("unsupported value {o:?} (Always, OnFailure or Never)"),
            ))
        }
    };
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    if grace < 0 {
        return Err(field("spec.terminationGracePeriodSeconds", "must be non-negative"));
    }
    let hostname = match &spec.hostname {
        Some(h) if !valid_dns_label(h) => {
            return Err(field("spec.hostname", format!("{h:?} is not a DNS label")))
        }
        Some(h) => h.clone(),
        // The pod name, cut to a valid hostname as the kubelet does.
        None => meta.name.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).into(),
    };
    let sysctls = sysctls(spec, host_network)?;
    let pod_dir = node.state_dir.join("pods").join(&meta.uid);
    let volumes = volumes(spec, &pod_dir)?;
    let psc = spec.security_context.clone().unwrap_or_default();
    for (f, set) in [
        ("seLinuxOptions", psc.se_linux_options.is_some()),
        ("windowsOptions", psc.windows_options.is_some()),
        ("appArmorProfile", psc.app_armor_profile.is_some()),
    ] {
        if set {
            return Err(field(format!("spec.securityContext.{f}"), "not supported"));
        }
    }

    let mut names = BTreeMap::new();
    let mut plans = |list: &[k8s::Container], kind: &str, out: &mut Vec<ContainerPlan>| {
        for (i, c) in list.iter().enumerate() {
            let path = format!("spec.{kind}[{i}]");
            if let Some(prev) = names.insert(c.name.clone(), path.clone()) {
                return Err(field(
                    format!("{path}.name"),
                    format!("{:?} is already the name of {prev}", c.name),
                ));
            }
            out.push(container(c, &path, kind == "initContainers", spec, &meta, &volumes, node)?);
        }
        Ok(())
    };
    let (mut init_containers, mut containers) = (Vec::new(), Vec::new());
    plans(
        spec.init_containers.as_deref().unwrap_or_default(),
        "initContainers",
        &mut init_containers,
    )?;
    plans(&spec.containers, "containers", &mut containers)?;

    let mut sandbox = SandboxConfig::new(meta.clone());
    sandbox.hostname = hostname;
    sandbox.host_namespaces = HostNamespaces {
        network: host_network,
        pid: spec.host_pid.unwrap_or(false),
        ipc: spec.host_ipc.unwrap_or(false),
    };
    sandbox.share_process_namespace = spec.share_process_namespace.unwrap_or(false);
    if sandbox.share_process_namespace && sandbox.host_namespaces.pid {
        return Err(field("spec.shareProcessNamespace", "may not be set with hostPID"));
    }
    sandbox.qos = qos_class(spec);
    let res = |v: &[ContainerPlan]| v.iter().map(|c| c.template.resources).collect::<Vec<_>>();
    sandbox.resources = pod_resources(&res(&containers), &res(&init_containers));
    sandbox.sysctls = sysctls;
    let host_aliases = host_aliases(spec)?;
    let dns = dns(spec)?;
    Ok(PodPlan {
        sandbox,
        restart_policy,
        grace_period: Duration::from_secs(grace.unsigned_abs()),
        volumes,
        init_containers,
        containers,
        pod_dir,
        host_aliases,
        dns,
    })
}

fn sysctls(spec: &k8s::PodSpec, host_network: bool) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let list = spec.security_context.as_ref().and_then(|s| s.sysctls.as_ref());
    for (i, s) in list.into_iter().flatten().enumerate() {
        let path = format!("spec.securityContext.sysctls[{i}].name");
        // `net/ipv4/x` is the same as `net.ipv4.x`.
        let name = s.name.replace('/', ".");
        let safe = SAFE_SYSCTLS.contains(&name.as_str());
        if !safe {
            return Err(field(path, format!("sysctl {:?} is not in the safe set", s.name)));
        }
        if host_network && name.starts_with("net.") {
            return Err(field(path, "net.* sysctls cannot be set with hostNetwork"));
        }
        if out.insert(name, s.value.clone()).is_some() {
            return Err(field(path, format!("sysctl {:?} is set twice", s.name)));
        }
    }
    Ok(out)
}

fn volumes(spec: &k8s::PodSpec, pod_dir: &Path) -> Result<Vec<VolumePlan>> {
    let mut out: Vec<VolumePlan> = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let path = format!("spec.volumes[{i}]");
        if !valid_dns_label(&v.name) {
            return Err(field(format!("{path}.name"), format!("{:?} is not a DNS label", v.name)));
        }
        if out.iter().any(|o| o.name == v.name) {
            return Err(field(format!("{path}.name"), format!("duplicate volume {:?}", v.name)));
        }
        // Every volume type the API has that is not one of ours.
        let json = serde_json::to_value(v).unwrap_or_default();
        let kinds: Vec<String> = json
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "name").cloned().collect())
            .unwrap_or_default();
        let plan = match (&v.empty_dir, &v.host_path) {
            (Some(e), None) if kinds.len() == 1 => {
                let memory = match e.medium.as_deref() {
                    None | Some("") => false,
                    Some("Memory") => true,
                    Some(m) => {
                        return Err(field(
                            format!("{path}.emptyDir.medium"),
                            format!("unsupported medium {m:?} (\"\" or Memory)"),
                        ))
                    }
                };
                let size_limit = match &e.size_limit {
                    Some(q) => Some(quantity::bytes(&q.0).map_err(|err| {
                        field(format!("{path}.emptyDir.sizeLimit"), err.to_string())
                    })?),
                    None => None,
                };
                VolumePlan {
                    name: v.name.clone(),
                    host_path: pod_dir.join("volumes/kubernetes.io~empty-dir").join(&v.name),
                    source: VolumeSource::EmptyDir { memory, size_limit },
                }
            }
            (None, Some(h)) if kinds.len() == 1 => {
                let hp = PathBuf::from(&h.path);
                if !hp.is_absolute() || hp.components().any(|c| c == Component::ParentDir) {
                    return Err(field(
                        format!("{path}.hostPath.path"),
                        format!("{:?} must be absolute, without '..'", h.path),
                    ));
                }
                let kind = match h.type_.as_deref().unwrap_or("") {
                    "" => HostPathType::Unchecked,
                    "DirectoryOrCreate" => HostPathType::DirectoryOrCreate,
                    "Directory" => HostPathType::Directory,
                    "FileOrCreate" => HostPathType::FileOrCreate,
                    "File" => HostPathType::File,
                    "Socket" => HostPathType::Socket,
                    "CharDevice" => HostPathType::CharDevice,
                    "BlockDevice" => HostPathType::BlockDevice,
                    t => {
                        return Err(field(
                            format!("{path}.hostPath.type"),
                            format!("unsupported type {t:?}"),
                        ))
                    }
                };
                VolumePlan {
                    name: v.name.clone(),
                    host_path: hp,
                    source: VolumeSource::HostPath { kind },
                }
            }
            _ if kinds.is_empty() => {
                return Err(field(path, "a volume source is required (emptyDir or hostPath)"))
            }
            _ => {
                return Err(field(
                    path,
                    format!(
                        "unsupported volume source {} (emptyDir and hostPath are supported)",
                        kinds.join(", ")
                    ),
                ))
            }
        };
        out.push(plan);
    }
    Ok(out)
}

fn host_aliases(spec: &k8s::PodSpec) -> Result<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    for (i, a) in spec.host_aliases.iter().flatten().enumerate() {
        let ip: IpAddr = a.ip.parse().map_err(|_| {
            field(format!("spec.hostAliases[{i}].ip"), format!("{:?} is not an IP address", a.ip))
        })?;
        let names = a.hostnames.clone().unwrap_or_default();
        for (j, n) in names.iter().enumerate() {
            if !valid_dns_subdomain(n) {
                return Err(field(
                    format!("spec.hostAliases[{i}].hostnames[{j}]"),
                    format!("{n:?} is not a DNS subdomain name"),
                ));
            }
        }
        out.push((ip.to_string(), names));
    }
    Ok(out)
}

fn dns(spec: &k8s::PodSpec) -> Result<Dns> {
    let mut d = Dns::default();
    match spec.dns_policy.as_deref() {
        // No cluster DNS on a standalone node: ClusterFirst falls back to the node's, as the
        // kubelet does without `--cluster-dns`.
        None | Some("ClusterFirst") | Some("ClusterFirstWithHostNet") | Some("Default") => {}
        Some("None") => d.none = true,
        Some(o) => return Err(field("spec.dnsPolicy", format!("unsupported value {o:?}"))),
    }
    if let Some(c) = &spec.dns_config {
        for (i, ns) in c.nameservers.iter().flatten().enumerate() {
            if ns.parse::<IpAddr>().is_err() {
                return Err(field(
                    format!("spec.dnsConfig.nameservers[{i}]"),
                    format!("{ns:?} is not an IP address"),
                ));
            }
        }
        d.nameservers = c.nameservers.clone().unwrap_or_default();
        d.searches = c.searches.clone().unwrap_or_default();
        d.options = c
            .options
            .iter()
            .flatten()
            .map(|o| (o.name.clone().unwrap_or_default(), o.value.clone()))
            .collect();
    }
    if d.none && d.nameservers.is_empty() {
        return Err(field("spec.dnsConfig.nameservers", "dnsPolicy None needs a nameserver"));
    }
    Ok(d)
}

fn default_pull_policy(image: &str) -> PullPolicy {
    if image.contains('@') {
        return PullPolicy::IfNotPresent;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => PullPolicy::Always,
        Some(_) => PullPolicy::IfNotPresent,
    }
}

fn to_id(v: i64, path: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| field(path, format!("{v} is not a valid id")))
}

#[allow(clippy::too_many_arguments)]
fn container(
    c: &k8s::Container,
    path: &str,
    init: bool,
    spec: &k8s::PodSpec,
    meta: &PodMeta,
    volumes: &[VolumePlan],
    node: &NodeContext,
) -> Result<ContainerPlan> {
    if !valid_dns_label(&c.name) {
        return Err(field(format!("{path}.name"), format!("{:?} is not a DNS label", c.name)));
    }
    let image = match c.image.as_deref().map(str::trim) {
        Some(i) if !i.is_empty() => i.to_owned(),
        _ => return Err(field(format!("{path}.image"), "required")),
    };
    let pull_policy = match c.image_pull_policy.as_deref() {
        None => default_pull_policy(&image),
        Some("Always") => PullPolicy::Always,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        Some("Never") => PullPolicy::Never,
        Some(o) => {
            return Err(field(
                format!("{path}.imagePullPolicy"),
                format!("unsupported value {o:?}"),
            ))
        }
    };
    for (f, set) in [
        ("envFrom", c.env_from.as_ref().is_some_and(|v| !v.is_empty())),
        ("lifecycle.postStart", c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some())),
        ("resizePolicy", c.resize_policy.as_ref().is_some_and(|v| !v.is_empty())),
        ("restartPolicy", c.restart_policy.is_some()),
    ] {
        if set {
            return Err(field(format!("{path}.{f}"), "not supported"));
        }
    }
    let host_network = spec.host_network.unwrap_or(false);
    for (i, p) in c.ports.iter().flatten().enumerate() {
        if p.host_port.is_some_and(|h| h != 0) && !host_network {
            return Err(field(
                format!("{path}.ports[{i}].hostPort"),
                "host ports are only supported with hostNetwork",
            ));
        }
    }
    let probes = super::probe::Probes::from_container(c, init)
        .map_err(|(sub, why)| field(format!("{path}.{sub}"), why))?;
    let pre_stop = match c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        None => None,
        Some(h) => match (&h.exec, &h.http_get, &h.tcp_socket, &h.sleep) {
            (Some(e), None, None, None) => {
                let cmd = e.command.clone().unwrap_or_default();
                if cmd.is_empty() {
                    return Err(field(
                        format!("{path}.lifecycle.preStop.exec.command"),
                        "required",
                    ));
                }
                Some(cmd)
            }
            _ => {
                return Err(field(
                    format!("{path}.lifecycle.preStop"),
                    "only exec hooks are supported",
                ))
            }
        },
    };

    let (security, run_as_non_root) = security(c, spec, path, node)?;
    let resources = resources(c.resources.as_ref(), &format!("{path}.resources"))?;
    let mounts = mounts(c, path, volumes)?;
    let env = env(c, path, meta, node, &resources)?;
    if let Some(wd) = &c.working_dir {
        if !wd.starts_with('/') {
            return Err(field(format!("{path}.workingDir"), format!("{wd:?} must be absolute")));
        }
    }
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_POD_NAME.to_owned(), meta.name.clone());
    labels.insert(LABEL_POD_NAMESPACE.to_owned(), meta.namespace.clone());
    labels.insert(LABEL_POD_UID.to_owned(), meta.uid.clone());
    labels.insert(LABEL_CONTAINER_NAME.to_owned(), c.name.clone());
    labels.insert(LABEL_CONTAINER_KIND.to_owned(), if init { "init" } else { "app" }.to_owned());
    let hash = container_hash(c);
    labels.insert(LABEL_CONTAINER_HASH.to_owned(), hash.clone());
    let template = ContainerConfig {
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone(),
        mounts,
        security,
        resources,
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        labels,
        ..ContainerConfig::new(&c.name, &image, c.command.clone().unwrap_or_default())
    };
    Ok(ContainerPlan {
        name: c.name.clone(),
        image,
        pull_policy,
        pre_stop,
        probes,
        run_as_non_root,
        hash,
        env,
        template,
    })
}

/// 16 hex characters of the SHA-256 of the container's spec as JSON.
fn container_hash(c: &k8s::Container) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(c).unwrap_or_default();
    hex::encode(&Sha256::digest(json)[..8])
}

fn security(
    c: &k8s::Container,
    spec: &k8s::PodSpec,
    path: &str,
    node: &NodeContext,
) -> Result<(SecurityContext, bool)> {
    let psc = spec.security_context.clone().unwrap_or_default();
    let csc = c.security_context.clone().unwrap_or_default();
    let sp = format!("{path}.securityContext");
    for (f, set) in [
        ("seLinuxOptions", csc.se_linux_options.is_some()),
        ("windowsOptions", csc.windows_options.is_some()),
        ("appArmorProfile", csc.app_armor_profile.is_some()),
    ] {
        if set {
            return Err(field(format!("{sp}.{f}"), "not supported"));
        }
    }
    if let Some(pm) = csc.proc_mount.as_deref().filter(|p| *p != "Default") {
        return Err(field(format!("{sp}.procMount"), format!("{pm:?} is not supported")));
    }
    let (uid_path, user) = match (csc.run_as_user, psc.run_as_user) {
        (Some(u), _) => (format!("{sp}.runAsUser"), Some(u)),
        (None, Some(u)) => ("spec.securityContext.runAsUser".to_owned(), Some(u)),
        _ => (String::new(), None),
    };
    let run_as_user = user.map(|u| to_id(u, &uid_path)).transpose()?;
    let run_as_group = match (csc.run_as_group, psc.run_as_group) {
        (Some(g), _) => Some(to_id(g, &format!("{sp}.runAsGroup"))?),
        (None, Some(g)) => Some(to_id(g, "spec.securityContext.runAsGroup")?),
        _ => None,
    };
    let mut groups = Vec::new();
    if let Some(g) = psc.fs_group {
        groups.push(to_id(g, "spec.securityContext.fsGroup")?);
    }
    for (i, g) in psc.supplemental_groups.iter().flatten().enumerate() {
        let g = to_id(*g, &format!("spec.securityContext.supplementalGroups[{i}]"))?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let run_as_non_root = csc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false);
    if run_as_non_root && run_as_user == Some(0) {
        return Err(field(uid_path, "runAsNonRoot is set but the user is 0 (root)"));
    }
    let privileged = csc.privileged.unwrap_or(false);
    let caps = csc.capabilities.clone().unwrap_or_default();
    let add = caps.add.unwrap_or_default();
    if csc.allow_privilege_escalation == Some(false) {
        if privileged {
            return Err(field(
                format!("{sp}.allowPrivilegeEscalation"),
                "cannot be false when privileged is true",
            ));
        }
        if add.iter().any(|c| c.trim_start_matches("CAP_") == "SYS_ADMIN") {
            return Err(field(
                format!("{sp}.allowPrivilegeEscalation"),
                "cannot be false when CAP_SYS_ADMIN is added",
            ));
        }
    }
    let seccomp = match (&csc.seccomp_profile, &psc.seccomp_profile) {
        (Some(p), _) => seccomp(p, &format!("{sp}.seccompProfile"), node)?,
        (None, Some(p)) => seccomp(p, "spec.securityContext.seccompProfile", node)?,
        (None, None) => SeccompProfile::RuntimeDefault,
    };
    Ok((
        SecurityContext {
            run_as_user,
            run_as_group,
            supplemental_groups: groups,
            privileged,
            read_only_root_filesystem: csc.read_only_root_filesystem.unwrap_or(false),
            allow_privilege_escalation: csc.allow_privilege_escalation,
            capabilities: Capabilities { add, drop: caps.drop.unwrap_or_default() },
            seccomp,
        },
        run_as_non_root,
    ))
}

fn seccomp(p: &k8s::SeccompProfile, path: &str, node: &NodeContext) -> Result<SeccompProfile> {
    match p.type_.as_str() {
        "RuntimeDefault" => Ok(SeccompProfile::RuntimeDefault),
        "Unconfined" => Ok(SeccompProfile::Unconfined),
        "Localhost" => {
            let lp = p.localhost_profile.as_deref().ok_or_else(|| {
                field(format!("{path}.localhostProfile"), "required with Localhost")
            })?;
            let rel = Path::new(lp);
            if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(field(
                    format!("{path}.localhostProfile"),
                    format!("{lp:?} must be a relative path without '..'"),
                ));
            }
            Ok(SeccompProfile::Localhost(node.seccomp_root.join(rel)))
        }
        t => Err(field(
            format!("{path}.type"),
            format!("unsupported value {t:?} (RuntimeDefault, Unconfined or Localhost)"),
        )),
    }
}

fn mounts(c: &k8s::Container, path: &str, volumes: &[VolumePlan]) -> Result<Vec<Mount>> {
    let mut out: Vec<Mount> = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        let vol = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| field(format!("{mp}.name"), format!("no volume {:?}", m.name)))?;
        let target = PathBuf::from(&m.mount_path);
        if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
            return Err(field(
                format!("{mp}.mountPath"),
                format!("{:?} must be absolute, without '..'", m.mount_path),
            ));
        }
        if out.iter().any(|o| o.container_path == target) {
            return Err(field(
                format!("{mp}.mountPath"),
                format!("{:?} is mounted twice", m.mount_path),
            ));
        }
        if m.sub_path_expr.is_some() {
            return Err(field(format!("{mp}.subPathExpr"), "not supported"));
        }
        let mut host = vol.host_path.clone();
        if let Some(sp) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let rel = Path::new(sp);
            if rel.is_absolute()
                || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(field(
                    format!("{mp}.subPath"),
                    format!("{sp:?} must be a relative path without '..'"),
                ));
            }
            host = host.join(rel);
        }
        let propagation = match m.mount_propagation.as_deref() {
            None | Some("None") => MountPropagation::Private,
            Some("HostToContainer") => MountPropagation::HostToContainer,
            Some("Bidirectional") => {
                let privileged =
                    c.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false);
                if !privileged {
                    return Err(field(
                        format!("{mp}.mountPropagation"),
                        "Bidirectional needs a privileged container",
                    ));
                }
                MountPropagation::Bidirectional
            }
            Some(o) => {
                return Err(field(
                    format!("{mp}.mountPropagation"),
                    format!("unsupported value {o:?}"),
                ))
            }
        };
        out.push(Mount {
            host_path: host,
            container_path: target,
            read_only: m.read_only.unwrap_or(false),
            propagation,
        });
    }
    Ok(out)
}

fn env(
    c: &k8s::Container,
    path: &str,
    meta: &PodMeta,
    node: &NodeContext,
    res: &Resources,
) -> Result<Vec<(String, EnvValue)>> {
    let mut out = Vec::new();
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ep = format!("{path}.env[{i}]");
        if e.name.is_empty() || e.name.contains('=') {
            return Err(field(
                format!("{ep}.name"),
                format!("{:?} is not a variable name", e.name),
            ));
        }
        let v = match (&e.value, &e.value_from) {
            (_, None) => EnvValue::Literal(e.value.clone().unwrap_or_default()),
            (Some(_), Some(_)) => {
                return Err(field(format!("{ep}.valueFrom"), "may not be set with value"))
            }
            (None, Some(src)) => {
                if let Some(f) = &src.field_ref {
                    field_ref(
                        &f.field_path,
                        &format!("{ep}.valueFrom.fieldRef.fieldPath"),
                        meta,
                        node,
                    )?
                } else if let Some(r) = &src.resource_field_ref {
                    resource_ref(r, &format!("{ep}.valueFrom.resourceFieldRef"), c, res)?
                } else if src.config_map_key_ref.is_some() || src.secret_key_ref.is_some() {
                    return Err(field(
                        format!("{ep}.valueFrom"),
                        "configMap and secret references need an API server (not supported on a standalone node)",
                    ));
                } else {
                    return Err(field(format!("{ep}.valueFrom"), "a source is required"));
                }
            }
        };
        out.push((e.name.clone(), v));
    }
    Ok(out)
}

fn field_ref(fp: &str, path: &str, meta: &PodMeta, node: &NodeContext) -> Result<EnvValue> {
    let sub = |prefix: &str| {
        fp.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(str::to_owned)
    };
    Ok(EnvValue::Literal(match fp {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => node.node_name.clone(),
        "spec.serviceAccountName" => String::new(),
        "status.podIP" => return Ok(EnvValue::PodIp),
        "status.podIPs" => return Ok(EnvValue::PodIps),
        _ => {
            if let Some(k) = sub("metadata.labels['") {
                meta.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = sub("metadata.annotations['") {
                meta.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                return Err(field(path, format!("unsupported field path {fp:?}")));
            }
        }
    }))
}

fn resource_ref(
    r: &k8s::ResourceFieldSelector,
    path: &str,
    c: &k8s::Container,
    res: &Resources,
) -> Result<EnvValue> {
    if r.container_name.as_deref().is_some_and(|n| !n.is_empty() && n != c.name) {
        return Err(field(
            format!("{path}.containerName"),
            "only the container itself is supported",
        ));
    }
    let cpu = r.resource.ends_with("cpu");
    let divisor = match &r.divisor {
        Some(d) => {
            let v = if cpu { quantity::cpu_millis(&d.0) } else { quantity::bytes(&d.0) };
            v.map_err(|e| field(format!("{path}.divisor"), e.to_string()))?
        }
        None if cpu => 1000,
        None => 1,
    }
    .max(1);
    let v = match r.resource.as_str() {
        "limits.cpu" => res.cpu_limit_millis,
        "requests.cpu" => res.cpu_request_millis,
        "limits.memory" => res.memory_limit_bytes,
        "requests.memory" => res.memory_request_bytes,
        o => return Err(field(format!("{path}.resource"), format!("unsupported resource {o:?}"))),
    };
    // Unset limits are the node's capacity in Kubernetes; here they are 0 (unknown).
    Ok(EnvValue::Literal(v.unwrap_or(0).div_ceil(divisor).to_string()))
}

impl PodPlan {
    /// Every container of the pod, init containers first.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init_containers.iter().chain(&self.containers)
    }

    /// The config of `c` for a sandbox whose IPs are `pod_ips`, as its `restart_count`th run:
    /// environment values resolved and `$(VAR)` expanded in env, command and args.
    pub fn container_config(
        &self,
        c: &ContainerPlan,
        pod_ips: &[IpAddr],
        restart_count: u32,
    ) -> ContainerConfig {
        let mut vars: HashMap<String, String> = HashMap::new();
        let mut env = Vec::with_capacity(c.env.len());
        for (name, v) in &c.env {
            let value = match v {
                EnvValue::Literal(s) => expand(s, &vars),
                EnvValue::PodIp => pod_ips.first().map(ToString::to_string).unwrap_or_default(),
                EnvValue::PodIps => {
                    pod_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                }
            };
            vars.insert(name.clone(), value.clone());
            env.push((name.clone(), value));
        }
        let mut cfg = c.template.clone();
        cfg.command = cfg.command.iter().map(|s| expand(s, &vars)).collect();
        cfg.args = cfg.args.iter().map(|s| expand(s, &vars)).collect();
        cfg.env = env;
        cfg.restart_count = restart_count;
        cfg.mounts.extend(self.etc_mounts());
        cfg
    }

    /// Where the pod's `/etc/hosts` is written.
    pub fn hosts_path(&self) -> PathBuf {
        self.pod_dir.join("etc-hosts")
    }

    /// Where the pod's `/etc/resolv.conf` is written.
    pub fn resolv_conf_path(&self) -> PathBuf {
        self.pod_dir.join("resolv.conf")
    }

    fn etc_mounts(&self) -> [Mount; 2] {
        let m = |h: PathBuf, c: &str| Mount {
            host_path: h,
            container_path: c.into(),
            read_only: false,
            propagation: MountPropagation::Private,
        };
        [m(self.hosts_path(), "/etc/hosts"), m(self.resolv_conf_path(), "/etc/resolv.conf")]
    }

    /// The pod's `/etc/hosts` like the kubelet's: the standard entries and the pod's IPs with
    /// its hostname (or, with `hostNetwork`, the node's file `host_hosts`), then `hostAliases`.
    pub fn etc_hosts(&self, pod_ips: &[IpAddr], host_hosts: &str) -> String {
        let mut s = String::new();
        if self.sandbox.host_namespaces.network {
            s.push_str(host_hosts);
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
        } else {
            s.push_str("# Kubernetes-managed hosts file.\n");
            s.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
            s.push_str("fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\n");
            s.push_str("fe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
            for ip in pod_ips {
                s.push_str(&format!("{ip}\t{}\n", self.sandbox.hostname));
            }
        }
        if !self.host_aliases.is_empty() {
            s.push_str("\n# Entries added by HostAliases.\n");
            for (ip, names) in &self.host_aliases {
                s.push_str(&format!("{ip}\t{}\n", names.join("\t")));
            }
        }
        s
    }

    /// The pod's `/etc/resolv.conf`: the node's (`host_resolv`) with `dnsConfig` merged in
    /// (nameservers and searches appended, deduplicated; options replace by name), or only
    /// `dnsConfig` with `dnsPolicy: None`.
    pub fn resolv_conf(&self, host_resolv: &str) -> String {
        let (mut ns, mut search, mut opts) =
            (Vec::new(), Vec::new(), Vec::<(String, Option<String>)>::new());
        if !self.dns.none {
            for line in host_resolv.lines() {
                let mut w = line.split_whitespace();
                match w.next() {
                    Some("nameserver") => ns.extend(w.next().map(str::to_owned)),
                    Some("search") | Some("domain") => search.extend(w.map(str::to_owned)),
                    Some("options") => opts.extend(w.map(|o| match o.split_once(':') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (o.to_owned(), None),
                    })),
                    _ => {}
                }
            }
        }
        for n in &self.dns.nameservers {
            if !ns.contains(n) {
                ns.push(n.clone());
            }
        }
        for s in &self.dns.searches {
            if !search.contains(s) {
                search.push(s.clone());
            }
        }
        for (k, v) in &self.dns.options {
            opts.retain(|(ok, _)| ok != k);
            opts.push((k.clone(), v.clone()));
        }
        // The resolver reads at most three nameservers and six search domains.
        ns.truncate(3);
        search.truncate(6);
        let mut out = String::new();
        for n in ns {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !search.is_empty() {
            out.push_str(&format!("search {}\n", search.join(" ")));
        }
        if !opts.is_empty() {
            let o: Vec<String> = opts
                .iter()
                .map(|(k, v)| v.as_ref().map_or_else(|| k.clone(), |v| format!("{k}:{v}")))
                .collect();
            out.push_str(&format!("options {}\n", o.join(" ")));
        }
        out
    }
}

impl ContainerPlan {
    /// Refuses a container whose `runAsNonRoot` cannot be honoured with the image's `user`
    /// (the kubelet's check: a numeric non-zero uid is required when `runAsUser` is unset).
    pub fn verify_non_root(&self, image_user: Option<&str>) -> std::result::Result<(), String> {
        if !self.run_as_non_root || self.template.security.run_as_user.is_some() {
            return Ok(());
        }
        let user = image_user.unwrap_or("").split(':').next().unwrap_or("");
        match user.parse::<u32>() {
            Ok(0) => Err("container has runAsNonRoot and image will run as root".into()),
            Ok(_) => Ok(()),
            Err(_) if user.is_empty() => {
                Err("container has runAsNonRoot and image will run as root".into())
            }
            Err(_) => Err(format!(
                "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root"
            )),
        }
    }

    /// The container's config template (environment not resolved yet).
    pub fn template(&self) -> &ContainerConfig {
        &self.template
    }
}

/// Prepares `v` on the host: creates emptyDirs (mounting the tmpfs is the caller's) and runs
/// hostPath type checks, creating what `*OrCreate` asks for.
pub fn prepare_volume(v: &VolumePlan) -> std::result::Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let p = &v.host_path;
    let meta = std::fs::metadata(p);
    let what = |w: &str| format!("hostPath type check failed: {} is not a {w}", p.display());
    match &v.source {
        VolumeSource::EmptyDir { .. } => {
            std::fs::create_dir_all(p).map_err(|e| format!("create emptyDir {}: {e}", p.display()))
        }
        VolumeSource::HostPath { kind } => match kind {
            HostPathType::Unchecked => Ok(()),
            HostPathType::DirectoryOrCreate => match meta {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(what("directory")),
                Err(_) => std::fs::create_dir_all(p)
                    .and_then(|()| {
                        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                    })
                    .map_err(|e| format!("create {}: {e}", p.display())),
            },
            HostPathType::Directory => match meta {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(what("directory")),
            },
            HostPathType::FileOrCreate => match meta {
                Ok(m) if m.is_file() => Ok(()),
                Ok(_) => Err(what("file")),
                Err(_) => std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p)
                    .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
                    .map_err(|e| format!("create {}: {e}", p.display())),
            },
            HostPathType::File => match meta {
                Ok(m) if m.is_file() => Ok(()),
                _ => Err(what("file")),
            },
            HostPathType::Socket => match meta {
                Ok(m) if m.file_type().is_socket() => Ok(()),
                _ => Err(what("socket")),
            },
            HostPathType::CharDevice => match meta {
                Ok(m) if m.file_type().is_char_device() => Ok(()),
                _ => Err(what("character device")),
            },
            HostPathType::BlockDevice => match meta {
                Ok(m) if m.file_type().is_block_device() => Ok(()),
                _ => Err(what("block device")),
            },
        },
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
