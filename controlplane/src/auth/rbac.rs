//! RBAC, as upstream's `plugin/pkg/auth/authorizer/rbac`: Roles, ClusterRoles and their
//! bindings decide resource and non-resource requests.
//!
//! - [`Rule::allows`] is upstream's `RuleAllows`: verbs, API groups, resources (`*`,
//!   `pods/status`, `*/scale`), `resourceNames` and `nonResourceURLs` (`*`, exact, or a
//!   trailing-`*` prefix).
//! - A ClusterRoleBinding grants its ClusterRole everywhere; a RoleBinding grants its Role or
//!   ClusterRole in its own namespace. Subjects are users, groups and service accounts
//!   (`system:serviceaccount:<ns>:<name>`, the binding's namespace when the subject has none).
//! - [`Snapshot`] is the in-memory index one authorization reads: rules by role, bindings by
//!   namespace, built from a list of the four kinds. ClusterRole aggregation
//!   ([`aggregate`]) is applied while building, to a fixed point (`edit` aggregates into
//!   `admin`), so a request never waits for the aggregation controller's write-back.
//!   [`Index`] holds the current snapshot behind a lock that readers hold for a pointer copy;
//!   `super::Auth` refreshes it from a store watch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};

use super::request::RequestInfo;
use super::User;

/// One `PolicyRule`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// `verbs`.
    pub verbs: Vec<String>,
    /// `apiGroups`.
    pub api_groups: Vec<String>,
    /// `resources`.
    pub resources: Vec<String>,
    /// `resourceNames`.
    pub resource_names: Vec<String>,
    /// `nonResourceURLs`.
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Rule {
    /// A rule from its JSON (`rbac.authorization.k8s.io/v1` `PolicyRule`).
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// The rule's JSON.
    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        let mut put = |k: &str, v: &[String]| {
            if !v.is_empty() {
                o.insert(k.to_owned(), json!(v));
            }
        };
        put("apiGroups", &self.api_groups);
        put("nonResourceURLs", &self.non_resource_urls);
        put("resourceNames", &self.resource_names);
        put("resources", &self.resources);
        o.insert("verbs".to_owned(), json!(self.verbs));
        Value::Object(o)
    }

    /// Whether the rule allows the request.
    pub fn allows(&self, r: &RequestInfo) -> bool {
        if !has(&self.verbs, &r.verb) {
            return false;
        }
        if r.is_resource_request {
            has(&self.api_groups, &r.api_group)
                && self.resource_matches(&r.resource, &r.subresource)
                && (self.resource_names.is_empty() || self.resource_names.contains(&r.name))
        } else {
            self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == r.path
                    || u.strip_suffix('*').is_some_and(|prefix| r.path.starts_with(prefix))
            })
        }
    }

    fn resource_matches(&self, resource: &str, sub: &str) -> bool {
        self.resources.iter().any(|rule| {
            if rule == "*" {
                return true;
            }
            if sub.is_empty() {
                return rule == resource;
            }
            // `pods/status`, or `*/status` for every resource's status.
            rule.split_once('/').is_some_and(|(r, s)| (r == resource || r == "*") && s == sub)
        })
    }
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

/// A binding's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A user by name.
    User(String),
    /// A group.
    Group(String),
    /// A service account: namespace and name.
    ServiceAccount(String, String),
}

impl Subject {
    fn from_json(v: &Value, binding_namespace: &str) -> Option<Subject> {
        let name = v.get("name")?.as_str()?.to_owned();
        match v.get("kind")?.as_str()? {
            "User" => Some(Subject::User(name)),
            "Group" => Some(Subject::Group(name)),
            "ServiceAccount" => {
                let ns = v
                    .get("namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_namespace);
                Some(Subject::ServiceAccount(ns.to_owned(), name))
            }
            _ => None,
        }
    }

    fn applies_to(&self, user: &User) -> bool {
        match self {
            Subject::User(n) => *n == user.name,
            Subject::Group(g) => user.groups.iter().any(|ug| ug == g),
            Subject::ServiceAccount(ns, n) => {
                user.name.strip_prefix("system:serviceaccount:").is_some_and(|rest| {
                    rest.split_once(':').is_some_and(|(uns, un)| uns == ns && un == n)
                })
            }
        }
    }
}

/// A binding: a role reference and its subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    /// `true`: a ClusterRole, else a Role of the binding's namespace.
    cluster_role: bool,
    role: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn from_json(v: &Value, namespace: &str) -> Option<Binding> {
        let role_ref = v.get("roleRef")?;
        let cluster_role = match role_ref.get("kind")?.as_str()? {
            "ClusterRole" => true,
            "Role" => false,
            _ => return None,
        };
        let subjects = v
            .get("subjects")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| Subject::from_json(s, namespace)).collect())
            .unwrap_or_default();
        Some(Binding { cluster_role, role: role_ref.get("name")?.as_str()?.to_owned(), subjects })
    }
}

/// Objects of the four RBAC kinds, as listed from the store.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// ClusterRoles.
    pub cluster_roles: Vec<Value>,
    /// Roles.
    pub roles: Vec<Value>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: Vec<Value>,
    /// RoleBindings.
    pub role_bindings: Vec<Value>,
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

fn namespace_of(v: &Value) -> &str {
    v.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
}

fn rules_of(v: &Value) -> Vec<Rule> {
    v.get("rules")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Rule::from_json).collect())
        .unwrap_or_default()
}

/// Whether `labels` satisfy a `LabelSelector` (matchLabels and matchExpressions with In,
/// NotIn, Exists, DoesNotExist). An empty selector matches everything, a malformed one nothing.
pub fn selector_matches(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(m) = selector.get("matchLabels").and_then(Value::as_object) {
        if !m.iter().all(|(k, v)| v.as_str().is_some_and(|v| label(k) == Some(v))) {
            return false;
        }
    }
    let exprs = selector.get("matchExpressions").and_then(Value::as_array);
    exprs.is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let Some(key) = e.get("key").and_then(Value::as_str) else { return false };
            let values = strings(e, "values");
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => label(key).is_some_and(|l| values.iter().any(|v| v == l)),
                Some("NotIn") => label(key).is_none_or(|l| values.iter().all(|v| v != l)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        })
    })
}

/// The rules of every ClusterRole after aggregation: a role with an `aggregationRule` gets
/// the union (in order, without duplicates) of the rules of every other ClusterRole whose
/// labels match one of its selectors, repeated until nothing changes so aggregated roles can
/// themselves be aggregated.
pub fn aggregate(cluster_roles: &[Value]) -> BTreeMap<String, Vec<Rule>> {
    let mut rules: BTreeMap<String, Vec<Rule>> =
        cluster_roles.iter().map(|r| (name_of(r).to_owned(), rules_of(r))).collect();
    let empty = serde_json::Map::new();
    // Each pass settles at least one more level of nesting; the depth is bounded by the roles.
    for _ in 0..=cluster_roles.len() {
        let mut changed = false;
        for role in cluster_roles {
            let Some(selectors) =
                role.pointer("/aggregationRule/clusterRoleSelectors").and_then(Value::as_array)
            else {
                continue;
            };
            let me = name_of(role);
            let mut union: Vec<Rule> = Vec::new();
            for other in cluster_roles {
                let name = name_of(other);
                if name == me {
                    continue;
                }
                let labels =
                    other.pointer("/metadata/labels").and_then(Value::as_object).unwrap_or(&empty);
                if selectors.iter().any(|s| selector_matches(s, labels)) {
                    for rule in rules.get(name).into_iter().flatten() {
                        if !union.contains(rule) {
                            union.push(rule.clone());
                        }
                    }
                }
            }
            if rules.get(me) != Some(&union) {
                rules.insert(me.to_owned(), union);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    rules
}

/// The index one authorization reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store revision it was built at.
    pub revision: i64,
    cluster_roles: BTreeMap<String, Vec<Rule>>,
    /// Roles by (namespace, name).
    roles: HashMap<(String, String), Vec<Rule>>,
    cluster_bindings: Vec<Binding>,
    /// RoleBindings by namespace.
    bindings: HashMap<String, Vec<Binding>>,
}

impl Snapshot {
    /// Indexes `objects` listed at `revision`.
    pub fn build(objects: &Objects, revision: i64) -> Snapshot {
        let cluster_roles = aggregate(&objects.cluster_roles);
        let roles = objects
            .roles
            .iter()
            .map(|r| ((namespace_of(r).to_owned(), name_of(r).to_owned()), rules_of(r)))
            .collect();
        let cluster_bindings = objects
            .cluster_role_bindings
            .iter()
            .filter_map(|b| Binding::from_json(b, ""))
            .filter(|b| b.cluster_role)
            .collect();
        let mut bindings: HashMap<String, Vec<Binding>> = HashMap::new();
        for b in &objects.role_bindings {
            let ns = namespace_of(b);
            if let Some(binding) = Binding::from_json(b, ns) {
                bindings.entry(ns.to_owned()).or_default().push(binding);
            }
        }
        Snapshot { revision, cluster_roles, roles, cluster_bindings, bindings }
    }

    /// The effective (aggregated) rules of a ClusterRole.
    pub fn cluster_role_rules(&self, name: &str) -> Option<&[Rule]> {
        self.cluster_roles.get(name).map(Vec::as_slice)
    }

    /// Whether any binding that applies to `user` grants a rule allowing the request:
    /// ClusterRoleBindings everywhere, RoleBindings of the request's namespace.
    pub fn allows(&self, user: &User, r: &RequestInfo) -> bool {
        let grants = |b: &Binding, namespace: &str| {
            if !b.subjects.iter().any(|s| s.applies_to(user)) {
                return false;
            }
            let rules = if b.cluster_role {
                self.cluster_roles.get(&b.role)
            } else {
                self.roles.get(&(namespace.to_owned(), b.role.clone()))
            };
            rules.is_some_and(|rules| rules.iter().any(|rule| rule.allows(r)))
        };
        if self.cluster_bindings.iter().any(|b| grants(b, "")) {
            return true;
        }
        if r.is_resource_request && !r.namespace.is_empty() {
            if let Some(bs) = self.bindings.get(&r.namespace) {
                return bs.iter().any(|b| grants(b, &r.namespace));
            }
        }
        false
    }
}

/// The current [`Snapshot`], swapped whole when the RBAC objects change.
#[derive(Debug, Default)]
pub struct Index {
    current: RwLock<Arc<Snapshot>>,
}

impl Index {
    /// The snapshot to decide on.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the snapshot unless the current one is newer.
    pub fn set(&self, next: Snapshot) {
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if next.revision >= g.revision {
            *g = Arc::new(next);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::auth::request::parse;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            extra: BTreeMap::new(),
        }
    }

    fn rule(v: Value) -> Rule {
        Rule::from_json(&v)
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_subresources() {
        let r = rule(
            json!({ "apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"] }),
        );
        assert!(r.allows(&parse("GET", "/api/v1/namespaces/a/pods", None)));
        assert!(r.allows(&parse("GET", "/api/v1/namespaces/a/pods/p/log", None)));
        assert!(!r.allows(&parse("GET", "/api/v1/namespaces/a/pods/p/status", None)));
        assert!(!r.allows(&parse("POST", "/api/v1/namespaces/a/pods", None)));
        assert!(!r.allows(&parse("GET", "/apis/apps/v1/namespaces/a/pods", None)));
        let star = rule(json!({ "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"] }));
        assert!(star.allows(&parse("DELETE", "/apis/apps/v1/namespaces/a/deployments", None)));
        assert!(star.allows(&parse("PUT", "/api/v1/namespaces/a/pods/p/status", None)));
        assert!(!star.allows(&parse("GET", "/healthz", None)), "resource rules skip paths");
        let scale =
            rule(json!({ "apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update"] }));
        assert!(scale.allows(&parse(
            "PUT",
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
            None
        )));
        assert!(!scale.allows(&parse("PUT", "/apis/apps/v1/namespaces/a/deployments/d", None)));
    }

    #[test]
    fn resource_names_restrict_to_named_objects() {
        let r = rule(
            json!({ "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"], "verbs": ["get", "watch", "list"] }),
        );
        assert!(r.allows(&parse("GET", "/api/v1/namespaces/a/configmaps/cfg", None)));
        assert!(!r.allows(&parse("GET", "/api/v1/namespaces/a/configmaps/other", None)));
        assert!(!r.allows(&parse("GET", "/api/v1/namespaces/a/configmaps", None)));
        assert!(r.allows(&parse(
            "GET",
            "/api/v1/namespaces/a/configmaps",
            Some("fieldSelector=metadata.name%3Dcfg&watch=true")
        )));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_trailing_star() {
        let r = rule(json!({ "nonResourceURLs": ["/healthz", "/apis/*"], "verbs": ["get"] }));
        assert!(r.allows(&parse("GET", "/healthz", None)));
        assert!(r.allows(&parse("GET", "/apis/apps", None)));
        assert!(!r.allows(&parse("GET", "/healthz/ping", None)));
        assert!(!r.allows(&parse("POST", "/healthz", None)));
        assert!(!r.allows(&parse("GET", "/version", None)));
        let all = rule(json!({ "nonResourceURLs": ["*"], "verbs": ["*"] }));
        assert!(all.allows(&parse("POST", "/anything", None)));
        assert!(!all.allows(&parse("GET", "/api/v1/pods", None)));
    }

    fn objects() -> Objects {
        Objects {
            cluster_roles: vec![
                json!({ "metadata": { "name": "view", "labels": { "rbac.authorization.k8s.io/aggregate-to-edit": "true" } },
                        "aggregationRule": { "clusterRoleSelectors": [{ "matchLabels": { "rbac.authorization.k8s.io/aggregate-to-view": "true" } }] } }),
                json!({ "metadata": { "name": "edit" },
                        "aggregationRule": { "clusterRoleSelectors": [{ "matchLabels": { "rbac.authorization.k8s.io/aggregate-to-edit": "true" } }] } }),
                json!({ "metadata": { "name": "to-view", "labels": { "rbac.authorization.k8s.io/aggregate-to-view": "true" } },
                        "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"] }] }),
                json!({ "metadata": { "name": "to-edit", "labels": { "rbac.authorization.k8s.io/aggregate-to-edit": "true" } },
                        "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["create"] }] }),
                json!({ "metadata": { "name": "secrets-reader" },
                        "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"] }] }),
            ],
            roles: vec![json!({ "metadata": { "name": "cm", "namespace": "a" },
                                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"] }] })],
            cluster_role_bindings: vec![json!({ "metadata": { "name": "viewers" },
                "roleRef": { "kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io" },
                "subjects": [{ "kind": "Group", "name": "viewers" }] })],
            role_bindings: vec![
                json!({ "metadata": { "name": "edit", "namespace": "a" },
                    "roleRef": { "kind": "ClusterRole", "name": "edit" },
                    "subjects": [{ "kind": "ServiceAccount", "name": "builder" }] }),
                json!({ "metadata": { "name": "cm", "namespace": "a" },
                    "roleRef": { "kind": "Role", "name": "cm" },
                    "subjects": [{ "kind": "User", "name": "alice" }] }),
            ],
        }
    }

    #[test]
    fn aggregation_unions_labelled_roles_through_nested_aggregates() {
        let rules = aggregate(&objects().cluster_roles);
        assert_eq!(
            rules["view"],
            vec![rule(
                json!({ "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"] })
            )]
        );
        // edit = view's aggregated rules + to-edit's, though view is itself an aggregate.
        assert_eq!(rules["edit"].len(), 2, "{:?}", rules["edit"]);
        // Changing a labelled role changes the aggregate.
        let mut objs = objects();
        objs.cluster_roles[2]["metadata"]["labels"] = json!({});
        let rules = aggregate(&objs.cluster_roles);
        assert!(rules["view"].is_empty());
        assert_eq!(rules["edit"].len(), 1);
    }

    #[test]
    fn selectors_support_match_expressions() {
        let labels = json!({ "tier": "web", "env": "prod" });
        let labels = labels.as_object().unwrap();
        for (sel, want) in [
            (json!({}), true),
            (json!({ "matchLabels": { "tier": "web" } }), true),
            (json!({ "matchLabels": { "tier": "db" } }), false),
            (
                json!({ "matchExpressions": [{ "key": "env", "operator": "In", "values": ["prod", "qa"] }] }),
                true,
            ),
            (
                json!({ "matchExpressions": [{ "key": "env", "operator": "NotIn", "values": ["prod"] }] }),
                false,
            ),
            (json!({ "matchExpressions": [{ "key": "x", "operator": "DoesNotExist" }] }), true),
            (json!({ "matchExpressions": [{ "key": "x", "operator": "Exists" }] }), false),
            (json!({ "matchExpressions": [{ "key": "x", "operator": "Bogus" }] }), false),
        ] {
            assert_eq!(selector_matches(&sel, labels), want, "{sel}");
        }
    }

    #[test]
    fn bindings_grant_by_scope_and_subject() {
        let s = Snapshot::build(&objects(), 1);
        let viewer = user("bob", &["viewers"]);
        assert!(s.allows(&viewer, &parse("GET", "/api/v1/namespaces/z/pods", None)));
        assert!(s.allows(&viewer, &parse("GET", "/api/v1/pods", None)));
        assert!(!s.allows(&viewer, &parse("POST", "/api/v1/namespaces/z/pods", None)));
        let sa = user("system:serviceaccount:a:builder", &["system:serviceaccounts"]);
        assert!(s.allows(&sa, &parse("POST", "/api/v1/namespaces/a/pods", None)));
        assert!(!s.allows(&sa, &parse("POST", "/api/v1/namespaces/b/pods", None)));
        assert!(
            !s.allows(&sa, &parse("GET", "/api/v1/pods", None)),
            "a RoleBinding is not cluster-wide"
        );
        let other_sa = user("system:serviceaccount:b:builder", &[]);
        assert!(!s.allows(&other_sa, &parse("POST", "/api/v1/namespaces/a/pods", None)));
        let alice = user("alice", &[]);
        assert!(s.allows(&alice, &parse("DELETE", "/api/v1/namespaces/a/configmaps/x", None)));
        assert!(!s.allows(&alice, &parse("DELETE", "/api/v1/namespaces/b/configmaps/x", None)));
        assert!(!s.allows(&alice, &parse("GET", "/api/v1/namespaces/a/secrets/x", None)));
    }

    #[test]
    fn the_index_keeps_the_newest_snapshot() {
        let index = Index::default();
        index.set(Snapshot::build(&objects(), 5));
        index.set(Snapshot::build(&Objects::default(), 3));
        assert_eq!(index.snapshot().revision, 5);
        index.set(Snapshot::build(&Objects::default(), 6));
        assert!(index.snapshot().cluster_role_rules("view").is_none());
    }
}
