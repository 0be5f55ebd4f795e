//! The default RBAC policy every cluster starts with, after upstream's bootstrap policy
//! (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`): the user-facing roles (`cluster-admin`,
//! `admin`, `edit`, `view`, the last three aggregated from the `system:aggregate-to-*` roles),
//! discovery and self-review roles every authenticated user has, the component roles
//! (`system:node`, `system:node-proxier`, `system:kube-scheduler`, `system:volume-scheduler`,
//! `system:kube-controller-manager`, `system:kube-dns`), the node-bootstrap CSR roles and their bindings to
//! `system:bootstrappers` and `system:nodes` (what kubeadm adds for TLS bootstrapping).
//!
//! [`ensure`] runs at every start: missing objects are created; existing ones annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "true"` get the default rules (or
//! aggregation rule) and subjects back, as upstream's reconciliation does; an administrator
//! who sets the annotation to `false` keeps their changes. The aggregated roles' `rules` are
//! filled in by the aggregation controller (`super::Auth`'s refresh task).

use serde_json::{json, Value};

use crate::objects::{ApiError, Result};
use crate::pipeline::{Part, WriteOptions, Writer};
use crate::registry;
use crate::server::ApiState;

/// The field manager of the default policy.
pub const MANAGER: &str = "kube-apiserver";
/// The annotation that lets [`ensure`] reconcile an object.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const RW: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({ "apiGroups": groups, "resources": resources, "verbs": verbs })
}

fn named(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Value {
    json!({ "apiGroups": groups, "resources": resources, "resourceNames": names, "verbs": verbs })
}

fn urls(urls: &[&str], verbs: &[&str]) -> Value {
    json!({ "nonResourceURLs": urls, "verbs": verbs })
}

fn meta(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in extra_labels {
        labels.insert((*k).to_owned(), json!(v));
    }
    json!({ "name": name, "labels": labels, "annotations": { AUTOUPDATE: "true" } })
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": meta(name, labels), "rules": rules })
}

fn aggregated(name: &str, labels: &[(&str, &str)], to: &str) -> Value {
    json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": meta(name, labels),
            "aggregationRule": { "clusterRoleSelectors": [
                { "matchLabels": { format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true" } }
            ] },
            "rules": [] })
}

const TO_ADMIN: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-admin", "true");
const TO_EDIT: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-edit", "true");
const TO_VIEW: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-view", "true");

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let events = rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]);
    vec![
        role("cluster-admin", &[], vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        role(
            "system:discovery",
            &[],
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            ],
        ),
        role(
            "system:monitoring",
            &[],
            vec![urls(
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
                &["get"],
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
                &["get"],
            )],
        ),
        aggregated("admin", &[], "admin"),
        aggregated("edit", &[TO_ADMIN], "edit"),
        aggregated("view", &[TO_EDIT], "view"),
        role(
            "system:aggregate-to-admin",
            &[TO_ADMIN],
            vec![
                rule(&["rbac.authorization.k8s.io"], &["rolebindings", "roles"], RW),
                rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            &[TO_EDIT],
            vec![
                rule(
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                    READ,
                ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(
                    &[""],
                    &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
                    WRITE,
                ),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                    WRITE,
                ),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["batch"], &["cronjobs", "jobs"], WRITE),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
            ],
        ),
        role(
            "system:aggregate-to-view",
            &[TO_VIEW],
            vec![
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                    READ,
                ),
                rule(
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                    READ,
                ),
                rule(&[""], &["namespaces"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                    READ,
                ),
                rule(
                    &["autoscaling"],
                    &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
                    READ,
                ),
                rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
                rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                    READ,
                ),
                rule(&["events.k8s.io"], &["events"], READ),
            ],
        ),
        role("system:node", &[], node_rules()),
        role(
            "system:node-proxier",
            &[],
            vec![
                rule(&[""], &["endpoints", "services"], &["list", "watch"]),
                rule(&[""], &["nodes"], READ),
                events.clone(),
                rule(&["discovery.k8s.io"], &["endpointslices"], &["list", "watch"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            &[],
            vec![
                events.clone(),
                rule(&["coordination.k8s.io"], &["leases"], &["create"]),
                named(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["kube-scheduler"],
                    &["get", "update"],
                ),
                rule(&[""], &["nodes"], READ),
                rule(&[""], &["namespaces"], &["list", "watch"]),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
                rule(&[""], &["bindings", "pods/binding"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["replicationcontrollers", "services"], READ),
                rule(&["apps"], &["replicasets", "statefulsets"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(&[""], &["persistentvolumeclaims", "persistentvolumes"], READ),
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
                rule(
                    &["storage.k8s.io"],
                    &["csidrivers", "csinodes", "csistoragecapacities"],
                    READ,
                ),
            ],
        ),
        role(
            "system:kube-controller-manager",
            &[],
            vec![
                events,
                rule(&["coordination.k8s.io"], &["leases"], &["create"]),
                named(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["kube-controller-manager"],
                    &["get", "update"],
                ),
                rule(&[""], &["secrets", "serviceaccounts"], &["create"]),
                rule(&[""], &["secrets"], &["delete"]),
                rule(&[""], &["configmaps", "namespaces", "secrets", "serviceaccounts"], &["get"]),
                rule(&[""], &["secrets", "serviceaccounts"], &["update"]),
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
                rule(&["*"], &["*"], &["list", "watch"]),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
            ],
        ),
        role(
            "system:volume-scheduler",
            &[],
            vec![
                rule(
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                    &["get", "list", "patch", "update", "watch"],
                ),
                rule(&["storage.k8s.io"], &["storageclasses"], READ),
            ],
        ),
        role(
            "system:kube-dns",
            &[],
            vec![rule(&[""], &["endpoints", "services"], &["list", "watch"])],
        ),
        role(
            "system:node-bootstrapper",
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
                &["create"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
                &["create"],
            )],
        ),
        role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            ],
        ),
    ]
}

/// The rules of `system:node`: what the node authorizer lets a node do beyond the objects it
/// restricts to the node's own pods (upstream's `NodeRules`).
pub fn node_rules() -> Vec<Value> {
    vec![
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews", "subjectaccessreviews"],
            &["create"],
        ),
        rule(&[""], &["services"], READ),
        rule(&[""], &["nodes"], &["create", "get", "list", "watch"]),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(&[""], &["nodes"], &["patch", "update"]),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
        rule(&[""], &["pods"], READ),
        rule(&[""], &["pods"], &["create", "delete"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(&[""], &["configmaps", "secrets"], READ),
        rule(&[""], &["persistentvolumeclaims", "persistentvolumes"], &["get"]),
        rule(&[""], &["endpoints"], &["get"]),
        rule(
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
            &["create", "get", "list", "watch"],
        ),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["create", "delete", "get", "patch", "update"],
        ),
        rule(&[""], &["persistentvolumeclaims/status"], &["get", "patch", "update"]),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&["node.k8s.io"], &["runtimeclasses"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
    ]
}

fn binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": meta(name, &[]),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": subjects })
}

fn group(name: &str) -> Value {
    json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name })
}

fn user(name: &str) -> Value {
    json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name })
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    let same = |role: &str, subjects: Vec<Value>| binding(role, role, subjects);
    vec![
        same("cluster-admin", vec![group("system:masters")]),
        same("system:monitoring", vec![group("system:monitoring")]),
        same("system:discovery", vec![group("system:authenticated")]),
        same("system:basic-user", vec![group("system:authenticated")]),
        same(
            "system:public-info-viewer",
            vec![group("system:authenticated"), group("system:unauthenticated")],
        ),
        same("system:service-account-issuer-discovery", vec![group("system:serviceaccounts")]),
        same("system:node-proxier", vec![user("system:kube-proxy")]),
        same("system:kube-controller-manager", vec![user("system:kube-controller-manager")]),
        same("system:kube-scheduler", vec![user("system:kube-scheduler")]),
        same("system:volume-scheduler", vec![user("system:kube-scheduler")]),
        same(
            "system:kube-dns",
            vec![
                json!({ "kind": "ServiceAccount", "name": "kube-dns", "namespace": "kube-system" }),
            ],
        ),
        same("system:node", vec![]),
        // TLS bootstrapping (kubeadm's bindings): bootstrap tokens may ask for a node client
        // certificate, nodes may renew their own.
        binding(
            "keelson:kubelet-bootstrap",
            "system:node-bootstrapper",
            vec![group("system:bootstrappers")],
        ),
        binding(
            "keelson:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![group("system:bootstrappers")],
        ),
        binding(
            "keelson:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![group("system:nodes")],
        ),
    ]
}

fn writer<'a>(state: &'a ApiState, plural: &str) -> Result<Writer<'a>> {
    let resource = registry::find("rbac.authorization.k8s.io", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let objects = state.objects().ok_or_else(|| ApiError::internal("no store to bootstrap"))?;
    Ok(Writer {
        objects,
        schemas: state.schemas(),
        admission: state.admission(),
        resource,
        namespace: None,
        options: WriteOptions {
            dry_run: false,
            manager: MANAGER.into(),
            validation: crate::fields::FieldValidation::Strict,
            force: false,
        },
    })
}

/// Creates `obj` unless it exists; an existing one that allows auto-update gets `obj`'s
/// `fields` and labels back when they differ.
async fn reconcile(w: &Writer<'_>, obj: Value, fields: &[&str]) -> Result<()> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    match w.objects.get(w.resource, None, &name).await {
        Ok(mut current) => {
            if current.pointer(&format!("/metadata/annotations/{}", AUTOUPDATE.replace('/', "~1")))
                != Some(&json!("true"))
            {
                return Ok(());
            }
            let mut changed = false;
            for f in fields {
                if current.get(*f) != obj.get(*f) {
                    current[*f] = obj[*f].clone();
                    changed = true;
                }
            }
            if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
                for (k, v) in labels {
                    if current["metadata"]["labels"].get(k) != Some(v) {
                        current["metadata"]["labels"][k] = v.clone();
                        changed = true;
                    }
                }
            }
            if !changed {
                return Ok(());
            }
            if let Some(m) = current.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            w.update(&name, Part::Object, current).await?;
            Ok(())
        }
        Err(e) if e.code == 404 => match w.create(obj).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Ensures the default ClusterRoles and ClusterRoleBindings.
pub async fn ensure(state: &ApiState) -> Result<()> {
    let w = writer(state, "clusterroles")?;
    for r in cluster_roles() {
        let fields: &[&str] =
            if r.get("aggregationRule").is_some() { &["aggregationRule"] } else { &["rules"] };
        reconcile(&w, r, fields).await?;
    }
    let w = writer(state, "clusterrolebindings")?;
    for b in cluster_role_bindings() {
        reconcile(&w, b, &["subjects"]).await?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::auth::rbac::{Objects, Snapshot};
    use crate::auth::request::parse;
    use crate::auth::User;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            extra: Default::default(),
        }
    }

    fn defaults() -> Snapshot {
        Snapshot::build(
            &Objects {
                cluster_roles: cluster_roles(),
                cluster_role_bindings: cluster_role_bindings(),
                ..Default::default()
            },
            1,
        )
    }

    #[test]
    fn every_default_binding_names_a_default_role() {
        let roles: Vec<String> = cluster_roles()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        for b in cluster_role_bindings() {
            let role = b["roleRef"]["name"].as_str().unwrap();
            assert!(roles.iter().any(|r| r == role), "{role}");
        }
    }

    #[test]
    fn the_default_policy_grants_discovery_and_self_review_to_everyone_authenticated() {
        let s = defaults();
        let anyone = user("someone", &["system:authenticated"]);
        assert!(s.allows(&anyone, &parse("GET", "/apis", None)));
        assert!(s.allows(&anyone, &parse("GET", "/openapi/v3/apis/apps/v1", None)));
        assert!(s.allows(
            &anyone,
            &parse("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", None)
        ));
        assert!(!s.allows(&anyone, &parse("GET", "/api/v1/namespaces/default/pods", None)));
        assert!(!s.allows(&anyone, &parse("GET", "/metrics", None)));
        let admin = user("root", &["system:masters"]);
        assert!(s.allows(&admin, &parse("DELETE", "/api/v1/nodes/n1", None)));
        assert!(s.allows(&admin, &parse("GET", "/metrics", None)));
    }

    #[test]
    fn view_edit_and_admin_aggregate_in_order() {
        let s = defaults();
        let allows = |role: &str, method: &str, path: &str| {
            s.cluster_role_rules(role).unwrap().iter().any(|r| r.allows(&parse(method, path, None)))
        };
        let pods = "/api/v1/namespaces/a/pods";
        assert!(allows("view", "GET", pods) && !allows("view", "POST", pods));
        assert!(allows("view", "GET", "/api/v1/namespaces/a/pods/p/log"));
        assert!(!allows("view", "GET", "/api/v1/namespaces/a/secrets/s"), "view reads no secrets");
        assert!(allows("edit", "GET", pods) && allows("edit", "POST", pods));
        assert!(allows("edit", "GET", "/api/v1/namespaces/a/pods/p/exec"));
        assert!(!allows("edit", "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/a/roles"));
        assert!(allows("admin", "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/a/roles"));
        assert!(allows("admin", "DELETE", pods));
    }
}
