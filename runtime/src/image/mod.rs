//! OCI images: content store, import, pull, unpacking and snapshots.
//!
//! [`ImageStore`] is the whole API the rest of the runtime uses:
//!
//! ```no_run
//! # async fn demo() -> keelson_runtime::image::Result<()> {
//! use keelson_runtime::image::{ImageStore, ImportOptions, RegistryAuth, PullOptions};
//! let store = ImageStore::open("/var/lib/keelson/images")?;
//! // Blocking calls: run them under `tokio::task::spawn_blocking` in async code.
//! store.import("/tmp/busybox-oci.tar".as_ref(), &ImportOptions::named("keelson.test/busybox:latest"), None)?;
//! let _pulled = store.pull("127.0.0.1:5000/busybox:latest", &RegistryAuth::Anonymous, &PullOptions::default(), None).await?;
//! let image = store.get("keelson.test/busybox")?;      // normalized to docker.io/… when bare
//! let rootfs = store.prepare_rootfs(&image, "c1")?;      // unpacks layers once, per chain id
//! println!("mount -t overlay overlay -o {} /run/c1/rootfs", rootfs.options()?);
//! store.release_rootfs("c1")?;                            // after unmounting
//! store.remove("keelson.test/busybox")?;
//! store.gc()?;                                            // drops unreferenced blobs/snapshots
//! # Ok(()) }
//! ```
//!
//! On disk, under the store's root:
//! - `blobs/sha256/<hex>`: verified content ([`content`]); `ingest/`: blobs being written;
//! - `metadata.json`: image records, snapshots, prepared root filesystems ([`metadata`]);
//! - `snapshots/<n>/fs`: one unpacked layer per chain id, `<n>` a short counter so that overlay
//!   mount options stay under a page ([`snapshot`], [`unpack`]);
//! - `containers/<id>/{upper,work}`: each container's writable overlay layer.
//!
//! Names are normalized like containerd does (`busybox` → `docker.io/library/busybox:latest`)
//! with `oci-client`'s reference parser.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use oci_spec::image::ImageConfiguration;

pub mod content;
pub mod digest;
pub mod import;
pub mod manifest;
pub mod metadata;
pub mod progress;
pub mod pull;
pub mod snapshot;
pub mod unpack;

pub use content::ContentStore;
pub use digest::Digest;
pub use import::ImportOptions;
pub use manifest::Platform;
pub use metadata::{ImageRecord, LayerRecord};
pub use oci_client::secrets::RegistryAuth;
pub use progress::{Phase, Progress, ProgressSender};
pub use pull::PullOptions;
pub use snapshot::{Mounter, OverlayMounter, RootfsMount};
pub use unpack::{HostOps, PrivilegedOps};

use metadata::{Metadata, RootfsRecord};

/// Errors of the image subsystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
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
    /// Reading a stream (archive entry, download) failed.
    #[error("reading {what}")]
    Read {
        /// What was being read.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a `sha256:<64 hex>` digest.
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// Content did not hash to its digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest that was promised.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// Content did not have its declared size.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// Declared size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A blob is not in the store.
    #[error("blob {0} not found")]
    BlobNotFound(String),
    /// JSON that did not parse.
    #[error("parsing {what}")]
    Json {
        /// Which document.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An OCI document that did not parse or build.
    #[error("parsing {what}")]
    Spec {
        /// Which document.
        what: String,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// A reference that did not parse.
    #[error("invalid image reference {reference:?}")]
    Reference {
        /// The reference as given.
        reference: String,
        /// The cause.
        #[source]
        source: oci_client::ParseError,
    },
    /// No image by that reference.
    #[error("image {0} not found")]
    NotFound(String),
    /// A short id matched several images.
    #[error("image id prefix {0} is ambiguous")]
    Ambiguous(String),
    /// An index has no manifest for the wanted platform.
    #[error("no manifest for platform {wanted} (available: {available})")]
    NoPlatform {
        /// The platform asked for.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A media type this store does not handle where it appeared.
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
        /// Where it appeared.
        what: String,
    },
    /// An archive or layout whose format is not recognised or is inconsistent.
    #[error("{path}: {reason}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An import that yields no image name.
    #[error("no image name for {0}: pass one in ImportOptions")]
    NoName(PathBuf),
    /// An image whose config and manifest disagree.
    #[error("image {image}: {reason}")]
    BadImage {
        /// The image (manifest digest).
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A registry operation failed.
    #[error("{op} {reference}")]
    Registry {
        /// What was being done.
        op: &'static str,
        /// The image reference.
        reference: String,
        /// The cause.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// Unpacking a layer entry failed.
    #[error("unpacking layer {layer}: {op} {entry:?}")]
    Unpack {
        /// The layer (short digest).
        layer: String,
        /// What was being done.
        op: &'static str,
        /// The tar entry's path.
        entry: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata file has a version this code cannot read.
    #[error("{path}: metadata version {version} is not supported")]
    MetadataVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// A container id unfit as a directory name.
    #[error("invalid container id {0:?}")]
    InvalidContainerId(String),
    /// The container already has a root filesystem from another image.
    #[error("container {0} already has a root filesystem")]
    RootfsExists(String),
    /// Overlay mount options would exceed a page.
    #[error("overlay options for {0} layers exceed the mount option limit")]
    OptionsTooLong(usize),
    /// A store root with characters overlayfs options cannot carry (`,` `:`).
    #[error("store root {0} contains ',' or ':'")]
    BadRoot(PathBuf),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// The parts of an image config a runtime needs to start a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `ENV`, `KEY=value`.
    pub env: Vec<String>,
    /// `USER` (name, uid, `uid:gid`, …), if set.
    pub user: Option<String>,
    /// `WORKDIR`, if set.
    pub working_dir: Option<String>,
    /// `STOPSIGNAL`, if set (`SIGTERM`, `15`, …).
    pub stop_signal: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl RunConfig {
    fn from_config(c: &ImageConfiguration) -> Self {
        let Some(cfg) = c.config() else { return Self::default() };
        Self {
            entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
            cmd: cfg.cmd().clone().unwrap_or_default(),
            env: cfg.env().clone().unwrap_or_default(),
            user: cfg.user().clone().filter(|u| !u.is_empty()),
            working_dir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
            stop_signal: cfg.stop_signal().clone().filter(|s| !s.is_empty()),
            labels: cfg.labels().clone().unwrap_or_default().into_iter().collect(),
        }
    }
}

/// A stored image with its parsed config.
#[derive(Debug, Clone)]
pub struct Image {
    /// The record as persisted (name, digests, layers).
    pub record: ImageRecord,
    /// Chain ids of the layers, bottom first (the snapshot keys).
    pub chain_ids: Vec<Digest>,
    /// The full image config.
    pub config: ImageConfiguration,
    /// What a runtime needs from the config.
    pub run: RunConfig,
}

impl Image {
    /// Normalized name (`docker.io/library/busybox:latest`).
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Image id: the config digest, as Docker and containerd report it.
    pub fn id(&self) -> &Digest {
        &self.record.config
    }

    /// The image config's `config` section (entrypoint, cmd, env, user, workdir, stop
    /// signal, …), empty if the image has none: what the runtime's spec builder takes.
    pub fn container_config(&self) -> oci_spec::image::Config {
        self.config.config().clone().unwrap_or_default()
    }
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs: Vec<Digest>,
    /// Snapshots (chain ids) deleted.
    pub snapshots: Vec<Digest>,
    /// Snapshot directories deleted: those of `snapshots` plus leftovers of interrupted
    /// unpacks.
    pub stray: Vec<PathBuf>,
    /// The blob sweep was skipped because an import or pull was writing blobs that no record
    /// names yet; run GC again later.
    pub blobs_deferred: bool,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Operations that need privileges when unpacking (whiteouts, opaque xattrs, chown).
    pub ops: Arc<dyn PrivilegedOps>,
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries always are.
    pub insecure_registries: Vec<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { ops: Arc::new(HostOps), insecure_registries: Vec::new() }
    }
}

/// The image store: content, records, snapshots. Cheap to clone; all clones share state.
/// Open one store per root per process: opening discards interrupted writes (`ingest/`,
/// `snapshots/tmp-*`), which would include another open store's writes in progress.
///
/// Methods other than [`ImageStore::pull`] block on disk I/O: in async code, call them under
/// `tokio::task::spawn_blocking`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    content: ContentStore,
    meta: Mutex<Metadata>,
    /// Serializes unpacking and GC so a layer is unpacked once and never collected mid-use.
    snapshots: Mutex<()>,
    /// Imports and pulls in flight: their blobs are not referenced by a record until they end,
    /// so GC leaves blobs alone while this is non-zero.
    ingests: AtomicUsize,
    opts: StoreOptions,
}

/// Counts an import or pull as in flight while alive.
struct IngestGuard<'a>(&'a AtomicUsize);

impl<'a> IngestGuard<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for IngestGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ImageStore {
    /// Opens (creating) a store at `root` with the host's privileged operations.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, StoreOptions::default())
    }

    /// Opens (creating) a store at `root`.
    pub fn open_with(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Self> {
        let root = root.as_ref();
        fs::create_dir_all(root).map_err(io_err("creating", root))?;
        let root = root.canonicalize().map_err(io_err("resolving", root))?;
        let s = root.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(Error::BadRoot(root));
        }
        let content = ContentStore::open(&root)?;
        for d in ["snapshots", "containers"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        // Unpacks interrupted by a crash: never published, so never used.
        let snapshots = root.join("snapshots");
        for e in fs::read_dir(&snapshots).map_err(io_err("listing", &snapshots))? {
            let e = e.map_err(io_err("listing", &snapshots))?;
            if e.file_name().to_string_lossy().starts_with("tmp-") {
                let p = e.path();
                fs::remove_dir_all(&p).map_err(io_err("removing", &p))?;
            }
        }
        let meta = Metadata::load(&root.join("metadata.json"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                content,
                meta: Mutex::new(meta),
                snapshots: Mutex::new(()),
                ingests: AtomicUsize::new(0),
                opts,
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The blob store.
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    fn meta(&self) -> MutexGuard<'_, Metadata> {
        // A panic while holding the lock leaves the in-memory copy as it was before the failed
        // change was saved; the file on disk is always whole. Keep going with it.
        self.inner.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks an ingest in flight. Taken under the metadata lock, which GC holds for its whole
    /// sweep, so no ingest can start between GC's check and its deletions.
    fn ingest(&self) -> IngestGuard<'_> {
        let _meta = self.meta();
        IngestGuard::new(&self.inner.ingests)
    }

    fn save(&self, meta: &Metadata) -> Result<()> {
        meta.save(&self.inner.root.join("metadata.json"))
    }

    /// Imports an OCI layout directory, an OCI layout tar or a `docker save` archive.
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub fn import(
        &self,
        path: &Path,
        opts: &ImportOptions,
        progress: Option<&ProgressSender>,
    ) -> Result<Image> {
        let _ingest = self.ingest();
        let record = import::import(&self.inner.content, path, opts, progress)?;
        self.store_record(record, progress)
    }

    /// Pulls `reference` from its registry.
    #[tracing::instrument(skip_all, fields(reference = %reference))]
    pub async fn pull(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        opts: &PullOptions,
        progress: Option<&ProgressSender>,
    ) -> Result<Image> {
        let _ingest = self.ingest();
        let record = pull::pull(
            &self.inner.content,
            reference,
            auth,
            opts,
            &self.inner.opts.insecure_registries,
            progress,
        )
        .await?;
        let store = self.clone();
        let tx = progress.cloned();
        tokio::task::spawn_blocking(move || store.store_record(record, tx.as_ref()))
            .await
            .map_err(Error::Task)?
    }

    fn store_record(
        &self,
        record: ImageRecord,
        progress: Option<&ProgressSender>,
    ) -> Result<Image> {
        let image = self.load(record.clone())?;
        let mut meta = self.meta();
        let mut next = meta.clone();
        next.images.insert(record.name.clone(), record);
        self.save(&next)?;
        *meta = next;
        tracing::info!(name = image.name(), id = %image.id(), "image stored");
        progress::emit(
            progress,
            Progress::Stored { name: image.name().to_owned(), id: image.id().to_string() },
        );
        Ok(image)
    }

    fn load(&self, record: ImageRecord) -> Result<Image> {
        let data = self.inner.content.read(&record.config)?;
        let config = ImageConfiguration::from_reader(data.as_slice())
            .map_err(|source| Error::Spec { what: format!("config {}", record.config), source })?;
        let diff_ids: Vec<Digest> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
        Ok(Image {
            chain_ids: digest::chain_ids(&diff_ids),
            run: RunConfig::from_config(&config),
            config,
            record,
        })
    }

    /// All images, by name.
    pub fn list(&self) -> Result<Vec<Image>> {
        let records: Vec<ImageRecord> = self.meta().images.values().cloned().collect();
        records.into_iter().map(|r| self.load(r)).collect()
    }

    /// Finds an image by name (`busybox`, `registry:5000/x/y:tag`), by `name@sha256:…`, by
    /// digest (`sha256:…` of its config, manifest or index) or by an id prefix (≥ 4 hex).
    pub fn get(&self, reference: &str) -> Result<Image> {
        let record = self
            .find(reference)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound(reference.to_owned()))?;
        self.load(record)
    }

    fn find(&self, reference: &str) -> Result<Vec<ImageRecord>> {
        let meta = self.meta();
        let matches_digest = |r: &ImageRecord, d: &str| {
            [&r.config, &r.manifest, &r.target].iter().any(|x| x.as_str() == d)
        };
        if reference.starts_with("sha256:") {
            let d = Digest::parse(reference)?;
            return Ok(meta
                .images
                .values()
                .filter(|r| matches_digest(r, d.as_str()))
                .cloned()
                .collect());
        }
        if reference.len() >= 4
            && reference.len() <= 64
            && reference.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let found: Vec<ImageRecord> = meta
                .images
                .values()
                .filter(|r| r.config.hex().starts_with(reference))
                .cloned()
                .collect();
            let ids: BTreeSet<&Digest> = found.iter().map(|r| &r.config).collect();
            if ids.len() > 1 {
                return Err(Error::Ambiguous(reference.to_owned()));
            }
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let parsed = manifest::parse_reference(reference)?;
        if let Some(d) = parsed.digest() {
            let repo = format!("{}/{}", parsed.registry(), parsed.repository());
            return Ok(meta
                .images
                .values()
                .filter(|r| {
                    (r.name.starts_with(&format!("{repo}:"))
                        || r.name.starts_with(&format!("{repo}@")))
                        && matches_digest(r, d)
                })
                .cloned()
                .collect());
        }
        Ok(meta.images.get(&manifest::record_name(&parsed)).cloned().into_iter().collect())
    }

    /// Removes the image record(s) a reference names (a digest removes every name of that
    /// image). Blobs and snapshots stay until [`ImageStore::gc`]. Returns the removed names.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>> {
        let names: Vec<String> = self.find(reference)?.into_iter().map(|r| r.name).collect();
        if names.is_empty() {
            return Err(Error::NotFound(reference.to_owned()));
        }
        let mut meta = self.meta();
        let mut next = meta.clone();
        for n in &names {
            next.images.remove(n);
        }
        self.save(&next)?;
        *meta = next;
        tracing::info!(?names, "images removed");
        Ok(names)
    }

    /// Unpacks the image's layers (once per chain id) and creates the container's writable
    /// layer. Idempotent for the same container and image.
    #[tracing::instrument(skip_all, fields(image = image.name(), container_id = %container_id))]
    pub fn prepare_rootfs(&self, image: &Image, container_id: &str) -> Result<RootfsMount> {
        snapshot::validate_container_id(container_id)?;
        let _guard = self.inner.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let mut lowers = Vec::with_capacity(image.chain_ids.len());
        for (layer, chain) in image.record.layers.iter().zip(&image.chain_ids) {
            let parent = lowers.last().map(|(c, _): &(Digest, String)| c.clone());
            let below: Vec<PathBuf> =
                lowers.iter().rev().map(|(_, id)| self.snapshot_fs(id)).collect();
            let id = self.ensure_snapshot(layer, chain, parent, &below)?;
            lowers.push((chain.clone(), id));
        }
        if lowers.is_empty() {
            return Err(Error::BadImage {
                image: image.record.manifest.to_string(),
                reason: "has no layers".into(),
            });
        }
        let chain: Vec<Digest> = lowers.iter().map(|(c, _)| c.clone()).collect();
        {
            let mut meta = self.meta();
            match meta.containers.get(container_id) {
                Some(r) if r.chain == chain => {}
                Some(_) => return Err(Error::RootfsExists(container_id.to_owned())),
                None => {
                    let mut next = meta.clone();
                    next.containers.insert(
                        container_id.to_owned(),
                        RootfsRecord { chain: chain.clone(), image: image.name().to_owned() },
                    );
                    self.save(&next)?;
                    *meta = next;
                }
            }
        }
        let dir = self.inner.root.join("containers").join(container_id);
        let mount = RootfsMount {
            lowerdirs: lowers.iter().rev().map(|(_, id)| self.snapshot_fs(id)).collect(),
            upperdir: dir.join("upper"),
            workdir: dir.join("work"),
        };
        for d in [&mount.upperdir, &mount.workdir] {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        mount.options()?;
        Ok(mount)
    }

    fn snapshot_fs(&self, id: &str) -> PathBuf {
        self.inner.root.join("snapshots").join(id).join("fs")
    }

    fn ensure_snapshot(
        &self,
        layer: &LayerRecord,
        chain: &Digest,
        parent: Option<Digest>,
        below: &[PathBuf],
    ) -> Result<String> {
        let snapshots = self.inner.root.join("snapshots");
        if let Some(rec) = self.meta().snapshots.get(chain) {
            if snapshots.join(&rec.id).join("fs").is_dir() {
                return Ok(rec.id.clone());
            }
        }
        let blob = self.inner.content.open_blob(&layer.digest)?;
        let tmp = tempfile::Builder::new()
            .prefix("tmp-")
            .tempdir_in(&snapshots)
            .map_err(io_err("creating a temp snapshot in", &snapshots))?;
        let fs_dir = tmp.path().join("fs");
        fs::create_dir(&fs_dir).map_err(io_err("creating", &fs_dir))?;
        let stats = unpack::unpack_layer_over(
            std::io::BufReader::new(blob),
            &layer.media_type,
            &fs_dir,
            below,
            layer.digest.short(),
            self.inner.opts.ops.as_ref(),
        )?;
        if stats.diff_id != layer.diff_id {
            return Err(Error::DigestMismatch {
                expected: layer.diff_id.to_string(),
                actual: stats.diff_id.to_string(),
            });
        }
        let mut meta = self.meta();
        let mut next = meta.clone();
        let id = next.next_snapshot.to_string();
        next.next_snapshot += 1;
        let dest = snapshots.join(&id);
        if dest.exists() {
            // A leftover of a crash between rename and save: not in the metadata, so unused.
            fs::remove_dir_all(&dest).map_err(io_err("removing", &dest))?;
        }
        let tmp_path = tmp.keep();
        fs::rename(&tmp_path, &dest).map_err(io_err("publishing", &dest))?;
        next.snapshots.insert(chain.clone(), metadata::SnapshotRecord { id: id.clone(), parent });
        self.save(&next)?;
        *meta = next;
        tracing::info!(chain = %chain, id, entries = stats.entries, "layer unpacked");
        Ok(id)
    }

    /// Forgets a container's root filesystem and deletes its writable layer. Unmount first.
    pub fn release_rootfs(&self, container_id: &str) -> Result<()> {
        snapshot::validate_container_id(container_id)?;
        let _guard = self.inner.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.inner.root.join("containers").join(container_id);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
        }
        let mut meta = self.meta();
        if meta.containers.contains_key(container_id) {
            let mut next = meta.clone();
            next.containers.remove(container_id);
            self.save(&next)?;
            *meta = next;
        }
        Ok(())
    }

    /// Deletes blobs no image references and snapshots neither an image nor a prepared root
    /// filesystem uses, plus leftovers of interrupted unpacks.
    pub fn gc(&self) -> Result<GcReport> {
        let _guard = self.inner.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let mut meta = self.meta();
        let mut blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut chains: BTreeSet<Digest> = BTreeSet::new();
        for r in meta.images.values() {
            blobs.extend([r.target.clone(), r.manifest.clone(), r.config.clone()]);
            blobs.extend(r.layers.iter().map(|l| l.digest.clone()));
            let diff_ids: Vec<Digest> = r.layers.iter().map(|l| l.diff_id.clone()).collect();
            chains.extend(digest::chain_ids(&diff_ids));
        }
        for c in meta.containers.values() {
            chains.extend(c.chain.iter().cloned());
        }
        let mut report = GcReport::default();
        let mut next = meta.clone();
        next.snapshots.retain(|chain, _| {
            let keep = chains.contains(chain);
            if !keep {
                report.snapshots.push(chain.clone());
            }
            keep
        });
        self.save(&next)?;
        *meta = next;
        let live: BTreeSet<&str> = meta.snapshots.values().map(|s| s.id.as_str()).collect();
        let snapshots = self.inner.root.join("snapshots");
        for e in fs::read_dir(&snapshots).map_err(io_err("listing", &snapshots))? {
            let e = e.map_err(io_err("listing", &snapshots))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(name.as_str()) {
                let p = e.path();
                fs::remove_dir_all(&p).map_err(io_err("removing", &p))?;
                report.stray.push(p);
            }
        }
        // The metadata lock is held from the marking to here, so no ingest can start or store
        // its record meanwhile; one in flight holds blobs no record names yet.
        if self.inner.ingests.load(Ordering::SeqCst) > 0 {
            report.blobs_deferred = true;
        } else {
            for d in self.inner.content.list()? {
                if !blobs.contains(&d) {
                    self.inner.content.remove(&d)?;
                    report.blobs.push(d);
                }
            }
        }
        tracing::info!(blobs = report.blobs.len(), snapshots = report.snapshots.len(), "gc done");
        Ok(report)
    }

    /// The snapshot directory (`…/snapshots/<n>/fs`) of a chain id, if unpacked.
    pub fn snapshot_dir(&self, chain: &Digest) -> Option<PathBuf> {
        self.meta()
            .snapshots
            .get(chain)
            .map(|s| self.inner.root.join("snapshots").join(&s.id).join("fs"))
    }
}

#[cfg(test)]
mod tests {
    use super::unpack::tests::{layer, RecordingOps, T};
    use super::*;

    fn put(layout: &Path, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        fs::write(layout.join("blobs/sha256").join(d.hex()), data).expect("blob");
        d
    }

    /// An OCI layout with one image of uncompressed `layers` tagged `latest`; `diff_ids`
    /// overrides the config's diff ids.
    fn layout(dir: &Path, layers: &[Vec<u8>], diff_ids: Option<Vec<Digest>>) -> PathBuf {
        fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        let digests: Vec<Digest> = layers.iter().map(|l| put(dir, l)).collect();
        let diff_ids = diff_ids.unwrap_or_else(|| digests.clone());
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["A=1"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config");
        let cd = put(dir, &config);
        let layers: Vec<_> = digests
            .iter()
            .zip(layers)
            .map(|(d, l)| serde_json::json!({"mediaType": manifest::OCI_LAYER_TAR, "digest": d, "size": l.len()}))
            .collect();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": manifest::OCI_CONFIG, "digest": cd, "size": config.len()},
            "layers": layers,
        }))
        .expect("manifest");
        let md = put(dir, &m);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": manifest::OCI_MANIFEST, "digest": md, "size": m.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("index"))
            .expect("index.json");
        dir.to_owned()
    }

    fn open(root: &Path) -> ImageStore {
        ImageStore::open_with(
            root,
            StoreOptions { ops: Arc::new(RecordingOps::default()), ..Default::default() },
        )
        .expect("open")
    }

    fn two_layers() -> Vec<Vec<u8>> {
        vec![
            layer(&[T::Dir("etc/"), T::File("etc/os", b"base")]),
            layer(&[T::Dir("etc/"), T::File("etc/os", b"top")]),
        ]
    }

    #[test]
    fn imported_image_persists_and_shares_snapshots_between_containers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = layout(&tmp.path().join("layout"), &two_layers(), None);
        let s = open(&tmp.path().join("store"));
        let image =
            s.import(&src, &ImportOptions::named("example.test/app"), None).expect("import");
        assert_eq!(image.name(), "example.test/app:latest");
        assert_eq!(image.run.entrypoint, ["/bin/sh"]);
        assert_eq!(image.run.cmd, ["-c", "true"]);
        assert_eq!(image.run.env, ["A=1"]);
        assert_eq!(
            image.container_config().cmd().as_deref(),
            Some(&["-c".to_owned(), "true".to_owned()][..])
        );

        let a = s.prepare_rootfs(&image, "a").expect("a");
        let b = s.prepare_rootfs(&image, "b").expect("b");
        assert_eq!(a.lowerdirs, b.lowerdirs, "layers are unpacked once");
        assert_eq!(fs::read(a.lowerdirs[0].join("etc/os")).expect("top"), b"top", "topmost first");
        assert_eq!(fs::read(a.lowerdirs[1].join("etc/os")).expect("base"), b"base");
        assert!(a.upperdir.is_dir() && a.workdir.is_dir());
        assert_eq!(s.prepare_rootfs(&image, "a").expect("idempotent"), a);

        // Another store on the same root sees the same state.
        let again = open(&tmp.path().join("store"));
        let image2 = again.get("example.test/app:latest").expect("persisted");
        assert_eq!(image2.id(), image.id());
        assert_eq!(again.snapshot_dir(&image.chain_ids[1]).as_ref(), Some(&a.lowerdirs[0]));
    }

    #[test]
    fn layouts_import_from_plain_and_gzipped_tars() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = layout(&tmp.path().join("layout"), &two_layers(), None);
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(".", &src).expect("tar the layout");
        let plain = b.into_inner().expect("tar");
        fs::write(tmp.path().join("l.tar"), &plain).expect("write");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).expect("gzip");
        fs::write(tmp.path().join("l.tar.gz"), gz.finish().expect("gzip")).expect("write");
        let s = open(&tmp.path().join("store"));
        let from_dir = s.import(&src, &ImportOptions::named("x/dir"), None).expect("dir");
        for f in ["l.tar", "l.tar.gz"] {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let img = s
                .import(&tmp.path().join(f), &ImportOptions::named(&format!("x/{f}")), Some(&tx))
                .expect(f);
            assert_eq!(img.record.manifest, from_dir.record.manifest, "{f}");
            let mut events = Vec::new();
            while let Ok(e) = rx.try_recv() {
                events.push(e);
            }
            assert!(
                matches!(events.first(), Some(Progress::Resolved { layers: 2, .. })),
                "{events:?}"
            );
            assert!(matches!(events.last(), Some(Progress::Stored { .. })), "{events:?}");
        }
        let junk = tmp.path().join("junk.tar");
        fs::write(&junk, layer(&[T::File("hello", b"x")])).expect("write");
        assert!(matches!(
            s.import(&junk, &ImportOptions::named("x/junk"), None),
            Err(Error::Archive { .. })
        ));
    }

    #[test]
    fn a_container_cannot_switch_images() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = open(&tmp.path().join("store"));
        let one = s
            .import(
                &layout(&tmp.path().join("l1"), &two_layers()[..1], None),
                &ImportOptions::named("x/one"),
                None,
            )
            .expect("one");
        let two = s
            .import(
                &layout(&tmp.path().join("l2"), &two_layers(), None),
                &ImportOptions::named("x/two"),
                None,
            )
            .expect("two");
        s.prepare_rootfs(&one, "c").expect("c");
        assert!(matches!(s.prepare_rootfs(&two, "c"), Err(Error::RootfsExists(_))));
        assert!(matches!(s.prepare_rootfs(&two, "../c"), Err(Error::InvalidContainerId(_))));
    }

    #[test]
    fn a_layer_that_does_not_match_its_diff_id_leaves_no_snapshot() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let lie = vec![Digest::of(b"something else")];
        let src = layout(&tmp.path().join("layout"), &two_layers()[..1], Some(lie));
        let s = open(&tmp.path().join("store"));
        let image = s.import(&src, &ImportOptions::named("x/liar"), None).expect("import");
        let err = s.prepare_rootfs(&image, "c").expect_err("diff id mismatch");
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(fs::read_dir(s.root().join("snapshots")).expect("read").next().is_none());
        assert!(s.snapshot_dir(&image.chain_ids[0]).is_none());
    }

    #[test]
    fn gc_keeps_what_records_and_containers_use() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = open(&tmp.path().join("store"));
        let image = s
            .import(
                &layout(&tmp.path().join("l"), &two_layers(), None),
                &ImportOptions::named("x/app"),
                None,
            )
            .expect("import");
        s.prepare_rootfs(&image, "c").expect("rootfs");
        assert_eq!(s.gc().expect("gc"), GcReport::default());

        s.remove("x/app").expect("remove");
        let r = s.gc().expect("gc");
        assert_eq!(r.blobs.len(), 4, "index-less layout: manifest, config, two layers");
        assert!(r.snapshots.is_empty(), "the container still uses them");
        s.release_rootfs("c").expect("release");
        let mut r = s.gc().expect("gc");
        let mut chains = image.chain_ids.clone();
        r.snapshots.sort();
        chains.sort();
        assert_eq!(r.snapshots, chains);
        assert!(s.content().list().expect("list").is_empty());
        assert!(fs::read_dir(s.root().join("snapshots")).expect("read").next().is_none());
    }

    #[test]
    fn gc_defers_the_blob_sweep_while_an_ingest_is_in_flight() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = open(&tmp.path().join("store"));
        let d = Digest::of(b"unreferenced");
        s.content().write_bytes(&d, b"unreferenced").expect("blob");
        let guard = s.ingest();
        let r = s.gc().expect("gc");
        assert!(r.blobs_deferred && r.blobs.is_empty());
        assert!(s.content().contains(&d));
        drop(guard);
        assert_eq!(s.gc().expect("gc").blobs, vec![d]);
    }

    #[test]
    fn lookups_by_name_digest_and_prefix() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = open(&tmp.path().join("store"));
        let image = s
            .import(
                &layout(&tmp.path().join("l"), &two_layers(), None),
                &ImportOptions::named("x/app:v1"),
                None,
            )
            .expect("import");
        assert_eq!(s.get("docker.io/x/app:v1").expect("full").id(), image.id());
        assert_eq!(
            s.get(image.record.manifest.as_str()).expect("manifest digest").id(),
            image.id()
        );
        assert_eq!(s.get(&image.id().hex()[..8]).expect("prefix").id(), image.id());
        assert_eq!(
            s.get(&format!("x/app@{}", image.record.manifest)).expect("name@digest").id(),
            image.id()
        );
        assert!(matches!(s.get("x/app:v2"), Err(Error::NotFound(_))));
        assert!(matches!(s.remove("x/app:v2"), Err(Error::NotFound(_))));
    }
}
