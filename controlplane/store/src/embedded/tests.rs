//! The embedded store's own tests: the conformance suite, group commit, bounded disk under
//! churn, schema versioning, lease expiry and the compaction policy.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::conformance;
use crate::{KeyRange, PutRequest, Store};

fn opts() -> Options {
    Options {
        progress_interval: Duration::from_millis(100),
        lease_check_interval: None,
        ..Options::default()
    }
}

async fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path().join("store.redb"), opts()).await.expect("open store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(open(&dir).await);
    let cfg = conformance::Config {
        progress_timeout: Duration::from_secs(5),
        event_timeout: Duration::from_secs(5),
    };
    conformance::run_all(store, "/conformance", cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits_and_each_write_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(&dir).await);
    let before = store.stats().commits();
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.put(PutRequest::new(format!("/k/{i}"), "v")).await })
        })
        .collect();
    let mut revs = Vec::new();
    for w in writers {
        revs.push(w.await.expect("join").expect("put").header_revision);
    }
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), 200, "every write got its own revision");
    let commits = store.stats().commits() - before;
    assert!(commits < 200, "200 concurrent puts took {commits} commits: no group commit");
    let all =
        store.range(RangeRequest::new(KeyRange::prefix("/k/")).count_only()).await.expect("range");
    assert_eq!(all.count, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir).await;
    let rev = store.put(PutRequest::new("/a", "1")).await.expect("put").header_revision;
    store.put(PutRequest::new("/b", "2")).await.expect("put");
    store.close().await;
    let store = open(&dir).await;
    assert_eq!(store.current_revision().await.expect("revision"), rev + 1);
    let got = store.range(RangeRequest::new(KeyRange::prefix("/"))).await.expect("range");
    assert_eq!(
        got.kvs.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(),
        [b"1".to_vec(), b"2".to_vec()]
    );
    let next = store.put(PutRequest::new("/a", "3")).await.expect("put").header_revision;
    assert_eq!(next, rev + 2, "revisions continue after reopen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    EmbeddedStore::open(&path, opts()).await.expect("open").close().await;
    {
        let db = Database::create(&path).expect("open raw");
        let wtx = db.begin_write().expect("write");
        wtx.open_table(META)
            .expect("meta")
            .insert(META_SCHEMA, SCHEMA_VERSION + 1)
            .expect("insert");
        wtx.commit().expect("commit");
    }
    match EmbeddedStore::open(&path, opts()).await {
        Err(Error::SchemaVersion { found }) => assert_eq!(found, SCHEMA_VERSION + 1),
        other => panic!("expected a schema version error, got {other:?}"),
    }
}

/// Rewrites 50 keys 20 times per round (1000 revisions, ~2 MB of history), compacting after
/// each round when asked; returns the file size after each round.
async fn churn(path: std::path::PathBuf, compact: bool) -> Vec<u64> {
    let store = EmbeddedStore::open(path, opts()).await.expect("open");
    let value = vec![b'x'; 2048];
    let mut sizes = Vec::new();
    for _round in 0..8 {
        for _ in 0..20 {
            let puts: Vec<_> = (0..50)
                .map(|i| store.put(PutRequest::new(format!("/churn/{i}"), value.clone())))
                .collect();
            for r in futures::future::join_all(puts).await {
                r.expect("put");
            }
        }
        if compact {
            let rev = store.current_revision().await.expect("revision");
            store.compact(rev).await.expect("compact");
        }
        sizes.push(std::fs::metadata(store.path()).expect("stat").len());
    }
    let live = store.range(RangeRequest::new(KeyRange::prefix("/churn/"))).await.expect("range");
    assert_eq!(live.count, 50);
    assert!(live.kvs.iter().all(|kv| kv.version == 160));
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_with_compaction_keeps_the_file_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = churn(dir.path().join("compacted.redb"), true).await;
    let grown = churn(dir.path().join("uncompacted.redb"), false).await;
    eprintln!("file sizes per round: compacted {kept:?}, uncompacted {grown:?}");
    // Without compaction the same churn keeps growing the file (the control)...
    assert!(grown[7] > grown[2] * 2, "control did not grow: {grown:?}");
    // ...with it, the file stops growing after warming up: freed pages are reused.
    assert!(
        kept[7] <= kept[2] + kept[2] / 4,
        "file kept growing under churn with compaction: {kept:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_delete_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store =
        EmbeddedStore::open(dir.path().join("s.redb"), Options { clock: clock.clone(), ..opts() })
            .await
            .expect("open");
    let short = store.lease_grant(10, 0).await.expect("grant");
    let long = store.lease_grant(3600, 0).await.expect("grant");
    store.put(PutRequest::new("/events/a", "a").with_lease(short.id)).await.expect("put");
    store.put(PutRequest::new("/events/b", "b").with_lease(long.id)).await.expect("put");
    clock.advance(Duration::from_secs(9));
    assert_eq!(store.expire_leases().await.expect("expire"), 0);
    store.lease_keep_alive(short.id).await.expect("keep alive");
    clock.advance(Duration::from_secs(9));
    assert_eq!(store.expire_leases().await.expect("expire"), 0, "keep-alive renewed the lease");
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.expire_leases().await.expect("expire"), 1);
    let left = store.range(RangeRequest::new(KeyRange::prefix("/events/"))).await.expect("range");
    assert_eq!(
        left.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        [b"/events/b".to_vec()]
    );
    assert!(matches!(
        store.lease_keep_alive(short.id).await,
        Err(crate::Error::LeaseNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_catches_up_without_losing_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir).await;
    let mut w =
        store.watch(crate::WatchRequest::new(KeyRange::prefix("/lag/"), 0)).await.expect("watch");
    // Far more batches than the broadcast holds, while the watcher reads nothing.
    let n = 3000;
    for i in 0..n {
        store.put(PutRequest::new(format!("/lag/{}", i % 7), i.to_string())).await.expect("put");
    }
    let mut seen = 0;
    let mut last = 0;
    while seen < n {
        let resp = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut w))
            .await
            .expect("in time")
            .expect("open")
            .expect("response");
        for e in resp.events {
            assert!(e.kv.mod_revision > last, "events out of order or repeated");
            last = e.kv.mod_revision;
            assert_eq!(e.kv.value, seen.to_string().into_bytes());
            seen += 1;
        }
    }
}

#[test]
fn compaction_policy_keeps_the_window() {
    let t0 = Instant::now();
    let mut p = CompactionPolicy::new(Duration::from_secs(300));
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert_eq!(p.observe(at(0), 10), None);
    assert_eq!(p.observe(at(60), 20), None);
    assert_eq!(p.observe(at(299), 30), None);
    // 300 s after the first sample: compact to what the store was then.
    assert_eq!(p.observe(at(300), 40), Some(10));
    assert_eq!(p.observe(at(301), 40), None);
    // Several samples aged out at once: the newest of them.
    assert_eq!(p.observe(at(700), 50), Some(40));
    // The store was at 50 at 700 s: that ages out at 1000 s.
    assert_eq!(p.observe(at(999), 50), None);
    assert_eq!(p.observe(at(1001), 50), Some(50));
    // No writes since: nothing more to do.
    assert_eq!(p.observe(at(1400), 50), None);
    assert_eq!(p.observe(at(2000), 50), None);
}

#[tokio::test]
async fn a_snapshot_taken_during_writes_is_a_consistent_store_that_reopens() {
    use crate::{KeyRange, PutRequest, RangeRequest, Store};
    let dir = tempfile::tempdir().expect("snapshot test");
    let store = std::sync::Arc::new(
        EmbeddedStore::open(dir.path().join("db"), Options::default())
            .await
            .expect("snapshot test"),
    );
    for i in 0..50 {
        store
            .put(PutRequest::new(format!("/k/{i:03}"), vec![b'x'; 100]))
            .await
            .expect("snapshot test");
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 50..200 {
                store
                    .put(PutRequest::new(format!("/k/{i:03}"), vec![b'y'; 100]))
                    .await
                    .expect("snapshot test");
            }
        })
    };
    let snap = dir.path().join("snap");
    let revision = store.snapshot(&snap).await.expect("snapshot test");
    writer.await.expect("snapshot test");
    assert!(
        matches!(store.snapshot(&snap).await, Err(Error::SnapshotExists { .. })),
        "never overwrites"
    );
    assert_eq!(verify(&snap).expect("snapshot test"), revision);
    let copy = EmbeddedStore::open(&snap, Options::default()).await.expect("snapshot test");
    let all = copy.range(RangeRequest::new(KeyRange::prefix("/k/"))).await.expect("snapshot test");
    // Exactly the keys written up to the snapshot's revision (revision 1 is the empty store).
    assert_eq!(all.kvs.len() as i64, revision - 1);
    assert_eq!(all.header_revision, revision);
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a database").expect("snapshot test");
    assert!(verify(&junk).is_err());
}
