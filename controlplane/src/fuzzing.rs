//! The work of the fuzz target (`controlplane/fuzz`, `cargo +nightly fuzz run request_body`):
//! everything a client's bytes reach before the store, which must answer every input with a
//! value or an error and never panic, loop or blow the stack.
//!
//! One input is tried as a Kubernetes protobuf body, as JSON and as YAML (objects and
//! patches), as selectors, and, when it decodes to an object, through defaulting, validation
//! (new and as an update), strategic merge and JSON patches against a realistic object,
//! server-side apply and update field ownership, unknown-field detection and table printing,
//! for a Pod, a Deployment, a Service and a ConfigMap. Kept in the library so plain
//! `cargo test` runs the same function over the seed corpus.

use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::managed::{FieldManager, Manager};
use crate::registry::{self, Resource};
use crate::schema::Schemas;

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(Schemas::build)
}

/// A realistic stored object of `r`'s kind, the other side of patches and updates.
fn fixture(r: &Resource) -> Value {
    let containers = json!([{ "name": "web", "image": "nginx:1.27", "ports": [{ "containerPort": 80, "protocol": "TCP" }] }]);
    let mut o = match r.gvk.kind {
        "Pod" => json!({ "spec": { "containers": containers } }),
        "Deployment" => {
            json!({ "spec": { "replicas": 2, "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web" } }, "spec": { "containers": containers } } } })
        }
        "Service" => {
            json!({ "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080 }] } })
        }
        _ => json!({ "data": { "a": "1" } }),
    };
    o["apiVersion"] = json!(r.gvk.api_version());
    o["kind"] = json!(r.gvk.kind);
    o["metadata"] =
        json!({ "name": "fixture", "namespace": "default", "labels": { "app": "web" } });
    o
}

/// Runs one input through every decoder and schema-driven function.
pub fn request_body(data: &[u8]) {
    let s = schemas();
    let _ = crate::proto::decode(data, s);
    if let Ok(text) = std::str::from_utf8(data) {
        let (label, field) = text.split_once('\n').unwrap_or((text, ""));
        for r in targets() {
            let _ = crate::selectors::Selectors::parse(Some(label), Some(field), r);
        }
    }
    let json: Option<Value> = serde_json::from_slice(data).ok();
    let yaml: Option<Value> = serde_yaml_ng::from_slice(data).ok();
    for v in json.into_iter().chain(yaml) {
        for r in targets() {
            object(s, r, &v);
        }
        if let Ok(ops) = serde_json::from_value::<json_patch::Patch>(v.clone()) {
            let mut doc = fixture(targets()[0]);
            let _ = json_patch::patch(&mut doc, &ops);
        }
    }
}

fn targets() -> [&'static Resource; 4] {
    let find = |g, p| registry::find(g, "v1", p).unwrap_or(&registry::RESOURCES[0]);
    [find("", "pods"), find("apps", "deployments"), find("", "services"), find("", "configmaps")]
}

fn object(s: &Schemas, r: &'static Resource, v: &Value) {
    let schema = s.for_kind(&r.gvk);
    let current = fixture(r);
    let mut defaulted = v.clone();
    crate::defaults::apply(r, &mut defaulted);
    let _ = crate::validation::validate(r, &defaulted, None);
    let _ = crate::validation::validate(r, &defaulted, Some(&current));
    if let Some(schema) = schema {
        let _ = crate::fields::unknown_fields(s, schema, v);
    }
    let _ = crate::patch::strategic_merge(s, schema, current.clone(), v.clone());
    let mut merged = current.clone();
    json_patch::merge(&mut merged, v);
    let fm = FieldManager::new(s);
    let who =
        Manager { name: "fuzz", api_version: "v1", subresource: "", time: "2026-01-01T00:00:00Z" };
    let _ = fm.apply(schema, Some(&current), v, &who, false);
    let _ = fm.apply(schema, None, v, &who, true);
    let mut updated = v.clone();
    fm.update(schema, Some(&current), &mut updated, &who);
    let _ = crate::printers::table(
        r,
        std::slice::from_ref(v),
        crate::printers::IncludeObject::Object,
        "v1",
        json!({}),
        chrono::Utc::now(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_seeds_run_without_panicking() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/request_body");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("the seed corpus") {
            let path = entry.expect("a seed").path();
            request_body(&std::fs::read(&path).expect("read a seed"));
            n += 1;
        }
        assert!(n >= 5, "only {n} seeds in {}", dir.display());
        // Hostile shapes: deep nesting and odd types must not panic either.
        let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
        request_body(deep.as_bytes());
        request_body(br#"{"metadata": 7, "spec": {"containers": "x", "ports": [null]}}"#);
        request_body(b"k8s\0\x0a\xff\xff\xff\xff\x0f");
    }
}
