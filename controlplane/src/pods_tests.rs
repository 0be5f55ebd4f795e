#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use keelson_store::embedded::{EmbeddedStore, Options};

use super::*;

struct H {
    objects: Objects,
    _dir: tempfile::TempDir,
}

async fn h() -> H {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { history_window: None, ..Options::default() };
    let store = Arc::new(EmbeddedStore::open(dir.path().join("db"), opts).await.unwrap());
    H { objects: Objects::new(store), _dir: dir }
}

fn pdbs() -> &'static Resource {
    registry::find("policy", "v1", "poddisruptionbudgets").unwrap()
}

impl H {
    async fn pod(&self, name: &str, phase: &str) {
        let p = json!({ "metadata": { "name": name, "labels": { "app": "web" } },
                        "spec": { "containers": [{ "name": "c", "image": "x" }] },
                        "status": { "phase": phase } });
        self.objects.create(pods().unwrap(), Some("a"), p, false).await.unwrap();
    }

    async fn pdb(&self, allowed: i64, observed: i64) {
        let b = json!({ "metadata": { "name": "budget" },
                        "spec": { "minAvailable": 1, "selector": { "matchLabels": { "app": "web" } } },
                        "status": { "observedGeneration": observed, "disruptionsAllowed": allowed,
                                    "desiredHealthy": 1, "currentHealthy": 1 + allowed, "expectedPods": 2 } });
        self.objects.create(pdbs(), Some("a"), b, false).await.unwrap();
    }

    async fn exists(&self, name: &str) -> bool {
        self.objects.get(pods().unwrap(), Some("a"), name).await.is_ok()
    }
}

#[tokio::test]
async fn binding_assigns_a_node_once_and_records_the_scheduled_condition() {
    let h = h().await;
    h.pod("p", "Pending").await;
    let binding = json!({ "metadata": { "name": "p", "annotations": { "why": "fits" } }, "target": { "kind": "Node", "name": "n1" } });
    assert_eq!(bind(&h.objects, "a", "p", &binding, false).await.unwrap()["status"], "Success");
    let p = h.objects.get(pods().unwrap(), Some("a"), "p").await.unwrap();
    assert_eq!(p["spec"]["nodeName"], "n1");
    assert_eq!(p["metadata"]["annotations"]["why"], "fits");
    assert_eq!(p["status"]["conditions"][0]["type"], "PodScheduled");
    let again = bind(&h.objects, "a", "p", &json!({ "target": { "name": "n2" } }), false)
        .await
        .unwrap_err();
    assert_eq!(again.code, 409);
    assert!(again.message.contains("already assigned to node \"n1\""), "{}", again.message);
    let bad = bind(&h.objects, "a", "p", &json!({ "target": {} }), false).await.unwrap_err();
    assert_eq!(bad.code, 422);
    assert_eq!(bind(&h.objects, "a", "nope", &binding, false).await.unwrap_err().code, 404);
}

#[tokio::test]
async fn eviction_honours_the_budget_and_spends_it_with_the_delete() {
    let h = h().await;
    for p in ["r1", "r2", "r3"] {
        h.pod(p, "Running").await;
    }
    h.pod("pending", "Pending").await;
    h.pdb(1, 1).await;
    let ev = json!({ "metadata": { "name": "r1" } });
    evict(&h.objects, "a", "r1", &ev, false).await.unwrap();
    assert!(!h.exists("r1").await);
    let b = h.objects.get(pdbs(), Some("a"), "budget").await.unwrap();
    assert_eq!(b["status"]["disruptionsAllowed"], 0);
    assert!(b["status"]["disruptedPods"]["r1"].is_string());
    let e = evict(&h.objects, "a", "r2", &ev, false).await.unwrap_err();
    assert_eq!((e.code, e.reason), (429, "TooManyRequests"));
    assert_eq!(e.causes[0].reason, "DisruptionBudget");
    assert!(e.causes[0].message.contains("needs 1 healthy pods"), "{}", e.causes[0].message);
    assert!(h.exists("r2").await, "a refused eviction deletes nothing");
    // A pending pod is not counted by any budget.
    evict(&h.objects, "a", "pending", &ev, false).await.unwrap();
    assert!(!h.exists("pending").await);
}

#[tokio::test]
async fn an_unprocessed_budget_refuses_and_a_dry_run_changes_nothing() {
    let h = h().await;
    h.pod("r", "Running").await;
    h.pdb(5, 0).await;
    let e = evict(&h.objects, "a", "r", &json!({}), false).await.unwrap_err();
    assert!(e.causes[0].message.contains("still being processed"), "{}", e.causes[0].message);
    let h = self::h().await;
    h.pod("r", "Running").await;
    h.pdb(1, 1).await;
    evict(&h.objects, "a", "r", &json!({}), true).await.unwrap();
    assert!(h.exists("r").await);
    let b = h.objects.get(pdbs(), Some("a"), "budget").await.unwrap();
    assert_eq!(b["status"]["disruptionsAllowed"], 1, "a dry run spends nothing");
}

#[test]
fn label_selectors_match_like_upstreams() {
    let labels = json!({ "app": "web", "tier": "a" });
    let l = labels.as_object().unwrap();
    assert!(selects(&json!({}), l));
    assert!(selects(&json!({ "matchLabels": { "app": "web" } }), l));
    assert!(!selects(&json!({ "matchLabels": { "app": "db" } }), l));
    let e = |op: &str, values: Value| json!({ "matchExpressions": [{ "key": "tier", "operator": op, "values": values }] });
    assert!(selects(&e("In", json!(["a", "b"])), l));
    assert!(!selects(&e("NotIn", json!(["a"])), l));
    assert!(selects(&e("Exists", json!([])), l));
    assert!(!selects(&e("DoesNotExist", json!([])), l));
    assert!(!selects(&e("Bogus", json!([])), l));
}

#[tokio::test]
async fn streaming_subresources_say_what_is_missing() {
    let h = h().await;
    h.pod("p", "Running").await;
    let e = stream(&h.objects, "a", "p", "exec").await.unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (400, "pod p does not have a host assigned"));
    bind(&h.objects, "a", "p", &json!({ "target": { "name": "n1" } }), false).await.unwrap();
    let e = stream(&h.objects, "a", "p", "log").await.unwrap_err();
    assert_eq!(e.code, 503);
    assert!(e.message.contains("node \"n1\""), "{}", e.message);
}
