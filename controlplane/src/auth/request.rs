//! What a request asks for, as upstream's `RequestInfo` (apiserver's
//! `endpoints/request/requestinfo.go`) computes it from the method, the path and the query:
//! the attributes every authorizer decides on.
//!
//! - Resource requests are `/api/<version>/<…>` and `/apis/<group>/<version>/<…>`; anything
//!   else (`/version`, `/healthz`, `/api`, `/api/v1`, `/apis/<group>[/<version>]`, `/openapi/…`) is a
//!   non-resource request whose verb is the lowercase HTTP method.
//! - Verbs: POST `create`, GET and HEAD `get`, PUT `update`, PATCH `patch` (apply too), DELETE
//!   `delete`; a GET without a name is `list`, or `watch` with `watch=true` (or the deprecated
//!   `/watch/` path prefix; `/proxy/` makes `proxy`); a DELETE without a name is
//!   `deletecollection`. Only those collection requests carry a `fieldSelector`.
//! - `namespaces/<ns>/<resource>/…` scopes a request to a namespace; `namespaces/<ns>`,
//!   `namespaces/<ns>/status` and `namespaces/<ns>/finalize` are the Namespace itself.
//! - A list whose field selector is exactly `metadata.name=<name>` names that object (how
//!   `kubectl get pod x -w` asks), so a rule with `resourceNames` can allow it.
//! - The streaming subresources `pods/exec`, `pods/attach` and `pods/portforward` are verb
//!   `create` even when the upgrade arrives as a GET (upstream's
//!   `AuthorizePodWebsocketUpgradeCreatePermission`); `pods/log` stays `get`.

/// The attributes of one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// Whether this is a request for a resource (else a non-resource path).
    pub is_resource_request: bool,
    /// The path, for non-resource requests and messages.
    pub path: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`; for
    /// non-resource requests the lowercase method (`get`, `post`, …).
    pub verb: String,
    /// The API group (`""` for the core group).
    pub api_group: String,
    /// The API version.
    pub api_version: String,
    /// The namespace (`""` when cluster-scoped or across all namespaces).
    pub namespace: String,
    /// The resource's plural name.
    pub resource: String,
    /// The subresource (`status`, `log`, `exec`, …) or `""`.
    pub subresource: String,
    /// The object's name or `""`.
    pub name: String,
    /// A list's or watch's raw `fieldSelector`, `""` without one.
    pub field_selector: String,
}

/// Subresources that stream and so are authorized as `create` whatever the method.
const STREAMING: &[&str] = &["exec", "attach", "portforward"];

/// Parses one request. `query` is the raw query string (without `?`).
pub fn parse(method: &str, path: &str, query: Option<&str>) -> RequestInfo {
    let method_verb = method.to_ascii_lowercase();
    let mut info = RequestInfo { path: path.to_owned(), verb: method_verb, ..Default::default() };
    let trimmed = path.trim_matches('/');
    let mut parts: Vec<&str> =
        if trimmed.is_empty() { Vec::new() } else { trimmed.split('/').collect() };
    // `/api/<version>/<…>` (at least three parts) or `/apis/<group>/<version>/<…>` (four);
    // `/api/v1` and `/apis/<group>/<version>` are discovery, non-resource paths.
    match parts.first().copied() {
        Some("api") if parts.len() >= 3 => {
            info.api_version = parts[1].to_owned();
            parts.drain(..2);
        }
        Some("apis") if parts.len() >= 4 => {
            info.api_group = parts[1].to_owned();
            info.api_version = parts[2].to_owned();
            parts.drain(..3);
        }
        _ => return info,
    }
    info.is_resource_request = true;
    // The deprecated verb prefixes: `/api/v1/watch/…` and `/api/v1/proxy/…`.
    let mut special = None;
    if let Some(&verb @ ("watch" | "proxy")) = parts.first() {
        if parts.len() >= 2 {
            special = Some(verb);
            parts.remove(0);
        }
    }
    info.verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        other => return RequestInfo { verb: other.to_ascii_lowercase(), ..info },
    }
    .to_owned();
    if let Some(verb) = special {
        info.verb = verb.to_owned();
    }
    if parts.first() == Some(&"namespaces") {
        if let Some(ns) = parts.get(1) {
            info.namespace = (*ns).to_owned();
            // `namespaces/<ns>/<resource>…` is a namespaced request; `namespaces/<ns>` and its
            // own subresources are the Namespace object.
            if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
                parts.drain(..2);
            }
        }
    }
    if let Some(r) = parts.first() {
        info.resource = (*r).to_owned();
    }
    if let Some(n) = parts.get(1) {
        info.name = (*n).to_owned();
    }
    // A proxy's further parts are the proxied path, not a subresource.
    if let (Some(s), false) = (parts.get(2), special == Some("proxy")) {
        info.subresource = (*s).to_owned();
    }
    // Selectors count only on collections: a GET without a name (list or watch, by the
    // `watch` parameter) and a DELETE without one (deletecollection). The first
    // `fieldSelector` parameter wins.
    let params = query_params(query.unwrap_or_default());
    let selector = || {
        params
            .iter()
            .find(|(k, _)| k == "fieldSelector")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if info.name.is_empty() && info.verb == "get" {
        let watch = params
            .iter()
            .find(|(k, _)| k == "watch")
            .is_some_and(|(_, v)| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"));
        info.verb = if watch { "watch" } else { "list" }.to_owned();
        info.field_selector = selector();
        if let Some(name) = exact_name(&info.field_selector) {
            info.name = name;
        }
    } else if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".to_owned();
        info.field_selector = selector();
    }
    if info.resource == "pods" && STREAMING.contains(&info.subresource.as_str()) {
        info.verb = "create".to_owned();
    }
    info
}

/// `metadata.name=<name>` (or `==`) as the whole field selector.
fn exact_name(selector: &str) -> Option<String> {
    if selector.contains(',') {
        return None;
    }
    let rest = selector.strip_prefix("metadata.name")?;
    let name = rest.strip_prefix("==").or_else(|| rest.strip_prefix('='))?;
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('%');
    valid.then(|| name.to_owned())
}

/// The query's pairs, percent-decoded.
pub fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method, path; then verb, version, namespace, resource, name, group, subresource.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );

    /// Upstream's table (`TestGetAPIRequestInfo`), plus the streaming and watch cases.
    #[test]
    fn request_info_matches_upstreams_examples() {
        let cases: &[Case] = &[
            // method, path, verb, version, namespace, resource, name, group, subresource
            ("GET", "/api/v1/namespaces", "list", "v1", "", "namespaces", "", "", ""),
            ("GET", "/api/v1/namespaces/other", "get", "v1", "other", "namespaces", "other", "", ""),
            ("GET", "/api/v1/namespaces/other/pods", "list", "v1", "other", "pods", "", "", ""),
            ("GET", "/api/v1/namespaces/other/pods/foo", "get", "v1", "other", "pods", "foo", "", ""),
            ("HEAD", "/api/v1/namespaces/other/pods/foo", "get", "v1", "other", "pods", "foo", "", ""),
            ("GET", "/api/v1/pods", "list", "v1", "", "pods", "", "", ""),
            ("POST", "/api/v1/namespaces/other/pods", "create", "v1", "other", "pods", "", "", ""),
            ("GET", "/api/v1/namespaces/other/pods/foo", "get", "v1", "other", "pods", "foo", "", ""),
            ("GET", "/api/v1/watch/pods", "watch", "v1", "", "pods", "", "", ""),
            ("GET", "/api/v1/pods?watch=true", "watch", "v1", "", "pods", "", "", ""),
            ("GET", "/api/v1/pods?watch=false", "list", "v1", "", "pods", "", "", ""),
            ("GET", "/api/v1/watch/namespaces/other/pods", "watch", "v1", "other", "pods", "", "", ""),
            ("GET", "/api/v1/namespaces/other/pods?watch=1", "watch", "v1", "other", "pods", "", "", ""),
            ("GET", "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%3Dfoo&watch=true",
                "watch", "v1", "other", "pods", "foo", "", ""),
            ("GET", "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%3Dfoo%2Cspec.nodeName%3Dn",
                "list", "v1", "other", "pods", "", "", ""),
            ("PUT", "/api/v1/namespaces/other/pods/foo", "update", "v1", "other", "pods", "foo", "", ""),
            ("PATCH", "/api/v1/namespaces/other/pods/foo", "patch", "v1", "other", "pods", "foo", "", ""),
            ("DELETE", "/api/v1/namespaces/other/pods/foo", "delete", "v1", "other", "pods", "foo", "", ""),
            ("DELETE", "/api/v1/namespaces/other/pods", "deletecollection", "v1", "other", "pods", "", "", ""),
            ("GET", "/api/v1/namespaces/other/pods/foo/status", "get", "v1", "other", "pods", "foo", "", "status"),
            ("PUT", "/api/v1/namespaces/other/finalize", "update", "v1", "other", "namespaces", "other", "", "finalize"),
            ("PUT", "/api/v1/namespaces/other/status", "update", "v1", "other", "namespaces", "other", "", "status"),
            ("GET", "/apis/extensions/v1beta1/namespaces/other/pods", "list", "v1beta1", "other", "pods", "", "extensions", ""),
            ("GET", "/apis/apps/v1/namespaces/other/deployments/d/scale", "get", "v1", "other", "deployments", "d", "apps", "scale"),
            ("GET", "/api/v1/namespaces/other/pods/foo/log", "get", "v1", "other", "pods", "foo", "", "log"),
            ("GET", "/api/v1/namespaces/other/pods/foo/exec?command=sh", "create", "v1", "other", "pods", "foo", "", "exec"),
            ("POST", "/api/v1/namespaces/other/pods/foo/exec", "create", "v1", "other", "pods", "foo", "", "exec"),
            ("GET", "/api/v1/namespaces/other/pods/foo/attach", "create", "v1", "other", "pods", "foo", "", "attach"),
            ("GET", "/api/v1/namespaces/other/pods/foo/portforward", "create", "v1", "other", "pods", "foo", "", "portforward"),
            ("GET", "/api/v1/nodes/n1", "get", "v1", "", "nodes", "n1", "", ""),
            ("HEAD", "/api/v1/pods", "list", "v1", "", "pods", "", "", ""),
            ("GET", "/api/v1/namespaces/other/pods?watch=0", "list", "v1", "other", "pods", "", "", ""),
            ("GET", "/api/v1/proxy/namespaces/other/pods/foo", "proxy", "v1", "other", "pods", "foo", "", ""),
            ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", "proxy", "v1", "other", "pods", "foo", "", ""),
            ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", "get", "v1", "other", "pods", "foo", "", "proxy"),
            ("DELETE", "/api/v1/nodes", "deletecollection", "v1", "", "nodes", "", "", ""),
            ("DELETE", "/api/v1/namespaces", "deletecollection", "v1", "", "namespaces", "", "", ""),
            ("DELETE", "/apis/extensions/v1/namespaces/other/pods", "deletecollection", "v1", "other", "pods", "", "extensions", ""),
            ("POST", "/apis/extensions/v1beta3/namespaces/other/pods", "create", "v1beta3", "other", "pods", "", "extensions", ""),
            ("GET", "/apis/batch/v1/job/foo/scale", "get", "v1", "", "job", "foo", "batch", "scale"),
        ];
        for &(method, url, verb, version, ns, resource, name, group, sub) in cases {
            let (path, query) = match url.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (url, None),
            };
            let info = parse(method, path, query);
            assert!(info.is_resource_request, "{method} {url}");
            assert_eq!(
                (
                    info.verb.as_str(),
                    info.api_version.as_str(),
                    info.namespace.as_str(),
                    info.resource.as_str(),
                    info.name.as_str(),
                    info.api_group.as_str(),
                    info.subresource.as_str()
                ),
                (verb, version, ns, resource, name, group, sub),
                "{method} {url}"
            );
        }
    }

    /// Upstream's `TestSelectorParsing`: name, verb and field selector.
    #[test]
    fn field_selectors_count_only_on_collections() {
        for (method, url, name, verb, selector) in [
            ("GET", "/apis/group/version/resource", "", "list", ""),
            ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1", "name1", "list", "metadata.name=name1"),
            ("GET", "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1", "name1", "watch", "metadata.name=name1"),
            ("GET", "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux", "", "list", "foo=bar"),
            ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo", "", "list", "metadata.name=name1,foo"),
            ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=true", "", "watch", "metadata.name=name1,foo"),
            ("DELETE", "/apis/group/version/resource?fieldSelector=foo=bar", "", "deletecollection", "foo=bar"),
            ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=foo&fieldSelector=metadata.name=bar", "foo", "list", "metadata.name=foo"),
            ("GET", "/apis/group/version/resource/name?fieldSelector=foo=bar", "name", "get", ""),
            ("GET", "/apis/group/version/watch/resource?fieldSelector=metadata.name=foo", "", "watch", ""),
            ("GET", "/apis/group/version/watch/resource/name?fieldSelector=metadata.name=foo", "name", "watch", ""),
        ] {
            let (path, query) = url.split_once('?').map_or((url, None), |(p, q)| (p, Some(q)));
            let info = parse(method, path, query);
            assert_eq!(
                (info.name.as_str(), info.verb.as_str(), info.field_selector.as_str()),
                (name, verb, selector),
                "{method} {url}"
            );
        }
    }

    #[test]
    fn discovery_and_health_paths_are_non_resource_requests() {
        for (method, path, verb) in [
            ("GET", "/", "get"),
            ("GET", "/api", "get"),
            ("GET", "/apis", "get"),
            ("GET", "/apis/apps", "get"),
            ("GET", "/version", "get"),
            ("GET", "/healthz", "get"),
            ("GET", "/openapi/v3/apis/apps/v1", "get"),
            ("POST", "/foo/bar", "post"),
            ("PUT", "/api", "put"),
            ("GET", "/api/v1", "get"),
            ("GET", "/apis/apps/v1", "get"),
            ("GET", "/api/version/", "get"),
            ("GET", "/apis/group/version/", "get"),
            ("GET", "/badprefix/version/resource", "get"),
            ("GET", "/apis/version/resource", "get"),
        ] {
            let info = parse(method, path, None);
            assert!(!info.is_resource_request, "{path}");
            assert_eq!((info.verb.as_str(), info.path.as_str()), (verb, path));
        }
    }
}
