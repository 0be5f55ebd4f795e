//! The embedded backend: etcd's semantics on one redb file, for a single-node control plane.
//!
//! # Why redb
//!
//! - **redb** (chosen): pure Rust (builds in seconds, cross-compiles with the rest), ACID with
//!   copy-on-write B-trees, one writer and MVCC snapshot readers, fsync on commit
//!   (`Durability::Immediate`), freed pages reused so the file stops growing once history is
//!   compacted, and typed tables with tuple keys, which give the `(key, revision)` history index
//!   directly.
//! - **fjall** (LSM, pure Rust): good write throughput, but compaction-driven space reclamation
//!   and a younger transactional API; an LSM buys little at a control plane's write rate.
//! - **sled**: unmaintained beta with a known on-disk format churn; rejected.
//! - **RocksDB** (`rocksdb` crate): proven, but a large C++ build (minutes on 2 cores, harder
//!   aarch64 cross builds) for features we do not need.
//! - **SQLite**: k3s's kine shows the trap (WAL growth to gigabytes); `bundled` costs 80 s of C.
//!
//! # Layout (schema version 1, in the `meta` table)
//!
//! - `current`: key → record of its live version (fast reads at the current revision);
//! - `history`: `(key, revision)` → record, one per version including deletions (tombstones),
//!   for reads at past revisions and previous pairs;
//! - `changes`: revision → the keys it wrote, in order, for watches from a revision;
//! - `leases`: id → `(ttl, deadline in unix ms)`; `lease_keys`: `(lease, key)`;
//! - `meta`: `schema_version`, `revision`, `compact_revision`, `next_lease_id`.
//!
//! # Writes: group commit
//!
//! One writer thread owns every write transaction (see [`writer`]): it batches the commands
//! queued while it was committing into one redb transaction and one fsync, and acknowledges each
//! caller only after that commit. Reads run on tokio's blocking pool on their own MVCC snapshot
//! and never wait for the writer.
//!
//! # Watches
//!
//! Each committed batch is broadcast to watcher tasks. A watcher first catches up from the
//! `changes` table of a snapshot, then follows the broadcast; if it falls behind (the broadcast
//! lags) it catches up from disk again, so a slow watcher never blocks the writer nor misses an
//! event. A start revision older than the compaction revision yields
//! [`crate::Error::Compacted`].
//!
//! # Compaction
//!
//! [`crate::Store::compact`] keeps, for every key written before the target revision, only its
//! newest version before it (when live), and drops older versions and change lists. An
//! automatic compactor samples the revision every `compaction_interval` and compacts to the
//! newest sample older than `history_window` (Kubernetes: 5 minutes), so history, and the file,
//! stay bounded under churn.

mod codec;
mod read;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use codec::CorruptError;
use writer::{Command, Tables, META_COMPACT, META_REVISION};

use crate::{
    Event, Lease, LeaseId, RangeRequest, RangeResponse, Revision, TxnRequest, TxnResponse,
    WatchRequest, WatchResponse, WatchStream,
};

/// The persisted schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;
const META_SCHEMA: &str = "schema_version";

const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const CURRENT: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("current");
const HISTORY: TableDefinition<'_, (&[u8], i64), &[u8]> = TableDefinition::new("history");
const CHANGES: TableDefinition<'_, i64, &[u8]> = TableDefinition::new("changes");
const LEASES: TableDefinition<'_, i64, (i64, i64)> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<'_, (i64, &[u8]), ()> = TableDefinition::new("lease_keys");

/// How many revisions a watcher reads from disk at a time while catching up.
const CATCH_UP_CHUNK: i64 = 1000;

/// The embedded backend's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database file could not be opened or created.
    #[error("open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::Error,
    },
    /// A read or write of the database failed.
    #[error("{op}")]
    Storage {
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: redb::Error,
    },
    /// The group commit this request was part of failed; nothing of it was written.
    #[error("write batch failed")]
    Batch {
        /// Why (shared by every request of the batch).
        #[source]
        source: Arc<redb::Error>,
    },
    /// The file holds data this schema did not write.
    #[error("corrupt data")]
    Corrupt(#[from] CorruptError),
    /// A change list names a version the history does not hold.
    #[error("history of revision {revision} is missing")]
    MissingHistory {
        /// The revision.
        revision: Revision,
    },
    /// A snapshot would overwrite a file.
    #[error("the snapshot file {path} already exists")]
    SnapshotExists {
        /// The file.
        path: PathBuf,
    },
    /// The file's schema version is not this build's (0: not a store at all).
    #[error("schema version {found} is not supported (this build reads {SCHEMA_VERSION})")]
    SchemaVersion {
        /// The file's version.
        found: i64,
    },
    /// The writer thread could not be started.
    #[error("start writer thread")]
    Spawn(#[source] std::io::Error),
    /// A blocking read task panicked or was cancelled.
    #[error("read task")]
    Join(#[source] tokio::task::JoinError),
}

fn storage<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Storage { op, source: e.into() }
}

/// Wall-clock time for lease deadlines, injectable so tests control expiry.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock at `ms`.
    pub fn new(ms: i64) -> Self {
        ManualClock(AtomicI64::new(ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct Options {
    /// At most this many commands share one commit.
    pub max_batch: usize,
    /// Keep at least this much history; `None` disables the automatic compactor.
    pub history_window: Option<Duration>,
    /// How often the automatic compactor samples the revision and compacts.
    pub compaction_interval: Duration,
    /// How often idle watches with `progress_notify` get a progress notification.
    pub progress_interval: Duration,
    /// How often expired leases are revoked; `None` disables expiry (tests call
    /// [`EmbeddedStore::expire_leases`]).
    pub lease_check_interval: Option<Duration>,
    /// Time for lease deadlines.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_batch: 1024,
            history_window: Some(Duration::from_secs(300)),
            compaction_interval: Duration::from_secs(60),
            progress_interval: Duration::from_secs(5),
            lease_check_interval: Some(Duration::from_millis(500)),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Counters of the writer, to see group commit at work.
#[derive(Debug, Default)]
pub struct Stats {
    commits: AtomicU64,
    commands: AtomicU64,
}

impl Stats {
    /// Committed write transactions (one fsync each).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Commands those commits carried.
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }
}

/// What the writer and the readers share.
#[derive(Debug)]
pub(crate) struct Shared {
    db: Arc<Database>,
    max_batch: usize,
    clock: Arc<dyn Clock>,
    stats: Stats,
    /// The last committed revision.
    revision: AtomicI64,
}

/// The events of one committed batch, published to watchers after the commit.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The revision after the batch.
    revision: Revision,
    /// Its events in order, each with its previous pair.
    events: Vec<Event>,
}

/// The embedded store (see the module docs).
#[derive(Debug)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Arc<Committed>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    tasks: Vec<JoinHandle<()>>,
    progress_interval: Duration,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens the store in `path` (a file), creating it when missing. Must be called inside a
    /// tokio runtime: it starts the compactor and lease expiry tasks.
    pub async fn open(path: impl AsRef<Path>, opts: Options) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let db = tokio::task::spawn_blocking(move || open_db(&p)).await.map_err(Error::Join)??;
        let revision = {
            let rtx = db.begin_read().map_err(storage("read revision"))?;
            let meta = rtx.open_table(META).map_err(storage("read revision"))?;
            let rev =
                meta.get(META_REVISION).map_err(storage("read revision"))?.map_or(1, |g| g.value());
            rev
        };
        let shared = Arc::new(Shared {
            db: Arc::new(db),
            max_batch: opts.max_batch,
            clock: opts.clock.clone(),
            stats: Stats::default(),
            revision: AtomicI64::new(revision),
        });
        let (commands, rx) = mpsc::channel(opts.max_batch.max(1) * 4);
        let (events, _) = broadcast::channel(1024);
        let writer = {
            let shared = shared.clone();
            let events = events.clone();
            std::thread::Builder::new()
                .name("keelson-store-writer".into())
                .spawn(move || writer::run(shared, rx, events))
                .map_err(Error::Spawn)?
        };
        let mut tasks = Vec::new();
        if let Some(window) = opts.history_window {
            tasks.push(tokio::spawn(auto_compactor(
                commands.downgrade(),
                shared.clone(),
                window,
                opts.compaction_interval,
            )));
        }
        if let Some(every) = opts.lease_check_interval {
            tasks.push(tokio::spawn(lease_expirer(commands.downgrade(), shared.clone(), every)));
        }
        tracing::info!(path = %path.display(), revision, "embedded store opened");
        Ok(EmbeddedStore {
            shared,
            commands,
            events,
            writer: Mutex::new(Some(writer)),
            tasks,
            progress_interval: opts.progress_interval,
            path,
        })
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a consistent copy of the whole store (one MVCC snapshot: every table at the same
    /// commit) to a new file `dest`, fsynced; returns the revision it holds. Writes go on
    /// while it runs. `dest` must not exist.
    pub async fn snapshot(&self, dest: &Path) -> Result<Revision, Error> {
        let db = self.shared.db.clone();
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || snapshot_db(&db, &dest)).await.map_err(Error::Join)?
    }

    /// Revokes every lease whose deadline has passed now; returns how many.
    pub async fn expire_leases(&self) -> crate::Result<usize> {
        self.command(Command::ExpireLeases).await
    }

    /// Stops the background tasks and the writer (after it has committed what it holds) and
    /// waits for it, so the file can be opened again. Open watches end.
    pub async fn close(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            // Wait until it is gone so it no longer holds the database.
            let _ = t.await;
        }
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        drop(self);
        if let Some(w) = writer {
            // The writer stops once every sender is gone (dropped just above).
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<crate::Result<T>>) -> Command,
    ) -> crate::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| crate::Error::Closed)?;
        rx.await.map_err(|_| crate::Error::Closed)?
    }

    /// Runs `f` on a read snapshot with the current and compaction revisions.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction, Revision, Revision) -> crate::Result<T> + Send + 'static,
    ) -> crate::Result<T> {
        let db = self.shared.db.clone();
        tokio::task::spawn_blocking(move || {
            let rtx = db.begin_read().map_err(storage("begin read"))?;
            let (current, compacted) = revisions(&rtx)?;
            f(&rtx, current, compacted)
        })
        .await
        .map_err(|e| crate::Error::Embedded(Error::Join(e)))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// redb's page cache. Its default (1 GiB) would hold the whole store in memory beside the API
/// server's watch caches, which already serve every list and watch; what is left for redb is
/// the B-tree pages writes and history reads touch, and the kernel's page cache holds the file
/// below it.
pub const CACHE_BYTES: usize = 16 << 20;

fn open_db(path: &Path) -> Result<Database, Error> {
    let open_err = |e: redb::Error| Error::Open { path: path.to_path_buf(), source: e };
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| open_err(e.into()))?;
    let wtx = db.begin_write().map_err(|e| open_err(e.into()))?;
    {
        let mut t = Tables::open(&wtx).map_err(open_err)?;
        let found = t.meta.get(META_SCHEMA).map_err(|e| open_err(e.into()))?.map(|g| g.value());
        match found {
            Some(SCHEMA_VERSION) => {}
            Some(found) => return Err(Error::SchemaVersion { found }),
            None => {
                t.meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(|e| open_err(e.into()))?;
                writer::initialise(&mut t).map_err(open_err)?;
            }
        }
    }
    wtx.commit().map_err(|e| open_err(e.into()))?;
    Ok(db)
}

fn snapshot_db(db: &Database, dest: &Path) -> Result<Revision, Error> {
    let open_err = |e: redb::Error| Error::Open { path: dest.to_path_buf(), source: e };
    if dest.exists() {
        return Err(Error::SnapshotExists { path: dest.to_path_buf() });
    }
    let rtx = db.begin_read().map_err(storage("snapshot"))?;
    let (revision, _) = revisions(&rtx)?;
    let out = Database::create(dest).map_err(|e| open_err(e.into()))?;
    let wtx = out.begin_write().map_err(|e| open_err(e.into()))?;
    {
        fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
            rtx: &redb::ReadTransaction,
            wtx: &redb::WriteTransaction,
            def: TableDefinition<'_, K, V>,
        ) -> Result<(), redb::Error> {
            let from = rtx.open_table(def)?;
            let mut to = wtx.open_table(def)?;
            for entry in from.iter()? {
                let (k, v) = entry?;
                to.insert(k.value(), v.value())?;
            }
            Ok(())
        }
        copy(&rtx, &wtx, META).map_err(open_err)?;
        copy(&rtx, &wtx, CURRENT).map_err(open_err)?;
        copy(&rtx, &wtx, HISTORY).map_err(open_err)?;
        copy(&rtx, &wtx, CHANGES).map_err(open_err)?;
        copy(&rtx, &wtx, LEASES).map_err(open_err)?;
        copy(&rtx, &wtx, LEASE_KEYS).map_err(open_err)?;
    }
    wtx.commit().map_err(|e| open_err(e.into()))?;
    drop(out);
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Open { path: dest.to_path_buf(), source: e.into() })?;
    Ok(revision)
}

/// Checks that `path` is a store this build reads (its schema version) without changing it;
/// returns the revision it holds.
pub fn verify(path: &Path) -> Result<Revision, Error> {
    let open_err = |e: redb::Error| Error::Open { path: path.to_path_buf(), source: e };
    let db = Database::open(path).map_err(|e| open_err(e.into()))?;
    let rtx = db.begin_read().map_err(|e| open_err(e.into()))?;
    let meta = rtx.open_table(META).map_err(|e| open_err(e.into()))?;
    match meta.get(META_SCHEMA).map_err(|e| open_err(e.into()))?.map(|g| g.value()) {
        Some(SCHEMA_VERSION) => {}
        Some(found) => return Err(Error::SchemaVersion { found }),
        None => return Err(Error::SchemaVersion { found: 0 }),
    }
    drop(meta);
    Ok(revisions(&rtx)?.0)
}

fn revisions(rtx: &redb::ReadTransaction) -> Result<(Revision, Revision), Error> {
    let meta = rtx.open_table(META).map_err(storage("read meta"))?;
    let get = |k| -> Result<i64, Error> {
        Ok(meta.get(k).map_err(storage("read meta"))?.map_or(0, |g| g.value()))
    };
    Ok((get(META_REVISION)?, get(META_COMPACT)?))
}

fn check_revision(
    requested: Revision,
    current: Revision,
    compacted: Revision,
) -> crate::Result<Revision> {
    if requested == 0 {
        return Ok(current);
    }
    if requested < compacted {
        return Err(crate::Error::Compacted { requested, compact_revision: compacted });
    }
    if requested > current {
        return Err(crate::Error::FutureRevision { requested, current });
    }
    Ok(requested)
}

#[async_trait::async_trait]
impl crate::Store for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> crate::Result<RangeResponse> {
        if req.range.key.is_empty() {
            return Err(crate::Error::InvalidRequest { reason: "range of an empty key".into() });
        }
        self.read(move |rtx, current, compacted| {
            let at = check_revision(req.revision, current, compacted)?;
            let cur = rtx.open_table(CURRENT).map_err(storage("range"))?;
            let hist = rtx.open_table(HISTORY).map_err(storage("range"))?;
            Ok(read::range(&cur, &hist, &req, at, current)?)
        })
        .await
    }

    async fn txn(&self, req: TxnRequest) -> crate::Result<TxnResponse> {
        crate::validate_txn(&req)?;
        self.command(|tx| Command::Txn(req, tx)).await
    }

    async fn watch(&self, req: WatchRequest) -> crate::Result<WatchStream> {
        if req.range.key.is_empty() {
            return Err(crate::Error::InvalidRequest { reason: "watch of an empty key".into() });
        }
        // Subscribe before reading the snapshot: every batch committed after it is then in the
        // broadcast, and the ones in both are told apart by revision.
        let live = self.events.subscribe();
        let start = if req.start_revision > 0 {
            req.start_revision
        } else {
            self.read(|_, current, _| Ok(current)).await? + 1
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(watcher(self.shared.db.clone(), live, req, start, tx, self.progress_interval));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> crate::Result<()> {
        self.command(|tx| Command::Compact(revision, tx)).await
    }

    async fn current_revision(&self) -> crate::Result<Revision> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }

    async fn lease_grant(&self, ttl: i64, id: LeaseId) -> crate::Result<Lease> {
        self.command(|reply| Command::LeaseGrant { ttl, id, reply }).await
    }

    async fn lease_revoke(&self, id: LeaseId) -> crate::Result<()> {
        self.command(|tx| Command::LeaseRevoke(id, tx)).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> crate::Result<i64> {
        self.command(|tx| Command::LeaseKeepAlive(id, tx)).await
    }
}

/// One watch: catch up from disk, then follow the broadcast (see the module docs).
async fn watcher(
    db: Arc<Database>,
    mut live: broadcast::Receiver<Arc<Committed>>,
    req: WatchRequest,
    mut next: Revision,
    out: mpsc::Sender<crate::Result<WatchResponse>>,
    progress_interval: Duration,
) {
    let mut ticker =
        tokio::time::interval_at(Instant::now() + progress_interval, progress_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'catch_up: loop {
        // Read history from `next` until the snapshot's revision.
        loop {
            let db = db.clone();
            let range = req.range.clone();
            let prev_kv = req.prev_kv;
            let from = next;
            let chunk = tokio::task::spawn_blocking(
                move || -> crate::Result<Option<(Revision, Vec<Event>, bool)>> {
                    let rtx = db.begin_read().map_err(storage("watch catch up"))?;
                    let (current, compacted) = revisions(&rtx)?;
                    if from < compacted {
                        return Err(crate::Error::Compacted {
                            requested: from,
                            compact_revision: compacted,
                        });
                    }
                    if from > current {
                        return Ok(None);
                    }
                    let to = current.min(from.saturating_add(CATCH_UP_CHUNK - 1));
                    let changes = rtx.open_table(CHANGES).map_err(storage("watch catch up"))?;
                    let hist = rtx.open_table(HISTORY).map_err(storage("watch catch up"))?;
                    let events = read::history_events(&changes, &hist, &range, from, to, prev_kv)?;
                    Ok(Some((to, events, to == current)))
                },
            )
            .await
            .map_err(|e| crate::Error::Embedded(Error::Join(e)));
            match chunk.and_then(|c| c) {
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
                Ok(None) => break,
                Ok(Some((to, events, done))) => {
                    next = to + 1;
                    if !events.is_empty()
                        && out
                            .send(Ok(WatchResponse { header_revision: to, events }))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    if done {
                        break;
                    }
                }
            }
        }
        // Follow the writer.
        loop {
            tokio::select! {
                _ = out.closed() => return,
                msg = live.recv() => match msg {
                    Ok(c) => {
                        if c.revision < next {
                            continue;
                        }
                        let events: Vec<Event> = c
                            .events
                            .iter()
                            .filter(|e| e.kv.mod_revision >= next && req.range.contains(&e.kv.key))
                            .map(|e| Event {
                                kind: e.kind,
                                kv: e.kv.clone(),
                                prev_kv: if req.prev_kv { e.prev_kv.clone() } else { None },
                            })
                            .collect();
                        next = c.revision + 1;
                        if !events.is_empty()
                            && out.send(Ok(WatchResponse { header_revision: c.revision, events })).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "watcher fell behind, catching up from disk");
                        continue 'catch_up;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if req.progress_notify => {
                    let progress = WatchResponse { header_revision: next - 1, events: Vec::new() };
                    if out.send(Ok(progress)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Decides the automatic compactor's targets: the newest sampled revision at least `window`
/// old, so at least `window` of history is always kept.
#[derive(Debug)]
pub struct CompactionPolicy {
    window: Duration,
    samples: VecDeque<(Instant, Revision)>,
    compacted: Revision,
}

impl CompactionPolicy {
    /// A policy keeping `window` of history.
    pub fn new(window: Duration) -> Self {
        CompactionPolicy { window, samples: VecDeque::new(), compacted: 0 }
    }

    /// Records that the store was at `revision` at `now`; returns the revision to compact to,
    /// if there is a new one.
    pub fn observe(&mut self, now: Instant, revision: Revision) -> Option<Revision> {
        self.samples.push_back((now, revision));
        let mut target = None;
        while let Some(&(at, rev)) = self.samples.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            target = Some(rev);
            self.samples.pop_front();
        }
        let target = target.filter(|t| *t > self.compacted)?;
        self.compacted = target;
        Some(target)
    }
}

async fn auto_compactor(
    commands: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
    window: Duration,
    every: Duration,
) {
    let mut policy = CompactionPolicy::new(window);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rev = shared.revision.load(Ordering::Acquire);
        let Some(target) = policy.observe(Instant::now(), rev) else { continue };
        let Some(tx) = commands.upgrade() else { return };
        let (reply, rx) = oneshot::channel();
        if tx.send(Command::Compact(target, reply)).await.is_err() {
            return;
        }
        drop(tx);
        match rx.await {
            Ok(Ok(())) => tracing::debug!(revision = target, "automatic compaction"),
            // Someone compacted further already: fine.
            Ok(Err(crate::Error::Compacted { .. })) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, revision = target, "automatic compaction failed")
            }
            Err(_) => return,
        }
    }
}

async fn lease_expirer(commands: mpsc::WeakSender<Command>, shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Look first on a snapshot, so an idle store does not commit (fsync) every tick.
        let s = shared.clone();
        let due = tokio::task::spawn_blocking(move || -> Result<bool, Error> {
            let now = s.clock.now_ms();
            let rtx = s.db.begin_read().map_err(storage("read leases"))?;
            let leases = rtx.open_table(LEASES).map_err(storage("read leases"))?;
            for entry in leases.iter().map_err(storage("read leases"))? {
                let (_, v) = entry.map_err(storage("read leases"))?;
                if v.value().1 <= now {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await;
        match due {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease expiry check failed");
                continue;
            }
            Err(_) => return,
        }
        let Some(tx) = commands.upgrade() else { return };
        let (reply, rx) = oneshot::channel();
        if tx.send(Command::ExpireLeases(reply)).await.is_err() {
            return;
        }
        drop(tx);
        match rx.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "lease expiry failed"),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests;
