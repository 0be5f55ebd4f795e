//! `keelson run`: one container in its own pod sandbox, from an image, to its exit.
//!
//! The steps a pod worker takes, minus the cluster: find the image (import an OCI layout
//! directory, an OCI layout tar or a `docker save` archive given by path; otherwise look the
//! reference up in the store and pull it when absent), prepare its root filesystem, create a
//! sandbox without network ([`NoNetwork`]), create and start the container, follow its CRI log
//! to the given writers while it runs, and remove the sandbox, the container and its root
//! filesystem at the end, also when interrupted (the caller's `interrupt` future, e.g. Ctrl-C).
//! The result is the container's exit code (128 + signal when killed).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use keelson_runtime::api::{
    ContainerImage, ContainerState, LogOptions, LogStreamKind, Rootfs, Runtime, RuntimeEvent,
};
use keelson_runtime::cgroup::{detect_host, Layout};
use keelson_runtime::config::{ContainerConfig, ContainerId, PodMeta, SandboxConfig, SandboxId};
use keelson_runtime::image::{
    self, Image, ImageStore, ImportOptions, ProgressSender, PullOptions, RegistryAuth,
};
use keelson_runtime::network::NoNetwork;
use keelson_runtime::sandbox::{CgroupConfig, RuntimeConfig, ShimRuntime};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Errors of `keelson run`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image store failed.
    #[error("image {image}")]
    Image {
        /// The image path or reference.
        image: String,
        /// The cause.
        #[source]
        source: image::Error,
    },
    /// The runtime failed.
    #[error("{op}")]
    Runtime {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: keelson_runtime::api::Error,
    },
    /// Writing the container's output failed.
    #[error("write the container's output")]
    Output(#[source] std::io::Error),
    /// A blocking task panicked or was cancelled.
    #[error("{op}: task failed")]
    Task {
        /// What the task did.
        op: &'static str,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The event stream ended before the container exited.
    #[error("container {0}: event stream ended before it exited")]
    NoExit(ContainerId),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where `keelson run` keeps its state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent data (`/var/lib/keelson`): the image store is `<data_dir>/images`.
    pub data_dir: PathBuf,
    /// Runtime state (`/run/keelson`): sandboxes, shim sockets (`shims/`), netns pins.
    pub state_dir: PathBuf,
    /// Pod logs (`/var/log/pods`).
    pub log_root: PathBuf,
    /// The `keelson-shim` binary.
    pub shim: PathBuf,
}

impl Paths {
    /// The production layout, with the shim next to the current executable.
    pub fn system() -> std::io::Result<Self> {
        Ok(Self {
            data_dir: "/var/lib/keelson".into(),
            state_dir: "/run/keelson".into(),
            log_root: "/var/log/pods".into(),
            shim: std::env::current_exe()?.with_file_name("keelson-shim"),
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// An OCI layout directory or archive, a `docker save` archive, or an image reference.
    pub image: String,
    /// The pod's and container's name.
    pub name: String,
    /// Give the container a terminal (its output then comes as one stream).
    pub tty: bool,
    /// The command (the image's entrypoint and cmd when empty).
    pub command: Vec<String>,
    /// Where import and pull progress goes (see [`crate::progress::draw`]).
    pub progress: Option<ProgressSender>,
    /// Where things live.
    pub paths: Paths,
}

/// Where the container's output goes.
pub struct Output<'a> {
    /// The container's stdout (and its terminal).
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// The container's stderr.
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").finish_non_exhaustive()
    }
}

fn rt_err(op: &'static str) -> impl FnOnce(keelson_runtime::api::Error) -> Error {
    move |source| Error::Runtime { op, source }
}

/// Imports `image` when it is a path, else finds or pulls the reference.
pub async fn resolve_image(
    store: &ImageStore,
    image: &str,
    progress: Option<&ProgressSender>,
) -> Result<Image> {
    let err = |source| Error::Image { image: image.to_owned(), source };
    let path = PathBuf::from(image);
    if path.exists() {
        let (s, p, tx) = (store.clone(), path.clone(), progress.cloned());
        let res = tokio::task::spawn_blocking(move || {
            match s.import(&p, &ImportOptions::default(), tx.as_ref()) {
                // A layout without a full name in its index: name it after the file.
                Err(image::Error::NoName(_)) => {
                    s.import(&p, &ImportOptions::named(&name_for_path(&p)), tx.as_ref())
                }
                other => other,
            }
        })
        .await
        .map_err(|source| Error::Task { op: "import", source })?;
        return res.map_err(err);
    }
    match store.get(image) {
        Ok(img) => Ok(img),
        Err(_) => store
            .pull(image, &RegistryAuth::Anonymous, &PullOptions::default(), progress)
            .await
            .map_err(err),
    }
}

/// `keelson.local/<file name without extensions>:latest`.
pub(crate) fn name_for_path(p: &Path) -> String {
    let stem = p
        .file_name()
        .map(|n| n.to_string_lossy().split('.').next().unwrap_or_default().to_lowercase())
        .unwrap_or_default();
    let stem: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let stem = stem.trim_matches('-');
    format!("keelson.local/{}:latest", if stem.is_empty() { "image" } else { stem })
}

/// The runtime configuration for `paths`.
pub fn runtime_config(paths: &Paths) -> Result<RuntimeConfig> {
    let setup = detect_host().map_err(|e| Error::Runtime {
        op: "detect the cgroup layout",
        source: keelson_runtime::api::Error::from(e),
    })?;
    Ok(RuntimeConfig {
        shim_path: paths.shim.clone(),
        state_dir: paths.state_dir.clone(),
        run_dir: paths.state_dir.join("shims"),
        netns_dir: paths.state_dir.join("netns"),
        log_root: paths.log_root.clone(),
        cgroup: Some(CgroupConfig { setup, layout: Layout::default() }),
        shim_log: Some(paths.state_dir.join("shim.log")),
    })
}

fn pod_config(name: &str, uid: &str) -> SandboxConfig {
    SandboxConfig::new(PodMeta::new(name, "default", uid))
}

fn container_config(opts: &RunOptions, image: &Image) -> ContainerConfig {
    ContainerConfig {
        tty: opts.tty,
        ..ContainerConfig::new(&opts.name, image.name(), opts.command.clone())
    }
}

/// A random RFC 4122 version 4 shaped pod uid.
fn pod_uid() -> String {
    let id = SandboxId::random().to_string();
    let more = SandboxId::random().to_string();
    format!("{}-{}-4{}-8{}-{}", &id[..8], &id[8..12], &more[..3], &more[3..6], &more[..12])
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The container exited with this code (128 + signal when killed).
    Exited(i32),
    /// The caller's interrupt came first; the container was killed and removed.
    Interrupted,
}

impl Ended {
    /// The exit status for the `keelson` process: the container's, or 130 when interrupted.
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(c) => c,
            Ended::Interrupted => 130,
        }
    }
}

/// Runs the container to its end (or until `interrupt` completes) and cleans up.
pub async fn run(
    opts: &RunOptions,
    out: Output<'_>,
    interrupt: impl Future<Output = ()>,
) -> Result<Ended> {
    let store_root = opts.paths.data_dir.join("images");
    let store = tokio::task::spawn_blocking(move || ImageStore::open(store_root))
        .await
        .map_err(|source| Error::Task { op: "open the image store", source })?
        .map_err(|source| Error::Image { image: opts.image.clone(), source })?;
    let image = resolve_image(&store, &opts.image, opts.progress.as_ref()).await?;
    let rt = ShimRuntime::new(runtime_config(&opts.paths)?, Arc::new(NoNetwork))
        .await
        .map_err(rt_err("start the runtime"))?;

    let uid = pod_uid();
    let rootfs_key = format!("run-{}", &uid[..8]);
    let mut state = Cleanup { rt: rt.clone(), store: store.clone(), sandbox: None, rootfs: None };
    let res = tokio::select! {
        r = run_in(&rt, &store, &image, opts, &uid, &rootfs_key, &mut state, out) => {
            r.map(Ended::Exited)
        }
        () = interrupt => {
            tracing::warn!("interrupted: removing the container and its sandbox");
            Ok(Ended::Interrupted)
        }
    };
    let cleaned = state.run().await;
    let code = res?;
    cleaned?;
    Ok(code)
}

/// What must be removed at the end.
struct Cleanup {
    rt: ShimRuntime,
    store: ImageStore,
    sandbox: Option<SandboxId>,
    rootfs: Option<String>,
}

impl Cleanup {
    async fn run(&mut self) -> Result<()> {
        let mut res = Ok(());
        if let Some(sb) = self.sandbox.take() {
            res = self.rt.remove_sandbox(&sb).await.map_err(rt_err("remove the sandbox"));
        }
        if let Some(key) = self.rootfs.take() {
            let store = self.store.clone();
            let img = tokio::task::spawn_blocking(move || store.release_rootfs(&key))
                .await
                .map_err(|source| Error::Task { op: "release the root filesystem", source })
                .and_then(|r| {
                    r.map_err(|source| Error::Image { image: "root filesystem".into(), source })
                });
            res = res.and(img);
        }
        res
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_in(
    rt: &ShimRuntime,
    store: &ImageStore,
    image: &Image,
    opts: &RunOptions,
    uid: &str,
    rootfs_key: &str,
    state: &mut Cleanup,
    out: Output<'_>,
) -> Result<i32> {
    let (s, i, k) = (store.clone(), image.clone(), rootfs_key.to_owned());
    state.rootfs = Some(rootfs_key.to_owned());
    let mount = tokio::task::spawn_blocking(move || s.prepare_rootfs(&i, &k))
        .await
        .map_err(|source| Error::Task { op: "prepare the root filesystem", source })?
        .map_err(|source| Error::Image { image: opts.image.clone(), source })?;

    let sb = rt
        .create_sandbox(pod_config(&opts.name, uid))
        .await
        .map_err(rt_err("create the sandbox"))?;
    state.sandbox = Some(sb.id.clone());
    let cimage = ContainerImage {
        reference: image.name().to_owned(),
        config: image.container_config(),
        rootfs: Rootfs::Overlay {
            lowerdirs: mount.lowerdirs,
            upperdir: mount.upperdir,
            workdir: mount.workdir,
        },
    };
    let id = rt
        .create_container(&sb.id, container_config(opts, image), cimage)
        .await
        .map_err(rt_err("create the container"))?;
    let mut events = rt.events();
    rt.start_container(&id).await.map_err(rt_err("start the container"))?;

    // The log follows until the container has exited and its output is drained.
    let mut log = rt
        .logs(&id, LogOptions { follow: true, tail: None })
        .await
        .map_err(rt_err("follow the container's log"))?;
    while let Some(entry) = log.next().await {
        let entry = entry.map_err(rt_err("read the container's log"))?;
        let w: &mut (dyn AsyncWrite + Unpin + Send) = match entry.stream {
            LogStreamKind::Stderr => &mut *out.stderr,
            _ => &mut *out.stdout,
        };
        w.write_all(&entry.content).await.map_err(Error::Output)?;
        if !entry.partial {
            w.write_all(b"\n").await.map_err(Error::Output)?;
        }
        w.flush().await.map_err(Error::Output)?;
    }

    let st = rt.container_status(&id).await.map_err(rt_err("container status"))?;
    if st.state == ContainerState::Exited {
        return Ok(st.exit_code.unwrap_or(0));
    }
    loop {
        match events.recv().await {
            Ok(RuntimeEvent::ContainerExited { id: e, exit, .. }) if e == id => {
                return Ok(exit.code)
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(Error::NoExit(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_become_valid_local_names() {
        assert_eq!(
            name_for_path(Path::new("/x/busybox-oci.tar")),
            "keelson.local/busybox-oci:latest"
        );
        assert_eq!(name_for_path(Path::new("/x/My_Image")), "keelson.local/my-image:latest");
        assert_eq!(name_for_path(Path::new("/x/.tar")), "keelson.local/image:latest");
    }

    #[test]
    fn pod_uids_look_like_uuids() {
        let u = pod_uid();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{u}");
        assert_ne!(pod_uid(), u);
    }
}
