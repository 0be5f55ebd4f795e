//! The node authorizer and NodeRestriction, after upstream's
//! `plugin/pkg/auth/authorizer/node` and `plugin/pkg/admission/noderestriction`.
//!
//! A node's identity is the user `system:node:<name>` in the group `system:nodes` (its
//! client certificate). The authorizer lets it:
//! - read (`get`, or `list`/`watch` of one name) the Secrets, ConfigMaps,
//!   PersistentVolumeClaims and ServiceAccounts its pods reference, the PersistentVolumes bound
//!   to those claims, and create tokens for those service accounts ([`PodRefs`] is the edge
//!   set of upstream's graph, computed from the pods bound to the node);
//! - `get` its pods, and `list`/`watch` pods only with the field selector
//!   `spec.nodeName=<name>`;
//! - read and write only its own Node, and only its own Lease in `kube-node-lease`;
//! - everything else `system:node`'s rules allow (services, endpoints, events, CSRs, pod
//!   creation and status), which NodeRestriction narrows.
//!
//! What it does not allow gets no opinion with a reason; RBAC may still allow it.
//!
//! NodeRestriction ([`admit`]), run on a node's writes: a Node or Lease it creates must be its
//! own; the pods it creates must be mirror pods bound to it; it may only delete, evict or
//! update the status of pods bound to it; its service-account tokens must be bound to one of
//! its pods that uses that service account; and it may not set or change labels of the
//! `kubernetes.io`/`k8s.io` domains except the kubelet's own (hostname, os, arch, instance
//! type, topology, `kubelet.kubernetes.io/*`, `node.kubernetes.io/*`) nor any
//! `node-restriction.kubernetes.io/` label.
//!
//! Cost: a restricted read lists the pods of the request's namespace (all pods for
//! PersistentVolumes); upstream keeps the graph in memory, which is the next step when
//! nodes are many.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::rbac::Rule;
use super::request::RequestInfo;
use super::User;
use crate::objects::{ApiError, ListOptions, Objects};
use crate::schema::Schemas;

/// The group of nodes.
pub const NODES_GROUP: &str = "system:nodes";
/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user is, when it is one.
pub fn node_name(user: &User) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// The node authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Not for this authorizer to allow; the reason (may be empty).
    NoOpinion(String),
}

/// What a pod references: the edges from a pod vertex in upstream's graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRefs {
    /// Secrets (volumes, env, envFrom, image pull secrets, projected volumes).
    pub secrets: Vec<String>,
    /// ConfigMaps (volumes, env, envFrom, projected volumes).
    pub configmaps: Vec<String>,
    /// PersistentVolumeClaims (volumes; ephemeral volumes' generated claims).
    pub claims: Vec<String>,
    /// The service account.
    pub service_account: String,
}

fn push(list: &mut Vec<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
        if !list.iter().any(|x| x == s) {
            list.push(s.to_owned());
        }
    }
}

fn arr<'a>(v: &'a Value, ptr: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(ptr).and_then(Value::as_array).into_iter().flatten()
}

/// The objects `pod` references.
pub fn pod_refs(pod: &Value) -> PodRefs {
    let mut r = PodRefs {
        service_account: pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned(),
        ..Default::default()
    };
    for s in arr(pod, "/spec/imagePullSecrets") {
        push(&mut r.secrets, s.get("name"));
    }
    let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    for vol in arr(pod, "/spec/volumes") {
        push(&mut r.secrets, vol.pointer("/secret/secretName"));
        push(&mut r.configmaps, vol.pointer("/configMap/name"));
        push(&mut r.claims, vol.pointer("/persistentVolumeClaim/claimName"));
        if vol.get("ephemeral").is_some() {
            let vname = vol.get("name").and_then(Value::as_str).unwrap_or_default();
            r.claims.push(format!("{pod_name}-{vname}"));
        }
        for src in arr(vol, "/projected/sources") {
            push(&mut r.secrets, src.pointer("/secret/name"));
            push(&mut r.configmaps, src.pointer("/configMap/name"));
        }
        // Volume plugins with a secretRef (cephfs, rbd, iscsi, flexVolume, csi, …).
        if let Some(o) = vol.as_object() {
            for source in o.values() {
                push(&mut r.secrets, source.pointer("/secretRef/name"));
                push(&mut r.secrets, source.pointer("/nodePublishSecretRef/name"));
            }
        }
    }
    for list in ["/spec/containers", "/spec/initContainers", "/spec/ephemeralContainers"] {
        for c in arr(pod, list) {
            for e in arr(c, "/env") {
                push(&mut r.secrets, e.pointer("/valueFrom/secretKeyRef/name"));
                push(&mut r.configmaps, e.pointer("/valueFrom/configMapKeyRef/name"));
            }
            for e in arr(c, "/envFrom") {
                push(&mut r.secrets, e.pointer("/secretRef/name"));
                push(&mut r.configmaps, e.pointer("/configMapRef/name"));
            }
        }
    }
    r
}

fn bound_to(pod: &Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
}

fn resource(plural: &str) -> Result<&'static crate::registry::Resource, ApiError> {
    crate::registry::find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))
}

/// The pods bound to `node` in `namespace` (all namespaces with `None`).
async fn pods_on(
    objects: &Objects,
    node: &str,
    namespace: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let page = objects.list(resource("pods")?, namespace, &ListOptions::default()).await?;
    Ok(page.items.into_iter().filter(|p| bound_to(p, node)).collect())
}

fn no_relationship(node: &str) -> Verdict {
    Verdict::NoOpinion(format!("no relationship found between node '{node}' and this object"))
}

fn rules() -> &'static [Rule] {
    static RULES: std::sync::OnceLock<Vec<Rule>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| super::policy::node_rules().iter().map(Rule::from_json).collect())
}

fn by_rules(info: &RequestInfo) -> Verdict {
    if rules().iter().any(|r| r.allows(info)) {
        Verdict::Allow
    } else {
        Verdict::NoOpinion(String::new())
    }
}

/// Decides a request of `node`.
pub async fn authorize(objects: &Objects, node: &str, info: &RequestInfo) -> Verdict {
    match restricted(objects, node, info).await {
        Ok(v) => v,
        Err(e) => Verdict::NoOpinion(e.message),
    }
}

async fn restricted(
    objects: &Objects,
    node: &str,
    info: &RequestInfo,
) -> Result<Verdict, ApiError> {
    if !info.is_resource_request {
        return Ok(by_rules(info));
    }
    let read = matches!(info.verb.as_str(), "get" | "list" | "watch");
    let ns = info.namespace.as_str();
    match (info.api_group.as_str(), info.resource.as_str(), info.subresource.as_str()) {
        (
            "",
            kind @ ("secrets" | "configmaps" | "persistentvolumeclaims" | "serviceaccounts"),
            sub,
        ) => {
            let token = kind == "serviceaccounts" && sub == "token" && info.verb == "create";
            let status = kind == "persistentvolumeclaims"
                && sub == "status"
                && matches!(info.verb.as_str(), "get" | "update" | "patch");
            let plain_read = sub.is_empty() && read;
            if !(token || status || plain_read) {
                return Ok(Verdict::NoOpinion(format!(
                    "can only read {kind} (or create service-account tokens) of its pods"
                )));
            }
            if info.name.is_empty() || ns.is_empty() {
                return Ok(Verdict::NoOpinion(format!("can only read named {kind}")));
            }
            let pods = pods_on(objects, node, Some(ns)).await?;
            let related = pods.iter().map(pod_refs).any(|r| match kind {
                "secrets" => r.secrets.contains(&info.name),
                "configmaps" => r.configmaps.contains(&info.name),
                "persistentvolumeclaims" => r.claims.contains(&info.name),
                _ => r.service_account == info.name,
            });
            Ok(if related { Verdict::Allow } else { no_relationship(node) })
        }
        ("", "persistentvolumes", "") if info.verb == "get" && !info.name.is_empty() => {
            let claims = resource("persistentvolumeclaims")?;
            for pod in pods_on(objects, node, None).await? {
                let pns =
                    pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
                for claim in pod_refs(&pod).claims {
                    if let Ok(pvc) = objects.get(claims, Some(pns), &claim).await {
                        if pvc.pointer("/spec/volumeName").and_then(Value::as_str)
                            == Some(&info.name)
                        {
                            return Ok(Verdict::Allow);
                        }
                    }
                }
            }
            Ok(no_relationship(node))
        }
        ("", "pods", "") if read => {
            if info.verb == "get" {
                let pod = match objects.get(resource("pods")?, Some(ns), &info.name).await {
                    Ok(p) => p,
                    Err(e) if e.code == 404 => return Ok(no_relationship(node)),
                    Err(e) => return Err(e),
                };
                return Ok(if bound_to(&pod, node) {
                    Verdict::Allow
                } else {
                    no_relationship(node)
                });
            }
            let scoped = info.field_selector.split(',').any(|term| {
                term.split_once('=').is_some_and(|(k, v)| {
                    k.trim() == "spec.nodeName" && v.trim_start_matches('=').trim() == node
                })
            });
            Ok(if scoped {
                Verdict::Allow
            } else {
                Verdict::NoOpinion(
                    "can only list/watch pods with spec.nodeName field selector".to_owned(),
                )
            })
        }
        ("", "nodes", _) if info.verb != "create" => {
            if info.name != node {
                return Ok(Verdict::NoOpinion(format!(
                    "node '{node}' cannot {} other nodes",
                    info.verb
                )));
            }
            Ok(by_rules(info))
        }
        ("coordination.k8s.io", "leases", _) => {
            if ns != LEASE_NAMESPACE || info.verb != "create" && info.name != node {
                return Ok(Verdict::NoOpinion(format!(
                    "can only access its own lease in the {LEASE_NAMESPACE} namespace"
                )));
            }
            Ok(by_rules(info))
        }
        _ => Ok(by_rules(info)),
    }
}

/// Whether NodeRestriction looks at this request of a node.
pub fn admission_applies(info: &RequestInfo) -> bool {
    if !info.is_resource_request {
        return false;
    }
    match (info.api_group.as_str(), info.resource.as_str()) {
        ("", "nodes") => matches!(info.verb.as_str(), "create" | "update" | "patch"),
        ("", "pods") => matches!(info.verb.as_str(), "create" | "update" | "patch" | "delete"),
        ("coordination.k8s.io", "leases") => info.verb == "create",
        ("", "serviceaccounts") => info.verb == "create" && info.subresource == "token",
        _ => false,
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(403, "Forbidden", message)
}

fn decode(headers_ct: &str, body: &[u8], schemas: &Schemas) -> Result<Value, ApiError> {
    let media = headers_ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json" => crate::pipeline::json_body(body),
        "application/apply-patch+yaml" => serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}"))),
        _ => {
            let mut h = HeaderMap::new();
            if let Ok(v) = headers_ct.parse() {
                h.insert(axum::http::header::CONTENT_TYPE, v);
            }
            crate::pipeline::decode_body(&h, body, schemas)
        }
    }
}

/// NodeRestriction for a write of `node` (see the module docs); `Err` is the 403 to answer.
pub async fn admit(
    objects: &Objects,
    schemas: &Schemas,
    node: &str,
    info: &RequestInfo,
    content_type: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let ns = info.namespace.as_str();
    match (info.resource.as_str(), info.verb.as_str()) {
        ("leases", _) => {
            let obj = decode(content_type, body, schemas)?;
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            if name != node {
                return Err(forbidden(format!(
                    "node \"{node}\" is not allowed to create lease \"{name}\""
                )));
            }
            Ok(())
        }
        ("serviceaccounts", _) => {
            let req = decode(content_type, body, schemas)?;
            let bound = req.pointer("/spec/boundObjectRef").filter(|b| !b.is_null());
            let pod_name = match bound {
                Some(b) if b.get("kind").and_then(Value::as_str) == Some("Pod") => {
                    b.get("name").and_then(Value::as_str).unwrap_or_default()
                }
                _ => {
                    return Err(forbidden(format!(
                        "node \"{node}\" requested a token not bound to a pod"
                    )))
                }
            };
            let pod = match objects.get(resource("pods")?, Some(ns), pod_name).await {
                Ok(p) => p,
                Err(e) if e.code == 404 => return Ok(()), // the handler answers 404
                Err(e) => return Err(e),
            };
            if !bound_to(&pod, node) {
                return Err(forbidden(format!(
                    "node \"{node}\" requested a token bound to a pod scheduled on another node"
                )));
            }
            if pod_refs(&pod).service_account != info.name {
                return Err(forbidden(format!(
                    "node requested token for a service account its pod \"{pod_name}\" does not use"
                )));
            }
            Ok(())
        }
        ("pods", "create") if info.subresource.is_empty() => {
            let pod = decode(content_type, body, schemas)?;
            let mirror = pod
                .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                .is_some_and(|v| v.is_string());
            if !mirror {
                return Err(forbidden(format!("pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods")));
            }
            if !bound_to(&pod, node) {
                return Err(forbidden(format!(
                    "node \"{node}\" can only create pods with spec.nodeName set to itself"
                )));
            }
            let refs = pod_refs(&pod);
            if !refs.secrets.is_empty() || !refs.configmaps.is_empty() || !refs.claims.is_empty() {
                return Err(forbidden(format!("node \"{node}\" can not create pods that reference secrets, configmaps or persistentvolumeclaims")));
            }
            Ok(())
        }
        ("pods", "create") if info.subresource != "eviction" => Ok(()),
        ("pods", _) if info.subresource.is_empty() && info.verb != "delete" => {
            Err(forbidden(format!("node \"{node}\" can only update pod status")))
        }
        ("pods", _) if matches!(info.subresource.as_str(), "" | "status" | "eviction") => {
            let pod = match objects.get(resource("pods")?, Some(ns), &info.name).await {
                Ok(p) => p,
                Err(e) if e.code == 404 => return Ok(()), // the handler answers 404
                Err(e) => return Err(e),
            };
            if !bound_to(&pod, node) {
                return Err(forbidden(format!(
                    "node \"{node}\" can only {} pods bound to itself",
                    if info.subresource == "status" {
                        "update the status of"
                    } else {
                        "delete or evict"
                    }
                )));
            }
            Ok(())
        }
        ("pods", _) => Ok(()),
        // A status write never changes labels (the strategy keeps everything but the status).
        ("nodes", _) if info.subresource == "status" => Ok(()),
        ("nodes", verb) => {
            let obj = decode(content_type, body, schemas)?;
            let current = if verb == "create" {
                let name =
                    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                if name != node {
                    return Err(forbidden(format!(
                        "node \"{node}\" is not allowed to modify node \"{name}\""
                    )));
                }
                Map::new()
            } else {
                match objects.get(resource("nodes")?, None, &info.name).await {
                    Ok(n) => n
                        .pointer("/metadata/labels")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                    Err(e) if e.code == 404 => Map::new(),
                    Err(e) => return Err(e),
                }
            };
            let media = content_type.split(';').next().unwrap_or_default().trim();
            let changed = changed_labels(&current, &obj, verb, media);
            let bad: Vec<&String> = changed.iter().filter(|k| !node_may_set(k)).collect();
            if !bad.is_empty() {
                return Err(forbidden(format!(
                    "node \"{node}\" is not allowed to modify labels: {}",
                    bad.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The label keys a write sets, changes or removes relative to `current`.
pub fn changed_labels(
    current: &Map<String, Value>,
    body: &Value,
    verb: &str,
    media: &str,
) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut note = |k: &str| {
        if !keys.iter().any(|x| x == k) {
            keys.push(k.to_owned());
        }
    };
    if verb == "patch" && media == "application/json-patch+json" {
        for op in body.as_array().into_iter().flatten() {
            for field in ["path", "from"] {
                let Some(path) = op.get(field).and_then(Value::as_str) else { continue };
                if let Some(key) = path.strip_prefix("/metadata/labels/") {
                    note(&key.replace("~1", "/").replace("~0", "~"));
                } else if path == "/metadata/labels" || path == "/metadata" || path.is_empty() {
                    // A whole-map replacement: compare with its value.
                    let empty = Map::new();
                    let value = op.get("value").map(|v| {
                        if path == "/metadata/labels" {
                            v.clone()
                        } else {
                            v.pointer(if path.is_empty() { "/metadata/labels" } else { "/labels" })
                                .cloned()
                                .unwrap_or(Value::Null)
                        }
                    });
                    let next = value.as_ref().and_then(Value::as_object).unwrap_or(&empty);
                    for k in current.keys().chain(next.keys()) {
                        if current.get(k) != next.get(k) {
                            note(k);
                        }
                    }
                }
            }
        }
        return keys;
    }
    let labels = body.pointer("/metadata/labels");
    if verb == "patch" {
        // Merge, strategic and apply patches: the keys they name, when they change them.
        for (k, v) in labels.and_then(Value::as_object).into_iter().flatten() {
            if (current.contains_key(k) || !v.is_null()) && current.get(k) != Some(v) {
                note(k);
            }
        }
        if labels.is_some_and(Value::is_null) {
            for k in current.keys() {
                note(k);
            }
        }
        return keys;
    }
    // Create and update carry the whole object.
    let empty = Map::new();
    let next = labels.and_then(Value::as_object).unwrap_or(&empty);
    for k in current.keys().chain(next.keys()) {
        if current.get(k) != next.get(k) {
            note(k);
        }
    }
    keys
}

/// Whether a node may set a label key on its Node (NodeRestriction's rule).
pub fn node_may_set(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else { return true };
    if prefix == "node-restriction.kubernetes.io"
        || prefix.ends_with(".node-restriction.kubernetes.io")
    {
        return false;
    }
    let restricted_domain = |d: &str| prefix == d || prefix.ends_with(&format!(".{d}"));
    if !restricted_domain("kubernetes.io") && !restricted_domain("k8s.io") {
        return true;
    }
    const ALLOWED: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    ALLOWED.contains(&key)
        || matches!(prefix, "kubelet.kubernetes.io" | "node.kubernetes.io")
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix.ends_with(".node.kubernetes.io")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_refs_find_every_kind_of_reference() {
        let pod = json!({
            "metadata": { "name": "p" },
            "spec": {
                "serviceAccountName": "runner",
                "imagePullSecrets": [{ "name": "pull" }],
                "volumes": [
                    { "name": "a", "secret": { "secretName": "vol-secret" } },
                    { "name": "b", "configMap": { "name": "vol-cm" } },
                    { "name": "c", "persistentVolumeClaim": { "claimName": "data" } },
                    { "name": "d", "projected": { "sources": [
                        { "secret": { "name": "proj-secret" } }, { "configMap": { "name": "proj-cm" } } ] } },
                    { "name": "e", "csi": { "driver": "x", "nodePublishSecretRef": { "name": "csi-secret" } } },
                    { "name": "scratch", "ephemeral": { "volumeClaimTemplate": {} } },
                ],
                "initContainers": [{ "name": "i", "envFrom": [{ "secretRef": { "name": "init-env" } }] }],
                "containers": [{ "name": "c", "env": [
                    { "name": "A", "valueFrom": { "secretKeyRef": { "name": "env-secret", "key": "k" } } },
                    { "name": "B", "valueFrom": { "configMapKeyRef": { "name": "env-cm", "key": "k" } } } ],
                    "envFrom": [{ "configMapRef": { "name": "envfrom-cm" } }] }],
            }
        });
        let r = pod_refs(&pod);
        assert_eq!(r.service_account, "runner");
        for s in ["pull", "vol-secret", "proj-secret", "csi-secret", "init-env", "env-secret"] {
            assert!(r.secrets.contains(&s.to_owned()), "{s}: {:?}", r.secrets);
        }
        for c in ["vol-cm", "proj-cm", "env-cm", "envfrom-cm"] {
            assert!(r.configmaps.contains(&c.to_owned()), "{c}");
        }
        assert_eq!(r.claims, vec!["data".to_owned(), "p-scratch".to_owned()]);
        assert_eq!(pod_refs(&json!({ "spec": {} })).service_account, "default");
    }

    #[test]
    fn node_identities_need_the_name_prefix_and_the_group() {
        assert_eq!(node_name(&User::new("system:node:n1", &[NODES_GROUP])), Some("n1"));
        assert_eq!(node_name(&User::new("system:node:n1", &[])), None);
        assert_eq!(node_name(&User::new("n1", &[NODES_GROUP])), None);
    }

    #[test]
    fn nodes_may_set_only_the_kubelets_own_labels() {
        for ok in [
            "app",
            "example.com/x",
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "kubelet.kubernetes.io/x",
        ] {
            assert!(node_may_set(ok), "{ok}");
        }
        for bad in [
            "node-restriction.kubernetes.io/x",
            "node-role.kubernetes.io/control-plane",
            "kubernetes.io/x",
            "foo.k8s.io/bar",
        ] {
            assert!(!node_may_set(bad), "{bad}");
        }
    }

    #[test]
    fn changed_labels_cover_updates_and_every_patch_type() {
        let current = json!({ "a": "1", "node-role.kubernetes.io/worker": "" });
        let current = current.as_object().unwrap();
        let put = json!({ "metadata": { "labels": { "a": "1", "node-role.kubernetes.io/worker": "", "b": "2" } } });
        assert_eq!(changed_labels(current, &put, "update", "application/json"), vec!["b"]);
        let put = json!({ "metadata": { "labels": { "a": "1" } } });
        assert_eq!(
            changed_labels(current, &put, "update", "application/json"),
            vec!["node-role.kubernetes.io/worker"]
        );
        let merge = json!({ "metadata": { "labels": { "a": "1", "x": null, "node-role.kubernetes.io/master": "" } } });
        assert_eq!(
            changed_labels(current, &merge, "patch", "application/merge-patch+json"),
            vec!["node-role.kubernetes.io/master"]
        );
        let jp = json!([{ "op": "add", "path": "/metadata/labels/node-role.kubernetes.io~1master", "value": "" }]);
        assert_eq!(
            changed_labels(current, &jp, "patch", "application/json-patch+json"),
            vec!["node-role.kubernetes.io/master"]
        );
        let jp = json!([{ "op": "replace", "path": "/metadata/labels", "value": { "a": "2" } }]);
        let mut keys = changed_labels(current, &jp, "patch", "application/json-patch+json");
        keys.sort();
        assert_eq!(keys, vec!["a", "node-role.kubernetes.io/worker"]);
    }
}
