//! What the runtime is asked to run: the typed configuration of pod sandboxes and containers.
//!
//! These types are the runtime's half of the pod spec. The agent translates a Kubernetes `Pod`
//! into them (image references resolved, `$(VAR)` expanded, volumes turned into host paths);
//! the runtime turns them into an OCI runtime spec (`crate::spec`) and cgroup settings.
//! They are plain data: serializable so that they can be persisted in the state dir and shown
//! by `agentctl inspect`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Identifies a pod sandbox on this node. Short (12 lowercase hex characters by default) because
/// it names directories, sockets and cgroups.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SandboxId(String);

/// Identifies a container on this node, unique across sandboxes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContainerId(String);

/// An id that is not a valid sandbox or container id.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid id {0:?}: expected 1 to 64 characters of [a-z0-9-], starting with a letter or digit"
)]
pub struct InvalidId(pub String);

fn validate_id(s: &str) -> Result<(), InvalidId> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidId(s.to_owned()))
    }
}

macro_rules! id_type {
    ($t:ident) => {
        impl $t {
            /// Wraps `s` after checking that it is a safe path component.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                validate_id(&s)?;
                Ok(Self(s))
            }

            /// A fresh random id of 12 hex characters.
            pub fn random() -> Self {
                Self(format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $t {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }
    };
}
id_type!(SandboxId);
id_type!(ContainerId);

/// Kubernetes identity of a pod, used for log paths, cgroup names and the network plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// Labels, passed through to status and to the network plugin.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations, passed through likewise.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl PodMeta {
    /// A pod's identity without labels or annotations.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// The pod's quality-of-service class; decides where its cgroup lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum QosClass {
    /// Every container has equal requests and limits: directly under `keelson/`.
    Guaranteed,
    /// Some requests or limits: under `keelson/burstable/`.
    #[default]
    Burstable,
    /// No requests or limits at all: under `keelson/besteffort/`.
    BestEffort,
}

/// Which namespaces a pod shares with the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostNamespaces {
    /// `hostNetwork`.
    pub network: bool,
    /// `hostPID`.
    pub pid: bool,
    /// `hostIPC`.
    pub ipc: bool,
}

/// Everything needed to create a pod sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// The pod this sandbox belongs to.
    pub pod: PodMeta,
    /// Hostname inside the sandbox's UTS namespace (the pod name by default).
    pub hostname: String,
    /// Namespaces shared with the host.
    #[serde(default)]
    pub host_namespaces: HostNamespaces,
    /// `shareProcessNamespace`: containers share one PID namespace.
    #[serde(default)]
    pub share_process_namespace: bool,
    /// QoS class of the pod.
    #[serde(default)]
    pub qos: QosClass,
    /// Pod-level resources (sum of containers), applied to the pod cgroup.
    #[serde(default)]
    pub resources: Resources,
    /// Namespaced sysctls to set in the sandbox (only `net.*`, `kernel.shm*`, `kernel.msg*`,
    /// `kernel.sem` and `fs.mqueue.*` are accepted).
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Directory for the pod's logs; `/var/log/pods/<ns>_<name>_<uid>` by default.
    pub log_directory: Option<PathBuf>,
}

impl SandboxConfig {
    /// A sandbox for `pod` with Kubernetes' defaults: the pod name as hostname, private
    /// namespaces, Burstable, no pod-level resources or sysctls, the default log directory.
    pub fn new(pod: PodMeta) -> Self {
        Self {
            hostname: pod.name.clone(),
            pod,
            host_namespaces: HostNamespaces::default(),
            share_process_namespace: false,
            qos: QosClass::default(),
            resources: Resources::default(),
            sysctls: BTreeMap::new(),
            log_directory: None,
        }
    }
}

/// Resource requests and limits of one container or pod, in Kubernetes units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// CPU request in millicores (maps to `cpu.weight`).
    pub cpu_request_millis: Option<u64>,
    /// CPU limit in millicores (maps to `cpu.max`).
    pub cpu_limit_millis: Option<u64>,
    /// Memory request in bytes (recorded; no `memory.min` by default).
    pub memory_request_bytes: Option<u64>,
    /// Memory limit in bytes (maps to `memory.max`).
    pub memory_limit_bytes: Option<u64>,
    /// Maximum number of tasks (maps to `pids.max`).
    pub pids_limit: Option<u64>,
}

/// `seccompProfile` of a pod or container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// The runtime's default profile (containerd's and Docker's default allow-list). Default.
    #[default]
    RuntimeDefault,
    /// No seccomp filter.
    Unconfined,
    /// A profile in the OCI/Docker JSON format read from this file on the node.
    Localhost(PathBuf),
}

/// Capabilities to add to or drop from the default set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Capability names (`NET_ADMIN` or `CAP_NET_ADMIN`) to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Capability names to drop; `ALL` drops every capability.
    #[serde(default)]
    pub drop: Vec<String>,
}

/// The container-level `securityContext`, with pod-level defaults already merged in.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SecurityContext {
    /// `runAsUser`; the image's user when unset.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`; the user's primary group when unset.
    pub run_as_group: Option<u32>,
    /// `fsGroup` and `supplementalGroups`.
    #[serde(default)]
    pub supplemental_groups: Vec<u32>,
    /// `privileged`: all capabilities, no seccomp, no masked paths, host devices.
    #[serde(default)]
    pub privileged: bool,
    /// `readOnlyRootFilesystem`.
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    /// `allowPrivilegeEscalation`; `false` sets `no_new_privs`. Unset means `true` in
    /// Kubernetes, but `no_new_privs` is still set unless privileged or CAP_SYS_ADMIN is added.
    pub allow_privilege_escalation: Option<bool>,
    /// Capability changes.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Seccomp profile.
    #[serde(default)]
    pub seccomp: SeccompProfile,
}

/// How a mount's changes propagate, as in `mountPropagation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MountPropagation {
    /// `None`: rprivate.
    #[default]
    Private,
    /// `HostToContainer`: rslave.
    HostToContainer,
    /// `Bidirectional`: rshared.
    Bidirectional,
}

/// A bind mount of a host path (a volume the agent prepared) into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path on the host.
    pub host_path: PathBuf,
    /// Absolute path in the container.
    pub container_path: PathBuf,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Propagation mode.
    #[serde(default)]
    pub propagation: MountPropagation,
}

/// Everything needed to create one container inside a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The container's name within its pod (`spec.containers[].name`).
    pub name: String,
    /// Image reference as resolved by the image service (name:tag or name@digest).
    pub image: String,
    /// `command`; the image's entrypoint when empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// `args`; the image's cmd when both `command` and `args` are empty.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment, in order, after `$(VAR)` expansion; merged over the image's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// `workingDir`; the image's when unset.
    pub working_dir: Option<String>,
    /// Volumes and other bind mounts.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Security settings.
    #[serde(default)]
    pub security: SecurityContext,
    /// Requests and limits.
    #[serde(default)]
    pub resources: Resources,
    /// Keep stdin open (`stdin: true`).
    #[serde(default)]
    pub stdin: bool,
    /// Close stdin after the first attach detaches (`stdinOnce`).
    #[serde(default)]
    pub stdin_once: bool,
    /// Allocate a pseudo-terminal (`tty: true`).
    #[serde(default)]
    pub tty: bool,
    /// Which restart of this container this is; names its log file `<restart>.log`.
    #[serde(default)]
    pub restart_count: u32,
    /// Labels recorded with the container (the agent keeps its bookkeeping here).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Log rotation for this container.
    #[serde(default)]
    pub log_rotation: LogRotation,
}

impl ContainerConfig {
    /// A container named `name` running `command` (the image's entrypoint when empty) from
    /// `image`, with every other setting at its Kubernetes default.
    pub fn new(name: impl Into<String>, image: impl Into<String>, command: Vec<String>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            command,
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            mounts: Vec::new(),
            security: SecurityContext::default(),
            resources: Resources::default(),
            stdin: false,
            stdin_once: false,
            tty: false,
            restart_count: 0,
            labels: BTreeMap::new(),
            log_rotation: LogRotation::default(),
        }
    }
}

/// CRI log rotation, like the kubelet's `containerLogMaxSize` and `containerLogMaxFiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    /// Rotate when the live file reaches this many bytes.
    pub max_size_bytes: u64,
    /// Keep at most this many files, the live one included.
    pub max_files: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        // The kubelet's defaults: 10 MiB, 5 files.
        Self { max_size_bytes: 10 << 20, max_files: 5 }
    }
}

/// Options of `stop_container`: SIGTERM (or the image's stop signal), a grace period, SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopOptions {
    /// Time between the stop signal and SIGKILL.
    pub grace_period: Duration,
}
