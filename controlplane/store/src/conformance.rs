//! The conformance suite every [`Store`] backend must pass: one set of checks of etcd's
//! semantics, run by plain `cargo test` against the embedded store and by the privileged tests
//! against a real etcd (one member and three).
//!
//! Each check gets the store and a key prefix of its own and asserts only relative revisions,
//! so all of them can share one store (a real etcd is one shared revision space). The checks
//! panic on failure, like test code: this module is test support, built only with the
//! `conformance` feature.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{
    Compare, CompareOp, CompareTarget, DeleteRequest, Error, EventKind, KeyRange, PutRequest,
    RangeRequest, Store, TxnOp, TxnOpResponse, TxnRequest, WatchRequest, WatchResponse,
    WatchStream,
};

/// What the suite needs to know about the backend under test.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a watch may take to send a progress notification when idle (the backend's
    /// progress interval plus slack).
    pub progress_timeout: Duration,
    /// How long to wait for an expected watch event.
    pub event_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { progress_timeout: Duration::from_secs(10), event_timeout: Duration::from_secs(10) }
    }
}

/// One check: its name and body.
pub type Check =
    (&'static str, fn(Arc<dyn Store>, Vec<u8>, Config) -> futures::future::BoxFuture<'static, ()>);

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check of the suite, by name.
        pub fn checks() -> Vec<Check> {
            vec![$((stringify!($name), |s, p, c| Box::pin($name(s, p, c)))),*]
        }
    };
}

checks!(
    put_then_range_reports_revisions_and_versions,
    range_honours_prefix_limit_count_and_keys_only,
    range_at_past_revision_sees_old_state_and_future_revision_fails,
    delete_returns_previous_pairs_and_missing_keys_do_not_bump_revision,
    txn_compare_and_swap_on_mod_revision,
    txn_compares_on_version_create_revision_and_value,
    txn_writes_share_one_revision_and_invalid_txn_changes_nothing,
    watch_from_past_revision_replays_history_then_follows,
    watch_reports_deletes_with_previous_pair_and_ignores_other_keys,
    compaction_makes_old_revisions_fail_with_compacted,
    idle_watch_gets_progress_notifications,
    lease_revoke_deletes_attached_keys,
    unknown_lease_is_an_error,
);

/// Runs every check in turn on `store`, each under `prefix` plus its own name.
pub async fn run_all(store: Arc<dyn Store>, prefix: &str, config: Config) {
    for (name, check) in checks() {
        tracing::info!(check = name, "conformance check");
        let p = format!("{prefix}/{name}/").into_bytes();
        check(store.clone(), p, config.clone()).await;
    }
}

fn k(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

async fn put(s: &Arc<dyn Store>, key: &[u8], value: &str) -> i64 {
    s.put(PutRequest::new(key, value)).await.expect("put").header_revision
}

async fn next_response(w: &mut WatchStream, timeout: Duration) -> crate::Result<WatchResponse> {
    tokio::time::timeout(timeout, w.next())
        .await
        .expect("watch response in time")
        .expect("watch stream still open")
}

/// Collects events (skipping progress notifications) until `n` arrived.
async fn events(w: &mut WatchStream, n: usize, timeout: Duration) -> Vec<crate::Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = next_response(w, timeout).await.expect("watch response");
        for e in &resp.events {
            assert!(
                resp.header_revision >= e.kv.mod_revision,
                "header {} before event {:?}",
                resp.header_revision,
                e
            );
        }
        out.extend(resp.events);
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

async fn put_then_range_reports_revisions_and_versions(s: Arc<dyn Store>, p: Vec<u8>, _: Config) {
    let key = k(&p, "a");
    let r1 = put(&s, &key, "one").await;
    let got = s.range(RangeRequest::new(KeyRange::key(key.clone()))).await.expect("range");
    assert_eq!(got.count, 1);
    assert!(!got.more);
    assert!(got.header_revision >= r1);
    let kv = &got.kvs[0];
    assert_eq!((kv.key.as_slice(), &kv.value[..]), (key.as_slice(), &b"one"[..]));
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version, kv.lease), (r1, r1, 1, 0));

    let resp = s.put(PutRequest::new(key.clone(), "two").with_prev_kv()).await.expect("put");
    let r2 = resp.header_revision;
    assert!(r2 > r1);
    assert_eq!(resp.prev_kv.as_ref().map(|kv| &kv.value[..]), Some(&b"one"[..]));
    let got = s.range(RangeRequest::new(KeyRange::key(key.clone()))).await.expect("range");
    let kv = &got.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r2, 2));
    assert!(s.current_revision().await.expect("revision") >= r2);

    let missing = s.range(RangeRequest::new(KeyRange::key(k(&p, "nope")))).await.expect("range");
    assert_eq!((missing.count, missing.kvs.len()), (0, 0));
}

async fn range_honours_prefix_limit_count_and_keys_only(s: Arc<dyn Store>, p: Vec<u8>, _: Config) {
    for name in ["e", "a", "c", "b", "d"] {
        put(&s, &k(&p, &format!("in/{name}")), name).await;
    }
    put(&s, &k(&p, "in"), "outside").await;
    put(&s, &k(&p, "in0"), "outside").await;
    let prefix = KeyRange::prefix(k(&p, "in/"));

    let all = s.range(RangeRequest::new(prefix.clone())).await.expect("range");
    let keys: Vec<_> =
        all.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key[p.len()..]).into_owned()).collect();
    assert_eq!(keys, ["in/a", "in/b", "in/c", "in/d", "in/e"]);
    assert_eq!((all.count, all.more), (5, false));

    let page = s.range(RangeRequest::new(prefix.clone()).limit(2)).await.expect("range");
    assert_eq!(page.kvs.len(), 2);
    assert_eq!((page.count, page.more), (5, true));
    // The next page starts after the last key, at the same revision (Kubernetes' continue).
    let mut after = page.kvs[1].key.clone();
    after.push(0);
    let rest = s
        .range(
            RangeRequest::new(KeyRange::between(after, prefix.range_end.clone()))
                .at(page.header_revision)
                .limit(10),
        )
        .await
        .expect("range");
    assert_eq!((rest.kvs.len(), rest.count, rest.more), (3, 3, false));

    let count = s.range(RangeRequest::new(prefix.clone()).count_only()).await.expect("range");
    assert_eq!((count.count, count.kvs.len()), (5, 0));

    let keys_only = s.range(RangeRequest::new(prefix.clone()).keys_only()).await.expect("range");
    assert_eq!(keys_only.kvs.len(), 5);
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 1));

    let from = s
        .range(RangeRequest::new(KeyRange::between(k(&p, "in/c"), k(&p, "in/e"))))
        .await
        .expect("range");
    assert_eq!(from.count, 2);
}

async fn range_at_past_revision_sees_old_state_and_future_revision_fails(
    s: Arc<dyn Store>,
    p: Vec<u8>,
    _: Config,
) {
    let (a, b) = (k(&p, "a"), k(&p, "b"));
    let r1 = put(&s, &a, "a1").await;
    let r2 = put(&s, &b, "b1").await;
    let r3 = put(&s, &a, "a2").await;
    let r4 = s
        .delete(DeleteRequest::new(KeyRange::key(b.clone())))
        .await
        .expect("delete")
        .header_revision;
    let prefix = KeyRange::prefix(p.clone());
    let at = |rev| s.range(RangeRequest::new(prefix.clone()).at(rev));
    let values = |r: crate::RangeResponse| r.kvs.into_iter().map(|kv| kv.value).collect::<Vec<_>>();
    assert_eq!(values(at(r1).await.expect("range")), [b"a1".to_vec()]);
    assert_eq!(values(at(r2).await.expect("range")), [b"a1".to_vec(), b"b1".to_vec()]);
    assert_eq!(values(at(r3).await.expect("range")), [b"a2".to_vec(), b"b1".to_vec()]);
    assert_eq!(values(at(r4).await.expect("range")), [b"a2".to_vec()]);
    let old = at(r2).await.expect("range");
    assert_eq!(old.kvs[0].mod_revision, r1);
    assert!(old.header_revision >= r4, "header is the current revision, not the read one");
    assert_eq!(at(r1 - 1).await.expect("range").count, 0);
    // A limited read of the past counts what it leaves out, deletions excepted.
    let page = |rev| s.range(RangeRequest::new(prefix.clone()).at(rev).limit(1));
    let first = page(r3).await.expect("range");
    assert_eq!(
        (values(first.clone()), first.count, first.more),
        (vec![Bytes::from_static(b"a2")], 2, true)
    );
    let last = page(r4).await.expect("range");
    assert_eq!(
        (values(last.clone()), last.count, last.more),
        (vec![Bytes::from_static(b"a2")], 1, false)
    );

    let current = s.current_revision().await.expect("revision");
    match s.range(RangeRequest::new(prefix.clone()).at(current + 1000)).await {
        Err(Error::FutureRevision { requested, .. }) => assert_eq!(requested, current + 1000),
        other => panic!("expected FutureRevision, got {other:?}"),
    }
}

async fn delete_returns_previous_pairs_and_missing_keys_do_not_bump_revision(
    s: Arc<dyn Store>,
    p: Vec<u8>,
    _: Config,
) {
    for name in ["x/1", "x/2", "x/3", "y"] {
        put(&s, &k(&p, name), name).await;
    }
    let del = s
        .delete(DeleteRequest::new(KeyRange::prefix(k(&p, "x/"))).with_prev_kv())
        .await
        .expect("delete");
    assert_eq!(del.deleted, 3);
    let mut vals: Vec<_> = del.prev_kvs.iter().map(|kv| kv.value.clone()).collect();
    vals.sort();
    assert_eq!(vals, [b"x/1".to_vec(), b"x/2".to_vec(), b"x/3".to_vec()]);
    let left = s.range(RangeRequest::new(KeyRange::prefix(p.clone()))).await.expect("range");
    assert_eq!(left.count, 1);

    let before = s.current_revision().await.expect("revision");
    let none = s.delete(DeleteRequest::new(KeyRange::key(k(&p, "absent")))).await.expect("delete");
    assert_eq!(none.deleted, 0);
    assert_eq!(none.header_revision, before);
    assert_eq!(s.current_revision().await.expect("revision"), before);

    // Recreating a deleted key starts a new life: new create revision, version 1.
    let r = put(&s, &k(&p, "x/1"), "again").await;
    let kv =
        s.range(RangeRequest::new(KeyRange::key(k(&p, "x/1")))).await.expect("range").kvs.remove(0);
    assert_eq!((kv.create_revision, kv.version), (r, 1));
}

async fn txn_compare_and_swap_on_mod_revision(s: Arc<dyn Store>, p: Vec<u8>, _: Config) {
    let key = k(&p, "obj");
    let create = |v: &str| {
        TxnRequest::new()
            .when(Compare::absent(key.clone()))
            .then(TxnOp::Put(PutRequest::new(key.clone(), v)))
            .or_else(TxnOp::Range(RangeRequest::new(KeyRange::key(key.clone()))))
    };
    let first = s.txn(create("v1")).await.expect("txn");
    assert!(first.succeeded);
    let rev = first.header_revision;
    let again = s.txn(create("v2")).await.expect("txn");
    assert!(!again.succeeded);
    assert_eq!(again.header_revision, rev, "a failed compare writes nothing");
    match &again.responses[..] {
        [TxnOpResponse::Range(r)] => assert_eq!(r.kvs[0].value, &b"v1"[..]),
        other => panic!("expected one range response, got {other:?}"),
    }

    let update = |expect: i64, v: &str| {
        TxnRequest::new()
            .when(Compare::mod_revision_is(key.clone(), expect))
            .then(TxnOp::Put(PutRequest::new(key.clone(), v).with_prev_kv()))
    };
    let stale = s.txn(update(rev - 1, "stale")).await.expect("txn");
    assert!(!stale.succeeded);
    let ok = s.txn(update(rev, "v2")).await.expect("txn");
    assert!(ok.succeeded);
    match &ok.responses[..] {
        [TxnOpResponse::Put(put)] => {
            assert_eq!(put.prev_kv.as_ref().map(|kv| &kv.value[..]), Some(&b"v1"[..]))
        }
        other => panic!("expected one put response, got {other:?}"),
    }
    let now = s.range(RangeRequest::new(KeyRange::key(key.clone()))).await.expect("range");
    assert_eq!(now.kvs[0].value, &b"v2"[..]);
    assert_eq!(now.kvs[0].mod_revision, ok.header_revision);

    // Guarded delete, as Kubernetes deletes with preconditions.
    let del = TxnRequest::new()
        .when(Compare::mod_revision_is(key.clone(), ok.header_revision))
        .then(TxnOp::Delete(DeleteRequest::new(KeyRange::key(key.clone())).with_prev_kv()));
    let del = s.txn(del).await.expect("txn");
    assert!(del.succeeded);
    match &del.responses[..] {
        [TxnOpResponse::Delete(d)] => {
            assert_eq!((d.deleted, &d.prev_kvs[0].value[..]), (1, &b"v2"[..]))
        }
        other => panic!("expected one delete response, got {other:?}"),
    }
}

async fn txn_compares_on_version_create_revision_and_value(
    s: Arc<dyn Store>,
    p: Vec<u8>,
    _: Config,
) {
    let key = k(&p, "c");
    let r1 = put(&s, &key, "m").await;
    put(&s, &key, "m").await;
    let holds = |c: Compare| {
        let s = s.clone();
        async move { s.txn(TxnRequest::new().when(c)).await.expect("txn").succeeded }
    };
    use CompareOp::*;
    use CompareTarget::*;
    assert!(holds(Compare::new(key.clone(), Equal, Version(2))).await);
    assert!(holds(Compare::new(key.clone(), Greater, Version(1))).await);
    assert!(!holds(Compare::new(key.clone(), Less, Version(2))).await);
    assert!(holds(Compare::new(key.clone(), Equal, CreateRevision(r1))).await);
    assert!(holds(Compare::new(key.clone(), NotEqual, CreateRevision(r1 + 1))).await);
    assert!(holds(Compare::new(key.clone(), Equal, Value(b"m".to_vec()))).await);
    assert!(holds(Compare::new(key.clone(), Greater, Value(b"a".to_vec()))).await);
    assert!(holds(Compare::new(key.clone(), Less, Value(b"z".to_vec()))).await);
    assert!(holds(Compare::new(key.clone(), Equal, Lease(0))).await);
    let missing = k(&p, "missing");
    assert!(holds(Compare::new(missing.clone(), Equal, Version(0))).await);
    assert!(holds(Compare::new(missing.clone(), Equal, CreateRevision(0))).await);
    // etcd: comparing the value of a missing key always fails, even with "not equal".
    assert!(!holds(Compare::new(missing.clone(), NotEqual, Value(b"x".to_vec()))).await);
    assert!(!holds(Compare::new(missing, Equal, Value(Vec::new()))).await);
    // All compares must hold.
    assert!(
        !s.txn(
            TxnRequest::new()
                .when(Compare::new(key.clone(), Equal, Version(2)))
                .when(Compare::new(key.clone(), Equal, Version(3)))
        )
        .await
        .expect("txn")
        .succeeded
    );
}

async fn txn_writes_share_one_revision_and_invalid_txn_changes_nothing(
    s: Arc<dyn Store>,
    p: Vec<u8>,
    _: Config,
) {
    let (a, b, c) = (k(&p, "a"), k(&p, "b"), k(&p, "c"));
    put(&s, &c, "gone soon").await;
    let before = s.current_revision().await.expect("revision");
    let t = TxnRequest::new()
        .then(TxnOp::Put(PutRequest::new(a.clone(), "1")))
        .then(TxnOp::Put(PutRequest::new(b.clone(), "2")))
        .then(TxnOp::Delete(DeleteRequest::new(KeyRange::key(c.clone()))))
        .then(TxnOp::Range(RangeRequest::new(KeyRange::prefix(p.clone()))));
    let resp = s.txn(t).await.expect("txn");
    assert!(resp.succeeded);
    assert_eq!(resp.header_revision, before + 1, "one transaction is one revision");
    match &resp.responses[3] {
        TxnOpResponse::Range(r) => {
            // The range sees the branch's own writes.
            let vals: Vec<_> = r.kvs.iter().map(|kv| kv.value.clone()).collect();
            assert_eq!(vals, [b"1".to_vec(), b"2".to_vec()]);
            assert!(r.kvs.iter().all(|kv| kv.mod_revision == before + 1));
        }
        other => panic!("expected a range response, got {other:?}"),
    }

    let dup = TxnRequest::new()
        .then(TxnOp::Put(PutRequest::new(a.clone(), "x")))
        .then(TxnOp::Put(PutRequest::new(a.clone(), "y")));
    assert!(
        matches!(s.txn(dup).await, Err(Error::InvalidRequest { .. })),
        "duplicate key must be refused"
    );
    let overlap = TxnRequest::new()
        .then(TxnOp::Put(PutRequest::new(b.clone(), "x")))
        .then(TxnOp::Delete(DeleteRequest::new(KeyRange::prefix(p.clone()))));
    assert!(
        matches!(s.txn(overlap).await, Err(Error::InvalidRequest { .. })),
        "put inside a deleted range must be refused"
    );
    assert_eq!(
        s.current_revision().await.expect("revision"),
        before + 1,
        "refused transactions write nothing"
    );
    let a_now = s.range(RangeRequest::new(KeyRange::key(a.clone()))).await.expect("range");
    assert_eq!(a_now.kvs[0].value, &b"1"[..]);
}

async fn watch_from_past_revision_replays_history_then_follows(
    s: Arc<dyn Store>,
    p: Vec<u8>,
    cfg: Config,
) {
    let key = k(&p, "w");
    let r1 = put(&s, &key, "1").await;
    put(&s, &key, "2").await;
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix(p.clone()), r1).with_prev_kv())
        .await
        .expect("watch");
    let got = events(&mut w, 2, cfg.event_timeout).await;
    assert_eq!(got[0].kind, EventKind::Put);
    assert_eq!(got[0].kv.value, &b"1"[..]);
    assert_eq!(got[0].kv.mod_revision, r1);
    assert_eq!(got[0].prev_kv, None);
    assert_eq!(got[1].kv.value, &b"2"[..]);
    assert_eq!(got[1].prev_kv.as_ref().map(|kv| &kv.value[..]), Some(&b"1"[..]));

    let r3 = put(&s, &key, "3").await;
    let live = events(&mut w, 1, cfg.event_timeout).await;
    assert_eq!(
        (&live[0].kv.value[..], live[0].kv.mod_revision, live[0].kv.version),
        (&b"3"[..], r3, 3)
    );
    assert_eq!(live[0].prev_kv.as_ref().map(|kv| &kv.value[..]), Some(&b"2"[..]));

    // A watch from "now" sees only later writes, in order.
    let mut now = s.watch(WatchRequest::new(KeyRange::key(key.clone()), 0)).await.expect("watch");
    let mut revs = Vec::new();
    for v in ["4", "5", "6"] {
        revs.push(put(&s, &key, v).await);
    }
    let got = events(&mut now, 3, cfg.event_timeout).await;
    assert_eq!(got.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(), revs);
    assert!(got.iter().all(|e| e.prev_kv.is_none()), "prev_kv only when asked");
}

async fn watch_reports_deletes_with_previous_pair_and_ignores_other_keys(
    s: Arc<dyn Store>,
    p: Vec<u8>,
    cfg: Config,
) {
    let start = s.current_revision().await.expect("revision") + 1;
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix(k(&p, "in/")), start).with_prev_kv())
        .await
        .expect("watch");
    put(&s, &k(&p, "out"), "x").await;
    put(&s, &k(&p, "in/a"), "a").await;
    put(&s, &k(&p, "in0"), "x").await;
    let del = s
        .delete(DeleteRequest::new(KeyRange::key(k(&p, "in/a"))))
        .await
        .expect("delete")
        .header_revision;
    let got = events(&mut w, 2, cfg.event_timeout).await;
    assert_eq!(got[0].kind, EventKind::Put);
    assert_eq!(got[1].kind, EventKind::Delete);
    assert_eq!(got[1].kv.key, k(&p, "in/a"));
    assert_eq!(got[1].kv.mod_revision, del);
    assert_eq!(got[1].prev_kv.as_ref().map(|kv| &kv.value[..]), Some(&b"a"[..]));
    // Nothing else arrives for the keys outside the prefix.
    put(&s, &k(&p, "in/b"), "b").await;
    let next = events(&mut w, 1, cfg.event_timeout).await;
    assert_eq!(next[0].kv.key, k(&p, "in/b"));
}

async fn compaction_makes_old_revisions_fail_with_compacted(
    s: Arc<dyn Store>,
    p: Vec<u8>,
    cfg: Config,
) {
    let key = k(&p, "k");
    let r1 = put(&s, &key, "1").await;
    let r2 = put(&s, &key, "2").await;
    let r3 = put(&s, &key, "3").await;
    s.compact(r2).await.expect("compact");

    match s.range(RangeRequest::new(KeyRange::key(key.clone())).at(r1)).await {
        Err(Error::Compacted { requested, compact_revision }) => {
            assert_eq!((requested, compact_revision >= r2), (r1, true))
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // The compaction revision itself is still readable, and so is later history.
    let at2 = s.range(RangeRequest::new(KeyRange::key(key.clone())).at(r2)).await.expect("range");
    assert_eq!(at2.kvs[0].value, &b"2"[..]);
    let mut w = s
        .watch(WatchRequest::new(KeyRange::key(key.clone()), r2).with_prev_kv())
        .await
        .expect("watch");
    let got = events(&mut w, 2, cfg.event_timeout).await;
    assert_eq!(got.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(), [r2, r3]);
    assert_eq!(got[1].prev_kv.as_ref().map(|kv| &kv.value[..]), Some(&b"2"[..]));

    let mut old = s.watch(WatchRequest::new(KeyRange::key(key.clone()), r1)).await.expect("watch");
    match next_response(&mut old, cfg.event_timeout).await {
        Err(Error::Compacted { requested, compact_revision }) => {
            assert_eq!((requested, compact_revision >= r2), (r1, true))
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    match s.compact(r1).await {
        Err(Error::Compacted { .. }) => {}
        other => panic!(
            "compacting below the compaction revision must fail with Compacted, got {other:?}"
        ),
    }
    let current = s.current_revision().await.expect("revision");
    assert!(
        matches!(s.compact(current + 1000).await, Err(Error::FutureRevision { .. })),
        "compacting a future revision must fail"
    );
}

async fn idle_watch_gets_progress_notifications(s: Arc<dyn Store>, p: Vec<u8>, cfg: Config) {
    let before = put(&s, &k(&p, "elsewhere"), "x").await;
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix(k(&p, "quiet/")), 0).with_progress_notify())
        .await
        .expect("watch");
    let deadline = tokio::time::Instant::now() + cfg.progress_timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let resp = next_response(&mut w, left).await.expect("watch response");
        assert!(resp.events.is_empty(), "no event expected on the quiet prefix: {resp:?}");
        if resp.header_revision >= before {
            break;
        }
    }
}

async fn lease_revoke_deletes_attached_keys(s: Arc<dyn Store>, p: Vec<u8>, cfg: Config) {
    let lease = s.lease_grant(60, 0).await.expect("grant");
    assert!(lease.id != 0);
    assert!(lease.ttl >= 60);
    let (a, b, c) = (k(&p, "a"), k(&p, "b"), k(&p, "c"));
    s.put(PutRequest::new(a.clone(), "a").with_lease(lease.id)).await.expect("put");
    s.put(PutRequest::new(b.clone(), "b").with_lease(lease.id)).await.expect("put");
    put(&s, &c, "c").await;
    let kv =
        s.range(RangeRequest::new(KeyRange::key(a.clone()))).await.expect("range").kvs.remove(0);
    assert_eq!(kv.lease, lease.id);
    assert!(s.lease_keep_alive(lease.id).await.expect("keep alive") >= 60);

    let start = s.current_revision().await.expect("revision") + 1;
    let mut w =
        s.watch(WatchRequest::new(KeyRange::prefix(p.clone()), start)).await.expect("watch");
    s.lease_revoke(lease.id).await.expect("revoke");
    let got = events(&mut w, 2, cfg.event_timeout).await;
    assert!(got.iter().all(|e| e.kind == EventKind::Delete));
    let left = s.range(RangeRequest::new(KeyRange::prefix(p.clone()))).await.expect("range");
    assert_eq!(left.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), [c]);
    assert!(matches!(s.lease_revoke(lease.id).await, Err(Error::LeaseNotFound { .. })));
}

async fn unknown_lease_is_an_error(s: Arc<dyn Store>, p: Vec<u8>, _: Config) {
    let before = s.current_revision().await.expect("revision");
    let bogus = 0x7eed_5eed_0000_0001;
    match s.put(PutRequest::new(k(&p, "x"), "x").with_lease(bogus)).await {
        Err(Error::LeaseNotFound { id }) => assert_eq!(id, bogus),
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    assert_eq!(
        s.current_revision().await.expect("revision"),
        before,
        "the failed put wrote nothing"
    );
    let ka = s.lease_keep_alive(bogus).await;
    assert!(
        matches!(ka, Err(Error::LeaseNotFound { .. })),
        "keep-alive of an unknown lease: {ka:?}"
    );
}
