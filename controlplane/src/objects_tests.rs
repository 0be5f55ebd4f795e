#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use keelson_store::embedded::{EmbeddedStore, Options};

use super::*;
use crate::registry;

struct H {
    objects: Objects,
    store: Arc<EmbeddedStore>,
    _dir: tempfile::TempDir,
}

async fn h() -> H {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { history_window: None, ..Options::default() };
    let store = Arc::new(EmbeddedStore::open(dir.path().join("db"), opts).await.unwrap());
    H { objects: Objects::new(store.clone()), store, _dir: dir }
}

fn pods() -> &'static Resource {
    registry::find("", "v1", "pods").unwrap()
}

fn deployments() -> &'static Resource {
    registry::find("apps", "v1", "deployments").unwrap()
}

fn nodes() -> &'static Resource {
    registry::find("", "v1", "nodes").unwrap()
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

fn rv(o: &Value) -> Revision {
    o["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

#[test]
fn keys_follow_upstreams_layout() {
    assert_eq!(prefix(pods(), Some("default")), "/registry/pods/default/");
    assert_eq!(prefix(pods(), None), "/registry/pods/");
    assert_eq!(prefix(deployments(), Some("a")), "/registry/apps/deployments/a/");
    assert_eq!(prefix(nodes(), Some("ignored")), "/registry/nodes/");
}

#[tokio::test]
async fn create_assigns_identity_and_a_second_create_is_already_exists() {
    let h = h().await;
    let o = h.objects.create(pods(), Some("default"), pod("web"), false).await.unwrap();
    let m = &o["metadata"];
    assert_eq!(m["namespace"], "default");
    assert_eq!(m["generation"], 1);
    let uid = m["uid"].as_str().unwrap();
    assert_eq!(uid.len(), 36);
    assert_eq!(&uid[14..15], "4", "a version 4 uid: {uid}");
    assert!(m["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rv(&o), h.store.current_revision().await.unwrap());

    let e = h.objects.create(pods(), Some("default"), pod("web"), false).await.unwrap_err();
    assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
    assert_eq!(e.message, "pods \"web\" already exists");
    assert_eq!(e.status()["details"], json!({"name": "web", "kind": "pods"}));

    let got = h.objects.get(pods(), Some("default"), "web").await.unwrap();
    assert_eq!(got, o);
    let e = h.objects.get(pods(), Some("other"), "web").await.unwrap_err();
    assert_eq!((e.code, e.reason), (404, "NotFound"));
}

#[tokio::test]
async fn generate_name_and_dry_run() {
    let h = h().await;
    let mut p = pod("");
    p["metadata"] = json!({"generateName": "web-"});
    let o = h.objects.create(pods(), Some("default"), p, false).await.unwrap();
    let name = o["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");

    let before = h.store.current_revision().await.unwrap();
    let dry = h.objects.create(pods(), Some("default"), pod("dry"), true).await.unwrap();
    assert_eq!(dry["metadata"]["name"], "dry");
    assert_eq!(h.store.current_revision().await.unwrap(), before, "a dry run writes nothing");
    assert_eq!(h.objects.get(pods(), Some("default"), "dry").await.unwrap_err().code, 404);

    let e = h
        .objects
        .create(pods(), Some("default"), json!({"metadata": {}}), false)
        .await
        .unwrap_err();
    assert_eq!((e.code, e.reason), (422, "Invalid"));
    assert!(e.message.contains("metadata.name"), "{}", e.message);
    let mut other_ns = pod("x");
    other_ns["metadata"]["namespace"] = json!("kube-system");
    assert_eq!(
        h.objects.create(pods(), Some("default"), other_ns, false).await.unwrap_err().code,
        400
    );
}

#[tokio::test]
async fn update_is_optimistic_and_counts_generations_of_the_spec_only() {
    let h = h().await;
    let o = h
        .objects
        .create(
            deployments(),
            Some("a"),
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}}),
            false,
        )
        .await
        .unwrap();
    let mut next = o.clone();
    next["spec"]["replicas"] = json!(3);
    next["metadata"]["uid"] = json!("forged");
    let u = h.objects.update(deployments(), Some("a"), "d", next, false).await.unwrap();
    assert_eq!(u["metadata"]["generation"], 2);
    assert_eq!(u["metadata"]["uid"], o["metadata"]["uid"], "identity is kept");
    assert!(rv(&u) > rv(&o));

    // The stale version loses.
    let mut stale = o.clone();
    stale["spec"]["replicas"] = json!(5);
    let e = h.objects.update(deployments(), Some("a"), "d", stale, false).await.unwrap_err();
    assert_eq!((e.code, e.reason), (409, "Conflict"));
    assert!(e.message.contains("the object has been modified"), "{}", e.message);

    // A status-only change keeps the generation; without a resourceVersion it is unconditional.
    let mut status = u.clone();
    status["status"] = json!({"readyReplicas": 3});
    status["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let s = h.objects.update(deployments(), Some("a"), "d", status, false).await.unwrap();
    assert_eq!(s["metadata"]["generation"], 2);
    assert_eq!(s["status"]["readyReplicas"], 3);

    let e =
        h.objects.update(deployments(), Some("a"), "nope", pod("nope"), false).await.unwrap_err();
    assert_eq!(e.code, 404);
    let e = h.objects.update(deployments(), Some("a"), "d", pod("other"), false).await.unwrap_err();
    assert_eq!(e.code, 400);
}

#[tokio::test]
async fn delete_honours_preconditions_and_finalizers() {
    let h = h().await;
    let o = h.objects.create(pods(), Some("default"), pod("web"), false).await.unwrap();
    let wrong_uid = Preconditions { uid: Some("x".into()), resource_version: None };
    let e = h.objects.delete(pods(), Some("default"), "web", &wrong_uid, false).await.unwrap_err();
    assert_eq!(e.code, 409);
    assert!(e.message.contains("Precondition failed: UID"), "{}", e.message);
    let wrong_rv = Preconditions { uid: None, resource_version: Some(rv(&o) + 100) };
    assert_eq!(
        h.objects.delete(pods(), Some("default"), "web", &wrong_rv, false).await.unwrap_err().code,
        409
    );

    let dry = h
        .objects
        .delete(pods(), Some("default"), "web", &Preconditions::default(), true)
        .await
        .unwrap();
    assert!(matches!(dry, Deleted::Gone(_)));
    assert!(
        h.objects.get(pods(), Some("default"), "web").await.is_ok(),
        "a dry run deletes nothing"
    );

    let right = Preconditions {
        uid: o["metadata"]["uid"].as_str().map(str::to_owned),
        resource_version: Some(rv(&o)),
    };
    assert!(matches!(
        h.objects.delete(pods(), Some("default"), "web", &right, false).await.unwrap(),
        Deleted::Gone(_)
    ));
    assert_eq!(h.objects.get(pods(), Some("default"), "web").await.unwrap_err().code, 404);

    let mut fin = pod("held");
    fin["metadata"]["finalizers"] = json!(["example.com/hold"]);
    h.objects.create(pods(), Some("default"), fin, false).await.unwrap();
    let Deleted::Pending(p) = h
        .objects
        .delete(pods(), Some("default"), "held", &Preconditions::default(), false)
        .await
        .unwrap()
    else {
        panic!("an object with finalizers is only marked");
    };
    assert!(p["metadata"]["deletionTimestamp"].is_string());
    let got = h.objects.get(pods(), Some("default"), "held").await.unwrap();
    assert_eq!(got["metadata"]["deletionTimestamp"], p["metadata"]["deletionTimestamp"]);
}

#[tokio::test]
async fn lists_page_at_one_revision_with_continue_tokens() {
    let h = h().await;
    for i in 0..7 {
        h.objects.create(pods(), Some("a"), pod(&format!("p{i}")), false).await.unwrap();
    }
    h.objects.create(pods(), Some("b"), pod("other"), false).await.unwrap();
    let all = h.objects.list(pods(), None, &ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 8);
    assert_eq!(all.continue_token, None);

    let first = h
        .objects
        .list(pods(), Some("a"), &ListOptions { limit: 3, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.remaining, Some(4));
    // A write between pages does not show: every page is read at the first one's revision.
    h.objects.create(pods(), Some("a"), pod("p9"), false).await.unwrap();
    let mut names: Vec<String> =
        first.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    let mut token = first.continue_token.clone();
    while let Some(t) = token {
        let page = h
            .objects
            .list(
                pods(),
                Some("a"),
                &ListOptions { limit: 3, continue_token: Some(t), ..Default::default() },
            )
            .await
            .unwrap();
        assert_eq!(page.resource_version, first.resource_version);
        names.extend(page.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_owned()));
        token = page.continue_token;
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]);

    let e = h
        .objects
        .list(
            pods(),
            Some("a"),
            &ListOptions { continue_token: Some("garbage".into()), ..Default::default() },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, 400);
    let e = h
        .objects
        .list(
            pods(),
            Some("a"),
            &ListOptions {
                at: ReadAt::NotOlderThan(first.resource_version + 1000),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, 504);
    let exact = h
        .objects
        .list(
            pods(),
            Some("a"),
            &ListOptions { at: ReadAt::Exact(first.resource_version), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(exact.items.len(), 7, "p9 came later");
}

#[tokio::test]
async fn reads_below_the_compaction_are_gone() {
    let h = h().await;
    let o = h.objects.create(pods(), Some("a"), pod("p"), false).await.unwrap();
    let mut u = o.clone();
    u["spec"]["nodeName"] = json!("n1");
    h.objects.update(pods(), Some("a"), "p", u, false).await.unwrap();
    let now = h.store.current_revision().await.unwrap();
    h.store.compact(now).await.unwrap();
    let e = h
        .objects
        .list(pods(), Some("a"), &ListOptions { at: ReadAt::Exact(rv(&o)), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((e.code, e.reason), (410, "Expired"));
}

#[test]
fn resource_version_parameters_parse_like_upstream() {
    assert_eq!(ReadAt::parse(None, None).unwrap(), ReadAt::Latest);
    assert_eq!(ReadAt::parse(Some("0"), None).unwrap(), ReadAt::Any);
    assert_eq!(ReadAt::parse(Some("12"), None).unwrap(), ReadAt::NotOlderThan(12));
    assert_eq!(ReadAt::parse(Some("12"), Some("Exact")).unwrap(), ReadAt::Exact(12));
    assert_eq!(ReadAt::parse(Some("0"), Some("Exact")).unwrap_err().code, 400);
    assert_eq!(ReadAt::parse(None, Some("Exact")).unwrap_err().code, 400);
    assert_eq!(ReadAt::parse(Some("x"), None).unwrap_err().code, 400);
}
