#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use chrono::TimeZone;

use super::*;
use crate::registry;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

fn cells(kind_plural: (&str, &str), o: Value) -> Vec<Value> {
    let r = registry::find(kind_plural.0, "v1", kind_plural.1).unwrap();
    let t = table(r, &[o], IncludeObject::None, "v1", json!({}), now());
    t["rows"][0]["cells"].as_array().unwrap().clone()
}

#[test]
fn human_durations_match_upstreams() {
    for (secs, want) in [
        (-5, "<invalid>"),
        (-1, "0s"),
        (59, "59s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600 + 120, "3h2m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (5 * 86400 + 3 * 3600, "5d3h"),
        (400 * 86400, "400d"),
        (3 * 365 * 86400 + 10 * 86400, "3y10d"),
        (9 * 365 * 86400, "9y"),
    ] {
        assert_eq!(human_duration(secs), want, "{secs} s");
    }
}

#[test]
fn accept_headers_choose_tables_metadata_or_json() {
    let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    assert_eq!(negotiate(Some(kubectl_get)).unwrap(), Representation::Table("v1"));
    assert_eq!(negotiate(None).unwrap(), Representation::Json);
    assert_eq!(negotiate(Some("*/*")).unwrap(), Representation::Json);
    assert_eq!(
        negotiate(Some("application/vnd.kubernetes.protobuf, application/json")).unwrap(),
        Representation::Json
    );
    assert_eq!(
        negotiate(Some("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"))
            .unwrap(),
        Representation::Metadata("v1")
    );
    assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf")).unwrap_err().code, 406);
    assert_eq!(
        negotiate(Some("application/json;as=Table;v=v9;g=meta.k8s.io")).unwrap_err().code,
        406
    );
}

#[test]
fn pods_print_ready_status_restarts_and_age_like_kubectl_shows_them() {
    let running = json!({
        "metadata": { "name": "web", "creationTimestamp": "2026-11-22T11:57:30Z" },
        "spec": { "containers": [{ "name": "a" }, { "name": "b" }], "nodeName": "n1" },
        "status": { "phase": "Running", "podIP": "10.42.0.5",
            "conditions": [{ "type": "Ready", "status": "True" }],
            "containerStatuses": [
                { "name": "a", "ready": true, "restartCount": 2, "state": { "running": {} },
                  "lastState": { "terminated": { "exitCode": 1, "finishedAt": "2026-11-22T11:58:00Z" } } },
                { "name": "b", "ready": false, "restartCount": 0,
                  "state": { "waiting": { "reason": "CrashLoopBackOff" } } }
            ] }
    });
    assert_eq!(
        cells(("", "pods"), running),
        vec![
            json!("web"),
            json!("1/2"),
            json!("CrashLoopBackOff"),
            json!("2 (2m ago)"),
            json!("2m30s"),
            json!("10.42.0.5"),
            json!("n1"),
            json!("<none>"),
            json!("<none>")
        ]
    );
    let init = json!({
        "metadata": { "name": "i" },
        "spec": { "initContainers": [{ "name": "x" }, { "name": "y" }], "containers": [{ "name": "a" }] },
        "status": { "phase": "Pending", "initContainerStatuses": [
            { "name": "x", "restartCount": 0, "state": { "terminated": { "exitCode": 0 } } },
            { "name": "y", "restartCount": 0, "state": { "running": {} } }
        ] }
    });
    let c = cells(("", "pods"), init);
    assert_eq!((&c[2], &c[4]), (&json!("Init:1/2"), &json!("<unknown>")));
    let failed_init = json!({
        "metadata": { "name": "f" },
        "spec": { "initContainers": [{ "name": "x" }], "containers": [{ "name": "a" }] },
        "status": { "phase": "Pending", "initContainerStatuses": [
            { "name": "x", "state": { "terminated": { "exitCode": 3 } } } ] }
    });
    assert_eq!(cells(("", "pods"), failed_init)[2], json!("Init:ExitCode:3"));
    let done = json!({
        "metadata": { "name": "d", "deletionTimestamp": "2026-11-22T12:00:00Z" },
        "spec": { "containers": [{ "name": "a" }] },
        "status": { "phase": "Succeeded", "containerStatuses": [
            { "name": "a", "state": { "terminated": { "exitCode": 0, "reason": "Completed" } } } ] }
    });
    assert_eq!(cells(("", "pods"), done)[2], json!("Terminating"));
}

#[test]
fn workloads_services_and_nodes_print_upstreams_columns() {
    let d = json!({ "metadata": { "name": "nginx" },
        "spec": { "replicas": 3, "selector": { "matchLabels": { "app": "nginx" } },
                  "template": { "spec": { "containers": [{ "name": "nginx", "image": "nginx:1.27" }] } } },
        "status": { "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2 } });
    let c = cells(("apps", "deployments"), d);
    assert_eq!(
        c,
        vec![
            json!("nginx"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("<unknown>"),
            json!("nginx"),
            json!("nginx:1.27"),
            json!("app=nginx")
        ]
    );
    let svc = json!({ "metadata": { "name": "web" },
        "spec": { "type": "NodePort", "clusterIP": "10.43.0.10", "selector": { "app": "web" },
                  "ports": [{ "port": 80, "nodePort": 30080, "protocol": "TCP" }, { "port": 53, "protocol": "UDP" }] } });
    let c = cells(("", "services"), svc);
    assert_eq!(
        &c[1..5],
        &[json!("NodePort"), json!("10.43.0.10"), json!("<none>"), json!("80:30080/TCP,53/UDP")]
    );
    assert_eq!(c[6], json!("app=web"));
    let lb = json!({ "metadata": { "name": "lb" }, "spec": { "type": "LoadBalancer", "clusterIP": "10.43.0.11" } });
    assert_eq!(cells(("", "services"), lb)[3], json!("<pending>"));
    let node = json!({ "metadata": { "name": "n1", "labels": { "node-role.kubernetes.io/control-plane": "" } },
        "spec": { "unschedulable": true },
        "status": { "conditions": [{ "type": "Ready", "status": "True" }],
                    "addresses": [{ "type": "InternalIP", "address": "192.0.2.10" }],
                    "nodeInfo": { "kubeletVersion": "v1.33.0", "osImage": "Keelson", "kernelVersion": "6.12", "containerRuntimeVersion": "keelson://0.1" } } });
    let c = cells(("", "nodes"), node);
    assert_eq!(&c[1..3], &[json!("Ready,SchedulingDisabled"), json!("control-plane")]);
    assert_eq!(c[4], json!("v1.33.0"));
    assert_eq!(&c[5..7], &[json!("192.0.2.10"), json!("<none>")]);
    let ep = json!({ "metadata": { "name": "e" }, "subsets": [{ "addresses": [
        { "ip": "10.0.0.1" }, { "ip": "10.0.0.2" }, { "ip": "10.0.0.3" }, { "ip": "10.0.0.4" }],
        "ports": [{ "port": 80 }] }] });
    assert_eq!(
        cells(("", "endpoints"), ep)[1],
        json!("10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more...")
    );
    let cm = json!({ "metadata": { "name": "c" }, "data": { "a": "1", "b": "2" }, "binaryData": { "c": "" } });
    assert_eq!(cells(("", "configmaps"), cm)[1], json!(3));
}

#[test]
fn tables_carry_metadata_the_object_or_nothing_per_include_object() {
    let r = registry::find("", "v1", "configmaps").unwrap();
    let o = json!({ "metadata": { "name": "c", "namespace": "a", "resourceVersion": "5" }, "data": {} });
    let t = table(
        r,
        std::slice::from_ref(&o),
        IncludeObject::Metadata,
        "v1",
        json!({ "resourceVersion": "9" }),
        now(),
    );
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(t["metadata"]["resourceVersion"], "9");
    assert_eq!(t["columnDefinitions"][0]["name"], "Name");
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "a");
    let t = table(r, std::slice::from_ref(&o), IncludeObject::Object, "v1beta1", json!({}), now());
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(t["rows"][0]["object"], o);
    let t = table(r, &[o], IncludeObject::None, "v1", json!({}), now());
    assert!(t["rows"][0].get("object").is_none());
    // Kinds without a printer get Name and Created At.
    let roles = registry::find("rbac.authorization.k8s.io", "v1", "roles").unwrap();
    let t = table(
        roles,
        &[json!({ "metadata": { "name": "r", "creationTimestamp": "2026-11-22T10:00:00Z" } })],
        IncludeObject::None,
        "v1",
        json!({}),
        now(),
    );
    assert_eq!(t["rows"][0]["cells"], json!(["r", "2026-11-22T10:00:00Z"]));
    assert_eq!(IncludeObject::parse(Some("Everything")).unwrap_err().code, 400);
}
