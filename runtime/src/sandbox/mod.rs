//! [`ShimRuntime`]: the [`Runtime`] implementation, one `keelson-shim` per sandbox.
//!
//! Layout (all paths injected through [`RuntimeConfig`]):
//! - `<state_dir>/sandboxes/<id>/`: `sandbox.json` and `records/` (the runtime's, see
//!   [`records`]), `shim.json` and `containers/` (the shim's), `lc/` (libcontainer's state),
//!   `bundles/<container>/` (`config.json`, the rootfs mount point, exec `process.json`s),
//!   `shm/` (the pod's `/dev/shm` tmpfs), `hostname` and `hosts`.
//! - `<run_dir>/<id>.sock`: the shim's socket. `<netns_dir>/<id>`: the pinned netns.
//! - `<log_root>/<ns>_<pod>_<uid>/<container>/<restart>.log`: CRI logs, written by the shim.
//!
//! Restart safety: nothing lives only in this process. [`ShimRuntime::new`] lists the state
//! dir, reconnects to every shim and re-subscribes to its events; containers keep running
//! untouched, and exits that happened meanwhile are in the shim's records.
//!
//! Events: one subscription connection per shim, opened before the sandbox is returned, so
//! no container event can be missed; a closed subscription means the shim is gone and
//! yields [`RuntimeEvent::SandboxNotReady`].

mod client;
mod logs;
mod records;
mod stdio;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use keelson_shim_proto::state::{
    ContainerState as ShimContainerState, ContainerStatus as ShimStatus,
};
use keelson_shim_proto::{CreateRequest, Event, ExecRequest, Request, Response, ShimConfig};
use tokio::sync::broadcast;

use self::client::{unexpected, ShimClient};
use self::records::{ContainerRecord, SandboxRecord};
use crate::api::*;
use crate::cgroup::{CgroupFs, CgroupSetup, Layout, PodCgroup, RealCgroupFs};
use crate::config::{ContainerConfig, ContainerId, SandboxConfig, SandboxId, StopOptions};
use crate::network::PodNetwork;
use crate::spec::{self, EtcFiles, NamespaceMode, SandboxNamespaces, SpecInput};

/// Where the runtime keeps things, and how it finds the shim.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The `keelson-shim` binary.
    pub shim_path: PathBuf,
    /// Sandbox state (`/run/keelson`): must not survive a reboot, shims do not either.
    pub state_dir: PathBuf,
    /// Shim sockets (`/run/keelson/shims`).
    pub run_dir: PathBuf,
    /// Pinned network namespaces (`/run/keelson/netns`).
    pub netns_dir: PathBuf,
    /// Root of the pods' CRI logs (`/var/log/pods`).
    pub log_root: PathBuf,
    /// cgroup placement; `None` runs containers without a cgroup of Keelson's choosing
    /// (libcontainer's default), for tests only.
    pub cgroup: Option<CgroupConfig>,
    /// A file for the shims' own diagnostics (appended to by every shim).
    pub shim_log: Option<PathBuf>,
}

/// Where pods go in the cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupConfig {
    /// The host's layout (detected with [`crate::cgroup::detect_host`]).
    pub setup: CgroupSetup,
    /// Keelson's tree in it.
    pub layout: Layout,
}

impl RuntimeConfig {
    /// The production layout, with the shim found next to the current executable.
    pub fn system() -> Result<Self> {
        let exe = std::env::current_exe().map_err(|source| Error::Io {
            op: "find current executable",
            path: PathBuf::new(),
            source,
        })?;
        let shim_path = exe.with_file_name("keelson-shim");
        let setup = crate::cgroup::detect_host()?;
        Ok(Self {
            shim_path,
            state_dir: "/run/keelson".into(),
            run_dir: "/run/keelson/shims".into(),
            netns_dir: "/run/keelson/netns".into(),
            log_root: "/var/log/pods".into(),
            cgroup: Some(CgroupConfig { setup, layout: Layout::default() }),
            shim_log: Some("/run/keelson/shim.log".into()),
        })
    }
}

struct Sandbox {
    record: SandboxRecord,
    client: ShimClient,
    ready: bool,
}

struct Inner {
    cfg: RuntimeConfig,
    network: Arc<dyn PodNetwork>,
    events: broadcast::Sender<RuntimeEvent>,
    sandboxes: Mutex<BTreeMap<SandboxId, Sandbox>>,
    containers: Mutex<BTreeMap<ContainerId, ContainerRecord>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Compiled seccomp programs, shared by every container with the same profile.
    filters: spec::filter::FilterCache,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().map(std::mem::take).unwrap_or_default() {
            t.abort();
        }
    }
}

/// The runtime: sandboxes held by `keelson-shim` processes.
#[derive(Clone)]
pub struct ShimRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShimRuntime").field("cfg", &self.inner.cfg).finish_non_exhaustive()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_owned(), source }
}

fn time_of(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn remove_dir_all_quiet(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", p)(e)),
    }
}

fn unmount_quiet(p: &Path) {
    match nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(path = %p.display(), error = %e, "unmount"),
    }
}

/// Refuses what this runtime cannot do faithfully rather than doing something else.
fn check_sandbox_config(id: &SandboxId, c: &SandboxConfig) -> Result<()> {
    let refuse =
        |reason: String| Err(Error::InvalidState { what: "sandbox", id: id.to_string(), reason });
    if c.share_process_namespace {
        return refuse("shareProcessNamespace is not supported yet".into());
    }
    for key in c.sysctls.keys() {
        let net = key.starts_with("net.");
        let ipc = key.starts_with("kernel.shm")
            || key.starts_with("kernel.msg")
            || key == "kernel.sem"
            || key.starts_with("fs.mqueue.");
        let bad_name = key.is_empty()
            || key.contains('/')
            || key.split('.').any(|p| p.is_empty() || p == "..");
        if bad_name || !(net || ipc) {
            return refuse(format!("sysctl {key} is not namespaced"));
        }
        if (net && c.host_namespaces.network) || (ipc && c.host_namespaces.ipc) {
            return refuse(format!("sysctl {key} would change the host's namespace"));
        }
    }
    Ok(())
}

/// Parses an image's `StopSignal` (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok().map(|s| s as i32);
    }
    let name = s.trim().to_ascii_uppercase();
    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
    // Real-time signals (systemd images stop with SIGRTMIN+3) are not in nix's enum.
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let n = match rest {
            "" => base,
            r => base.checked_add(r.parse::<i32>().ok()?)?,
        };
        (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        return rt(libc::SIGRTMIN(), rest);
    }
    if let Some(rest) = name.strip_prefix("SIGRTMAX") {
        return rt(libc::SIGRTMAX(), rest);
    }
    name.parse::<nix::sys::signal::Signal>().ok().map(|s| s as i32)
}

impl ShimRuntime {
    /// Opens the runtime on its state dir and re-adopts every sandbox found there.
    pub async fn new(cfg: RuntimeConfig, network: Arc<dyn PodNetwork>) -> Result<Self> {
        for d in [cfg.state_dir.join("sandboxes"), cfg.run_dir.clone(), cfg.netns_dir.clone()] {
            std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        let (events, _) = broadcast::channel(1024);
        let filters = spec::filter::FilterCache::new(cfg.state_dir.join("seccomp"));
        let rt = Self {
            inner: Arc::new(Inner {
                filters,
                cfg,
                network,
                events,
                sandboxes: Mutex::new(BTreeMap::new()),
                containers: Mutex::new(BTreeMap::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        rt.recover().await?;
        if let Some(cg) = &rt.inner.cfg.cgroup {
            if let CgroupSetup::Hybrid { unified_root } = &cg.setup {
                tracing::warn!(
                    cgroup2 = %unified_root.display(),
                    "hybrid cgroup layout: pods are placed in the cgroup2 tree for accounting only, resource limits are OFF"
                );
            }
        }
        Ok(rt)
    }

    fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.inner.cfg.state_dir.join("sandboxes").join(id.as_str())
    }

    async fn recover(&self) -> Result<()> {
        let root = self.inner.cfg.state_dir.join("sandboxes");
        let rd = std::fs::read_dir(&root).map_err(io_err("list", &root))?;
        for e in rd.flatten() {
            let dir = e.path();
            let file = records::sandbox_file(&dir);
            if !file.exists() {
                // A creation that never finished: the shim, if any, is ours to stop.
                tracing::warn!(dir = %dir.display(), "sandbox directory without sandbox.json, left alone");
                continue;
            }
            let record: SandboxRecord = match keelson_shim_proto::state::read(&file) {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!(error = %err, "unreadable sandbox record, skipped");
                    continue;
                }
            };
            let client = ShimClient { sandbox: record.id.clone(), socket: record.socket.clone() };
            let id = record.id.clone();
            let ready = !record.stopped && self.subscribe(&client).await.is_ok();
            for c in records::read_records(&dir)? {
                lock(&self.inner.containers).insert(c.id.clone(), c);
            }
            tracing::info!(sandbox = %id, ready, "re-adopted sandbox");
            lock(&self.inner.sandboxes).insert(id, Sandbox { record, client, ready });
        }
        Ok(())
    }

    /// Opens the event subscription of a shim and forwards its events.
    async fn subscribe(&self, client: &ShimClient) -> Result<()> {
        let mut conn = client.subscribe().await?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let sandbox = client.sandbox.clone();
        let h = tokio::spawn(async move {
            loop {
                let ev = conn.next_event().await;
                let Some(inner) = weak.upgrade() else { return };
                let ev = match ev {
                    Ok(Some(ev)) => ev,
                    Ok(None) | Err(_) => {
                        if let Some(s) = lock(&inner.sandboxes).get_mut(&sandbox) {
                            s.ready = false;
                        }
                        let _ = inner
                            .events
                            .send(RuntimeEvent::SandboxNotReady { id: sandbox.clone() });
                        return;
                    }
                };
                let cid = |s: &str| ContainerId::new(s).ok();
                let out = match ev {
                    Event::Started { id, pid } => cid(&id).map(|id| {
                        RuntimeEvent::ContainerStarted { id, sandbox: sandbox.clone(), pid }
                    }),
                    Event::Exited { id, exit } => {
                        cid(&id).map(|id| RuntimeEvent::ContainerExited {
                            id,
                            sandbox: sandbox.clone(),
                            exit: ExitInfo {
                                code: exit.code,
                                signal: exit.signal,
                                oom_killed: exit.oom_killed,
                            },
                        })
                    }
                    Event::OomKilled { id } => cid(&id).map(|id| {
                        RuntimeEvent::ContainerOomKilled { id, sandbox: sandbox.clone() }
                    }),
                    Event::ExecExited { .. } => None,
                };
                if let Some(out) = out {
                    let _ = inner.events.send(out);
                }
            }
        });
        lock(&self.inner.tasks).push(h.abort_handle());
        Ok(())
    }

    fn sandbox(&self, id: &SandboxId) -> Result<(SandboxRecord, ShimClient, bool)> {
        let g = lock(&self.inner.sandboxes);
        let s = g.get(id).ok_or_else(|| Error::SandboxNotFound(id.clone()))?;
        Ok((s.record.clone(), s.client.clone(), s.ready))
    }

    fn ready_sandbox(&self, id: &SandboxId) -> Result<(SandboxRecord, ShimClient)> {
        let (r, c, ready) = self.sandbox(id)?;
        if !ready {
            return Err(Error::SandboxNotReady(id.clone()));
        }
        Ok((r, c))
    }

    fn container(&self, id: &ContainerId) -> Result<ContainerRecord> {
        lock(&self.inner.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ContainerNotFound(id.clone()))
    }

    fn container_client(&self, id: &ContainerId) -> Result<(ContainerRecord, ShimClient)> {
        let rec = self.container(id)?;
        let (_, client) = self.ready_sandbox(&rec.sandbox_id)?;
        Ok((rec, client))
    }

    /// Whether a sandbox other than `id` uses the pod cgroup `path`.
    fn pod_cgroup_shared(&self, id: &SandboxId, path: &Path) -> bool {
        lock(&self.inner.sandboxes)
            .values()
            .any(|s| &s.record.id != id && s.record.cgroup_path.as_deref() == Some(path))
    }

    /// After a creation that failed before the sandbox was recorded: removes the pod cgroup
    /// it may have created, unless another sandbox of the pod uses it.
    fn remove_unshared_pod_cgroup(&self, id: &SandboxId, config: &SandboxConfig) {
        let (Some(cg), Some(root)) = (&self.inner.cfg.cgroup, self.v2_root()) else { return };
        let Ok(path) = cg.layout.pod_dir(config.qos, &config.pod.uid) else { return };
        if self.pod_cgroup_shared(id, &path) {
            return;
        }
        let fs = RealCgroupFs::new(root);
        if let Err(e) = (PodCgroup { path, limits: false }).remove(&fs) {
            tracing::warn!(sandbox = %id, error = %e, "remove pod cgroup after failed creation");
        }
    }

    fn v2_root(&self) -> Option<&Path> {
        self.inner.cfg.cgroup.as_ref().and_then(|c| c.setup.v2_root())
    }

    /// Starts a shim and waits for its readiness line.
    fn spawn_shim(&self, id: &SandboxId, cfg: &ShimConfig) -> Result<i32> {
        let fail = |message: String| Error::ShimStart { sandbox: id.clone(), message };
        let json = serde_json::to_string(cfg).expect("shim configs always serialize");
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| fail(format!("pipe: {e}")))?;
        let wfd = w.as_raw_fd();
        let mut cmd = std::process::Command::new(&self.inner.cfg.shim_path);
        cmd.arg(json)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: the closure only calls dup2, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(wfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", self.inner.cfg.shim_path.display())))?;
        drop(w);
        let status = child.wait().map_err(|e| fail(format!("wait: {e}")))?;
        // One line (not "until EOF": a process that inherited the write end by accident must
        // not be able to hold us up).
        let mut line = String::new();
        std::io::BufReader::new(std::fs::File::from(r))
            .read_line(&mut line)
            .map_err(|e| fail(format!("read readiness: {e}")))?;
        let line = line.trim();
        match line.strip_prefix("ok ").and_then(|p| p.parse::<i32>().ok()) {
            Some(pid) => Ok(pid),
            None => Err(fail(match line.strip_prefix("error ") {
                Some(m) => m.to_owned(),
                None => format!("shim exited with {status} and no readiness line"),
            })),
        }
    }

    fn status_of(rec: &ContainerRecord, st: Option<&ShimContainerState>) -> ContainerStatus {
        let (state, pid, created, started, exit) = match st {
            Some(s) => {
                let state = match s.status {
                    ShimStatus::Created => ContainerState::Created,
                    ShimStatus::Running => ContainerState::Running,
                    ShimStatus::Exited => ContainerState::Exited,
                };
                let pid = if s.status == ShimStatus::Exited { None } else { s.pid };
                (state, pid, time_of(s.created_at_ns), s.started_at_ns.map(time_of), s.exit)
            }
            None => (ContainerState::Unknown, None, UNIX_EPOCH, None, None),
        };
        ContainerStatus {
            id: rec.id.clone(),
            sandbox_id: rec.sandbox_id.clone(),
            name: rec.config.name.clone(),
            image: rec.image.clone(),
            state,
            pid,
            created_at: created,
            started_at: started,
            finished_at: exit.map(|e| time_of(e.finished_at_ns)),
            exit_code: exit.map(|e| e.code),
            signal: exit.and_then(|e| e.signal),
            oom_killed: exit.is_some_and(|e| e.oom_killed),
            log_path: rec.log_path.clone(),
            restart_count: rec.config.restart_count,
            labels: rec.config.labels.clone(),
        }
    }

    async fn wait_exit(&self, client: &ShimClient, id: &ContainerId) -> Result<ShimContainerState> {
        match client.call("wait", &Request::Wait { id: id.to_string() }, &[]).await?.0 {
            Response::State(s) => Ok(s),
            other => Err(unexpected(&client.sandbox, "wait", &other)),
        }
    }

    async fn shim_state(
        &self,
        client: &ShimClient,
        id: &ContainerId,
    ) -> Result<ShimContainerState> {
        match client.call("state", &Request::State { id: id.to_string() }, &[]).await?.0 {
            Response::State(s) => Ok(s),
            other => Err(unexpected(&client.sandbox, "state", &other)),
        }
    }

    fn cleanup_container_files(&self, rec: &ContainerRecord) -> Result<()> {
        if rec.overlay {
            unmount_quiet(&rec.bundle.join("rootfs"));
        }
        remove_dir_all_quiet(&rec.bundle)?;
        let f = records::record_file(&self.sandbox_dir(&rec.sandbox_id), &rec.id);
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &f)(e)),
        }
        lock(&self.inner.containers).remove(&rec.id);
        Ok(())
    }

    fn write_etc_files(dir: &Path, hostname: &str, ips: &[std::net::IpAddr]) -> Result<()> {
        let hn = dir.join("hostname");
        std::fs::write(&hn, format!("{hostname}\n")).map_err(io_err("write", &hn))?;
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for ip in ips {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        let h = dir.join("hosts");
        std::fs::write(&h, hosts).map_err(io_err("write", &h))?;
        Ok(())
    }

    async fn create_sandbox_inner(
        &self,
        id: &SandboxId,
        config: &SandboxConfig,
        dir: &Path,
    ) -> Result<SandboxInfo> {
        check_sandbox_config(id, config)?;
        let host_net = config.host_namespaces.network;
        let netns_path = (!host_net).then(|| self.inner.cfg.netns_dir.join(id.as_str()));
        let (cgroup_path, limits, shim_cgroup) = match &self.inner.cfg.cgroup {
            Some(cg) => {
                let root = cg.setup.v2_root().ok_or_else(|| Error::InvalidState {
                    what: "sandbox",
                    id: id.to_string(),
                    reason: "the host has no cgroup2 hierarchy".into(),
                })?;
                let fs = RealCgroupFs::new(root);
                let limits = cg.setup.limits_enabled(&fs);
                let pod = PodCgroup::create(
                    &fs,
                    &cg.layout,
                    config.qos,
                    &config.pod.uid,
                    limits,
                    &config.resources,
                )?;
                (Some(pod.path.clone()), limits, Some(root.join(pod.shim())))
            }
            None => (None, false, None),
        };
        let over = match self.v2_root() {
            Some(r) if r != Path::new("/sys/fs/cgroup") => Some(r.to_owned()),
            _ => None,
        };
        let socket = self.inner.cfg.run_dir.join(format!("{id}.sock"));
        let shm = if config.host_namespaces.ipc {
            None
        } else {
            let p = dir.join("shm");
            std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
            nix::mount::mount(
                Some("shm"),
                &p,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                Some("mode=1777,size=65536k"),
            )
            .map_err(|e| io_err("mount tmpfs on", &p)(e.into()))?;
            Some(p)
        };
        let shim_cfg = ShimConfig {
            sandbox_id: id.to_string(),
            socket: socket.clone(),
            state_dir: dir.to_owned(),
            libcontainer_root: dir.join("lc"),
            netns_path: netns_path.clone(),
            hostname: config.hostname.clone(),
            new_ipc: !config.host_namespaces.ipc,
            cgroup_dir: shim_cgroup,
            cgroup2_mount_over: over,
            log_file: self.inner.cfg.shim_log.clone(),
            sysctls: config.sysctls.clone(),
        };
        let this = self.clone();
        let (id2, cfg2) = (id.clone(), shim_cfg.clone());
        let shim_pid =
            tokio::task::spawn_blocking(move || this.spawn_shim(&id2, &cfg2)).await.map_err(
                |e| Error::ShimStart { sandbox: id.clone(), message: format!("spawn task: {e}") },
            )??;
        let mut record = SandboxRecord {
            version: records::VERSION,
            id: id.clone(),
            config: config.clone(),
            created_at_ns: keelson_shim_proto::state::now_ns(),
            netns_path: netns_path.clone(),
            ips: Vec::new(),
            cgroup_path,
            cgroup_limits: limits,
            shim_pid,
            socket: socket.clone(),
            shm,
            stopped: false,
        };
        records::write(&records::sandbox_file(dir), &record)?;
        let client = ShimClient { sandbox: id.clone(), socket };
        lock(&self.inner.sandboxes).insert(
            id.clone(),
            Sandbox { record: record.clone(), client: client.clone(), ready: true },
        );
        self.subscribe(&client).await?;
        if let Some(ns) = &netns_path {
            let ips = self
                .inner
                .network
                .setup(id, ns, &config.pod)
                .await
                .map_err(|source| Error::Network { sandbox: id.clone(), source })?;
            record.ips = ips;
            records::write(&records::sandbox_file(dir), &record)?;
            if let Some(s) = lock(&self.inner.sandboxes).get_mut(id) {
                s.record.ips = record.ips.clone();
            }
        }
        Self::write_etc_files(dir, &config.hostname, &record.ips)?;
        let _ = self.inner.events.send(RuntimeEvent::SandboxReady { id: id.clone() });
        tracing::info!(sandbox = %id, pod = %config.pod.name, shim_pid, "sandbox ready");
        Ok(SandboxInfo { id: id.clone(), ips: record.ips, netns_path })
    }

    async fn create_container_inner(
        &self,
        sandbox: &SandboxId,
        cid: &ContainerId,
        config: &ContainerConfig,
        image: &ContainerImage,
        bundle: &Path,
    ) -> Result<ContainerRecord> {
        let (sb, client) = self.ready_sandbox(sandbox)?;
        let rootfs_dir = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs_dir).map_err(io_err("create", &rootfs_dir))?;
        let (rootfs, overlay) = match &image.rootfs {
            Rootfs::Directory(p) => (p.clone(), false),
            Rootfs::Overlay { lowerdirs, upperdir, workdir } => {
                let lower: Vec<String> =
                    lowerdirs.iter().map(|p| p.display().to_string()).collect();
                let opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.join(":"),
                    upperdir.display(),
                    workdir.display()
                );
                nix::mount::mount(
                    Some("overlay"),
                    &rootfs_dir,
                    Some("overlay"),
                    nix::mount::MsFlags::empty(),
                    Some(opts.as_str()),
                )
                .map_err(|e| io_err("mount overlay on", &rootfs_dir)(e.into()))?;
                (rootfs_dir.clone(), true)
            }
        };
        let sc = &sb.config;
        let proc_ns =
            |n: &str| NamespaceMode::Join(PathBuf::from(format!("/proc/{}/ns/{n}", sb.shim_pid)));
        let ns = SandboxNamespaces {
            network: match &sb.netns_path {
                Some(p) => NamespaceMode::Join(p.clone()),
                None => NamespaceMode::Host,
            },
            ipc: if sc.host_namespaces.ipc { NamespaceMode::Host } else { proc_ns("ipc") },
            uts: if sc.host_namespaces.network { NamespaceMode::Host } else { proc_ns("uts") },
            pid: if sc.host_namespaces.pid { NamespaceMode::Host } else { NamespaceMode::New },
        };
        let sdir = self.sandbox_dir(sandbox);
        let etc = EtcFiles {
            hosts: Some(sdir.join("hosts")),
            resolv_conf: None,
            hostname: Some(sdir.join("hostname")),
            shm: sb.shm.clone(),
        };
        let pod = sb
            .cgroup_path
            .as_ref()
            .map(|p| PodCgroup { path: p.clone(), limits: sb.cgroup_limits });
        let cgroups_path = match &pod {
            Some(p) => p.cgroups_path(cid),
            None => PathBuf::from(format!("/keelson-nocgroup/{cid}")),
        };
        let input = SpecInput {
            container: config,
            image: &image.config,
            rootfs: &rootfs,
            sandbox: &ns,
            hostname: &sc.hostname,
            cgroups_path: &cgroups_path,
            cgroup_limits: sb.cgroup_limits,
            etc_files: &etc,
        };
        let mut spec = spec::build(&input)?;
        // The seccomp program is compiled once per profile and loaded by the shim's executor
        // when it can be; otherwise libcontainer loads the profile, and it reads masked
        // comparisons the other way round from the spec. The bundle is only ever read by
        // libcontainer and the shim (create and exec).
        spec::filter::prepare_bundle_seccomp(&self.inner.filters, &mut spec, bundle)?;
        spec::adapt_for_libcontainer(&mut spec);
        let cfg_path = bundle.join("config.json");
        spec.save(&cfg_path)
            .map_err(|e| io_err("write", &cfg_path)(std::io::Error::other(e.to_string())))?;
        let log_dir = sc.log_directory.clone().unwrap_or_else(|| {
            self.inner
                .cfg
                .log_root
                .join(format!("{}_{}_{}", sc.pod.namespace, sc.pod.name, sc.pod.uid))
        });
        let log_path = log_dir.join(&config.name).join(format!("{}.log", config.restart_count));
        let cgroup_dir = match (self.v2_root(), &pod) {
            (Some(root), Some(p)) => Some(root.join(p.container(cid))),
            _ => None,
        };
        let stop_signal =
            image.config.stop_signal().as_deref().and_then(parse_signal).unwrap_or(libc::SIGTERM);
        let rec = ContainerRecord {
            version: records::VERSION,
            id: cid.clone(),
            sandbox_id: sandbox.clone(),
            config: config.clone(),
            image: image.reference.clone(),
            stop_signal,
            bundle: bundle.to_owned(),
            overlay,
            log_path: log_path.clone(),
            cgroup_dir: cgroup_dir.clone(),
        };
        records::write(&records::record_file(&sdir, cid), &rec)?;
        let req = CreateRequest {
            id: cid.to_string(),
            bundle: bundle.to_owned(),
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            log_path,
            log_max_size: config.log_rotation.max_size_bytes,
            log_max_files: config.log_rotation.max_files,
            cgroup_dir,
        };
        match client.call("create", &Request::Create(req), &[]).await?.0 {
            Response::Created { .. } => {
                if sb.cgroup_limits && config.resources.memory_limit_bytes.is_some() {
                    self.disable_swap(&rec)?;
                }
                Ok(rec)
            }
            other => Err(unexpected(sandbox, "create", &other)),
        }
    }

    /// Writes `memory.swap.max` = 0 to a created (not yet started) container's cgroup.
    ///
    /// The spec asks for no swap (`swap` = `limit`, OCI's memory+swap), but libcgroups 0.7
    /// converts that to a v2 value of 0 and skips writing 0 as if it meant "unset", which leaves
    /// swap unlimited; runc had the same bug and writes 0 (runc issue 2369). The VM tier
    /// (`tests/tests/vm_runtime.rs`) checks the file.
    fn disable_swap(&self, rec: &ContainerRecord) -> Result<()> {
        let (Some(root), Some(dir)) = (self.v2_root(), rec.cgroup_dir.as_ref()) else {
            return Ok(());
        };
        let fs = RealCgroupFs::new(root);
        let rel = dir.strip_prefix(root).unwrap_or(dir);
        if fs.has_file(rel, "memory.swap.max") {
            fs.write(rel, "memory.swap.max", "0")?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Runtime for ShimRuntime {
    async fn create_sandbox(&self, config: SandboxConfig) -> Result<SandboxInfo> {
        let id = SandboxId::random();
        let dir = self.sandbox_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        match self.create_sandbox_inner(&id, &config, &dir).await {
            Ok(info) => Ok(info),
            Err(e) => {
                // Undo whatever was done; the record (if written) goes with the directory.
                let known = lock(&self.inner.sandboxes).contains_key(&id);
                if known {
                    if let Err(e2) = self.remove_sandbox(&id).await {
                        tracing::warn!(sandbox = %id, error = %e2, "cleanup after failed creation");
                    }
                } else {
                    unmount_quiet(&dir.join("shm"));
                    let _ = remove_dir_all_quiet(&dir);
                    self.remove_unshared_pod_cgroup(&id, &config);
                }
                Err(e)
            }
        }
    }

    async fn stop_sandbox(&self, id: &SandboxId) -> Result<()> {
        let (mut record, client, ready) = self.sandbox(id)?;
        if ready {
            let ids: Vec<ContainerId> = lock(&self.inner.containers)
                .values()
                .filter(|c| &c.sandbox_id == id)
                .map(|c| c.id.clone())
                .collect();
            for cid in ids {
                let st = match self.shim_state(&client, &cid).await {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                if st.status != ShimStatus::Exited && st.pid.is_some() {
                    let _ = client
                        .call_ok(
                            "kill",
                            &Request::Kill { id: cid.to_string(), signal: libc::SIGKILL },
                        )
                        .await;
                    let _ = self.wait_exit(&client, &cid).await;
                }
            }
        }
        if let Some(ns) = &record.netns_path {
            self.inner
                .network
                .teardown(id, ns, &record.config.pod)
                .await
                .map_err(|source| Error::Network { sandbox: id.clone(), source })?;
        }
        if ready {
            // The shim answers and exits; a shim already gone is fine.
            let _ = client.call_ok("shutdown", &Request::Shutdown).await;
        }
        record.stopped = true;
        records::write(&records::sandbox_file(&self.sandbox_dir(id)), &record)?;
        if let Some(s) = lock(&self.inner.sandboxes).get_mut(id) {
            s.record.stopped = true;
            s.ready = false;
        }
        tracing::info!(sandbox = %id, "sandbox stopped");
        Ok(())
    }

    async fn remove_sandbox(&self, id: &SandboxId) -> Result<()> {
        let (record, _, _) = self.sandbox(id)?;
        if !record.stopped {
            self.stop_sandbox(id).await?;
        }
        let recs: Vec<ContainerRecord> = lock(&self.inner.containers)
            .values()
            .filter(|c| &c.sandbox_id == id)
            .cloned()
            .collect();
        for rec in &recs {
            self.cleanup_container_files(rec)?;
        }
        if let Some(p) = &record.netns_path {
            // The shim unpins at shutdown; a shim that died cannot have.
            unmount_quiet(p);
            let _ = std::fs::remove_file(p);
        }
        if let (Some(root), Some(path)) = (self.v2_root(), &record.cgroup_path) {
            let fs = RealCgroupFs::new(root);
            if self.pod_cgroup_shared(id, path) {
                // Another sandbox of the same pod (a re-created sandbox) lives in this pod
                // cgroup: remove only what was this sandbox's.
                for rec in &recs {
                    if let Some(dir) = &rec.cgroup_dir {
                        let rel = dir.strip_prefix(root).unwrap_or(dir);
                        if let Err(e) = fs.remove_dir(rel) {
                            tracing::warn!(container = %rec.id, error = %e, "remove container cgroup");
                        }
                    }
                }
            } else {
                PodCgroup { path: path.clone(), limits: record.cgroup_limits }.remove(&fs)?;
            }
        }
        if let Some(shm) = &record.shm {
            unmount_quiet(shm);
        }
        let _ = std::fs::remove_file(&record.socket);
        remove_dir_all_quiet(&self.sandbox_dir(id))?;
        lock(&self.inner.sandboxes).remove(id);
        tracing::info!(sandbox = %id, "sandbox removed");
        Ok(())
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>> {
        let ids: Vec<SandboxId> = lock(&self.inner.sandboxes).keys().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            out.push(self.sandbox_status(&id).await?);
        }
        Ok(out)
    }

    async fn sandbox_status(&self, id: &SandboxId) -> Result<SandboxStatus> {
        let (r, _, ready) = self.sandbox(id)?;
        Ok(SandboxStatus {
            id: r.id.clone(),
            pod: r.config.pod.clone(),
            state: if ready { SandboxState::Ready } else { SandboxState::NotReady },
            ips: r.ips.clone(),
            netns_path: r.netns_path.clone(),
            shim_pid: ready.then_some(r.shim_pid),
            created_at: time_of(r.created_at_ns),
        })
    }

    async fn create_container(
        &self,
        sandbox: &SandboxId,
        config: ContainerConfig,
        image: ContainerImage,
    ) -> Result<ContainerId> {
        let cid = ContainerId::random();
        let bundle = self.sandbox_dir(sandbox).join("bundles").join(cid.as_str());
        std::fs::create_dir_all(&bundle).map_err(io_err("create", &bundle))?;
        match self.create_container_inner(sandbox, &cid, &config, &image, &bundle).await {
            Ok(rec) => {
                lock(&self.inner.containers).insert(cid.clone(), rec);
                tracing::debug!(container = %cid, sandbox = %sandbox, name = %config.name, "container created");
                Ok(cid)
            }
            Err(e) => {
                let rec = ContainerRecord {
                    version: records::VERSION,
                    id: cid.clone(),
                    sandbox_id: sandbox.clone(),
                    config,
                    image: image.reference,
                    stop_signal: 0,
                    bundle,
                    overlay: matches!(image.rootfs, Rootfs::Overlay { .. }),
                    log_path: PathBuf::new(),
                    cgroup_dir: None,
                };
                let _ = self.cleanup_container_files(&rec);
                Err(e)
            }
        }
    }

    async fn start_container(&self, id: &ContainerId) -> Result<()> {
        let (_, client) = self.container_client(id)?;
        client.call_ok("start", &Request::Start { id: id.to_string() }).await
    }

    async fn stop_container(&self, id: &ContainerId, options: StopOptions) -> Result<()> {
        let (rec, client) = self.container_client(id)?;
        let st = self.shim_state(&client, id).await?;
        if st.status == ShimStatus::Exited {
            return Ok(());
        }
        // Subscribe to the exit before signalling, so the exit cannot slip between.
        let waiter = {
            let this = self.clone();
            let client = client.clone();
            let id = id.clone();
            tokio::spawn(async move { this.wait_exit(&client, &id).await })
        };
        let signal = if st.status == ShimStatus::Created { libc::SIGKILL } else { rec.stop_signal };
        if let Err(e) = client.call_ok("kill", &Request::Kill { id: id.to_string(), signal }).await
        {
            // It may have exited meanwhile.
            if self.shim_state(&client, id).await?.status != ShimStatus::Exited {
                waiter.abort();
                return Err(e);
            }
        }
        let mut waiter = waiter;
        match tokio::time::timeout(options.grace_period, &mut waiter).await {
            Ok(r) => {
                r.map_err(|e| Error::InvalidState {
                    what: "container",
                    id: id.to_string(),
                    reason: format!("wait task: {e}"),
                })??;
            }
            Err(_) => {
                tracing::debug!(container = %id, "grace period over, SIGKILL");
                let _ = client
                    .call_ok("kill", &Request::Kill { id: id.to_string(), signal: libc::SIGKILL })
                    .await;
                waiter.await.map_err(|e| Error::InvalidState {
                    what: "container",
                    id: id.to_string(),
                    reason: format!("wait task: {e}"),
                })??;
            }
        }
        Ok(())
    }

    async fn kill_container(&self, id: &ContainerId, signal: i32) -> Result<()> {
        let (_, client) = self.container_client(id)?;
        client.call_ok("kill", &Request::Kill { id: id.to_string(), signal }).await
    }

    async fn remove_container(&self, id: &ContainerId) -> Result<()> {
        let rec = self.container(id)?;
        let (_, client, ready) = self.sandbox(&rec.sandbox_id)?;
        if ready {
            let st = self.shim_state(&client, id).await?;
            if st.status != ShimStatus::Exited && st.pid.is_some() {
                if st.status == ShimStatus::Running {
                    return Err(Error::InvalidState {
                        what: "container",
                        id: id.to_string(),
                        reason: "still running".into(),
                    });
                }
                client
                    .call_ok("kill", &Request::Kill { id: id.to_string(), signal: libc::SIGKILL })
                    .await?;
                self.wait_exit(&client, id).await?;
            }
            client.call_ok("delete", &Request::Delete { id: id.to_string() }).await?;
        }
        self.cleanup_container_files(&rec)
    }

    async fn container_status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        let rec = self.container(id)?;
        let (_, client, ready) = self.sandbox(&rec.sandbox_id)?;
        let st = if ready { Some(self.shim_state(&client, id).await?) } else { None };
        Ok(Self::status_of(&rec, st.as_ref()))
    }

    async fn list_containers(&self, sandbox: Option<&SandboxId>) -> Result<Vec<ContainerStatus>> {
        let sids: Vec<SandboxId> = match sandbox {
            Some(s) => vec![s.clone()],
            None => lock(&self.inner.sandboxes).keys().cloned().collect(),
        };
        let mut out = Vec::new();
        for sid in sids {
            let (_, client, ready) = self.sandbox(&sid)?;
            let mut states: BTreeMap<String, ShimContainerState> = BTreeMap::new();
            if ready {
                match client.call("list", &Request::List, &[]).await?.0 {
                    Response::List { containers } => {
                        states = containers.into_iter().map(|c| (c.id.clone(), c)).collect();
                    }
                    other => return Err(unexpected(&sid, "list", &other)),
                }
            }
            let recs: Vec<ContainerRecord> = lock(&self.inner.containers)
                .values()
                .filter(|c| c.sandbox_id == sid)
                .cloned()
                .collect();
            for rec in recs {
                out.push(Self::status_of(&rec, states.get(rec.id.as_str())));
            }
        }
        Ok(out)
    }

    async fn container_stats(&self, id: &ContainerId) -> Result<ContainerStats> {
        let rec = self.container(id)?;
        let (Some(root), Some(dir)) = (self.v2_root(), rec.cgroup_dir.as_ref()) else {
            return Err(Error::InvalidState {
                what: "container",
                id: id.to_string(),
                reason: "no cgroup".into(),
            });
        };
        let rel = dir.strip_prefix(root).unwrap_or(dir);
        let fs = RealCgroupFs::new(root);
        let cgroup = crate::cgroup::read_stats(&fs, rel)?;
        Ok(ContainerStats { timestamp: SystemTime::now(), cgroup })
    }

    async fn exec(&self, id: &ContainerId, config: ExecConfig) -> Result<ExecSession> {
        let (rec, client) = self.container_client(id)?;
        let cfg_path = rec.bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&cfg_path)
            .map_err(|e| io_err("read", &cfg_path)(std::io::Error::other(e.to_string())))?;
        let process = spec::build_exec_process(
            &spec,
            &spec::ExecProcess {
                args: config.command.clone(),
                env: config.env.clone(),
                tty: config.tty,
            },
        )?;
        let exec_id = format!("{:016x}", rand::random::<u64>());
        let process_path = rec.bundle.join(format!("exec-{exec_id}.json"));
        let data =
            serde_json::to_vec(&process).map_err(|e| io_err("encode", &process_path)(e.into()))?;
        std::fs::write(&process_path, data).map_err(io_err("write", &process_path))?;
        let req = ExecRequest {
            container_id: id.to_string(),
            exec_id: exec_id.clone(),
            process_path: process_path.clone(),
            tty: config.tty,
            stdin: config.stdin && !config.tty,
        };
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| io_err("pipe", &process_path)(e.into()))
        };
        let mut theirs: Vec<OwnedFd> = Vec::new();
        let (mut stdin, mut stdout, mut stderr) = (None, None, None);
        if !config.tty {
            if req.stdin {
                let (r, w) = pipe()?;
                theirs.push(r);
                stdin = Some(stdio::pipe_writer(w).map_err(io_err("wrap pipe", &process_path))?);
            }
            let (r, w) = pipe()?;
            theirs.push(w);
            stdout = Some(stdio::pipe_reader(r).map_err(io_err("wrap pipe", &process_path))?);
            let (r, w) = pipe()?;
            theirs.push(w);
            stderr = Some(stdio::pipe_reader(r).map_err(io_err("wrap pipe", &process_path))?);
        }
        let borrowed: Vec<_> = theirs.iter().map(|f| f.as_fd()).collect();
        let result = client.call("exec", &Request::Exec(req), &borrowed).await;
        drop(borrowed);
        drop(theirs);
        let (resp, fds) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&process_path);
                return Err(e);
            }
        };
        let Response::Exec { pid } = resp else {
            return Err(unexpected(&client.sandbox, "exec", &resp));
        };
        let mut pty = None;
        if config.tty {
            let master = fds.into_iter().next().ok_or_else(|| Error::Shim {
                sandbox: client.sandbox.clone(),
                op: "exec",
                message: "no terminal came with the answer".into(),
            })?;
            let p = stdio::Pty::new(master).map_err(io_err("wrap terminal", &process_path))?;
            stdin = Some(Box::pin(p.clone()));
            stdout = Some(Box::pin(p.clone()));
            pty = Some(p);
        }
        Ok(ExecSession::new(
            stdin,
            stdout,
            stderr,
            pid,
            Box::new(ExecCtl { client, exec_id, pty, process_path, done: None }),
        ))
    }

    async fn attach(&self, id: &ContainerId) -> Result<AttachSession> {
        let (_, client) = self.container_client(id)?;
        let (resp, fds) =
            client.call("attach", &Request::Attach { id: id.to_string() }, &[]).await?;
        let Response::Attach { tty, stdin } = resp else {
            return Err(unexpected(&client.sandbox, "attach", &resp));
        };
        let want = 1 + usize::from(!tty) + usize::from(stdin);
        if fds.len() != want {
            return Err(Error::Shim {
                sandbox: client.sandbox.clone(),
                op: "attach",
                message: format!("expected {want} descriptors, got {}", fds.len()),
            });
        }
        let mut it = fds.into_iter();
        let p = PathBuf::from(format!("attach:{id}"));
        let stdout = stdio::pipe_reader(it.next().expect("counted above"))
            .map_err(io_err("wrap pipe", &p))?;
        let stderr = if tty {
            None
        } else {
            Some(
                stdio::pipe_reader(it.next().expect("counted above"))
                    .map_err(io_err("wrap pipe", &p))?,
            )
        };
        let stdin: Option<Writer> = match it.next() {
            Some(fd) if tty => {
                Some(Box::pin(stdio::Pty::new(fd).map_err(io_err("wrap terminal", &p))?))
            }
            Some(fd) => Some(stdio::pipe_writer(fd).map_err(io_err("wrap pipe", &p))?),
            None => None,
        };
        let cid = id.to_string();
        let resize_client = client.clone();
        Ok(AttachSession {
            stdin,
            stdout,
            stderr,
            tty,
            resize: Box::new(move |cols, rows| {
                let c = resize_client.clone();
                let id = cid.clone();
                Box::pin(
                    async move { c.call_ok("resize", &Request::Resize { id, cols, rows }).await },
                )
            }),
        })
    }

    async fn logs(&self, id: &ContainerId, options: LogOptions) -> Result<LogStream> {
        let rec = self.container(id)?;
        let path = rec.log_path.clone();
        let p2 = path.clone();
        let (entries, offset) =
            tokio::task::spawn_blocking(move || logs::read_all(&p2, options.tail)).await.map_err(
                |e| Error::Log { path: path.clone(), source: std::io::Error::other(e) },
            )??;
        let head = futures::stream::iter(entries.into_iter().map(Ok));
        if !options.follow {
            return Ok(Box::pin(head));
        }
        // Follow until the container has exited (and its output is drained, which the shim
        // does before it reports the exit): the waiter closes `done_w` then.
        let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err("pipe", &path)(e.into()))?;
        let (_, client, ready) = self.sandbox(&rec.sandbox_id)?;
        if !ready {
            drop(done_w);
        } else {
            let cid = id.clone();
            let this = self.clone();
            tokio::spawn(async move {
                let _ = this.wait_exit(&client, &cid).await;
                drop(done_w);
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::task::spawn_blocking(move || logs::follow(path, offset, tx, done_r));
        let tail = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Box::pin(head.chain(tail)))
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }
}

/// The agent holds the runtime as `Arc<dyn Runtime>`: this fails to compile if that breaks.
#[allow(dead_code)]
fn runtime_is_object_safe(r: ShimRuntime) -> Arc<dyn Runtime> {
    Arc::new(r)
}

struct ExecCtl {
    client: ShimClient,
    exec_id: String,
    pty: Option<stdio::Pty>,
    process_path: PathBuf,
    done: Option<ExitInfo>,
}

#[async_trait::async_trait]
impl ExecControl for ExecCtl {
    fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        match &self.pty {
            Some(p) => {
                p.resize(cols, rows).map_err(io_err("resize terminal of exec", &self.process_path))
            }
            None => Err(Error::InvalidState {
                what: "exec",
                id: self.exec_id.clone(),
                reason: "no terminal".into(),
            }),
        }
    }

    fn resizer(&self) -> crate::api::ExecResizer {
        let pty = self.pty.clone();
        let exec_id = self.exec_id.clone();
        let path = self.process_path.clone();
        std::sync::Arc::new(move |cols, rows| match &pty {
            Some(p) => p.resize(cols, rows).map_err(io_err("resize terminal of exec", &path)),
            None => Err(Error::InvalidState {
                what: "exec",
                id: exec_id.clone(),
                reason: "no terminal".into(),
            }),
        })
    }

    async fn wait(&mut self) -> Result<ExitInfo> {
        if let Some(d) = self.done {
            return Ok(d);
        }
        let resp = self
            .client
            .call("wait_exec", &Request::WaitExec { exec_id: self.exec_id.clone() }, &[])
            .await?
            .0;
        let Response::ExecExited { exit } = resp else {
            return Err(unexpected(&self.client.sandbox, "wait_exec", &resp));
        };
        let _ = std::fs::remove_file(&self.process_path);
        let info = ExitInfo { code: exit.code, signal: exit.signal, oom_killed: exit.oom_killed };
        self.done = Some(info);
        Ok(info)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::config::PodMeta;

    fn cfg() -> SandboxConfig {
        SandboxConfig::new(PodMeta::new("p", "n", "u"))
    }

    #[test]
    fn only_namespaced_sysctls_of_own_namespaces_are_accepted() {
        let id = SandboxId::new("s").unwrap();
        let mut c = cfg();
        c.sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        c.sysctls.insert("kernel.shmmax".into(), "1000".into());
        assert!(check_sandbox_config(&id, &c).is_ok());
        for bad in ["kernel.hostname", "vm.swappiness", "net..x", "net./../../etc"] {
            let mut c = cfg();
            c.sysctls.insert(bad.into(), "1".into());
            assert!(check_sandbox_config(&id, &c).is_err(), "{bad} accepted");
        }
        let mut c = cfg();
        c.host_namespaces.network = true;
        c.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        assert!(check_sandbox_config(&id, &c).is_err(), "host network sysctl accepted");
        let mut c = cfg();
        c.share_process_namespace = true;
        assert!(check_sandbox_config(&id, &c).is_err());
    }

    #[test]
    fn stop_signals_parse_in_every_spelling() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(libc::SIGRTMIN() + 3));
        assert_eq!(parse_signal("RTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(parse_signal("SIGRTMAX+1"), None);
        assert_eq!(parse_signal("9"), Some(libc::SIGKILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
