//! The one schema source: OpenAPI definitions of every served kind, with the Kubernetes
//! extensions that discovery, `/openapi/v2|v3`, `kubectl explain`, strict field validation and
//! strategic merge patch read.
//!
//! # Where the schemas come from (decision)
//!
//! `k8s-openapi` 0.29 (feature `v1_33`) with its `schemars` feature generates, per type, a JSON
//! schema that carries upstream's descriptions, `type`, `format` (`int32`, `int64`,
//! `date-time`, `byte`, …), `required`, `$ref`s to the other types by their upstream definition
//! names (`io.k8s.api.apps.v1.DeploymentSpec`), and `x-kubernetes-int-or-string` for
//! `IntOrString` and `Quantity`. It does **not** carry `x-kubernetes-group-version-kind`,
//! `x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`, `x-kubernetes-list-type`,
//! `x-kubernetes-list-map-keys` or `x-kubernetes-map-type` (only the apiextensions types, which
//! describe CRD schemas, mention them). We add them here:
//!
//! - group-version-kind from the [registry](crate::registry) and `k8s_openapi::Resource`;
//! - list and map strategies from `k8s-openapi`'s own `DeepMerge` impls, which its generator
//!   derived from the same upstream annotations (`merge_strategies::list::map` with the patch
//!   merge key, `list::set`, `map::atomic`). Those impls are closures, unreadable at run time,
//!   so `dev/gen-list-strategies.py` reads the crate's source once into [`generated`]; the
//!   table is regenerated when `k8s-openapi` is bumped;
//! - a short table of our own ([`OVERRIDES`], [`LIST_MAP_KEYS`]) for what `DeepMerge` cannot
//!   express: `retainKeys`, patch-merge on primitive sets, the few list maps that have no patch
//!   strategy (a `list::map` in `DeepMerge` is either), and list-map keys wider than the patch
//!   merge key (`containerPort`+`protocol`). These come from the Go struct tags of
//!   `k8s.io/api` 1.33 as we know them; a cross-check against upstream's published OpenAPI is
//!   still to do.
//!
//! Upstream's `swagger.json` is not vendored: everything comes from the crate we already build.
//!
//! # Limits
//! - `x-kubernetes-list-type: atomic` is not recorded (atomic is the default for lists without
//!   a strategy); struct-level `x-kubernetes-map-type: atomic` comes from [`ATOMIC_STRUCTS`].
//! - v3 documents carry `paths` with the operations of every resource (what kubectl explain
//!   and kubectl's `fieldValidation` probe read), but no list kinds (`DeploymentList`) and no
//!   watch or proxy operations; `/openapi/v2` carries definitions only.

use std::collections::{BTreeMap, BTreeSet};

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512};

use crate::registry::{self, Gvk};

#[rustfmt::skip]
mod generated;

/// The `$ref` prefix of our definitions (OpenAPI v2 style); v3 documents rewrite it.
pub const V2_REF_PREFIX: &str = "#/definitions/";
/// The `$ref` prefix of OpenAPI v3 documents.
pub const V3_REF_PREFIX: &str = "#/components/schemas/";

/// A list or map strategy read from `k8s-openapi`'s `DeepMerge` impls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GeneratedStrategy {
    /// `list::map`: a list merged by key (the patch merge key, or the list-map keys).
    Map,
    /// `list::set`: a list of unique scalars.
    Set,
    /// `map::atomic`: a map replaced as a whole.
    AtomicMap,
}

/// Extensions to set on one property: (definition, property, (extension, value) pairs).
pub type Override = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

/// Extensions `DeepMerge` cannot express.
pub static OVERRIDES: &[Override] = &[
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        &[("x-kubernetes-patch-strategy", "merge,retainKeys")],
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        &[("x-kubernetes-patch-strategy", "retainKeys")],
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        &[("x-kubernetes-patch-strategy", "merge")],
    ),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", &[("x-kubernetes-patch-strategy", "merge")]),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        &[("x-kubernetes-patch-strategy", "merge,retainKeys")],
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        &[("x-kubernetes-patch-strategy", "merge,retainKeys")],
    ),
    // list-type map without a patch strategy upstream: strategic merge patch replaces them
    ("io.k8s.api.core.v1.ResourceRequirements", "claims", NO_PATCH_STRATEGY),
    ("io.k8s.api.core.v1.ResourceStatus", "resources", NO_PATCH_STRATEGY),
];

/// Definitions marked `+structType=atomic` upstream (`x-kubernetes-map-type: atomic` on the
/// definition): server-side apply replaces them whole.
pub static ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
];

/// An override value that removes the patch extensions (an empty value removes the key).
const NO_PATCH_STRATEGY: &[(&str, &str)] =
    &[("x-kubernetes-patch-strategy", ""), ("x-kubernetes-patch-merge-key", "")];

/// List-map keys wider than the patch merge key: (definition, property, keys).
pub static LIST_MAP_KEYS: &[(&str, &str, &[&str])] = &[
    ("io.k8s.api.core.v1.Container", "ports", &["containerPort", "protocol"]),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", &["containerPort", "protocol"]),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", &["port", "protocol"]),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        &["topologyKey", "whenUnsatisfiable"],
    ),
];

/// How strategic merge patch treats one field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchMeta {
    /// `x-kubernetes-patch-strategy` includes `merge`.
    pub merge: bool,
    /// `x-kubernetes-patch-strategy` includes `retainKeys`.
    pub retain_keys: bool,
    /// `x-kubernetes-patch-strategy` is `replace`.
    pub replace: bool,
    /// `x-kubernetes-patch-merge-key`, for lists of objects.
    pub merge_key: Option<String>,
}

impl PatchMeta {
    /// Reads the patch extensions of a property schema.
    pub fn of(property: &Value) -> PatchMeta {
        let strategy =
            property.get("x-kubernetes-patch-strategy").and_then(Value::as_str).unwrap_or_default();
        let parts: Vec<&str> = strategy.split(',').map(str::trim).collect();
        PatchMeta {
            merge: parts.contains(&"merge"),
            retain_keys: parts.contains(&"retainKeys"),
            replace: parts.contains(&"replace"),
            merge_key: property
                .get("x-kubernetes-patch-merge-key")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

/// Every definition of every served kind, with Kubernetes extensions.
#[derive(Debug, Clone)]
pub struct Schemas {
    definitions: BTreeMap<String, Value>,
    kinds: Vec<(Gvk, String)>,
}

fn add<T: JsonSchema + k8s_openapi::Resource>(
    generator: &mut SchemaGenerator,
    kinds: &mut Vec<(Gvk, String)>,
) {
    generator.subschema_for::<T>();
    kinds.push((
        Gvk { group: T::GROUP, version: T::VERSION, kind: T::KIND },
        T::schema_name().into_owned(),
    ));
}

macro_rules! add_kinds {
    ($generator:expr, $kinds:expr; $($t:ty),* $(,)?) => { $( add::<$t>($generator, $kinds); )* };
}

impl Schemas {
    /// Generates the definitions of every kind the [registry](crate::registry) serves, plus the
    /// subresource kinds (`Scale`, `Eviction`, `Binding`, `TokenRequest`).
    pub fn build() -> Schemas {
        use k8s_openapi::api::{
            apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
            autoscaling::v1 as autoscaling, batch::v1 as batch, certificates::v1 as certs,
            coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
            events::v1 as events, policy::v1 as policy, rbac::v1 as rbac,
        };
        let mut generator = SchemaSettings::draft07()
            .with(|s| {
                s.definitions_path = V2_REF_PREFIX.into();
                s.meta_schema = None;
            })
            .into_generator();
        let mut kinds = Vec::new();
        add_kinds!(&mut generator, &mut kinds;
            core::Binding, core::ConfigMap, core::Endpoints, core::Event, core::Namespace, core::Node, core::Pod,
            core::Secret, core::ServiceAccount, core::Service,
            apps::ControllerRevision, apps::DaemonSet, apps::Deployment, apps::ReplicaSet, apps::StatefulSet,
            events::Event, authn::TokenReview, authn::TokenRequest, authz::SelfSubjectAccessReview,
            authz::SubjectAccessReview, autoscaling::Scale, batch::CronJob, batch::Job,
            certs::CertificateSigningRequest, policy::PodDisruptionBudget, policy::Eviction,
            rbac::ClusterRoleBinding, rbac::ClusterRole, rbac::RoleBinding, rbac::Role, coordination::Lease,
            discovery::EndpointSlice,
        );
        let mut definitions: BTreeMap<String, Value> =
            generator.take_definitions(true).into_iter().collect();
        for (gvk, name) in &kinds {
            if let Some(Value::Object(def)) = definitions.get_mut(name) {
                def.insert(
                    "x-kubernetes-group-version-kind".to_owned(),
                    json!([{ "group": gvk.group, "version": gvk.version, "kind": gvk.kind }]),
                );
            }
        }
        apply_strategies(&mut definitions);
        normalize_scalars(&mut definitions);
        Schemas { definitions, kinds }
    }

    /// A definition by name (`io.k8s.api.apps.v1.Deployment`).
    pub fn definition(&self, name: &str) -> Option<&Value> {
        self.definitions.get(name)
    }

    /// Every definition, by name.
    pub fn definitions(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.definitions.iter().map(|(n, d)| (n.as_str(), d))
    }

    /// The definition of a kind.
    pub fn for_kind(&self, gvk: &Gvk) -> Option<&Value> {
        let (_, name) = self.kinds.iter().find(|(k, _)| k == gvk)?;
        self.definitions.get(name)
    }

    /// Follows `$ref` (and a one-element `allOf` of a `$ref`) to the schema it names; returns
    /// `schema` itself when it is not a reference or names nothing known.
    pub fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut current = schema;
        for _ in 0..8 {
            let target = current
                .get("$ref")
                .or_else(|| current.get("allOf").and_then(|a| a.get(0)).and_then(|a| a.get("$ref")))
                .and_then(Value::as_str)
                .and_then(|r| {
                    r.strip_prefix(V2_REF_PREFIX).or_else(|| r.strip_prefix(V3_REF_PREFIX))
                })
                .and_then(|name| self.definitions.get(name));
            match target {
                Some(t) => current = t,
                None => return current,
            }
        }
        current
    }

    /// The schema of property `name` of the object schema `schema` (after resolving references),
    /// or of its `additionalProperties` for maps.
    pub fn property<'a>(&'a self, schema: &'a Value, name: &str) -> Option<&'a Value> {
        let schema = self.resolve(schema);
        schema
            .get("properties")
            .and_then(|p| p.get(name))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
    }

    /// The item schema of an array schema.
    pub fn items<'a>(&'a self, schema: &'a Value) -> Option<&'a Value> {
        self.resolve(schema).get("items")
    }

    /// `/openapi/v2`: a Swagger 2.0 document with every definition.
    pub fn openapi_v2(&self) -> Value {
        json!({
            "swagger": "2.0",
            "info": { "title": "Kubernetes", "version": crate::KUBERNETES_VERSION },
            "paths": {},
            "definitions": self.definitions,
        })
    }

    /// The group versions that have an OpenAPI v3 document, as `api/v1` or `apis/<g>/<v>`.
    pub fn v3_paths() -> Vec<(String, &'static str, &'static str)> {
        let mut out = vec![("api/v1".to_owned(), "", "v1")];
        for (g, versions) in registry::GROUPS {
            for v in *versions {
                out.push((format!("apis/{g}/{v}"), g, v));
            }
        }
        out
    }

    /// `/openapi/v3`: the index of per-group-version documents with content hashes, as
    /// `{"paths": {"apis/apps/v1": {"serverRelativeURL": "/openapi/v3/apis/apps/v1?hash=…"}}}`.
    pub fn openapi_v3_index(&self) -> Value {
        let mut paths = Map::new();
        for (path, g, v) in Self::v3_paths() {
            if let Some(doc) = self.openapi_v3(g, v) {
                let hash = hex::encode_upper(Sha512::digest(doc.to_string().as_bytes()));
                paths.insert(
                    path.clone(),
                    json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}") }),
                );
            }
        }
        json!({ "paths": paths })
    }

    /// The OpenAPI 3.0 document of one group version (`""`/`v1` for the core group): every
    /// definition reachable from its kinds and subresource kinds, `$ref`s under
    /// `#/components/schemas/`, a `$ref` with siblings wrapped in `allOf` as upstream does.
    pub fn openapi_v3(&self, group: &str, version: &str) -> Option<Value> {
        if !registry::serves(group, version) {
            return None;
        }
        let mut roots = BTreeSet::new();
        for r in registry::resources_of(group, version) {
            roots.insert(r.definition.to_owned());
            for s in r.subresources {
                if let Some((_, name)) = self.kinds.iter().find(|(k, _)| *k == s.kind) {
                    roots.insert(name.clone());
                }
            }
        }
        let mut schemas = Map::new();
        for name in self.closure(roots) {
            if let Some(def) = self.definitions.get(&name) {
                schemas.insert(name, to_v3(def));
            }
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": { "title": "Kubernetes", "version": crate::KUBERNETES_VERSION },
            "paths": self.v3_operations(group, version),
            "components": { "schemas": schemas },
        }))
    }

    /// The `paths` of a group version's v3 document: per resource, the collection and object
    /// paths (and subresource paths) with one operation per supported verb, each naming its
    /// kind in `x-kubernetes-group-version-kind` (kubectl explain finds a resource's kind this
    /// way) and, for writes, the `dryRun`, `fieldManager` and `fieldValidation` query parameters
    /// (kubectl probes `fieldValidation` support there).
    fn v3_operations(&self, group: &str, version: &str) -> Map<String, Value> {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let mut paths = Map::new();
        for r in registry::resources_of(group, version) {
            let scoped = if r.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
            } else {
                format!("{prefix}/{}", r.plural)
            };
            let has = |verb: &str| r.verbs.contains(&verb);
            let mut collection = Map::new();
            if has("list") {
                collection.insert("get".into(), operation("list", r.gvk, None, false));
            }
            if has("create") {
                collection
                    .insert("post".into(), operation("post", r.gvk, Some(r.definition), true));
            }
            if has("deletecollection") {
                collection
                    .insert("delete".into(), operation("deletecollection", r.gvk, None, false));
            }
            if !collection.is_empty() {
                paths.insert(scoped.clone(), Value::Object(collection));
            }
            if r.namespaced && has("list") {
                let all =
                    Map::from_iter([("get".to_owned(), operation("list", r.gvk, None, false))]);
                paths.insert(format!("{prefix}/{}", r.plural), Value::Object(all));
            }
            let mut object = Map::new();
            for (verb, method, action, write) in [
                ("get", "get", "get", false),
                ("update", "put", "put", true),
                ("patch", "patch", "patch", true),
                ("delete", "delete", "delete", false),
            ] {
                if has(verb) {
                    object
                        .insert(method.into(), operation(action, r.gvk, Some(r.definition), write));
                }
            }
            if !object.is_empty() {
                paths.insert(format!("{scoped}/{{name}}"), Value::Object(object));
            }
            for sub in r.subresources {
                let definition =
                    self.kinds.iter().find(|(k, _)| *k == sub.kind).map(|(_, n)| n.as_str());
                let mut ops = Map::new();
                for (verb, method, write) in [
                    ("get", "get", false),
                    ("create", "post", true),
                    ("update", "put", true),
                    ("patch", "patch", true),
                ] {
                    if sub.verbs.contains(&verb) {
                        ops.insert(
                            method.into(),
                            operation(
                                if method == "post" { "post" } else { verb },
                                sub.kind,
                                definition,
                                write,
                            ),
                        );
                    }
                }
                paths.insert(format!("{scoped}/{{name}}/{}", sub.name), Value::Object(ops));
            }
        }
        paths
    }

    /// Every definition reachable from `roots` through `$ref`s.
    fn closure(&self, roots: BTreeSet<String>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = roots.into_iter().collect();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(def) = self.definitions.get(&name) {
                collect_refs(def, &mut todo);
            }
        }
        seen
    }
}

impl Default for Schemas {
    fn default() -> Self {
        Schemas::build()
    }
}

/// One OpenAPI v3 operation.
fn operation(action: &str, gvk: Gvk, definition: Option<&str>, write: bool) -> Value {
    let mut op = json!({
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": { "group": gvk.group, "version": gvk.version, "kind": gvk.kind },
        "responses": { "401": { "description": "Unauthorized" } },
    });
    if let Some(def) = definition {
        let schema = json!({ "$ref": format!("{V3_REF_PREFIX}{def}") });
        op["responses"]["200"] = json!({ "description": "OK", "content": { "application/json": { "schema": schema.clone() } } });
        if write {
            op["requestBody"] =
                json!({ "required": true, "content": { "*/*": { "schema": schema } } });
        }
    }
    if write {
        let query = |name: &str| json!({ "name": name, "in": "query", "schema": { "type": "string", "uniqueItems": true } });
        op["parameters"] =
            json!([query("dryRun"), query("fieldManager"), query("fieldValidation")]);
    }
    op
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(name) = v.as_str().and_then(|r| r.strip_prefix(V2_REF_PREFIX)) {
                        out.push(name.to_owned());
                    }
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Rewrites a v2-style definition for an OpenAPI 3.0 document.
fn to_v3(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let r = r.replacen(V2_REF_PREFIX, V3_REF_PREFIX, 1);
                if map.len() == 1 {
                    return json!({ "$ref": r });
                }
                let mut out: Map<String, Value> = map
                    .iter()
                    .filter(|(k, _)| *k != "$ref")
                    .map(|(k, v)| (k.clone(), to_v3(v)))
                    .collect();
                out.insert("allOf".to_owned(), json!([{ "$ref": r }]));
                return Value::Object(out);
            }
            Value::Object(map.iter().map(|(k, v)| (k.clone(), to_v3(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

fn property_mut<'a>(
    defs: &'a mut BTreeMap<String, Value>,
    def: &str,
    prop: &str,
) -> Option<&'a mut Map<String, Value>> {
    defs.get_mut(def)?.get_mut("properties")?.get_mut(prop)?.as_object_mut()
}

/// Writes the list and map strategies into the property schemas.
fn apply_strategies(defs: &mut BTreeMap<String, Value>) {
    for (def, prop, strategy, keys) in generated::GENERATED {
        let Some(p) = property_mut(defs, def, prop) else { continue };
        match strategy {
            GeneratedStrategy::Map => {
                p.insert("x-kubernetes-list-type".to_owned(), "map".into());
                p.insert("x-kubernetes-list-map-keys".to_owned(), json!(keys));
                if let Some(first) = keys.first() {
                    p.insert("x-kubernetes-patch-strategy".to_owned(), "merge".into());
                    p.insert("x-kubernetes-patch-merge-key".to_owned(), (*first).into());
                }
            }
            GeneratedStrategy::Set => {
                p.insert("x-kubernetes-list-type".to_owned(), "set".into());
            }
            GeneratedStrategy::AtomicMap => {
                p.insert("x-kubernetes-map-type".to_owned(), "atomic".into());
            }
        }
    }
    for (def, prop, extensions) in OVERRIDES {
        if let Some(p) = property_mut(defs, def, prop) {
            for (k, v) in *extensions {
                if v.is_empty() {
                    p.remove(*k);
                } else {
                    p.insert((*k).to_owned(), (*v).into());
                }
            }
        }
    }
    for def in ATOMIC_STRUCTS {
        if let Some(Value::Object(d)) = defs.get_mut(*def) {
            d.insert("x-kubernetes-map-type".to_owned(), "atomic".into());
        }
    }
    for (def, prop, keys) in LIST_MAP_KEYS {
        if let Some(p) = property_mut(defs, def, prop) {
            p.insert("x-kubernetes-list-map-keys".to_owned(), json!(keys));
        }
    }
}

/// Gives `IntOrString` and `Quantity` the `type`/`format` upstream publishes, keeping
/// `x-kubernetes-int-or-string`.
fn normalize_scalars(defs: &mut BTreeMap<String, Value>) {
    if let Some(Value::Object(d)) = defs.get_mut("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
    {
        d.insert("type".to_owned(), "string".into());
        d.insert("format".to_owned(), "int-or-string".into());
    }
    if let Some(Value::Object(d)) = defs.get_mut("io.k8s.apimachinery.pkg.api.resource.Quantity") {
        d.insert("type".to_owned(), "string".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop<'a>(s: &'a Schemas, def: &str, p: &str) -> &'a Value {
        s.definition(def)
            .and_then(|d| d["properties"].get(p))
            .unwrap_or_else(|| panic!("{def}.{p}"))
    }

    #[test]
    fn every_registered_kind_has_a_definition_with_its_gvk() {
        let s = Schemas::build();
        for r in registry::RESOURCES {
            let def = s.for_kind(&r.gvk).unwrap_or_else(|| panic!("no schema for {:?}", r.gvk));
            let gvk = &def["x-kubernetes-group-version-kind"][0];
            assert_eq!(gvk["kind"], r.gvk.kind);
            assert_eq!(gvk["group"], r.gvk.group);
            assert_eq!(s.definition(r.definition), Some(def), "{}", r.definition);
        }
    }

    #[test]
    fn descriptions_and_formats_come_from_k8s_openapi() {
        let s = Schemas::build();
        let replicas = prop(&s, "io.k8s.api.apps.v1.DeploymentSpec", "replicas");
        assert_eq!(replicas["format"], "int32");
        assert!(replicas["description"]
            .as_str()
            .is_some_and(|d| d.contains("Number of desired pods")));
        let ts = s.resolve(prop(
            &s,
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "creationTimestamp",
        ));
        assert_eq!(ts["format"], "date-time");
        let ios =
            s.definition("io.k8s.apimachinery.pkg.util.intstr.IntOrString").expect("IntOrString");
        assert_eq!(
            (&ios["format"], &ios["x-kubernetes-int-or-string"]),
            (&json!("int-or-string"), &json!(true))
        );
    }

    #[test]
    fn patch_and_list_extensions_follow_upstream_annotations() {
        let s = Schemas::build();
        let containers = prop(&s, "io.k8s.api.core.v1.PodSpec", "containers");
        assert_eq!(PatchMeta::of(containers).merge_key.as_deref(), Some("name"));
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        let ports = prop(&s, "io.k8s.api.core.v1.Container", "ports");
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        assert_eq!(ports["x-kubernetes-list-map-keys"], json!(["containerPort", "protocol"]));
        let volumes = PatchMeta::of(prop(&s, "io.k8s.api.core.v1.PodSpec", "volumes"));
        assert!(volumes.merge && volumes.retain_keys);
        let strategy = PatchMeta::of(prop(&s, "io.k8s.api.apps.v1.DeploymentSpec", "strategy"));
        assert!(strategy.retain_keys && !strategy.merge);
        let finalizers = prop(&s, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers");
        assert_eq!(finalizers["x-kubernetes-list-type"], "set");
        assert!(PatchMeta::of(finalizers).merge);
        let claims = prop(&s, "io.k8s.api.core.v1.ResourceRequirements", "claims");
        assert_eq!(
            PatchMeta::of(claims),
            PatchMeta::default(),
            "a list map without patch strategy"
        );
        assert_eq!(claims["x-kubernetes-list-map-keys"], json!(["name"]));
        let tolerations = prop(&s, "io.k8s.api.core.v1.PodSpec", "tolerations");
        assert_eq!(PatchMeta::of(tolerations), PatchMeta::default(), "tolerations are replaced");
        assert_eq!(
            prop(&s, "io.k8s.api.core.v1.ServiceSpec", "selector")["x-kubernetes-map-type"],
            "atomic"
        );
    }

    #[test]
    fn every_table_entry_names_an_existing_property() {
        let s = Schemas::build();
        let referenced = s.closure(s.kinds.iter().map(|(_, n)| n.clone()).collect());
        for (def, p, _, _) in generated::GENERATED {
            if referenced.contains(*def) {
                prop(&s, def, p);
            }
        }
        for (def, p, _) in OVERRIDES {
            prop(&s, def, p);
        }
        for (def, p, _) in LIST_MAP_KEYS {
            prop(&s, def, p);
        }
        for def in ATOMIC_STRUCTS {
            assert!(s.definition(def).is_some(), "{def}");
        }
    }

    #[test]
    fn the_generated_merge_keys_agree_with_deep_merge() {
        use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};
        use k8s_openapi::DeepMerge;
        // DeepMerge merges containers by name, as the table says: same name merges, a new
        // name appends.
        let port = |p| ContainerPort { container_port: p, ..Default::default() };
        let mut base = PodSpec {
            containers: vec![Container {
                name: "a".into(),
                ports: Some(vec![port(80)]),
                ..Default::default()
            }],
            ..Default::default()
        };
        base.merge_from(PodSpec {
            containers: vec![
                Container {
                    name: "a".into(),
                    image: Some("x".into()),
                    ports: Some(vec![port(81)]),
                    ..Default::default()
                },
                Container { name: "b".into(), ..Default::default() },
            ],
            ..Default::default()
        });
        assert_eq!(base.containers.len(), 2);
        assert_eq!(base.containers[0].image.as_deref(), Some("x"));
        assert_eq!(
            base.containers[0].ports.as_ref().map(Vec::len),
            Some(2),
            "ports merged by containerPort"
        );
        let s = Schemas::build();
        assert_eq!(
            prop(&s, "io.k8s.api.core.v1.PodSpec", "containers")["x-kubernetes-patch-merge-key"],
            "name"
        );
    }

    #[test]
    fn v3_documents_hold_the_closure_of_their_kinds_with_v3_refs() {
        let s = Schemas::build();
        let apps = s.openapi_v3("apps", "v1").expect("apps/v1");
        let schemas = &apps["components"]["schemas"];
        let spec = &schemas["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"];
        assert_eq!(
            spec["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(
            schemas.get("io.k8s.api.core.v1.PodSpec").is_some(),
            "reachable through the template"
        );
        assert!(
            schemas.get("io.k8s.api.autoscaling.v1.Scale").is_some(),
            "the scale subresource's kind"
        );
        assert!(schemas.get("io.k8s.api.batch.v1.Job").is_none(), "other groups stay out");
        assert!(!apps.to_string().contains(V2_REF_PREFIX));
        let index = s.openapi_v3_index();
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().expect("url");
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        assert!(index["paths"].get("api/v1").is_some());
        let op = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(op["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation")));
        let scale =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["get"];
        assert_eq!(scale["x-kubernetes-group-version-kind"]["group"], "autoscaling");
        let core = s.openapi_v3("", "v1").expect("core/v1");
        assert!(
            core["paths"]["/api/v1/nodes/{name}"]["get"].is_object(),
            "cluster-scoped paths have no namespace"
        );
        assert!(core["paths"].get("/api/v1/namespaces/{namespace}/namespaces").is_none());
    }
}
