//! What every cluster has from its first start: the system namespaces (`default`,
//! `kube-system`, `kube-public`, `kube-node-lease`) and the `default/kubernetes` Service with
//! its Endpoints and EndpointSlice pointing at this server, as upstream's bootstrap
//! controllers keep them, and each system namespace's `default` service account.
//!
//! It also ensures the default RBAC policy ([`crate::auth::policy`]).
//!
//! Runs at every start, through the same write pipeline as clients (field manager
//! `kube-apiserver`): missing objects are created, and the Endpoints and EndpointSlice follow
//! the server's address when it changed. The Service gets the service CIDR's first address,
//! which the serving certificate names.

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use crate::objects::{ApiError, Result};
use crate::pipeline::{WriteOptions, Writer};
use crate::registry;
use crate::server::ApiState;

/// The field manager of objects the server keeps itself.
pub const MANAGER: &str = "kube-apiserver";

/// The system namespaces.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

fn writer<'a>(
    state: &'a ApiState,
    group: &str,
    plural: &str,
    namespace: Option<&'a str>,
) -> Result<Writer<'a>> {
    let resource = registry::find(group, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let objects = state.objects().ok_or_else(|| ApiError::internal("no store to bootstrap"))?;
    Ok(Writer {
        objects,
        schemas: state.schemas(),
        admission: state.admission(),
        resource,
        namespace,
        options: WriteOptions {
            dry_run: false,
            manager: MANAGER.into(),
            validation: crate::fields::FieldValidation::Strict,
            force: false,
        },
    })
}

/// Creates `obj` unless it exists; an existing object whose `sync` fields differ from
/// `obj`'s gets `obj`'s.
async fn ensure(w: &Writer<'_>, name: &str, obj: Value, sync: &[&str]) -> Result<()> {
    match w.objects.get(w.resource, w.namespace, name).await {
        Ok(current) => {
            if sync.iter().all(|f| current.get(f) == obj.get(f)) {
                return Ok(());
            }
            let mut next = current;
            for f in sync {
                next[*f] = obj[*f].clone();
            }
            if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            w.update(name, crate::pipeline::Part::Object, next).await?;
            Ok(())
        }
        Err(e) if e.code == 404 => match w.create(obj).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Ensures the system namespaces and the `kubernetes` Service, Endpoints and EndpointSlice
/// for a server reachable at `address`.
pub async fn run(state: &ApiState, address: SocketAddr) -> Result<()> {
    for ns in SYSTEM_NAMESPACES {
        let w = writer(state, "", "namespaces", None)?;
        ensure(
            &w,
            ns,
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
            &[],
        )
        .await?;
        crate::serviceaccount::ensure_default(&w, ns).await?;
    }
    let port = address.port();
    let ip = address.ip();
    let service_ip = state.admission().services.first_ip();
    let labels = json!({ "component": "apiserver", "provider": "kubernetes" });
    let w = writer(state, "", "services", Some("default"))?;
    ensure(
        &w,
        "kubernetes",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "kubernetes", "labels": labels },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": service_ip.to_string(),
                "sessionAffinity": "None",
                "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": port }],
            }
        }),
        &[],
    )
    .await?;
    let w = writer(state, "", "endpoints", Some("default"))?;
    ensure(
        &w,
        "kubernetes",
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": { "name": "kubernetes", "labels": { "endpointslice.kubernetes.io/skip-mirror": "true" } },
            "subsets": [{ "addresses": [{ "ip": ip.to_string() }],
                          "ports": [{ "name": "https", "port": port, "protocol": "TCP" }] }],
        }),
        &["subsets"],
    )
    .await?;
    let w = writer(state, "discovery.k8s.io", "endpointslices", Some("default"))?;
    let family = match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    ensure(
        &w,
        "kubernetes",
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "kubernetes", "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            } },
            "addressType": family,
            "endpoints": [{ "addresses": [ip.to_string()], "conditions": { "ready": true, "serving": true, "terminating": false } }],
            "ports": [{ "name": "https", "port": port, "protocol": "TCP" }],
        }),
        &["endpoints", "ports"],
    )
    .await?;
    crate::auth::policy::ensure(state).await?;
    Ok(())
}
