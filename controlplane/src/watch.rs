//! Watches, selected lists and the watch caches behind them, as upstream's
//! `endpoints/handlers/watch.go` and `storage/cacher` serve them.
//!
//! # Watch caches
//!
//! [`WatchCaches`] holds one [`WatchCache`] per resource (the prefix
//! `/registry/[<group>/]<resource>/`, all namespaces), **started lazily** by the first list or
//! watch of that resource, then kept for the server's life. Each follows the store with one
//! watch and keeps the resource's current objects plus a window of recent events, bounded by
//! a count ([`watch_cache::Options::capacity`]) and an age (the store's compaction interval),
//! so memory is the objects plus at most that window.
//!
//! - **Lists** without `continue`, not `Exact`, and either without `limit` or with
//!   `resourceVersion=0` are served from memory (`limit` is ignored with `resourceVersion=0`,
//!   as upstream). An unset `resourceVersion` is a consistent read: the cache waits until it
//!   has reached the store's current revision (upstream's consistent reads from cache);
//!   `NotOlderThan` waits for that revision. A cache that does not catch up within its
//!   freshness timeout hands the list to the store. `Exact`, `continue` and paged
//!   latest lists go to the store, as upstream delegates them.
//! - **Watches** are served from the cache; one from a revision older than its window falls
//!   back to the store's history (as does a watcher too slow to keep up with it), and below the store's compaction it ends with an `ERROR`
//!   event carrying a `410 Expired` Status (upstream's "too old resource version"). A cache
//!   that has to re-list (it fell behind the store's compaction) ends its watches the same way.
//!
//! # The watch stream
//!
//! `?watch=true` (or `1`) on a collection, or the legacy `/api/v1/watch/...` paths, answers
//! `200` with `Content-Type: application/json` and one `{"type","object"}` JSON document per
//! line, each flushed as its own chunk (HTTP/1.1 chunked encoding, or an HTTP/2 data frame).
//!
//! - **Start**: `resourceVersion` unset or `0`: synthetic `ADDED` events for the current
//!   objects (unset: at the store's current revision; `0`: at the cache's), then changes; `N`:
//!   the changes after `N`. `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan`
//!   and `allowWatchBookmarks=true`, as upstream validates) sends the objects at a revision not
//!   older than `resourceVersion`, then a `BOOKMARK` annotated `k8s.io/initial-events-end:
//!   "true"`, then changes; `sendInitialEvents=false` starts at the revision without them.
//! - **Selectors** ([`crate::selectors`]) apply as in upstream's cacher: an object that starts
//!   matching comes as `ADDED`, one that stops matching as `DELETED` (its previous state with
//!   the change's resourceVersion). `DELETED` of a deleted object carries its last state with
//!   the deletion's resourceVersion. `fieldSelector=metadata.name=X` watches one key.
//! - **Bookmarks** (`allowWatchBookmarks=true`): objects with only `kind`, `apiVersion` and
//!   `metadata.resourceVersion`; sent as soon as the stream knows it is ahead of the client's
//!   revision with nothing to deliver (right after the start, or when it has moved
//!   [`BOOKMARK_LAG`] revisions past what the client last saw), every
//!   [`WatchCaches::bookmark_interval`] (a minute, as upstream), and when the timeout ends the
//!   stream.
//! - **Timeout**: `timeoutSeconds`, else a random 30 to 60 minutes (upstream's
//!   `--min-request-timeout` of 1800 s, doubled at most); the stream then ends cleanly.
//!
//! Limits: every watcher decodes each event's JSON itself (upstream caches the decoded and
//! serialized object per event); no `Table` or protobuf watch encoding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use keelson_store::watch_cache::{self, WatchCache};
use keelson_store::{
    Event, EventKind, KeyRange, KeyValue, Revision, Store, WatchRequest, WatchStream,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::objects::{self, ApiError, ListOptions, ListPage, Objects, ReadAt};
use crate::printers::Representation;
use crate::registry::Resource;
use crate::rest;
use crate::selectors::Selectors;
use crate::server::ApiState;

/// A bookmark is sent once the stream is this many revisions past what the client last saw.
pub const BOOKMARK_LAG: Revision = 1000;

/// Store list pages a selected, limited list reads at most to fill one page.
const MAX_FILL_ROUNDS: usize = 8;

/// The watch caches of every resource and the watch settings (see the module docs).
#[derive(Debug)]
pub struct WatchCaches {
    store: Arc<dyn Store>,
    opts: watch_cache::Options,
    /// How often a watch with `allowWatchBookmarks` gets a bookmark, in milliseconds.
    bookmark_interval_ms: AtomicU64,
    caches: tokio::sync::Mutex<HashMap<String, Arc<WatchCache>>>,
    lines: Arc<EventLines>,
}

/// How many encoded watch events [`EventLines`] keeps.
const ENCODED_EVENTS: usize = 1024;

/// Watch events as JSON lines, encoded once for every watcher that sees them whole (no
/// selectors, no Table): with a hundred watchers of a resource, a write is decoded and
/// encoded once, not a hundred times (upstream's cacher shares the decoded object per event
/// and caches its serialization the same way).
#[derive(Debug, Default)]
pub struct EventLines {
    lines: std::sync::Mutex<(HashMap<LineKey, Bytes>, std::collections::VecDeque<LineKey>)>,
}

/// A watch event line: the served resource (its registry entry's address: one per group,
/// version and kind), the store key, the revision and the event type.
type LineKey = (usize, Vec<u8>, Revision, &'static str);

impl EventLines {
    fn get(&self, k: &LineKey) -> Option<Bytes> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).0.get(k).cloned()
    }

    fn insert(&self, k: LineKey, line: Bytes) {
        let mut guard = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(k.clone(), line).is_none() {
            order.push_back(k);
            while order.len() > ENCODED_EVENTS {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }
}

impl WatchCaches {
    /// Caches over `store`, started lazily, with `opts`.
    pub fn new(store: Arc<dyn Store>, opts: watch_cache::Options) -> Self {
        WatchCaches {
            store,
            opts,
            bookmark_interval_ms: AtomicU64::new(60_000),
            caches: tokio::sync::Mutex::new(HashMap::new()),
            lines: Arc::new(EventLines::default()),
        }
    }

    /// How often a watch with `allowWatchBookmarks` gets a bookmark (a minute by default).
    pub fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(self.bookmark_interval_ms.load(Ordering::Relaxed))
    }

    /// Sets how often watches started from now on get bookmarks.
    pub fn set_bookmark_interval(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.bookmark_interval_ms.store(ms, Ordering::Relaxed);
    }

    /// The cache of `r`, started now when this is its first use.
    pub async fn of(&self, r: &Resource) -> Result<Arc<WatchCache>, ApiError> {
        let prefix = objects::prefix(r, None);
        let mut caches = self.caches.lock().await;
        if let Some(c) = caches.get(&prefix) {
            return Ok(c.clone());
        }
        let cache = WatchCache::start(self.store.clone(), prefix.clone(), self.opts.clone())
            .await
            .map_err(cache_error)?;
        tracing::debug!(%prefix, revision = cache.revision(), "watch cache started");
        let cache = Arc::new(cache);
        caches.insert(prefix, cache.clone());
        Ok(cache)
    }
}

fn cache_error(e: watch_cache::Error) -> ApiError {
    match e {
        watch_cache::Error::Store(s) => s.into(),
        other => ApiError::internal(format!("watch cache: {other}")),
    }
}

fn with_type(mut obj: Value, r: &Resource) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(r.gvk.api_version()));
        o.insert("kind".into(), Value::String(r.gvk.kind.to_owned()));
    }
    obj
}

/// The keys a request covers: one object when the field selector pins a name and the
/// namespace is known (or the resource is cluster-scoped), else the namespace or resource.
fn key_range(r: &Resource, ns: Option<&str>, sel: &Selectors) -> KeyRange {
    let ns = if r.namespaced { ns } else { None };
    let prefix = objects::prefix(r, ns);
    match sel.fields.exact_name() {
        Some(name) if ns.is_some() || !r.namespaced => {
            KeyRange::key(format!("{prefix}{name}").into_bytes())
        }
        _ => KeyRange::prefix(prefix.into_bytes()),
    }
}

async fn current_revision(store: &dyn Store) -> Result<Revision, ApiError> {
    Ok(store.current_revision().await?)
}

fn too_large(rv: Revision, current: Revision) -> ApiError {
    ApiError::new(504, "Timeout", format!("Too large resource version: {rv}, current: {current}"))
}

/// Reads the selected objects of `range` from the cache at a revision not older than
/// `not_older_than`; `None` when the cache did not catch up in time.
async fn cached_items(
    cache: &WatchCache,
    range: &KeyRange,
    not_older_than: Revision,
    sel: &Selectors,
) -> Result<Option<(Revision, Vec<Value>)>, ApiError> {
    let Some((rev, kvs)) = cached_pairs(cache, range, not_older_than).await? else {
        return Ok(None);
    };
    let mut items = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let obj = objects::decode(&kv.value, kv.mod_revision)?;
        if sel.matches(&obj) {
            items.push(obj);
        }
    }
    Ok(Some((rev, items)))
}

/// The stored pairs of `range` from the cache at a revision not older than `not_older_than`;
/// `None` when the cache did not catch up in time.
async fn cached_pairs(
    cache: &WatchCache,
    range: &KeyRange,
    not_older_than: Revision,
) -> Result<Option<(Revision, Vec<KeyValue>)>, ApiError> {
    match cache.list(range, not_older_than).await {
        Ok(r) => Ok(Some(r)),
        Err(watch_cache::Error::NotFresh { requested, current, .. }) => {
            tracing::debug!(requested, current, "watch cache not fresh; reading the store");
            Ok(None)
        }
        Err(e) => Err(cache_error(e)),
    }
}

/// The revision a list from the cache must not be older than, when upstream's cacher would
/// serve `opts` (no continue token, no exact revision, no limit unless any revision will do);
/// `None` when the store must serve it.
async fn cache_floor(objects: &Objects, opts: &ListOptions) -> Result<Option<Revision>, ApiError> {
    let from_cache = opts.continue_token.is_none()
        && !matches!(opts.at, ReadAt::Exact(_))
        && (opts.limit == 0 || opts.at == ReadAt::Any);
    if !from_cache {
        return Ok(None);
    }
    let store = objects.store();
    Ok(Some(match opts.at {
        ReadAt::Latest => current_revision(store.as_ref()).await?,
        ReadAt::Any | ReadAt::Exact(_) => 0,
        ReadAt::NotOlderThan(rv) => {
            let current = current_revision(store.as_ref()).await?;
            if rv > current {
                return Err(too_large(rv, current));
            }
            rv
        }
    }))
}

/// A page of `r` without selectors as stored, for [`crate::rawlist`] to send without decoding:
/// from the watch cache when upstream's cacher would serve `opts` (and the cache is fresh
/// enough), else from the store.
pub async fn list_stored(
    objects: &Objects,
    r: &Resource,
    ns: Option<&str>,
    opts: &ListOptions,
) -> Result<ListPage<KeyValue>, ApiError> {
    if let Some(floor) = cache_floor(objects, opts).await? {
        let cache = objects.caches().of(r).await?;
        let range = key_range(r, ns, &Selectors::default());
        if let Some((rev, items)) = cached_pairs(&cache, &range, floor).await? {
            return Ok(ListPage {
                items,
                resource_version: rev,
                continue_token: None,
                remaining: None,
            });
        }
    }
    objects.list_stored(r, ns, opts).await
}

/// One page of `r`'s objects selected by `sel`: from the watch cache when upstream's cacher
/// would serve it, else from the store (see the module docs). With selectors and a limit, a
/// page may hold fewer items than the limit (and still have a `continue`).
pub async fn list(
    objects: &Objects,
    r: &Resource,
    ns: Option<&str>,
    opts: &ListOptions,
    sel: &Selectors,
) -> Result<ListPage, ApiError> {
    if let Some(not_older_than) = cache_floor(objects, opts).await? {
        let cache = objects.caches().of(r).await?;
        if let Some((rev, items)) =
            cached_items(&cache, &key_range(r, ns, sel), not_older_than, sel).await?
        {
            return Ok(ListPage {
                items,
                resource_version: rev,
                continue_token: None,
                remaining: None,
            });
        }
    }
    if sel.is_empty() {
        return objects.list(r, ns, opts).await;
    }
    // From the store, filtered: read further pages (at the first page's revision, through its
    // continue token) until the page is full, the list ends, or the rounds run out.
    let mut page_opts = opts.clone();
    let mut items = Vec::new();
    for round in 1.. {
        if opts.limit > 0 {
            page_opts.limit = opts.limit - i64::try_from(items.len()).unwrap_or(i64::MAX);
        }
        let page = objects.list(r, ns, &page_opts).await?;
        items.extend(page.items.into_iter().filter(|o| sel.matches(o)));
        let full = opts.limit > 0 && i64::try_from(items.len()).unwrap_or(i64::MAX) >= opts.limit;
        match page.continue_token {
            Some(token) if !full && round < MAX_FILL_ROUNDS => {
                page_opts.continue_token = Some(token);
                page_opts.at = ReadAt::Latest;
            }
            continue_token => {
                return Ok(ListPage {
                    items,
                    resource_version: page.resource_version,
                    continue_token,
                    remaining: None,
                })
            }
        }
    }
    Err(ApiError::internal("selected list ended without a page"))
}

/// Whether the query asks for a watch (`watch=true` or `watch=1`).
pub fn is_watch(q: &HashMap<String, String>) -> bool {
    matches!(q.get("watch").map(String::as_str), Some("true" | "1" | "True" | "TRUE"))
}

fn bool_param(q: &HashMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some("true" | "1" | "True" | "TRUE" | "t" | "T") => Ok(Some(true)),
        Some("false" | "0" | "False" | "FALSE" | "f" | "F") => Ok(Some(false)),
        Some(v) => Err(ApiError::bad_request(format!("invalid boolean {v:?} for {name}"))),
    }
}

fn invalid_options(field: &str, why: String) -> ApiError {
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: {why}"),
    );
    e.causes.push(crate::objects::Cause {
        reason: "FieldValueInvalid".into(),
        message: why,
        field: field.to_owned(),
    });
    e
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Synthetic ADDED events of the objects at a revision not older than this (`0`: any),
    /// then changes; with the initial-events-end bookmark when `end_bookmark`.
    WithState { not_older_than: Option<Revision>, end_bookmark: bool },
    /// Changes after this revision (`None`: after the current one).
    After(Option<Revision>),
}

/// A watch request's options.
#[derive(Debug, Clone)]
struct WatchOptions {
    start: Start,
    bookmarks: bool,
    timeout: Duration,
    selectors: Selectors,
}

fn watch_options(q: &HashMap<String, String>, r: &Resource) -> Result<WatchOptions, ApiError> {
    let rv = match q.get("resourceVersion").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(
            v.parse::<Revision>()
                .ok()
                .filter(|&n| n >= 0)
                .ok_or_else(|| ApiError::bad_request(format!("invalid resource version {v:?}")))?,
        ),
    };
    let rv_match = q.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let send_initial = bool_param(q, "sendInitialEvents")?;
    let bookmarks = bool_param(q, "allowWatchBookmarks")?.unwrap_or(false);
    if send_initial.is_some() && rv_match.map(String::as_str) != Some("NotOlderThan") {
        return Err(invalid_options(
            "resourceVersionMatch",
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                .into(),
        ));
    }
    if let Some(m) = rv_match {
        if send_initial.is_none() {
            return Err(invalid_options(
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided".into(),
            ));
        }
        if m != "NotOlderThan" {
            return Err(invalid_options(
                "resourceVersionMatch",
                format!("Unsupported value: {m:?}: supported values: \"NotOlderThan\""),
            ));
        }
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(invalid_options(
            "allowWatchBookmarks",
            "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true".into(),
        ));
    }
    let start = match (send_initial, rv) {
        (Some(true), rv) => {
            Start::WithState { not_older_than: rv.filter(|&v| v > 0), end_bookmark: true }
        }
        (Some(false), None) => Start::After(None),
        (Some(false), Some(0)) => Start::After(Some(0)),
        (Some(false), Some(v)) => Start::After(Some(v)),
        (None, None) => Start::WithState { not_older_than: None, end_bookmark: false },
        (None, Some(0)) => Start::WithState { not_older_than: Some(0), end_bookmark: false },
        (None, Some(v)) => Start::After(Some(v)),
    };
    let timeout = match q.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => Duration::from_secs(rand::random_range(1800..3600)),
    };
    let selectors = Selectors::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
        r,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(WatchOptions { start, bookmarks, timeout, selectors })
}

/// Answers a watch of `r` in `ns` (all namespaces with `None`) with the query `q`.
pub async fn serve(
    objects: &Objects,
    r: &'static Resource,
    ns: Option<String>,
    q: &HashMap<String, String>,
    repr: Representation,
) -> Result<Response, ApiError> {
    let opts = watch_options(q, r)?;
    let table = match repr {
        Representation::Table(version) => Some((
            version,
            crate::printers::IncludeObject::parse(q.get("includeObject").map(String::as_str))?,
        )),
        Representation::Json | Representation::Metadata(_) => None,
    };
    let ns = if r.namespaced { ns } else { None };
    let range = key_range(r, ns.as_deref(), &opts.selectors);
    let cache = objects.caches().of(r).await?;
    let store = objects.store().clone();
    // The initial state and the revision the changes follow.
    let (initial, from, end_bookmark) = match opts.start {
        Start::WithState { not_older_than, end_bookmark } => {
            let at = match not_older_than {
                None => current_revision(store.as_ref()).await?,
                Some(rv) => {
                    let current = current_revision(store.as_ref()).await?;
                    if rv > current {
                        return Err(too_large(rv, current));
                    }
                    rv
                }
            };
            let (rev, items) = match cached_items(&cache, &range, at, &opts.selectors).await? {
                Some(state) => state,
                None => {
                    // The cache lags: the state from the store, selected.
                    let page = list(
                        objects,
                        r,
                        ns.as_deref(),
                        &ListOptions { at: ReadAt::Exact(at.max(1)), ..ListOptions::default() },
                        &opts.selectors,
                    )
                    .await?;
                    (page.resource_version, page.items)
                }
            };
            (items, rev, end_bookmark)
        }
        Start::After(Some(rv)) if rv > 0 => (Vec::new(), rv, false),
        Start::After(Some(_)) => (Vec::new(), cache.revision(), false),
        Start::After(None) => (Vec::new(), current_revision(store.as_ref()).await?, false),
    };
    // Progress notifications only matter to bookmarks.
    let mut req = WatchRequest::new(range, from + 1).with_prev_kv();
    if opts.bookmarks {
        req = req.with_progress_notify();
    }
    let stream = cache.watch(req).await.map_err(cache_error)?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let pump = Pump {
        resource: r,
        selectors: opts.selectors,
        bookmarks: opts.bookmarks,
        bookmark_interval: objects.caches().bookmark_interval(),
        client_rv: from,
        known_rv: from,
        out: tx,
        table,
        columns_sent: false,
        lines: objects.caches().lines.clone(),
    };
    let deadline = Instant::now() + opts.timeout;
    tokio::spawn(pump.run(initial, end_bookmark.then_some(from), stream, deadline));
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Bytes, std::convert::Infallible>),
    );
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// The legacy watch paths (`/api/v1/watch/...`, `/apis/<group>/<version>/watch/...`,
/// deprecated upstream but still served): a watch of the collection, or of one object by
/// name.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/v1/watch/{resource}", get(legacy))
        .route("/api/v1/watch/{resource}/{name}", get(legacy))
        .route("/api/v1/watch/namespaces/{ns}", get(legacy_namespace))
        .route("/api/v1/watch/namespaces/{ns}/{resource}", get(legacy))
        .route("/api/v1/watch/namespaces/{ns}/{resource}/{name}", get(legacy))
        .route("/apis/{group}/{version}/watch/{resource}", get(legacy))
        .route("/apis/{group}/{version}/watch/{resource}/{name}", get(legacy))
        .route("/apis/{group}/{version}/watch/namespaces/{ns}/{resource}", get(legacy))
        .route("/apis/{group}/{version}/watch/namespaces/{ns}/{resource}/{name}", get(legacy))
}

async fn legacy(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<HashMap<String, String>>,
    Query(mut q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let t = rest::target(&p, true)?;
    if let Some(name) = &t.name {
        let pin = format!("metadata.name={name}");
        let fields = match q.get("fieldSelector").filter(|f| !f.is_empty()) {
            Some(f) => format!("{f},{pin}"),
            None => pin,
        };
        q.insert("fieldSelector".into(), fields);
    }
    serve(rest::objects(&state)?, t.resource, t.namespace, &q, rest::representation(&headers)?)
        .await
}

/// `/api/v1/watch/namespaces/{name}`: a watch of one namespace.
async fn legacy_namespace(
    state: State<Arc<ApiState>>,
    Path(mut p): Path<HashMap<String, String>>,
    q: Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(name) = p.remove("ns") {
        p.insert("name".into(), name);
    }
    p.insert("resource".into(), "namespaces".into());
    legacy(state, Path(p), q, headers).await
}

/// Turns store events into watch events for one client.
struct Pump {
    resource: &'static Resource,
    selectors: Selectors,
    bookmarks: bool,
    bookmark_interval: Duration,
    /// The newest revision the client has been told about.
    client_rv: Revision,
    /// Every change up to this revision has been sent.
    known_rv: Revision,
    out: mpsc::Sender<Bytes>,
    /// Objects go out as one-row `Table`s of this `meta.k8s.io` version (`kubectl get -w`).
    table: Option<(&'static str, crate::printers::IncludeObject)>,
    /// The first Table carries the column definitions, the later ones only their row.
    columns_sent: bool,
    /// Event lines shared with the resource's other watchers.
    lines: Arc<EventLines>,
}

/// The stream ended (the client left, or an error was sent).
struct Closed;

impl Pump {
    async fn send(&mut self, kind: &str, object: Value) -> Result<(), Closed> {
        match self.encode(kind, object) {
            Some(line) => self.out.send(line).await.map_err(|_| Closed),
            None => Ok(()),
        }
    }

    /// One event as its JSON line (a one-row Table when the client asked for Tables).
    fn encode(&mut self, kind: &str, object: Value) -> Option<Bytes> {
        let object = match self.table {
            Some((version, include)) if kind != "BOOKMARK" && kind != "ERROR" => {
                let rv =
                    object.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                let mut t = crate::printers::table(
                    self.resource,
                    &[object],
                    include,
                    version,
                    json!({ "resourceVersion": rv }),
                    chrono::Utc::now(),
                );
                if self.columns_sent {
                    t["columnDefinitions"] = json!([]);
                }
                self.columns_sent = true;
                t
            }
            _ => object,
        };
        let mut line = match serde_json::to_vec(&json!({ "type": kind, "object": object })) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "encode a watch event");
                return None;
            }
        };
        line.push(b'\n');
        Some(Bytes::from(line))
    }

    fn bookmark_object(&self, rv: Revision, initial_end: bool) -> Value {
        let mut meta = json!({ "resourceVersion": rv.to_string() });
        if initial_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        json!({
            "kind": self.resource.gvk.kind,
            "apiVersion": self.resource.gvk.api_version(),
            "metadata": meta,
        })
    }

    async fn bookmark(&mut self) -> Result<(), Closed> {
        if !self.bookmarks || self.known_rv <= 0 {
            return Ok(());
        }
        let object = self.bookmark_object(self.known_rv, false);
        self.client_rv = self.known_rv;
        self.send("BOOKMARK", object).await
    }

    async fn error(&mut self, e: ApiError) -> Result<(), Closed> {
        self.send("ERROR", e.status()).await?;
        Err(Closed)
    }

    async fn run(
        mut self,
        initial: Vec<Value>,
        initial_end: Option<Revision>,
        mut stream: WatchStream,
        deadline: Instant,
    ) {
        let _ = self.stream(initial, initial_end, &mut stream, deadline).await;
    }

    async fn stream(
        &mut self,
        initial: Vec<Value>,
        initial_end: Option<Revision>,
        stream: &mut WatchStream,
        deadline: Instant,
    ) -> Result<(), Closed> {
        for obj in initial {
            self.send("ADDED", with_type(obj, self.resource)).await?;
        }
        if let Some(rv) = initial_end {
            let object = self.bookmark_object(rv, true);
            self.send("BOOKMARK", object).await?;
        }
        let mut ticker = tokio::time::interval_at(
            Instant::now() + self.bookmark_interval,
            self.bookmark_interval,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut started = false;
        loop {
            let next = tokio::select! {
                () = self.out.closed() => return Err(Closed),
                () = tokio::time::sleep_until(deadline) => {
                    // Tell the client where to resume, then end the stream cleanly.
                    return self.bookmark().await;
                }
                _ = ticker.tick() => {
                    self.bookmark().await?;
                    continue;
                }
                next = stream.next() => next,
            };
            let resp = match next {
                None => return Ok(()),
                Some(Ok(resp)) => resp,
                Some(Err(e)) => return self.error(ApiError::from(e)).await,
            };
            for e in &resp.events {
                self.event(e).await?;
            }
            self.known_rv = self.known_rv.max(resp.header_revision);
            let behind = self.known_rv - self.client_rv;
            if resp.events.is_empty() && behind > 0 && (!started || behind >= BOOKMARK_LAG) {
                self.bookmark().await?;
            }
            started = true;
        }
    }

    /// Sends one store event as the client sees it through its selectors (upstream's
    /// cacher): ADDED when the object starts matching, MODIFIED while it matches, DELETED
    /// (its previous state at the change's revision) when it stops matching or is deleted.
    async fn event(&mut self, e: &Event) -> Result<(), Closed> {
        let rev = e.kv.mod_revision;
        if self.selectors.is_empty() && self.table.is_none() {
            // Every watcher without selectors or Tables sends the same line for this event.
            let kind = match (e.kind, &e.prev_kv) {
                (EventKind::Put, None) => "ADDED",
                (EventKind::Put, Some(_)) => "MODIFIED",
                (EventKind::Delete, _) => "DELETED",
            };
            let served = std::ptr::from_ref::<Resource>(self.resource) as usize;
            let k = (served, e.kv.key.clone(), rev, kind);
            let line = match self.lines.get(&k) {
                Some(line) => Some(line),
                None => {
                    let line = self
                        .whole(e)
                        .and_then(|(kind, obj)| self.encode(kind, with_type(obj, self.resource)));
                    if let Some(l) = &line {
                        self.lines.insert(k, l.clone());
                    }
                    line
                }
            };
            if let Some(line) = line {
                self.out.send(line).await.map_err(|_| Closed)?;
                self.client_rv = self.client_rv.max(rev);
            }
            self.known_rv = self.known_rv.max(rev);
            return Ok(());
        }
        let decode = |value: &[u8], at: Revision| match objects::decode(value, at) {
            Ok(v) => Some(v),
            Err(err) => {
                tracing::warn!(key = %String::from_utf8_lossy(&e.kv.key), error = %err, "undecodable object in a watch");
                None
            }
        };
        let current = match e.kind {
            EventKind::Put => decode(&e.kv.value, rev),
            EventKind::Delete => None,
        };
        let previous = e.prev_kv.as_ref().and_then(|p| decode(&p.value, p.mod_revision));
        let now = current.as_ref().is_some_and(|o| self.selectors.matches(o));
        let before = previous.as_ref().is_some_and(|o| self.selectors.matches(o));
        let sent = match (now, before, current, previous) {
            (true, false, Some(cur), _) => Some(("ADDED", cur)),
            (true, true, Some(cur), _) => Some(("MODIFIED", cur)),
            (false, true, _, Some(mut prev)) => {
                if let Some(m) = prev.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), Value::String(rev.to_string()));
                }
                Some(("DELETED", prev))
            }
            (false, false, None, None)
                if e.kind == EventKind::Delete && self.selectors.is_empty() =>
            {
                // The store no longer knows the last state (compacted): name what went.
                Some(("DELETED", self.bare_object(&e.kv.key, rev)))
            }
            _ => None,
        };
        if let Some((kind, obj)) = sent {
            self.send(kind, with_type(obj, self.resource)).await?;
            self.client_rv = self.client_rv.max(rev);
        }
        self.known_rv = self.known_rv.max(rev);
        Ok(())
    }

    /// The event as a watcher without selectors sees it.
    fn whole(&self, e: &Event) -> Option<(&'static str, Value)> {
        let rev = e.kv.mod_revision;
        let decode = |value: &[u8], at: Revision| match objects::decode(value, at) {
            Ok(v) => Some(v),
            Err(err) => {
                tracing::warn!(key = %String::from_utf8_lossy(&e.kv.key), error = %err, "undecodable object in a watch");
                None
            }
        };
        match e.kind {
            EventKind::Put => {
                let kind = if e.prev_kv.is_some() { "MODIFIED" } else { "ADDED" };
                decode(&e.kv.value, rev).map(|o| (kind, o))
            }
            EventKind::Delete => {
                let prev = e.prev_kv.as_ref().and_then(|p| decode(&p.value, p.mod_revision));
                Some(match prev {
                    Some(mut prev) => {
                        if let Some(m) = prev.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.insert("resourceVersion".into(), Value::String(rev.to_string()));
                        }
                        ("DELETED", prev)
                    }
                    // The store no longer knows the last state (compacted): name what went.
                    None => ("DELETED", self.bare_object(&e.kv.key, rev)),
                })
            }
        }
    }

    /// An object with only the name and namespace its key holds.
    fn bare_object(&self, key: &[u8], rev: Revision) -> Value {
        let key = String::from_utf8_lossy(key);
        let prefix = objects::prefix(self.resource, None);
        let rest = key.strip_prefix(&prefix).unwrap_or(&key);
        let mut meta = json!({ "resourceVersion": rev.to_string() });
        match rest.split_once('/') {
            Some((ns, name)) if self.resource.namespaced => {
                meta["namespace"] = Value::String(ns.to_owned());
                meta["name"] = Value::String(name.to_owned());
            }
            _ => meta["name"] = Value::String(rest.to_owned()),
        }
        json!({ "metadata": meta })
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
