//! The etcd backend: the [`Store`](crate::Store) trait over a real etcd v3 cluster, for highly
//! available control planes.
//!
//! `etcd-client` 0.21 is the release on tonic/prost 0.14 (the workspace's versions); it builds
//! etcd's protobufs with `protoc` (installed by `dev/setup`). TLS to etcd is not wired yet; when
//! it is, it must use the `tls-ring` feature (never aws-lc).
//!
//! etcd reports most failures as gRPC statuses with a fixed message; they are mapped to the
//! store's error kinds here (`mvcc: required revision has been compacted`, `... is a future
//! revision`, `requested lease not found`). etcd's range error does not carry the compaction
//! revision: it is learned, only on that error path, from a watch started at revision 1, which
//! etcd cancels with the compaction revision.
//!
//! Reads and watches go through KV and watch clients whose decoding limit is raised from
//! tonic's 4 MiB to [`MAX_RESPONSE_BYTES`] (upstream's apiserver sets its gRPC receive limit to
//! `math.MaxInt32` for the same reason): a range is one message, and a list of 700 pods of
//! 6 KB is already larger than 4 MiB.

use bytes::Bytes;
use futures::StreamExt;

use crate::{
    CompareOp, CompareTarget, DeleteResponse, Event, EventKind, KeyRange, KeyValue, Lease, LeaseId,
    PutResponse, RangeRequest, RangeResponse, Revision, TxnOp, TxnOpResponse, TxnRequest,
    TxnResponse, WatchRequest, WatchResponse, WatchStream,
};

/// The etcd backend's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the cluster.
    #[error("connect to etcd at {endpoints:?}")]
    Connect {
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// Why.
        #[source]
        source: etcd_client::Error,
    },
    /// A request failed.
    #[error("etcd {op}")]
    Request {
        /// The request.
        op: &'static str,
        /// Why.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd answered something this client does not understand.
    #[error("unexpected etcd answer to {op}: {what}")]
    Protocol {
        /// The request.
        op: &'static str,
        /// What was wrong.
        what: String,
    },
}

/// A store on an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: etcd_client::Client,
    /// Ranges and transactions, with the raised decoding limit.
    kv: etcd_client::KvClient,
    /// Watches, with the raised decoding limit.
    watcher: etcd_client::WatchClient,
    endpoints: Vec<String>,
}

/// The largest response etcd may send this client (a whole range is one message): upstream's
/// `math.MaxInt32`.
pub const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.endpoints).finish()
    }
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, Error> {
        let client = etcd_client::Client::connect(endpoints, None)
            .await
            .map_err(|source| Error::Connect { endpoints: endpoints.to_vec(), source })?;
        let kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
        let watcher = client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(EtcdStore { client, kv, watcher, endpoints: endpoints.to_vec() })
    }

    /// The compaction revision, learned from a watch at revision 1 (see the module docs).
    async fn compact_revision(&self) -> Revision {
        let mut watcher = self.watcher.clone();
        let opts = etcd_client::WatchOptions::new().with_start_revision(1);
        let Ok(mut stream) = watcher.watch(vec![0], Some(opts)).await else { return 0 };
        for _ in 0..4 {
            match tokio::time::timeout(std::time::Duration::from_secs(5), stream.message()).await {
                Ok(Ok(Some(resp))) if resp.compact_revision() > 0 => {
                    return resp.compact_revision()
                }
                Ok(Ok(Some(resp))) if resp.created() => continue,
                _ => return 0,
            }
        }
        0
    }

    /// Maps an etcd failure of `op` to the store's errors.
    async fn error(
        &self,
        op: &'static str,
        e: etcd_client::Error,
        requested: Revision,
        lease: LeaseId,
    ) -> crate::Error {
        // etcd answers a keep-alive of an unknown lease with ttl 0, which the client reports so.
        if let etcd_client::Error::LeaseKeepAliveError(msg) = &e {
            if msg.contains("not found") {
                return crate::Error::LeaseNotFound { id: lease };
            }
        }
        if let etcd_client::Error::GRpcStatus(status) = &e {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                return crate::Error::Compacted {
                    requested,
                    compact_revision: self.compact_revision().await,
                };
            }
            if msg.contains("required revision is a future revision") {
                let current = self.header_revision().await.unwrap_or(0);
                return crate::Error::FutureRevision { requested, current };
            }
            if msg.contains("requested lease not found") {
                return crate::Error::LeaseNotFound { id: lease };
            }
            if msg.contains("duplicate key given in txn request") {
                return crate::Error::InvalidRequest { reason: msg.to_owned() };
            }
        }
        crate::Error::Etcd(Error::Request { op, source: e })
    }

    async fn header_revision(&self) -> Result<Revision, Error> {
        let mut kv_client = self.kv.clone();
        let resp = kv_client
            .get(vec![0], Some(etcd_client::GetOptions::new().with_count_only()))
            .await
            .map_err(|source| Error::Request { op: "get revision", source })?;
        header(resp.header(), "get revision")
    }
}

fn header(h: Option<&etcd_client::ResponseHeader>, op: &'static str) -> Result<Revision, Error> {
    h.map(|h| h.revision()).ok_or_else(|| Error::Protocol { op, what: "no header".into() })
}

fn kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn get_options(r: &RangeRequest) -> etcd_client::GetOptions {
    let mut o = etcd_client::GetOptions::new().with_revision(r.revision).with_limit(r.limit);
    o = range_end(o, &r.range, |o, end| o.with_range(end), |o| o.with_from_key());
    if r.count_only {
        o = o.with_count_only();
    }
    if r.keys_only {
        o = o.with_keys_only();
    }
    o
}

/// Applies `range`'s end to an options builder in etcd's encoding.
fn range_end<O>(
    o: O,
    range: &KeyRange,
    with_range: impl FnOnce(O, Vec<u8>) -> O,
    from_key: impl FnOnce(O) -> O,
) -> O {
    if range.range_end.is_empty() {
        o
    } else if range.range_end == [0] {
        from_key(o)
    } else {
        with_range(o, range.range_end.clone())
    }
}

fn range_response(
    resp: &etcd_client::GetResponse,
    op: &'static str,
) -> Result<RangeResponse, Error> {
    Ok(RangeResponse {
        header_revision: header(resp.header(), op)?,
        kvs: resp.kvs().iter().map(kv).collect(),
        more: resp.more(),
        count: resp.count(),
    })
}

fn compare(c: &crate::Compare) -> etcd_client::Compare {
    let op = match c.op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
        CompareOp::Less => etcd_client::CompareOp::Less,
    };
    let key = c.key.clone();
    match &c.target {
        CompareTarget::Version(v) => etcd_client::Compare::version(key, op, *v),
        CompareTarget::CreateRevision(v) => etcd_client::Compare::create_revision(key, op, *v),
        CompareTarget::ModRevision(v) => etcd_client::Compare::mod_revision(key, op, *v),
        CompareTarget::Value(v) => etcd_client::Compare::value(key, op, v.clone()),
        CompareTarget::Lease(v) => etcd_client::Compare::lease(key, op, *v),
    }
}

fn txn_op(op: &TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Range(r) => etcd_client::TxnOp::get(r.range.key.clone(), Some(get_options(r))),
        TxnOp::Put(p) => {
            let mut o = etcd_client::PutOptions::new().with_lease(p.lease);
            if p.prev_kv {
                o = o.with_prev_key();
            }
            etcd_client::TxnOp::put(p.key.clone(), p.value.clone(), Some(o))
        }
        TxnOp::Delete(d) => {
            let mut o = etcd_client::DeleteOptions::new();
            o = range_end(o, &d.range, |o, end| o.with_range(end), |o| o.with_from_key());
            if d.prev_kv {
                o = o.with_prev_key();
            }
            etcd_client::TxnOp::delete(d.range.key.clone(), Some(o))
        }
    }
}

#[async_trait::async_trait]
impl crate::Store for EtcdStore {
    async fn range(&self, req: RangeRequest) -> crate::Result<RangeResponse> {
        if req.range.key.is_empty() {
            return Err(crate::Error::InvalidRequest { reason: "range of an empty key".into() });
        }
        let mut kv_client = self.kv.clone();
        match kv_client.get(req.range.key.clone(), Some(get_options(&req))).await {
            Ok(resp) => Ok(range_response(&resp, "range")?),
            Err(e) => Err(self.error("range", e, req.revision, 0).await),
        }
    }

    async fn txn(&self, req: TxnRequest) -> crate::Result<TxnResponse> {
        crate::validate_txn(&req)?;
        let mut success: Vec<etcd_client::TxnOp> = req.success.iter().map(txn_op).collect();
        let mut failure: Vec<etcd_client::TxnOp> = req.failure.iter().map(txn_op).collect();
        // etcd answers a transaction without operations serializably: `isTxnSerializable`
        // holds vacuously, so a follower may evaluate the compares on stale state. One
        // count-only (linearizable) read in each branch makes it linearizable like every other
        // call here; its answer is dropped below.
        let padded = success.is_empty() && failure.is_empty() && !req.compare.is_empty();
        if padded {
            let probe = || {
                etcd_client::TxnOp::get(
                    req.compare[0].key.clone(),
                    Some(etcd_client::GetOptions::new().with_count_only()),
                )
            };
            success.push(probe());
            failure.push(probe());
        }
        let txn = etcd_client::Txn::new()
            .when(req.compare.iter().map(compare).collect::<Vec<_>>())
            .and_then(success)
            .or_else(failure);
        let mut kv_client = self.kv.clone();
        let resp = match kv_client.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                let lease = req
                    .success
                    .iter()
                    .chain(&req.failure)
                    .find_map(|op| match op {
                        TxnOp::Put(p) if p.lease != 0 => Some(p.lease),
                        _ => None,
                    })
                    .unwrap_or(0);
                let revision = req
                    .success
                    .iter()
                    .chain(&req.failure)
                    .find_map(|op| match op {
                        TxnOp::Range(r) if r.revision != 0 => Some(r.revision),
                        _ => None,
                    })
                    .unwrap_or(0);
                return Err(self.error("txn", e, revision, lease).await);
            }
        };
        let header_revision = header(resp.header(), "txn")?;
        let responses = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => {
                    Ok(TxnOpResponse::Range(range_response(&g, "txn range")?))
                }
                etcd_client::TxnOpResponse::Put(p) => Ok(TxnOpResponse::Put(PutResponse {
                    header_revision,
                    prev_kv: p.prev_key().map(kv),
                })),
                etcd_client::TxnOpResponse::Delete(d) => {
                    Ok(TxnOpResponse::Delete(DeleteResponse {
                        header_revision,
                        deleted: d.deleted(),
                        prev_kvs: d.prev_kvs().iter().map(kv).collect(),
                    }))
                }
                etcd_client::TxnOpResponse::Txn(_) => {
                    Err(Error::Protocol { op: "txn", what: "nested transaction response".into() })
                }
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let responses = if padded { Vec::new() } else { responses };
        Ok(TxnResponse { header_revision, succeeded: resp.succeeded(), responses })
    }

    async fn watch(&self, req: WatchRequest) -> crate::Result<WatchStream> {
        if req.range.key.is_empty() {
            return Err(crate::Error::InvalidRequest { reason: "watch of an empty key".into() });
        }
        let mut o = etcd_client::WatchOptions::new().with_start_revision(req.start_revision);
        o = range_end(o, &req.range, |o, end| o.with_range(end), |o| o.with_from_key());
        if req.prev_kv {
            o = o.with_prev_key();
        }
        if req.progress_notify {
            o = o.with_progress_notify();
        }
        let mut watcher = self.watcher.clone();
        let stream = match watcher.watch(req.range.key.clone(), Some(o)).await {
            Ok(s) => s,
            Err(e) => return Err(self.error("watch", e, req.start_revision, 0).await),
        };
        let requested = req.start_revision;
        // The state keeps the request half alive: dropping it would end the watch.
        let out = futures::stream::unfold(Some(stream), move |state| async move {
            let mut stream = state?;
            loop {
                let resp = match stream.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return None,
                    Err(source) => {
                        return Some((
                            Err(crate::Error::Etcd(Error::Request { op: "watch", source })),
                            None,
                        ));
                    }
                };
                if resp.compact_revision() > 0 {
                    let err = crate::Error::Compacted {
                        requested,
                        compact_revision: resp.compact_revision(),
                    };
                    return Some((Err(err), None));
                }
                if resp.canceled() {
                    let err = Error::Protocol {
                        op: "watch",
                        what: format!("canceled: {}", resp.cancel_reason()),
                    };
                    return Some((Err(crate::Error::Etcd(err)), None));
                }
                if resp.created() && resp.events().is_empty() {
                    continue;
                }
                let header_revision = match header(resp.header(), "watch") {
                    Ok(r) => r,
                    Err(e) => return Some((Err(crate::Error::Etcd(e)), None)),
                };
                let events = resp
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let k = e.kv()?;
                        let kind = match e.event_type() {
                            etcd_client::EventType::Put => EventKind::Put,
                            etcd_client::EventType::Delete => EventKind::Delete,
                        };
                        Some(Event { kind, kv: kv(k), prev_kv: e.prev_kv().map(kv) })
                    })
                    .collect();
                return Some((Ok(WatchResponse { header_revision, events }), Some(stream)));
            }
        });
        Ok(out.boxed())
    }

    async fn compact(&self, revision: Revision) -> crate::Result<()> {
        let mut client = self.client.clone();
        match client.compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error("compact", e, revision, 0).await),
        }
    }

    async fn current_revision(&self) -> crate::Result<Revision> {
        Ok(self.header_revision().await?)
    }

    async fn lease_grant(&self, ttl: i64, id: LeaseId) -> crate::Result<Lease> {
        let mut client = self.client.clone();
        let opts = (id != 0).then(|| etcd_client::LeaseGrantOptions::new().with_id(id));
        match client.lease_grant(ttl, opts).await {
            Ok(r) => Ok(Lease { id: r.id(), ttl: r.ttl() }),
            Err(e) => Err(self.error("lease grant", e, 0, id).await),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> crate::Result<()> {
        let mut client = self.client.clone();
        match client.lease_revoke(id).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error("lease revoke", e, 0, id).await),
        }
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> crate::Result<i64> {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
            Ok(k) => k,
            Err(e) => return Err(self.error("lease keep alive", e, 0, id).await),
        };
        if let Err(e) = keeper.keep_alive().await {
            return Err(self.error("lease keep alive", e, 0, id).await);
        }
        match stream.message().await {
            // etcd answers an unknown lease with ttl 0.
            Ok(Some(r)) if r.ttl() > 0 => Ok(r.ttl()),
            Ok(Some(_)) => Err(crate::Error::LeaseNotFound { id }),
            Ok(None) => Err(crate::Error::Etcd(Error::Protocol {
                op: "lease keep alive",
                what: "stream ended".into(),
            })),
            Err(e) => Err(self.error("lease keep alive", e, 0, id).await),
        }
    }
}
