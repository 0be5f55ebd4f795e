//! The object verbs over HTTP: get, list, create, update (PUT) and delete of every registered
//! resource, on upstream's paths, answered from [`Objects`](crate::objects::Objects).
//!
//! - `/api/v1/[namespaces/{ns}/]{resource}[/{name}]` and
//!   `/apis/{group}/{version}/[namespaces/{ns}/]{resource}[/{name}]`; a namespaced resource
//!   listed without a namespace is listed across all of them.
//! - Query parameters: `resourceVersion`, `resourceVersionMatch`, `limit`, `continue`,
//!   `labelSelector` and `fieldSelector` on lists; `watch=true` turns a list into a watch
//!   ([`crate::watch`], which also serves lists from the watch caches and the legacy
//!   `/api/v1/watch/...` paths); `dryRun=All` on writes. A body's `apiVersion` and `kind` must be the resource's (they are
//!   filled in when missing).
//! - Errors are `metav1.Status` bodies with upstream's codes and reasons.
//!
//! Not here yet: patch, subresources, deletecollection, admission and validation, and
//! table output (kubectl prints names without it).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::objects::{ApiError, Deleted, ListOptions, Objects, Preconditions, ReadAt};
use crate::registry::{self, Resource};
use crate::selectors::Selectors;
use crate::server::ApiState;

type Params = HashMap<String, String>;

/// The object routes, to be merged into the API router.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/v1/{resource}", get(list).post(create))
        .route("/api/v1/{resource}/{name}", get(read).put(update).delete(delete))
        .route("/api/v1/namespaces/{ns}/{resource}", get(list).post(create))
        .route("/api/v1/namespaces/{ns}/{resource}/{name}", get(read).put(update).delete(delete))
        .route("/apis/{group}/{version}/{resource}", get(list).post(create))
        .route("/apis/{group}/{version}/{resource}/{name}", get(read).put(update).delete(delete))
        .route("/apis/{group}/{version}/namespaces/{ns}/{resource}", get(list).post(create))
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}",
            get(read).put(update).delete(delete),
        )
        .merge(crate::watch::routes())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.status())).into_response()
    }
}

/// The request's resource and scope, from the path.
pub(crate) struct Target {
    pub(crate) resource: &'static Resource,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
}

pub(crate) fn target(p: &Params, collection: bool) -> Result<Target, ApiError> {
    let (group, version) = match (p.get("group"), p.get("version")) {
        (Some(g), Some(v)) => (g.as_str(), v.as_str()),
        _ => ("", "v1"),
    };
    let plural = p.get("resource").map(String::as_str).unwrap_or_default();
    let not_found = || ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: None,
    };
    let resource = registry::find(group, version, plural).ok_or_else(not_found)?;
    let namespace = p.get("ns").cloned();
    // A cluster-scoped resource has no namespaced path; a namespaced one is reachable without
    // a namespace only as a collection (a list across namespaces).
    if namespace.is_some() && !resource.namespaced
        || namespace.is_none() && resource.namespaced && !collection
    {
        return Err(not_found());
    }
    Ok(Target { resource, namespace, name: p.get("name").cloned() })
}

pub(crate) fn objects(state: &ApiState) -> Result<&Objects, ApiError> {
    state.objects().ok_or_else(|| ApiError {
        code: 503,
        reason: "ServiceUnavailable",
        message: "this API server has no store".into(),
        details: None,
    })
}

fn dry_run(q: &Params) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(o) => Err(ApiError::bad_request(format!("unsupported dryRun value {o:?} (All)"))),
    }
}

fn body_object(body: &Bytes, r: &Resource) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not a JSON object: {e}"))
    })?;
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    let api_version = r.gvk.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", r.gvk.kind)] {
        match o.get(field).and_then(Value::as_str) {
            None | Some("") => {
                o.insert(field.into(), Value::String(want.to_owned()));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} {got:?} of the body does not match the path's {want:?}"
                )))
            }
        }
    }
    Ok(obj)
}

fn with_type(mut obj: Value, r: &Resource) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(r.gvk.api_version()));
        o.insert("kind".into(), Value::String(r.gvk.kind.to_owned()));
    }
    obj
}

async fn list(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
) -> Result<Response, ApiError> {
    let t = target(&p, true)?;
    if crate::watch::is_watch(&q) {
        return crate::watch::serve(objects(&state)?, t.resource, t.namespace, &q).await;
    }
    let selectors = Selectors::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
        t.resource,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = match q.get("limit").filter(|l| !l.is_empty()) {
        None => 0,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|&n| n >= 0)
            .ok_or_else(|| ApiError::bad_request(format!("invalid limit {l:?}")))?,
    };
    let opts = ListOptions {
        limit,
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        at: ReadAt::parse(
            q.get("resourceVersion").map(String::as_str),
            q.get("resourceVersionMatch").map(String::as_str),
        )?,
    };
    let page =
        crate::watch::list(objects(&state)?, t.resource, t.namespace.as_deref(), &opts, &selectors)
            .await?;
    let mut meta = json!({ "resourceVersion": page.resource_version.to_string() });
    if let Some(c) = page.continue_token {
        meta["continue"] = Value::String(c);
    }
    if let Some(n) = page.remaining {
        meta["remainingItemCount"] = json!(n);
    }
    let r = t.resource;
    let items: Vec<Value> = page.items.into_iter().map(|o| with_type(o, r)).collect();
    Ok(axum::Json(json!({
        "kind": format!("{}List", r.gvk.kind),
        "apiVersion": r.gvk.api_version(),
        "metadata": meta,
        "items": items,
    }))
    .into_response())
}

async fn read(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let name = t.name.unwrap_or_default();
    let obj = objects(&state)?.get(t.resource, t.namespace.as_deref(), &name).await?;
    Ok(axum::Json(with_type(obj, t.resource)).into_response())
}

async fn create(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let obj = body_object(&body, t.resource)?;
    let created =
        objects(&state)?.create(t.resource, t.namespace.as_deref(), obj, dry_run(&q)?).await?;
    Ok((StatusCode::CREATED, axum::Json(with_type(created, t.resource))).into_response())
}

async fn update(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let name = t.name.unwrap_or_default();
    let obj = body_object(&body, t.resource)?;
    let updated = objects(&state)?
        .update(t.resource, t.namespace.as_deref(), &name, obj, dry_run(&q)?)
        .await?;
    Ok(axum::Json(with_type(updated, t.resource)).into_response())
}

async fn delete(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let name = t.name.unwrap_or_default();
    // DeleteOptions in the body (kubectl sends one): preconditions and dryRun.
    let opts: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the DeleteOptions are not JSON: {e}")))?
    };
    let pre = Preconditions {
        uid: opts.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned),
        resource_version: match opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid precondition resourceVersion {v:?}"))
            })?),
        },
    };
    let body_dry =
        opts.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v == "All"));
    let dry = dry_run(&q)? || body_dry;
    let r = t.resource;
    match objects(&state)?.delete(r, t.namespace.as_deref(), &name, &pre, dry).await? {
        Deleted::Pending(obj) => {
            Ok((StatusCode::ACCEPTED, axum::Json(with_type(obj, r))).into_response())
        }
        Deleted::Gone(obj) => Ok(axum::Json(with_type(obj, r)).into_response()),
    }
}
