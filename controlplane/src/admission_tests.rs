#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use keelson_store::embedded::{EmbeddedStore, Options};
use keelson_store::{RangeRequest, Store};

use super::*;
use crate::fields::FieldValidation;
use crate::objects::Preconditions;
use crate::pipeline::{Part, WriteOptions, Writer};
use crate::registry;
use crate::schema::Schemas;

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(Schemas::build)
}

struct H {
    objects: Objects,
    store: Arc<EmbeddedStore>,
    admission: Admission,
    _dir: tempfile::TempDir,
}

async fn h(cidr: &str) -> H {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { history_window: None, ..Options::default() };
    let store = Arc::new(EmbeddedStore::open(dir.path().join("db"), opts).await.unwrap());
    let admission = Admission {
        services: ServiceNetwork { cidr: cidr.parse().unwrap(), node_ports: 30000..=30002 },
        ..Default::default()
    };
    let h = H { objects: Objects::new(store.clone()), store, admission, _dir: dir };
    let ns = registry::find("", "v1", "namespaces").unwrap();
    for n in ["default", "gone"] {
        h.w(ns, None).create(json!({ "metadata": { "name": n } })).await.unwrap();
    }
    h
}

impl H {
    fn w(&self, r: &'static Resource, ns: Option<&'static str>) -> Writer<'_> {
        Writer {
            objects: &self.objects,
            schemas: schemas(),
            admission: &self.admission,
            resource: r,
            namespace: ns,
            options: WriteOptions {
                dry_run: false,
                manager: "test".into(),
                validation: FieldValidation::Strict,
                force: false,
            },
        }
    }

    fn services(&self) -> Writer<'_> {
        self.w(registry::find("", "v1", "services").unwrap(), Some("default"))
    }

    /// Creates a Service; one given a spec without ports gets port 80 (a valid Service needs
    /// one unless headless or ExternalName).
    async fn create_svc(&self, name: &str, mut spec: Value) -> Result<Value> {
        let portless = spec.get("ports").is_none()
            && spec.get("clusterIP") != Some(&json!("None"))
            && spec.get("type") != Some(&json!("ExternalName"));
        if portless {
            spec["ports"] = json!([{ "port": 80 }]);
        }
        Ok(self
            .services()
            .create(json!({ "metadata": { "name": name }, "spec": spec }))
            .await?
            .object)
    }

    async fn allocations(&self) -> Vec<String> {
        let res = self
            .store
            .range(RangeRequest::new(KeyRange::prefix("/keelson/allocations/")))
            .await
            .unwrap();
        res.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
    }

    async fn delete_svc(&self, name: &str) {
        let r = registry::find("", "v1", "services").unwrap();
        let reads = self.admission.reads(r);
        self.objects
            .delete_with(
                r,
                Some("default"),
                name,
                &Preconditions::default(),
                false,
                &reads,
                |c, read, e| self.admission.release(r, c, read, e),
            )
            .await
            .unwrap();
    }
}

fn ports(spec_ports: Value) -> Value {
    json!({ "type": "NodePort", "ports": spec_ports })
}

#[tokio::test]
async fn services_get_distinct_cluster_ips_from_the_cidr_and_deletes_free_them() {
    let h = h("10.96.0.0/28").await;
    let a = h.create_svc("a", json!({ "ports": [{ "port": 80 }] })).await.unwrap();
    let ip: IpAddr = a["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(h.admission.services.usable(ip), "{ip}");
    assert_eq!(a["spec"]["clusterIPs"], json!([ip.to_string()]));
    assert_eq!(a["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(h.allocations().await, vec![format!("{SERVICE_IPS}{ip}")]);

    let taken = h.create_svc("b", json!({ "clusterIP": ip.to_string() })).await.unwrap_err();
    assert_eq!(taken.code, 422);
    assert!(taken.message.contains("provided IP is already allocated"), "{}", taken.message);
    let outside = h.create_svc("b", json!({ "clusterIP": "10.97.0.1" })).await.unwrap_err();
    assert!(outside.message.contains("not in the valid range"), "{}", outside.message);
    let bad = h.create_svc("b", json!({ "clusterIP": "banana" })).await.unwrap_err();
    assert!(bad.message.contains("must be a valid IP address"), "{}", bad.message);
    let headless = h.create_svc("h", json!({ "clusterIP": "None" })).await.unwrap();
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let ext = h
        .create_svc("x", json!({ "type": "ExternalName", "externalName": "example.invalid" }))
        .await
        .unwrap();
    assert!(ext["spec"].get("clusterIP").is_none());
    assert_eq!(h.allocations().await.len(), 1, "headless and ExternalName allocate nothing");

    h.delete_svc("a").await;
    assert!(h.allocations().await.is_empty(), "the delete released the address");
    let again = h.create_svc("b", json!({ "clusterIP": ip.to_string() })).await.unwrap();
    assert_eq!(again["spec"]["clusterIP"], ip.to_string());
}

#[tokio::test]
async fn a_full_range_is_a_clear_error_and_concurrent_creates_never_share_an_address() {
    // A /28 has 14 usable addresses.
    let h = Arc::new(h("10.96.0.0/28").await);
    let mut tasks = Vec::new();
    for i in 0..14 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.create_svc(&format!("s{i}"), json!({ "ports": [{ "port": 80 }] })).await.unwrap()
                ["spec"]["clusterIP"]
                .as_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut ips = HashSet::new();
    for t in tasks {
        assert!(ips.insert(t.await.unwrap()), "an address was given twice");
    }
    assert_eq!(h.allocations().await.len(), 14);
    let full = h.create_svc("one-too-many", json!({})).await.unwrap_err();
    assert_eq!(full.code, 500);
    assert!(full.message.contains("range 10.96.0.0/28 is full"), "{}", full.message);
    assert_eq!(h.allocations().await.len(), 14, "the failed create leaked nothing");
}

#[tokio::test]
async fn node_ports_are_allocated_checked_kept_and_released_with_the_type() {
    let h = h("10.96.0.0/24").await;
    let svc = h
        .create_svc("np", ports(json!([{ "name": "dns-udp", "port": 53, "protocol": "UDP" }, { "name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30001 }])))
        .await
        .unwrap();
    let p: Vec<i64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["nodePort"].as_i64().unwrap())
        .collect();
    assert_eq!(p[1], 30001);
    assert!((30000..=30002).contains(&p[0]) && p[0] != 30001, "{p:?}");
    let clash =
        h.create_svc("other", ports(json!([{ "port": 80, "nodePort": 30001 }]))).await.unwrap_err();
    assert!(clash.message.contains("provided port is already allocated"), "{}", clash.message);
    let range =
        h.create_svc("other", ports(json!([{ "port": 80, "nodePort": 80 }]))).await.unwrap_err();
    assert!(range.message.contains("not in the valid range"), "{}", range.message);

    // A PUT that leaves the allocated values out keeps them; a new ClusterIP is refused.
    let mut put = svc.clone();
    put["spec"].as_object_mut().unwrap().remove("clusterIP");
    put["spec"].as_object_mut().unwrap().remove("clusterIPs");
    for port in put["spec"]["ports"].as_array_mut().unwrap() {
        port.as_object_mut().unwrap().remove("nodePort");
    }
    put["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let kept = h.services().update("np", Part::Object, put).await.unwrap().object;
    assert_eq!(kept["spec"]["clusterIP"], svc["spec"]["clusterIP"]);
    assert_eq!(kept["spec"]["ports"], svc["spec"]["ports"]);
    let mut moved = kept.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.200");
    moved["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let e = h.services().update("np", Part::Object, moved).await.unwrap_err();
    assert!(e.message.contains("field is immutable"), "{}", e.message);

    // Back to ClusterIP: the node ports go, the address stays.
    let mut cluster = kept.clone();
    cluster["spec"]["type"] = json!("ClusterIP");
    for port in cluster["spec"]["ports"].as_array_mut().unwrap() {
        port.as_object_mut().unwrap().remove("nodePort");
    }
    cluster["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let c = h.services().update("np", Part::Object, cluster).await.unwrap().object;
    assert!(c["spec"]["ports"][0].get("nodePort").is_none());
    let left = h.allocations().await;
    assert_eq!(
        left,
        vec![format!("{SERVICE_IPS}{}", c["spec"]["clusterIP"].as_str().unwrap())],
        "{left:?}"
    );
    let forbidden = h
        .create_svc("cip", json!({ "ports": [{ "port": 80, "nodePort": 30000 }] }))
        .await
        .unwrap_err();
    assert!(
        forbidden.message.contains("may not be used when `type` is 'ClusterIP'"),
        "{}",
        forbidden.message
    );
}

#[tokio::test]
async fn namespaces_must_exist_and_not_be_terminating_and_system_ones_stay() {
    let h = h("10.96.0.0/24").await;
    let cms = registry::find("", "v1", "configmaps").unwrap();
    let e =
        h.w(cms, Some("missing")).create(json!({ "metadata": { "name": "c" } })).await.unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (404, "namespaces \"missing\" not found"));
    let ns = registry::find("", "v1", "namespaces").unwrap();
    // The watch cache serves the lookup now (it has seen "gone" as it was created)...
    h.w(cms, Some("gone")).create(json!({ "metadata": { "name": "a" } })).await.unwrap();
    // ...but not right after a delete, which it may not have seen yet: the server's delete
    // path (admission first) makes the next lookups of "gone" read the store.
    h.admission.check_delete(ns, "gone").unwrap();
    // A namespace waits for its `kubernetes` finalizer: deleting it makes it Terminating.
    match h.objects.delete(ns, None, "gone", &Preconditions::default(), false).await.unwrap() {
        crate::objects::Deleted::Pending(o) => assert_eq!(o["status"]["phase"], "Terminating"),
        other => panic!("the namespace went at once: {other:?}"),
    }
    let e =
        h.w(cms, Some("gone")).create(json!({ "metadata": { "name": "c" } })).await.unwrap_err();
    assert_eq!(e.code, 403);
    assert!(e.message.contains("because it is being terminated"), "{}", e.message);
    assert_eq!(h.admission.check_delete(ns, "default").unwrap_err().code, 403);
    assert!(h.admission.check_delete(ns, "gone").is_ok());
}

#[tokio::test]
async fn pods_tolerate_not_ready_and_unreachable_nodes_for_five_minutes_unless_told_otherwise() {
    let h = h("10.96.0.0/24").await;
    let pods = registry::find("", "v1", "pods").unwrap();
    let pod = |name: &str, tolerations: Value| json!({ "metadata": { "name": name }, "spec": { "containers": [{ "name": "c", "image": "x" }], "tolerations": tolerations } });
    let p = h.w(pods, Some("default")).create(pod("a", json!([]))).await.unwrap().object;
    assert_eq!(
        p["spec"]["tolerations"],
        json!([
            { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
            { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }
        ])
    );
    let own = json!([{ "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5 }]);
    let p = h.w(pods, Some("default")).create(pod("b", own)).await.unwrap().object;
    let t = p["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0]["tolerationSeconds"], 5, "the pod's own toleration is kept");
    assert_eq!(p["status"]["phase"], "Pending");
}

#[test]
fn port_ranges_parse() {
    assert_eq!(parse_port_range("30000-32767"), Ok(30000..=32767));
    for bad in ["30000", "0-10", "20-10", "a-b"] {
        assert!(parse_port_range(bad).is_err(), "{bad}");
    }
    assert_eq!(ServiceNetwork::default().first_ip(), "10.96.0.1".parse::<IpAddr>().unwrap());
}
