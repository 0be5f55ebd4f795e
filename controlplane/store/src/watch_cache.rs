//! A watch cache over any [`Store`]: one key prefix's current state in memory plus a bounded
//! window of its recent events, as Kubernetes' `cacher` keeps per resource.
//!
//! - **Lists** are served from memory at the cache's revision; a list "not older than" a
//!   revision waits (bounded) until the cache has caught up to it.
//! - **Watches** from a revision inside the window are served from memory (replay, then live);
//!   from an older revision they fall back to the store, which answers
//!   [`crate::Error::Compacted`] beyond its own history, like etcd. A watcher too slow to
//!   keep up falls out of the window the same way: it goes on from the store's history.
//!
//! - **Memory** is bounded by the window: at most [`Options::capacity`] events, and none older
//!   than [`Options::max_age`] (the API server sets it to the store's compaction interval, so
//!   the window reaches no further back than the store's own history), plus the prefix's
//!   current state.
//! - **Progress**: a watch with `progress_notify` first gets a progress notification at the
//!   cache's revision when its replay is empty, then the store's notifications as they come, so
//!   its owner always knows how far the stream has reached (Kubernetes' bookmarks).
//!
//! The cache follows the store with one watch (previous pairs and progress notifications on),
//! so its revision advances even when the prefix is idle. If that watch fails (the store
//! compacted past it, or the connection broke) the cache lists again, and its own watchers end
//! with `Compacted` (Kubernetes' "too old resource version"): they must list again too.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{
    Event, EventKind, KeyRange, KeyValue, RangeRequest, Revision, Store, WatchRequest,
    WatchResponse, WatchStream,
};

/// The watch cache's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error("store")]
    Store(#[from] crate::Error),
    /// The cache did not reach the requested revision in time.
    #[error("cache at revision {current} did not reach revision {requested} within {waited:?}")]
    NotFresh {
        /// The revision asked for.
        requested: Revision,
        /// The cache's revision.
        current: Revision,
        /// How long it waited.
        waited: Duration,
    },
    /// A watch asked for keys outside the cached prefix and the store refused it.
    #[error("the cache has stopped")]
    Stopped,
}

/// Tuning of a [`WatchCache`].
#[derive(Debug, Clone)]
pub struct Options {
    /// At most this many events are kept in the window.
    pub capacity: usize,
    /// Events older than this leave the window (checked on every update of the cache,
    /// progress notifications included); `None`: only the capacity bounds it.
    pub max_age: Option<Duration>,
    /// How long a list "not older than" a revision waits for the cache to catch up.
    pub freshness_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { capacity: 1024, max_age: None, freshness_timeout: Duration::from_secs(3) }
    }
}

/// What the cache tells its watchers.
#[derive(Debug, Clone)]
enum Update {
    /// Events of revisions up to `.0`.
    Events(Revision, Arc<Vec<Event>>),
    /// Nothing happened in the prefix up to this revision.
    Progress(Revision),
    /// The cache listed again at this revision: every watcher must start over.
    Reset(Revision),
}

#[derive(Debug, Default)]
struct State {
    /// The cache holds every change up to this revision.
    revision: Revision,
    objects: BTreeMap<Vec<u8>, KeyValue>,
    /// Events of revisions `window_start..=revision`, oldest first, with when they arrived.
    events: VecDeque<(Instant, Event)>,
    /// Watches from this revision on can be served from memory.
    window_start: Revision,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    prefix: KeyRange,
    opts: Options,
    state: RwLock<State>,
    updates: broadcast::Sender<Update>,
    revision: watch::Sender<Revision>,
}

/// The cache of one prefix (see the module docs). Dropping it stops following the store.
#[derive(Debug)]
pub struct WatchCache {
    inner: Arc<Inner>,
    follower: JoinHandle<()>,
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl WatchCache {
    /// Lists `prefix` from `store` and starts following it.
    pub async fn start(
        store: Arc<dyn Store>,
        prefix: impl Into<Vec<u8>>,
        opts: Options,
    ) -> Result<Self, Error> {
        let (updates, _) = broadcast::channel(1024);
        let (revision, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            store,
            prefix: KeyRange::prefix(prefix),
            opts,
            state: RwLock::new(State::default()),
            updates,
            revision,
        });
        let start = relist(&inner).await?;
        let follower = tokio::spawn(follow(inner.clone(), start));
        Ok(WatchCache { inner, follower })
    }

    /// The revision the cache is up to date with.
    pub fn revision(&self) -> Revision {
        self.read_state().revision
    }

    /// The oldest revision a watch can start from and still be served from memory.
    pub fn window_start(&self) -> Revision {
        self.read_state().window_start
    }

    /// How many events the window holds now.
    pub fn window_len(&self) -> usize {
        self.read_state().events.len()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: each update is applied whole.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The pairs of `range` (inside the cached prefix) at the cache's revision, which is at
    /// least `not_older_than` (waiting up to the freshness timeout for it).
    pub async fn list(
        &self,
        range: &KeyRange,
        not_older_than: Revision,
    ) -> Result<(Revision, Vec<KeyValue>), Error> {
        if not_older_than > 0 {
            let mut rx = self.inner.revision.subscribe();
            let wait = rx.wait_for(|r| *r >= not_older_than);
            if tokio::time::timeout(self.inner.opts.freshness_timeout, wait).await.is_err() {
                return Err(Error::NotFresh {
                    requested: not_older_than,
                    current: self.revision(),
                    waited: self.inner.opts.freshness_timeout,
                });
            }
        }
        let st = self.read_state();
        // Keys from the range's start on are in it until the first that is not.
        let kvs = st
            .objects
            .range(range.start().to_vec()..)
            .take_while(|(k, _)| range.contains(k))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((st.revision, kvs))
    }

    /// Watches `req.range` from `req.start_revision`: from memory when the window holds it,
    /// else from the store.
    pub async fn watch(&self, req: WatchRequest) -> Result<WatchStream, Error> {
        let inside = req.range.start() >= self.inner.prefix.start()
            && match (req.range.is_single(), req.range.end(), self.inner.prefix.end()) {
                (true, _, _) => self.inner.prefix.contains(&req.range.key),
                (false, Some(end), Some(pend)) => end <= pend,
                (false, _, None) => true,
                (false, None, Some(_)) => false,
            };
        let served = if inside {
            let st = self.read_state();
            let start = if req.start_revision == 0 { st.revision + 1 } else { req.start_revision };
            (start >= st.window_start).then(|| {
                // Subscribed under the lock: no update can slip between replay and live.
                let live = self.inner.updates.subscribe();
                let replay: Vec<Event> = st
                    .events
                    .iter()
                    .map(|(_, e)| e)
                    .filter(|e| e.kv.mod_revision >= start)
                    .cloned()
                    .collect();
                (start, st.revision, replay, live)
            })
        } else {
            None
        };
        let Some((start, revision, replay, live)) = served else {
            tracing::debug!(
                start = req.start_revision,
                "watch cache: revision outside the window, asking the store"
            );
            return Ok(self.inner.store.watch(req).await?);
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(serve_watch(self.inner.clone(), req, start, revision, replay, live, tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Lists the prefix and replaces the cache's state; returns the list revision.
async fn relist(inner: &Inner) -> Result<Revision, Error> {
    let resp = inner.store.range(RangeRequest::new(inner.prefix.clone())).await?;
    let rev = resp.header_revision;
    {
        let mut st = inner.state.write().unwrap_or_else(|e| e.into_inner());
        st.objects = resp.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        st.events.clear();
        st.revision = rev;
        st.window_start = rev + 1;
        let _ = inner.updates.send(Update::Reset(rev));
    }
    inner.revision.send_replace(rev);
    tracing::debug!(revision = rev, "watch cache listed");
    Ok(rev)
}

/// Follows the store from `from` + 1: watches again from where it was after a broken watch,
/// lists again when the store has compacted past it.
async fn follow(inner: Arc<Inner>, mut from: Revision) {
    loop {
        let req =
            WatchRequest::new(inner.prefix.clone(), from + 1).with_prev_kv().with_progress_notify();
        let must_relist = match inner.store.watch(req).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Some(Ok(resp)) => from = apply(&inner, resp),
                    Some(Err(crate::Error::Compacted { compact_revision, .. })) => {
                        tracing::warn!(
                            from,
                            compact_revision,
                            "watch cache fell behind compaction; listing again"
                        );
                        break true;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, from, "watch cache lost its watch; watching again");
                        break false;
                    }
                    None => break false,
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, from, "watch cache cannot watch; retrying");
                false
            }
        };
        if !must_relist {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        loop {
            match relist(&inner).await {
                Ok(rev) => {
                    from = rev;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache cannot list; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Applies one response of the store's watch; returns the cache's new revision.
fn apply(inner: &Inner, resp: WatchResponse) -> Revision {
    let mut st = inner.state.write().unwrap_or_else(|e| e.into_inner());
    let rev = resp.header_revision.max(st.revision);
    let now = Instant::now();
    if resp.events.is_empty() {
        trim(&mut st, &inner.opts, now);
        st.revision = rev;
        let _ = inner.updates.send(Update::Progress(rev));
    } else {
        for e in &resp.events {
            match e.kind {
                EventKind::Put => st.objects.insert(e.kv.key.clone(), e.kv.clone()),
                EventKind::Delete => st.objects.remove(&e.kv.key),
            };
            st.events.push_back((now, e.clone()));
        }
        trim(&mut st, &inner.opts, now);
        st.revision = rev;
        let _ = inner.updates.send(Update::Events(rev, Arc::new(resp.events)));
    }
    drop(st);
    inner.revision.send_replace(rev);
    rev
}

/// Drops whole revisions from the front of the window until it fits the capacity and holds no
/// event older than the maximum age.
fn trim(st: &mut State, opts: &Options, now: Instant) {
    let too_old = |at: Instant| opts.max_age.is_some_and(|age| now.duration_since(at) > age);
    while st.events.len() > opts.capacity || st.events.front().is_some_and(|(at, _)| too_old(*at)) {
        let Some((_, first)) = st.events.pop_front() else { break };
        let r = first.kv.mod_revision;
        while st.events.front().is_some_and(|(_, e)| e.kv.mod_revision == r) {
            st.events.pop_front();
        }
        st.window_start = r + 1;
    }
}

/// Serves one watch from memory: the replay, then live updates.
async fn serve_watch(
    inner: Arc<Inner>,
    req: WatchRequest,
    start: Revision,
    revision: Revision,
    replay: Vec<Event>,
    mut live: broadcast::Receiver<Update>,
    out: mpsc::Sender<crate::Result<WatchResponse>>,
) {
    let pick = |events: &[Event], next: Revision| -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.kv.mod_revision >= next && req.range.contains(&e.kv.key))
            .map(|e| Event {
                prev_kv: if req.prev_kv { e.prev_kv.clone() } else { None },
                ..e.clone()
            })
            .collect()
    };
    let first = pick(&replay, start);
    // An empty replay is a progress notification at the cache's revision, when asked for.
    if (!first.is_empty() || req.progress_notify)
        && out.send(Ok(WatchResponse { header_revision: revision, events: first })).await.is_err()
    {
        return;
    }
    let mut next = start.max(revision + 1);
    loop {
        let update = tokio::select! {
            _ = out.closed() => return,
            u = live.recv() => u,
        };
        let resp = match update {
            Ok(Update::Events(rev, events)) => {
                let events = pick(&events, next);
                next = next.max(rev + 1);
                if events.is_empty() {
                    continue;
                }
                Ok(WatchResponse { header_revision: rev, events })
            }
            Ok(Update::Progress(rev)) if req.progress_notify && rev >= next - 1 => {
                next = rev + 1;
                Ok(WatchResponse { header_revision: rev, events: Vec::new() })
            }
            Ok(Update::Progress(_)) => continue,
            Ok(Update::Reset(rev)) => {
                Err(crate::Error::Compacted { requested: next, compact_revision: rev })
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Catch up from the window if it still holds our position, else from the
                // store's history: a slow watcher loses nothing while the store has it.
                let caught_up = {
                    let st = inner.state.read().unwrap_or_else(|e| e.into_inner());
                    (next >= st.window_start).then(|| {
                        live = inner.updates.subscribe();
                        let events: Vec<Event> = st.events.iter().map(|(_, e)| e.clone()).collect();
                        (st.revision, events)
                    })
                };
                let Some((rev, events)) = caught_up else {
                    tracing::debug!(next, "watch cache: a watcher fell out of the window");
                    let rest = WatchRequest { start_revision: next, ..req.clone() };
                    forward(inner.store.as_ref(), rest, out).await;
                    return;
                };
                let events = pick(&events, next);
                next = rev + 1;
                if events.is_empty() {
                    continue;
                }
                Ok(WatchResponse { header_revision: rev, events })
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let end = resp.is_err();
        if out.send(resp).await.is_err() || end {
            return;
        }
    }
}

/// Serves the rest of a watch from the store, to its end or the watcher's.
async fn forward(
    store: &dyn Store,
    req: WatchRequest,
    out: mpsc::Sender<crate::Result<WatchResponse>>,
) {
    let mut stream = match store.watch(req).await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = out.send(Err(e)).await;
            return;
        }
    };
    loop {
        let next = tokio::select! {
            _ = out.closed() => return,
            next = stream.next() => next,
        };
        let Some(resp) = next else { return };
        let end = resp.is_err();
        if out.send(resp).await.is_err() || end {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
