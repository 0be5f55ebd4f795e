//! Watches and selected lists over the embedded store in a temp dir.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Extension;
use futures::StreamExt;
use keelson_store::embedded::{EmbeddedStore, Options as StoreOptions};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::objects::Preconditions;
use crate::registry;
use crate::server::{router, ApiState, Authenticated};

struct Fixture {
    _dir: tempfile::TempDir,
    objects: Objects,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        progress_interval: Duration::from_millis(50),
        lease_check_interval: None,
        history_window: None,
        ..StoreOptions::default()
    };
    let store = EmbeddedStore::open(dir.path().join("s.redb"), opts).await.unwrap();
    let objects = Objects::new(Arc::new(store));
    Fixture { _dir: dir, objects }
}

fn cms() -> &'static Resource {
    registry::find("", "v1", "configmaps").unwrap()
}

fn cm(name: &str, labels: Value, data: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels}, "data": {"v": data}})
}

fn rv(obj: &Value) -> Revision {
    obj["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

async fn create(o: &Objects, name: &str, labels: Value, data: &str) -> Value {
    o.create(cms(), Some("default"), cm(name, labels, data), false).await.unwrap()
}

async fn update(o: &Objects, name: &str, labels: Value, data: &str) -> Value {
    o.update(cms(), Some("default"), name, cm(name, labels, data), false).await.unwrap()
}

fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The watch's lines, as they arrive.
struct Lines {
    body: axum::body::BodyDataStream,
    pending: Vec<u8>,
}

impl Lines {
    fn new(response: Response) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        Lines { body: response.into_body().into_data_stream(), pending: Vec::new() }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("a watch event in time");
            match chunk {
                Some(c) => self.pending.extend_from_slice(&c.unwrap()),
                None => return None,
            }
        }
    }

    /// The next event that is not a bookmark.
    async fn event(&mut self) -> Value {
        loop {
            let e = self.next().await.expect("stream open");
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

async fn watch(o: &Objects, q: &[(&str, &str)]) -> Lines {
    Lines::new(
        serve(o, cms(), Some("default".into()), &query(q), Representation::Json).await.unwrap(),
    )
}

fn summary(e: &Value) -> (String, String, String) {
    (
        e["type"].as_str().unwrap_or_default().to_owned(),
        e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        e["object"]["data"]["v"].as_str().unwrap_or_default().to_owned(),
    )
}

fn s(t: &str, n: &str, v: &str) -> (String, String, String) {
    (t.to_owned(), n.to_owned(), v.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_resource_version_sends_the_state_as_added_then_every_change() {
    let f = fixture().await;
    create(&f.objects, "a", json!({}), "1").await;
    create(&f.objects, "b", json!({}), "1").await;
    let mut w = watch(&f.objects, &[("watch", "true")]).await;
    assert_eq!(summary(&w.event().await), s("ADDED", "a", "1"));
    assert_eq!(summary(&w.event().await), s("ADDED", "b", "1"));
    let a2 = update(&f.objects, "a", json!({}), "2").await;
    let e = w.event().await;
    assert_eq!(summary(&e), s("MODIFIED", "a", "2"));
    assert_eq!(rv(&e["object"]), rv(&a2));
    assert_eq!(
        (&e["object"]["kind"], &e["object"]["apiVersion"]),
        (&json!("ConfigMap"), &json!("v1"))
    );
    // DELETED carries the last state with the deletion's resourceVersion.
    let before = f.objects.store().current_revision().await.unwrap();
    f.objects.delete(cms(), Some("default"), "b", &Preconditions::default(), false).await.unwrap();
    let e = w.event().await;
    assert_eq!(summary(&e), s("DELETED", "b", "1"));
    assert_eq!(rv(&e["object"]), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_resource_version_sends_only_later_changes() {
    let f = fixture().await;
    let a1 = create(&f.objects, "a", json!({}), "1").await;
    update(&f.objects, "a", json!({}), "2").await;
    let v = rv(&a1).to_string();
    let mut w = watch(&f.objects, &[("watch", "1"), ("resourceVersion", &v)]).await;
    assert_eq!(summary(&w.event().await), s("MODIFIED", "a", "2"));
    create(&f.objects, "c", json!({}), "1").await;
    assert_eq!(summary(&w.event().await), s("ADDED", "c", "1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_watch_sees_objects_enter_and_leave_the_selection() {
    let f = fixture().await;
    let mut w = watch(&f.objects, &[("watch", "true"), ("labelSelector", "app=web")]).await;
    create(&f.objects, "a", json!({"app": "db"}), "1").await;
    update(&f.objects, "a", json!({"app": "web"}), "2").await;
    assert_eq!(summary(&w.event().await), s("ADDED", "a", "2"));
    update(&f.objects, "a", json!({"app": "web"}), "3").await;
    assert_eq!(summary(&w.event().await), s("MODIFIED", "a", "3"));
    let gone = update(&f.objects, "a", json!({"app": "db"}), "4").await;
    // Leaving the selection: DELETED with the previous state and the change's version.
    let e = w.event().await;
    assert_eq!(summary(&e), s("DELETED", "a", "3"));
    assert_eq!(rv(&e["object"]), rv(&gone));
    // Changes outside the selection are not sent; the next one inside is.
    update(&f.objects, "a", json!({"app": "db"}), "5").await;
    create(&f.objects, "b", json!({"app": "web"}), "1").await;
    assert_eq!(summary(&w.event().await), s("ADDED", "b", "1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_pinned_by_metadata_name_sees_only_that_object() {
    let f = fixture().await;
    create(&f.objects, "a", json!({}), "1").await;
    create(&f.objects, "b", json!({}), "1").await;
    let mut w = watch(&f.objects, &[("watch", "true"), ("fieldSelector", "metadata.name=b")]).await;
    assert_eq!(summary(&w.event().await), s("ADDED", "b", "1"));
    update(&f.objects, "a", json!({}), "2").await;
    update(&f.objects, "b", json!({}), "2").await;
    assert_eq!(summary(&w.event().await), s("MODIFIED", "b", "2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_events_end_with_an_annotated_bookmark_and_bookmarks_carry_only_the_version() {
    let f = fixture().await;
    f.objects.caches().set_bookmark_interval(Duration::from_millis(300));
    let a = create(&f.objects, "a", json!({}), "1").await;
    let v = rv(&a).to_string();
    let mut w = watch(
        &f.objects,
        &[
            ("watch", "true"),
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", &v),
        ],
    )
    .await;
    assert_eq!(summary(&w.next().await.unwrap()), s("ADDED", "a", "1"));
    let end = w.next().await.unwrap();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    assert!(rv(&end["object"]) >= rv(&a));
    // Writes elsewhere move the store on; a bookmark tells the client so, and holds nothing
    // but kind, apiVersion and the resourceVersion.
    let other = registry::find("", "v1", "secrets").unwrap();
    let secret = json!({"metadata": {"name": "s"}});
    let moved = f.objects.create(other, Some("default"), secret, false).await.unwrap();
    loop {
        let e = w.next().await.unwrap();
        assert_eq!(e["type"], "BOOKMARK", "{e}");
        if rv(&e["object"]) >= rv(&moved) {
            assert_eq!(
                e["object"],
                json!({"kind": "ConfigMap", "apiVersion": "v1",
                    "metadata": {"resourceVersion": rv(&moved).to_string()}})
            );
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_its_revision_gets_a_bookmark_right_away() {
    let f = fixture().await;
    let a = create(&f.objects, "a", json!({}), "1").await;
    let other = registry::find("", "v1", "secrets").unwrap();
    let moved = f
        .objects
        .create(other, Some("default"), json!({"metadata": {"name": "s"}}), false)
        .await
        .unwrap();
    let v = rv(&a).to_string();
    let mut w = watch(
        &f.objects,
        &[("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", &v)],
    )
    .await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "BOOKMARK");
    assert!(rv(&e["object"]) >= rv(&moved), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_ends_with_an_expired_error_event() {
    let f = fixture().await;
    let a = create(&f.objects, "a", json!({}), "1").await;
    update(&f.objects, "a", json!({}), "2").await;
    let last = update(&f.objects, "a", json!({}), "3").await;
    f.objects.store().compact(rv(&last)).await.unwrap();
    let v = rv(&a).to_string();
    let mut w = watch(&f.objects, &[("watch", "true"), ("resourceVersion", &v)]).await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(
        (&e["object"]["kind"], &e["object"]["code"], &e["object"]["reason"]),
        (&json!("Status"), &json!(410), &json!("Expired"))
    );
    assert!(e["object"]["message"].as_str().unwrap().starts_with("too old resource version"));
    assert!(w.next().await.is_none(), "the stream ends after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_seconds_ends_the_stream_cleanly() {
    let f = fixture().await;
    create(&f.objects, "a", json!({}), "1").await;
    let started = std::time::Instant::now();
    let mut w = watch(&f.objects, &[("watch", "true"), ("timeoutSeconds", "1")]).await;
    assert_eq!(summary(&w.next().await.unwrap()), s("ADDED", "a", "1"));
    assert!(w.next().await.is_none());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_options_and_selectors_are_refused_with_status_errors() {
    let f = fixture().await;
    for (q, code, words) in [
        (
            vec![("watch", "true"), ("sendInitialEvents", "true"), ("allowWatchBookmarks", "true")],
            422,
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ),
        (
            vec![
                ("watch", "true"),
                ("resourceVersion", "1"),
                ("resourceVersionMatch", "NotOlderThan"),
            ],
            422,
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ),
        (
            vec![
                ("watch", "true"),
                ("sendInitialEvents", "true"),
                ("resourceVersionMatch", "NotOlderThan"),
            ],
            422,
            "sendInitialEvents requires setting allowWatchBookmarks to true",
        ),
        (vec![("watch", "true"), ("labelSelector", "a b")], 400, "unable to parse requirement"),
        (
            vec![("watch", "true"), ("fieldSelector", "spec.x=1")],
            400,
            "is not a known field selector",
        ),
        (vec![("watch", "true"), ("resourceVersion", "x")], 400, "invalid resource version"),
        (vec![("watch", "true"), ("timeoutSeconds", "-1")], 400, "invalid timeoutSeconds"),
    ] {
        let e = serve(&f.objects, cms(), Some("default".into()), &query(&q), Representation::Json)
            .await
            .unwrap_err();
        assert_eq!(e.code, code, "{q:?}: {e:?}");
        assert!(e.message.contains(words), "{q:?}: {}", e.message);
    }
    let pods = registry::find("", "v1", "pods").unwrap();
    let q = query(&[("watch", "true"), ("fieldSelector", "spec.foo=x")]);
    let e = serve(&f.objects, pods, None, &q, Representation::Json).await.unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (400, "field label not supported: spec.foo"));
}

fn names(page: &ListPage) -> Vec<String> {
    page.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_from_the_cache_are_consistent_and_selected() {
    let f = fixture().await;
    let sel = |l: &str, fl: &str| Selectors::parse(Some(l), Some(fl), cms()).unwrap();
    // The cache starts on the first list; a write right after is in the next list, which is
    // a consistent read.
    let page = list(&f.objects, cms(), Some("default"), &ListOptions::default(), &sel("", ""))
        .await
        .unwrap();
    assert!(page.items.is_empty());
    create(&f.objects, "a", json!({"app": "web"}), "1").await;
    let b = create(&f.objects, "b", json!({"app": "db"}), "1").await;
    let page = list(&f.objects, cms(), Some("default"), &ListOptions::default(), &sel("", ""))
        .await
        .unwrap();
    assert_eq!(names(&page), ["a", "b"]);
    assert!(page.resource_version >= rv(&b));
    let page = list(&f.objects, cms(), None, &ListOptions::default(), &sel("app in (web)", ""))
        .await
        .unwrap();
    assert_eq!(names(&page), ["a"]);
    let page = list(&f.objects, cms(), None, &ListOptions::default(), &sel("", "metadata.name!=a"))
        .await
        .unwrap();
    assert_eq!(names(&page), ["b"]);
    // resourceVersion=0 ignores the limit, as upstream's cache.
    let any = ListOptions { limit: 1, at: ReadAt::Any, ..ListOptions::default() };
    let page = list(&f.objects, cms(), None, &any, &sel("", "")).await.unwrap();
    assert_eq!((names(&page).len(), page.continue_token.is_none()), (2, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_paged_lists_return_every_match_exactly_once() {
    let f = fixture().await;
    for i in 0..40 {
        let app = if i % 3 == 0 { "web" } else { "db" };
        create(&f.objects, &format!("cm{i:02}"), json!({ "app": app }), "1").await;
    }
    let sel = Selectors::parse(Some("app=web"), None, cms()).unwrap();
    let mut opts = ListOptions { limit: 4, ..ListOptions::default() };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = list(&f.objects, cms(), Some("default"), &opts, &sel).await.unwrap();
        assert!(page.items.len() <= 4);
        assert!(page.remaining.is_none());
        seen.extend(names(&page));
        pages += 1;
        match page.continue_token {
            Some(t) => opts.continue_token = Some(t),
            None => break,
        }
    }
    let want: Vec<String> = (0..40).filter(|i| i % 3 == 0).map(|i| format!("cm{i:02}")).collect();
    assert_eq!(seen, want);
    assert!(pages >= 4, "{pages} pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_watch_true_and_the_legacy_watch_paths() {
    let f = fixture().await;
    create(&f.objects, "a", json!({}), "1").await;
    create(&f.objects, "b", json!({}), "1").await;
    let state = Arc::new(ApiState::new("127.0.0.1:6443".into()).with_objects(f.objects.clone()));
    let admin = Authenticated(Some(crate::pki::UserInfo {
        name: crate::pki::ADMIN_USER.into(),
        groups: vec![crate::pki::ADMIN_GROUP.into()],
    }));
    let get = |uri: &str| {
        let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
        router(state.clone()).layer(Extension(admin.clone())).oneshot(request)
    };
    let mut w = Lines::new(get("/api/v1/namespaces/default/configmaps?watch=1").await.unwrap());
    assert_eq!(summary(&w.event().await), s("ADDED", "a", "1"));
    let mut one = Lines::new(get("/api/v1/watch/namespaces/default/configmaps/b").await.unwrap());
    assert_eq!(summary(&one.event().await), s("ADDED", "b", "1"));
    update(&f.objects, "a", json!({}), "2").await;
    update(&f.objects, "b", json!({}), "2").await;
    assert_eq!(summary(&one.event().await), s("MODIFIED", "b", "2"));
    let mut all = Lines::new(get("/api/v1/watch/configmaps").await.unwrap());
    let mut got = vec![summary(&all.event().await), summary(&all.event().await)];
    got.sort();
    assert_eq!(got, [s("ADDED", "a", "2"), s("ADDED", "b", "2")]);
    // Selected lists through the router; a parse error is a 400 Status.
    let response = get("/api/v1/configmaps?fieldSelector=metadata.name%3Db").await.unwrap();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let response = get("/api/v1/configmaps?labelSelector=a%20b").await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn kubectl_get_w_gets_one_row_tables_with_columns_once() {
    let f = fixture().await;
    create(&f.objects, "a", json!({}), "1").await;
    let response = serve(
        &f.objects,
        cms(),
        Some("default".into()),
        &query(&[("watch", "true")]),
        Representation::Table("v1"),
    )
    .await
    .unwrap();
    let mut lines = Lines::new(response);
    let first = lines.next().await.unwrap();
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["kind"], "Table");
    assert_eq!(first["object"]["columnDefinitions"][1]["name"], "Data");
    assert_eq!(first["object"]["rows"][0]["cells"][0], "a");
    assert_eq!(first["object"]["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    update(&f.objects, "a", json!({}), "2").await;
    let second = lines.next().await.unwrap();
    assert_eq!(second["type"], "MODIFIED");
    assert_eq!(second["object"]["columnDefinitions"], json!([]), "columns come once");
    assert_eq!(second["object"]["rows"][0]["cells"][1], 1);
}
