//! The runtime's interface as the agent sees it: the [`Runtime`] trait, its typed results and
//! its event stream.
//!
//! It is a native async Rust trait (object-safe through `async_trait`, so the agent holds an
//! `Arc<dyn Runtime>`), not the CRI: typed ids from [`crate::config`], stream handles for exec,
//! attach and logs, and an event stream fed by the pods' shims. Sandbox creation takes the pod
//! network as an injected [`crate::network::PodNetwork`]. The implementation is
//! [`crate::sandbox::ShimRuntime`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::SystemTime;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;

use crate::config::{ContainerConfig, ContainerId, PodMeta, SandboxConfig, SandboxId, StopOptions};

pub use keelson_shim_proto::cri_log::{LogEntry, Stream as LogStreamKind};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No sandbox with this id.
    #[error("no sandbox {0}")]
    SandboxNotFound(SandboxId),
    /// No container with this id.
    #[error("no container {0}")]
    ContainerNotFound(ContainerId),
    /// The sandbox's shim is gone: its containers cannot be reached.
    #[error("sandbox {0} is not ready (its shim is gone)")]
    SandboxNotReady(SandboxId),
    /// The operation does not fit the object's state.
    #[error("{what} {id}: {reason}")]
    InvalidState {
        /// `sandbox` or `container`.
        what: &'static str,
        /// Its id.
        id: String,
        /// Why not.
        reason: String,
    },
    /// A file system or process operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The shim could not be started.
    #[error("start shim of sandbox {sandbox}: {message}")]
    ShimStart {
        /// The sandbox.
        sandbox: SandboxId,
        /// What the shim or the spawn reported.
        message: String,
    },
    /// Talking to a shim failed.
    #[error("shim of sandbox {sandbox}: {op}")]
    ShimIo {
        /// The sandbox.
        sandbox: SandboxId,
        /// The request.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A shim refused a request.
    #[error("shim of sandbox {sandbox}: {op}: {message}")]
    Shim {
        /// The sandbox.
        sandbox: SandboxId,
        /// The request.
        op: &'static str,
        /// The shim's message.
        message: String,
    },
    /// A shim sent something that is not the protocol.
    #[error("shim of sandbox {sandbox}: protocol")]
    Protocol {
        /// The sandbox.
        sandbox: SandboxId,
        /// The cause.
        #[source]
        source: keelson_shim_proto::Error,
    },
    /// A state file could not be read or written.
    #[error("state")]
    State(#[from] keelson_shim_proto::state::StateError),
    /// The OCI spec could not be built.
    #[error("build OCI spec")]
    Spec(#[from] crate::spec::Error),
    /// The seccomp profile could not be compiled or written to the bundle.
    #[error("prepare seccomp filter")]
    SeccompFilter(#[from] crate::spec::filter::FilterError),
    /// A cgroup operation failed.
    #[error("cgroup")]
    Cgroup(#[from] crate::cgroup::Error),
    /// The pod network failed.
    #[error("pod network of sandbox {sandbox}")]
    Network {
        /// The sandbox.
        sandbox: SandboxId,
        /// The cause.
        #[source]
        source: crate::network::Error,
    },
    /// A log file could not be read.
    #[error("read log {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What `create_sandbox` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// The new sandbox.
    pub id: SandboxId,
    /// The pod's IPs as the network plugin assigned them.
    pub ips: Vec<IpAddr>,
    /// The pinned network namespace (`None` with the host network).
    pub netns_path: Option<PathBuf>,
}

/// Whether a sandbox's shim is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// The shim holds the namespaces and answers.
    Ready,
    /// Stopped, or the shim is gone.
    NotReady,
}

/// A sandbox as `list_sandboxes` and `sandbox_status` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    /// Its id.
    pub id: SandboxId,
    /// The pod.
    pub pod: PodMeta,
    /// Ready or not.
    pub state: SandboxState,
    /// The pod's IPs.
    pub ips: Vec<IpAddr>,
    /// The pinned network namespace.
    pub netns_path: Option<PathBuf>,
    /// The shim's pid (the pause process).
    pub shim_pid: Option<i32>,
    /// When it was created.
    pub created_at: SystemTime,
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited (see the exit fields).
    Exited,
    /// Its shim is gone; nothing is known.
    Unknown,
}

/// A container as `container_status` and `list_containers` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// Its id.
    pub id: ContainerId,
    /// Its sandbox.
    pub sandbox_id: SandboxId,
    /// Its name in the pod.
    pub name: String,
    /// The image reference it was created from.
    pub image: String,
    /// State.
    pub state: ContainerState,
    /// Its init's pid (host namespace) while it runs.
    pub pid: Option<i32>,
    /// Created.
    pub created_at: SystemTime,
    /// Started.
    pub started_at: Option<SystemTime>,
    /// Exited.
    pub finished_at: Option<SystemTime>,
    /// Exit code (`128 + signal` when killed by one).
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
    /// Its CRI log file.
    pub log_path: PathBuf,
    /// Which restart of the container this is.
    pub restart_count: u32,
    /// Labels from its config.
    pub labels: BTreeMap<String, String>,
}

/// Resource usage of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerStats {
    /// When sampled.
    pub timestamp: SystemTime,
    /// The cgroup's counters (`None` where the controller is off).
    pub cgroup: crate::cgroup::CgroupStats,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code (`128 + signal` when killed by one).
    pub code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
}

/// Something that happened to a sandbox or container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// A sandbox's shim is up.
    SandboxReady {
        /// The sandbox.
        id: SandboxId,
    },
    /// A sandbox's shim went away.
    SandboxNotReady {
        /// The sandbox.
        id: SandboxId,
    },
    /// A container started.
    ContainerStarted {
        /// The container.
        id: ContainerId,
        /// Its sandbox.
        sandbox: SandboxId,
        /// Its init pid.
        pid: i32,
    },
    /// A container exited.
    ContainerExited {
        /// The container.
        id: ContainerId,
        /// Its sandbox.
        sandbox: SandboxId,
        /// How.
        exit: ExitInfo,
    },
    /// The OOM killer killed a process of the container.
    ContainerOomKilled {
        /// The container.
        id: ContainerId,
        /// Its sandbox.
        sandbox: SandboxId,
    },
}

/// The root filesystem a container is created on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// A prepared directory used as is (and left alone at removal).
    Directory(PathBuf),
    /// An overlay the runtime mounts at the bundle's `rootfs` and unmounts at removal (the
    /// image store's `RootfsMount`).
    Overlay {
        /// Lower layers, topmost first.
        lowerdirs: Vec<PathBuf>,
        /// The container's writable layer.
        upperdir: PathBuf,
        /// overlayfs' work directory.
        workdir: PathBuf,
    },
}

/// The image side of a container: what the image store resolved and prepared.
#[derive(Debug, Clone)]
pub struct ContainerImage {
    /// The image reference, reported in status.
    pub reference: String,
    /// The image config's `config` section (entrypoint, cmd, env, user, workdir, stop signal).
    pub config: oci_spec::image::Config,
    /// The root filesystem.
    pub rootfs: Rootfs,
}

/// An exec into a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecConfig {
    /// Command and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Allocate a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Give the process a stdin (without a terminal; a terminal always has input).
    pub stdin: bool,
}

/// Options of `logs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep following the log until the container exits and its output is drained.
    pub follow: bool,
    /// Start with at most this many of the last records.
    pub tail: Option<usize>,
}

/// A byte source of a session.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
/// A byte sink of a session.
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;
/// The records of a container's log.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogEntry>> + Send>>;

/// A running exec: its streams, terminal size control, and its exit.
pub struct ExecSession {
    /// Its stdin (with a terminal: the terminal's input).
    pub stdin: Option<Writer>,
    /// Its stdout (with a terminal: the terminal's output).
    pub stdout: Option<Reader>,
    /// Its stderr (none with a terminal).
    pub stderr: Option<Reader>,
    /// The process's pid.
    pub pid: i32,
    control: Box<dyn ExecControl>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession").field("pid", &self.pid).finish_non_exhaustive()
    }
}

/// Resizes an exec's terminal apart from its [`ExecSession`] (which `wait` borrows).
pub type ExecResizer = std::sync::Arc<dyn Fn(u16, u16) -> Result<()> + Send + Sync>;

/// The implementation side of an [`ExecSession`] (public so that other runtimes, and fakes in
/// tests, can build sessions).
#[async_trait::async_trait]
pub trait ExecControl: Send {
    /// Resizes the terminal (an error without one).
    fn resize(&self, cols: u16, rows: u16) -> Result<()>;
    /// A resizer usable while [`ExecControl::wait`] runs.
    fn resizer(&self) -> ExecResizer;
    /// Waits for the process to exit.
    async fn wait(&mut self) -> Result<ExitInfo>;
}

impl ExecSession {
    /// A session from its streams and its control.
    pub fn new(
        stdin: Option<Writer>,
        stdout: Option<Reader>,
        stderr: Option<Reader>,
        pid: i32,
        control: Box<dyn ExecControl>,
    ) -> Self {
        ExecSession { stdin, stdout, stderr, pid, control }
    }

    /// A resizer that works while [`ExecSession::wait`] runs.
    pub fn resizer(&self) -> ExecResizer {
        self.control.resizer()
    }

    /// Resizes the terminal (an error without one).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.control.resize(cols, rows)
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> Result<ExitInfo> {
        self.control.wait().await
    }
}

/// An attachment to a running container's stdio.
pub struct AttachSession {
    /// The container's stdin, if it was created with one (or its terminal's input).
    pub stdin: Option<Writer>,
    /// Its live stdout (its terminal's output).
    pub stdout: Reader,
    /// Its live stderr (none with a terminal).
    pub stderr: Option<Reader>,
    /// The container has a terminal.
    pub tty: bool,
    pub(crate) resize:
        Box<dyn Fn(u16, u16) -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>,
}

impl std::fmt::Debug for AttachSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachSession").field("tty", &self.tty).finish_non_exhaustive()
    }
}

impl AttachSession {
    /// Resizes the container's terminal.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        (self.resize)(cols, rows).await
    }
}

/// The container runtime.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Creates a pod sandbox: pod cgroup, shim (namespaces), network. Returns its IPs.
    async fn create_sandbox(&self, config: SandboxConfig) -> Result<SandboxInfo>;
    /// Stops a sandbox: kills its containers, tears down its network, stops its shim. Its
    /// record stays until `remove_sandbox`.
    async fn stop_sandbox(&self, id: &SandboxId) -> Result<()>;
    /// Removes a stopped (or not) sandbox and everything of it.
    async fn remove_sandbox(&self, id: &SandboxId) -> Result<()>;
    /// Every sandbox on this node.
    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>>;
    /// One sandbox.
    async fn sandbox_status(&self, id: &SandboxId) -> Result<SandboxStatus>;
    /// Creates a container in a sandbox; it waits for `start_container`.
    async fn create_container(
        &self,
        sandbox: &SandboxId,
        config: ContainerConfig,
        image: ContainerImage,
    ) -> Result<ContainerId>;
    /// Starts a created container.
    async fn start_container(&self, id: &ContainerId) -> Result<()>;
    /// Stop signal (SIGTERM or the image's), the grace period, then SIGKILL; returns once the
    /// container has exited.
    async fn stop_container(&self, id: &ContainerId, options: StopOptions) -> Result<()>;
    /// Sends a signal to the container's init.
    async fn kill_container(&self, id: &ContainerId, signal: i32) -> Result<()>;
    /// Removes an exited container (or a created one, after killing it).
    async fn remove_container(&self, id: &ContainerId) -> Result<()>;
    /// One container.
    async fn container_status(&self, id: &ContainerId) -> Result<ContainerStatus>;
    /// The containers of one sandbox, or of all.
    async fn list_containers(&self, sandbox: Option<&SandboxId>) -> Result<Vec<ContainerStatus>>;
    /// Resource usage.
    async fn container_stats(&self, id: &ContainerId) -> Result<ContainerStats>;
    /// Runs a process in a running container.
    async fn exec(&self, id: &ContainerId, config: ExecConfig) -> Result<ExecSession>;
    /// Attaches to a running container's stdio.
    async fn attach(&self, id: &ContainerId) -> Result<AttachSession>;
    /// The container's log records.
    async fn logs(&self, id: &ContainerId, options: LogOptions) -> Result<LogStream>;
    /// Subscribes to events from now on.
    fn events(&self) -> broadcast::Receiver<RuntimeEvent>;
}
