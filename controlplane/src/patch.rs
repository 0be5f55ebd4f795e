//! Strategic merge patch (`application/strategic-merge-patch+json`) over untyped JSON, driven by
//! the [schema](crate::schema)'s `x-kubernetes-patch-strategy` and
//! `x-kubernetes-patch-merge-key` extensions.
//!
//! Semantics follow upstream's server-side `StrategicMergeMapPatch` (apimachinery
//! `strategicpatch`), as documented in the community's strategic-merge-patch and
//! preserve-order design notes:
//!
//! - maps merge key by key; `null` deletes a key; `$patch: replace` replaces the map with the
//!   patch, `$patch: delete` empties it;
//! - lists are replaced unless the field's strategy is `merge`: lists of objects merge by the
//!   merge key (an item with `$patch: delete` removes the matching items, an item
//!   `{"$patch": "replace"}` makes the rest of the patch list replace the list), lists of
//!   scalars take the union;
//! - `$deleteFromPrimitiveList/<field>` removes values from a merged scalar list;
//! - `$retainKeys` (strategy `retainKeys`) clears every key not listed, and every key the patch
//!   sets must be listed;
//! - `$setElementOrder/<field>` orders a merged list; otherwise patched items take the patch's
//!   order and the other items keep their relative order, interleaved as upstream interleaves
//!   them (an item new to the list comes before the server-only items it is compared with).
//!
//! One deliberate difference: when a patch adds a field the original lacks, upstream stores the
//! patch value verbatim, directives included; here directives inside it are applied (against an
//! empty value), so no `$patch` key can reach storage.

use serde_json::{Map, Value};

use crate::schema::{PatchMeta, Schemas};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Why a strategic merge patch could not be applied. `path` is the field path
/// (`spec.template.spec.containers`), empty for the top level.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The original or the patch is not a JSON object.
    #[error("a strategic merge patch and the object it patches must be JSON objects")]
    NotAnObject,
    /// `$patch` has a value other than `replace` or `delete` (or `merge` in a list).
    #[error("invalid $patch directive {directive:?} at {path:?}")]
    BadDirective {
        /// Where.
        path: String,
        /// The value found.
        directive: String,
    },
    /// `$patch: merge` in a list, which upstream does not support either.
    #[error("merging lists cannot be specified in the patch at {path:?}")]
    MergeDirectiveInList {
        /// Where.
        path: String,
    },
    /// An item of a merged list of objects lacks the merge key.
    #[error("an item of the list at {path:?} lacks its merge key {key:?}")]
    NoMergeKey {
        /// The list.
        path: String,
        /// The merge key.
        key: String,
    },
    /// A list mixes objects and scalars, or holds lists.
    #[error("the items of the list at {path:?} are not all objects or all scalars")]
    MixedList {
        /// The list.
        path: String,
    },
    /// A `$retainKeys`, `$deleteFromPrimitiveList` or `$setElementOrder` value is not a list.
    #[error("the {directive} directive at {path:?} must be a list")]
    DirectiveNotAList {
        /// Where.
        path: String,
        /// Which directive.
        directive: &'static str,
    },
    /// The patch sets a key that its `$retainKeys` list does not keep.
    #[error("the patch sets {key:?} at {path:?} but its $retainKeys list does not keep it")]
    NotRetained {
        /// Where.
        path: String,
        /// The key.
        key: String,
    },
    /// The patch list's items are not in the order, or not among the items, of its
    /// `$setElementOrder` list.
    #[error("the list at {path:?} does not follow the order of its $setElementOrder list")]
    OrderMismatch {
        /// The list.
        path: String,
    },
}

/// A `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Applies `patch` to `original`; `schema` is the schema of the kind (for example
/// `schemas.for_kind(gvk)`), `None` for an object without schema (then lists are replaced).
pub fn strategic_merge(
    schemas: &Schemas,
    schema: Option<&Value>,
    original: Value,
    patch: Value,
) -> Result<Value> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => {
            Patcher { schemas }.merge_map(schema, o, p, &mut String::new()).map(Value::Object)
        }
        _ => Err(Error::NotAnObject),
    }
}

struct Patcher<'a> {
    schemas: &'a Schemas,
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Patcher<'a> {
    fn field(&self, schema: Option<&'a Value>, key: &str) -> (Option<&'a Value>, PatchMeta) {
        let prop = schema.and_then(|s| self.schemas.property(s, key));
        (prop, prop.map(PatchMeta::of).unwrap_or_default())
    }

    fn merge_map(
        &self,
        schema: Option<&'a Value>,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
        path: &mut String,
    ) -> Result<Map<String, Value>> {
        if let Some(directive) = patch.remove(DIRECTIVE) {
            return match directive.as_str() {
                Some("replace") => Ok(patch),
                Some("delete") => Ok(Map::new()),
                _ => Err(Error::BadDirective {
                    path: path.clone(),
                    directive: directive.to_string(),
                }),
            };
        }
        if let Some(retain) = patch.remove(RETAIN_KEYS) {
            let Value::Array(retain) = retain else {
                return Err(Error::DirectiveNotAList {
                    path: path.clone(),
                    directive: RETAIN_KEYS,
                });
            };
            let kept = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
            for (k, v) in &patch {
                if !v.is_null()
                    && !k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
                    && !k.starts_with(SET_ELEMENT_ORDER)
                    && !kept(k)
                {
                    return Err(Error::NotRetained { path: path.clone(), key: k.clone() });
                }
            }
            original.retain(|k, _| kept(k));
        }
        // $setElementOrder lists first: they consume their patch lists.
        let orders: Vec<String> =
            patch.keys().filter(|k| k.starts_with(SET_ELEMENT_ORDER)).cloned().collect();
        for order_key in orders {
            let order = patch.remove(&order_key).unwrap_or(Value::Null);
            let key = &order_key[SET_ELEMENT_ORDER.len()..];
            let Value::Array(order) = order else {
                return Err(Error::DirectiveNotAList {
                    path: child_path(path, key),
                    directive: "$setElementOrder",
                });
            };
            let (prop, meta) = self.field(schema, key);
            let items = prop.and_then(|p| self.schemas.items(p));
            let mut list_path = child_path(path, key);
            let original_list = match original.remove(key) {
                Some(Value::Array(l)) => Some(l),
                Some(other) => {
                    original.insert(key.to_owned(), other);
                    None
                }
                None => None,
            };
            let patch_list = match patch.remove(key) {
                Some(Value::Array(l)) => Some(l),
                Some(other) => {
                    patch.insert(key.to_owned(), other);
                    None
                }
                None => None,
            };
            let merge_key = meta.merge_key.as_deref();
            if let Some(p) = &patch_list {
                check_order(p, &order, merge_key, &list_path)?;
            }
            let server = original_list.clone().unwrap_or_default();
            let merged = match (original_list, patch_list) {
                (None, None) => continue,
                (Some(o), None) => o,
                (None, Some(p)) => self.merge_list(items, &meta, Vec::new(), p, &mut list_path)?,
                (Some(o), Some(p)) if meta.merge => {
                    self.merge_list(items, &meta, o, p, &mut list_path)?
                }
                (Some(_), Some(p)) => p,
            };
            let ordered = normalize_order(merged, &order, &server, merge_key);
            original.insert(key.to_owned(), Value::Array(ordered));
        }
        for (key, value) in patch {
            if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
                let Value::Array(remove) = value else {
                    return Err(Error::DirectiveNotAList {
                        path: child_path(path, field),
                        directive: "$deleteFromPrimitiveList",
                    });
                };
                if let Some(Value::Array(list)) = original.get_mut(field) {
                    list.retain(|item| !remove.contains(item));
                }
                continue;
            }
            if value.is_null() {
                original.remove(&key);
                continue;
            }
            let (prop, meta) = self.field(schema, &key);
            let len = path.len();
            *path = child_path(path, &key);
            let merged = match (original.remove(&key), value) {
                (Some(Value::Object(o)), Value::Object(p)) if !meta.replace => {
                    Value::Object(self.merge_map(prop, o, p, path)?)
                }
                (None, Value::Object(p)) => {
                    Value::Object(self.merge_map(prop, Map::new(), p, path)?)
                }
                (Some(Value::Array(o)), Value::Array(p)) if meta.merge => Value::Array(
                    self.merge_list(prop.and_then(|s| self.schemas.items(s)), &meta, o, p, path)?,
                ),
                (None, Value::Array(p)) => Value::Array(self.merge_list(
                    prop.and_then(|s| self.schemas.items(s)),
                    &meta,
                    Vec::new(),
                    p,
                    path,
                )?),
                (_, p) => p,
            };
            path.truncate(len);
            original.insert(key, merged);
        }
        Ok(original)
    }

    /// Merges two lists of a field whose strategy is `meta` (replaced unless `merge`).
    fn merge_list(
        &self,
        items: Option<&'a Value>,
        meta: &PatchMeta,
        original: Vec<Value>,
        patch: Vec<Value>,
        path: &mut String,
    ) -> Result<Vec<Value>> {
        if !meta.merge {
            // Replaced; directives inside the new items still apply.
            return patch
                .into_iter()
                .map(|item| match item {
                    Value::Object(p) => {
                        self.merge_map(items, Map::new(), p, path).map(Value::Object)
                    }
                    other => Ok(other),
                })
                .collect();
        }
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let objects = list_kind(&original, &patch, path)?;
        if objects != Some(true) {
            let mut merged = original.clone();
            for v in &patch {
                if !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            return Ok(normalize_order(merged, &patch, &original, None));
        }
        let Some(key) = meta.merge_key.as_deref() else {
            // A merge strategy without a key on a list of objects: upstream refuses too.
            return Err(Error::NoMergeKey { path: path.clone(), key: String::new() });
        };
        let mut original = original;
        let mut plain = Vec::new();
        let mut replace = false;
        for item in patch {
            match item.get(DIRECTIVE) {
                None => plain.push(item),
                Some(Value::String(d)) if d == "delete" => {
                    let Some(k) = item.get(key) else {
                        return Err(Error::NoMergeKey { path: path.clone(), key: key.to_owned() });
                    };
                    original.retain(|o| o.get(key) != Some(k));
                }
                Some(Value::String(d)) if d == "replace" => replace = true,
                Some(Value::String(d)) if d == "merge" => {
                    return Err(Error::MergeDirectiveInList { path: path.clone() })
                }
                Some(other) => {
                    return Err(Error::BadDirective {
                        path: path.clone(),
                        directive: other.to_string(),
                    })
                }
            }
        }
        let (original, patch) = if replace { (plain, Vec::new()) } else { (original, plain) };
        let mut merged = original.clone();
        for item in &patch {
            let Some(k) = item.get(key) else {
                return Err(Error::NoMergeKey { path: path.clone(), key: key.to_owned() });
            };
            let Value::Object(item_map) = item.clone() else { continue };
            match merged.iter().position(|o| o.get(key) == Some(k)) {
                Some(i) => {
                    let Value::Object(o) = std::mem::take(&mut merged[i]) else { continue };
                    merged[i] = Value::Object(self.merge_map(items, o, item_map, path)?);
                }
                None => {
                    merged.push(Value::Object(self.merge_map(items, Map::new(), item_map, path)?))
                }
            }
        }
        Ok(normalize_order(merged, &patch, &original, Some(key)))
    }
}

/// `Some(true)` for a list of objects, `Some(false)` for scalars, `None` when both are empty.
fn list_kind(original: &[Value], patch: &[Value], path: &str) -> Result<Option<bool>> {
    let mut kind = None;
    for v in original.iter().chain(patch) {
        let is_object = match v {
            Value::Object(_) => true,
            Value::Array(_) => return Err(Error::MixedList { path: path.to_owned() }),
            _ => false,
        };
        match kind {
            None => kind = Some(is_object),
            Some(k) if k != is_object => return Err(Error::MixedList { path: path.to_owned() }),
            Some(_) => {}
        }
    }
    Ok(kind)
}

/// The identity of a list item: its merge key's value, or the item itself for scalars.
fn identity<'v>(item: &'v Value, key: Option<&str>) -> Option<&'v Value> {
    match key {
        Some(k) => item.get(k),
        None => Some(item),
    }
}

fn position(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    let id = identity(item, key)?;
    list.iter().position(|v| identity(v, key) == Some(id))
}

/// Orders `merged`: the items named in `patch_order` take that order, the others keep their
/// order in `server_order`, and the two runs interleave by their positions in `server_order`.
fn normalize_order(
    merged: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let (mut patched, mut server_only): (Vec<Value>, Vec<Value>) =
        merged.into_iter().partition(|v| position(patch_order, v, key).is_some());
    patched.sort_by_key(|v| position(patch_order, v, key));
    server_only.sort_by_key(|v| position(server_order, v, key));
    let (mut left, mut right) =
        (server_only.into_iter().peekable(), patched.into_iter().peekable());
    let mut out = Vec::with_capacity(left.len() + right.len());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                matches!((position(server_order, l, key), position(server_order, r, key)), (Some(li), Some(ri)) if li < ri)
            }
        };
        out.extend(if take_left { left.next() } else { right.next() });
    }
    out
}

/// Checks that the patch list's items (deletions aside) appear in `order`, in its order.
fn check_order(patch: &[Value], order: &[Value], key: Option<&str>, path: &str) -> Result<()> {
    let mut at = 0;
    for item in patch {
        if item.get(DIRECTIVE).is_some() {
            continue;
        }
        let id = identity(item, key).ok_or_else(|| Error::NoMergeKey {
            path: path.to_owned(),
            key: key.unwrap_or_default().to_owned(),
        })?;
        match order[at..].iter().position(|o| identity(o, key) == Some(id)) {
            Some(i) => at += i + 1,
            None => return Err(Error::OrderMismatch { path: path.to_owned() }),
        }
    }
    Ok(())
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

    fn apply(kind: (&'static str, &'static str), original: Value, patch: Value) -> Result<Value> {
        let s = schemas();
        let schema = s.for_kind(&Gvk { group: kind.0, version: "v1", kind: kind.1 });
        assert!(schema.is_some());
        strategic_merge(s, schema, original, patch)
    }

    const POD: (&str, &str) = ("", "Pod");
    const DEPLOYMENT: (&str, &str) = ("apps", "Deployment");

    fn pod(containers: Value) -> Value {
        json!({ "kind": "Pod", "spec": { "containers": containers } })
    }

    #[test]
    fn containers_merge_by_name_and_new_ones_are_added() {
        // The design note's example: a patch naming a new container adds it, one naming an
        // existing container changes only the fields it gives.
        let original = pod(
            json!([{ "name": "nginx", "image": "nginx-1.0", "ports": [{ "containerPort": 80 }] }]),
        );
        let out = apply(
            POD,
            original.clone(),
            pod(json!([{ "name": "log-tailer", "image": "log-tailer-1.0" }])),
        )
        .expect("patch");
        let names: Vec<&Value> = out["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| &c["name"])
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&&json!("nginx")) && names.contains(&&json!("log-tailer")));
        let out = apply(POD, original, pod(json!([{ "name": "nginx", "image": "nginx-1.1" }])))
            .expect("patch");
        assert_eq!(
            out["spec"]["containers"],
            json!([{ "name": "nginx", "image": "nginx-1.1", "ports": [{ "containerPort": 80 }] }])
        );
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        let original = pod(json!([{ "name": "a" }, { "name": "b" }]));
        let patch = json!({ "spec": {
            "$setElementOrder/containers": [{ "name": "b" }, { "name": "c" }, { "name": "a" }],
            "containers": [{ "name": "c", "image": "x" }]
        } });
        let out = apply(POD, original, patch).expect("patch");
        assert_eq!(
            out["spec"]["containers"],
            json!([{ "name": "b" }, { "name": "c", "image": "x" }, { "name": "a" }])
        );
    }

    #[test]
    fn without_set_element_order_server_only_items_keep_their_order() {
        let original = pod(json!([{ "name": "a" }, { "name": "b" }, { "name": "c" }]));
        let out = apply(
            POD,
            original,
            pod(json!([{ "name": "c", "image": "x" }, { "name": "a", "image": "y" }])),
        )
        .expect("patch");
        // Patched items take the patch's order (c before a); b, only on the server, is placed
        // by its original position against the next patched item (b was before c).
        assert_eq!(
            out["spec"]["containers"],
            json!([{ "name": "b" }, { "name": "c", "image": "x" }, { "name": "a", "image": "y" }])
        );
    }

    #[test]
    fn patch_delete_in_a_list_removes_the_item_with_that_key() {
        let original = pod(json!([{ "name": "a" }, { "name": "b" }]));
        let out =
            apply(POD, original, pod(json!([{ "name": "a", "$patch": "delete" }]))).expect("patch");
        assert_eq!(out["spec"]["containers"], json!([{ "name": "b" }]));
    }

    #[test]
    fn patch_replace_in_a_list_replaces_the_whole_list() {
        let original = pod(json!([{ "name": "a", "image": "1" }, { "name": "b" }]));
        let out = apply(POD, original, pod(json!([{ "name": "c" }, { "$patch": "replace" }])))
            .expect("patch");
        assert_eq!(out["spec"]["containers"], json!([{ "name": "c" }]));
    }

    #[test]
    fn patch_replace_and_delete_on_maps() {
        let original = json!({ "metadata": { "labels": { "a": "1", "b": "2" } } });
        let out = apply(
            POD,
            original.clone(),
            json!({ "metadata": { "labels": { "$patch": "replace", "c": "3" } } }),
        )
        .expect("patch");
        assert_eq!(out["metadata"]["labels"], json!({ "c": "3" }));
        let out = apply(POD, original, json!({ "metadata": { "labels": { "$patch": "delete" } } }))
            .expect("patch");
        assert_eq!(out["metadata"]["labels"], json!({}));
    }

    #[test]
    fn null_deletes_a_key_and_maps_merge_key_by_key() {
        let original = json!({ "metadata": { "labels": { "a": "1", "b": "2" }, "annotations": { "x": "y" } } });
        let out = apply(
            POD,
            original,
            json!({ "metadata": { "labels": { "a": null, "c": "3" }, "annotations": null } }),
        )
        .expect("patch");
        assert_eq!(out["metadata"], json!({ "labels": { "b": "2", "c": "3" } }));
    }

    #[test]
    fn lists_without_a_merge_strategy_are_replaced() {
        let original = json!({ "spec": { "containers": [{ "name": "a", "args": ["x", "y"] }],
                                         "tolerations": [{ "key": "k1" }] } });
        let patch = json!({ "spec": { "containers": [{ "name": "a", "args": ["z"] }], "tolerations": [{ "key": "k2" }] } });
        let out = apply(POD, original, patch).expect("patch");
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["z"]));
        assert_eq!(out["spec"]["tolerations"], json!([{ "key": "k2" }]));
    }

    #[test]
    fn primitive_merge_lists_take_the_union_and_delete_from_primitive_list_removes() {
        let original = json!({ "metadata": { "finalizers": ["a", "b"] } });
        let out = apply(POD, original.clone(), json!({ "metadata": { "finalizers": ["c", "a"] } }))
            .expect("patch");
        let got: Vec<&str> = out["metadata"]["finalizers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(got.len(), 3);
        assert!(["a", "b", "c"].iter().all(|f| got.contains(f)));
        let out = apply(
            POD,
            original,
            json!({ "metadata": { "$deleteFromPrimitiveList/finalizers": ["a"] } }),
        )
        .expect("patch");
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn set_element_order_orders_primitive_merge_lists() {
        let original = json!({ "metadata": { "finalizers": ["a", "b"] } });
        let patch = json!({ "metadata": { "$setElementOrder/finalizers": ["c", "b", "a"], "finalizers": ["c"] } });
        let out = apply(POD, original, patch).expect("patch");
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "b", "a"]));
    }

    #[test]
    fn retain_keys_clears_the_keys_it_does_not_list() {
        // The design note's example: switching a Deployment from RollingUpdate to Recreate
        // must drop rollingUpdate.
        let original = json!({ "spec": { "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%" } } } });
        let patch =
            json!({ "spec": { "strategy": { "$retainKeys": ["type"], "type": "Recreate" } } });
        let out = apply(DEPLOYMENT, original.clone(), patch).expect("patch");
        assert_eq!(out["spec"]["strategy"], json!({ "type": "Recreate" }));
        let bad = json!({ "spec": { "strategy": { "$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": {} } } });
        assert_eq!(
            apply(DEPLOYMENT, original, bad),
            Err(Error::NotRetained { path: "spec.strategy".into(), key: "rollingUpdate".into() })
        );
    }

    #[test]
    fn nested_merge_lists_merge_inside_merged_items() {
        let original = json!({ "spec": { "template": { "spec": { "containers": [
            { "name": "a", "env": [{ "name": "X", "value": "1" }, { "name": "Y", "value": "2" }] }
        ] } } } });
        let patch = json!({ "spec": { "template": { "spec": { "containers": [
            { "name": "a", "env": [{ "name": "Y", "value": "3" }] }
        ] } } } });
        let out = apply(DEPLOYMENT, original, patch).expect("patch");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{ "name": "X", "value": "1" }, { "name": "Y", "value": "3" }])
        );
    }

    #[test]
    fn directives_in_new_fields_are_applied_not_stored() {
        let out = apply(POD, json!({}), json!({ "spec": { "containers": [{ "name": "a" }, { "name": "b", "$patch": "delete" }] } }))
            .expect("patch");
        assert_eq!(out["spec"]["containers"], json!([{ "name": "a" }]));
        assert!(!out.to_string().contains('$'));
    }

    #[test]
    fn bad_patches_get_clear_errors() {
        let original = pod(json!([{ "name": "a" }]));
        assert_eq!(
            apply(POD, original.clone(), pod(json!([{ "image": "x" }]))),
            Err(Error::NoMergeKey { path: "spec.containers".into(), key: "name".into() })
        );
        assert_eq!(
            apply(POD, original.clone(), json!({ "spec": { "$patch": "explode" } })),
            Err(Error::BadDirective { path: "spec".into(), directive: "\"explode\"".into() })
        );
        assert_eq!(
            apply(POD, original.clone(), pod(json!([{ "$patch": "merge" }]))),
            Err(Error::MergeDirectiveInList { path: "spec.containers".into() })
        );
        assert_eq!(
            apply(
                POD,
                original.clone(),
                json!({ "spec": {
                "$setElementOrder/containers": [{ "name": "a" }], "containers": [{ "name": "z" }] } })
            ),
            Err(Error::OrderMismatch { path: "spec.containers".into() })
        );
        assert_eq!(apply(POD, original.clone(), json!([1])), Err(Error::NotAnObject));
        assert_eq!(
            apply(POD, original, json!({ "spec": { "containers": [{ "name": "a" }, "b"] } })),
            Err(Error::MixedList { path: "spec.containers".into() })
        );
    }

    #[test]
    fn replaced_lists_may_mix_kinds_as_free_form_json_does() {
        let out = strategic_merge(
            schemas(),
            None,
            json!({ "l": [1] }),
            json!({ "l": [1, "a", { "b": 2 }] }),
        )
        .expect("patch");
        assert_eq!(out, json!({ "l": [1, "a", { "b": 2 }] }));
    }

    #[test]
    fn objects_without_schema_merge_maps_and_replace_lists() {
        let out = strategic_merge(
            schemas(),
            None,
            json!({ "a": { "b": 1 }, "l": [1, 2] }),
            json!({ "a": { "c": 2 }, "l": [3] }),
        )
        .expect("patch");
        assert_eq!(out, json!({ "a": { "b": 1, "c": 2 }, "l": [3] }));
    }
}
