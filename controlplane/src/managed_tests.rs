#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::OnceLock;

use serde_json::json;

use super::*;
use crate::registry::Gvk;

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(Schemas::build)
}

fn deployment_schema() -> Option<&'static Value> {
    let s = schemas().for_kind(&Gvk { group: "apps", version: "v1", kind: "Deployment" });
    assert!(s.is_some());
    s
}

fn fm() -> FieldManager<'static> {
    FieldManager::new(schemas())
}

fn who(name: &str) -> Manager<'_> {
    Manager { name, api_version: "apps/v1", subresource: "", time: "2026-11-22T10:00:00Z" }
}

fn nginx(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "nginx", "labels": { "app": "nginx" } },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": "nginx" } },
            "template": {
                "metadata": { "labels": { "app": "nginx" } },
                "spec": { "containers": [{ "name": "nginx", "image": image,
                    "ports": [{ "containerPort": 80 }] }] }
            }
        }
    })
}

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["manager"].as_str().unwrap().to_owned(), e["operation"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn fields_of(obj: &Value, manager: &str) -> FieldSet {
    let e = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == manager)
        .unwrap_or_else(|| panic!("no entry for {manager} in {obj}"));
    FieldSet::from_fields_v1(&e["fieldsV1"]).unwrap()
}

#[test]
fn an_applied_deployment_is_owned_as_upstream_records_it() {
    let out = fm()
        .apply(deployment_schema(), None, &nginx(2, "nginx:1.27"), &who("kubectl"), false)
        .unwrap();
    let entry = &out["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "kubectl");
    assert_eq!(entry["operation"], "Apply");
    assert_eq!(entry["fieldsType"], "FieldsV1");
    // What `kubectl apply --server-side` of this Deployment records on a real API server.
    assert_eq!(
        entry["fieldsV1"],
        json!({
            "f:metadata": { "f:labels": { "f:app": {} } },
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {
                    "f:metadata": { "f:labels": { "f:app": {} } },
                    "f:spec": { "f:containers": { "k:{\"name\":\"nginx\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": { "k:{\"containerPort\":80}": { ".": {}, "f:containerPort": {} } }
                    } } }
                }
            }
        })
    );
    assert_eq!(out["spec"]["replicas"], 2);
}

#[test]
fn fields_v1_round_trips_and_prints_upstreams_paths() {
    let v = json!({
        "f:metadata": { "f:labels": { ".": {}, "f:app": {} }, "f:finalizers": { "v:\"a\"": {} } },
        "f:spec": { "f:containers": { "k:{\"name\":\"c\"}": { ".": {}, "f:image": {} } } }
    });
    let set = FieldSet::from_fields_v1(&v).unwrap();
    assert_eq!(set.to_fields_v1(), v);
    assert_eq!(
        set.paths(),
        vec![
            ".metadata.finalizers[=\"a\"]",
            ".metadata.labels",
            ".metadata.labels.app",
            ".spec.containers[name=\"c\"]",
            ".spec.containers[name=\"c\"].image",
        ]
    );
    assert_eq!(FieldSet::from_fields_v1(&json!({ "x:bad": {} })), None);
    assert_eq!(FieldSet::from_fields_v1(&json!([])), None);
}

#[test]
fn a_create_owns_every_field_but_the_identity() {
    let mut obj = nginx(1, "nginx:1.27");
    obj["metadata"]["uid"] = json!("u");
    obj["metadata"]["resourceVersion"] = json!("5");
    fm().update(deployment_schema(), None, &mut obj, &who("kubectl-create"));
    assert_eq!(managers(&obj), vec![("kubectl-create".into(), "Update".into())]);
    let f = &obj["metadata"]["managedFields"][0];
    assert_eq!(f["time"], "2026-11-22T10:00:00Z");
    assert_eq!(f["fieldsV1"]["f:metadata"], json!({ "f:labels": { ".": {}, "f:app": {} } }));
    assert!(f["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
        ["k:{\"name\":\"nginx\"}"]["f:image"]
        .is_object());
    assert!(f["fieldsV1"].get("f:apiVersion").is_none());
}

#[test]
fn an_update_takes_the_fields_it_changes_from_other_managers() {
    let mut created = nginx(1, "nginx:1.27");
    fm().update(deployment_schema(), None, &mut created, &who("kubectl-create"));
    let mut scaled = created.clone();
    scaled["spec"]["replicas"] = json!(5);
    fm().update(deployment_schema(), Some(&created), &mut scaled, &who("kubectl-scale"));
    let replicas = FieldSet::from_fields_v1(&json!({ "f:spec": { "f:replicas": {} } })).unwrap();
    assert_eq!(fields_of(&scaled, "kubectl-scale"), replicas);
    assert!(fields_of(&scaled, "kubectl-create").intersection(&replicas).is_empty());
    // A removed field leaves every set.
    let mut unlabelled = scaled.clone();
    unlabelled["metadata"].as_object_mut().unwrap().remove("labels");
    fm().update(deployment_schema(), Some(&scaled), &mut unlabelled, &who("kubectl-label"));
    for m in ["kubectl-create", "kubectl-scale"] {
        let f = fields_of(&unlabelled, m);
        assert!(
            !f.paths().iter().any(|p| p.starts_with(".metadata.labels")),
            "{m}: {:?}",
            f.paths()
        );
    }
    assert!(!managers(&unlabelled).iter().any(|(m, _)| m == "kubectl-label"), "it owns nothing");
}

#[test]
fn an_apply_that_changes_anothers_field_conflicts_unless_forced() {
    let applied = fm()
        .apply(deployment_schema(), None, &nginx(2, "nginx:1.27"), &who("kubectl"), false)
        .unwrap();
    let mut scaled = applied.clone();
    scaled["spec"]["replicas"] = json!(5);
    fm().update(deployment_schema(), Some(&applied), &mut scaled, &who("kubectl-scale"));

    let err = fm()
        .apply(deployment_schema(), Some(&scaled), &nginx(3, "nginx:1.28"), &who("kubectl"), false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
    );
    // The same value is no conflict: both own it.
    let shared = fm()
        .apply(deployment_schema(), Some(&scaled), &nginx(5, "nginx:1.28"), &who("kubectl"), false)
        .unwrap();
    let replicas = FieldSet::from_fields_v1(&json!({ "f:spec": { "f:replicas": {} } })).unwrap();
    assert_eq!(fields_of(&shared, "kubectl-scale"), replicas);
    assert!(!fields_of(&shared, "kubectl").intersection(&replicas).is_empty());
    assert_eq!(shared["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.28");

    let forced = fm()
        .apply(deployment_schema(), Some(&scaled), &nginx(3, "nginx:1.28"), &who("kubectl"), true)
        .unwrap();
    assert_eq!(forced["spec"]["replicas"], 3);
    assert!(!managers(&forced).iter().any(|(m, _)| m == "kubectl-scale"), "it lost its only field");
}

#[test]
fn fields_an_applier_stops_applying_are_removed_unless_someone_else_owns_them() {
    let mut config = nginx(1, "nginx:1.27");
    config["metadata"]["labels"] = json!({ "app": "nginx", "tier": "web", "team": "a" });
    let first = fm()
        .apply(deployment_schema(), None, &config, &who("kubectl"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    // Someone else sets `team` to its own value: now they own it.
    let mut other = first.clone();
    other["metadata"]["labels"]["team"] = json!("b");
    fm().update(deployment_schema(), Some(&first), &mut other, &who("kubectl-label"));
    let second = fm()
        .apply(deployment_schema(), Some(&other), &nginx(1, "nginx:1.27"), &who("kubectl"), false)
        .unwrap();
    assert_eq!(second["metadata"]["labels"], json!({ "app": "nginx", "team": "b" }));
    // A container dropped from the configuration goes with its fields.
    let mut two = nginx(1, "nginx:1.27");
    two["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "sidecar", "image": "busybox" }));
    let with_two =
        fm().apply(deployment_schema(), Some(&second), &two, &who("kubectl"), false).unwrap();
    assert_eq!(with_two["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 2);
    let back = fm()
        .apply(
            deployment_schema(),
            Some(&with_two),
            &nginx(1, "nginx:1.27"),
            &who("kubectl"),
            false,
        )
        .unwrap();
    let names: Vec<&str> = back["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nginx"]);
}

#[test]
fn clients_may_reset_managed_fields_and_malformed_ones_are_ignored() {
    let mut created = nginx(1, "nginx:1.27");
    fm().update(deployment_schema(), None, &mut created, &who("a"));
    let mut reset = created.clone();
    reset["metadata"]["managedFields"] = json!([]);
    reset["spec"]["replicas"] = json!(2);
    fm().update(deployment_schema(), Some(&created), &mut reset, &who("b"));
    assert_eq!(managers(&reset), vec![("b".into(), "Update".into())]);
    let mut junk = created.clone();
    junk["metadata"]["managedFields"] = json!("junk");
    junk["spec"]["replicas"] = json!(3);
    fm().update(deployment_schema(), Some(&created), &mut junk, &who("b"));
    assert_eq!(managers(&junk), vec![("a".into(), "Update".into()), ("b".into(), "Update".into())]);
}

#[test]
fn more_than_ten_update_managers_fold_into_ancient_changes() {
    let mut obj = nginx(1, "nginx:1.27");
    fm().update(deployment_schema(), None, &mut obj, &who("m00"));
    for i in 1..=11 {
        let old = obj.clone();
        obj["metadata"]["labels"][format!("l{i}")] = json!("x");
        let name = format!("m{i:02}");
        let time = format!("2026-11-22T10:00:{i:02}Z");
        fm().update(
            deployment_schema(),
            Some(&old),
            &mut obj,
            &Manager { name: &name, api_version: "apps/v1", subresource: "", time: &time },
        );
    }
    let list = managers(&obj);
    assert_eq!(list.len(), MAX_UPDATE_MANAGERS, "{list:?}");
    assert!(list.iter().any(|(m, _)| m == ANCIENT_CHANGES));
    for folded in ["m00", "m01", "m02"] {
        assert!(!list.iter().any(|(m, _)| m == folded), "the oldest were folded: {list:?}");
    }
    assert!(list.iter().any(|(m, _)| m == "m03"));
}
