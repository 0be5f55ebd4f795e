//! The watch cache over the embedded store.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::embedded::{EmbeddedStore, Options as StoreOptions};
use crate::{DeleteRequest, PutRequest};

async fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let opts = StoreOptions {
        progress_interval: Duration::from_millis(50),
        lease_check_interval: None,
        history_window: None,
        ..StoreOptions::default()
    };
    Arc::new(EmbeddedStore::open(dir.path().join("s.redb"), opts).await.expect("open"))
}

/// The cache of `/pods/` in `s`.
async fn pods(s: &Arc<dyn Store>, opts: Options) -> WatchCache {
    WatchCache::start(s.clone(), "/pods/", opts).await.expect("start")
}

/// Options with a window of `capacity` events.
fn window(capacity: usize) -> Options {
    Options { capacity, ..Options::default() }
}

async fn put(s: &Arc<dyn Store>, key: &str, value: &str) -> Revision {
    s.put(PutRequest::new(key, value)).await.expect("put").header_revision
}

async fn next_events(w: &mut WatchStream) -> crate::Result<Vec<Event>> {
    loop {
        let resp = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("response in time")
            .expect("stream open")?;
        if !resp.events.is_empty() {
            return Ok(resp.events);
        }
    }
}

fn values(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_served_from_memory_and_waits_until_fresh_enough() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    put(&s, "/pods/a", "a1").await;
    put(&s, "/other/x", "x").await;
    let opts = Options { freshness_timeout: Duration::from_millis(500), ..Options::default() };
    let cache = pods(&s, opts).await;
    let prefix = KeyRange::prefix("/pods/");
    let (_, kvs) = cache.list(&prefix, 0).await.expect("list");
    assert_eq!(values(&kvs), ["a1"]);

    put(&s, "/pods/b", "b1").await;
    put(&s, "/pods/a", "a2").await;
    let rev = s
        .delete(DeleteRequest::new(KeyRange::key("/pods/b")))
        .await
        .expect("delete")
        .header_revision;
    let (at, kvs) = cache.list(&prefix, rev).await.expect("list");
    assert!(at >= rev);
    assert_eq!(values(&kvs), ["a2"]);
    assert_eq!(kvs[0].version, 2);
    let (_, one) = cache.list(&KeyRange::key("/pods/a"), rev).await.expect("list");
    assert_eq!(values(&one), ["a2"]);

    // Writes elsewhere advance the cache's revision too (through progress notifications).
    let elsewhere = put(&s, "/other/y", "y").await;
    let (at, _) = cache.list(&prefix, elsewhere).await.expect("list");
    assert!(at >= elsewhere);

    match cache.list(&prefix, elsewhere + 100).await {
        Err(Error::NotFresh { requested, .. }) => assert_eq!(requested, elsewhere + 100),
        other => panic!("expected NotFresh, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_inside_the_window_is_served_from_memory_even_after_store_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    let cache = pods(&s, Options::default()).await;
    let r1 = put(&s, "/pods/a", "1").await;
    put(&s, "/pods/a", "2").await;
    let r3 = put(&s, "/pods/b", "3").await;
    cache.list(&KeyRange::prefix("/pods/"), r3).await.expect("cache caught up");
    // The store forgets r1..r3; the cache still has them.
    s.compact(r3).await.expect("compact");
    assert!(matches!(
        s.watch(WatchRequest::new(KeyRange::prefix("/pods/"), r1))
            .await
            .expect("watch")
            .next()
            .await,
        Some(Err(crate::Error::Compacted { .. }))
    ));
    let mut w = cache
        .watch(WatchRequest::new(KeyRange::prefix("/pods/"), r1).with_prev_kv())
        .await
        .expect("watch");
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(next_events(&mut w).await.expect("events"));
    }
    assert_eq!(
        got.iter().map(|e| String::from_utf8_lossy(&e.kv.value).into_owned()).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    assert_eq!(got[1].prev_kv.as_ref().map(|kv| &kv.value[..]), Some(&b"1"[..]));
    // Then live, filtered to the watched range.
    let mut only_b =
        cache.watch(WatchRequest::new(KeyRange::key("/pods/b"), 0)).await.expect("watch");
    put(&s, "/pods/a", "4").await;
    let r = put(&s, "/pods/b", "5").await;
    let live = next_events(&mut w).await.expect("events");
    assert_eq!(live[0].kv.value, &b"4"[..]);
    let b = next_events(&mut only_b).await.expect("events");
    assert_eq!((b.len(), b[0].kv.mod_revision, b[0].prev_kv.is_none()), (1, r, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_older_than_the_window_falls_back_to_the_store_and_then_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    let cache = pods(&s, window(3)).await;
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(put(&s, "/pods/a", &i.to_string()).await);
    }
    cache.list(&KeyRange::prefix("/pods/"), revs[9]).await.expect("cache caught up");
    // revs[0] left the 3-event window: the store serves it.
    let mut w =
        cache.watch(WatchRequest::new(KeyRange::prefix("/pods/"), revs[0])).await.expect("watch");
    let mut got = Vec::new();
    while got.len() < 10 {
        got.extend(next_events(&mut w).await.expect("events"));
    }
    assert_eq!(got.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(), revs);
    // Beyond the store's history too: Compacted, as etcd answers.
    s.compact(revs[5]).await.expect("compact");
    let mut old =
        cache.watch(WatchRequest::new(KeyRange::prefix("/pods/"), revs[1])).await.expect("watch");
    match next_events(&mut old).await {
        Err(crate::Error::Compacted { requested, compact_revision }) => {
            assert_eq!((requested, compact_revision), (revs[1], revs[5]))
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Inside the window still from memory.
    let mut recent =
        cache.watch(WatchRequest::new(KeyRange::prefix("/pods/"), revs[8])).await.expect("watch");
    let got = next_events(&mut recent).await.expect("events");
    assert_eq!(got.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(), &revs[8..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_too_slow_for_the_window_goes_on_from_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    let cache = pods(&s, window(3)).await;
    let mut w = cache.watch(WatchRequest::new(KeyRange::prefix("/pods/"), 0)).await.expect("watch");
    // More updates than the watcher's queue and the live channel hold, none read meanwhile:
    // the watcher lags far past the 3-event window.
    let mut revs = Vec::new();
    for i in 0..1500 {
        revs.push(put(&s, &format!("/pods/p{}", i % 7), &i.to_string()).await);
    }
    let mut got = Vec::new();
    while got.len() < revs.len() {
        got.extend(next_events(&mut w).await.expect("events, not Compacted"));
    }
    assert_eq!(got.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(), revs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_max_age_leave_the_window_and_watches_report_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    let opts = Options { max_age: Some(Duration::from_millis(300)), ..Options::default() };
    let cache = pods(&s, opts).await;
    let start = cache.window_start();
    let r1 = put(&s, "/pods/a", "1").await;
    cache.list(&KeyRange::prefix("/pods/"), r1).await.expect("cache caught up");
    assert_eq!((cache.window_start(), cache.window_len()), (start, 1));

    // A watch of an idle range inside the window starts with a progress notification at the
    // cache's revision (its replay is empty), when it asks for progress.
    let mut idle = cache
        .watch(WatchRequest::new(KeyRange::prefix("/pods/z"), r1).with_progress_notify())
        .await
        .expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(5), idle.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("progress");
    assert!(first.is_progress_notify() && first.header_revision >= r1, "{first:?}");

    // Once older than max_age, the event leaves the window (progress notifications of the
    // store, every 50 ms here, trim it): a watch from r1 now goes to the store.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!((cache.window_start(), cache.window_len()), (r1 + 1, 0));
    let later = put(&s, "/other/x", "x").await;
    s.compact(later).await.expect("compact");
    let mut old =
        cache.watch(WatchRequest::new(KeyRange::prefix("/pods/"), r1)).await.expect("watch");
    assert!(matches!(next_events(&mut old).await, Err(crate::Error::Compacted { .. })));
}
