//! `/metrics`: the API server's Prometheus metrics under upstream's names, so existing
//! dashboards and alerts apply: `apiserver_request_total` and
//! `apiserver_request_duration_seconds` by verb, group, version, resource, subresource, scope
//! and (for the total) code (a watch is counted when it starts; its duration is not
//! observed, as upstream leaves long-running requests out); `apiserver_current_inflight_requests`;
//! and the process's resident memory and open files (`process_resident_memory_bytes`, `process_open_fds`). Encoded by the
//! `prometheus-client` crate.
//!
//! The request's verb and resource come from its method, path and query as upstream's
//! RequestInfo derives them ([`crate::auth::request::parse`]: `GET` of a collection is `list`,
//! with `watch=true` it is `watch`, `DELETE` of a collection is `deletecollection`); the scope is
//! upstream's `CleanScope`; other paths are counted with the method as verb.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: String,
    code: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<CodeLabels, Counter>,
    durations: Family<RequestLabels, Histogram>,
    inflight: Gauge,
    rss: Gauge,
    fds: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, group, version, resource, scope and HTTP response code.",
            requests.clone(),
        );
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, group, version, resource, subresource and scope.",
            durations.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "apiserver_current_inflight_requests",
            "Requests being served now.",
            inflight.clone(),
        );
        let rss = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss.clone(),
        );
        let fds = Gauge::default();
        registry.register("process_open_fds", "Number of open file descriptors.", fds.clone());
        Metrics { registry, requests, durations, inflight, rss, fds }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            {
                self.rss.set(kb * 1024);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("encode the metrics");
        }
        out
    }
}

/// Upstream's `CleanScope`: `resource` for a named object or a create, `namespace` within a
/// namespace, `cluster` for other resource requests, empty for non-resource paths.
fn scope(info: &crate::auth::request::RequestInfo) -> &'static str {
    if !info.name.is_empty() || info.verb == "create" {
        "resource"
    } else if !info.namespace.is_empty() {
        "namespace"
    } else if info.is_resource_request {
        "cluster"
    } else {
        ""
    }
}

fn describe(method: &http::Method, path: &str, query: &str) -> RequestLabels {
    let i = crate::auth::request::parse(method.as_str(), path, Some(query));
    let scope = scope(&i).to_owned();
    RequestLabels {
        verb: i.verb,
        group: i.api_group,
        version: i.api_version,
        resource: i.resource,
        subresource: i.subresource,
        scope,
    }
}

/// The middleware that counts and times every request.
pub async fn track(
    metrics: axum::extract::State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let labels =
        describe(request.method(), request.uri().path(), request.uri().query().unwrap_or(""));
    let watch = labels.verb == "watch";
    metrics.inflight.inc();
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.inflight.dec();
    if !watch {
        metrics.durations.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    }
    let code = CodeLabels {
        verb: labels.verb,
        group: labels.group,
        version: labels.version,
        resource: labels.resource,
        subresource: labels.subresource,
        scope: labels.scope,
        code: response.status().as_u16().to_string(),
    };
    metrics.requests.get_or_create(&code).inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(method: &str, path: &str, query: &str) -> (String, String, String, String, String) {
        let l = describe(&method.parse().unwrap_or(http::Method::GET), path, query);
        (l.verb, l.group, l.resource, l.subresource, l.scope)
    }

    #[test]
    fn requests_are_named_like_upstreams_request_info() {
        let s = |x: &str| x.to_owned();
        assert_eq!(
            d("GET", "/api/v1/namespaces/a/pods", ""),
            (s("list"), s(""), s("pods"), s(""), s("namespace"))
        );
        assert_eq!(
            d("GET", "/api/v1/pods", "watch=true"),
            (s("watch"), s(""), s("pods"), s(""), s("cluster"))
        );
        assert_eq!(
            d("GET", "/api/v1/watch/namespaces/a/pods", ""),
            (s("watch"), s(""), s("pods"), s(""), s("namespace"))
        );
        assert_eq!(
            d("PATCH", "/apis/apps/v1/namespaces/a/deployments/web/scale", ""),
            (s("patch"), s("apps"), s("deployments"), s("scale"), s("resource"))
        );
        assert_eq!(
            d("DELETE", "/api/v1/namespaces/a/configmaps", ""),
            (s("deletecollection"), s(""), s("configmaps"), s(""), s("namespace"))
        );
        assert_eq!(
            d("GET", "/api/v1/nodes/n1", ""),
            (s("get"), s(""), s("nodes"), s(""), s("resource"))
        );
        assert_eq!(d("GET", "/version", "").0, "get");
    }

    #[test]
    fn the_exposition_has_upstreams_names() {
        let m = Metrics::new();
        let labels = describe(&http::Method::GET, "/api/v1/namespaces/a/pods", "");
        m.durations.get_or_create(&labels).observe(0.002);
        let text = m.render();
        for name in [
            "apiserver_request_duration_seconds_bucket",
            "process_resident_memory_bytes",
            "apiserver_current_inflight_requests",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        assert!(text.contains("resource=\"pods\""), "{text}");
    }
}
