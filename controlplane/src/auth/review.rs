//! The authentication and authorization API: TokenRequest
//! (`serviceaccounts/<name>/token`), TokenReview, SelfSubjectReview (`kubectl auth whoami`),
//! SubjectAccessReview, LocalSubjectAccessReview and SelfSubjectAccessReview (`kubectl auth
//! can-i`), the service-account issuer's discovery documents (`/.well-known/openid-configuration`,
//! `/openid/v1/jwks`), and the ClusterRole aggregation controller's write-back.
//!
//! These are static routes: axum prefers them to the generic object routes. Each answers
//! `201 Created` with the request object and its `status`, as upstream does; nothing is stored.
//!
//! TokenRequest: `expirationSeconds` defaults to 3600 and must be at least 600 (and at most
//! 2³² s); `audiences` default to the API server's; `boundObjectRef` may name a Pod or a Secret
//! of the service account's namespace (its uid must match when given); a pod-bound token also
//! names the pod's node. The token lives as long as the service account and bound object do.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::request::RequestInfo;
use super::token::{self, Claims, Private, Ref};
use super::{Decision, User};
use crate::objects::{ApiError, ListOptions};
use crate::pipeline::{Part, WriteOptions, Writer};
use crate::server::ApiState;

/// The shortest token lifetime TokenRequest grants.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The lifetime when none is asked for.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// The review and token routes, merged into the API router before the object routes.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token", post(token_request))
        .route("/apis/authentication.k8s.io/v1/tokenreviews", post(token_review))
        .route("/apis/authentication.k8s.io/v1/selfsubjectreviews", post(self_subject_review))
        .route("/apis/authorization.k8s.io/v1/subjectaccessreviews", post(subject_access_review))
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            post(self_subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews",
            post(local_subject_access_review),
        )
        .route("/.well-known/openid-configuration", get(openid_configuration))
        .route("/openid/v1/jwks", get(jwks))
}

fn created(obj: Value) -> Response {
    (StatusCode::CREATED, axum::Json(obj)).into_response()
}

fn body_of(
    headers: &HeaderMap,
    body: &[u8],
    state: &ApiState,
    kind: &str,
    group_version: &str,
) -> Result<Value, ApiError> {
    let mut obj = crate::pipeline::decode_body(headers, body, state.schemas())?;
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request(format!("a {kind} must be an object")))?;
    let api_version = o.entry("apiVersion").or_insert_with(|| json!(group_version)).clone();
    let k = o.entry("kind").or_insert_with(|| json!(kind)).clone();
    if api_version != group_version || k != kind {
        return Err(ApiError::bad_request(format!(
            "the body is a {}/{}, not a {group_version}/{kind}",
            api_version.as_str().unwrap_or_default(),
            k.as_str().unwrap_or_default()
        )));
    }
    Ok(obj)
}

fn invalid(kind: &str, name: &str, field: &str, why: &str) -> ApiError {
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("{kind}.authentication.k8s.io \"{name}\" is invalid: {field}: {why}"),
    );
    e.details = Some((kind.to_owned(), name.to_owned()));
    e.causes.push(crate::objects::Cause {
        reason: "FieldValueInvalid".into(),
        message: why.to_owned(),
        field: field.to_owned(),
    });
    e
}

fn core(plural: &str) -> Result<&'static crate::registry::Resource, ApiError> {
    crate::registry::find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))
}

fn uid_of(v: &Value) -> String {
    v.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn token_request(
    State(state): State<Arc<ApiState>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut req = body_of(&headers, &body, &state, "TokenRequest", "authentication.k8s.io/v1")?;
    let signer = state.auth().signer().ok_or_else(|| {
        ApiError::new(503, "ServiceUnavailable", "this API server issues no tokens")
    })?;
    let objects = state
        .objects()
        .ok_or_else(|| ApiError::new(503, "ServiceUnavailable", "this API server has no store"))?;
    let spec = req.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            invalid("TokenRequest", &name, "spec.expirationSeconds", "must be an integer")
        })?,
    };
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            "TokenRequest",
            &name,
            "spec.expirationSeconds",
            &format!(
                "Invalid value: {expiration}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            "TokenRequest",
            &name,
            "spec.expirationSeconds",
            &format!(
                "Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"
            ),
        ));
    }
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![token::ISSUER.to_owned()]);
    let sa = objects.get(core("serviceaccounts")?, Some(&ns), &name).await?;
    let mut private = Private {
        namespace: ns.clone(),
        serviceaccount: Ref { name: name.clone(), uid: uid_of(&sa) },
        pod: None,
        secret: None,
        node: None,
    };
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        let kind = bound.get("kind").and_then(Value::as_str).unwrap_or_default();
        let bname = bound.get("name").and_then(Value::as_str).unwrap_or_default();
        let plural = match kind {
            "Pod" => "pods",
            "Secret" => "secrets",
            other => {
                return Err(invalid(
                    "TokenRequest",
                    &name,
                    "spec.boundObjectRef.kind",
                    &format!(
                        "Unsupported value: \"{other}\": supported values: \"Pod\", \"Secret\""
                    ),
                ))
            }
        };
        let obj = objects.get(core(plural)?, Some(&ns), bname).await?;
        let uid = uid_of(&obj);
        if let Some(want) = bound.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty()) {
            if want != uid {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"),
                ));
            }
        }
        let r = Ref { name: bname.to_owned(), uid };
        if kind == "Pod" {
            if let Some(node) = obj.pointer("/spec/nodeName").and_then(Value::as_str) {
                let node_uid = objects
                    .get(core("nodes")?, None, node)
                    .await
                    .map(|n| uid_of(&n))
                    .unwrap_or_default();
                private.node = Some(Ref { name: node.to_owned(), uid: node_uid });
            }
            private.pod = Some(r);
        } else {
            private.secret = Some(r);
        }
    }
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: token::ISSUER.to_owned(),
        sub: format!("{}{ns}:{name}", super::SERVICE_ACCOUNT_PREFIX),
        aud: audiences.clone(),
        iat: now,
        nbf: now,
        exp: now + expiration,
        jti: crate::auth::review::jti(),
        kubernetes: private,
    };
    let jwt = signer.sign(&claims).map_err(|e| {
        tracing::error!(error = %e, "sign a service-account token");
        ApiError::internal("could not sign the token")
    })?;
    req["metadata"] = json!({ "name": name, "namespace": ns, "creationTimestamp": rfc3339(now) });
    req["spec"]["audiences"] = json!(audiences);
    req["spec"]["expirationSeconds"] = json!(expiration);
    req["status"] = json!({ "token": jwt, "expirationTimestamp": rfc3339(claims.exp) });
    tracing::debug!(namespace = %ns, serviceaccount = %name, "issued a service-account token");
    Ok(created(req))
}

fn jti() -> String {
    let b: [u8; 16] = rand::random();
    hex::encode(b)
}

async fn token_review(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut req = body_of(&headers, &body, &state, "TokenReview", "authentication.k8s.io/v1")?;
    let token = req.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default().to_owned();
    if token.is_empty() {
        return Err(invalid(
            "TokenReview",
            "",
            "spec.token",
            "Required value: token must not be empty",
        ));
    }
    let audiences: Vec<String> = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    req["status"] = match state.auth().authenticate_token(&token, &audiences).await {
        Ok((user, auds)) => json!({
            "authenticated": true,
            "user": user.with_authenticated().to_json(),
            "audiences": auds,
        }),
        Err(e) => {
            let mut s = json!({ "authenticated": false, "user": {}, "error": e.to_string() });
            if !audiences.is_empty() {
                s["audiences"] = json!([]);
            }
            s
        }
    };
    Ok(created(req))
}

/// SelfSubjectReview has no spec: the body (JSON or kubectl's protobuf) is not read.
async fn self_subject_review(Extension(user): Extension<User>) -> Response {
    created(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
        "metadata": { "creationTimestamp": rfc3339(chrono::Utc::now().timestamp()) },
        "status": { "userInfo": user.to_json() },
    }))
}

/// The request a review's `resourceAttributes` or `nonResourceAttributes` describe.
pub fn attributes_info(spec: &Value) -> Result<RequestInfo, ApiError> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Ok(RequestInfo {
            is_resource_request: true,
            path: String::new(),
            verb: s(r, "verb"),
            api_group: s(r, "group"),
            api_version: s(r, "version"),
            namespace: s(r, "namespace"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            name: s(r, "name"),
            field_selector: r
                .pointer("/fieldSelector/rawSelector")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(RequestInfo {
            is_resource_request: false,
            path: s(n, "path"),
            verb: s(n, "verb"),
            ..Default::default()
        });
    }
    Err(ApiError::new(
        422,
        "Invalid",
        "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

async fn decide(state: &ApiState, mut req: Value, user: &User) -> Result<Response, ApiError> {
    let info = attributes_info(req.get("spec").unwrap_or(&Value::Null))?;
    let status = match state.auth().authorize(user, &info).await {
        Decision::Allow => json!({ "allowed": true }),
        Decision::Deny(reason) => {
            let mut s = json!({ "allowed": false });
            if !reason.is_empty() {
                s["reason"] = json!(reason);
            }
            s
        }
    };
    req["status"] = status;
    if req.get("metadata").is_none() {
        req["metadata"] = json!({});
    }
    Ok(created(req))
}

async fn subject_access_review(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = body_of(&headers, &body, &state, "SubjectAccessReview", "authorization.k8s.io/v1")?;
    let spec = req.get("spec").cloned().unwrap_or_default();
    let user = User::from_review(&spec);
    if user.name.is_empty() && user.groups.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    decide(&state, req, &user).await
}

async fn local_subject_access_review(
    State(state): State<Arc<ApiState>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req =
        body_of(&headers, &body, &state, "LocalSubjectAccessReview", "authorization.k8s.io/v1")?;
    let spec = req.get("spec").cloned().unwrap_or_default();
    let attr_ns =
        spec.pointer("/resourceAttributes/namespace").and_then(Value::as_str).unwrap_or_default();
    if spec.get("resourceAttributes").is_none() || attr_ns != ns {
        return Err(ApiError::bad_request(format!(
            "spec.resourceAttributes.namespace must match the namespace of the request ({ns})"
        )));
    }
    let user = User::from_review(&spec);
    decide(&state, req, &user).await
}

async fn self_subject_access_review(
    State(state): State<Arc<ApiState>>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut req =
        body_of(&headers, &body, &state, "SelfSubjectAccessReview", "authorization.k8s.io/v1")?;
    let u = user.to_json();
    req["spec"]["user"] = u["username"].clone();
    req["spec"]["groups"] = u["groups"].clone();
    if !user.uid.is_empty() {
        req["spec"]["uid"] = json!(user.uid);
    }
    decide(&state, req, &user).await
}

async fn openid_configuration(State(state): State<Arc<ApiState>>) -> Response {
    axum::Json(json!({
        "issuer": token::ISSUER,
        "jwks_uri": format!("https://{}/openid/v1/jwks", state.server_address()),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<ApiState>>) -> Response {
    let keys: Vec<Value> = state.auth().signer().map(|s| s.jwk()).into_iter().collect();
    axum::Json(json!({ "keys": keys })).into_response()
}

/// The aggregation controller's write: every ClusterRole with an `aggregationRule` whose
/// stored `rules` differ from the aggregate gets the aggregate (field manager
/// `clusterrole-aggregation-controller`).
pub async fn write_aggregated(state: &ApiState) -> Result<(), ApiError> {
    let Some(objects) = state.objects() else { return Ok(()) };
    let resource = crate::registry::find("rbac.authorization.k8s.io", "v1", "clusterroles")
        .ok_or_else(|| ApiError::internal("clusterroles are not registered"))?;
    let snapshot = state.auth().rbac().snapshot();
    let roles = objects.list(resource, None, &ListOptions::default()).await?;
    let w = Writer {
        objects,
        schemas: state.schemas(),
        admission: state.admission(),
        resource,
        namespace: None,
        options: WriteOptions {
            dry_run: false,
            manager: "clusterrole-aggregation-controller".into(),
            validation: crate::fields::FieldValidation::Ignore,
            force: false,
        },
    };
    for mut role in roles.items {
        if role.get("aggregationRule").is_none_or(Value::is_null) {
            continue;
        }
        let name =
            role.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let Some(rules) = snapshot.cluster_role_rules(&name) else { continue };
        let want: Vec<Value> = rules.iter().map(super::rbac::Rule::to_json).collect();
        let have = role.get("rules").cloned().unwrap_or(json!([]));
        let have_rules: Vec<super::rbac::Rule> =
            have.as_array().into_iter().flatten().map(super::rbac::Rule::from_json).collect();
        if have_rules == rules {
            continue;
        }
        role["rules"] = Value::Array(want);
        // Keep the resourceVersion read: a concurrent change wins and the watch comes back.
        match w.update(&name, Part::Object, role).await {
            Ok(_) => tracing::debug!(role = %name, "wrote aggregated rules"),
            Err(e) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
