//! Lists sent as stored: a `…List` of JSON items spliced from the stored bytes, without building
//! a `serde_json::Value` tree per object.
//!
//! A list of 10 000 pods is 65 MB of JSON. Decoding every item to a `Value` and encoding it
//! again costs seconds and hundreds of megabytes of short-lived allocations; this scans each
//! stored object's top level and its `metadata` as borrowed raw JSON
//! (`serde_json::value::RawValue`), writes `apiVersion` and `kind` as served and
//! `metadata.resourceVersion` from the item's revision, and copies everything else byte for
//! byte. The result is what [`crate::objects::decode`] plus the list encoding give (field
//! order aside), which the tests check. Used for every plain JSON list without selectors, from
//! the watch cache or a page of the store; Tables, metadata-only lists and selectors take the
//! `Value` path.

use std::collections::BTreeMap;

use keelson_store::{KeyValue, Revision};
use serde_json::value::RawValue;

use crate::objects::{ApiError, ListPage, Result};
use crate::registry::Resource;

fn undecodable(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("decode a stored object: {e}"))
}

fn key(out: &mut Vec<u8>, k: &str) -> Result<()> {
    serde_json::to_writer(&mut *out, k).map_err(undecodable)?;
    out.push(b':');
    Ok(())
}

/// Appends one stored object as served: `apiVersion` and `kind` of `r`, `resourceVersion`
/// `revision`, everything else as stored.
pub fn item(out: &mut Vec<u8>, stored: &[u8], revision: Revision, r: &Resource) -> Result<()> {
    let top: BTreeMap<String, &RawValue> = serde_json::from_slice(stored).map_err(undecodable)?;
    let metadata = match top.get("metadata") {
        Some(m) => Some(
            serde_json::from_str::<BTreeMap<String, &RawValue>>(m.get())
                .map_err(|_| undecodable("metadata is not an object"))?,
        ),
        None => None,
    };
    out.push(b'{');
    key(out, "apiVersion")?;
    serde_json::to_writer(&mut *out, &r.gvk.api_version()).map_err(undecodable)?;
    out.push(b',');
    key(out, "kind")?;
    serde_json::to_writer(&mut *out, r.gvk.kind).map_err(undecodable)?;
    out.push(b',');
    key(out, "metadata")?;
    out.push(b'{');
    let rv = revision.to_string();
    let mut first = true;
    for (k, v) in metadata.iter().flatten().filter(|(k, _)| *k != "resourceVersion") {
        if !first {
            out.push(b',');
        }
        first = false;
        key(out, k)?;
        out.extend_from_slice(v.get().as_bytes());
    }
    if !first {
        out.push(b',');
    }
    key(out, "resourceVersion")?;
    serde_json::to_writer(&mut *out, &rv).map_err(undecodable)?;
    out.push(b'}');
    for (k, v) in &top {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        out.push(b',');
        key(out, k)?;
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    Ok(())
}

/// A `…List` of `r` from a page of stored pairs, with its `continue` and `remainingItemCount`.
pub fn encode(r: &Resource, page: &ListPage<KeyValue>) -> Result<Vec<u8>> {
    let kvs = &page.items;
    let size: usize = kvs.iter().map(|kv| kv.value.len() + 64).sum();
    let mut out = Vec::with_capacity(size + 512);
    out.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut out, &format!("{}List", r.gvk.kind)).map_err(undecodable)?;
    out.extend_from_slice(b",\"apiVersion\":");
    serde_json::to_writer(&mut out, &r.gvk.api_version()).map_err(undecodable)?;
    out.extend_from_slice(b",\"metadata\":{\"resourceVersion\":");
    serde_json::to_writer(&mut out, &page.resource_version.to_string()).map_err(undecodable)?;
    if let Some(token) = &page.continue_token {
        out.extend_from_slice(b",\"continue\":");
        serde_json::to_writer(&mut out, token).map_err(undecodable)?;
    }
    if let Some(n) = page.remaining {
        out.extend_from_slice(b",\"remainingItemCount\":");
        serde_json::to_writer(&mut out, &n).map_err(undecodable)?;
    }
    out.extend_from_slice(b"},\"items\":[");
    for (i, kv) in kvs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(&mut out, &kv.value, kv.mod_revision, r)?;
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use serde_json::{json, Value};

    use super::*;

    fn page(revision: Revision, items: Vec<KeyValue>) -> ListPage<KeyValue> {
        ListPage { items, resource_version: revision, continue_token: None, remaining: None }
    }

    fn kv(value: Value, rev: Revision) -> KeyValue {
        KeyValue {
            key: b"/registry/pods/default/x".to_vec(),
            value: serde_json::to_vec(&value).unwrap().into(),
            create_revision: 1,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn a_list_is_what_decoding_every_item_gives() {
        let pods = crate::registry::find("", "v1", "pods").unwrap();
        let stored = [
            json!({ "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": "a", "namespace": "default",
                                  "labels": { "k\"q": "v\\n" }, "resourceVersion": "1" },
                    "spec": { "containers": [{ "name": "c", "image": "x" }] },
                    "status": { "phase": "Pending" } }),
            json!({ "metadata": { "name": "b" }, "spec": {} }),
            json!({ "kind": "Pod", "metadata": {}, "zeta": [1, 2.5, null, "é"] }),
        ];
        let kvs: Vec<KeyValue> =
            stored.iter().enumerate().map(|(i, v)| kv(v.clone(), 10 + i as i64)).collect();
        let mut p = page(42, kvs.clone());
        p.continue_token = Some("next".into());
        p.remaining = Some(7);
        let raw: Value = serde_json::from_slice(&encode(pods, &p).unwrap()).unwrap();
        let items: Vec<Value> = kvs
            .iter()
            .map(|kv| {
                let mut o = crate::objects::decode(&kv.value, kv.mod_revision).unwrap();
                o["apiVersion"] = json!("v1");
                o["kind"] = json!("Pod");
                o
            })
            .collect();
        let expected = json!({ "kind": "PodList", "apiVersion": "v1",
                               "metadata": { "resourceVersion": "42", "continue": "next",
                                             "remainingItemCount": 7 },
                               "items": items });
        assert_eq!(raw, expected);
    }

    #[test]
    fn an_empty_list_and_bad_objects() {
        let pods = crate::registry::find("", "v1", "pods").unwrap();
        let raw: Value = serde_json::from_slice(&encode(pods, &page(7, vec![])).unwrap()).unwrap();
        assert_eq!(raw["items"], json!([]));
        assert!(encode(pods, &page(7, vec![kv(json!({ "metadata": 3 }), 1)])).is_err());
        let mut broken = kv(json!({}), 1);
        broken.value = b"{\"metadata\":".to_vec().into();
        assert!(encode(pods, &page(7, vec![broken])).is_err());
    }
}
