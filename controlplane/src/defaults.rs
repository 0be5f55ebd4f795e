//! Defaulting: the values upstream's `SetDefaults_*` functions give fields a client left out,
//! for the kinds this server serves (core/v1, apps/v1, batch/v1, rbac/v1, discovery/v1).
//!
//! Every written object passes here before field ownership is recorded, as upstream defaults
//! on decode: a created Deployment has `replicas: 1`, a RollingUpdate strategy of 25 %/25 %,
//! `revisionHistoryLimit: 10` and `progressDeadlineSeconds: 600`; each pod template gets
//! `restartPolicy: Always`, `dnsPolicy: ClusterFirst`, a 30 s grace period, the default
//! scheduler, and containers their termination-message path, TCP ports, probe timings and an
//! image pull policy that follows the tag (`Always` for `latest` or none). A server-side apply
//! is defaulted after the merge, so defaults belong to no manager, as upstream's.
//!
//! Only fields that are absent are set; nothing a client sent is changed.

use serde_json::{json, Map, Value};

use crate::registry::Resource;

/// Sets `key` to `value` when absent (or null).
fn default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    match obj.get(key) {
        None | Some(Value::Null) => {
            obj.insert(key.to_owned(), value);
        }
        Some(_) => {}
    }
}

fn object<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key).and_then(Value::as_object_mut)
}

fn each<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Applies the defaults of `r`'s kind to `obj`.
pub fn apply(r: &Resource, obj: &mut Value) {
    match (r.gvk.group, r.gvk.kind) {
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
            }
        }
        ("", "Service") => service(obj),
        ("", "Secret") => {
            if let Some(o) = obj.as_object_mut() {
                default(o, "type", json!("Opaque"));
            }
        }
        ("", "Endpoints") => {
            for subset in each(obj, "subsets") {
                for port in
                    subset.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten()
                {
                    if let Some(p) = port.as_object_mut() {
                        default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for p in each(obj, "ports") {
                default(p, "protocol", json!("TCP"));
            }
        }
        ("apps", "Deployment") => {
            let Some(spec) = object(obj, "spec") else { return };
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(s) = strategy.as_object_mut() {
                default(s, "type", json!("RollingUpdate"));
                if s.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        default(ru, "maxUnavailable", json!("25%"));
                        default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            template(obj.pointer_mut("/spec/template"));
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "replicas", json!(1));
            }
            template(obj.pointer_mut("/spec/template"));
        }
        ("apps", "StatefulSet") => {
            let Some(spec) = object(obj, "spec") else { return };
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({ "whenDeleted": "Retain", "whenScaled": "Retain" }),
            );
            let us = spec.entry("updateStrategy").or_insert_with(|| json!({}));
            if let Some(us) = us.as_object_mut() {
                default(us, "type", json!("RollingUpdate"));
                if us.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = us.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        default(ru, "partition", json!(0));
                    }
                }
            }
            template(obj.pointer_mut("/spec/template"));
        }
        ("apps", "DaemonSet") => {
            let Some(spec) = object(obj, "spec") else { return };
            default(spec, "revisionHistoryLimit", json!(10));
            let us = spec.entry("updateStrategy").or_insert_with(|| json!({}));
            if let Some(us) = us.as_object_mut() {
                default(us, "type", json!("RollingUpdate"));
                if us.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = us.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        default(ru, "maxUnavailable", json!(1));
                        default(ru, "maxSurge", json!(0));
                    }
                }
            }
            template(obj.pointer_mut("/spec/template"));
        }
        ("batch", "Job") => {
            if let Some(spec) = obj.get_mut("spec") {
                job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            let Some(spec) = object(obj, "spec") else { return };
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(js) = obj.pointer_mut("/spec/jobTemplate/spec") {
                job_spec(js);
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            for s in each(obj, "subjects") {
                let group = match s.get("kind").and_then(Value::as_str) {
                    Some("User" | "Group") => "rbac.authorization.k8s.io",
                    _ => "",
                };
                default(s, "apiGroup", json!(group));
            }
        }
        _ => {}
    }
}

fn job_spec(spec: &mut Value) {
    if let Some(s) = spec.as_object_mut() {
        let (c, p) = (s.get("completions").cloned(), s.get("parallelism").cloned());
        if c.is_none_or(|v| v.is_null()) && p.is_none_or(|v| v.is_null()) {
            s.insert("completions".into(), json!(1));
            s.insert("parallelism".into(), json!(1));
        }
        default(s, "parallelism", json!(1));
        default(s, "backoffLimit", json!(6));
        default(s, "completionMode", json!("NonIndexed"));
        default(s, "suspend", json!(false));
        default(s, "podReplacementPolicy", json!("TerminatingOrFailed"));
    }
    template(spec.get_mut("template"));
}

fn template(t: Option<&mut Value>) {
    if let Some(spec) = t.and_then(|t| t.get_mut("spec")) {
        pod_spec(spec);
    }
}

/// `SetDefaults_PodSpec` and what it reaches (containers, probes, volumes).
pub fn pod_spec(spec: &mut Value) {
    let host_network = spec.get("hostNetwork") == Some(&json!(true));
    if let Some(s) = spec.as_object_mut() {
        default(s, "restartPolicy", json!("Always"));
        default(s, "dnsPolicy", json!("ClusterFirst"));
        default(s, "terminationGracePeriodSeconds", json!(30));
        default(s, "securityContext", json!({}));
        default(s, "schedulerName", json!("default-scheduler"));
        default(s, "enableServiceLinks", json!(true));
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in each(spec, list) {
            container(c, host_network);
        }
    }
    for v in each(spec, "volumes") {
        for (source, mode) in [
            ("secret", "defaultMode"),
            ("configMap", "defaultMode"),
            ("projected", "defaultMode"),
            ("downwardAPI", "defaultMode"),
        ] {
            if let Some(src) = v.get_mut(source).and_then(Value::as_object_mut) {
                default(src, mode, json!(0o644));
            }
        }
        if let Some(hp) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
            default(hp, "type", json!(""));
        }
    }
}

fn container(c: &mut Map<String, Value>, host_network: bool) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_owned();
    default(c, "imagePullPolicy", json!(pull_policy(&image)));
    for p in c
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        default(p, "protocol", json!("TCP"));
        if host_network && p.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0 {
            if let Some(cp) = p.get("containerPort").cloned() {
                p.insert("hostPort".into(), cp);
            }
        }
    }
    for e in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(fr) = e.pointer_mut("/valueFrom/fieldRef").and_then(Value::as_object_mut) {
            default(fr, "apiVersion", json!("v1"));
        }
    }
    // Requests default to limits.
    if let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) {
        if let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() {
            let requests = res.entry("requests").or_insert_with(|| json!({}));
            if let Some(req) = requests.as_object_mut() {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                default(h, "path", json!("/"));
                default(h, "scheme", json!("HTTP"));
            }
        }
    }
}

/// `Always` for an image without a tag or tagged `latest` (and no digest), else
/// `IfNotPresent`.
pub fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn service(obj: &mut Value) {
    let Some(spec) = object(obj, "spec") else { return };
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
    if spec.get("sessionAffinity") == Some(&json!("ClientIP")) {
        let cfg = spec.entry("sessionAffinityConfig").or_insert_with(|| json!({}));
        if let Some(cfg) = cfg.as_object_mut() {
            let ip = cfg.entry("clientIP").or_insert_with(|| json!({}));
            if let Some(ip) = ip.as_object_mut() {
                default(ip, "timeoutSeconds", json!(10800));
            }
        }
    }
    if ty != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    for p in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        default(p, "protocol", json!("TCP"));
        let unset = match p.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if unset {
            if let Some(port) = p.get("port").cloned() {
                p.insert("targetPort".into(), port);
            }
        }
    }
}

/// A Pod's QoS class, as upstream computes it on create.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let has =
        |c: &Value, what: &str, res: &str| c.pointer(&format!("/resources/{what}/{res}")).is_some();
    let any = containers.iter().any(|c| {
        ["requests", "limits"].iter().any(|w| {
            c.pointer(&format!("/resources/{w}"))
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            has(c, "limits", r)
                && c.pointer(&format!("/resources/requests/{r}"))
                    == c.pointer(&format!("/resources/limits/{r}"))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;
    use crate::registry;

    fn defaulted(group: &str, plural: &str, mut obj: Value) -> Value {
        apply(registry::find(group, "v1", plural).unwrap(), &mut obj);
        obj
    }

    #[test]
    fn a_bare_deployment_gets_upstreams_defaults_and_keeps_what_it_says() {
        let d = defaulted(
            "apps",
            "deployments",
            json!({ "spec": { "template": { "spec": { "containers": [
                { "name": "a", "image": "nginx", "ports": [{ "containerPort": 80 }],
                  "readinessProbe": { "httpGet": { "port": 80 } },
                  "resources": { "limits": { "cpu": "1" } } },
                { "name": "b", "image": "registry.local:5000/busybox:1.36", "imagePullPolicy": "Never" }
            ] } }, "revisionHistoryLimit": 2 } }),
        );
        let s = &d["spec"];
        assert_eq!(s["replicas"], 1);
        assert_eq!(s["revisionHistoryLimit"], 2, "a given value stays");
        assert_eq!(s["progressDeadlineSeconds"], 600);
        assert_eq!(
            s["strategy"],
            json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "25%", "maxSurge": "25%" } })
        );
        let ps = &s["template"]["spec"];
        assert_eq!(
            (&ps["restartPolicy"], &ps["dnsPolicy"], &ps["schedulerName"]),
            (&json!("Always"), &json!("ClusterFirst"), &json!("default-scheduler"))
        );
        assert_eq!(ps["terminationGracePeriodSeconds"], 30);
        let a = &ps["containers"][0];
        assert_eq!(a["imagePullPolicy"], "Always", "no tag means latest");
        assert_eq!(a["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(a["ports"][0]["protocol"], "TCP");
        assert_eq!(
            a["readinessProbe"],
            json!({ "httpGet": { "port": 80, "path": "/", "scheme": "HTTP" },
            "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3 })
        );
        assert_eq!(a["resources"]["requests"], json!({ "cpu": "1" }), "requests default to limits");
        assert_eq!(ps["containers"][1]["imagePullPolicy"], "Never");
    }

    #[test]
    fn pull_policies_follow_tags_and_digests() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("registry.local:5000/nginx", "Always"),
            ("registry.local:5000/nginx:1.27", "IfNotPresent"),
            ("nginx@sha256:abcd", "IfNotPresent"),
        ] {
            assert_eq!(pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn services_secrets_jobs_and_bindings_get_their_defaults() {
        let s = defaulted(
            "",
            "services",
            json!({ "spec": { "type": "NodePort", "ports": [{ "port": 80 }, { "port": 53, "targetPort": "dns", "protocol": "UDP" }] } }),
        );
        assert_eq!(
            s["spec"]["ports"][0],
            json!({ "port": 80, "protocol": "TCP", "targetPort": 80 })
        );
        assert_eq!(s["spec"]["ports"][1]["targetPort"], "dns");
        assert_eq!(
            (&s["spec"]["sessionAffinity"], &s["spec"]["externalTrafficPolicy"]),
            (&json!("None"), &json!("Cluster"))
        );
        assert_eq!(defaulted("", "secrets", json!({}))["type"], "Opaque");
        let j = defaulted(
            "batch",
            "jobs",
            json!({ "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [] } } } }),
        );
        assert_eq!(
            (&j["spec"]["completions"], &j["spec"]["parallelism"], &j["spec"]["backoffLimit"]),
            (&json!(1), &json!(1), &json!(6))
        );
        let j = defaulted("batch", "jobs", json!({ "spec": { "parallelism": 3 } }));
        assert!(j["spec"].get("completions").is_none(), "a work queue has no completions");
        let b = defaulted(
            "rbac.authorization.k8s.io",
            "rolebindings",
            json!({ "subjects": [{ "kind": "User", "name": "a" }, { "kind": "ServiceAccount", "name": "s" }] }),
        );
        assert_eq!(b["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(b["subjects"][1]["apiGroup"], "");
    }

    #[test]
    fn qos_classes() {
        assert_eq!(qos_class(&json!({ "containers": [{ "name": "a" }] })), "BestEffort");
        let g = json!({ "containers": [{ "resources": { "limits": { "cpu": "1", "memory": "1Gi" }, "requests": { "cpu": "1", "memory": "1Gi" } } }] });
        assert_eq!(qos_class(&g), "Guaranteed");
        assert_eq!(
            qos_class(&json!({ "containers": [{ "resources": { "requests": { "cpu": "1" } } }] })),
            "Burstable"
        );
    }
}
