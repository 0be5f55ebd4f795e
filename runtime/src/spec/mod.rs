//! The OCI runtime spec of a container, built from its [`ContainerConfig`], its image's config
//! and the sandbox it joins, the way containerd's CRI plugin and runc's defaults do.
//!
//! [`build`] is pure apart from three reads: the rootfs's `/etc/passwd` and `/etc/group`
//! (confined to the rootfs, see [`user`]), a `Localhost` seccomp profile, and this process's
//! `RLIMIT_NOFILE` hard limit (the container's limit is clamped to it: nothing here can raise
//! an rlimit). The resulting [`Spec`] is what libcontainer 0.7 reads from a bundle's
//! `config.json` (same oci-spec version).
//!
//! What the spec holds:
//! - process: args by Kubernetes' rule (`command` replaces ENTRYPOINT, `args` replace CMD),
//!   env (image env, `HOSTNAME`, container env overriding by name, a default `PATH`), cwd,
//!   user and groups, capabilities ([`caps`]), `no_new_privs`, rlimits, seccomp ([`seccomp`]);
//! - mounts: `/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys`, `/sys/fs/cgroup`
//!   (cgroup2), the pod's `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, then the
//!   container's bind mounts (parents before children); a container mount replaces a default
//!   at the same destination;
//! - linux: namespaces (mount, cgroup and by default pid new; network, ipc, uts as the
//!   sandbox says), masked and read-only paths, default devices, `cgroupsPath`, resources
//!   (only when cgroup limits are on), rootfs propagation.
//!
//! Limits: no user namespaces, no AppArmor/SELinux labels, no `oomScoreAdj` (the agent can
//! set it later), sysctls are the sandbox's business.

pub mod caps;
pub mod filter;
pub mod seccomp;
pub mod user;

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder,
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    Process, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::cgroup::convert;
use crate::config::{ContainerConfig, MountPropagation, Resources};

/// Errors of spec building. Every message names what was being built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither the container nor the image says what to run.
    #[error("container {container:?} has nothing to run: no command or args, and the image has no entrypoint or cmd")]
    NothingToRun {
        /// Container name.
        container: String,
    },
    /// `workingDir` (or the image's) is not an absolute path.
    #[error("container {container:?}: working directory {dir:?} is not absolute")]
    RelativeWorkingDir {
        /// Container name.
        container: String,
        /// The offending directory.
        dir: String,
    },
    /// A capability name oci-spec does not know.
    #[error("unknown capability {name:?}")]
    UnknownCapability {
        /// The name as given.
        name: String,
    },
    /// An added capability the runtime itself does not have.
    #[error("capability {name} is not in the runtime's bounding set")]
    CapabilityUnavailable {
        /// The capability.
        name: String,
    },
    /// Reading a fact about this host or process failed.
    #[error("read {path}")]
    ReadHost {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A user name not in the rootfs's `/etc/passwd`.
    #[error("user {name:?} not found in the image's /etc/passwd")]
    UnknownUser {
        /// The name as given.
        name: String,
    },
    /// A group name not in the rootfs's `/etc/group`.
    #[error("group {name:?} not found in the image's /etc/group")]
    UnknownGroup {
        /// The name as given.
        name: String,
    },
    /// Reading a file of the rootfs failed.
    #[error("read {path} in rootfs {rootfs}")]
    ReadRootfsFile {
        /// The rootfs.
        rootfs: PathBuf,
        /// Path inside the rootfs.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A `Localhost` seccomp profile could not be read.
    #[error("read seccomp profile {path}")]
    ReadSeccomp {
        /// The profile's path on the node.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A seccomp profile is not valid JSON of the expected shape.
    #[error("parse seccomp profile {path}")]
    ParseSeccomp {
        /// The profile's path on the node.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A seccomp profile parses but makes no sense.
    #[error("invalid seccomp profile {path}: {reason}")]
    InvalidSeccomp {
        /// The profile's path on the node.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A mount with a relative host or container path.
    #[error("container {container:?}: mount {host} at {target}: both paths must be absolute")]
    RelativeMount {
        /// Container name.
        container: String,
        /// Host path.
        host: PathBuf,
        /// Container path.
        target: PathBuf,
    },
    /// Listing the host's devices for a privileged container failed.
    #[error("list host devices in {path}")]
    HostDevices {
        /// The directory being listed.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading this process's `RLIMIT_NOFILE` failed.
    #[error("read RLIMIT_NOFILE")]
    Rlimit(#[source] nix::Error),
    /// An exec request without a command.
    #[error("exec request has no command")]
    EmptyExec,
    /// The container's spec has no process to derive an exec process from.
    #[error("container spec has no process section")]
    NoProcess,
    /// oci-spec refused to build a section.
    #[error("build the {section} section of the OCI spec")]
    Oci {
        /// Which section.
        section: &'static str,
        /// The cause.
        source: oci_spec::OciSpecError,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn oci(section: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> Error {
    move |source| Error::Oci { section, source }
}

/// How a container gets one of the sandbox's namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceMode {
    /// Share the host's namespace (`hostNetwork`, `hostIPC`, `hostPID`).
    Host,
    /// A new namespace of its own.
    New,
    /// Join an existing namespace: a `/proc/<pid>/ns/<x>` path or a pinned namespace file.
    Join(PathBuf),
}

/// The sandbox's namespaces as the container should see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNamespaces {
    /// Network namespace (normally `Join` of the sandbox's pinned netns).
    pub network: NamespaceMode,
    /// IPC namespace (normally `Join` of the shim's).
    pub ipc: NamespaceMode,
    /// UTS namespace (normally `Join` of the shim's, which carries the hostname).
    pub uts: NamespaceMode,
    /// PID namespace: `New` per container, `Join` for `shareProcessNamespace`, `Host` for
    /// `hostPID`.
    pub pid: NamespaceMode,
}

/// Host paths of the pod's shared files, bind-mounted into every container when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcFiles {
    /// The pod's `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// The pod's `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's `/etc/hostname`.
    pub hostname: Option<PathBuf>,
    /// The pod's shared `/dev/shm` directory (a tmpfs the sandbox mounted), so that POSIX
    /// shared memory is shared like the IPC namespace is. Without it the container gets a
    /// fresh 64 MiB tmpfs; with `ipc: Host` the host's `/dev/shm` is bound instead.
    pub shm: Option<PathBuf>,
}

/// Everything [`build`] needs.
#[derive(Debug, Clone, Copy)]
pub struct SpecInput<'a> {
    /// The container to run.
    pub container: &'a ContainerConfig,
    /// The image config's `config` section (`Default` if the image has none).
    pub image: &'a oci_spec::image::Config,
    /// The prepared rootfs (overlay mount point).
    pub rootfs: &'a Path,
    /// The sandbox's namespaces.
    pub sandbox: &'a SandboxNamespaces,
    /// Hostname (the pod's); set in the spec unless the UTS namespace is the host's.
    pub hostname: &'a str,
    /// The container's cgroup, relative to the cgroup2 root (`/keelson/burstable/pod<uid>/<id>`).
    pub cgroups_path: &'a Path,
    /// Whether cgroup limits apply; `false` on hybrid hosts: no `linux.resources` at all.
    pub cgroup_limits: bool,
    /// The pod's shared files.
    pub etc_files: &'a EtcFiles,
}

/// A process to exec in a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecProcess {
    /// Command and arguments (required).
    pub args: Vec<String>,
    /// Extra environment, overriding the container's by name.
    pub env: Vec<(String, String)>,
    /// Allocate a terminal.
    pub tty: bool,
}

/// `PATH` when the image sets none (containerd's and Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The container's `RLIMIT_NOFILE`, before clamping to this process's hard limit.
pub const NOFILE_LIMIT: u64 = 1024;

/// Paths masked with `/dev/null` or an empty tmpfs (containerd's list).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths mounted read-only (containerd's list).
pub const READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// What [`build`] needs to know about the process that will start the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// This process's `RLIMIT_NOFILE` hard limit: the container's limit never exceeds it.
    pub nofile_hard: u64,
    /// This process's capability bounding set: the most a container can get.
    pub bounding: Capabilities,
}

impl HostFacts {
    /// The facts of the calling process.
    pub fn current() -> Result<Self> {
        let nofile_hard =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_err(Error::Rlimit)?
                .1;
        Ok(Self { nofile_hard, bounding: caps::current_bounding()? })
    }
}

/// Builds the OCI runtime spec of a container, for the calling process's limits and
/// capabilities ([`HostFacts::current`]).
pub fn build(input: &SpecInput<'_>) -> Result<Spec> {
    build_with_host(input, &HostFacts::current()?)
}

/// [`build`] with the host facts given (for tests, or to compute them once).
pub fn build_with_host(input: &SpecInput<'_>, host: &HostFacts) -> Result<Spec> {
    let c = input.container;
    let sec = &c.security;
    let privileged = sec.privileged;

    let args = process_args(c, input.image)?;
    let env = process_env(input.image.env().as_deref().unwrap_or_default(), input.hostname, &c.env);
    let cwd = working_dir(c, input.image)?;

    let db = user::UserDb::read(input.rootfs)?;
    let image_user = input.image.user().as_deref().unwrap_or("");
    let resolved =
        db.resolve(image_user, sec.run_as_user, sec.run_as_group, &sec.supplemental_groups)?;
    let user = UserBuilder::default()
        .uid(resolved.uid)
        .gid(resolved.gid)
        .additional_gids(resolved.additional_gids)
        .build()
        .map_err(oci("process.user"))?;

    let bounding = caps::effective_set(&sec.capabilities, privileged, &host.bounding)?;
    let no_new_privileges = match sec.allow_privilege_escalation {
        Some(allow) => !allow,
        None => !(privileged || seccomp::has_sys_admin(&bounding)),
    };

    let nofile = NOFILE_LIMIT.min(host.nofile_hard);
    let rlimit: PosixRlimit = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(nofile)
        .hard(nofile)
        .build()
        .map_err(oci("process.rlimits"))?;

    let process = ProcessBuilder::default()
        .terminal(c.tty)
        .user(user)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(caps::process_capabilities(&bounding))
        .rlimits(vec![rlimit])
        .no_new_privileges(no_new_privileges)
        .build()
        .map_err(oci("process"))?;

    let root = RootBuilder::default()
        .path(input.rootfs)
        .readonly(sec.read_only_root_filesystem)
        .build()
        .map_err(oci("root"))?;

    let mounts = mounts(input)?;

    // oci-spec's builders start from its own defaults (default masked paths, an empty
    // resources section, …): set every field we rely on explicitly.
    let mut linux = LinuxBuilder::default().build().map_err(oci("linux"))?;
    linux.set_namespaces(Some(namespaces(input.sandbox)?));
    linux.set_cgroups_path(Some(input.cgroups_path.to_owned()));
    let mut devices = default_devices()?;
    if privileged {
        // Privileged containers see the host's devices, as with containerd.
        let host = host_devices(Path::new("/dev"))?;
        devices.retain(|d| !host.iter().any(|h| h.path() == d.path()));
        devices.extend(host);
    }
    linux.set_devices(Some(devices));
    let (masked, readonly) = if privileged {
        (None, None)
    } else {
        (
            Some(MASKED_PATHS.iter().map(|s| s.to_string()).collect()),
            Some(READONLY_PATHS.iter().map(|s| s.to_string()).collect()),
        )
    };
    linux.set_masked_paths(masked);
    linux.set_readonly_paths(readonly);
    linux.set_seccomp(seccomp::for_container(&sec.seccomp, privileged, &bounding)?);
    linux.set_resources(if input.cgroup_limits {
        Some(resources(&c.resources, privileged)?)
    } else {
        None
    });
    linux.set_rootfs_propagation(rootfs_propagation(&c.mounts).map(str::to_owned));
    linux.set_sysctl(None);
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(oci("spec"))?;
    // libcontainer refuses a hostname without a UTS namespace.
    let hostname = (input.sandbox.uts != NamespaceMode::Host).then(|| input.hostname.to_owned());
    spec.set_hostname(hostname);
    spec.set_annotations(None);
    Ok(spec)
}

/// The process of an exec in a running container: the exec's args, tty and extra env; user,
/// cwd, capabilities, rlimits and `no_new_privs` of the container's process.
pub fn build_exec_process(container_spec: &Spec, exec: &ExecProcess) -> Result<Process> {
    if exec.args.is_empty() {
        return Err(Error::EmptyExec);
    }
    let mut process = container_spec.process().clone().ok_or(Error::NoProcess)?;
    process.set_args(Some(exec.args.clone()));
    process.set_terminal(Some(exec.tty));
    process.set_console_size(None);
    let base = process.env().clone().unwrap_or_default();
    let mut env = EnvList::default();
    for kv in &base {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        env.set(k, v);
    }
    for (k, v) in &exec.env {
        env.set(k, v);
    }
    process.set_env(Some(env.into_vec()));
    Ok(process)
}

/// Kubernetes' rule: `command` replaces ENTRYPOINT (and drops CMD), `args` replace CMD.
fn process_args(c: &ContainerConfig, image: &oci_spec::image::Config) -> Result<Vec<String>> {
    let entrypoint = image.entrypoint().clone().unwrap_or_default();
    let cmd = image.cmd().clone().unwrap_or_default();
    let mut args = if !c.command.is_empty() { c.command.clone() } else { entrypoint };
    if !c.args.is_empty() {
        args.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        args.extend(cmd);
    }
    if args.is_empty() || args[0].is_empty() {
        return Err(Error::NothingToRun { container: c.name.clone() });
    }
    Ok(args)
}

/// An ordered environment where a later `set` of a name replaces the value in place.
#[derive(Debug, Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.0.push((key.to_owned(), value.to_owned())),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    fn into_vec(self) -> Vec<String> {
        self.0.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// Image env, then `HOSTNAME`, then the container's env by name; `PATH` if nobody set it.
fn process_env(
    image_env: &[String],
    hostname: &str,
    container_env: &[(String, String)],
) -> Vec<String> {
    let mut env = EnvList::default();
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !k.is_empty() {
            env.set(k, v);
        }
    }
    env.set("HOSTNAME", hostname);
    for (k, v) in container_env.iter().filter(|(k, _)| !k.is_empty()) {
        env.set(k, v);
    }
    if !env.contains("PATH") {
        env.0.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    env.into_vec()
}

fn working_dir(c: &ContainerConfig, image: &oci_spec::image::Config) -> Result<PathBuf> {
    let dir = c
        .working_dir
        .as_deref()
        .filter(|d| !d.is_empty())
        .or(image.working_dir().as_deref().filter(|d| !d.is_empty()))
        .unwrap_or("/");
    if !dir.starts_with('/') {
        return Err(Error::RelativeWorkingDir { container: c.name.clone(), dir: dir.to_owned() });
    }
    Ok(PathBuf::from(dir))
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    let b = match path {
        Some(p) => b.path(p),
        None => b,
    };
    b.build().map_err(oci("linux.namespaces"))
}

fn namespaces(sandbox: &SandboxNamespaces) -> Result<Vec<LinuxNamespace>> {
    let mut out = vec![
        namespace(LinuxNamespaceType::Mount, None)?,
        namespace(LinuxNamespaceType::Cgroup, None)?,
    ];
    for (typ, mode) in [
        (LinuxNamespaceType::Pid, &sandbox.pid),
        (LinuxNamespaceType::Network, &sandbox.network),
        (LinuxNamespaceType::Ipc, &sandbox.ipc),
        (LinuxNamespaceType::Uts, &sandbox.uts),
    ] {
        match mode {
            NamespaceMode::Host => {}
            NamespaceMode::New => out.push(namespace(typ, None)?),
            NamespaceMode::Join(path) => out.push(namespace(typ, Some(path))?),
        }
    }
    Ok(out)
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(oci("mounts"))
}

fn propagation_option(p: MountPropagation) -> &'static str {
    match p {
        MountPropagation::Private => "rprivate",
        MountPropagation::HostToContainer => "rslave",
        MountPropagation::Bidirectional => "rshared",
    }
}

/// containerd: `rshared` if any mount is bidirectional, else `rslave` if any receives host
/// mounts; otherwise libcontainer's default (rprivate after pivot).
fn rootfs_propagation(mounts: &[crate::config::Mount]) -> Option<&'static str> {
    if mounts.iter().any(|m| m.propagation == MountPropagation::Bidirectional) {
        Some("rshared")
    } else if mounts.iter().any(|m| m.propagation == MountPropagation::HostToContainer) {
        Some("rslave")
    } else {
        None
    }
}

fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>> {
    let c = input.container;
    let privileged = c.security.privileged;
    let read_only_rootfs = c.security.read_only_root_filesystem;

    for m in &c.mounts {
        if !m.host_path.is_absolute() || !m.container_path.is_absolute() {
            return Err(Error::RelativeMount {
                container: c.name.clone(),
                host: m.host_path.clone(),
                target: m.container_path.clone(),
            });
        }
    }
    let user_targets: HashSet<PathBuf> =
        c.mounts.iter().map(|m| normalize(&m.container_path)).collect();

    let mut out = vec![
        mount("/proc", "proc", Path::new("proc"), &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
    ];
    let shm_ro = if read_only_rootfs { "ro" } else { "rw" };
    out.push(match (&input.sandbox.ipc, &input.etc_files.shm) {
        (NamespaceMode::Host, _) => {
            mount("/dev/shm", "bind", Path::new("/dev/shm"), &["rbind", "rprivate", "rw"])?
        }
        (_, Some(shm)) => mount(
            "/dev/shm",
            "bind",
            shm,
            &["rbind", "rprivate", "nosuid", "nodev", "noexec", shm_ro],
        )?,
        (_, None) => mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
    });
    out.push(mount("/dev/mqueue", "mqueue", Path::new("mqueue"), &["nosuid", "noexec", "nodev"])?);
    let sys_mode = if privileged { "rw" } else { "ro" };
    out.push(mount("/sys", "sysfs", Path::new("sysfs"), &["nosuid", "noexec", "nodev", sys_mode])?);
    out.push(mount(
        "/sys/fs/cgroup",
        "cgroup2",
        Path::new("cgroup"),
        &["nosuid", "noexec", "nodev", "relatime", sys_mode],
    )?);

    let etc_mode = if read_only_rootfs { "ro" } else { "rw" };
    for (target, host) in [
        ("/etc/hosts", &input.etc_files.hosts),
        ("/etc/resolv.conf", &input.etc_files.resolv_conf),
        ("/etc/hostname", &input.etc_files.hostname),
    ] {
        if let Some(host) = host {
            out.push(mount(target, "bind", host, &["rbind", "rprivate", etc_mode])?);
        }
    }

    // A container mount replaces a default mount at the same place.
    out.retain(|m| !user_targets.contains(&normalize(m.destination())));

    // Parents before children, otherwise in the container's order.
    let mut user: Vec<&crate::config::Mount> = c.mounts.iter().collect();
    user.sort_by_key(|m| normalize(&m.container_path).components().count());
    for m in user {
        let mode = if m.read_only { "ro" } else { "rw" };
        out.push(
            MountBuilder::default()
                .destination(&m.container_path)
                .typ("bind")
                .source(&m.host_path)
                .options(vec![
                    "rbind".to_owned(),
                    propagation_option(m.propagation).to_owned(),
                    mode.to_owned(),
                ])
                .build()
                .map_err(oci("mounts"))?,
        );
    }
    Ok(out)
}

/// Lexical normalization for comparing mount targets (`/a/./b/` equals `/a/b`).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The character devices every container gets; `/dev/ptmx` comes from devpts.
const DEFAULT_DEVICES: [(&str, i64, i64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn default_devices() -> Result<Vec<LinuxDevice>> {
    DEFAULT_DEVICES
        .iter()
        .map(|&(path, major, minor)| {
            LinuxDeviceBuilder::default()
                .path(path)
                .typ(LinuxDeviceType::C)
                .major(major)
                .minor(minor)
                .file_mode(0o666u32)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(oci("linux.devices"))
        })
        .collect()
}

/// Directories of `/dev` that are per-container mounts or not devices (runc's list).
const HOST_DEV_SKIP: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The character and block devices under `dir` (the host's `/dev`), without `console` and
/// `ptmx` (the container gets its own from devpts) and without symlinks.
pub fn host_devices(dir: &Path) -> Result<Vec<LinuxDevice>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::HostDevices { path, source }
    };
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            // A subdirectory that vanished meanwhile (hotplug) or that we may not read is
            // skipped; only the top directory must be listable.
            Err(e)
                if d != dir
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    ) =>
            {
                continue
            }
            other => other.map_err(err(&d))?,
        };
        for entry in entries {
            let entry = entry.map_err(err(&d))?;
            let path = entry.path();
            let name = entry.file_name();
            let meta = match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other.map_err(err(&path))?,
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                if !HOST_DEV_SKIP.iter().any(|s| name == *s) {
                    stack.push(path);
                }
                continue;
            }
            if d == dir && (name == "console" || name == "ptmx") {
                continue;
            }
            let typ = if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            let rdev = meta.rdev();
            let major = i64::try_from(nix::sys::stat::major(rdev)).unwrap_or(i64::MAX);
            let minor = i64::try_from(nix::sys::stat::minor(rdev)).unwrap_or(i64::MAX);
            out.push(
                LinuxDeviceBuilder::default()
                    .path(path)
                    .typ(typ)
                    .major(major)
                    .minor(minor)
                    .file_mode(meta.mode() & 0o7777)
                    .uid(meta.uid())
                    .gid(meta.gid())
                    .build()
                    .map_err(oci("linux.devices"))?,
            );
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup> {
    let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).access(access);
    if let Some(t) = typ {
        b = b.typ(t);
    }
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build().map_err(oci("linux.resources.devices"))
}

/// Device cgroup rules: deny all, then mknod of any node, the default devices, ptmx and ptys.
fn device_rules(privileged: bool) -> Result<Vec<LinuxDeviceCgroup>> {
    if privileged {
        return Ok(vec![device_rule(true, Some(LinuxDeviceType::A), None, None, "rwm")?]);
    }
    let mut rules = vec![
        device_rule(false, Some(LinuxDeviceType::A), None, None, "rwm")?,
        device_rule(true, Some(LinuxDeviceType::C), None, None, "m")?,
        device_rule(true, Some(LinuxDeviceType::B), None, None, "m")?,
    ];
    for &(_, major, minor) in &DEFAULT_DEVICES {
        rules.push(device_rule(true, Some(LinuxDeviceType::C), Some(major), Some(minor), "rwm")?);
    }
    rules.push(device_rule(true, Some(LinuxDeviceType::C), Some(5), Some(2), "rwm")?); // /dev/ptmx
    rules.push(device_rule(true, Some(LinuxDeviceType::C), Some(136), None, "rwm")?); // /dev/pts/*
    Ok(rules)
}

/// `linux.resources` like the kubelet asks of containerd.
fn resources(r: &Resources, privileged: bool) -> Result<LinuxResources> {
    // The API server defaults a missing request to the limit.
    let request = r.cpu_request_millis.or(r.cpu_limit_millis).unwrap_or(0);
    let mut cpu = LinuxCpuBuilder::default().shares(convert::millicores_to_shares(request));
    if let Some(limit) = r.cpu_limit_millis {
        cpu = cpu.quota(convert::millicores_to_quota(limit)).period(convert::CPU_PERIOD_US);
    }
    let mut b = LinuxResourcesBuilder::default()
        .cpu(cpu.build().map_err(oci("linux.resources.cpu"))?)
        .devices(device_rules(privileged)?);
    if let Some(limit) = r.memory_limit_bytes {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .map_err(oci("linux.resources.memory"))?,
        );
    }
    if let Some(pids) = r.pids_limit {
        let pids = i64::try_from(pids).unwrap_or(i64::MAX);
        b = b.pids(
            LinuxPidsBuilder::default().limit(pids).build().map_err(oci("linux.resources.pids"))?,
        );
    }
    b.build().map_err(oci("linux.resources"))
}

/// Adapts a spec for libcontainer 0.7 before it creates the container:
/// - swaps the operands of masked seccomp comparisons, which libcontainer reads the other way
///   round from runc (see [`seccomp::swap_masked_eq_for_libcontainer`]; without it, `clone`
///   with namespace flags is allowed under RuntimeDefault);
/// - writes `noNewPrivileges: false` as absent (the spec's default): libcontainer decides when
///   to load the seccomp filter by whether the field is present, not by its value, and with
///   `false` present it loads the filter after dropping CAP_SYS_ADMIN, which the kernel refuses.
///
/// libcontainer reads `<bundle>/config.json`: write the adapted spec there, and the unadapted
/// one wherever runc or crun will read it.
pub fn adapt_for_libcontainer(spec: &mut Spec) {
    if let Some(process) = spec.process_mut() {
        if process.no_new_privileges() == Some(false) {
            process.set_no_new_privileges(None);
        }
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(seccomp) = linux.seccomp_mut() {
            seccomp::swap_masked_eq_for_libcontainer(seccomp);
        }
    }
}

/// The bounding set a built spec carries (empty when it has none).
pub fn bounding_set(spec: &Spec) -> Capabilities {
    spec.process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
