//! The structural merge of server-side apply: an applied configuration merged into the live
//! object by the schema's `x-kubernetes-list-type`, `x-kubernetes-list-map-keys` and
//! `x-kubernetes-map-type` (structured-merge-diff's rules):
//!
//! - objects merge field by field; an object marked `x-kubernetes-map-type: atomic` is
//!   replaced whole;
//! - `list-type: map` lists merge item by item, an item identified by the values of all its
//!   list-map keys (`containerPort` *and* `protocol` for container ports, where strategic merge
//!   patch uses only `containerPort`); live items keep their order, new ones follow in the
//!   applied order;
//! - `list-type: set` lists take the union;
//! - every other list (`atomic`, or no list type) is replaced.
//!
//! Limits: field ownership (`managedFields`, conflicts between managers, removal of fields a
//! manager stopped applying) is the pipeline's next step and is not here; this module is the
//! merge it runs once ownership has decided what to keep.

use serde_json::{Map, Value};

use crate::schema::Schemas;

/// Why an applied configuration cannot be merged.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The live object or the configuration is not a JSON object.
    #[error("an applied configuration and the object it applies to must be JSON objects")]
    NotAnObject,
    /// An item of a `list-type: map` list lacks every list-map key.
    #[error("an item of the list at {path:?} has none of its keys {keys:?}")]
    MissingKeys {
        /// The list.
        path: String,
        /// The list-map keys.
        keys: Vec<String>,
    },
    /// Two items of an applied `list-type: map` list have the same keys.
    #[error("duplicate entries for key {key} in the list at {path:?}")]
    Duplicate {
        /// The list.
        path: String,
        /// The duplicated key values, as JSON.
        key: String,
    },
}

/// A `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Merges `applied` into `live` for the kind whose schema is `schema` (`None`: objects merge,
/// lists are replaced).
pub fn merge_applied(
    schemas: &Schemas,
    schema: Option<&Value>,
    live: Value,
    applied: Value,
) -> Result<Value> {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            merge_object(schemas, schema, l, a, "").map(Value::Object)
        }
        _ => Err(Error::NotAnObject),
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn merge_object(
    schemas: &Schemas,
    schema: Option<&Value>,
    mut live: Map<String, Value>,
    applied: Map<String, Value>,
    path: &str,
) -> Result<Map<String, Value>> {
    for (key, value) in applied {
        let prop = schema.and_then(|s| schemas.property(s, &key));
        let field = child(path, &key);
        let merged = match (live.remove(&key), value) {
            (_, Value::Null) => continue,
            (Some(l), a) => merge_value(schemas, prop, l, a, &field)?,
            // Merged into an empty value, so new lists are checked like merged ones.
            (None, a @ Value::Object(_)) => {
                merge_value(schemas, prop, Value::Object(Map::new()), a, &field)?
            }
            (None, a @ Value::Array(_)) => {
                merge_value(schemas, prop, Value::Array(Vec::new()), a, &field)?
            }
            (None, a) => a,
        };
        live.insert(key, merged);
    }
    Ok(live)
}

fn merge_value(
    schemas: &Schemas,
    schema: Option<&Value>,
    live: Value,
    applied: Value,
    path: &str,
) -> Result<Value> {
    let resolved = schema.map(|s| schemas.resolve(s));
    let ext = |name: &str| {
        schema
            .and_then(|s| s.get(name))
            .or_else(|| resolved.and_then(|r| r.get(name)))
            .and_then(Value::as_str)
    };
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if ext("x-kubernetes-map-type") != Some("atomic") => {
            merge_object(schemas, schema, l, a, path).map(Value::Object)
        }
        (Value::Array(l), Value::Array(a)) => {
            let items = schema.and_then(|s| schemas.items(s));
            match ext("x-kubernetes-list-type") {
                Some("map") => {
                    let keys: Vec<String> = schema
                        .and_then(|s| s.get("x-kubernetes-list-map-keys"))
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default();
                    merge_map_list(schemas, items, &keys, l, a, path).map(Value::Array)
                }
                Some("set") => {
                    let mut out = l;
                    for v in a {
                        if !out.contains(&v) {
                            out.push(v);
                        }
                    }
                    Ok(Value::Array(out))
                }
                _ => Ok(Value::Array(a)),
            }
        }
        (_, a) => Ok(a),
    }
}

/// The identity of an item of a `list-type: map` list: the values of its keys.
fn identity(item: &Value, keys: &[String], path: &str) -> Result<Vec<Value>> {
    let id: Vec<Value> = keys.iter().map(|k| item.get(k).cloned().unwrap_or(Value::Null)).collect();
    if id.iter().all(Value::is_null) {
        return Err(Error::MissingKeys { path: path.to_owned(), keys: keys.to_vec() });
    }
    Ok(id)
}

fn merge_map_list(
    schemas: &Schemas,
    items: Option<&Value>,
    keys: &[String],
    live: Vec<Value>,
    applied: Vec<Value>,
    path: &str,
) -> Result<Vec<Value>> {
    if keys.is_empty() {
        return Ok(applied);
    }
    let mut seen = Vec::new();
    for item in &applied {
        let id = identity(item, keys, path)?;
        if seen.contains(&id) {
            return Err(Error::Duplicate {
                path: path.to_owned(),
                key: Value::Array(id).to_string(),
            });
        }
        seen.push(id);
    }
    let mut out = live;
    for (item, id) in applied.into_iter().zip(seen) {
        let at = out.iter().position(|l| identity(l, keys, path).is_ok_and(|lid| lid == id));
        match at {
            Some(i) => {
                let l = std::mem::take(&mut out[i]);
                out[i] = merge_value(schemas, items, l, item, &format!("{path}[{i}]"))?;
            }
            None => out.push(item),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Gvk;
    use serde_json::json;
    use std::sync::OnceLock;

    fn schemas() -> &'static Schemas {
        static S: OnceLock<Schemas> = OnceLock::new();
        S.get_or_init(Schemas::build)
    }

    fn apply(kind: &'static str, live: Value, applied: Value) -> Result<Value> {
        let s = schemas();
        let schema = s.for_kind(&Gvk { group: "", version: "v1", kind });
        assert!(schema.is_some());
        merge_applied(s, schema, live, applied)
    }

    #[test]
    fn container_ports_merge_by_port_and_protocol() {
        let live = json!({ "spec": { "containers": [{ "name": "a", "image": "x",
            "ports": [{ "containerPort": 53, "protocol": "TCP", "name": "dns-tcp" }] }] } });
        let applied = json!({ "spec": { "containers": [{ "name": "a",
            "ports": [{ "containerPort": 53, "protocol": "UDP", "name": "dns" }, { "containerPort": 53, "protocol": "TCP", "hostPort": 53 }] }] } });
        let out = apply("Pod", live, applied).expect("apply");
        assert_eq!(
            out["spec"]["containers"],
            json!([{ "name": "a", "image": "x", "ports": [
                { "containerPort": 53, "protocol": "TCP", "name": "dns-tcp", "hostPort": 53 },
                { "containerPort": 53, "protocol": "UDP", "name": "dns" }
            ] }])
        );
    }

    #[test]
    fn sets_take_the_union_and_atomic_lists_and_maps_are_replaced() {
        let live = json!({ "metadata": { "finalizers": ["a"] },
                           "spec": { "selector": { "app": "x", "tier": "web" }, "ports": [{ "port": 80, "protocol": "TCP" }] } });
        let applied = json!({ "metadata": { "finalizers": ["b", "a"] }, "spec": { "selector": { "app": "y" } } });
        let out = apply("Service", live, applied).expect("apply");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["spec"]["selector"], json!({ "app": "y" }), "selector is an atomic map");
        assert_eq!(out["spec"]["ports"], json!([{ "port": 80, "protocol": "TCP" }]));
        let out = apply(
            "Pod",
            json!({ "spec": { "tolerations": [{ "key": "a" }] } }),
            json!({ "spec": { "tolerations": [{ "key": "b" }] } }),
        )
        .expect("apply");
        assert_eq!(out["spec"]["tolerations"], json!([{ "key": "b" }]), "tolerations are atomic");
    }

    #[test]
    fn atomic_structs_are_replaced_whole() {
        let s = schemas();
        let schema = s.for_kind(&Gvk { group: "apps", version: "v1", kind: "Deployment" });
        let live = json!({ "spec": { "selector": { "matchLabels": { "app": "a", "tier": "b" } }, "replicas": 1 } });
        let applied = json!({ "spec": { "selector": { "matchLabels": { "app": "c" } } } });
        let out = merge_applied(s, schema, live, applied).expect("apply");
        assert_eq!(
            out["spec"],
            json!({ "selector": { "matchLabels": { "app": "c" } }, "replicas": 1 })
        );
    }

    #[test]
    fn bad_list_items_are_refused() {
        let dup = json!({ "spec": { "containers": [{ "name": "a" }, { "name": "a" }] } });
        let err = Error::Duplicate { path: "spec.containers".into(), key: "[\"a\"]".into() };
        assert_eq!(
            apply("Pod", json!({}), dup.clone()),
            Err(err.clone()),
            "new lists are checked too"
        );
        assert_eq!(apply("Pod", json!({ "spec": { "containers": [] } }), dup), Err(err));
        assert_eq!(
            apply(
                "Pod",
                json!({ "spec": { "containers": [] } }),
                json!({ "spec": { "containers": [{ "image": "x" }] } })
            ),
            Err(Error::MissingKeys { path: "spec.containers".into(), keys: vec!["name".into()] })
        );
        assert_eq!(apply("Pod", json!([]), json!({})), Err(Error::NotAnObject));
    }
}
