//! Objects in the store: the generic part of every resource's storage, as upstream's
//! `genericregistry.Store` over `etcd3.store`, on untyped JSON.
//!
//! - **Keys**: `/registry/<resource>/<namespace>/<name>` for the core group and
//!   `/registry/<group>/<resource>/<namespace>/<name>` for the others (cluster-scoped
//!   resources drop the namespace), so one prefix range lists a namespace or a resource.
//! - **Values**: the object's JSON without `metadata.resourceVersion`; the resourceVersion is
//!   the key's `mod_revision`, put back on every read, so it can never disagree with the store.
//! - **create** assigns `uid`, `creationTimestamp`, `generation` 1 and a name from
//!   `generateName`, and commits only if the key is absent (else `409 AlreadyExists`).
//! - **update** is optimistic: with a `resourceVersion` it commits only if the key's
//!   `mod_revision` still equals it (else `409 Conflict`); identity fields (`uid`,
//!   `creationTimestamp`, `deletionTimestamp`, `generateName`) are kept from the stored object
//!   and `generation` grows when anything outside `metadata` and `status` changes.
//! - **delete** honours `uid` and `resourceVersion` preconditions; an object with finalizers
//!   only gets its `deletionTimestamp` (the garbage collector and controllers remove it).
//! - **list** reads a prefix at one revision, with `limit` and an opaque `continue` token
//!   (the revision and the next key), and `resourceVersion` semantics: unset is the latest,
//!   `0` is any, `NotOlderThan` and `Exact` as upstream; `410 Gone` below the compaction.
//!
//! Every write can be a dry run: it is checked and answered, never committed. Errors are
//! [`ApiError`]s, which render as `metav1.Status`.

use std::sync::Arc;

use base64::Engine;
use keelson_store::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KeyValue, PutRequest, RangeRequest,
    Revision, Store, TxnOp, TxnOpResponse, TxnRequest,
};
use serde_json::{json, Map, Value};

use crate::registry::Resource;

/// An API error: an HTTP status with a `metav1.Status` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status code.
    pub code: u16,
    /// The Status reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Gone`, ...).
    pub reason: &'static str,
    /// The message.
    pub message: String,
    /// `details`: the object's kind and name, when about one.
    pub details: Option<(String, String)>,
    /// `details.causes`: each field at fault.
    pub causes: Vec<Cause>,
}

/// One `details.causes` entry of a Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldManagerConflict`, …
    pub reason: String,
    /// The message.
    pub message: String,
    /// The field path.
    pub field: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None, causes: Vec::new() }
    }

    pub(crate) fn about(mut self, r: &Resource, name: &str) -> Self {
        self.details = Some((r.plural.to_owned(), name.to_owned()));
        self
    }

    /// `404 NotFound` for `name` of `r`.
    pub fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(r))).about(r, name)
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// `422 Invalid` for `name` of `r`, naming the field path.
    pub fn invalid(r: &Resource, name: &str, field: &str, why: &str) -> Self {
        let message = if field.is_empty() {
            format!("{} \"{name}\" is invalid: {why}", r.gvk.kind)
        } else {
            format!("{} \"{name}\" is invalid: {field}: {why}", r.gvk.kind)
        };
        let mut e = Self::new(422, "Invalid", message);
        // Upstream's Invalid errors name the kind, the others the resource.
        e.details = Some((r.gvk.kind.to_owned(), name.to_owned()));
        // kubectl prints an Invalid error's causes, not its message.
        e.causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message: why.to_owned(),
            field: field.to_owned(),
        });
        e
    }

    /// `500 InternalError`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((kind, name)) = &self.details {
            s["details"] = json!({ "name": name, "kind": kind });
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
                .collect();
            s["details"]["causes"] = Value::Array(causes);
        }
        s
    }
}

/// `deployments.apps` or `pods`: how upstream names a resource in messages.
fn qualified(r: &Resource) -> String {
    if r.gvk.group.is_empty() {
        r.plural.to_owned()
    } else {
        format!("{}.{}", r.plural, r.gvk.group)
    }
}

impl From<keelson_store::Error> for ApiError {
    fn from(e: keelson_store::Error) -> Self {
        match e {
            keelson_store::Error::Compacted { requested, compact_revision } => ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {requested} ({compact_revision})"),
            ),
            keelson_store::Error::FutureRevision { requested, current } => ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            other => ApiError::internal(format!("storage: {other}")),
        }
    }
}

/// Result of this module.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// How a read chooses its revision (`resourceVersion` and `resourceVersionMatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadAt {
    /// Unset: the latest revision (a consistent read).
    #[default]
    Latest,
    /// `0`: any revision will do; served at the latest here.
    Any,
    /// `NotOlderThan` this revision: the latest, once the store has reached it.
    NotOlderThan(Revision),
    /// `Exact`: this very revision (lists only).
    Exact(Revision),
}

impl ReadAt {
    /// From the query parameters `resourceVersion` and `resourceVersionMatch`.
    pub fn parse(rv: Option<&str>, rv_match: Option<&str>) -> Result<ReadAt> {
        let rv =
            match rv.filter(|v| !v.is_empty()) {
                None => {
                    if rv_match.is_some_and(|m| !m.is_empty()) {
                        return Err(ApiError::bad_request(
                            "resourceVersionMatch is forbidden unless resourceVersion is provided",
                        ));
                    }
                    return Ok(ReadAt::Latest);
                }
                Some(v) => v.parse::<Revision>().ok().filter(|&r| r >= 0).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid resource version {v:?}"))
                })?,
            };
        match rv_match.filter(|m| !m.is_empty()) {
            None if rv == 0 => Ok(ReadAt::Any),
            None | Some("NotOlderThan") => Ok(ReadAt::NotOlderThan(rv)),
            Some("Exact") if rv == 0 => Err(ApiError::bad_request(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
            )),
            Some("Exact") => Ok(ReadAt::Exact(rv)),
            Some(m) => {
                Err(ApiError::bad_request(format!("unsupported resourceVersionMatch {m:?}")))
            }
        }
    }
}

/// A list request.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// At most this many items (`0`: all).
    pub limit: i64,
    /// The `continue` token of the previous page.
    pub continue_token: Option<String>,
    /// Which revision.
    pub at: ReadAt,
}

/// One page of a list: of decoded objects, or of the stored pairs ([`Objects::list_stored`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage<T = Value> {
    /// The objects, in key order, each with its resourceVersion.
    pub items: Vec<T>,
    /// The revision the page was read at (`metadata.resourceVersion` of the list).
    pub resource_version: Revision,
    /// The token for the next page, when there is one.
    pub continue_token: Option<String>,
    /// Items left after this page.
    pub remaining: Option<i64>,
}

/// Delete preconditions (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object's uid must be this.
    pub uid: Option<String>,
    /// The object's resourceVersion must be this.
    pub resource_version: Option<Revision>,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Value),
    /// It has finalizers: it now carries a `deletionTimestamp` and waits for them.
    Pending(Value),
}

/// Objects of every resource in one store, with the watch caches that serve its lists and
/// watches ([`crate::watch`]).
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
    caches: Arc<crate::watch::WatchCaches>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").finish_non_exhaustive()
    }
}

/// The key prefix of `r`'s objects in `namespace` (all namespaces with `None`).
pub fn prefix(r: &Resource, namespace: Option<&str>) -> String {
    let mut p = String::from("/registry/");
    if !r.gvk.group.is_empty() {
        p.push_str(r.gvk.group);
        p.push('/');
    }
    p.push_str(r.plural);
    p.push('/');
    if let (true, Some(ns)) = (r.namespaced, namespace) {
        p.push_str(ns);
        p.push('/');
    }
    p
}

/// The key of one object.
pub fn key(r: &Resource, namespace: Option<&str>, name: &str) -> String {
    format!("{}{name}", prefix(r, namespace))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A new random (version 4) uid.
pub(crate) fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    // RFC 4122 version 4 layout.
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

/// Lowercase alphanumerics without vowels and look-alikes, as upstream's generated names.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated_name(base: &str) -> String {
    let base: String = base.chars().take(58).collect();
    let suffix: String =
        (0..5).map(|_| NAME_ALPHABET[rand::random_range(0..NAME_ALPHABET.len())] as char).collect();
    format!("{base}{suffix}")
}

fn meta(obj: &mut Value) -> Result<&mut Map<String, Value>> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    m.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata is not an object"))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// The object as stored: without its resourceVersion.
pub fn encode(obj: &Value) -> Result<Vec<u8>> {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).map_err(|e| ApiError::internal(format!("encode: {e}")))
}

/// The object as read: with its resourceVersion.
pub(crate) fn decode(value: &[u8], revision: Revision) -> Result<Value> {
    let mut o: Value = serde_json::from_slice(value)
        .map_err(|e| ApiError::internal(format!("decode a stored object: {e}")))?;
    meta(&mut o)?.insert("resourceVersion".into(), Value::String(revision.to_string()));
    Ok(o)
}

/// Everything but `metadata` and `status`: what `generation` counts changes of.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// How often [`Objects::update_with`] recomputes a change that lost a race before it answers
/// `409 Conflict`.
const UPDATE_ATTEMPTS: usize = 16;

/// What [`Objects::update_with`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The object as stored, with its resourceVersion.
    pub object: Value,
    /// Whether it was created (it did not exist).
    pub created: bool,
}

/// Fills in a new object's identity; returns its name. `url_name` is the name the request's
/// path gives, which the object must carry (or leave out).
fn prepare_create(
    r: &Resource,
    ns: Option<&str>,
    obj: &mut Value,
    url_name: Option<&str>,
) -> Result<String> {
    let m = meta(obj)?;
    let name = match m.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => match (url_name, m.get("generateName").and_then(Value::as_str)) {
            (Some(n), _) => n.to_owned(),
            (None, Some(base)) if !base.is_empty() => generated_name(base),
            _ => {
                return Err(ApiError::invalid(
                    r,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ))
            }
        },
    };
    if let Some(given) = m.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        if ns.is_some_and(|ns| ns != given) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    m.insert("name".into(), Value::String(name.clone()));
    match ns {
        Some(ns) => m.insert("namespace".into(), Value::String(ns.to_owned())),
        None => m.remove("namespace"),
    };
    m.insert("uid".into(), Value::String(new_uid()));
    m.insert("creationTimestamp".into(), Value::String(now()));
    m.insert("generation".into(), json!(1));
    for f in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
        m.remove(f);
    }
    Ok(name)
}

/// Keeps an updated object's identity from the stored one and counts its generation.
fn prepare_update(ns: Option<&str>, name: &str, current: &Value, obj: &mut Value) -> Result<()> {
    let cur_meta = current.get("metadata").cloned().unwrap_or_default();
    let spec_changed = spec_part(current) != spec_part(obj);
    let m = meta(obj)?;
    m.insert("name".into(), Value::String(name.to_owned()));
    match ns {
        Some(ns) => m.insert("namespace".into(), Value::String(ns.to_owned())),
        None => m.remove("namespace"),
    };
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generateName",
    ] {
        match cur_meta.get(f) {
            Some(v) => m.insert(f.into(), v.clone()),
            None => m.remove(f),
        };
    }
    let generation = cur_meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
    m.insert("generation".into(), json!(if spec_changed { generation + 1 } else { generation }));
    Ok(())
}

impl Objects {
    /// Objects over `store`, with watch caches of the default size.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_watch_caches(store, keelson_store::watch_cache::Options::default())
    }

    /// Objects over `store`, with watch caches of `opts`.
    pub fn with_watch_caches(
        store: Arc<dyn Store>,
        opts: keelson_store::watch_cache::Options,
    ) -> Self {
        let caches = Arc::new(crate::watch::WatchCaches::new(store.clone(), opts));
        Objects { store, caches }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The watch caches.
    pub fn caches(&self) -> &crate::watch::WatchCaches {
        &self.caches
    }

    /// Creates `obj` (its namespace is `namespace`'s for a namespaced resource).
    pub async fn create(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value> {
        self.create_with(r, namespace, dry_run, &[], |_, _| Ok(obj.clone())).await
    }

    /// Creates the object `build` returns. `build` sees the ranges `reads` (read at one
    /// revision) and may add [`Effects`], which commit in the same transaction as the object
    /// and only if their compares hold; when they do not, everything is read and built again.
    pub async fn create_with<F>(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        dry_run: bool,
        reads: &[KeyRange],
        mut build: F,
    ) -> Result<Value>
    where
        F: FnMut(&Reads, &mut Effects) -> Result<Value> + Send,
    {
        let ns = self.scope(r, namespace)?;
        for _ in 0..UPDATE_ATTEMPTS {
            let read = self.read_set(reads, 0).await?;
            let mut effects = Effects::default();
            let mut obj = build(&read, &mut effects)?;
            let name = prepare_create(r, ns, &mut obj, None)?;
            match self.commit_create(r, ns, &name, obj, dry_run, &read, effects).await? {
                Some(created) => return Ok(created),
                None => continue,
            }
        }
        Err(ApiError::new(409, "Conflict", "the object's allocations kept changing; try again"))
    }

    /// Commits a create; `None` when an effect's compare failed (read and build again).
    #[allow(clippy::too_many_arguments)] // the parts of one transaction
    async fn commit_create(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        dry_run: bool,
        read: &Reads,
        effects: Effects,
    ) -> Result<Option<Value>> {
        let k = key(r, ns, name);
        if dry_run {
            return match self.read(&k, 0).await? {
                Some(_) => Err(already_exists(r, name)),
                None => Ok(Some(obj)),
            };
        }
        let mut txn = TxnRequest::new()
            .when(Compare::new(k.clone(), CompareOp::Equal, CompareTarget::CreateRevision(0)))
            .then(TxnOp::Put(PutRequest::new(k.clone(), encode(&obj)?)))
            .or_else(TxnOp::Range(RangeRequest::new(KeyRange::key(k.into_bytes())).count_only()));
        txn = effects.into_txn(txn, read);
        let res = self.store.txn(txn).await?;
        if !res.succeeded {
            let exists =
                matches!(res.responses.first(), Some(TxnOpResponse::Range(r)) if r.count > 0);
            return if exists { Err(already_exists(r, name)) } else { Ok(None) };
        }
        meta(&mut obj)?
            .insert("resourceVersion".into(), Value::String(res.header_revision.to_string()));
        Ok(Some(obj))
    }

    /// Reads one object.
    pub async fn get(&self, r: &Resource, namespace: Option<&str>, name: &str) -> Result<Value> {
        let ns = self.scope(r, namespace)?;
        match self.read(&key(r, ns, name), 0).await? {
            Some((v, _)) => Ok(v),
            None => Err(ApiError::not_found(r, name)),
        }
    }

    /// Reads one object as the watch cache holds it, as upstream's admission plugins read
    /// their listers: possibly a moment behind the store. An object the cache does not have
    /// is read from the store, so one created a moment ago is still found.
    pub async fn get_cached(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value> {
        let ns = self.scope(r, namespace)?;
        let range = KeyRange::key(key(r, ns, name).into_bytes());
        let cache = self.caches().of(r).await?;
        if let Ok((_, kvs)) = cache.list(&range, 0).await {
            if let Some(kv) = kvs.first() {
                return decode(&kv.value, kv.mod_revision);
            }
        }
        self.get(r, namespace, name).await
    }

    /// Replaces one object, optimistically when `obj` carries a resourceVersion.
    pub async fn update(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value> {
        let written = self
            .update_with(r, namespace, name, dry_run, &[], |current, _, _| match current {
                Some(_) => Ok(obj.clone()),
                None => Err(ApiError::not_found(r, name)),
            })
            .await?;
        Ok(written.object)
    }

    /// Upstream's `GuaranteedUpdate`: reads the object, lets `change` compute its next state
    /// from the current one (`None` when it does not exist: `change` then either fails or
    /// returns an object to create), and commits that state only if the object is still the
    /// one `change` saw; otherwise it reads again and calls `change` again. `change` also sees
    /// the ranges `reads` and may add [`Effects`], committed with the object (see
    /// [`Objects::create_with`]).
    ///
    /// A `resourceVersion` in the computed state is a precondition: it must be the current
    /// one, else `409 Conflict` at once (a PUT of a stale object, a patch that sets it).
    /// Identity fields are kept from the stored object and `generation` is counted as in
    /// [`Objects::update`].
    pub async fn update_with<F>(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        dry_run: bool,
        reads: &[KeyRange],
        mut change: F,
    ) -> Result<Written>
    where
        F: FnMut(Option<&Value>, &Reads, &mut Effects) -> Result<Value> + Send,
    {
        let ns = self.scope(r, namespace)?;
        let k = key(r, ns, name);
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.read(&k, 0).await?;
            let read = self.read_set(reads, 0).await?;
            let mut effects = Effects::default();
            let mut obj = change(current.as_ref().map(|(v, _)| v), &read, &mut effects)?;
            if meta_str(&obj, "name").is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let Some((current, revision)) = current else {
                prepare_create(r, ns, &mut obj, Some(name))?;
                let object =
                    match self.commit_create(r, ns, name, obj, dry_run, &read, effects).await {
                        // Someone created it meanwhile: compute the change against theirs.
                        Err(e) if e.reason == "AlreadyExists" && !dry_run => continue,
                        Ok(None) => continue,
                        Ok(Some(o)) => o,
                        Err(e) => return Err(e),
                    };
                return Ok(Written { object, created: true });
            };
            let expected = match meta_str(&obj, "resourceVersion").filter(|v| !v.is_empty()) {
                None => None,
                Some(v) => Some(v.parse::<Revision>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {v:?}"))
                })?),
            };
            if expected.is_some_and(|e| e != revision) {
                return Err(conflict(r, name));
            }
            prepare_update(ns, name, &current, &mut obj)?;
            if dry_run {
                return Ok(Written { object: obj, created: false });
            }
            let txn = TxnRequest::new()
                .when(Compare::mod_revision_is(k.clone(), revision))
                .then(TxnOp::Put(PutRequest::new(k.clone(), encode(&obj)?)));
            let res = self.store.txn(effects.into_txn(txn, &read)).await?;
            if !res.succeeded {
                if expected.is_some() {
                    return Err(conflict(r, name));
                }
                continue;
            }
            meta(&mut obj)?
                .insert("resourceVersion".into(), Value::String(res.header_revision.to_string()));
            return Ok(Written { object: obj, created: false });
        }
        Err(conflict(r, name))
    }

    /// Deletes one object, or marks it for deletion when it has finalizers.
    pub async fn delete(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<Deleted> {
        self.delete_with(r, namespace, name, pre, dry_run, &[], |_, _, _| Ok(())).await
    }

    /// [`Objects::delete`], with `release` adding the [`Effects`] of the object's removal (it
    /// sees the ranges `reads`); they commit only when the object really goes, not when it is
    /// only marked for deletion.
    #[allow(clippy::too_many_arguments)] // a delete's options plus its read set and effects
    pub async fn delete_with<F>(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
        reads: &[KeyRange],
        mut release: F,
    ) -> Result<Deleted>
    where
        F: FnMut(&Value, &Reads, &mut Effects) -> Result<()> + Send,
    {
        let ns = self.scope(r, namespace)?;
        let k = key(r, ns, name);
        for _ in 0..UPDATE_ATTEMPTS {
            let Some((mut current, revision)) = self.read(&k, 0).await? else {
                return Err(ApiError::not_found(r, name));
            };
            check_preconditions(r, name, pre, &current, revision)?;
            let non_empty = |ptr: &str| {
                current.pointer(ptr).and_then(Value::as_array).is_some_and(|f| !f.is_empty())
            };
            // A Namespace waits for its own `spec.finalizers` too (the namespace controller
            // empties it and removes the content), and says so in its phase.
            let namespace = r.gvk.kind == "Namespace" && r.gvk.group.is_empty();
            if non_empty("/metadata/finalizers") || namespace && non_empty("/spec/finalizers") {
                let m = meta(&mut current)?;
                if !m.contains_key("deletionTimestamp") {
                    m.insert("deletionTimestamp".into(), Value::String(now()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                if namespace {
                    current["status"]["phase"] = json!("Terminating");
                }
                if dry_run {
                    return Ok(Deleted::Pending(current));
                }
                let txn = TxnRequest::new()
                    .when(Compare::mod_revision_is(k.clone(), revision))
                    .then(TxnOp::Put(PutRequest::new(k.clone(), encode(&current)?)));
                let res = self.store.txn(txn).await?;
                if !res.succeeded {
                    continue;
                }
                meta(&mut current)?.insert(
                    "resourceVersion".into(),
                    Value::String(res.header_revision.to_string()),
                );
                return Ok(Deleted::Pending(current));
            }
            let read = self.read_set(reads, 0).await?;
            let mut effects = Effects::default();
            release(&current, &read, &mut effects)?;
            if dry_run {
                return Ok(Deleted::Gone(current));
            }
            let txn = TxnRequest::new()
                .when(Compare::mod_revision_is(k.clone(), revision))
                .then(TxnOp::Delete(DeleteRequest::new(KeyRange::key(k.clone()))));
            let res = self.store.txn(effects.into_txn(txn, &read)).await?;
            if !res.succeeded {
                continue;
            }
            return Ok(Deleted::Gone(current));
        }
        Err(conflict(r, name))
    }

    /// Reads `ranges` (keys and values) at one revision (`0`: the latest).
    async fn read_set(&self, ranges: &[KeyRange], at: Revision) -> Result<Reads> {
        let mut out = Reads::default();
        let mut at = at;
        for range in ranges {
            let res = self.store.range(RangeRequest::new(range.clone()).at(at)).await?;
            if at == 0 {
                at = res.header_revision;
            }
            out.ranges.push((range.clone(), res.kvs));
        }
        out.revision = at;
        Ok(out)
    }

    /// Lists `r`'s objects in `namespace` (all namespaces with `None`), one page.
    pub async fn list(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage> {
        let page = self.list_stored(r, namespace, opts).await?;
        let items = page
            .items
            .iter()
            .map(|kv| decode(&kv.value, kv.mod_revision))
            .collect::<Result<Vec<_>>>()?;
        Ok(ListPage {
            items,
            resource_version: page.resource_version,
            continue_token: page.continue_token,
            remaining: page.remaining,
        })
    }

    /// [`Objects::list`] as stored: the pairs, not decoded.
    pub async fn list_stored(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage<KeyValue>> {
        let ns = if r.namespaced { namespace } else { None };
        let p = prefix(r, ns);
        let whole = KeyRange::prefix(p.clone().into_bytes());
        let (start, at) = match &opts.continue_token {
            Some(token) => {
                if opts.at != ReadAt::Latest && opts.at != ReadAt::Any {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (rev, start) = decode_continue(token, &p)?;
                (start, rev)
            }
            None => {
                let at = match opts.at {
                    ReadAt::Latest | ReadAt::Any => 0,
                    ReadAt::Exact(rv) => rv,
                    ReadAt::NotOlderThan(rv) => {
                        let current = self.store.current_revision().await?;
                        if rv > current {
                            return Err(ApiError::new(
                                504,
                                "Timeout",
                                format!("Too large resource version: {rv}, current: {current}"),
                            ));
                        }
                        0
                    }
                };
                (p.clone().into_bytes(), at)
            }
        };
        let end = whole.end().map(<[u8]>::to_vec).unwrap_or_default();
        let mut req = RangeRequest::new(KeyRange::between(start, end)).at(at);
        if opts.limit > 0 {
            req = req.limit(opts.limit);
        }
        let res = self.store.range(req).await?;
        let revision = if at > 0 { at } else { res.header_revision };
        let (continue_token, remaining) = match (res.more, res.kvs.last()) {
            (true, Some(last)) => {
                let mut next = last.key.clone();
                next.push(0);
                let left = res.count - i64::try_from(res.kvs.len()).unwrap_or(i64::MAX);
                (Some(encode_continue(revision, &next, &p)), Some(left))
            }
            _ => (None, None),
        };
        Ok(ListPage { items: res.kvs, resource_version: revision, continue_token, remaining })
    }

    fn scope<'a>(&self, r: &Resource, namespace: Option<&'a str>) -> Result<Option<&'a str>> {
        match (r.namespaced, namespace.filter(|n| !n.is_empty())) {
            (true, Some(ns)) => Ok(Some(ns)),
            (true, None) => Err(ApiError::bad_request(format!(
                "the namespace of the {} must be given",
                r.singular
            ))),
            (false, _) => Ok(None),
        }
    }

    async fn read(&self, k: &str, at: Revision) -> Result<Option<(Value, Revision)>> {
        let res = self
            .store
            .range(RangeRequest::new(KeyRange::key(k.as_bytes().to_vec())).at(at))
            .await?;
        match res.kvs.first() {
            Some(kv) => Ok(Some((decode(&kv.value, kv.mod_revision)?, kv.mod_revision))),
            None => Ok(None),
        }
    }
}

fn check_preconditions(
    r: &Resource,
    name: &str,
    pre: &Preconditions,
    current: &Value,
    revision: Revision,
) -> Result<()> {
    if let Some(uid) = &pre.uid {
        let actual = meta_str(current, "uid").unwrap_or_default();
        if actual != uid {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}",
                    qualified(r)
                ),
            )
            .about(r, name));
        }
    }
    if let Some(rv) = pre.resource_version {
        if rv != revision {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}",
                    qualified(r)
                ),
            )
            .about(r, name));
        }
    }
    Ok(())
}

/// Ranges read for a write, at one revision: the write's read set. Every key of a range that
/// a write's [`Effects`] touch is compared in its transaction.
#[derive(Debug, Clone, Default)]
pub struct Reads {
    ranges: Vec<(KeyRange, Vec<keelson_store::KeyValue>)>,
    revision: Revision,
}

impl Reads {
    /// The keys and values read in `range` (one of the ranges asked for).
    pub fn get(&self, range: &KeyRange) -> &[keelson_store::KeyValue] {
        self.ranges
            .iter()
            .find(|(r, _)| r == range)
            .map(|(_, kvs)| kvs.as_slice())
            .unwrap_or_default()
    }

    /// The `mod_revision` a key had when read; `None` when it was absent (or not read).
    fn revision_of(&self, key: &[u8]) -> Option<Revision> {
        self.ranges
            .iter()
            .flat_map(|(_, kvs)| kvs)
            .find(|kv| kv.key == key)
            .map(|kv| kv.mod_revision)
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.ranges.iter().any(|(r, _)| r.contains(key))
    }
}

/// Writes that commit atomically with an object (an allocation with its Service, its release
/// with the Service's deletion).
#[derive(Debug, Clone, Default)]
pub struct Effects {
    puts: Vec<(Vec<u8>, Vec<u8>)>,
    deletes: Vec<Vec<u8>>,
}

impl Effects {
    /// Writes `value` at `key`. If the key lies in a range of the read set, the write commits
    /// only if the key is still as read (absent, or at the same revision).
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.puts.push((key.into(), value.into()));
    }

    /// Deletes `key`, under the same condition.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.deletes.push(key.into());
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    fn into_txn(self, mut txn: TxnRequest, read: &Reads) -> TxnRequest {
        let keys = self.puts.iter().map(|(k, _)| k).chain(self.deletes.iter());
        for k in keys {
            if !read.covers(k) {
                continue;
            }
            txn = txn.when(match read.revision_of(k) {
                Some(rev) => Compare::mod_revision_is(k.clone(), rev),
                None => Compare::new(k.clone(), CompareOp::Equal, CompareTarget::CreateRevision(0)),
            });
        }
        for (k, v) in self.puts {
            txn = txn.then(TxnOp::Put(PutRequest::new(k, v)));
        }
        for k in self.deletes {
            txn = txn.then(TxnOp::Delete(DeleteRequest::new(KeyRange::key(k))));
        }
        txn
    }
}

fn already_exists(r: &Resource, name: &str) -> ApiError {
    ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(r)))
        .about(r, name)
}

fn conflict(r: &Resource, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            qualified(r)
        ),
    )
    .about(r, name)
}

/// The continue token: base64 of `{"v":1,"rv":<revision>,"start":"<key relative to the prefix>"}`,
/// as upstream's (which also carries the revision and the next key).
fn encode_continue(revision: Revision, next_key: &[u8], prefix: &str) -> String {
    let rel = next_key.strip_prefix(prefix.as_bytes()).unwrap_or(next_key);
    let token = json!({ "v": 1, "rv": revision, "start": base64::engine::general_purpose::STANDARD.encode(rel) });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(Revision, Vec<u8>)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if v.get("v").and_then(Value::as_i64) != Some(1) {
        return Err(bad());
    }
    let rev = v.get("rv").and_then(Value::as_i64).filter(|&r| r > 0).ok_or_else(bad)?;
    let rel = v
        .get("start")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(bad)?;
    let mut start = prefix.as_bytes().to_vec();
    start.extend_from_slice(&rel);
    Ok((rev, start))
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
