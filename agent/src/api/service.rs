//! [`NodeApi`]: the node API's services over the pod registry, the runtime, the image store
//! and the pod network. No sockets here: [`super::serve`] puts it on listeners, and tests can
//! call it in process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use keelson_agentctl::proto::{self, exec_input::Input, exec_output::Output};
use keelson_runtime::api::{self as rt, ExecConfig, LogOptions, Runtime};
use keelson_runtime::image::{
    self, ImageStore, ImportOptions, Phase, Progress, PullOptions, RegistryAuth,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::registry::{ManifestError, PodRegistry};
use super::{authorize, Access};
use crate::network::CniNetwork;

/// The annotation naming the manifest file a pod came from (set by the manifest loader);
/// `inspect` reports that file's errors with the pod.
pub const MANIFEST_ANNOTATION: &str = "keelson.dev/manifest";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The node API's services (they share one state, so the struct is cheap to clone).
#[derive(Clone)]
pub struct NodeApi {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<dyn PodRegistry>,
    runtime: Arc<dyn Runtime>,
    images: Option<ImageStore>,
    network: Option<Arc<CniNetwork>>,
    upload_dir: PathBuf,
}

impl std::fmt::Debug for NodeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApi")
            .field("images", &self.inner.images.as_ref().map(ImageStore::root))
            .field("network", &self.inner.network.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeApi {
    /// The API over the agent's parts. `upload_dir` holds image archives while they are
    /// uploaded (one file per import, removed after it).
    pub fn new(
        registry: Arc<dyn PodRegistry>,
        runtime: Arc<dyn Runtime>,
        images: Option<ImageStore>,
        network: Option<Arc<CniNetwork>>,
        upload_dir: PathBuf,
    ) -> Self {
        NodeApi { inner: Arc::new(Inner { registry, runtime, images, network, upload_dir }) }
    }

    fn images(&self) -> Result<ImageStore, Status> {
        self.inner
            .images
            .clone()
            .ok_or_else(|| Status::failed_precondition("this agent runs without an image store"))
    }

    fn find_pod(&self, name: &str) -> Result<Pod, Status> {
        let key = pod_key(name);
        self.inner
            .registry
            .pods()
            .into_iter()
            .find(|p| pod_name(p) == key)
            .ok_or_else(|| Status::not_found(format!("no pod {key}")))
    }

    fn container(&self, pod: &str, container: Option<&str>) -> Result<super::ContainerRef, Status> {
        let key = pod_key(pod);
        self.inner.registry.container_id(&key, container).ok_or_else(|| match container {
            Some(c) => Status::not_found(format!("no container {c} in pod {key}")),
            None => Status::not_found(format!("no running container in pod {key}")),
        })
    }
}

/// `name` → `default/name`; `ns/name` unchanged.
fn pod_key(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("default/{name}")
    }
}

fn pod_name(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn manifest_error(e: ManifestError) -> proto::ManifestError {
    proto::ManifestError { path: e.path.display().to_string(), message: e.message }
}

fn summarize(p: &Pod) -> proto::PodSummary {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let statuses = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    proto::PodSummary {
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into()),
        ready_containers: u32::try_from(statuses.iter().filter(|c| c.ready).count())
            .unwrap_or(u32::MAX),
        total_containers: spec
            .map(|s| s.containers.len())
            .unwrap_or_default()
            .try_into()
            .unwrap_or(u32::MAX),
        restarts: statuses.iter().map(|c| u32::try_from(c.restart_count).unwrap_or(0)).sum(),
        pod_ips: status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
            .unwrap_or_default(),
        start_time: status
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.as_second())
            .unwrap_or(0),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    }
}

/// The runtime's errors as statuses: what the caller did wrong is said; internals are logged,
/// not sent.
fn runtime_status(op: &str, e: rt::Error) -> Status {
    use rt::Error as E;
    match &e {
        E::SandboxNotFound(_) | E::ContainerNotFound(_) => Status::not_found(e.to_string()),
        E::SandboxNotReady(_) => Status::unavailable(e.to_string()),
        E::InvalidState { .. } => Status::failed_precondition(e.to_string()),
        E::Io { .. }
        | E::ShimStart { .. }
        | E::ShimIo { .. }
        | E::Shim { .. }
        | E::Protocol { .. }
        | E::State(_)
        | E::Spec(_)
        | E::SeccompFilter(_)
        | E::Cgroup(_)
        | E::Network { .. }
        | E::Log { .. } => {
            tracing::warn!(op, error = %crate::api::service::chain(&e), "node API call failed");
            Status::internal(format!("{op} failed in the runtime (see the agent's log)"))
        }
    }
}

fn image_status(op: &str, e: image::Error) -> Status {
    use image::Error as E;
    match &e {
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::Ambiguous(_) | E::Reference { .. } | E::NoName(_) => {
            Status::invalid_argument(e.to_string())
        }
        E::Archive { .. }
        | E::DigestMismatch { .. }
        | E::SizeMismatch { .. }
        | E::InvalidDigest(_)
        | E::Json { .. }
        | E::Spec { .. }
        | E::NoPlatform { .. }
        | E::UnsupportedMediaType { .. }
        | E::BadImage { .. }
        | E::BlobNotFound(_) => Status::invalid_argument(chain(&e)),
        E::Registry { .. } => Status::unavailable(chain(&e)),
        E::Io { .. }
        | E::Read { .. }
        | E::Unpack { .. }
        | E::MetadataVersion { .. }
        | E::InvalidContainerId(_)
        | E::RootfsExists(_)
        | E::OptionsTooLong(_)
        | E::BadRoot(_)
        | E::Task(_) => {
            tracing::warn!(op, error = %chain(&e), "node API image call failed");
            Status::internal(format!("{op} failed in the image store (see the agent's log)"))
        }
    }
}

/// The whole error chain on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn progress_event(p: Progress) -> proto::ImageProgress {
    use proto::image_progress::Event;
    let event = match p {
        Progress::Resolved { reference, manifest, layers } => {
            Event::Resolved(proto::ImageResolved {
                reference,
                manifest,
                layers: u32::try_from(layers).unwrap_or(u32::MAX),
            })
        }
        Progress::Blob { id, phase, done, total } => {
            Event::Blob(proto::BlobProgress { id, phase: blob_phase(phase) as i32, done, total })
        }
        Progress::Stored { name, id } => Event::Stored(proto::ImageStored { name, id }),
    };
    proto::ImageProgress { event: Some(event) }
}

fn blob_phase(p: Phase) -> proto::BlobPhase {
    match p {
        Phase::Waiting => proto::BlobPhase::Waiting,
        Phase::Transferring => proto::BlobPhase::Transferring,
        Phase::Exists => proto::BlobPhase::Exists,
        Phase::Done => proto::BlobPhase::Done,
        Phase::Failed => proto::BlobPhase::Failed,
    }
}

/// Forwards the store's progress events to the call's stream until the store is done.
fn forward_progress(
    mut rx: mpsc::UnboundedReceiver<Progress>,
    tx: mpsc::Sender<Result<proto::ImageProgress, Status>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            if tx.send(Ok(progress_event(p))).await.is_err() {
                return;
            }
        }
    })
}

#[tonic::async_trait]
impl proto::pods_server::Pods for NodeApi {
    async fn list(
        &self,
        req: Request<proto::ListPodsRequest>,
    ) -> Result<Response<proto::ListPodsResponse>, Status> {
        authorize(&req, Access::Read, "pods list")?;
        let mut pods: Vec<proto::PodSummary> =
            self.inner.registry.pods().iter().map(summarize).collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let manifest_errors =
            self.inner.registry.manifest_errors().into_iter().map(manifest_error).collect();
        Ok(Response::new(proto::ListPodsResponse { pods, manifest_errors }))
    }

    async fn inspect(
        &self,
        req: Request<proto::InspectPodRequest>,
    ) -> Result<Response<proto::InspectPodResponse>, Status> {
        authorize(&req, Access::Read, "pods inspect")?;
        let pod = self.find_pod(&req.get_ref().pod)?;
        let source = pod.metadata.annotations.as_ref().and_then(|a| a.get(MANIFEST_ANNOTATION));
        let manifest_errors = self
            .inner
            .registry
            .manifest_errors()
            .into_iter()
            .filter(|e| source.is_some_and(|s| e.path == std::path::Path::new(s)))
            .map(manifest_error)
            .collect();
        let pod_json = serde_json::to_string_pretty(&pod)
            .map_err(|e| Status::internal(format!("encode the pod: {e}")))?;
        Ok(Response::new(proto::InspectPodResponse { pod_json, manifest_errors }))
    }
}

fn state_name(s: rt::ContainerState) -> &'static str {
    match s {
        rt::ContainerState::Created => "created",
        rt::ContainerState::Running => "running",
        rt::ContainerState::Exited => "exited",
        rt::ContainerState::Unknown => "unknown",
    }
}

/// Pumps `reader` into the output stream as `wrap(bytes)` until it ends.
fn pump(
    mut reader: rt::Reader,
    tx: mpsc::Sender<Result<proto::ExecOutput, Status>>,
    wrap: fn(Vec<u8>) -> Output,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    let out = proto::ExecOutput { output: Some(wrap(buf[..n].to_vec())) };
                    if tx.send(Ok(out)).await.is_err() {
                        return;
                    }
                }
                // A terminal's master reads EIO once the last slave closes: the end.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "exec output");
                    return;
                }
            }
        }
    })
}

#[tonic::async_trait]
impl proto::containers_server::Containers for NodeApi {
    async fn list(
        &self,
        req: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        authorize(&req, Access::Read, "containers list")?;
        let rt = &self.inner.runtime;
        let sandboxes =
            rt.list_sandboxes().await.map_err(|e| runtime_status("list sandboxes", e))?;
        let pods: HashMap<_, _> = sandboxes
            .into_iter()
            .map(|s| (s.id, format!("{}/{}", s.pod.namespace, s.pod.name)))
            .collect();
        let mut containers: Vec<proto::ContainerInfo> = rt
            .list_containers(None)
            .await
            .map_err(|e| runtime_status("list containers", e))?
            .into_iter()
            .map(|c| proto::ContainerInfo {
                id: c.id.to_string(),
                pod: pods.get(&c.sandbox_id).cloned().unwrap_or_default(),
                sandbox_id: c.sandbox_id.to_string(),
                name: c.name,
                image: c.image,
                state: state_name(c.state).into(),
                pid: c.pid,
                exit_code: c.exit_code,
                restart_count: c.restart_count,
                created_at: unix_secs(c.created_at),
                started_at: c.started_at.map(unix_secs),
                finished_at: c.finished_at.map(unix_secs),
            })
            .collect();
        containers
            .sort_by(|a, b| (&a.pod, &a.name, a.created_at).cmp(&(&b.pod, &b.name, b.created_at)));
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    type LogsStream = BoxStream<proto::LogRecord>;

    async fn logs(
        &self,
        req: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        authorize(&req, Access::Read, "logs")?;
        let r = req.into_inner();
        let c = self.container(&r.pod, r.container.as_deref())?;
        let id = if r.previous {
            c.previous.ok_or_else(|| {
                Status::not_found(format!(
                    "container {} of pod {} has no previous instance",
                    c.name,
                    pod_key(&r.pod)
                ))
            })?
        } else {
            c.id
        };
        let options = LogOptions {
            follow: r.follow && !r.previous,
            tail: r.tail.map(|t| usize::try_from(t).unwrap_or(usize::MAX)),
        };
        let stream =
            self.inner.runtime.logs(&id, options).await.map_err(|e| runtime_status("logs", e))?;
        let stream = stream.map(|entry| {
            let e = entry.map_err(|e| runtime_status("logs", e))?;
            Ok(proto::LogRecord {
                timestamp: e.timestamp.timestamp_nanos_opt().unwrap_or(0),
                stream: match e.stream {
                    rt::LogStreamKind::Stdout => proto::OutputStream::Stdout,
                    rt::LogStreamKind::Stderr => proto::OutputStream::Stderr,
                } as i32,
                partial: e.partial,
                content: e.content,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type ExecStream = BoxStream<proto::ExecOutput>;

    async fn exec(
        &self,
        req: Request<Streaming<proto::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        authorize(&req, Access::Write, "exec")?;
        let mut input = req.into_inner();
        let start = match input.message().await? {
            Some(proto::ExecInput { input: Some(Input::Start(s)) }) => s,
            _ => return Err(Status::invalid_argument("the first exec message must be start")),
        };
        if start.command.is_empty() {
            return Err(Status::invalid_argument("exec needs a command"));
        }
        let c = self.container(&start.pod, start.container.as_deref())?;
        let config = ExecConfig {
            command: start.command.clone(),
            env: Vec::new(),
            tty: start.tty,
            stdin: start.stdin,
        };
        tracing::info!(pod = %pod_key(&start.pod), container = %c.name, command = ?start.command, "exec");
        let mut session =
            self.inner.runtime.exec(&c.id, config).await.map_err(|e| runtime_status("exec", e))?;
        let resize = session.resizer();
        if start.tty && start.cols > 0 && start.rows > 0 {
            let _ = resize(clamp(start.cols), clamp(start.rows));
        }
        let (tx, rx) = mpsc::channel::<Result<proto::ExecOutput, Status>>(16);
        let mut pumps = Vec::new();
        if let Some(out) = session.stdout.take() {
            pumps.push(pump(out, tx.clone(), Output::Stdout));
        }
        if let Some(err) = session.stderr.take() {
            pumps.push(pump(err, tx.clone(), Output::Stderr));
        }
        let mut stdin = session.stdin.take();
        // Input: stdin bytes, resizes, close. Ends with the client's stream.
        let input_task = tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                match msg.input {
                    Some(Input::Stdin(data)) => {
                        if let Some(w) = stdin.as_mut() {
                            if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Some(Input::Resize(s)) => {
                        if let Err(e) = resize(clamp(s.cols), clamp(s.rows)) {
                            tracing::debug!(error = %e, "exec resize");
                        }
                    }
                    Some(Input::CloseStdin(_)) => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    Some(Input::Start(_)) | None => {}
                }
            }
        });
        tokio::spawn(async move {
            let exit = session.wait().await;
            // The output ends when the process and everything that inherited its stdio did.
            for p in pumps {
                let _ = p.await;
            }
            input_task.abort();
            let msg = match exit {
                Ok(e) => Ok(proto::ExecOutput {
                    output: Some(Output::Exit(proto::ExitStatus {
                        code: e.code,
                        signal: e.signal,
                        oom_killed: e.oom_killed,
                    })),
                }),
                Err(e) => Err(runtime_status("exec wait", e)),
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Deletes an upload when the import is over, however it ended.
struct Upload(PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tonic::async_trait]
impl proto::images_server::Images for NodeApi {
    async fn list(
        &self,
        req: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        authorize(&req, Access::Read, "images list")?;
        let store = self.images()?;
        let list = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| Status::internal(format!("images list: {e}")))?
            .map_err(|e| image_status("images list", e))?;
        let images = list
            .into_iter()
            .map(|i| proto::ImageInfo {
                name: i.record.name.clone(),
                id: i.record.config.to_string(),
                manifest: i.record.manifest.to_string(),
                size: i.record.layers.iter().map(|l| l.size).sum(),
                platform: i.record.platform.clone(),
                stored_at: i64::try_from(i.record.stored_at).unwrap_or(i64::MAX),
            })
            .collect();
        Ok(Response::new(proto::ListImagesResponse { images }))
    }

    type ImportStream = BoxStream<proto::ImageProgress>;

    async fn import(
        &self,
        req: Request<Streaming<proto::ImportChunk>>,
    ) -> Result<Response<Self::ImportStream>, Status> {
        use proto::import_chunk::Chunk;
        authorize(&req, Access::Write, "images import")?;
        let store = self.images()?;
        let mut chunks = req.into_inner();
        let header = match chunks.message().await? {
            Some(proto::ImportChunk { chunk: Some(Chunk::Header(h)) }) => h,
            _ => return Err(Status::invalid_argument("the first import message must be header")),
        };
        let dir = self.inner.upload_dir.clone();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            tracing::warn!(dir = %dir.display(), error = %e, "create the upload directory");
            Status::internal("cannot stage the upload (see the agent's log)")
        })?;
        let path = dir.join(format!("upload-{:016x}.tar", rand_id()));
        let upload = Upload(path.clone());
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "create the upload file");
            Status::internal("cannot stage the upload (see the agent's log)")
        })?;
        let (tx, rx) = mpsc::channel::<Result<proto::ImageProgress, Status>>(32);
        tokio::spawn(async move {
            let upload_event = |done: u64| proto::ImageProgress {
                event: Some(proto::image_progress::Event::Upload(proto::BlobProgress {
                    id: "upload".into(),
                    phase: proto::BlobPhase::Transferring as i32,
                    done,
                    total: header.size.max(done),
                })),
            };
            let mut done = 0u64;
            let mut reported = 0u64;
            loop {
                match chunks.message().await {
                    Ok(Some(proto::ImportChunk { chunk: Some(Chunk::Data(d)) })) => {
                        if let Err(e) = file.write_all(&d).await {
                            tracing::warn!(error = %e, "write the upload");
                            let _ = tx
                                .send(Err(Status::internal(
                                    "cannot stage the upload (see the agent's log)",
                                )))
                                .await;
                            return;
                        }
                        done += d.len() as u64;
                        if done - reported >= 1 << 20 {
                            reported = done;
                            let _ = tx.send(Ok(upload_event(done))).await;
                        }
                    }
                    Ok(Some(_)) => {
                        let _ =
                            tx.send(Err(Status::invalid_argument("a second import header"))).await;
                        return;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(%status, "image upload aborted");
                        return;
                    }
                }
            }
            if let Err(e) = file.sync_all().await {
                tracing::warn!(error = %e, "sync the upload");
            }
            drop(file);
            let _ = tx.send(Ok(upload_event(done))).await;
            let (ptx, prx) = mpsc::unbounded_channel();
            let forward = forward_progress(prx, tx.clone());
            let opts = ImportOptions { name: header.name.clone(), platform: None };
            let result = tokio::task::spawn_blocking(move || {
                let _upload = upload;
                store.import(&path, &opts, Some(&ptx))
            })
            .await;
            let _ = forward.await;
            match result {
                Ok(Ok(image)) => {
                    tracing::info!(name = image.name(), "image imported through the node API");
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(image_status("images import", e))).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("images import: {e}")))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type PullStream = BoxStream<proto::ImageProgress>;

    async fn pull(
        &self,
        req: Request<proto::PullImageRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        authorize(&req, Access::Write, "images pull")?;
        let store = self.images()?;
        let reference = req.into_inner().reference;
        if reference.is_empty() {
            return Err(Status::invalid_argument("pull needs an image reference"));
        }
        let (tx, rx) = mpsc::channel::<Result<proto::ImageProgress, Status>>(32);
        let (ptx, prx) = mpsc::unbounded_channel();
        let forward = forward_progress(prx, tx.clone());
        // The store's pull future is not `Send` for every lifetime (a rustc limit with its
        // borrowed arguments), so it runs on a blocking thread of its own.
        let handle = tokio::runtime::Handle::current();
        let pull = tokio::task::spawn_blocking(move || {
            handle.block_on(store.pull(
                &reference,
                &RegistryAuth::Anonymous,
                &PullOptions::default(),
                Some(&ptx),
            ))
        });
        tokio::spawn(async move {
            let result = pull.await;
            let _ = forward.await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let _ = tx.send(Err(image_status("images pull", e))).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("images pull: {e}")))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn remove(
        &self,
        req: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        authorize(&req, Access::Write, "images remove")?;
        let store = self.images()?;
        let reference = req.into_inner().reference;
        let removed = tokio::task::spawn_blocking(move || store.remove(&reference))
            .await
            .map_err(|e| Status::internal(format!("images remove: {e}")))?
            .map_err(|e| image_status("images remove", e))?;
        Ok(Response::new(proto::RemoveImageResponse { removed }))
    }
}

fn rand_id() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

#[tonic::async_trait]
impl proto::net_server::Net for NodeApi {
    async fn status(
        &self,
        req: Request<proto::NetStatusRequest>,
    ) -> Result<Response<proto::NetStatusResponse>, Status> {
        authorize(&req, Access::Read, "net")?;
        let Some(net) = &self.inner.network else {
            return Ok(Response::new(proto::NetStatusResponse::default()));
        };
        let net = net.network();
        let cfg = net.config();
        let status = net.status().await.map_err(|e| {
            tracing::warn!(error = %chain(&e), "net status");
            Status::unavailable(format!("pod network status: {}", chain(&e)))
        })?;
        let ipam = keelson_cni::ipam::Ipam::open(&cfg.state_dir, &cfg.name, &cfg.ranges)
            .map_err(|e| Status::unavailable(format!("pod network addresses: {}", chain(&e))))?;
        let sandboxes = self.inner.runtime.list_sandboxes().await.unwrap_or_default();
        let pods: HashMap<String, String> = sandboxes
            .into_iter()
            .map(|s| (s.id.to_string(), format!("{}/{}", s.pod.namespace, s.pod.name)))
            .collect();
        let allocations = ipam
            .list()
            .map_err(|e| Status::unavailable(format!("pod network addresses: {}", chain(&e))))?
            .into_iter()
            .map(|(key, ip)| proto::Allocation {
                pod: pods.get(&key.container_id).cloned().unwrap_or_default(),
                sandbox_id: key.container_id,
                ifname: key.ifname,
                ip: ip.to_string(),
            })
            .collect();
        let mut ranges = Vec::new();
        let mut routes = Vec::new();
        for (i, set) in ipam.ranges().iter().enumerate() {
            let exhausted = status.exhausted.iter().any(|(s, _)| *s == i);
            for r in set {
                ranges.push(proto::NetRange {
                    subnet: r.subnet.to_string(),
                    gateway: r.gateway.to_string(),
                    exhausted,
                });
                routes.push(proto::Route {
                    destination: r.subnet.trunc().to_string(),
                    via: String::new(),
                    device: crate::network::POD_IFNAME.into(),
                });
                let default = if r.gateway.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                if !routes.iter().any(|x| x.destination == default) {
                    routes.push(proto::Route {
                        destination: default.into(),
                        via: r.gateway.to_string(),
                        device: crate::network::POD_IFNAME.into(),
                    });
                }
            }
        }
        Ok(Response::new(proto::NetStatusResponse {
            configured: true,
            name: cfg.name.clone(),
            bridge: cfg.bridge.clone(),
            bridge_present: status.bridge_present,
            mtu: match cfg.mtu {
                keelson_cni::config::Mtu::Fixed(m) => m,
                _ => 0,
            },
            ranges,
            allocations,
            routes,
        }))
    }
}

#[tonic::async_trait]
impl proto::system_server::System for NodeApi {
    async fn health(
        &self,
        req: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        authorize(&req, Access::Read, "health")?;
        let mut checks = Vec::new();
        let check = |name: &str, r: Result<String, String>| match r {
            Ok(message) => proto::HealthCheck { name: name.into(), ok: true, message },
            Err(message) => proto::HealthCheck { name: name.into(), ok: false, message },
        };
        let runtime = self.inner.runtime.list_sandboxes().await;
        checks.push(check(
            "runtime",
            runtime.map(|s| format!("{} sandboxes", s.len())).map_err(|e| chain(&e)),
        ));
        if let Some(store) = self.inner.images.clone() {
            let r = tokio::task::spawn_blocking(move || store.list()).await;
            checks.push(check(
                "images",
                match r {
                    Ok(Ok(l)) => Ok(format!("{} images", l.len())),
                    Ok(Err(e)) => Err(chain(&e)),
                    Err(e) => Err(e.to_string()),
                },
            ));
        }
        if let Some(net) = &self.inner.network {
            let r = net.network().status().await;
            checks.push(check(
                "network",
                match r {
                    Ok(s) if s.exhausted.is_empty() => {
                        Ok(format!("{} addresses allocated", s.allocated))
                    }
                    Ok(s) => Err(format!("address ranges exhausted: {:?}", s.exhausted)),
                    Err(e) => Err(chain(&e)),
                },
            ));
        }
        let errors = self.inner.registry.manifest_errors();
        checks.push(check(
            "manifests",
            if errors.is_empty() {
                Ok(format!("{} pods", self.inner.registry.pods().len()))
            } else {
                Err(format!("{} manifests cannot be used (see agentctl pods)", errors.len()))
            },
        ));
        let ok = checks.iter().all(|c| c.ok);
        Ok(Response::new(proto::HealthResponse { ok, checks }))
    }

    async fn version(
        &self,
        req: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        authorize(&req, Access::Read, "version")?;
        Ok(Response::new(proto::VersionResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            api: keelson_agentctl::API_VERSION.into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }))
    }
}
