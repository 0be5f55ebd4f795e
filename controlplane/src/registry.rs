//! The resource registry: every resource the API server serves, described as upstream's
//! discovery describes it.
//!
//! One static table ([`RESOURCES`]) gives, per resource, its group, version, kind, plural and
//! singular names, short names, categories, scope, verbs and subresources, and the OpenAPI
//! definition of its kind. Discovery ([`crate::discovery`]), OpenAPI ([`crate::schema`]) and
//! later the request router all read this table, so a resource is added in one place.
//!
//! The values follow what a Kubernetes 1.33 API server reports for the same resources
//! (`kubectl api-resources -o wide`, `/api/v1`, `/apis/<group>/<version>`); only the
//! subresources this server means to serve are listed (no `proxy`, no `pods/resize`).

/// The verbs of a resource that supports every collection and object operation.
const ALL: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
/// Namespaces have no `deletecollection`.
const NO_COLLECTION_DELETE: &[&str] =
    &["create", "delete", "get", "list", "patch", "update", "watch"];
/// Review resources (`tokenreviews`, `subjectaccessreviews`, …) are create-only.
const CREATE: &[&str] = &["create"];
/// The verbs of `status`-like subresources.
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];

/// A group, version and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gvk {
    /// The API group; empty for the core (legacy) group.
    pub group: &'static str,
    /// The version, e.g. `v1`.
    pub version: &'static str,
    /// The kind, e.g. `Deployment`.
    pub kind: &'static str,
}

impl Gvk {
    /// `apiVersion` as it appears in objects: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        group_version(self.group, self.version)
    }
}

/// `v1` for the core group, else `group/version`.
pub fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// A subresource such as `pods/status` or `deployments/scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    /// The name after the slash: `status`, `scale`, `log`, …
    pub name: &'static str,
    /// The kind the subresource takes and returns (`Scale` for `scale`, the parent's kind for
    /// `status`).
    pub kind: Gvk,
    /// Supported verbs.
    pub verbs: &'static [&'static str],
}

/// One resource as discovery reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// Group, version and kind of the objects.
    pub gvk: Gvk,
    /// The plural, lower-case resource name used in URLs: `deployments`.
    pub plural: &'static str,
    /// The singular name: `deployment`.
    pub singular: &'static str,
    /// Short names (`deploy`).
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Supported verbs, sorted as upstream sorts them.
    pub verbs: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [Subresource],
    /// The OpenAPI definition name of the kind, e.g. `io.k8s.api.apps.v1.Deployment`.
    pub definition: &'static str,
}

const fn gvk(group: &'static str, version: &'static str, kind: &'static str) -> Gvk {
    Gvk { group, version, kind }
}

const fn status(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    Subresource { name: "status", kind: gvk(group, version, kind), verbs: GET_PATCH_UPDATE }
}

const fn scale() -> Subresource {
    Subresource { name: "scale", kind: gvk("autoscaling", "v1", "Scale"), verbs: GET_PATCH_UPDATE }
}

#[allow(clippy::too_many_arguments)] // a table row; named fields would triple the table's size
const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    namespaced: bool,
    verbs: &'static [&'static str],
    subresources: &'static [Subresource],
    definition: &'static str,
) -> Resource {
    Resource {
        gvk: gvk(group, version, kind),
        plural,
        singular,
        short_names,
        categories,
        namespaced,
        verbs,
        subresources,
        definition,
    }
}

const ALL_CATEGORY: &[&str] = &["all"];

/// Every resource served, grouped by group version in the order discovery lists them.
pub static RESOURCES: &[Resource] = &[
    // core/v1
    res(
        "",
        "v1",
        "Binding",
        "bindings",
        "binding",
        &[],
        &[],
        true,
        CREATE,
        &[],
        "io.k8s.api.core.v1.Binding",
    ),
    res(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        &["cm"],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.core.v1.ConfigMap",
    ),
    res(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        &["ep"],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.core.v1.Endpoints",
    ),
    res(
        "",
        "v1",
        "Event",
        "events",
        "event",
        &["ev"],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.core.v1.Event",
    ),
    res(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        &["ns"],
        &[],
        false,
        NO_COLLECTION_DELETE,
        &[
            Subresource { name: "finalize", kind: gvk("", "v1", "Namespace"), verbs: &["update"] },
            status("", "v1", "Namespace"),
        ],
        "io.k8s.api.core.v1.Namespace",
    ),
    res(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        &["no"],
        &[],
        false,
        ALL,
        &[status("", "v1", "Node")],
        "io.k8s.api.core.v1.Node",
    ),
    res(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        &["po"],
        ALL_CATEGORY,
        true,
        ALL,
        &[
            Subresource {
                name: "attach",
                kind: gvk("", "v1", "PodAttachOptions"),
                verbs: &["create", "get"],
            },
            Subresource { name: "binding", kind: gvk("", "v1", "Binding"), verbs: CREATE },
            Subresource { name: "eviction", kind: gvk("policy", "v1", "Eviction"), verbs: CREATE },
            Subresource {
                name: "exec",
                kind: gvk("", "v1", "PodExecOptions"),
                verbs: &["create", "get"],
            },
            Subresource { name: "log", kind: gvk("", "v1", "Pod"), verbs: &["get"] },
            Subresource {
                name: "portforward",
                kind: gvk("", "v1", "PodPortForwardOptions"),
                verbs: &["create", "get"],
            },
            status("", "v1", "Pod"),
        ],
        "io.k8s.api.core.v1.Pod",
    ),
    res(
        "",
        "v1",
        "Secret",
        "secrets",
        "secret",
        &[],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.core.v1.Secret",
    ),
    res(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        &["sa"],
        &[],
        true,
        ALL,
        &[Subresource {
            name: "token",
            kind: gvk("authentication.k8s.io", "v1", "TokenRequest"),
            verbs: CREATE,
        }],
        "io.k8s.api.core.v1.ServiceAccount",
    ),
    res(
        "",
        "v1",
        "Service",
        "services",
        "service",
        &["svc"],
        ALL_CATEGORY,
        true,
        ALL,
        &[status("", "v1", "Service")],
        "io.k8s.api.core.v1.Service",
    ),
    // apps/v1
    res(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        &[],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.apps.v1.ControllerRevision",
    ),
    res(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        &["ds"],
        ALL_CATEGORY,
        true,
        ALL,
        &[status("apps", "v1", "DaemonSet")],
        "io.k8s.api.apps.v1.DaemonSet",
    ),
    res(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        &["deploy"],
        ALL_CATEGORY,
        true,
        ALL,
        &[scale(), status("apps", "v1", "Deployment")],
        "io.k8s.api.apps.v1.Deployment",
    ),
    res(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        &["rs"],
        ALL_CATEGORY,
        true,
        ALL,
        &[scale(), status("apps", "v1", "ReplicaSet")],
        "io.k8s.api.apps.v1.ReplicaSet",
    ),
    res(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        &["sts"],
        ALL_CATEGORY,
        true,
        ALL,
        &[scale(), status("apps", "v1", "StatefulSet")],
        "io.k8s.api.apps.v1.StatefulSet",
    ),
    // events.k8s.io/v1
    res(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        &["ev"],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.events.v1.Event",
    ),
    // authentication.k8s.io/v1
    res(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        "tokenreview",
        &[],
        &[],
        false,
        CREATE,
        &[],
        "io.k8s.api.authentication.v1.TokenReview",
    ),
    // authorization.k8s.io/v1
    res(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        &[],
        &[],
        false,
        CREATE,
        &[],
        "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
    ),
    res(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        "subjectaccessreview",
        &[],
        &[],
        false,
        CREATE,
        &[],
        "io.k8s.api.authorization.v1.SubjectAccessReview",
    ),
    // batch/v1
    res(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        &["cj"],
        ALL_CATEGORY,
        true,
        ALL,
        &[status("batch", "v1", "CronJob")],
        "io.k8s.api.batch.v1.CronJob",
    ),
    res(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        &[],
        ALL_CATEGORY,
        true,
        ALL,
        &[status("batch", "v1", "Job")],
        "io.k8s.api.batch.v1.Job",
    ),
    // certificates.k8s.io/v1
    res(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        &["csr"],
        &[],
        false,
        ALL,
        &[
            Subresource {
                name: "approval",
                kind: gvk("certificates.k8s.io", "v1", "CertificateSigningRequest"),
                verbs: GET_PATCH_UPDATE,
            },
            status("certificates.k8s.io", "v1", "CertificateSigningRequest"),
        ],
        "io.k8s.api.certificates.v1.CertificateSigningRequest",
    ),
    // policy/v1
    res(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        &["pdb"],
        &[],
        true,
        ALL,
        &[status("policy", "v1", "PodDisruptionBudget")],
        "io.k8s.api.policy.v1.PodDisruptionBudget",
    ),
    // rbac.authorization.k8s.io/v1
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        &[],
        &[],
        false,
        ALL,
        &[],
        "io.k8s.api.rbac.v1.ClusterRoleBinding",
    ),
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        &[],
        &[],
        false,
        ALL,
        &[],
        "io.k8s.api.rbac.v1.ClusterRole",
    ),
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        &[],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.rbac.v1.RoleBinding",
    ),
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        &[],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.rbac.v1.Role",
    ),
    // coordination.k8s.io/v1
    res(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        &[],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.coordination.v1.Lease",
    ),
    // discovery.k8s.io/v1
    res(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        &[],
        &[],
        true,
        ALL,
        &[],
        "io.k8s.api.discovery.v1.EndpointSlice",
    ),
];

/// The API groups (not the core group), in the order `/apis` lists them, each with its versions
/// (preferred first).
pub static GROUPS: &[(&str, &[&str])] = &[
    ("apps", &["v1"]),
    ("events.k8s.io", &["v1"]),
    ("authentication.k8s.io", &["v1"]),
    ("authorization.k8s.io", &["v1"]),
    ("batch", &["v1"]),
    ("certificates.k8s.io", &["v1"]),
    ("policy", &["v1"]),
    ("rbac.authorization.k8s.io", &["v1"]),
    ("coordination.k8s.io", &["v1"]),
    ("discovery.k8s.io", &["v1"]),
];

/// The resources of one group version, in table order.
pub fn resources_of<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES.iter().filter(move |r| r.gvk.group == group && r.gvk.version == version)
}

/// Whether `group`/`version` is served (the core group is `""`/`v1`).
pub fn serves(group: &str, version: &str) -> bool {
    resources_of(group, version).next().is_some()
}

/// Finds a resource by group, version and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    resources_of(group, version).find(|r| r.plural == plural)
}

/// Finds the resource whose objects have kind `gvk`.
pub fn by_kind(gvk: &Gvk) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.gvk == *gvk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_of_the_table_is_listed_and_every_listed_one_has_resources() {
        for r in RESOURCES {
            if r.gvk.group.is_empty() {
                assert_eq!(r.gvk.version, "v1");
            } else {
                let (_, versions) = GROUPS
                    .iter()
                    .find(|(g, _)| *g == r.gvk.group)
                    .unwrap_or_else(|| panic!("group {} not in GROUPS", r.gvk.group));
                assert!(versions.contains(&r.gvk.version));
            }
        }
        for (g, versions) in GROUPS {
            for v in *versions {
                assert!(serves(g, v), "{g}/{v} has no resource");
            }
        }
    }

    #[test]
    fn plural_names_are_unique_within_a_group_version() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(
                    !(a.gvk.group == b.gvk.group
                        && a.gvk.version == b.gvk.version
                        && a.plural == b.plural),
                    "{} twice",
                    a.plural
                );
            }
        }
    }

    #[test]
    fn verbs_are_sorted_like_upstream_discovery() {
        for r in RESOURCES {
            let mut sorted = r.verbs.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, r.verbs, "{}", r.plural);
        }
    }

    #[test]
    fn upstream_short_names_and_categories_are_reported() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        assert_eq!(deploy.short_names, ["deploy"]);
        assert_eq!(deploy.categories, ["all"]);
        let ns = find("", "v1", "namespaces").expect("namespaces");
        assert!(!ns.namespaced);
        assert!(!ns.verbs.contains(&"deletecollection"));
        assert_eq!(find("", "v1", "pods").map(|p| p.short_names), Some(&["po"][..]));
        let scale = deploy.subresources.iter().find(|s| s.name == "scale").expect("scale");
        assert_eq!(scale.kind.api_version(), "autoscaling/v1");
    }
}
