//! ServiceAccount admission, as upstream's `ServiceAccount` plugin does it for new pods:
//!
//! - `spec.serviceAccountName` defaults to `default` (and the deprecated `serviceAccount`
//!   follows it);
//! - the service account must exist: otherwise 403 `error looking up service account ns/name`;
//! - unless the pod or its service account sets `automountServiceAccountToken: false`, the pod
//!   gets a projected `kube-api-access-xxxxx` volume (a bound token expiring after 3607 s, the
//!   `kube-root-ca.crt` ConfigMap's `ca.crt`, the namespace from the downward API) mounted
//!   read-only at `/var/run/secrets/kubernetes.io/serviceaccount` in every container and init
//!   container that has nothing mounted there;
//! - mirror pods (`kubernetes.io/config.mirror`) are left alone but may not reference a
//!   service account, Secrets or projected tokens: a node could otherwise read them through a
//!   static pod.
//!
//! Every namespace gets its `default` service account when it is created
//! ([`ensure_default`], called by the write pipeline and by bootstrap for the system
//! namespaces), the part of upstream's service-account controller pods cannot do without.
//! The `kube-root-ca.crt` ConfigMap comes with the controllers.

use serde_json::{json, Map, Value};

use crate::objects::{ApiError, Objects, Result};
use crate::pipeline::{WriteOptions, Writer};
use crate::registry::{self, Resource};

/// Where the token volume is mounted.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The annotation of a mirror pod (a static pod's copy in the API).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The token's lifetime in the projected volume, as upstream sets it.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The field manager of the `default` service accounts.
pub const MANAGER: &str = "kube-controller-manager";

/// Upstream's alphabet for generated name suffixes (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// What admission read of a new pod's service account before its write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The service account's name.
    pub name: String,
    /// Its `automountServiceAccountToken`, if set.
    pub automount: Option<bool>,
}

fn is_pod(r: &Resource) -> bool {
    r.gvk.kind == "Pod" && r.gvk.group.is_empty()
}

fn forbidden(pod: &Value, why: String) -> ApiError {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    ApiError::new(403, "Forbidden", format!("pods \"{name}\" is forbidden: {why}"))
}

/// Whether `pod` is a mirror pod.
pub fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Checks a new pod of `r` in `namespace` and reads its service account; `None` for other
/// resources and for mirror pods, which get nothing.
pub async fn lookup(
    objects: &Objects,
    r: &Resource,
    namespace: Option<&str>,
    pod: &Value,
) -> Result<Option<Lookup>> {
    let (true, Some(ns)) = (is_pod(r), namespace) else { return Ok(None) };
    if is_mirror(pod) {
        check_mirror(pod)?;
        return Ok(None);
    }
    let name = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned();
    let accounts = registry::find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not registered"))?;
    match objects.get_cached(accounts, Some(ns), &name).await {
        Ok(sa) => Ok(Some(Lookup {
            automount: sa.get("automountServiceAccountToken").and_then(Value::as_bool),
            name,
        })),
        Err(e) if e.code == 404 => Err(forbidden(
            pod,
            format!(
                "error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
            ),
        )),
        Err(e) => Err(e),
    }
}

/// A mirror pod may reference no service account, Secret or projected token.
fn check_mirror(pod: &Value) -> Result<()> {
    let spec = pod.get("spec");
    if spec
        .and_then(|s| s.get("serviceAccountName"))
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return Err(forbidden(pod, "a mirror pod may not reference service accounts".into()));
    }
    let volumes = spec.and_then(|s| s.get("volumes")).and_then(Value::as_array);
    for v in volumes.into_iter().flatten() {
        if v.get("secret").is_some() {
            return Err(forbidden(pod, "a mirror pod may not reference secrets".into()));
        }
        let sources = v.pointer("/projected/sources").and_then(Value::as_array);
        for s in sources.into_iter().flatten() {
            if s.get("secret").is_some() {
                return Err(forbidden(pod, "a mirror pod may not reference secrets".into()));
            }
            if s.get("serviceAccountToken").is_some() {
                return Err(forbidden(
                    pod,
                    "a mirror pod may not use ServiceAccountToken volume projections".into(),
                ));
            }
        }
    }
    let env_secret = containers(pod).any(|c| {
        let env = c.get("env").and_then(Value::as_array).into_iter().flatten();
        let from = c.get("envFrom").and_then(Value::as_array).into_iter().flatten();
        env.into_iter().any(|e| e.pointer("/valueFrom/secretKeyRef").is_some())
            || from.into_iter().any(|e| e.get("secretRef").is_some())
    });
    if env_secret {
        return Err(forbidden(pod, "a mirror pod may not reference secrets".into()));
    }
    Ok(())
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers", "ephemeralContainers"].into_iter().flat_map(move |k| {
        pod.get("spec").and_then(|s| s.get(k)).and_then(Value::as_array).into_iter().flatten()
    })
}

/// A name for the token volume not used by `volumes`.
fn volume_name(volumes: &[Value]) -> String {
    loop {
        let suffix: String = (0..5)
            .map(|_| {
                let i = rand::random_range(0..SUFFIX_ALPHABET.len());
                char::from(SUFFIX_ALPHABET[i])
            })
            .collect();
        let name = format!("kube-api-access-{suffix}");
        if !volumes.iter().any(|v| v.get("name").and_then(Value::as_str) == Some(&name)) {
            return name;
        }
    }
}

/// Mutates a new pod as [`lookup`] found its service account.
pub fn admit(pod: &mut Value, sa: &Lookup) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    spec.insert("serviceAccountName".into(), json!(sa.name));
    spec.insert("serviceAccount".into(), json!(sa.name));
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or(sa.automount)
        .unwrap_or(true);
    if !automount {
        return;
    }
    let mounted_at = |c: &Value| {
        c.get("volumeMounts").and_then(Value::as_array).is_some_and(|m| {
            m.iter().any(|m| {
                m.get("mountPath").and_then(Value::as_str).map(|p| p.trim_end_matches('/'))
                    == Some(TOKEN_MOUNT_PATH)
            })
        })
    };
    let needs: Vec<(&str, usize)> = ["containers", "initContainers"]
        .into_iter()
        .flat_map(|k| {
            let list = spec.get(k).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            list.iter()
                .enumerate()
                .filter(|(_, c)| !mounted_at(c))
                .map(move |(i, _)| (k, i))
                .collect::<Vec<_>>()
        })
        .collect();
    if needs.is_empty() {
        return;
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    let Some(volumes) = volumes.as_array_mut() else { return };
    let name = volume_name(volumes);
    volumes.push(json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                { "serviceAccountToken": {
                    "expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token" } },
                { "configMap": { "name": "kube-root-ca.crt",
                                 "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                { "downwardAPI": { "items": [{ "path": "namespace", "fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
            ],
        },
    }));
    for (kind, i) in needs {
        let Some(c) = spec.get_mut(kind).and_then(|l| l.get_mut(i)).and_then(Value::as_object_mut)
        else {
            continue;
        };
        let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
        if let Some(m) = mounts.as_array_mut() {
            m.push(json!({ "name": name, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true }));
        }
    }
}

/// Creates the `default` service account of `namespace` unless it exists.
pub async fn ensure_default(w: &Writer<'_>, namespace: &str) -> Result<()> {
    let accounts = registry::find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not registered"))?;
    let writer = Writer {
        objects: w.objects,
        schemas: w.schemas,
        admission: w.admission,
        resource: accounts,
        namespace: Some(namespace),
        options: WriteOptions {
            dry_run: false,
            manager: MANAGER.into(),
            validation: crate::fields::FieldValidation::Strict,
            force: false,
        },
    };
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!("default"));
    let sa = json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata });
    // Boxed: a create of a Namespace comes here, and this is a create.
    match Box::pin(writer.create(sa)).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({
            "metadata": { "name": "web" },
            "spec": {
                "containers": [{ "name": "a", "image": "x" },
                               { "name": "b", "image": "x", "volumeMounts": [
                                   { "name": "own", "mountPath": TOKEN_MOUNT_PATH } ] }],
                "initContainers": [{ "name": "i", "image": "x" }],
            }
        })
    }

    fn sa(automount: Option<bool>) -> Lookup {
        Lookup { name: "default".into(), automount }
    }

    #[test]
    fn the_token_volume_is_mounted_where_nothing_else_is() {
        let mut p = pod();
        admit(&mut p, &sa(None));
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["serviceAccount"], "default");
        let volumes = p["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        assert_eq!(volumes.len(), 1);
        let name = volumes[0]["name"].as_str().unwrap_or_default().to_owned();
        assert!(name.starts_with("kube-api-access-") && name.len() == 21, "{name}");
        let sources = &volumes[0]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        let mount = json!([{ "name": name, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true }]);
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"], mount);
        assert_eq!(p["spec"]["initContainers"][0]["volumeMounts"], mount);
        assert_eq!(p["spec"]["containers"][1]["volumeMounts"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn automount_false_on_the_pod_wins_over_the_service_account_and_back() {
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(false);
        admit(&mut p, &sa(Some(true)));
        assert!(p["spec"].get("volumes").is_none());
        let mut p = pod();
        admit(&mut p, &sa(Some(false)));
        assert!(p["spec"].get("volumes").is_none(), "the service account opts out");
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(true);
        admit(&mut p, &sa(Some(false)));
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1), "the pod opts in");
    }

    #[test]
    fn the_volume_name_avoids_existing_ones_and_uses_upstreams_alphabet() {
        let name = volume_name(&[]);
        assert!(name["kube-api-access-".len()..].bytes().all(|b| SUFFIX_ALPHABET.contains(&b)));
        let taken = vec![json!({ "name": name })];
        assert_ne!(volume_name(&taken), name);
    }

    #[test]
    fn mirror_pods_may_not_reference_accounts_secrets_or_tokens() {
        let mirror = |spec: Value| {
            json!({ "metadata": { "name": "m", "annotations": { MIRROR_ANNOTATION: "x" } },
                    "spec": spec })
        };
        assert!(check_mirror(&mirror(json!({ "containers": [] }))).is_ok());
        let cases = [
            (json!({ "serviceAccountName": "builder" }), "service accounts"),
            (json!({ "volumes": [{ "name": "s", "secret": { "secretName": "x" } }] }), "secrets"),
            (
                json!({ "volumes": [{ "name": "t", "projected": { "sources": [
                    { "serviceAccountToken": { "path": "t" } }] } }] }),
                "ServiceAccountToken",
            ),
            (
                json!({ "containers": [{ "name": "c", "env": [{ "name": "E",
                    "valueFrom": { "secretKeyRef": { "name": "x", "key": "k" } } }] }] }),
                "secrets",
            ),
        ];
        for (spec, words) in cases {
            let err = check_mirror(&mirror(spec)).err().map(|e| e.message).unwrap_or_default();
            assert!(err.contains(words), "{words}: {err}");
        }
    }
}
