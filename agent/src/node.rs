//! The [`Agent`]: the node's pod lifecycle. It owns the runtime (through [`WorkerEnv`]), one
//! [`Worker`] per static pod, and the registry the node API reads ([`PodRegistry`]).
//!
//! [`Agent::run`] applies manifest [`Snapshot`]s: a new file starts a pod, a file whose content
//! changed (a new uid) replaces its pod (the old one stopped first), a removed file stops its
//! pod gracefully. Files that do not parse or do not plan are listed with their reason and
//! touch nothing else.
//!
//! Restart safety: at start, the runtime's sandboxes are matched to the desired pods by the pod
//! uid they carry (static pod uids are derived from the manifest's content, so an unchanged
//! file finds its sandbox again); the worker continues on the adopted sandbox without
//! restarting anything. Sandboxes no manifest wants any more are stopped and removed.
//! Dropping the agent leaves every pod running.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use keelson_runtime::api::{ContainerState, Rootfs, SandboxStatus};
use keelson_runtime::config::{SandboxId, StopOptions};
use keelson_runtime::image::{self, ImageStore, ImportOptions, PullOptions, RegistryAuth};
use tokio::sync::watch;

use crate::api::registry::{ContainerRef, ManifestError, PodRegistry};
use crate::manifests::Snapshot;
use crate::pod::convert::{self, NodeContext, PullPolicy};
use crate::pod::status;
use crate::worker::{
    DisplayChain, ImageSource, PodView, ResolvedImage, Worker, WorkerEnv, ANNOTATION_GRACE,
    LABEL_ROOTFS,
};

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name.
    pub node_name: String,
    /// The agent's state (`/var/lib/keelson/agent`): pod directories under `pods/<uid>/`.
    pub state_dir: PathBuf,
    /// Where `Localhost` seccomp profiles live.
    pub seccomp_root: PathBuf,
}

struct PodEntry {
    pod: Pod,
    uid: String,
    view: Arc<Mutex<PodView>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    env: Arc<WorkerEnv>,
    cfg: AgentConfig,
    pods: Mutex<BTreeMap<PathBuf, PodEntry>>,
    errors: Mutex<Vec<ManifestError>>,
    /// Pods being stopped, so that [`Agent::wait_stopped`] can wait for them.
    stopping: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The node's pod lifecycle.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("node", &self.inner.cfg.node_name).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// An agent over `env` (runtime, images, node files); nothing runs until [`Agent::run`].
    pub fn new(env: Arc<WorkerEnv>, cfg: AgentConfig) -> Self {
        Agent {
            inner: Arc::new(Inner {
                env,
                cfg,
                pods: Mutex::new(BTreeMap::new()),
                errors: Mutex::new(Vec::new()),
                stopping: Mutex::new(Vec::new()),
            }),
        }
    }

    fn node(&self) -> NodeContext {
        NodeContext {
            node_name: self.inner.cfg.node_name.clone(),
            state_dir: self.inner.cfg.state_dir.clone(),
            seccomp_root: self.inner.cfg.seccomp_root.clone(),
        }
    }

    /// Adopts what the runtime runs, then follows `snapshots` until the sender goes away.
    /// Pods keep running when this returns.
    pub async fn run(&self, mut snapshots: watch::Receiver<Snapshot>) {
        let mut adoptable: HashMap<String, SandboxStatus> = HashMap::new();
        match self.inner.env.rt.list_sandboxes().await {
            Ok(list) => {
                for s in list {
                    // Of several sandboxes of one pod, the newest is adopted; the others are
                    // orphans.
                    match adoptable.get(&s.pod.uid) {
                        Some(prev) if prev.created_at >= s.created_at => {
                            self.remove_orphan(s).await;
                        }
                        _ => {
                            if let Some(prev) = adoptable.insert(s.pod.uid.clone(), s) {
                                self.remove_orphan(prev).await;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %DisplayChain(&e), "list sandboxes: nothing adopted"),
        }
        let first = snapshots.borrow_and_update().clone();
        self.apply_with(&first, &mut adoptable);
        for (_, s) in adoptable {
            tracing::info!(pod = %s.pod.name, sandbox = %s.id, "no manifest wants this pod: stopping it");
            self.remove_orphan(s).await;
        }
        while snapshots.changed().await.is_ok() {
            let snap = snapshots.borrow_and_update().clone();
            self.apply(&snap);
        }
    }

    /// Applies one snapshot (no adoption).
    pub fn apply(&self, snap: &Snapshot) {
        self.apply_with(snap, &mut HashMap::new());
    }

    fn apply_with(&self, snap: &Snapshot, adoptable: &mut HashMap<String, SandboxStatus>) {
        let mut errors = snap.errors.clone();
        let mut pods = lock(&self.inner.pods);
        // Removed or replaced: stop.
        let gone: Vec<PathBuf> = pods
            .iter()
            .filter(|(p, e)| {
                snap.pods.get(*p).and_then(|sp| sp.pod.metadata.uid.as_deref()) != Some(&e.uid)
            })
            .map(|(p, _)| p.clone())
            .collect();
        let mut previous: HashMap<PathBuf, tokio::task::JoinHandle<()>> = HashMap::new();
        for p in gone {
            if let Some(e) = pods.remove(&p) {
                tracing::info!(pod = ?e.pod.metadata.name, manifest = %p.display(), "stopping pod");
                let _ = e.stop.send(true);
                previous.insert(p, e.task);
            }
        }
        for (path, sp) in &snap.pods {
            if pods.contains_key(path) {
                continue;
            }
            let plan = match convert::plan(&sp.pod, &self.node()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(manifest = %path.display(), error = %e, "invalid pod");
                    errors.push(ManifestError { path: path.clone(), message: e.to_string() });
                    if let Some(prev) = previous.remove(path) {
                        lock(&self.inner.stopping).push(prev);
                    }
                    continue;
                }
            };
            let uid = plan.sandbox.pod.uid.clone();
            let adopted = adoptable.remove(&uid).map(|s| (s.id, s.ips));
            if adopted.is_some() {
                tracing::info!(pod = ?sp.pod.metadata.name, "adopting the running pod");
            } else {
                tracing::info!(pod = ?sp.pod.metadata.name, manifest = %path.display(), "starting pod");
            }
            let worker = Worker::new(self.inner.env.clone(), plan, adopted);
            let view = worker.view();
            let (tx, rx) = watch::channel(false);
            let prev = previous.remove(path);
            let task = tokio::spawn(async move {
                // A replaced pod is stopped before its successor starts (ports, volumes).
                if let Some(prev) = prev {
                    let _ = prev.await;
                }
                worker.run(rx).await;
            });
            pods.insert(path.clone(), PodEntry { pod: sp.pod.clone(), uid, view, stop: tx, task });
        }
        lock(&self.inner.stopping).extend(previous.into_values());
        *lock(&self.inner.errors) = errors;
    }

    /// Lets every pod worker go without stopping its pod (the agent is going away; the next
    /// one adopts the pods), and waits until they are gone.
    pub async fn detach(&self) {
        let entries: Vec<PodEntry> =
            std::mem::take(&mut *lock(&self.inner.pods)).into_values().collect();
        let tasks: Vec<_> = entries
            .into_iter()
            .map(|e| {
                drop(e.stop);
                e.task
            })
            .collect();
        futures::future::join_all(tasks).await;
    }

    /// Waits until every pod asked to stop has stopped.
    pub async fn wait_stopped(&self) {
        loop {
            let tasks: Vec<_> = std::mem::take(&mut *lock(&self.inner.stopping));
            if tasks.is_empty() {
                return;
            }
            futures::future::join_all(tasks).await;
        }
    }

    /// Stops and removes a sandbox no manifest wants: containers within the grace period the
    /// sandbox records, then the sandbox and the containers' root filesystems.
    async fn remove_orphan(&self, s: SandboxStatus) {
        let rt = &self.inner.env.rt;
        let grace = s
            .pod
            .annotations
            .get(ANNOTATION_GRACE)
            .and_then(|g| g.parse().ok())
            .map_or(Duration::from_secs(30), Duration::from_secs);
        let list = rt.list_containers(Some(&s.id)).await.unwrap_or_default();
        let stops = list
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| rt.stop_container(&c.id, StopOptions { grace_period: grace }));
        for r in futures::future::join_all(stops).await {
            if let Err(e) = r {
                tracing::warn!(error = %DisplayChain(&e), "stop an orphan container");
            }
        }
        if let Err(e) = rt.remove_sandbox(&s.id).await {
            tracing::warn!(sandbox = %s.id, error = %DisplayChain(&e), "remove an orphan sandbox");
            return;
        }
        for c in &list {
            if let Some(key) = c.labels.get(LABEL_ROOTFS) {
                let _ = self.inner.env.images.release(key).await;
            }
        }
        let dir = self.inner.cfg.state_dir.join("pods").join(&s.pod.uid);
        // Memory-backed emptyDirs are tmpfs mounts: unmounted before the directory goes.
        if let Ok(vols) = std::fs::read_dir(dir.join("volumes/kubernetes.io~empty-dir")) {
            for v in vols.flatten() {
                self.inner.env.mounter.unmount(&v.path());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "remove an orphan pod's directory");
            }
        }
    }

    /// The sandboxes of the pods the agent runs (for network garbage collection).
    pub fn sandboxes(&self) -> Vec<SandboxId> {
        lock(&self.inner.pods).values().filter_map(|e| lock(&e.view).sandbox.clone()).collect()
    }
}

impl PodRegistry for Agent {
    fn pods(&self) -> Vec<Pod> {
        lock(&self.inner.pods)
            .values()
            .map(|e| {
                let mut pod = e.pod.clone();
                let spec = pod.spec.get_or_insert_with(Default::default);
                spec.node_name = Some(self.inner.cfg.node_name.clone());
                pod.status = Some(status::status(&lock(&e.view).record));
                pod
            })
            .collect()
    }

    fn manifest_errors(&self) -> Vec<ManifestError> {
        lock(&self.inner.errors).clone()
    }

    fn container_id(&self, pod: &str, container: Option<&str>) -> Option<ContainerRef> {
        let pods = lock(&self.inner.pods);
        let e = pods.values().find(|e| {
            let md = &e.pod.metadata;
            let key = format!(
                "{}/{}",
                md.namespace.as_deref().unwrap_or("default"),
                md.name.as_deref().unwrap_or_default()
            );
            key == pod || (!pod.contains('/') && md.name.as_deref() == Some(pod))
        })?;
        let view = lock(&e.view);
        let name = match container {
            Some(c) => c.to_owned(),
            None => e.pod.spec.as_ref()?.containers.first()?.name.clone(),
        };
        view.refs.get(&name).cloned()
    }
}

/// Images from the runtime's [`ImageStore`]: an absolute path is imported (an OCI layout or
/// archive, or a `docker save` archive), a reference is found or pulled per the policy.
#[derive(Debug, Clone)]
pub struct StoreImages {
    store: ImageStore,
}

impl StoreImages {
    /// Over `store`.
    pub fn new(store: ImageStore) -> Self {
        Self { store }
    }
}

fn resolved(i: &image::Image) -> ResolvedImage {
    ResolvedImage {
        name: i.name().to_owned(),
        id: i.id().to_string(),
        config: i.container_config(),
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    DisplayChain(e).to_string()
}

#[async_trait::async_trait]
impl ImageSource for StoreImages {
    async fn ensure(&self, reference: &str, policy: PullPolicy) -> Result<ResolvedImage, String> {
        let store = self.store.clone();
        if Path::new(reference).is_absolute() {
            let path = PathBuf::from(reference);
            let img = tokio::task::spawn_blocking(move || {
                match store.import(&path, &ImportOptions::default(), None) {
                    Err(image::Error::NoName(_)) => store.import(
                        &path,
                        &ImportOptions::named(&crate::run::name_for_path(&path)),
                        None,
                    ),
                    other => other,
                }
            })
            .await
            .map_err(|e| format!("import {reference}: {e}"))?
            .map_err(|e| format!("import {reference}: {}", chain(&e)))?;
            return Ok(resolved(&img));
        }
        let local = {
            let (s, r) = (store.clone(), reference.to_owned());
            tokio::task::spawn_blocking(move || s.get(&r).ok()).await.ok().flatten()
        };
        match (policy, local) {
            (PullPolicy::Never, Some(i)) | (PullPolicy::IfNotPresent, Some(i)) => Ok(resolved(&i)),
            (PullPolicy::Never, None) => Err(format!(
                "image {reference} is not present on the node and imagePullPolicy is Never"
            )),
            _ => {
                // The pull future cannot be proven `Send` (higher-ranked closures inside), so it
                // runs on a blocking thread driven by this runtime's handle.
                let (handle, r) = (tokio::runtime::Handle::current(), reference.to_owned());
                tokio::task::spawn_blocking(move || {
                    handle.block_on(store.pull(
                        &r,
                        &RegistryAuth::Anonymous,
                        &PullOptions::default(),
                        None,
                    ))
                })
                .await
                .map_err(|e| format!("pull {reference}: {e}"))?
                .map(|i| resolved(&i))
                .map_err(|e| format!("pull {reference}: {}", chain(&e)))
            }
        }
    }

    async fn rootfs(&self, image: &ResolvedImage, key: &str) -> Result<Rootfs, String> {
        let (store, name, key) = (self.store.clone(), image.name.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || {
            let img = store.get(&name).map_err(|e| chain(&e))?;
            let m = store.prepare_rootfs(&img, &key).map_err(|e| chain(&e))?;
            Ok(Rootfs::Overlay { lowerdirs: m.lowerdirs, upperdir: m.upperdir, workdir: m.workdir })
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn release(&self, key: &str) -> Result<(), String> {
        let (store, key) = (self.store.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || store.release_rootfs(&key).map_err(|e| chain(&e)))
            .await
            .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
