//! Per-kind strategy: what a write may change, as upstream's `rest.RESTCreateStrategy` and
//! `RESTUpdateStrategy` of each kind decide it (the status reset of DESIGN.md's pipeline), and
//! the `scale` subresource's view of a workload.
//!
//! - A kind with a `status` subresource keeps its status on writes to the object itself: a
//!   create starts it empty (a Pod starts `Pending`, a Namespace `Active`), an update keeps
//!   the stored one. Writes to `status` change only the status: everything else, metadata
//!   included (its labels, annotations, finalizers, owners), is kept from the stored object;
//!   only `managedFields` follows the request, as upstream's `ResetObjectMetaForStatus`.
//! - A Namespace is created with the `kubernetes` finalizer in `spec.finalizers`, so deleting
//!   it only marks it `Terminating` until the namespace controller has removed its content.
//! - Nodes keep the status they are created with (the agent registers its Node with one), as
//!   upstream's node strategy does.
//! - `scale` (Deployments, ReplicaSets, StatefulSets) is an `autoscaling/v1` `Scale`:
//!   `spec.replicas` from the workload, `status.replicas` and the selector as a string.
//!
//! Defaulting and validation join here in the next step of the pipeline.

use serde_json::{json, Map, Value};

use crate::objects::ApiError;
use crate::registry::Resource;

/// The strategy of one resource.
#[derive(Debug, Clone, Copy)]
pub struct Strategy {
    resource: &'static Resource,
}

impl Strategy {
    /// The strategy of `resource`.
    pub fn of(resource: &'static Resource) -> Strategy {
        Strategy { resource }
    }

    /// Whether the kind has a `status` subresource, so writes to the object leave it alone.
    pub fn has_status(&self) -> bool {
        self.resource.subresources.iter().any(|s| s.name == "status")
    }

    /// Whether the kind has a `scale` subresource.
    pub fn has_scale(&self) -> bool {
        self.resource.subresources.iter().any(|s| s.name == "scale")
    }

    /// Readies a new object: its status starts as the kind's initial one.
    pub fn prepare_for_create(&self, obj: &mut Value) {
        if self.resource.gvk.kind == "Namespace" {
            // The namespace controller's finalizer: content goes before the namespace does.
            if let Some(o) = obj.as_object_mut() {
                let spec = o.entry("spec").or_insert_with(|| json!({}));
                if spec.get("finalizers").is_none() {
                    spec["finalizers"] = json!(["kubernetes"]);
                }
            }
        }
        if !self.has_status() || self.resource.gvk.kind == "Node" {
            return;
        }
        let Some(o) = obj.as_object_mut() else { return };
        let initial = match self.resource.gvk.kind {
            "Pod" => json!({
                "phase": "Pending",
                "qosClass": crate::defaults::qos_class(o.get("spec").unwrap_or(&Value::Null)),
            }),
            "Namespace" => json!({ "phase": "Active" }),
            _ => Value::Object(Map::new()),
        };
        o.insert("status".into(), initial);
    }

    /// Readies an update of the object itself: the stored status stays.
    pub fn prepare_for_update(&self, old: &Value, new: &mut Value) {
        if !self.has_status() {
            return;
        }
        let Some(o) = new.as_object_mut() else { return };
        match old.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }

    /// Readies an update through `status`: everything but the status (and the request's
    /// `managedFields`) comes from the stored object.
    pub fn prepare_for_status_update(&self, old: &Value, new: &mut Value) {
        let status = new.get("status").cloned();
        let managed = new.pointer("/metadata/managedFields").cloned();
        let mut next = old.clone();
        if let Some(o) = next.as_object_mut() {
            match status {
                Some(s) => o.insert("status".into(), s),
                None => o.remove("status"),
            };
            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                match managed {
                    Some(mf) => m.insert("managedFields".into(), mf),
                    None => m.remove("managedFields"),
                };
                // The request's resourceVersion is its precondition.
                match new.pointer("/metadata/resourceVersion") {
                    Some(rv) => m.insert("resourceVersion".into(), rv.clone()),
                    None => m.remove("resourceVersion"),
                };
            }
        }
        *new = next;
    }

    /// The `autoscaling/v1` `Scale` of a workload.
    pub fn scale_of(&self, obj: &Value) -> Result<Value, ApiError> {
        let meta = obj.get("metadata").cloned().unwrap_or_default();
        let mut scale_meta = Map::new();
        for f in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
            if let Some(v) = meta.get(f) {
                scale_meta.insert(f.into(), v.clone());
            }
        }
        let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let mut status = json!({
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
        });
        if let Some(sel) = obj.pointer("/spec/selector") {
            let s = selector_string(sel).map_err(|why| {
                ApiError::internal(format!("the {}'s selector: {why}", self.resource.singular))
            })?;
            status["selector"] = Value::String(s);
        }
        Ok(json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": scale_meta,
            "spec": { "replicas": replicas },
            "status": status,
        }))
    }

    /// Writes a `Scale`'s replicas into the workload; the Scale's resourceVersion, when set,
    /// becomes the workload's precondition.
    pub fn apply_scale(&self, obj: &Value, scale: &Value) -> Result<Value, ApiError> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let replicas = match scale.pointer("/spec/replicas") {
            None | Some(Value::Null) => 0,
            Some(v) => {
                v.as_i64().filter(|r| (0..=i64::from(i32::MAX)).contains(r)).ok_or_else(|| {
                    ApiError::invalid(
                        self.resource,
                        name,
                        "spec.replicas",
                        &format!("Invalid value: {v}: must be greater than or equal to 0"),
                    )
                })?
            }
        };
        let mut next = obj.clone();
        next["spec"]["replicas"] = json!(replicas);
        match scale.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            Some(rv) if !rv.is_empty() => {
                next["metadata"]["resourceVersion"] = Value::String(rv.to_owned());
            }
            _ => {
                if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
            }
        }
        Ok(next)
    }
}

/// A `LabelSelector` as the string form selectors are written in (`app=web,tier in (a,b)`).
pub fn selector_string(sel: &Value) -> Result<String, String> {
    let mut parts = Vec::new();
    if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            let v = v
                .as_str()
                .ok_or_else(|| format!("the value of matchLabels {k:?} is not a string"))?;
            parts.push(format!("{k}={v}"));
        }
    }
    for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = e.get("key").and_then(Value::as_str).ok_or("a matchExpression has no key")?;
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => parts.push(format!("{key} in ({})", sorted.join(","))),
            Some("NotIn") => parts.push(format!("{key} notin ({})", sorted.join(","))),
            Some("Exists") => parts.push(key.to_owned()),
            Some("DoesNotExist") => parts.push(format!("!{key}")),
            other => return Err(format!("unknown operator {other:?} for key {key:?}")),
        }
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;
    use crate::registry;

    fn of(group: &str, plural: &str) -> Strategy {
        Strategy::of(registry::find(group, "v1", plural).unwrap())
    }

    #[test]
    fn creates_start_with_the_initial_status_except_nodes() {
        let mut pod = json!({ "spec": {}, "status": { "phase": "Running", "podIP": "1.2.3.4" } });
        of("", "pods").prepare_for_create(&mut pod);
        assert_eq!(pod["status"], json!({ "phase": "Pending", "qosClass": "BestEffort" }));
        let mut node = json!({ "status": { "capacity": { "cpu": "2" } } });
        of("", "nodes").prepare_for_create(&mut node);
        assert_eq!(node["status"]["capacity"]["cpu"], "2");
        let mut cm = json!({ "data": { "a": "b" } });
        of("", "configmaps").prepare_for_create(&mut cm);
        assert!(cm.get("status").is_none(), "no status subresource, nothing to reset");
    }

    #[test]
    fn updates_keep_the_stored_status_and_status_updates_keep_everything_else() {
        let old = json!({ "metadata": { "name": "d", "labels": { "a": "1" }, "resourceVersion": "7" },
                          "spec": { "replicas": 1 }, "status": { "replicas": 1 } });
        let mut new = json!({ "metadata": { "name": "d", "labels": { "a": "2" } },
                              "spec": { "replicas": 3 }, "status": { "replicas": 9 } });
        let deployments = of("apps", "deployments");
        deployments.prepare_for_update(&old, &mut new);
        assert_eq!(new["status"], json!({ "replicas": 1 }));
        assert_eq!(new["spec"]["replicas"], 3);
        let mut st = json!({ "metadata": { "name": "d", "labels": { "a": "3" }, "managedFields": [] },
                             "spec": { "replicas": 5 }, "status": { "replicas": 2 } });
        deployments.prepare_for_status_update(&old, &mut st);
        assert_eq!(st["status"], json!({ "replicas": 2 }));
        assert_eq!(st["spec"]["replicas"], 1);
        assert_eq!(st["metadata"]["labels"]["a"], "1");
        assert_eq!(st["metadata"]["managedFields"], json!([]));
        assert!(st["metadata"].get("resourceVersion").is_none(), "no precondition was asked");
    }

    #[test]
    fn scale_reads_and_writes_the_workloads_replicas() {
        let d = json!({ "metadata": { "name": "web", "namespace": "a", "uid": "u", "resourceVersion": "4", "labels": { "x": "y" } },
                        "spec": { "replicas": 2, "selector": { "matchLabels": { "app": "web" },
                                  "matchExpressions": [{ "key": "tier", "operator": "In", "values": ["b", "a"] },
                                                       { "key": "canary", "operator": "DoesNotExist" }] } },
                        "status": { "replicas": 1 } });
        let s = of("apps", "deployments");
        let scale = s.scale_of(&d).unwrap();
        assert_eq!(scale["spec"]["replicas"], 2);
        assert_eq!(
            scale["status"],
            json!({ "replicas": 1, "selector": "app=web,tier in (a,b),!canary" })
        );
        assert_eq!(scale["metadata"]["resourceVersion"], "4");
        assert!(scale["metadata"].get("labels").is_none());
        let next = s.apply_scale(&d, &json!({ "spec": { "replicas": 5 } })).unwrap();
        assert_eq!(next["spec"]["replicas"], 5);
        assert!(next["metadata"].get("resourceVersion").is_none(), "unconditional");
        let e = s.apply_scale(&d, &json!({ "spec": { "replicas": -1 } })).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("spec.replicas"), "{}", e.message);
    }
}
