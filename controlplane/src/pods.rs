//! The Pod subresources that are actions, not views: `binding` (the scheduler's assignment),
//! `eviction` (a delete that honours PodDisruptionBudgets), and the streaming ones (`log`,
//! `exec`, `attach`, `portforward`), which need the agent's tunnel to the node.
//!
//! - **binding** sets `spec.nodeName` once (409 if the pod is already bound or being
//!   deleted) and records the `PodScheduled` condition, as upstream's `assignPod`.
//! - **eviction** deletes a pod unless that would break its disruption budget: a pod that is
//!   Pending, Succeeded or Failed (or already deleting) goes at once; otherwise the one PDB
//!   whose selector matches it must have been processed (`observedGeneration`) and allow a
//!   disruption, else `429 TooManyRequests` with a `DisruptionBudget` cause. The PDB's
//!   `disruptionsAllowed` is decremented and the pod listed in `disruptedPods` in the same
//!   transaction as the pod's deletion, so two evictions can never spend one disruption.
//!   (PDB status comes from the disruption controller of the next issue.)
//! - The streaming subresources answer `503` naming what is missing until the tunnel exists.

use keelson_store::KeyRange;
use serde_json::{json, Value};

use crate::objects::{self, ApiError, Cause, Deleted, ListOptions, Objects, Preconditions, Result};
use crate::registry::{self, Resource};

fn pods() -> Result<&'static Resource> {
    registry::find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods are not registered"))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A `Success` Status with `code`.
pub fn success(code: u16) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code })
}

/// `POST pods/{name}/binding`.
pub async fn bind(
    objects: &Objects,
    namespace: &str,
    name: &str,
    binding: &Value,
    dry_run: bool,
) -> Result<Value> {
    let r = pods()?;
    let target = binding.get("target").cloned().unwrap_or_default();
    let node = target.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    if node.is_empty() {
        return Err(ApiError::invalid(r, name, "target.name", "Required value"));
    }
    if target.get("kind").and_then(Value::as_str).is_some_and(|k| !k.is_empty() && k != "Node") {
        return Err(ApiError::invalid(r, name, "target.kind", "Unsupported value: must be Node"));
    }
    let annotations = binding.pointer("/metadata/annotations").and_then(Value::as_object).cloned();
    objects
        .update_with(r, Some(namespace), name, dry_run, &[], |current, _, _| {
            let Some(current) = current else { return Err(ApiError::not_found(r, name)) };
            let conflict = |why: String| ApiError::new(409, "Conflict", why).about(r, name);
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(conflict(format!("pod {name} is being deleted, cannot be assigned to a host")));
            }
            if let Some(bound) = current.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                return Err(conflict(format!("pod {name} is already assigned to node \"{bound}\"")));
            }
            let mut next = current.clone();
            next["spec"]["nodeName"] = json!(node);
            if let Some(a) = &annotations {
                let m = next["metadata"].as_object_mut().ok_or_else(|| ApiError::internal("pod without metadata"))?;
                let existing = m.entry("annotations").or_insert_with(|| json!({}));
                if let Some(e) = existing.as_object_mut() {
                    e.extend(a.clone());
                }
            }
            let conditions = next["status"]
                .as_object_mut()
                .map(|s| s.entry("conditions").or_insert_with(|| json!([])))
                .and_then(Value::as_array_mut);
            if let Some(list) = conditions {
                list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                list.push(json!({ "type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now() }));
            }
            if let Some(m) = next["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            Ok(next)
        })
        .await?;
    Ok(success(201))
}

/// Whether a `LabelSelector` object selects `labels` (an empty selector selects everything,
/// as for PDBs in policy/v1).
pub fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expressions =
        selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

fn too_many(message: String) -> ApiError {
    let mut e = ApiError::new(
        429,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    e.causes.push(Cause { reason: "DisruptionBudget".into(), message, field: String::new() });
    e
}

/// `POST pods/{name}/eviction`.
pub async fn evict(
    objects: &Objects,
    namespace: &str,
    name: &str,
    eviction: &Value,
    dry_run: bool,
) -> Result<Value> {
    let r = pods()?;
    let pod = objects.get(r, Some(namespace), name).await?;
    let opts = eviction.get("deleteOptions").cloned().unwrap_or_default();
    let pre = Preconditions {
        uid: opts.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned),
        resource_version: opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid precondition resourceVersion {v:?}"))
                })
            })
            .transpose()?,
    };
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
    let ignore_budget = matches!(phase, "Pending" | "Succeeded" | "Failed")
        || pod.pointer("/metadata/deletionTimestamp").is_some();
    let budgets = registry::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("PDBs are not registered"))?;
    let labels =
        pod.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
    let matching: Vec<Value> = if ignore_budget {
        Vec::new()
    } else {
        objects
            .list(budgets, Some(namespace), &ListOptions::default())
            .await?
            .items
            .into_iter()
            .filter(|b| b.pointer("/spec/selector").is_some_and(|s| selects(s, &labels)))
            .collect()
    };
    if matching.len() > 1 {
        return Err(ApiError::internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."));
    }
    let Some(pdb) = matching.into_iter().next() else {
        return match objects.delete(r, Some(namespace), name, &pre, dry_run).await? {
            Deleted::Gone(_) | Deleted::Pending(_) => Ok(success(201)),
        };
    };
    let pdb_name =
        pdb.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let generation = pdb.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    let observed = pdb.pointer("/status/observedGeneration").and_then(Value::as_i64).unwrap_or(0);
    if observed < generation {
        return Err(too_many(format!(
            "The disruption budget {pdb_name} is still being processed by the server."
        )));
    }
    let allowed = pdb.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
    if allowed <= 0 {
        let desired = pdb.pointer("/status/desiredHealthy").and_then(Value::as_i64).unwrap_or(0);
        let current = pdb.pointer("/status/currentHealthy").and_then(Value::as_i64).unwrap_or(0);
        return Err(too_many(format!(
            "The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently"
        )));
    }
    let pdb_key = objects::key(budgets, Some(namespace), &pdb_name);
    let mut spent = pdb.clone();
    spent["status"]["disruptionsAllowed"] = json!(allowed - 1);
    let disrupted = spent["status"]
        .as_object_mut()
        .map(|s| s.entry("disruptedPods").or_insert_with(|| json!({})));
    if let Some(d) = disrupted.and_then(Value::as_object_mut) {
        d.insert(name.to_owned(), json!(now()));
    }
    let stored = objects::encode(&spent)?;
    let reads = [KeyRange::key(pdb_key.clone())];
    // The budget must be exactly as checked when the pod goes: compared in the transaction.
    let deleted = objects
        .delete_with(r, Some(namespace), name, &pre, dry_run, &reads, |_, read, effects| {
            let seen = pdb
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|v| v.parse().ok());
            if read.get(&reads[0]).first().map(|kv| kv.mod_revision) != seen {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("the disruption budget {pdb_name} changed; try the eviction again"),
                ));
            }
            effects.put(pdb_key.clone(), stored.clone());
            Ok(())
        })
        .await?;
    match deleted {
        Deleted::Gone(_) | Deleted::Pending(_) => Ok(success(201)),
    }
}

/// The answer of a streaming subresource until the node tunnel exists.
pub async fn stream(objects: &Objects, namespace: &str, name: &str, sub: &str) -> Result<Value> {
    let r = pods()?;
    let pod = objects.get(r, Some(namespace), name).await?;
    let Some(node) =
        pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
    else {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    };
    Err(ApiError::new(
        503,
        "ServiceUnavailable",
        format!("pods/{sub} needs the agent's tunnel to node \"{node}\", which this control plane does not have yet"),
    ))
}

#[cfg(test)]
#[path = "pods_tests.rs"]
mod tests;
