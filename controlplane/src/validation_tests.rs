#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use serde_json::json;

use super::*;
use crate::registry;

fn errors(group: &str, plural: &str, obj: Value) -> Vec<String> {
    let r = registry::find(group, "v1", plural).unwrap();
    validate(r, &obj, None).into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect()
}

fn deployment(selector: Value, labels: Value) -> Value {
    json!({ "metadata": { "name": "web" }, "spec": { "replicas": 1, "selector": { "matchLabels": selector },
        "template": { "metadata": { "labels": labels },
                      "spec": { "restartPolicy": "Always", "containers": [{ "name": "web", "image": "nginx" }] } } } })
}

#[test]
fn names_follow_each_kinds_rule() {
    assert_eq!(
        errors("", "configmaps", json!({ "metadata": { "name": "a.b-c" } })),
        Vec::<String>::new()
    );
    let e = errors("", "configmaps", json!({ "metadata": { "name": "Bad_Name" } }));
    assert!(
        e[0].starts_with(
            "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
        ),
        "{e:?}"
    );
    let e = errors("", "namespaces", json!({ "metadata": { "name": "a.b" } }));
    assert!(e[0].contains("RFC 1123 label"), "{e:?}");
    let e = errors(
        "",
        "services",
        json!({ "metadata": { "name": "1abc" }, "spec": { "ports": [{ "port": 80 }] } }),
    );
    assert!(e[0].contains("DNS-1035 label"), "{e:?}");
    assert_eq!(
        errors(
            "rbac.authorization.k8s.io",
            "clusterroles",
            json!({ "metadata": { "name": "system:aggregate-to-view" } })
        ),
        Vec::<String>::new()
    );
    assert!(errors("", "configmaps", json!({ "metadata": {} }))[0]
        .contains("name or generateName is required"));
    assert!(errors("", "configmaps", json!({ "metadata": { "generateName": "x-" } })).is_empty());
    let e = errors(
        "",
        "configmaps",
        json!({ "metadata": { "name": "c", "labels": { "bad key!": "v", "ok": "-bad" } } }),
    );
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn pod_specs_name_every_bad_field() {
    let e = errors(
        "",
        "pods",
        json!({ "metadata": { "name": "p" }, "spec": {
        "restartPolicy": "Sometimes",
        "volumes": [{ "name": "data", "emptyDir": {} }, { "name": "data", "emptyDir": {} }],
        "containers": [
            { "name": "a", "image": "x", "ports": [{ "containerPort": 70000 }], "volumeMounts": [{ "name": "nope", "mountPath": "/x" }] },
            { "name": "a" }
        ] } }),
    );
    let want = [
        "spec.volumes[1].name: Duplicate value: \"data\"",
        "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.containers[0].volumeMounts[0].name: Not found: \"nope\"",
        "spec.containers[1].name: Duplicate value: \"a\"",
        "spec.containers[1].image: Required value",
        "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
    ];
    assert_eq!(e, want);
    assert_eq!(
        errors("", "pods", json!({ "metadata": { "name": "p" }, "spec": {} })),
        ["spec.containers: Required value"]
    );
}

#[test]
fn workloads_need_a_selector_that_matches_their_template() {
    assert!(errors(
        "apps",
        "deployments",
        deployment(json!({ "app": "web" }), json!({ "app": "web", "x": "y" }))
    )
    .is_empty());
    let e =
        errors("apps", "deployments", deployment(json!({ "app": "web" }), json!({ "app": "db" })));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("spec.template.metadata.labels: Invalid value:")
            && e[0].ends_with("`selector` does not match template `labels`"),
        "{e:?}"
    );
    let e = errors("apps", "deployments", deployment(json!({}), json!({ "app": "web" })));
    assert_eq!(e, ["spec.selector: Required value"]);
    let r = registry::find("apps", "v1", "deployments").unwrap();
    let old = deployment(json!({ "app": "web" }), json!({ "app": "web", "v": "2" }));
    let new = deployment(json!({ "app": "web", "v": "2" }), json!({ "app": "web", "v": "2" }));
    let e = validate(r, &new, Some(&old));
    assert_eq!(e[0].field, "spec.selector");
    assert!(e[0].message.ends_with("field is immutable"));
}

#[test]
fn services_jobs_cronjobs_and_bindings() {
    let e = errors(
        "",
        "services",
        json!({ "metadata": { "name": "s" }, "spec": { "ports": [{ "port": 80 }, { "port": 80, "name": "b" }] } }),
    );
    assert_eq!(
        e,
        ["spec.ports[0].name: Required value", "spec.ports[1]: Duplicate value: \"80/TCP\""]
    );
    assert_eq!(
        errors("", "services", json!({ "metadata": { "name": "s" }, "spec": {} })),
        ["spec.ports: Required value"]
    );
    assert!(errors(
        "",
        "services",
        json!({ "metadata": { "name": "s" }, "spec": { "clusterIP": "None" } })
    )
    .is_empty());
    let job = |rp: &str| json!({ "metadata": { "name": "j" }, "spec": { "template": { "spec": { "restartPolicy": rp, "containers": [{ "name": "c", "image": "x" }] } } } });
    assert!(errors("batch", "jobs", job("Never")).is_empty());
    assert!(errors("batch", "jobs", job("Always"))[0]
        .contains("supported values: \"OnFailure\", \"Never\""));
    let cron = |schedule: &str| json!({ "metadata": { "name": "c" }, "spec": { "schedule": schedule, "jobTemplate": { "spec": { "template": { "spec": { "restartPolicy": "OnFailure", "containers": [{ "name": "c", "image": "x" }] } } } } } });
    for ok in ["*/5 * * * *", "0 3 * * mon-fri", "@hourly", "15 2 1,15 jan *"] {
        assert!(errors("batch", "cronjobs", cron(ok)).is_empty(), "{ok}");
    }
    for bad in ["* * * *", "61 * * * *", "*/0 * * * *", "@sometimes"] {
        assert_eq!(errors("batch", "cronjobs", cron(bad)).len(), 1, "{bad}");
    }
    let b = |kind: &str| json!({ "metadata": { "name": "b" }, "roleRef": { "kind": kind, "name": "view", "apiGroup": "rbac.authorization.k8s.io" }, "subjects": [{ "kind": "Robot", "name": "r" }] });
    assert_eq!(errors("rbac.authorization.k8s.io", "rolebindings", b("ClusterRole")).len(), 1);
    let r = registry::find("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
    let e = validate(r, &b("Role"), Some(&b("ClusterRole")));
    assert!(e.iter().any(|e| e.message.contains("cannot change roleRef")), "{e:?}");
}

#[test]
fn pods_may_change_only_images_deadlines_and_added_tolerations() {
    let r = registry::find("", "v1", "pods").unwrap();
    let pod = json!({ "metadata": { "name": "p" }, "spec": { "containers": [{ "name": "c", "image": "a" }], "tolerations": [{ "key": "k", "operator": "Exists" }] } });
    let mut image = pod.clone();
    image["spec"]["containers"][0]["image"] = json!("b");
    image["spec"]["tolerations"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "key": "k2", "operator": "Exists" }));
    assert!(validate(r, &image, Some(&pod)).is_empty());
    let mut cmd = pod.clone();
    cmd["spec"]["containers"][0]["command"] = json!(["sh"]);
    assert!(validate(r, &cmd, Some(&pod))[0]
        .message
        .starts_with("Forbidden: pod updates may not change fields"));
    let mut removed = pod.clone();
    removed["spec"]["tolerations"] = json!([]);
    assert_eq!(validate(r, &removed, Some(&pod))[0].field, "spec.tolerations");
}

#[test]
fn immutable_configmaps_stay_as_they_are_and_errors_render_like_upstream() {
    let r = registry::find("", "v1", "configmaps").unwrap();
    let old = json!({ "metadata": { "name": "c" }, "immutable": true, "data": { "a": "1" } });
    let new = json!({ "metadata": { "name": "c" }, "immutable": true, "data": { "a": "2" } });
    let e = validate(r, &new, Some(&old));
    assert_eq!(e[0].message, "Forbidden: field is immutable when `immutable` is set");
    let api = to_api_error(r, "c", e);
    assert_eq!(api.code, 422);
    assert_eq!(
        api.message,
        "ConfigMap \"c\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
    );
    assert_eq!(api.causes[0].reason, "FieldValueForbidden");
    let bad_key = errors(
        "",
        "configmaps",
        json!({ "metadata": { "name": "c" }, "data": { "no/slash": "x" } }),
    );
    assert!(
        bad_key[0].starts_with("data: Invalid value: \"no/slash\": a valid config key"),
        "{bad_key:?}"
    );
}
