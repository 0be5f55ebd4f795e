//! Pod workers: one task per pod, level-triggered. Each pass of [`Worker::reconcile`] looks at
//! what the runtime has (the sandbox, the containers by their labels) and takes the next steps
//! toward the plan: sandbox with network (volumes and `/etc` files first), images (present,
//! imported or pulled per `imagePullPolicy`), init containers in order, each to success, then
//! the app containers; exited containers are restarted per `restartPolicy` after their
//! back-off. A pass runs again on every runtime event of the pod's sandbox, when a back-off
//! expires, and every [`RESYNC`] as a safety net.
//!
//! State worth keeping lives in the runtime (labels on containers, the pod's identity on the
//! sandbox), so a worker started over an existing sandbox (after an agent restart) simply
//! continues: nothing is restarted. Only back-off timers are in memory (as the kubelet's).
//!
//! A running container with probes has a [`Prober`] of its own; its findings make the
//! container started and ready, and a failed startup or liveness probe makes the next pass
//! kill it (`preStop` first, within the probe's or the pod's grace period), after which it is
//! restarted under the pod's `restartPolicy` like any exited container.
//!
//! Stopping (manifest removed or replaced) runs `preStop` exec hooks, stops containers within
//! `terminationGracePeriodSeconds`, removes the sandbox, releases root filesystems and removes
//! the pod's directory. A worker whose stop channel is dropped without a stop request (the
//! agent going away) leaves everything running.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keelson_runtime::api::{
    ContainerImage, ContainerState, ContainerStatus, ExecConfig, ExitInfo, Rootfs, Runtime,
    RuntimeEvent, SandboxState,
};
use keelson_runtime::config::{ContainerId, SandboxId, StopOptions};
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

use crate::api::registry::ContainerRef;
use crate::pod::backoff::{self, Backoff};
use crate::pod::convert::{
    self, ContainerPlan, PodPlan, PullPolicy, VolumeSource, LABEL_CONTAINER_NAME,
};
use crate::pod::probe::{ProbeNet, Prober, ProberEnv, Target};
use crate::pod::status::{self, ContainerPhase, ContainerRecord, PodRecord, Termination};

/// Label of containers: the image store's root filesystem key, released at removal.
pub const LABEL_ROOTFS: &str = "keelson.dev/rootfs";
/// Label of containers: the image id (config digest) it was created from, for status.
pub const LABEL_IMAGE_ID: &str = "keelson.dev/image-id";
/// Annotation of sandboxes: the pod's grace period, for stopping an orphan.
pub const ANNOTATION_GRACE: &str = "keelson.dev/grace-period-seconds";

/// A pass runs at least this often.
pub const RESYNC: Duration = Duration::from_secs(10);
/// Retry delay after a failed step (sandbox, volumes, image, create).
pub const RETRY: Duration = Duration::from_secs(10);

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Its normalized name.
    pub name: String,
    /// Its id (config digest).
    pub id: String,
    /// The image config's `config` section.
    pub config: oci_spec::image::Config,
}

/// Images as the worker needs them: the real one is over the runtime's `ImageStore`.
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync + std::fmt::Debug {
    /// Makes `reference` present per `policy` (an absolute path is imported) and resolves it.
    async fn ensure(&self, reference: &str, policy: PullPolicy) -> Result<ResolvedImage, String>;
    /// Prepares a root filesystem named `key` for a container of `image`.
    async fn rootfs(&self, image: &ResolvedImage, key: &str) -> Result<Rootfs, String>;
    /// Releases the root filesystem `key` (absent is fine).
    async fn release(&self, key: &str) -> Result<(), String>;
}

/// What every worker shares.
pub struct WorkerEnv {
    /// The runtime.
    pub rt: Arc<dyn Runtime>,
    /// Images.
    pub images: Arc<dyn ImageSource>,
    /// The node's IP (status `hostIP`, and the pod IP of `hostNetwork` pods).
    pub host_ip: Option<IpAddr>,
    /// The node's `/etc/hosts` (for `hostNetwork` pods).
    pub host_hosts: PathBuf,
    /// The node's `/etc/resolv.conf`.
    pub host_resolv: PathBuf,
    /// Mounts tmpfs for `medium: Memory` emptyDirs.
    pub mounter: Arc<dyn Mounter>,
    /// Where network probes connect from.
    pub probe_net: Arc<dyn ProbeNet>,
}

impl std::fmt::Debug for WorkerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerEnv").field("host_ip", &self.host_ip).finish_non_exhaustive()
    }
}

/// Mounts and unmounts tmpfs volumes (real: mount(2); tests: a fake).
pub trait Mounter: Send + Sync + std::fmt::Debug {
    /// Mounts a tmpfs of at most `size` bytes on `dir` unless one is there.
    fn tmpfs(&self, dir: &std::path::Path, size: Option<u64>) -> Result<(), String>;
    /// Unmounts whatever is on `dir` (nothing is fine).
    fn unmount(&self, dir: &std::path::Path);
}

/// mount(2).
#[derive(Debug, Clone, Copy, Default)]
pub struct SysMounter;

impl Mounter for SysMounter {
    fn tmpfs(&self, dir: &std::path::Path, size: Option<u64>) -> Result<(), String> {
        use nix::mount::{mount, MsFlags};
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*dir.to_string_lossy())))
            .unwrap_or(false);
        if mounted {
            return Ok(());
        }
        let data = size.map(|s| format!("size={s}"));
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data.as_deref(),
        )
        .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))
    }

    fn unmount(&self, dir: &std::path::Path) {
        let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// What a worker publishes about its pod.
#[derive(Debug, Clone)]
pub struct PodView {
    /// The status record.
    pub record: PodRecord,
    /// Container ids by name.
    pub refs: BTreeMap<String, ContainerRef>,
    /// The sandbox, once created.
    pub sandbox: Option<SandboxId>,
}

/// Errors of a pass; the worker logs them and retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A runtime call failed.
    #[error("{op}")]
    Runtime {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: keelson_runtime::api::Error,
    },
    /// The pod's files or volumes could not be prepared.
    #[error("{0}")]
    Prepare(String),
}

fn rt_err(op: &'static str) -> impl FnOnce(keelson_runtime::api::Error) -> Error {
    move |source| Error::Runtime { op, source }
}

#[derive(Debug, Default)]
struct Crash {
    backoff: Backoff,
    /// The exited instance being backed off, and when it may be replaced.
    pending: Option<(ContainerId, Instant, Duration)>,
}

/// One pod's worker.
#[derive(Debug)]
pub struct Worker {
    env: Arc<WorkerEnv>,
    plan: PodPlan,
    sandbox: Option<(SandboxId, Vec<IpAddr>)>,
    crash: HashMap<String, Crash>,
    /// Retry of a failed creation step, by container: when, and the waiting reason and message.
    retry: HashMap<String, (Instant, String, String)>,
    view: Arc<Mutex<PodView>>,
    start_time: SystemTime,
    failure: Option<(String, String)>,
    /// Probers of running containers, by container name.
    probers: HashMap<String, Prober>,
    /// Probers ring it when their findings change.
    wake: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn termination(s: &ContainerStatus) -> Termination {
    let exit =
        ExitInfo { code: s.exit_code.unwrap_or(255), signal: s.signal, oom_killed: s.oom_killed };
    Termination::from_exit(Some(s.id.to_string()), exit, s.started_at, s.finished_at)
}

impl Worker {
    /// A worker for `plan`, continuing on `adopted` (a sandbox of this pod found in the
    /// runtime) when given.
    pub fn new(
        env: Arc<WorkerEnv>,
        plan: PodPlan,
        adopted: Option<(SandboxId, Vec<IpAddr>)>,
    ) -> Self {
        let record = PodRecord {
            start_time: Some(SystemTime::now()),
            sandbox_ready: false,
            pod_ips: Vec::new(),
            host_ip: env.host_ip,
            restart_policy: plan.restart_policy,
            qos: plan.sandbox.qos,
            init_containers: plan
                .init_containers
                .iter()
                .map(|c| ContainerRecord::waiting(&c.name, &c.image, status::POD_INITIALIZING))
                .collect(),
            containers: plan
                .containers
                .iter()
                .map(|c| ContainerRecord::waiting(&c.name, &c.image, status::CONTAINER_CREATING))
                .collect(),
            failure: None,
            unknown: false,
        };
        let view = PodView { record, refs: BTreeMap::new(), sandbox: None };
        Worker {
            env,
            plan,
            sandbox: adopted,
            crash: HashMap::new(),
            retry: HashMap::new(),
            view: Arc::new(Mutex::new(view)),
            start_time: SystemTime::now(),
            failure: None,
            probers: HashMap::new(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// What the worker publishes, shared.
    pub fn view(&self) -> Arc<Mutex<PodView>> {
        self.view.clone()
    }

    fn pod_label(&self) -> String {
        let p = &self.plan.sandbox.pod;
        format!("{}_{}({})", p.name, p.namespace, p.uid)
    }

    /// Runs passes until `stop` says `true` (then stops the pod) or is dropped (then leaves
    /// the pod running).
    pub async fn run(self, stop: watch::Receiver<bool>) {
        use tracing::Instrument;
        let span = tracing::info_span!("pod", pod = %self.pod_label());
        self.run_inner(stop).instrument(span).await
    }

    async fn run_inner(mut self, mut stop: watch::Receiver<bool>) {
        let pod = self.pod_label();
        let mut events = self.env.rt.events();
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            let wake = match self.reconcile().await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(%pod, error = %DisplayChain(&e), "pod sync failed; retrying");
                    Some(Instant::now() + RETRY)
                }
            };
            let resync = Instant::now() + RESYNC;
            let until = wake.map_or(resync, |w| w.min(resync));
            let sb = self.sandbox.as_ref().map(|s| s.0.clone());
            tokio::select! {
                r = stop.changed() => if r.is_err() {
                    tracing::debug!(%pod, "agent gone: leaving the pod running");
                    return;
                },
                () = relevant_event(&mut events, sb.as_ref()) => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
        if let Err(e) = self.terminate().await {
            tracing::error!(%pod, error = %DisplayChain(&e), "stopping the pod failed");
        }
    }

    async fn ensure_sandbox(&mut self) -> Result<(SandboxId, Vec<IpAddr>), Error> {
        let rt = &self.env.rt;
        if let Some((id, ips)) = &self.sandbox {
            match rt.sandbox_status(id).await {
                Ok(s) if s.state == SandboxState::Ready => return Ok((id.clone(), ips.clone())),
                Ok(_) | Err(keelson_runtime::api::Error::SandboxNotFound(_)) => {
                    tracing::warn!(sandbox = %id, "sandbox is gone or not ready: recreating it");
                    self.remove_sandbox(id).await?;
                    self.sandbox = None;
                }
                Err(e) => return Err(rt_err("sandbox status")(e)),
            }
        }
        let volumes = self.plan.volumes.clone();
        for v in &volumes {
            let mut res = convert::prepare_volume(v);
            if let (Ok(()), VolumeSource::EmptyDir { memory: true, size_limit }) = (&res, &v.source)
            {
                res = self.env.mounter.tmpfs(&v.host_path, *size_limit);
            }
            if let Err(m) = res {
                return Err(self.fail("FailedMount", m));
            }
        }
        let mut cfg = self.plan.sandbox.clone();
        cfg.pod
            .annotations
            .insert(ANNOTATION_GRACE.into(), self.plan.grace_period.as_secs().to_string());
        let info = rt.create_sandbox(cfg).await.map_err(rt_err("create the sandbox"))?;
        let mut ips = info.ips.clone();
        if self.plan.sandbox.host_namespaces.network {
            ips = self.env.host_ip.into_iter().collect();
        }
        tracing::info!(sandbox = %info.id, ?ips, "sandbox created");
        self.sandbox = Some((info.id.clone(), ips.clone()));
        self.failure = None;
        Ok((info.id, ips))
    }

    fn fail(&mut self, reason: &str, message: String) -> Error {
        self.failure = Some((reason.to_owned(), message.clone()));
        Error::Prepare(message)
    }

    fn write_etc(&self, ips: &[IpAddr]) -> Result<(), Error> {
        let host_hosts = std::fs::read_to_string(&self.env.host_hosts).unwrap_or_default();
        let host_resolv = std::fs::read_to_string(&self.env.host_resolv).unwrap_or_default();
        let write = |p: PathBuf, s: String| {
            if std::fs::read_to_string(&p).ok().as_deref() == Some(&*s) {
                return Ok(());
            }
            std::fs::create_dir_all(&self.plan.pod_dir)
                .and_then(|()| std::fs::write(&p, s))
                .map_err(|e| Error::Prepare(format!("write {}: {e}", p.display())))
        };
        write(self.plan.hosts_path(), self.plan.etc_hosts(ips, &host_hosts))?;
        write(self.plan.resolv_conf_path(), self.plan.resolv_conf(&host_resolv))
    }

    /// One pass; returns when the next pass is due at the latest (a back-off expiring).
    pub async fn reconcile(&mut self) -> Result<Option<Instant>, Error> {
        let res = self.reconcile_inner().await;
        if res.is_err() {
            let mut v = lock(&self.view);
            v.record.failure = self.failure.clone();
            v.record.sandbox_ready = self.sandbox.is_some();
        }
        res
    }

    async fn reconcile_inner(&mut self) -> Result<Option<Instant>, Error> {
        let (sb, ips) = self.ensure_sandbox().await?;
        self.write_etc(&ips)?;
        let list =
            self.env.rt.list_containers(Some(&sb)).await.map_err(rt_err("list containers"))?;
        let mut by_name: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
        for c in list {
            let name =
                c.labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_else(|| c.name.clone());
            by_name.entry(name).or_default().push(c);
        }
        for v in by_name.values_mut() {
            v.sort_by(|a, b| {
                b.restart_count.cmp(&a.restart_count).then(b.created_at.cmp(&a.created_at))
            });
        }
        let mut wake: Option<Instant> = None;
        let mut init_records = Vec::new();
        let mut app_records = Vec::new();
        let mut refs = BTreeMap::new();
        let mut init_done = true;
        let inits = self.plan.init_containers.clone();
        for c in &inits {
            if !init_done {
                init_records.push(ContainerRecord::waiting(
                    &c.name,
                    &c.image,
                    status::POD_INITIALIZING,
                ));
                continue;
            }
            let insts = by_name.remove(&c.name).unwrap_or_default();
            let (rec, w) = self.sync_container(&sb, &ips, c, &insts, true).await?;
            wake = min_opt(wake, w);
            if !matches!(&rec.phase, ContainerPhase::Terminated(t) if t.succeeded()) {
                init_done = false;
            }
            refs.extend(container_ref(&c.name, &insts, &rec));
            init_records.push(rec);
        }
        let apps = self.plan.containers.clone();
        for c in &apps {
            let insts = by_name.remove(&c.name).unwrap_or_default();
            if !init_done {
                app_records.push(ContainerRecord::waiting(
                    &c.name,
                    &c.image,
                    status::POD_INITIALIZING,
                ));
                continue;
            }
            let (rec, w) = self.sync_container(&sb, &ips, c, &insts, false).await?;
            wake = min_opt(wake, w);
            refs.extend(container_ref(&c.name, &insts, &rec));
            app_records.push(rec);
        }
        // Containers of this sandbox no spec names (left from an older plan): removed.
        for (_, insts) in by_name {
            for s in insts {
                self.remove_container(&s).await;
            }
        }
        let mut v = lock(&self.view);
        v.sandbox = Some(sb);
        v.refs = refs;
        v.record = PodRecord {
            start_time: Some(self.start_time),
            sandbox_ready: true,
            pod_ips: ips,
            host_ip: self.env.host_ip,
            restart_policy: self.plan.restart_policy,
            qos: self.plan.sandbox.qos,
            init_containers: init_records,
            containers: app_records,
            failure: None,
            unknown: false,
        };
        Ok(wake)
    }

    /// Brings one container toward its desired state; `insts` are its instances, newest first.
    async fn sync_container(
        &mut self,
        sb: &SandboxId,
        ips: &[IpAddr],
        c: &ContainerPlan,
        insts: &[ContainerStatus],
        init: bool,
    ) -> Result<(ContainerRecord, Option<Instant>), Error> {
        let mut rec = ContainerRecord::waiting(&c.name, &c.image, status::CONTAINER_CREATING);
        rec.last_termination =
            insts.get(1).filter(|s| s.state == ContainerState::Exited).map(termination);
        let Some(cur) = insts.first() else {
            let w = self.create(sb, ips, c, 0, &mut rec).await;
            return Ok((rec, w));
        };
        rec.restart_count = cur.restart_count;
        rec.image_id = Some(cur.labels.get(LABEL_IMAGE_ID).unwrap_or(&cur.image).clone());
        // Older instances than the previous one are not kept.
        for old in insts.iter().skip(2) {
            self.remove_container(old).await;
        }
        if cur.state != ContainerState::Running {
            self.probers.remove(&c.name);
        }
        match cur.state {
            ContainerState::Running => {
                self.crash.entry(c.name.clone()).or_default().pending = None;
                rec.phase = ContainerPhase::Running {
                    container_id: cur.id.to_string(),
                    started_at: cur.started_at,
                };
                if !c.probes.any() {
                    return Ok((rec, None));
                }
                let findings = self.prober(c, cur, ips).findings();
                rec.probed =
                    Some(status::Probed { started: findings.started, ready: findings.ready });
                if let Some((why, grace)) = findings.kill {
                    self.probers.remove(&c.name);
                    let grace = grace.unwrap_or(self.plan.grace_period);
                    tracing::warn!(container = %c.name, id = %cur.id, %why, "killing the container; it will be restarted");
                    stop_container(
                        &self.env.rt,
                        cur,
                        c.pre_stop.clone(),
                        Instant::now() + grace,
                        grace,
                    )
                    .await;
                    // The next pass sees it exited and restarts it under the policy.
                    return Ok((rec, Some(Instant::now())));
                }
                Ok((rec, None))
            }
            ContainerState::Created => {
                // Created but never started (the agent died in between): start it now.
                self.env.rt.start_container(&cur.id).await.map_err(rt_err("start a container"))?;
                rec.phase =
                    ContainerPhase::Running { container_id: cur.id.to_string(), started_at: None };
                Ok((rec, None))
            }
            ContainerState::Unknown => {
                rec.phase = ContainerPhase::Unknown;
                Ok((rec, None))
            }
            ContainerState::Exited => {
                let term = termination(cur);
                let code = term.exit_code;
                let restart = if init {
                    backoff::should_restart_init(self.plan.restart_policy, code)
                } else {
                    backoff::should_restart(self.plan.restart_policy, code)
                };
                if !restart {
                    rec.phase = ContainerPhase::Terminated(term);
                    return Ok((rec, None));
                }
                let now = Instant::now();
                let crash = self.crash.entry(c.name.clone()).or_default();
                let (at, delay) = match &crash.pending {
                    Some((id, at, d)) if *id == cur.id => (*at, *d),
                    _ => {
                        let ran = match (cur.started_at, cur.finished_at) {
                            (Some(s), Some(f)) => f.duration_since(s).unwrap_or_default(),
                            _ => Duration::ZERO,
                        };
                        let d = crash.backoff.next_delay(ran);
                        crash.pending = Some((cur.id.clone(), now + d, d));
                        (now + d, d)
                    }
                };
                if now < at {
                    rec.last_termination = Some(term);
                    rec.phase = ContainerPhase::Waiting {
                        reason: status::CRASH_LOOP_BACK_OFF.into(),
                        message: Some(format!(
                            "back-off {}s restarting failed container={} pod={}",
                            delay.as_secs(),
                            c.name,
                            self.pod_label()
                        )),
                    };
                    return Ok((rec, Some(at)));
                }
                // The previous instance is kept for its logs; the one before goes.
                if let Some(prev) = insts.get(1) {
                    self.remove_container(prev).await;
                }
                rec.last_termination = Some(term);
                let w = self.create(sb, ips, c, cur.restart_count + 1, &mut rec).await;
                if let Some(cr) = self.crash.get_mut(&c.name) {
                    cr.pending = None;
                }
                Ok((rec, w))
            }
        }
    }

    /// The prober of `cur` (started now if `c` had none, or one for an older instance).
    fn prober(&mut self, c: &ContainerPlan, cur: &ContainerStatus, ips: &[IpAddr]) -> &Prober {
        let stale = self.probers.get(&c.name).is_none_or(|p| *p.container() != cur.id);
        if stale {
            // Initial delays count from the container's start, also for an adopted one.
            let ran = cur
                .started_at
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            let started = Instant::now().checked_sub(ran).unwrap_or_else(Instant::now);
            let target = Target { container: cur.id.clone(), pod_ip: ips.first().copied() };
            let env = ProberEnv {
                rt: self.env.rt.clone(),
                net: self.env.probe_net.clone(),
                wake: self.wake.clone(),
            };
            let prober = Prober::start(c.probes.clone(), target, started, env);
            self.probers.insert(c.name.clone(), prober);
        }
        &self.probers[&c.name]
    }

    /// Creates and starts a container; records the outcome in `rec`. Failures are reported
    /// in the record and retried later.
    async fn create(
        &mut self,
        sb: &SandboxId,
        ips: &[IpAddr],
        c: &ContainerPlan,
        restart_count: u32,
        rec: &mut ContainerRecord,
    ) -> Option<Instant> {
        if let Some((at, reason, message)) = self.retry.get(&c.name) {
            if Instant::now() < *at {
                // Still waiting to retry: the status keeps saying why.
                rec.phase = ContainerPhase::Waiting {
                    reason: reason.clone(),
                    message: Some(message.clone()),
                };
                return Some(*at);
            }
        }
        rec.restart_count = restart_count;
        match self.create_inner(sb, ips, c, restart_count).await {
            Ok(id) => {
                self.retry.remove(&c.name);
                tracing::info!(container = %c.name, %id, restart_count, "container started");
                rec.phase = ContainerPhase::Running {
                    container_id: id.to_string(),
                    started_at: Some(SystemTime::now()),
                };
                None
            }
            Err((reason, message)) => {
                tracing::warn!(container = %c.name, %reason, %message, "container not started");
                rec.phase = ContainerPhase::Waiting {
                    reason: reason.into(),
                    message: Some(message.clone()),
                };
                let at = Instant::now() + RETRY;
                self.retry.insert(c.name.clone(), (at, reason.to_owned(), message));
                Some(at)
            }
        }
    }

    async fn create_inner(
        &self,
        sb: &SandboxId,
        ips: &[IpAddr],
        c: &ContainerPlan,
        restart_count: u32,
    ) -> Result<ContainerId, (&'static str, String)> {
        let image = self
            .env
            .images
            .ensure(&c.image, c.pull_policy)
            .await
            .map_err(|m| (status::ERR_IMAGE_PULL, m))?;
        c.verify_non_root(image.config.user().as_deref())
            .map_err(|m| ("CreateContainerConfigError", m))?;
        let key = format!("{}-{}", ContainerId::random(), c.name);
        let rootfs = self
            .env
            .images
            .rootfs(&image, &key)
            .await
            .map_err(|m| (status::CREATE_CONTAINER_ERROR, m))?;
        let mut cfg = self.plan.container_config(c, ips, restart_count);
        cfg.labels.insert(LABEL_ROOTFS.into(), key.clone());
        cfg.labels.insert(LABEL_IMAGE_ID.into(), image.id.clone());
        cfg.image = image.name.clone();
        let cimage =
            ContainerImage { reference: image.name.clone(), config: image.config.clone(), rootfs };
        let id = match self.env.rt.create_container(sb, cfg, cimage).await {
            Ok(id) => id,
            Err(e) => {
                let _ = self.env.images.release(&key).await;
                return Err((status::CREATE_CONTAINER_ERROR, DisplayChain(&e).to_string()));
            }
        };
        if let Err(e) = self.env.rt.start_container(&id).await {
            let _ = self.env.rt.remove_container(&id).await;
            let _ = self.env.images.release(&key).await;
            return Err(("RunContainerError", DisplayChain(&e).to_string()));
        }
        Ok(id)
    }

    async fn remove_container(&self, s: &ContainerStatus) {
        if let Err(e) = self.env.rt.remove_container(&s.id).await {
            tracing::warn!(container = %s.id, error = %DisplayChain(&e), "remove container");
            return;
        }
        if let Some(key) = s.labels.get(LABEL_ROOTFS) {
            if let Err(e) = self.env.images.release(key).await {
                tracing::warn!(%key, error = %e, "release root filesystem");
            }
        }
    }

    async fn remove_sandbox(&self, sb: &SandboxId) -> Result<(), Error> {
        let rt = &self.env.rt;
        let list = rt.list_containers(Some(sb)).await.unwrap_or_default();
        match rt.remove_sandbox(sb).await {
            Ok(()) | Err(keelson_runtime::api::Error::SandboxNotFound(_)) => {}
            Err(e) => return Err(rt_err("remove the sandbox")(e)),
        }
        for s in list {
            if let Some(key) = s.labels.get(LABEL_ROOTFS) {
                if let Err(e) = self.env.images.release(key).await {
                    tracing::warn!(%key, error = %e, "release root filesystem");
                }
            }
        }
        Ok(())
    }

    /// Stops the pod: preStop hooks, containers within the grace period, sandbox, files.
    pub async fn terminate(mut self) -> Result<(), Error> {
        self.probers.clear();
        if let Some((sb, _)) = &self.sandbox {
            stop_pod(&self.env.rt, sb, &self.plan, self.plan.grace_period).await;
            self.remove_sandbox(sb).await?;
            tracing::info!(sandbox = %sb, "pod stopped");
        }
        for v in &self.plan.volumes {
            if let VolumeSource::EmptyDir { memory: true, .. } = v.source {
                self.env.mounter.unmount(&v.host_path);
            }
        }
        match std::fs::remove_dir_all(&self.plan.pod_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Prepare(format!("remove {}: {e}", self.plan.pod_dir.display()))),
        }
    }
}

/// Stops the running containers of `sb`: app containers first, each after its `preStop` hook,
/// all within `grace`.
pub async fn stop_pod(rt: &Arc<dyn Runtime>, sb: &SandboxId, plan: &PodPlan, grace: Duration) {
    let deadline = Instant::now() + grace;
    let list = rt.list_containers(Some(sb)).await.unwrap_or_default();
    let running: Vec<&ContainerStatus> =
        list.iter().filter(|c| c.state == ContainerState::Running).collect();
    let hook = |name: &str| {
        plan.all_containers().find(|c| c.name == name).and_then(|c| c.pre_stop.clone())
    };
    let stops = running.iter().map(|c| {
        let name = c.labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_default();
        stop_container(rt, c, hook(&name), deadline, grace)
    });
    futures::future::join_all(stops).await;
}

/// Stops one running container: its `preStop` hook, then SIGTERM and SIGKILL, all by
/// `deadline` (the kubelet gives at least 2 s, within `grace`, after the hook).
async fn stop_container(
    rt: &Arc<dyn Runtime>,
    c: &ContainerStatus,
    pre_stop: Option<Vec<String>>,
    deadline: Instant,
    grace: Duration,
) {
    if let Some(cmd) = pre_stop {
        let run = async {
            let mut s = rt.exec(&c.id, ExecConfig { command: cmd, ..Default::default() }).await?;
            s.wait().await
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(exit)) => {
                tracing::debug!(container = %c.id, code = exit.code, "preStop hook ran")
            }
            Ok(Err(e)) => {
                tracing::warn!(container = %c.id, error = %DisplayChain(&e), "preStop hook failed")
            }
            Err(_) => tracing::warn!(container = %c.id, "preStop hook ran out of the grace period"),
        }
    }
    let left =
        deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(2).min(grace));
    if let Err(e) = rt.stop_container(&c.id, StopOptions { grace_period: left }).await {
        tracing::warn!(container = %c.id, error = %DisplayChain(&e), "stop container");
    }
}

fn container_ref(
    name: &str,
    insts: &[ContainerStatus],
    rec: &ContainerRecord,
) -> Option<(String, ContainerRef)> {
    let id = match &rec.phase {
        ContainerPhase::Running { container_id, .. } => container_id.parse().ok(),
        _ => None,
    }
    .or_else(|| insts.first().map(|s| s.id.clone()))?;
    let previous = insts.iter().map(|s| s.id.clone()).find(|i| *i != id);
    Some((
        name.to_owned(),
        ContainerRef { id, name: name.to_owned(), restart_count: rec.restart_count, previous },
    ))
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Completes on the next runtime event about `sb` (or on lag); never without a sandbox.
async fn relevant_event(events: &mut broadcast::Receiver<RuntimeEvent>, sb: Option<&SandboxId>) {
    let Some(sb) = sb else { return std::future::pending().await };
    loop {
        match events.recv().await {
            Ok(RuntimeEvent::ContainerExited { sandbox, .. })
            | Ok(RuntimeEvent::ContainerStarted { sandbox, .. })
            | Ok(RuntimeEvent::ContainerOomKilled { sandbox, .. })
                if &sandbox == sb =>
            {
                return
            }
            Ok(RuntimeEvent::SandboxNotReady { id }) if &id == sb => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// An error with its sources, `a: b: c`, for logs and status messages.
#[derive(Debug)]
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut s = self.0.source();
        while let Some(e) = s {
            write!(f, ": {e}")?;
            s = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
