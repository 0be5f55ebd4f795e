//! Request and response types of the [`Store`](crate::Store) trait: etcd v3's KV, Txn, Watch,
//! Compact and Lease messages (`etcdserverpb/rpc.proto`, `mvccpb/kv.proto`), reduced to what
//! Kubernetes' storage layer (`apiserver/pkg/storage/etcd3`) uses.
//!
//! Revisions are `i64` as in etcd: `0` in a request means "the current revision", the first
//! write of a new store gets revision `2` after the empty store's revision `1`, as in etcd.

use bytes::Bytes;

/// A store revision (etcd's main revision). Kubernetes' `resourceVersion` is one of these.
pub type Revision = i64;

/// A lease id. `0` means "no lease".
pub type LeaseId = i64;

/// One revisioned key/value pair, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty when a range asked for keys only). Shared, not copied, when a pair is
    /// cloned: the watch cache's objects, its event window and every watcher's events hold the
    /// same bytes.
    pub value: Bytes,
    /// The revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// Writes to the key since its creation, starting at 1.
    pub version: i64,
    /// The lease the key is attached to, `0` for none.
    pub lease: LeaseId,
}

/// Which keys a request covers, in etcd's encoding of `key` and `range_end`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRange {
    /// The first key.
    pub key: Vec<u8>,
    /// Empty: only `key`. `[0]`: every key `>= key`. Otherwise the half-open `[key, range_end)`.
    /// `key == [0]` with `range_end == [0]` is every key.
    pub range_end: Vec<u8>,
}

impl KeyRange {
    /// Exactly one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        KeyRange { key: key.into(), range_end: Vec::new() }
    }

    /// Every key starting with `prefix` (etcd's `WithPrefix`).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        KeyRange { key, range_end }
    }

    /// The half-open range `[from, to)`.
    pub fn between(from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) -> Self {
        KeyRange { key: from.into(), range_end: to.into() }
    }

    /// Every key.
    pub fn all() -> Self {
        KeyRange { key: vec![0], range_end: vec![0] }
    }

    /// Whether the range is a single key.
    pub fn is_single(&self) -> bool {
        self.range_end.is_empty()
    }

    /// The exclusive upper bound, `None` when unbounded (`range_end == [0]`). Only meaningful
    /// when the range is not a single key.
    pub fn end(&self) -> Option<&[u8]> {
        (self.range_end != [0]).then_some(self.range_end.as_slice())
    }

    /// The inclusive lower bound (`[0]` as the key of an unbounded range means every key).
    pub fn start(&self) -> &[u8] {
        if self.key == [0] && self.range_end == [0] {
            &[]
        } else {
            &self.key
        }
    }

    /// Whether `k` lies in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.is_single() {
            return k == self.key.as_slice();
        }
        k >= self.start() && self.end().is_none_or(|end| k < end)
    }

    /// Whether the range can hold no key at all (`range_end <= key`, not unbounded).
    pub fn is_empty_range(&self) -> bool {
        !self.is_single() && self.end().is_some_and(|end| end <= self.start())
    }
}

/// The `range_end` that makes `[prefix, range_end)` cover every key starting with `prefix`
/// (etcd's `GetPrefixRangeEnd`): the prefix with its last byte below `0xff` incremented and
/// what follows dropped, or `[0]` (unbounded) when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range read, as etcd's `RangeRequest` without sorting or revision filters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    /// The keys to read.
    pub range: KeyRange,
    /// Read at this revision; `0` for the current one.
    pub revision: Revision,
    /// At most this many keys (in key order); `0` for no limit.
    pub limit: i64,
    /// Return only the count, no key/value pairs.
    pub count_only: bool,
    /// Return keys without values.
    pub keys_only: bool,
}

impl RangeRequest {
    /// A read of `range` at the current revision with no limit.
    pub fn new(range: KeyRange) -> Self {
        RangeRequest { range, ..Default::default() }
    }

    /// The same read at `revision`.
    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }

    /// The same read limited to `limit` keys.
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }

    /// The same read returning only the count.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// The same read returning keys without values.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
}

/// The result of a range read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The store's current revision when the read was served (not the read revision).
    pub header_revision: Revision,
    /// The pairs, in key order, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys than returned lie in the range.
    pub more: bool,
    /// How many keys lie in the range at the read revision, regardless of `limit`.
    pub count: i64,
}

/// A write of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The new value.
    pub value: Vec<u8>,
    /// The lease to attach the key to, `0` for none (detaches it from any former lease).
    pub lease: LeaseId,
    /// Return the pair as it was before the write.
    pub prev_kv: bool,
}

impl PutRequest {
    /// A put of `value` at `key` without lease, not asking for the previous pair.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        PutRequest { key: key.into(), value: value.into(), ..Default::default() }
    }

    /// The same put, returning the previous pair.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// The same put, attached to `lease`.
    pub fn with_lease(mut self, lease: LeaseId) -> Self {
        self.lease = lease;
        self
    }
}

/// The result of a put.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    /// The store's revision after the write.
    pub header_revision: Revision,
    /// The previous pair, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// A deletion of a key or a range of keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRequest {
    /// The keys to delete.
    pub range: KeyRange,
    /// Return the deleted pairs.
    pub prev_kv: bool,
}

impl DeleteRequest {
    /// A deletion of `range`, not asking for the deleted pairs.
    pub fn new(range: KeyRange) -> Self {
        DeleteRequest { range, prev_kv: false }
    }

    /// The same deletion, returning the deleted pairs.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
}

/// The result of a deletion.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteResponse {
    /// The store's revision after the deletion.
    pub header_revision: Revision,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted pairs, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version (`0` when it does not exist).
    Version(i64),
    /// The key's create revision (`0` when it does not exist).
    CreateRevision(Revision),
    /// The key's mod revision (`0` when it does not exist).
    ModRevision(Revision),
    /// The key's value. A compare on the value of a missing key always fails, as in etcd.
    Value(Vec<u8>),
    /// The key's lease (`0` when it has none or does not exist).
    Lease(LeaseId),
}

/// How a [`Compare`] relates the key's attribute (left) to the given one (right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// One condition of a transaction, on a single key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// The relation.
    pub op: CompareOp,
    /// The attribute and the value to compare it with.
    pub target: CompareTarget,
}

impl Compare {
    /// `key`'s attribute `target` related to its value by `op`.
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare { key: key.into(), op, target }
    }

    /// `key` does not exist (its mod revision is 0).
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare::new(key, CompareOp::Equal, CompareTarget::ModRevision(0))
    }

    /// `key` was last written at `revision` (Kubernetes' optimistic concurrency check).
    pub fn mod_revision_is(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Compare::new(key, CompareOp::Equal, CompareTarget::ModRevision(revision))
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// A range read, seeing the earlier operations of the same branch.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A deletion.
    Delete(DeleteRequest),
}

/// A multi-key transaction: if every compare holds, `success` runs, else `failure`; the whole
/// transaction is atomic and its writes share one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnRequest {
    /// The conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// The operations run when they do.
    pub success: Vec<TxnOp>,
    /// The operations run when they do not.
    pub failure: Vec<TxnOp>,
}

impl TxnRequest {
    /// A transaction with no compares and no operations.
    pub fn new() -> Self {
        TxnRequest::default()
    }

    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compare.push(compare);
        self
    }

    /// Adds an operation to the success branch.
    pub fn then(mut self, op: TxnOp) -> Self {
        self.success.push(op);
        self
    }

    /// Adds an operation to the failure branch.
    pub fn or_else(mut self, op: TxnOp) -> Self {
        self.failure.push(op);
        self
    }
}

/// The result of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// Of a [`TxnOp::Range`].
    Range(RangeResponse),
    /// Of a [`TxnOp::Put`].
    Put(PutResponse),
    /// Of a [`TxnOp::Delete`].
    Delete(DeleteResponse),
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    /// The store's revision after the transaction.
    pub header_revision: Revision,
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// One response per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResponse>,
}

/// A watch on a range of keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchRequest {
    /// The keys to watch.
    pub range: KeyRange,
    /// The first revision to report; `0` for "after the current one".
    pub start_revision: Revision,
    /// Report each event's previous pair.
    pub prev_kv: bool,
    /// Send empty responses (progress notifications) now and then while nothing happens, so
    /// the watcher learns the revision it is up to date with (Kubernetes' bookmarks).
    pub progress_notify: bool,
}

impl WatchRequest {
    /// A watch on `range` from `start_revision` (`0`: from now), without previous pairs.
    pub fn new(range: KeyRange, start_revision: Revision) -> Self {
        WatchRequest { range, start_revision, prev_kv: false, progress_notify: false }
    }

    /// The same watch, reporting previous pairs.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// The same watch, with progress notifications.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
}

/// Whether an [`Event`] wrote or deleted its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (its pair carries only key and `mod_revision`).
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The pair after the change; for a delete only `key` and `mod_revision` (the deletion's
    /// revision) are set, as in etcd.
    pub kv: KeyValue,
    /// The pair before the change, when asked for and still known to the store.
    pub prev_kv: Option<KeyValue>,
}

/// What a watch stream yields: events in revision order, or none at all for a progress
/// notification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchResponse {
    /// The revision the watcher is now up to date with: every change up to it in the watched
    /// range has been delivered.
    pub header_revision: Revision,
    /// The changes, empty for a progress notification.
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// Whether this is a progress notification (no events).
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// Its time to live in seconds, as granted.
    pub ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn key_range_contains_follows_etcd_encoding() {
        let single = KeyRange::key("a");
        assert!(single.contains(b"a"));
        assert!(!single.contains(b"ab"));
        let prefix = KeyRange::prefix("a/");
        assert!(prefix.contains(b"a/"));
        assert!(prefix.contains(b"a/b"));
        assert!(!prefix.contains(b"a0"));
        assert!(!prefix.contains(b"a"));
        let from = KeyRange::between("b", vec![0]);
        assert!(from.contains(b"zzz"));
        assert!(!from.contains(b"a"));
        let all = KeyRange::all();
        assert!(all.contains(b""));
        assert!(all.contains(b"\xff"));
        assert!(KeyRange::between("b", "a").is_empty_range());
        assert!(!KeyRange::between("a", "b").is_empty_range());
    }
}
