//! The object verbs over HTTP: get, list, create, update (PUT), patch and delete of every
//! registered resource, and get, update and patch of its `status` and `scale`, on upstream's
//! paths, answered from [`Objects`](crate::objects::Objects) through the write
//! [pipeline](crate::pipeline).
//!
//! - `/api/v1/[namespaces/{ns}/]{resource}[/{name}[/{subresource}]]` and
//!   `/apis/{group}/{version}/[namespaces/{ns}/]{resource}[/{name}[/{subresource}]]`; a
//!   namespaced resource listed without a namespace is listed across all of them.
//! - Query parameters: `resourceVersion`, `resourceVersionMatch`, `limit`, `continue`,
//!   `labelSelector` and `fieldSelector` on lists; `watch=true` turns a list into a watch
//!   ([`crate::watch`], which also serves lists from the watch caches and the legacy
//!   `/api/v1/watch/...` paths); `dryRun=All`, `fieldManager`, `fieldValidation` and (apply)
//!   `force` on writes. A body's `apiVersion` and `kind` must be the resource's (they are
//!   filled in when missing); a patch's kind is its `Content-Type`.
//! - Errors are `metav1.Status` bodies with upstream's codes and reasons; warnings are
//!   `Warning` headers.
//! - Reads answer in the representation the `Accept` header asks for: JSON, a `Table` (what
//!   `kubectl get` prints, see [`printers`](crate::printers)) or `PartialObjectMetadata`.
//! - Pod actions: `binding`, `eviction` ([`pods`](crate::pods)); the streaming subresources
//!   answer 503 until the node tunnel exists.
//!
//! - `DELETE` of a collection (deletecollection) deletes what its selectors pick, one object at
//!   a time with each one's finalizers and allocations, as upstream.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::objects::{ApiError, Deleted, ListOptions, Objects, Preconditions, ReadAt};
use crate::pipeline::{decode_body, Outcome, Part, PatchType, WriteOptions, Writer};
use crate::printers::{self, IncludeObject, Representation};
use crate::registry::{self, Resource};
use crate::selectors::Selectors;
use crate::server::ApiState;
use crate::strategy::Strategy;

type Params = HashMap<String, String>;

/// The object routes, to be merged into the API router.
pub fn routes() -> Router<Arc<ApiState>> {
    let object = || get(read).put(update).patch(patch).delete(delete);
    let sub = || get(read_sub).put(update_sub).patch(patch_sub).post(create_sub);
    Router::new()
        .route("/api/v1/{resource}", get(list).post(create).delete(delete_collection))
        .route("/api/v1/{resource}/{name}", object())
        .route("/api/v1/{resource}/{name}/{sub}", sub())
        .route(
            "/api/v1/namespaces/{ns}/{resource}",
            get(list).post(create).delete(delete_collection),
        )
        .route("/api/v1/namespaces/{ns}/{resource}/{name}", object())
        .route("/api/v1/namespaces/{ns}/{resource}/{name}/{sub}", sub())
        .route(
            "/apis/{group}/{version}/{resource}",
            get(list).post(create).delete(delete_collection),
        )
        .route("/apis/{group}/{version}/{resource}/{name}", object())
        .route("/apis/{group}/{version}/{resource}/{name}/{sub}", sub())
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{resource}",
            get(list).post(create).delete(delete_collection),
        )
        .route("/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}", object())
        .route("/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}/{sub}", sub())
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
    let not_found =
        || ApiError::new(404, "NotFound", "the server could not find the requested resource");
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
    state
        .objects()
        .ok_or_else(|| ApiError::new(503, "ServiceUnavailable", "this API server has no store"))
}

fn dry_run(q: &Params) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(o) => Err(ApiError::bad_request(format!("unsupported dryRun value {o:?} (All)"))),
    }
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
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = target(&p, true)?;
    if crate::watch::is_watch(&q) {
        let repr = representation(&headers)?;
        return crate::watch::serve(objects(&state)?, t.resource, t.namespace, &q, repr).await;
    }
    let selectors = Selectors::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
        t.resource,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let repr = representation(&headers)?;
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
    if repr == Representation::Json && selectors.is_empty() {
        // The common list (kubectl, informers): spliced from the stored JSON.
        let page =
            crate::watch::list_stored(objects(&state)?, t.resource, t.namespace.as_deref(), &opts)
                .await?;
        let body = crate::rawlist::encode(t.resource, &page)?;
        drop(page);
        return Ok((
            [(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response());
    }
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
    match repr {
        Representation::Table(version) => {
            let include = IncludeObject::parse(q.get("includeObject").map(String::as_str))?;
            let table = printers::table(r, &page.items, include, version, meta, chrono::Utc::now());
            Ok(axum::Json(table).into_response())
        }
        Representation::Metadata(version) => {
            let items: Vec<Value> =
                page.items.iter().map(|o| printers::partial_metadata(o, version)).collect();
            Ok(axum::Json(json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": format!("meta.k8s.io/{version}"),
                "metadata": meta,
                "items": items,
            }))
            .into_response())
        }
        Representation::Json => {
            let items: Vec<Value> = page.items.into_iter().map(|o| with_type(o, r)).collect();
            Ok(axum::Json(json!({
                "kind": format!("{}List", r.gvk.kind),
                "apiVersion": r.gvk.api_version(),
                "metadata": meta,
                "items": items,
            }))
            .into_response())
        }
    }
}

pub(crate) fn representation(headers: &HeaderMap) -> Result<Representation, ApiError> {
    printers::negotiate(headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()))
}

/// One object as the client asked for it.
fn one(obj: Value, r: &Resource, repr: Representation, q: &Params) -> Result<Response, ApiError> {
    let obj = with_type(obj, r);
    Ok(match repr {
        Representation::Json => axum::Json(obj).into_response(),
        Representation::Metadata(version) => {
            axum::Json(printers::partial_metadata(&obj, version)).into_response()
        }
        Representation::Table(version) => {
            let include = IncludeObject::parse(q.get("includeObject").map(String::as_str))?;
            let meta = json!({ "resourceVersion": obj["metadata"]["resourceVersion"].clone() });
            axum::Json(printers::table(r, &[obj], include, version, meta, chrono::Utc::now()))
                .into_response()
        }
    })
}

async fn read(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let repr = representation(&headers)?;
    let name = t.name.unwrap_or_default();
    let obj = objects(&state)?.get(t.resource, t.namespace.as_deref(), &name).await?;
    one(obj, t.resource, repr, &q)
}

fn writer<'a>(
    state: &'a ApiState,
    t: &'a Target,
    q: &Params,
    headers: &HeaderMap,
    patch: Option<PatchType>,
) -> Result<Writer<'a>, ApiError> {
    Ok(Writer {
        objects: objects(state)?,
        schemas: state.schemas(),
        admission: state.admission(),
        resource: t.resource,
        namespace: t.namespace.as_deref(),
        options: WriteOptions::parse(q, headers, patch)?,
    })
}

/// The response to a write: the object (as the subresource shows it), `201` when created, a
/// `Warning` header per warning.
fn written(out: Outcome, r: &Resource, part: Part) -> Response {
    let code = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    let body = if part == Part::Scale { out.object } else { with_type(out.object, r) };
    let mut res = (code, axum::Json(body)).into_response();
    for w in out.warnings {
        let text = format!("299 - {}", serde_json::Value::String(w));
        if let Ok(v) = HeaderValue::from_str(&text) {
            res.headers_mut().append(http::header::WARNING, v);
        }
    }
    res
}

async fn create(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let w = writer(&state, &t, &q, &headers, None)?;
    let out = w.create(decode_body(&headers, &body, state.schemas())?).await?;
    Ok(written(out, t.resource, Part::Object))
}

async fn update(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    write_part(&state, &p, &q, &headers, Part::Object, None, &body).await
}

async fn patch(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = content_type_patch(&headers)?;
    write_part(&state, &p, &q, &headers, Part::Object, Some(kind), &body).await
}

fn content_type_patch(headers: &HeaderMap) -> Result<PatchType, ApiError> {
    PatchType::from_content_type(
        headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
    )
}

fn sub_part(t: &Target, p: &Params) -> Result<Part, ApiError> {
    Part::of(t.resource, p.get("sub").map(String::as_str))
}

/// The streaming subresources of pods (`exec`, `attach`, `portforward` also arrive as GET
/// when upgraded).
const STREAMING: &[&str] = &["log", "exec", "attach", "portforward"];

fn pod_action<'a>(t: &'a Target, p: &'a Params) -> Option<(&'a str, &'a str, &'a str)> {
    let sub = p.get("sub")?.as_str();
    (t.resource.gvk.kind == "Pod" && t.resource.gvk.group.is_empty())
        .then(|| Some((t.namespace.as_deref()?, t.name.as_deref()?, sub)))
        .flatten()
}

async fn create_sub(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let objects = objects(&state)?;
    let dry = dry_run(&q)?;
    let Some((ns, name, sub)) = pod_action(&t, &p) else {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "POST is not supported on this subresource",
        ));
    };
    let status = match sub {
        "binding" => {
            let body = decode_body(&headers, &body, state.schemas())?;
            crate::pods::bind(objects, ns, name, &body, dry).await?
        }
        "eviction" => {
            let body = decode_body(&headers, &body, state.schemas())?;
            crate::pods::evict(objects, ns, name, &body, dry).await?
        }
        s if STREAMING.contains(&s) => crate::pods::stream(objects, ns, name, s).await?,
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ))
        }
    };
    Ok((StatusCode::CREATED, axum::Json(status)).into_response())
}

async fn read_sub(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    if let Some((ns, name, sub)) = pod_action(&t, &p).filter(|(_, _, s)| STREAMING.contains(s)) {
        crate::pods::stream(objects(&state)?, ns, name, sub).await?;
    }
    let part = sub_part(&t, &p)?;
    let name = t.name.clone().unwrap_or_default();
    let obj = objects(&state)?.get(t.resource, t.namespace.as_deref(), &name).await?;
    match part {
        Part::Scale => Ok(axum::Json(Strategy::of(t.resource).scale_of(&obj)?).into_response()),
        Part::Object | Part::Status => Ok(axum::Json(with_type(obj, t.resource)).into_response()),
    }
}

async fn update_sub(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let part = sub_part(&t, &p)?;
    write_part(&state, &p, &q, &headers, part, None, &body).await
}

async fn patch_sub(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let part = sub_part(&t, &p)?;
    let kind = content_type_patch(&headers)?;
    write_part(&state, &p, &q, &headers, part, Some(kind), &body).await
}

/// A PUT (`patch` None) or PATCH of an object or one of its parts.
async fn write_part(
    state: &ApiState,
    p: &Params,
    q: &Params,
    headers: &HeaderMap,
    part: Part,
    patch: Option<PatchType>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let t = target(p, false)?;
    let name = t.name.clone().unwrap_or_default();
    let w = writer(state, &t, q, headers, patch)?;
    let out = match patch {
        None => w.update(&name, part, decode_body(headers, body, state.schemas())?).await?,
        Some(kind) => w.patch(&name, part, kind, body).await?,
    };
    Ok(written(out, t.resource, part))
}

/// `DeleteOptions` from a delete's body and query: preconditions and dry run.
fn delete_options(
    state: &ApiState,
    q: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Preconditions, bool), ApiError> {
    let opts: Value =
        if body.is_empty() { Value::Null } else { decode_body(headers, body, state.schemas())? };
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
    Ok((pre, dry_run(q)? || body_dry))
}

/// Deletes one object through admission (its allocations go in the same transaction).
async fn delete_one(
    state: &ApiState,
    r: &'static Resource,
    namespace: Option<&str>,
    name: &str,
    pre: &Preconditions,
    dry: bool,
) -> Result<Deleted, ApiError> {
    let admission = state.admission();
    admission.check_delete(r, name)?;
    let reads = admission.reads(r);
    objects(state)?
        .delete_with(r, namespace, name, pre, dry, &reads, |current, read, effects| {
            admission.release(r, current, read, effects)
        })
        .await
}

async fn delete(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, false)?;
    let name = t.name.clone().unwrap_or_default();
    let (pre, dry) = delete_options(&state, &q, &headers, &body)?;
    let r = t.resource;
    match delete_one(&state, r, t.namespace.as_deref(), &name, &pre, dry).await? {
        Deleted::Pending(obj) => {
            Ok((StatusCode::ACCEPTED, axum::Json(with_type(obj, r))).into_response())
        }
        Deleted::Gone(obj) => Ok(axum::Json(with_type(obj, r)).into_response()),
    }
}

/// `DELETE` of a collection (deletecollection): every object the selectors pick, one by one
/// as upstream does (each with its finalizers and allocations); answers the list of what was
/// deleted or marked for deletion.
async fn delete_collection(
    State(state): State<Arc<ApiState>>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&p, true)?;
    let r = t.resource;
    if r.namespaced && t.namespace.is_none() {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("deletecollection of {} needs a namespace", r.plural),
        ));
    }
    let selectors = Selectors::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
        r,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (pre, dry) = delete_options(&state, &q, &headers, &body)?;
    let page = crate::watch::list(
        objects(&state)?,
        r,
        t.namespace.as_deref(),
        &ListOptions::default(),
        &selectors,
    )
    .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for obj in page.items {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        match delete_one(&state, r, ns, name, &pre, dry).await {
            Ok(Deleted::Gone(o) | Deleted::Pending(o)) => items.push(with_type(o, r)),
            // Deleted meanwhile by someone else: it is gone, which is what was asked.
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(axum::Json(json!({
        "kind": format!("{}List", r.gvk.kind),
        "apiVersion": r.gvk.api_version(),
        "metadata": { "resourceVersion": page.resource_version.to_string() },
        "items": items,
    }))
    .into_response())
}
