//! The control plane's store: etcd's key/value semantics as Kubernetes' storage layer uses them,
//! behind one trait with two backends.
//!
//! # The trait
//!
//! [`Store`] is etcd v3's KV surface reduced to what `apiserver/pkg/storage/etcd3` calls:
//! revisioned pairs ([`KeyValue`]: `create_revision`, `mod_revision`, `version`, `lease`),
//! range reads at a revision with limit, count and `more`, multi-key transactions (compares on
//! version, create/mod revision, value, lease; put, delete and range operations returning the
//! previous pairs), watches from a revision over a key range (previous pairs, progress
//! notifications, [`Error::Compacted`] when the start revision is gone), compaction, the
//! current revision, and leases (Kubernetes attaches Events to a one-hour lease).
//!
//! It is object safe (`async_trait`, `Send + Sync`): the API server picks its backend at start
//! from a flag and holds an `Arc<dyn Store>`; the box per call is nothing next to an fsync or a
//! network round trip, and one non-generic service keeps the API server's compile times and
//! error types simple. Watches are boxed streams ([`WatchStream`]).
//!
//! # Backends
//!
//! - [`embedded::EmbeddedStore`] (default, single node, nothing to install): redb, with group
//!   commit, a revision-indexed history, compaction and an automatic compactor. Its module docs
//!   compare the embedded databases considered.
//! - `etcd::EtcdStore` (feature `etcd`): a real etcd cluster through `etcd-client`.
//!
//! Both pass the same conformance suite ([`conformance`], feature `conformance`, run against the
//! embedded store by plain `cargo test` and against a real etcd by the privileged tests).
//!
//! [`watch_cache::WatchCache`] sits on any backend and serves lists and recent watches of one
//! prefix from memory.
//!
//! # Limits
//!
//! No sorting or revision filters on ranges, no nested transactions, no auth or cluster
//! membership calls: Kubernetes uses none of them. Watch progress is periodic (the watcher
//! cannot ask for it on demand yet).

use std::pin::Pin;

use futures::Stream;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod embedded;
pub mod encrypted;
#[cfg(feature = "etcd")]
pub mod etcd;
mod types;
pub mod watch_cache;

pub use types::*;

/// The store's errors, shared by every backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested revision is older than the compacted one.
    #[error("revision {requested} has been compacted (compacted through {compact_revision})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The store's compaction revision: reads and watches from it on still work.
        compact_revision: Revision,
    },
    /// The requested revision has not been written yet.
    #[error("revision {requested} is in the future (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// The request is malformed; nothing was changed.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// A put named a lease that does not exist, or a lease call named an unknown lease.
    #[error("lease {id} not found")]
    LeaseNotFound {
        /// The lease.
        id: LeaseId,
    },
    /// The embedded backend failed.
    #[error("embedded store")]
    Embedded(#[from] embedded::Error),
    /// The etcd backend failed.
    #[cfg(feature = "etcd")]
    #[error("etcd")]
    Etcd(#[from] etcd::Error),
    /// A sealed value could not be opened (unknown key, or tampered with).
    #[error("decrypt the value of {key}: {reason}")]
    Decrypt {
        /// The storage key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The store was closed while the request was in flight.
    #[error("store is closed")]
    Closed,
}

/// `Result` with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A watch: responses in revision order until the watcher drops it, or one error (after which
/// the stream ends).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse>> + Send>>;

/// etcd's key/value semantics (see the crate docs).
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads a key or a range at a revision.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Writes one key.
    async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        let resp = self.txn(TxnRequest::new().then(TxnOp::Put(req))).await?;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Put(p)) => Ok(p),
            other => Err(unexpected_response("put", other)),
        }
    }

    /// Deletes a key or a range.
    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let resp = self.txn(TxnRequest::new().then(TxnOp::Delete(req))).await?;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => Ok(d),
            other => Err(unexpected_response("delete", other)),
        }
    }

    /// Runs a transaction atomically.
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse>;

    /// Watches a range from a revision.
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream>;

    /// Forgets the history before `revision`: reads and watches at `revision` and later still
    /// work, older ones fail with [`Error::Compacted`]. Compacting at or below the current
    /// compaction revision fails with [`Error::Compacted`], as in etcd.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The current revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Grants a lease of `ttl` seconds (`id` 0: the store picks one).
    async fn lease_grant(&self, ttl: i64, id: LeaseId) -> Result<Lease>;

    /// Revokes a lease and deletes every key attached to it.
    async fn lease_revoke(&self, id: LeaseId) -> Result<()>;

    /// Renews a lease for its whole ttl; returns the ttl.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64>;
}

fn unexpected_response(op: &str, got: Option<TxnOpResponse>) -> Error {
    Error::InvalidRequest { reason: format!("backend answered a single {op} with {got:?}") }
}

/// Rejects what etcd rejects before running a transaction: empty keys, and a branch writing
/// the same key twice (two puts, or a put inside a deletion's range).
pub(crate) fn validate_txn(req: &TxnRequest) -> Result<()> {
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(Error::InvalidRequest { reason: "compare on an empty key".into() });
        }
    }
    for branch in [&req.success, &req.failure] {
        let mut puts: Vec<&[u8]> = Vec::new();
        let mut deletes: Vec<&KeyRange> = Vec::new();
        for op in branch {
            match op {
                TxnOp::Put(p) => {
                    if p.key.is_empty() {
                        return Err(Error::InvalidRequest { reason: "put of an empty key".into() });
                    }
                    if puts.contains(&p.key.as_slice()) {
                        return Err(Error::InvalidRequest {
                            reason: format!(
                                "duplicate key {:?} in transaction",
                                String::from_utf8_lossy(&p.key)
                            ),
                        });
                    }
                    puts.push(&p.key);
                }
                TxnOp::Delete(d) => {
                    if d.range.key.is_empty() {
                        return Err(Error::InvalidRequest {
                            reason: "delete of an empty key".into(),
                        });
                    }
                    deletes.push(&d.range);
                }
                TxnOp::Range(r) => {
                    if r.range.key.is_empty() {
                        return Err(Error::InvalidRequest {
                            reason: "range of an empty key".into(),
                        });
                    }
                }
            }
        }
        if let Some(k) = puts.iter().find(|k| deletes.iter().any(|d| d.contains(k))) {
            return Err(Error::InvalidRequest {
                reason: format!(
                    "key {:?} both put and deleted in transaction",
                    String::from_utf8_lossy(k)
                ),
            });
        }
    }
    Ok(())
}
