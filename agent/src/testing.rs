//! Fakes of the agent's boundaries for unit tests: an in-memory [`FakeRuntime`] whose
//! containers exit when the test says (or at start, with scripted exit codes), fake images and
//! a fake tmpfs mounter.

#![allow(clippy::unwrap_used)] // test support: a poisoned lock is a failed test

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keelson_runtime::api::{
    AttachSession, ContainerImage, ContainerState, ContainerStats, ContainerStatus, Error,
    ExecConfig, ExecSession, ExitInfo, LogOptions, LogStream, Result, Runtime, RuntimeEvent,
    SandboxInfo, SandboxState, SandboxStatus,
};
use keelson_runtime::config::{
    ContainerConfig, ContainerId, SandboxConfig, SandboxId, StopOptions,
};
use tokio::sync::broadcast;

use crate::pod::convert::{PullPolicy, LABEL_CONTAINER_NAME};
use crate::worker::{ImageSource, Mounter, ResolvedImage};

/// The tokio clock as a wall clock, so that paused time moves container times too.
pub fn now() -> SystemTime {
    static BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(1_700_000_000)
        + tokio::time::Instant::now().saturating_duration_since(base)
}

#[derive(Debug, Default)]
pub struct State {
    pub sandboxes: BTreeMap<SandboxId, (SandboxConfig, SandboxStatus)>,
    pub containers: BTreeMap<ContainerId, (ContainerConfig, ContainerStatus)>,
    /// Exit codes containers of that name take right at start, in order.
    pub exit_at_start: HashMap<String, VecDeque<i32>>,
    /// Every exec'd command.
    pub execs: Vec<(String, Vec<String>)>,
    /// Every stop with its grace period.
    pub stops: Vec<(String, Duration)>,
    /// Starts by container name, with the tokio time of each.
    pub starts: Vec<String>,
    pub start_times: Vec<(String, tokio::time::Instant)>,
    pub next_ip: u8,
}

#[derive(Debug, Clone)]
pub struct FakeRuntime {
    pub state: Arc<Mutex<State>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self { state: Arc::default(), events: broadcast::channel(1024).0 }
    }
}

impl FakeRuntime {
    pub fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The running container named `name`, if any.
    pub fn running(&self, name: &str) -> Option<ContainerId> {
        self.st()
            .containers
            .values()
            .find(|(c, s)| c.name == name && s.state == ContainerState::Running)
            .map(|(_, s)| s.id.clone())
    }

    /// Makes the running container `name` exit with `code`.
    pub fn exit(&self, name: &str, code: i32) {
        let id = self.running(name).unwrap_or_else(|| panic!("{name} is not running"));
        self.exit_id(&id, code);
    }

    fn exit_id(&self, id: &ContainerId, code: i32) {
        let ev = {
            let mut st = self.st();
            let (_, s) = st.containers.get_mut(id).unwrap();
            s.state = ContainerState::Exited;
            s.exit_code = Some(code);
            s.finished_at = Some(now());
            RuntimeEvent::ContainerExited {
                id: id.clone(),
                sandbox: s.sandbox_id.clone(),
                exit: ExitInfo { code, signal: None, oom_killed: false },
            }
        };
        let _ = self.events.send(ev);
    }

    /// Makes every container named `name` exit with these codes right at their starts.
    pub fn script(&self, name: &str, codes: &[i32]) {
        self.st().exit_at_start.insert(name.into(), codes.iter().copied().collect());
    }

    pub fn starts_of(&self, name: &str) -> usize {
        self.st().starts.iter().filter(|n| *n == name).count()
    }
}

fn not_found(id: &ContainerId) -> Error {
    Error::ContainerNotFound(id.clone())
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn create_sandbox(&self, config: SandboxConfig) -> Result<SandboxInfo> {
        let mut st = self.st();
        let id = SandboxId::random();
        st.next_ip += 1;
        let ips = if config.host_namespaces.network {
            vec![]
        } else {
            vec![format!("10.42.0.{}", st.next_ip).parse().unwrap()]
        };
        let status = SandboxStatus {
            id: id.clone(),
            pod: config.pod.clone(),
            state: SandboxState::Ready,
            ips: ips.clone(),
            netns_path: None,
            shim_pid: Some(1),
            created_at: now(),
        };
        st.sandboxes.insert(id.clone(), (config, status));
        Ok(SandboxInfo { id, ips, netns_path: None })
    }

    async fn stop_sandbox(&self, id: &SandboxId) -> Result<()> {
        let mut st = self.st();
        let sb = st.sandboxes.get_mut(id).ok_or_else(|| Error::SandboxNotFound(id.clone()))?;
        sb.1.state = SandboxState::NotReady;
        for (_, s) in st.containers.values_mut().filter(|(_, s)| &s.sandbox_id == id) {
            if s.state == ContainerState::Running {
                s.state = ContainerState::Exited;
                s.exit_code = Some(137);
            }
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &SandboxId) -> Result<()> {
        let mut st = self.st();
        st.sandboxes.remove(id).ok_or_else(|| Error::SandboxNotFound(id.clone()))?;
        st.containers.retain(|_, (_, s)| &s.sandbox_id != id);
        Ok(())
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>> {
        Ok(self.st().sandboxes.values().map(|(_, s)| s.clone()).collect())
    }

    async fn sandbox_status(&self, id: &SandboxId) -> Result<SandboxStatus> {
        self.st()
            .sandboxes
            .get(id)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| Error::SandboxNotFound(id.clone()))
    }

    async fn create_container(
        &self,
        sandbox: &SandboxId,
        config: ContainerConfig,
        image: ContainerImage,
    ) -> Result<ContainerId> {
        let mut st = self.st();
        if !st.sandboxes.contains_key(sandbox) {
            return Err(Error::SandboxNotFound(sandbox.clone()));
        }
        let id = ContainerId::random();
        let status = ContainerStatus {
            id: id.clone(),
            sandbox_id: sandbox.clone(),
            name: config.name.clone(),
            image: image.reference.clone(),
            state: ContainerState::Created,
            pid: None,
            created_at: now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            signal: None,
            oom_killed: false,
            log_path: "/dev/null".into(),
            restart_count: config.restart_count,
            labels: config.labels.clone(),
        };
        st.containers.insert(id.clone(), (config, status));
        Ok(id)
    }

    async fn start_container(&self, id: &ContainerId) -> Result<()> {
        let (name, sandbox, exit) = {
            let mut st = self.st();
            let (c, s) = st.containers.get_mut(id).ok_or_else(|| not_found(id))?;
            s.state = ContainerState::Running;
            s.started_at = Some(now());
            s.pid = Some(100);
            let (name, sandbox) = (c.name.clone(), s.sandbox_id.clone());
            st.starts.push(name.clone());
            st.start_times.push((name.clone(), tokio::time::Instant::now()));
            let exit = st.exit_at_start.get_mut(&name).and_then(VecDeque::pop_front);
            (name, sandbox, exit)
        };
        let _ = name;
        let _ =
            self.events.send(RuntimeEvent::ContainerStarted { id: id.clone(), sandbox, pid: 100 });
        if let Some(code) = exit {
            self.exit_id(id, code);
        }
        Ok(())
    }

    async fn stop_container(&self, id: &ContainerId, options: StopOptions) -> Result<()> {
        let running = {
            let mut st = self.st();
            let name = st.containers.get(id).ok_or_else(|| not_found(id))?.0.name.clone();
            st.stops.push((name, options.grace_period));
            st.containers[id].1.state == ContainerState::Running
        };
        if running {
            self.exit_id(id, 143);
        }
        Ok(())
    }

    async fn kill_container(&self, id: &ContainerId, _signal: i32) -> Result<()> {
        self.exit_id(id, 137);
        Ok(())
    }

    async fn remove_container(&self, id: &ContainerId) -> Result<()> {
        self.st().containers.remove(id).map(|_| ()).ok_or_else(|| not_found(id))
    }

    async fn container_status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        self.st().containers.get(id).map(|(_, s)| s.clone()).ok_or_else(|| not_found(id))
    }

    async fn list_containers(&self, sandbox: Option<&SandboxId>) -> Result<Vec<ContainerStatus>> {
        Ok(self
            .st()
            .containers
            .values()
            .filter(|(_, s)| sandbox.is_none_or(|sb| &s.sandbox_id == sb))
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn container_stats(&self, id: &ContainerId) -> Result<ContainerStats> {
        Err(not_found(id))
    }

    async fn exec(&self, id: &ContainerId, config: ExecConfig) -> Result<ExecSession> {
        let name = self.st().containers.get(id).ok_or_else(|| not_found(id))?.0.name.clone();
        self.st().execs.push((name, config.command));
        // The fake cannot build sessions; the hook counts as failed, which stopping tolerates.
        Err(Error::InvalidState {
            what: "container",
            id: id.to_string(),
            reason: "fake exec".into(),
        })
    }

    async fn attach(&self, id: &ContainerId) -> Result<AttachSession> {
        Err(not_found(id))
    }

    async fn logs(&self, id: &ContainerId, _options: LogOptions) -> Result<LogStream> {
        Err(not_found(id))
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}

/// Images: every reference is present unless listed as missing; pulls are counted.
#[derive(Debug, Default)]
pub struct FakeImages {
    pub missing: Mutex<Vec<String>>,
    pub pulls: Mutex<Vec<String>>,
    pub rootfs: Mutex<Vec<String>>,
    pub user: Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl ImageSource for FakeImages {
    async fn ensure(&self, reference: &str, policy: PullPolicy) -> Result<ResolvedImage, String> {
        let present = !self.missing.lock().unwrap().iter().any(|m| m == reference);
        match policy {
            PullPolicy::Never if !present => {
                return Err(format!(
                    "image {reference} is not present and imagePullPolicy is Never"
                ))
            }
            PullPolicy::Always => self.pulls.lock().unwrap().push(reference.into()),
            PullPolicy::IfNotPresent if !present => {
                return Err(format!("pull {reference}: no registry"));
            }
            _ => {}
        }
        let mut config = oci_spec::image::Config::default();
        config.set_user(self.user.lock().unwrap().clone());
        Ok(ResolvedImage { name: reference.into(), id: format!("sha256:{reference}"), config })
    }

    async fn rootfs(
        &self,
        _image: &ResolvedImage,
        key: &str,
    ) -> Result<keelson_runtime::api::Rootfs, String> {
        self.rootfs.lock().unwrap().push(key.into());
        Ok(keelson_runtime::api::Rootfs::Directory("/nonexistent".into()))
    }

    async fn release(&self, key: &str) -> Result<(), String> {
        self.rootfs.lock().unwrap().retain(|k| k != key);
        Ok(())
    }
}

/// Records tmpfs mounts.
#[derive(Debug, Default)]
pub struct FakeMounter {
    pub mounted: Mutex<Vec<std::path::PathBuf>>,
}

impl Mounter for FakeMounter {
    fn tmpfs(&self, dir: &Path, _size: Option<u64>) -> Result<(), String> {
        self.mounted.lock().unwrap().push(dir.into());
        Ok(())
    }

    fn unmount(&self, dir: &Path) {
        self.mounted.lock().unwrap().retain(|d| d != dir);
    }
}

/// Container names of running containers, sorted.
pub fn running_names(rt: &FakeRuntime) -> Vec<String> {
    let mut v: Vec<String> = rt
        .st()
        .containers
        .values()
        .filter(|(_, s)| s.state == ContainerState::Running)
        .map(|(c, _)| c.labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_default())
        .collect();
    v.sort();
    v
}

/// Network probes answered by a switch: they succeed while it is on.
#[derive(Debug, Default)]
pub struct FakeProbeNet(pub std::sync::atomic::AtomicBool);

impl FakeProbeNet {
    fn answer(&self, addr: std::net::SocketAddr) -> std::result::Result<(), String> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(format!("dial tcp {addr}: connection refused"))
        }
    }
}

#[async_trait::async_trait]
impl crate::pod::probe::ProbeNet for FakeProbeNet {
    async fn tcp(
        &self,
        addr: std::net::SocketAddr,
        _: Duration,
    ) -> std::result::Result<(), String> {
        self.answer(addr)
    }

    async fn http_get(
        &self,
        addr: std::net::SocketAddr,
        _: &str,
        _: &[(String, String)],
        _: Duration,
    ) -> std::result::Result<u16, String> {
        self.answer(addr).map(|()| 200)
    }
}
