//! Discovery documents, built from the [resource registry](crate::registry).
//!
//! Two shapes, as upstream serves them:
//! - legacy discovery: `/api` (`APIVersions`), `/api/v1` and `/apis/<g>/<v>` (`APIResourceList`,
//!   subresources as `pods/status` entries), `/apis` (`APIGroupList`);
//! - aggregated discovery (`apidiscovery.k8s.io/v2`, and `v2beta1` which kubectl 1.32 still
//!   lists second): one `APIGroupDiscoveryList` for `/api` and one for `/apis`, asked for with
//!   `Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`. The answer's
//!   `Content-Type` names the same `g`, `v` and `as`, which is how clients tell the two apart.
//!
//! The legacy types come from `k8s-openapi`; aggregated discovery has no type there and is
//! built as JSON.

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::{json, Value};

use crate::registry::{self, group_version, Resource, GROUPS};

/// Which aggregated discovery version a client accepted, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregated {
    /// `apidiscovery.k8s.io/v2`.
    V2,
    /// `apidiscovery.k8s.io/v2beta1`.
    V2Beta1,
}

impl Aggregated {
    /// The first aggregated discovery version an `Accept` header asks for, honouring its order
    /// (q-values are not weighed: client-go lists in preference order). `None` when the client
    /// only accepts plain JSON.
    pub fn negotiate(accept: &str) -> Option<Aggregated> {
        for range in accept.split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            if media != "application/json" {
                continue;
            }
            let (mut g, mut v, mut r#as) = (None, None, None);
            for p in params {
                match p.split_once('=') {
                    Some(("g", x)) => g = Some(x),
                    Some(("v", x)) => v = Some(x),
                    Some(("as", x)) => r#as = Some(x),
                    _ => {}
                }
            }
            if g != Some("apidiscovery.k8s.io") || r#as != Some("APIGroupDiscoveryList") {
                continue;
            }
            match v {
                Some("v2") => return Some(Aggregated::V2),
                Some("v2beta1") => return Some(Aggregated::V2Beta1),
                _ => {}
            }
        }
        None
    }

    /// The version string (`v2`).
    pub fn version(self) -> &'static str {
        match self {
            Aggregated::V2 => "v2",
            Aggregated::V2Beta1 => "v2beta1",
        }
    }

    /// The `Content-Type` of an aggregated answer.
    pub fn content_type(self) -> String {
        format!(
            "application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList",
            self.version()
        )
    }
}

/// `/api`: the core group's versions. `server_address` is what clients should dial.
pub fn api_versions(server_address: &str) -> meta::APIVersions {
    meta::APIVersions {
        versions: vec!["v1".to_owned()],
        server_address_by_client_cidrs: vec![meta::ServerAddressByClientCIDR {
            client_cidr: "0.0.0.0/0".to_owned(),
            server_address: server_address.to_owned(),
        }],
    }
}

/// `/apis`: every group with its versions.
pub fn api_group_list() -> meta::APIGroupList {
    meta::APIGroupList { groups: GROUPS.iter().map(|(g, vs)| api_group(g, vs)).collect() }
}

/// `/apis/<group>`: one group, or `None` when it is not served.
pub fn group(name: &str) -> Option<meta::APIGroup> {
    GROUPS.iter().find(|(g, _)| *g == name).map(|(g, vs)| api_group(g, vs))
}

fn api_group(name: &str, versions: &[&str]) -> meta::APIGroup {
    let gv = |v: &str| meta::GroupVersionForDiscovery {
        group_version: group_version(name, v),
        version: v.to_owned(),
    };
    meta::APIGroup {
        name: name.to_owned(),
        preferred_version: versions.first().map(|v| gv(v)),
        versions: versions.iter().map(|v| gv(v)).collect(),
        server_address_by_client_cidrs: None,
    }
}

/// `/api/v1` or `/apis/<group>/<version>`, or `None` when that group version is not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<meta::APIResourceList> {
    if !registry::serves(group, version) {
        return None;
    }
    let mut resources = Vec::new();
    for r in registry::resources_of(group, version) {
        resources.push(meta::APIResource {
            name: r.plural.to_owned(),
            singular_name: r.singular.to_owned(),
            namespaced: r.namespaced,
            kind: r.gvk.kind.to_owned(),
            verbs: strings(r.verbs),
            short_names: (!r.short_names.is_empty()).then(|| strings(r.short_names)),
            categories: (!r.categories.is_empty()).then(|| strings(r.categories)),
            group: None,
            version: None,
            storage_version_hash: None,
        });
        for s in r.subresources {
            let foreign = s.kind.group != group || s.kind.version != version;
            resources.push(meta::APIResource {
                name: format!("{}/{}", r.plural, s.name),
                singular_name: String::new(),
                namespaced: r.namespaced,
                kind: s.kind.kind.to_owned(),
                verbs: strings(s.verbs),
                short_names: None,
                categories: None,
                group: foreign.then(|| s.kind.group.to_owned()),
                version: foreign.then(|| s.kind.version.to_owned()),
                storage_version_hash: None,
            });
        }
    }
    Some(meta::APIResourceList { group_version: group_version(group, version), resources })
}

/// The aggregated discovery document of the core group (`/api`) when `core` is true, else of
/// every other group (`/apis`).
pub fn aggregated(version: Aggregated, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![group_discovery("", &["v1"])]
    } else {
        GROUPS.iter().map(|(g, vs)| group_discovery(g, vs)).collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{}", version.version()),
        "metadata": {},
        "items": items,
    })
}

fn group_discovery(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> =
                registry::resources_of(group, v).map(resource_discovery).collect();
            json!({ "version": v, "resources": resources, "freshness": "Current" })
        })
        .collect();
    let mut metadata = serde_json::Map::new();
    if !group.is_empty() {
        metadata.insert("name".to_owned(), group.into());
    }
    json!({ "metadata": metadata, "versions": versions })
}

fn resource_discovery(r: &Resource) -> Value {
    let mut out = json!({
        "resource": r.plural,
        "responseKind": { "group": r.gvk.group, "version": r.gvk.version, "kind": r.gvk.kind },
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        out["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        out["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        out["subresources"] = r
            .subresources
            .iter()
            .map(|s| {
                json!({
                    "subresource": s.name,
                    "responseKind": { "group": s.kind.group, "version": s.kind.version, "kind": s.kind.kind },
                    "verbs": s.verbs,
                })
            })
            .collect();
    }
    out
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL_1_32_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    #[test]
    fn kubectl_accept_header_negotiates_aggregated_v2() {
        assert_eq!(Aggregated::negotiate(KUBECTL_1_32_ACCEPT), Some(Aggregated::V2));
        assert_eq!(
            Aggregated::negotiate(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            ),
            Some(Aggregated::V2Beta1)
        );
        assert_eq!(Aggregated::negotiate("application/json, */*"), None);
        assert_eq!(
            Aggregated::negotiate(
                "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList"
            ),
            None
        );
    }

    #[test]
    fn core_resource_list_reports_subresources_with_their_foreign_groups() {
        let list = api_resource_list("", "v1").expect("core/v1 is served");
        assert_eq!(list.group_version, "v1");
        let eviction =
            list.resources.iter().find(|r| r.name == "pods/eviction").expect("pods/eviction");
        assert_eq!(
            (eviction.group.as_deref(), eviction.version.as_deref()),
            (Some("policy"), Some("v1"))
        );
        assert_eq!(eviction.kind, "Eviction");
        let status = list.resources.iter().find(|r| r.name == "pods/status").expect("pods/status");
        assert_eq!(status.group, None);
        assert_eq!(status.verbs, ["get", "patch", "update"]);
        let pods = list.resources.iter().find(|r| r.name == "pods").expect("pods");
        assert_eq!(pods.singular_name, "pod");
        assert_eq!(pods.categories.as_deref(), Some(&["all".to_owned()][..]));
        assert!(api_resource_list("apps", "v1beta1").is_none());
    }

    #[test]
    fn group_list_prefers_the_only_version() {
        let groups = api_group_list();
        let apps = groups.groups.iter().find(|g| g.name == "apps").expect("apps");
        assert_eq!(
            apps.preferred_version.as_ref().map(|v| v.group_version.as_str()),
            Some("apps/v1")
        );
        assert!(
            !groups.groups.iter().any(|g| g.name.is_empty()),
            "the core group is not under /apis"
        );
    }

    #[test]
    fn aggregated_discovery_has_scope_and_response_kinds() {
        let apis = aggregated(Aggregated::V2, false);
        assert_eq!(apis["apiVersion"], "apidiscovery.k8s.io/v2");
        let apps = apis["items"]
            .as_array()
            .and_then(|i| i.iter().find(|g| g["metadata"]["name"] == "apps"))
            .expect("apps");
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == "deployments"))
            .expect("deployments");
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["responseKind"]["kind"], "Deployment");
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        let scale = deploy["subresources"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["subresource"] == "scale"))
            .expect("scale");
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
        let core = aggregated(Aggregated::V2Beta1, true);
        assert_eq!(core["items"][0]["metadata"], json!({}));
        assert_eq!(core["items"][0]["versions"][0]["version"], "v1");
    }
}
