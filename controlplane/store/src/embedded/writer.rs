//! The single writer: group commit of every mutation into shared redb transactions.
//!
//! Callers send a [`Command`] with a reply channel. The writer takes the first waiting
//! command, then every other one already queued (up to `max_batch`), applies them in order in
//! one write transaction (each mutation that changes something takes the next revision),
//! commits once (one fsync), and only then publishes the events to watchers and answers the
//! callers. A storage failure fails the whole batch; a command's own failure (a missing lease,
//! a compacted revision) is found before it changes anything and fails only that command.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redb::{ReadableTable, Table, WriteTransaction};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::codec::{decode_keys, encode_keys, Record, RecordRef};
use super::read::{self, event};
use super::{Clock, Committed, Error, Shared, CHANGES, CURRENT, HISTORY, LEASES, LEASE_KEYS, META};
use crate::{
    CompareOp, CompareTarget, DeleteResponse, Event, Lease, LeaseId, PutResponse, RangeRequest,
    Revision, TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
};

pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACT: &str = "compact_revision";
pub(crate) const META_NEXT_LEASE: &str = "next_lease_id";

/// A mutation for the writer.
#[derive(Debug)]
pub(crate) enum Command {
    Txn(TxnRequest, oneshot::Sender<crate::Result<TxnResponse>>),
    Compact(Revision, oneshot::Sender<crate::Result<()>>),
    LeaseGrant {
        ttl: i64,
        id: LeaseId,
        reply: oneshot::Sender<crate::Result<Lease>>,
    },
    LeaseRevoke(LeaseId, oneshot::Sender<crate::Result<()>>),
    LeaseKeepAlive(LeaseId, oneshot::Sender<crate::Result<i64>>),
    /// Revoke every lease whose deadline has passed; answers how many.
    ExpireLeases(oneshot::Sender<crate::Result<usize>>),
}

/// A command's answer, held back until the batch is durable.
enum Reply {
    Txn(oneshot::Sender<crate::Result<TxnResponse>>, crate::Result<TxnResponse>),
    Unit(oneshot::Sender<crate::Result<()>>, crate::Result<()>),
    Lease(oneshot::Sender<crate::Result<Lease>>, crate::Result<Lease>),
    Ttl(oneshot::Sender<crate::Result<i64>>, crate::Result<i64>),
    Count(oneshot::Sender<crate::Result<usize>>, crate::Result<usize>),
}

impl Reply {
    fn send(self) {
        // A caller that went away no longer wants its answer; the write stands.
        let _ = match self {
            Reply::Txn(tx, r) => tx.send(r).map_err(drop),
            Reply::Unit(tx, r) => tx.send(r).map_err(drop),
            Reply::Lease(tx, r) => tx.send(r).map_err(drop),
            Reply::Ttl(tx, r) => tx.send(r).map_err(drop),
            Reply::Count(tx, r) => tx.send(r).map_err(drop),
        };
    }

    fn fail(self, err: &Arc<redb::Error>) {
        let e = || crate::Error::Embedded(Error::Batch { source: err.clone() });
        let _ = match self {
            Reply::Txn(tx, _) => tx.send(Err(e())).map_err(drop),
            Reply::Unit(tx, _) => tx.send(Err(e())).map_err(drop),
            Reply::Lease(tx, _) => tx.send(Err(e())).map_err(drop),
            Reply::Ttl(tx, _) => tx.send(Err(e())).map_err(drop),
            Reply::Count(tx, _) => tx.send(Err(e())).map_err(drop),
        };
    }
}

/// The writer thread's body: runs until every sender is gone.
pub(crate) fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<Arc<Committed>>,
) {
    let max_batch = shared.max_batch.max(1);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let n = batch.len();
        match apply_batch(&shared, batch) {
            Ok((replies, committed)) => {
                shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                shared.stats.commands.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(c) = committed {
                    shared.revision.store(c.revision, Ordering::Release);
                    // No receiver is fine: nobody watches.
                    let _ = events.send(Arc::new(c));
                }
                for r in replies {
                    r.send();
                }
            }
            Err((replies, err)) => {
                tracing::error!(error = %err, commands = n, "store write batch failed");
                let err = Arc::new(err);
                for r in replies {
                    r.fail(&err);
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
}

type BatchResult = Result<(Vec<Reply>, Option<Committed>), (Vec<Reply>, redb::Error)>;

fn apply_batch(shared: &Shared, batch: Vec<Command>) -> BatchResult {
    let mut replies = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    let result = (|| -> Result<Revision, redb::Error> {
        let wtx = shared.db.begin_write()?;
        let rev = {
            let mut t = Tables::open(&wtx)?;
            let mut rev = t.meta_get(META_REVISION)?;
            for cmd in batch {
                replies.push(apply(&mut t, cmd, &mut rev, &mut events, shared.clock.as_ref())?);
            }
            t.meta.insert(META_REVISION, rev)?;
            rev
        };
        wtx.commit()?;
        Ok(rev)
    })();
    match result {
        Ok(rev) => {
            let committed = (!events.is_empty()).then_some(Committed { revision: rev, events });
            Ok((replies, committed))
        }
        Err(e) => Err((replies, e)),
    }
}

/// The tables of one write transaction.
pub(crate) struct Tables<'txn> {
    pub meta: Table<'txn, &'static str, i64>,
    pub current: Table<'txn, &'static [u8], &'static [u8]>,
    pub history: Table<'txn, (&'static [u8], i64), &'static [u8]>,
    pub changes: Table<'txn, i64, &'static [u8]>,
    pub leases: Table<'txn, i64, (i64, i64)>,
    pub lease_keys: Table<'txn, (i64, &'static [u8]), ()>,
}

impl<'txn> Tables<'txn> {
    pub fn open(wtx: &'txn WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Tables {
            meta: wtx.open_table(META)?,
            current: wtx.open_table(CURRENT)?,
            history: wtx.open_table(HISTORY)?,
            changes: wtx.open_table(CHANGES)?,
            leases: wtx.open_table(LEASES)?,
            lease_keys: wtx.open_table(LEASE_KEYS)?,
        })
    }

    pub fn meta_get(&self, name: &str) -> Result<i64, redb::Error> {
        Ok(self.meta.get(name)?.map(|g| g.value()).unwrap_or(0))
    }

    fn current_record(&self, key: &[u8]) -> Result<Option<Record>, redb::Error> {
        match self.current.get(key)? {
            Some(v) => Ok(Some(Record::decode(v.value()).map_err(corrupt)?)),
            None => Ok(None),
        }
    }
}

fn corrupt(e: super::codec::CorruptError) -> redb::Error {
    redb::Error::Corrupted(e.to_string())
}

fn embedded_to_redb(e: Error) -> redb::Error {
    match e {
        Error::Storage { source, .. } => source,
        other => redb::Error::Corrupted(other.to_string()),
    }
}

/// Applies one command. `Err` only for storage failures (the batch is lost); the command's
/// own failures go into its reply.
fn apply(
    t: &mut Tables<'_>,
    cmd: Command,
    rev: &mut Revision,
    events: &mut Vec<Event>,
    clock: &dyn Clock,
) -> Result<Reply, redb::Error> {
    Ok(match cmd {
        Command::Txn(req, reply) => {
            let r = apply_txn(t, req, rev, events)?;
            Reply::Txn(reply, r)
        }
        Command::Compact(target, reply) => Reply::Unit(reply, compact(t, target, *rev)?),
        Command::LeaseGrant { ttl, id, reply } => {
            let r = (|| -> Result<crate::Result<Lease>, redb::Error> {
                if ttl <= 0 {
                    return Ok(Err(crate::Error::InvalidRequest {
                        reason: format!("lease ttl {ttl} is not positive"),
                    }));
                }
                let id = if id == 0 {
                    let next = t.meta_get(META_NEXT_LEASE)?.max(1);
                    t.meta.insert(META_NEXT_LEASE, next + 1)?;
                    next
                } else {
                    id
                };
                if id < 0 || t.leases.get(id)?.is_some() {
                    return Ok(Err(crate::Error::InvalidRequest {
                        reason: format!("lease {id} already exists or is negative"),
                    }));
                }
                t.leases.insert(id, (ttl, clock.now_ms() + ttl * 1000))?;
                Ok(Ok(Lease { id, ttl }))
            })()?;
            Reply::Lease(reply, r)
        }
        Command::LeaseKeepAlive(id, reply) => {
            let ttl = t.leases.get(id)?.map(|g| g.value().0);
            let r = match ttl {
                Some(ttl) => {
                    t.leases.insert(id, (ttl, clock.now_ms() + ttl * 1000))?;
                    Ok(ttl)
                }
                None => Err(crate::Error::LeaseNotFound { id }),
            };
            Reply::Ttl(reply, r)
        }
        Command::LeaseRevoke(id, reply) => {
            let r = if t.leases.get(id)?.is_some() {
                revoke(t, id, rev, events)?;
                Ok(())
            } else {
                Err(crate::Error::LeaseNotFound { id })
            };
            Reply::Unit(reply, r)
        }
        Command::ExpireLeases(reply) => {
            let now = clock.now_ms();
            let mut expired = Vec::new();
            for entry in t.leases.iter()? {
                let (id, v) = entry?;
                if v.value().1 <= now {
                    expired.push(id.value());
                }
            }
            for id in &expired {
                tracing::debug!(lease = id, "lease expired");
                revoke(t, *id, rev, events)?;
            }
            Reply::Count(reply, Ok(expired.len()))
        }
    })
}

/// Deletes a lease and its keys (one revision when it had any).
fn revoke(
    t: &mut Tables<'_>,
    id: LeaseId,
    rev: &mut Revision,
    events: &mut Vec<Event>,
) -> Result<(), redb::Error> {
    let mut keys = Vec::new();
    for entry in
        t.lease_keys.range::<(i64, &[u8])>((id, &[][..])..(id.saturating_add(1), &[][..]))?
    {
        let (k, _) = entry?;
        keys.push(k.value().1.to_vec());
    }
    let new_rev = *rev + 1;
    let mut written = Vec::new();
    for key in &keys {
        if let Some(prev) = t.current_record(key)? {
            delete_key(t, key, prev, new_rev, events)?;
            written.push(key.clone());
        }
    }
    t.leases.remove(id)?;
    if !written.is_empty() {
        t.changes.insert(new_rev, encode_keys(&written).as_slice())?;
        *rev = new_rev;
    }
    Ok(())
}

fn delete_key(
    t: &mut Tables<'_>,
    key: &[u8],
    prev: Record,
    rev: Revision,
    events: &mut Vec<Event>,
) -> Result<(), redb::Error> {
    t.current.remove(key)?;
    let tomb = Record::tombstone(rev);
    t.history.insert((key, rev), tomb.encode().as_slice())?;
    if prev.lease != 0 {
        t.lease_keys.remove((prev.lease, key))?;
    }
    events.push(event(key, tomb, Some(prev.into_kv(key))));
    Ok(())
}

fn compare_holds(t: &Tables<'_>, c: &crate::Compare) -> Result<bool, redb::Error> {
    let rec = t.current_record(&c.key)?;
    let ord = match (&c.target, &rec) {
        // etcd: a value compare on a missing key always fails.
        (CompareTarget::Value(_), None) => return Ok(false),
        (CompareTarget::Value(v), Some(r)) => r.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::Version(v), r) => r.as_ref().map_or(0, |r| r.version).cmp(v),
        (CompareTarget::CreateRevision(v), r) => r.as_ref().map_or(0, |r| r.create_revision).cmp(v),
        (CompareTarget::ModRevision(v), r) => r.as_ref().map_or(0, |r| r.mod_revision).cmp(v),
        (CompareTarget::Lease(v), r) => r.as_ref().map_or(0, |r| r.lease).cmp(v),
    };
    Ok(match c.op {
        CompareOp::Equal => ord.is_eq(),
        CompareOp::NotEqual => ord.is_ne(),
        CompareOp::Greater => ord.is_gt(),
        CompareOp::Less => ord.is_lt(),
    })
}

fn apply_txn(
    t: &mut Tables<'_>,
    req: TxnRequest,
    rev: &mut Revision,
    events: &mut Vec<Event>,
) -> Result<crate::Result<TxnResponse>, redb::Error> {
    let mut succeeded = true;
    for c in &req.compare {
        if !compare_holds(t, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { req.success } else { req.failure };
    // Everything that can fail without a storage error is checked before the first change.
    for op in &ops {
        match op {
            TxnOp::Put(p) if p.lease != 0 && t.leases.get(p.lease)?.is_none() => {
                return Ok(Err(crate::Error::LeaseNotFound { id: p.lease }));
            }
            TxnOp::Range(r) if r.revision != 0 => {
                let compact = t.meta_get(META_COMPACT)?;
                if r.revision < compact {
                    return Ok(Err(crate::Error::Compacted {
                        requested: r.revision,
                        compact_revision: compact,
                    }));
                }
                if r.revision > *rev {
                    return Ok(Err(crate::Error::FutureRevision {
                        requested: r.revision,
                        current: *rev,
                    }));
                }
            }
            _ => {}
        }
    }
    let new_rev = *rev + 1;
    let mut written: Vec<Vec<u8>> = Vec::new();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let header = if written.is_empty() { *rev } else { new_rev };
        responses.push(match op {
            TxnOp::Range(r) => {
                let at = if r.revision == 0 { header } else { r.revision };
                let mut resp = read::range(&t.current, &t.history, &r, at, header)
                    .map_err(embedded_to_redb)?;
                resp.header_revision = header;
                TxnOpResponse::Range(resp)
            }
            TxnOp::Put(p) => {
                let prev = t.current_record(&p.key)?;
                let rec = Record {
                    tombstone: false,
                    create_revision: prev.as_ref().map_or(new_rev, |r| r.create_revision),
                    mod_revision: new_rev,
                    version: prev.as_ref().map_or(1, |r| r.version + 1),
                    lease: p.lease,
                    value: p.value,
                };
                let enc = rec.encode();
                t.current.insert(p.key.as_slice(), enc.as_slice())?;
                t.history.insert((p.key.as_slice(), new_rev), enc.as_slice())?;
                if let Some(old) =
                    prev.as_ref().map(|r| r.lease).filter(|l| *l != 0 && *l != p.lease)
                {
                    t.lease_keys.remove((old, p.key.as_slice()))?;
                }
                if p.lease != 0 {
                    t.lease_keys.insert((p.lease, p.key.as_slice()), ())?;
                }
                let prev_kv = prev.map(|r| r.into_kv(&p.key));
                events.push(Event {
                    kind: crate::EventKind::Put,
                    kv: rec.into_kv(&p.key),
                    prev_kv: prev_kv.clone(),
                });
                written.push(p.key);
                TxnOpResponse::Put(PutResponse {
                    header_revision: new_rev,
                    prev_kv: prev_kv.filter(|_| p.prev_kv),
                })
            }
            TxnOp::Delete(d) => {
                let victims = read::range(
                    &t.current,
                    &t.history,
                    &RangeRequest::new(d.range.clone()),
                    new_rev,
                    new_rev,
                )
                .map_err(embedded_to_redb)?
                .kvs;
                let deleted = victims.len() as i64;
                for kv in &victims {
                    delete_key(t, &kv.key, Record::from_kv(kv), new_rev, events)?;
                    written.push(kv.key.clone());
                }
                let header = if written.is_empty() { *rev } else { new_rev };
                TxnOpResponse::Delete(DeleteResponse {
                    header_revision: header,
                    deleted,
                    prev_kvs: if d.prev_kv { victims } else { Vec::new() },
                })
            }
        });
    }
    if !written.is_empty() {
        t.changes.insert(new_rev, encode_keys(&written).as_slice())?;
        *rev = new_rev;
    }
    // Every response carries the revision after the whole transaction, as in etcd.
    for r in &mut responses {
        match r {
            TxnOpResponse::Range(x) => x.header_revision = *rev,
            TxnOpResponse::Put(x) => x.header_revision = *rev,
            TxnOpResponse::Delete(x) => x.header_revision = *rev,
        }
    }
    Ok(Ok(TxnResponse { header_revision: *rev, succeeded, responses }))
}

/// Forgets history before `target`: for every key written before it, keeps only its newest
/// version before `target` (when live, so reads at `target` and previous pairs of later events
/// still work) and drops the older ones and the change lists.
fn compact(
    t: &mut Tables<'_>,
    target: Revision,
    current: Revision,
) -> Result<crate::Result<()>, redb::Error> {
    let compacted = t.meta_get(META_COMPACT)?;
    if target <= compacted {
        return Ok(Err(crate::Error::Compacted { requested: target, compact_revision: compacted }));
    }
    if target > current {
        return Ok(Err(crate::Error::FutureRevision { requested: target, current }));
    }
    let mut keys = BTreeSet::new();
    let mut revs = Vec::new();
    for entry in t.changes.range(..target)? {
        let (rev, list) = entry?;
        revs.push(rev.value());
        keys.extend(decode_keys(list.value()).map_err(corrupt)?);
    }
    let mut dropped = 0usize;
    for key in &keys {
        let mut versions = Vec::new();
        for entry in
            t.history.range::<(&[u8], i64)>((key.as_slice(), i64::MIN)..(key.as_slice(), target))?
        {
            let (k, v) = entry?;
            let tomb = RecordRef::decode(v.value()).map_err(corrupt)?.tombstone;
            versions.push((k.value().1, tomb));
        }
        let keep = versions.last().filter(|(_, tomb)| !tomb).map(|(r, _)| *r);
        for (r, _) in versions {
            if Some(r) != keep {
                t.history.remove((key.as_slice(), r))?;
                dropped += 1;
            }
        }
    }
    for r in &revs {
        t.changes.remove(*r)?;
    }
    t.meta.insert(META_COMPACT, target)?;
    tracing::debug!(
        revision = target,
        keys = keys.len(),
        versions_dropped = dropped,
        "store compacted"
    );
    Ok(Ok(()))
}

/// The first revision's state of a brand-new store.
pub(crate) fn initialise(t: &mut Tables<'_>) -> Result<(), redb::Error> {
    if t.meta.get(META_REVISION)?.is_none() {
        t.meta.insert(META_REVISION, 1)?;
        t.meta.insert(META_COMPACT, 0)?;
        t.meta.insert(META_NEXT_LEASE, 1)?;
    }
    Ok(())
}
