//! Unknown-field detection for `fieldValidation=Strict|Warn|Ignore`.
//!
//! Walks an untyped JSON object against its kind's schema and returns the path of every field
//! the schema does not know, formatted as upstream's strict decoder formats them
//! (`spec.template.spec.containers[0].imagePullPolicyx`), in document order. The pipeline turns
//! them into a 400 `strict decoding error: unknown field "…"` (Strict) or `Warning` headers
//! (Warn).
//!
//! Objects whose schema has neither `properties` nor `additionalProperties` (`RawExtension`,
//! `FieldsV1`), and schemas marked `x-kubernetes-preserve-unknown-fields`, accept anything.
//! Duplicate fields are not detected here: they do not survive JSON parsing into a map.

use serde_json::Value;

use crate::schema::Schemas;

/// How the request asked unknown fields to be handled (`fieldValidation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop them and warn (the default for kubectl and the API).
    #[default]
    Warn,
    /// Refuse the request.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter's value; `None` for anything else.
    pub fn parse(value: &str) -> Option<FieldValidation> {
        match value {
            "Ignore" => Some(FieldValidation::Ignore),
            "Warn" => Some(FieldValidation::Warn),
            "Strict" => Some(FieldValidation::Strict),
            _ => None,
        }
    }
}

/// The paths of the fields of `value` that `schema` does not declare.
pub fn unknown_fields(schemas: &Schemas, schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schemas, schema, value, &mut String::new(), &mut out);
    out
}

fn walk(
    schemas: &Schemas,
    schema: &Value,
    value: &Value,
    path: &mut String,
    out: &mut Vec<String>,
) {
    let schema = schemas.resolve(schema);
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if properties.is_none() && additional.is_none() {
                return; // free-form object
            }
            for (key, child) in map {
                let child_schema = properties.and_then(|p| p.get(key)).or(additional);
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match child_schema {
                    Some(s) => walk(schemas, s, child, path, out),
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = schema.get("items") else { return };
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(schemas, item_schema, item, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The message upstream's strict decoder gives for `paths` (non-empty):
/// `strict decoding error: unknown field "spec.replicasx", unknown field "x"`. Under `Warn` each
/// `unknown field "…"` is one `Warning` header instead.
pub fn strict_error(paths: &[String]) -> String {
    let fields: Vec<String> = paths.iter().map(|p| format!("unknown field {p:?}")).collect();
    format!("strict decoding error: {}", fields.join(", "))
}

/// Removes the fields at `paths` (as returned by [`unknown_fields`]) from `value`, as upstream
/// drops unknown fields under `Ignore` and `Warn`.
pub fn prune(value: &mut Value, paths: &[String]) {
    for path in paths {
        let steps = parse_path(path);
        let Some((last, parents)) = steps.split_last() else { continue };
        let mut current = Some(&mut *value);
        for step in parents {
            current = current.and_then(|c| match step {
                Step::Key(k) => c.get_mut(k.as_str()),
                Step::Index(i) => c.get_mut(*i),
            });
        }
        if let (Step::Key(k), Some(map)) = (last, current.and_then(Value::as_object_mut)) {
            map.remove(k.as_str());
        }
    }
}

enum Step {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            steps.push(Step::Key(key.to_owned()));
        }
        for index in rest.split('[') {
            if let Some(i) = index.trim_end_matches(']').parse().ok().filter(|_| !index.is_empty())
            {
                steps.push(Step::Index(i));
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Gvk;
    use serde_json::json;

    fn deployment_schema(s: &Schemas) -> &Value {
        s.for_kind(&Gvk { group: "apps", version: "v1", kind: "Deployment" }).expect("deployment")
    }

    #[test]
    fn misspelt_fields_are_reported_with_upstream_paths() {
        let s = Schemas::build();
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "labels": { "any-key": "ok" }, "nmae": "x" },
            "spec": {
                "replicasx": 2,
                "selector": { "matchLabels": { "app": "web" } },
                "template": { "spec": { "containers": [
                    { "name": "a", "image": "nginx" },
                    { "name": "b", "image": "nginx", "imagePullPolicyx": "Always",
                      "ports": [{ "containerPort": 80, "protocl": "TCP" }] }
                ] } }
            },
            "extra": true
        });
        assert_eq!(
            unknown_fields(&s, deployment_schema(&s), &obj),
            [
                "extra",
                "metadata.nmae",
                "spec.replicasx",
                "spec.template.spec.containers[1].imagePullPolicyx",
                "spec.template.spec.containers[1].ports[0].protocl",
            ]
        );
    }

    #[test]
    fn a_valid_object_has_no_unknown_fields_and_free_form_parts_accept_anything() {
        let s = Schemas::build();
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "annotations": { "a": "b" },
                          "managedFields": [{ "manager": "m", "fieldsV1": { "f:spec": { "anything": {} } } }] },
            "spec": { "replicas": 1, "selector": {}, "strategy": { "rollingUpdate": { "maxSurge": "25%" } },
                      "template": { "spec": { "containers": [{ "name": "a", "resources": { "limits": { "cpu": "1" } } }] } } }
        });
        assert!(unknown_fields(&s, deployment_schema(&s), &obj).is_empty());
    }

    #[test]
    fn prune_removes_exactly_the_unknown_fields() {
        let s = Schemas::build();
        let mut obj = json!({
            "kind": "Deployment",
            "spec": { "replicasx": 2, "replicas": 1,
                      "template": { "spec": { "containers": [{ "name": "a", "bad": 1 }] } } }
        });
        let unknown = unknown_fields(&s, deployment_schema(&s), &obj);
        prune(&mut obj, &unknown);
        assert_eq!(
            obj,
            json!({ "kind": "Deployment", "spec": { "replicas": 1, "template": { "spec": { "containers": [{ "name": "a" }] } } } })
        );
        assert!(unknown_fields(&s, deployment_schema(&s), &obj).is_empty());
    }

    #[test]
    fn strict_errors_read_like_upstream() {
        assert_eq!(
            strict_error(&["spec.replicasx".into(), "extra".into()]),
            r#"strict decoding error: unknown field "spec.replicasx", unknown field "extra""#
        );
    }

    #[test]
    fn field_validation_parses_only_upstream_values() {
        assert_eq!(FieldValidation::parse("Strict"), Some(FieldValidation::Strict));
        assert_eq!(FieldValidation::parse("strict"), None);
        assert_eq!(FieldValidation::default(), FieldValidation::Warn);
    }
}
