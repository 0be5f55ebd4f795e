//! Authentication and authorization of every request, as upstream's filter chain does it:
//! authenticate, compute the [`RequestInfo`], authorize, admit the
//! node's own writes, then hand the request on with its [`User`].
//!
//! Authentication, in order (the first that applies decides):
//! 1. the TLS client certificate (verified against the cluster CA in the handshake): Common
//!    Name is the user, Organizations the groups;
//! 2. a bearer token (`Authorization: Bearer …`): a bound service-account JWT
//!    ([`token`]; signature, issuer, expiry, audience, and the service account and bound
//!    object still existing with the same uid), or a bootstrap token (`<id>.<secret>` checked
//!    against the Secret `kube-system/bootstrap-token-<id>`: type, secret, expiration and
//!    `usage-bootstrap-authentication`; user `system:bootstrap:<id>`, groups
//!    `system:bootstrappers` and its `auth-extra-groups`).
//!
//! A request with neither, or with a token that does not check out, is refused with 401:
//! anonymous access is off everywhere. Every authenticated user is in
//! `system:authenticated`.
//!
//! Authorization, in order: `system:masters` may do anything; the [`node`] authorizer
//! decides what a node identity may read and write; then [`rbac`]. A refusal is upstream's
//! 403 `Status` (`pods is forbidden: User "x" cannot list resource "pods" in API group "" in
//! the namespace "default"`). The RBAC index is rebuilt from a store watch on the RBAC
//! prefix, so authorizing costs a few microseconds and no store read; bindings take effect
//! as soon as the watch delivers them (upstream's informers are eventually consistent too).
//! The same task is the ClusterRole aggregation controller: it writes each aggregated role's
//! rules back into the store.
//!
//! [`review`] serves TokenRequest, TokenReview, SubjectAccessReview,
//! SelfSubjectAccessReview and SelfSubjectReview; [`policy`] is the default RBAC policy.
//!
//! Limits: no static token file, no impersonation, no webhook authn/authz, no
//! SelfSubjectRulesReview; the node authorizer reads the pods of the namespace a request
//! names on every node request instead of keeping upstream's graph in memory.

pub mod node;
pub mod policy;
pub mod rbac;
pub mod request;
pub mod review;
pub mod token;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::Value;

use crate::objects::{ApiError, ListOptions, Objects};
use crate::registry;
use crate::server::{ApiState, Authenticated};
use request::RequestInfo;
use token::Signer;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group allowed everything.
pub const MASTERS: &str = "system:masters";
/// The prefix of service-account user names.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated user, as upstream's `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The uid (service accounts' uid; empty for certificates).
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (a bound token's pod and credential id).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// A user with a name and groups.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// `UserInfo` as the review objects show it.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({ "username": self.name, "groups": self.groups });
        if !self.uid.is_empty() {
            v["uid"] = Value::String(self.uid.clone());
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }

    /// A `UserInfo` from a review object's fields (`user`, `groups`, `uid`, `extra`).
    pub fn from_review(spec: &Value) -> User {
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        User {
            name: spec.get("user").and_then(Value::as_str).unwrap_or_default().to_owned(),
            uid: spec.get("uid").and_then(Value::as_str).unwrap_or_default().to_owned(),
            groups: strings(spec.get("groups")),
            extra: spec
                .get("extra")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(Some(v)))).collect())
                .unwrap_or_default(),
        }
    }

    fn with_authenticated(mut self) -> User {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_owned());
        }
        self
    }
}

impl From<crate::pki::UserInfo> for User {
    fn from(u: crate::pki::UserInfo) -> User {
        User { name: u.name, groups: u.groups, ..Default::default() }
    }
}

/// Why a token was refused (the reason goes to logs and TokenReview's `error`, never to the
/// 401 body).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The JWT did not verify.
    #[error("invalid service-account token")]
    Jwt(#[from] token::Error),
    /// The token is for other audiences.
    #[error("token audiences {0:?} are invalid for the target audiences")]
    Audience(Vec<String>),
    /// The service account or bound object is gone or was replaced.
    #[error("{0}")]
    Stale(String),
    /// Not a token of any kind we know.
    #[error("unknown token format")]
    Unknown,
    /// The bootstrap token does not check out.
    #[error("invalid bootstrap token: {0}")]
    Bootstrap(&'static str),
    /// The server has no store or key to check against.
    #[error("tokens are not accepted by this server")]
    Unsupported,
    /// The store could not be read.
    #[error("check the token")]
    Store(#[source] ApiError),
}

/// What an authorizer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Not allowed, with the reason to show (may be empty).
    Deny(String),
}

/// The authenticators' and authorizers' state, shared by every request.
#[derive(Debug)]
pub struct Auth {
    signer: Option<Signer>,
    objects: Option<Objects>,
    rbac: rbac::Index,
}

impl Default for Auth {
    fn default() -> Self {
        Auth::new(None, None)
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn resource(group: &str, plural: &str) -> Result<&'static registry::Resource, ApiError> {
    registry::find(group, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))
}

impl Auth {
    /// An authenticator and authorizer over `objects` (tokens, RBAC, the node graph) signing
    /// and checking service-account tokens with `signer`. Without a store only certificates
    /// authenticate and only `system:masters` is allowed anything.
    pub fn new(signer: Option<Signer>, objects: Option<Objects>) -> Auth {
        Auth { signer, objects, rbac: rbac::Index::default() }
    }

    /// The service-account key.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// The RBAC index.
    pub fn rbac(&self) -> &rbac::Index {
        &self.rbac
    }

    fn objects(&self) -> Result<&Objects, ApiError> {
        self.objects
            .as_ref()
            .ok_or_else(|| ApiError::new(503, "ServiceUnavailable", "this API server has no store"))
    }

    /// Lists the four RBAC kinds at one revision and swaps the index; returns the revision.
    pub async fn refresh(&self) -> Result<i64, ApiError> {
        let objects = self.objects()?;
        let list = |plural: &'static str| async move {
            let r = resource("rbac.authorization.k8s.io", plural)?;
            objects.list(r, None, &ListOptions::default()).await
        };
        let cr = list("clusterroles").await?;
        let at = crate::objects::ReadAt::Exact(cr.resource_version);
        let exact = ListOptions { at, ..Default::default() };
        let at_rev = |plural: &'static str| {
            let exact = exact.clone();
            async move {
                let r = resource("rbac.authorization.k8s.io", plural)?;
                objects.list(r, None, &exact).await
            }
        };
        let (roles, crb, rb) = (
            at_rev("roles").await?,
            at_rev("clusterrolebindings").await?,
            at_rev("rolebindings").await?,
        );
        let revision = cr.resource_version;
        let snapshot = rbac::Snapshot::build(
            &rbac::Objects {
                cluster_roles: cr.items,
                roles: roles.items,
                cluster_role_bindings: crb.items,
                role_bindings: rb.items,
            },
            revision,
        );
        self.rbac.set(snapshot);
        Ok(revision)
    }

    /// Authenticates a bearer token for `audiences` (the API server's own when empty).
    pub async fn authenticate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<(User, Vec<String>), TokenError> {
        if token::looks_like_jwt(token) {
            self.service_account(token, audiences).await
        } else if let Some((id, secret)) = bootstrap_token(token) {
            let user = self.bootstrap(id, secret).await?;
            Ok((user, vec![token::ISSUER.to_owned()]))
        } else {
            Err(TokenError::Unknown)
        }
    }

    async fn service_account(
        &self,
        jwt: &str,
        audiences: &[String],
    ) -> Result<(User, Vec<String>), TokenError> {
        let signer = self.signer.as_ref().ok_or(TokenError::Unsupported)?;
        let claims = signer.verify(jwt, now())?;
        let wanted: Vec<String> =
            if audiences.is_empty() { vec![token::ISSUER.to_owned()] } else { audiences.to_vec() };
        let matched: Vec<String> =
            wanted.iter().filter(|a| claims.aud.contains(a)).cloned().collect();
        if matched.is_empty() {
            return Err(TokenError::Audience(claims.aud));
        }
        let objects = self.objects.as_ref().ok_or(TokenError::Unsupported)?;
        let k = &claims.kubernetes;
        still_there(objects, &k.namespace, "serviceaccounts", &k.serviceaccount).await?;
        let mut extra = BTreeMap::new();
        if let Some(pod) = &k.pod {
            let obj = still_there(objects, &k.namespace, "pods", pod).await?;
            if obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                return Err(TokenError::Stale(format!("pods \"{}\" is being deleted", pod.name)));
            }
            extra
                .insert("authentication.kubernetes.io/pod-name".to_owned(), vec![pod.name.clone()]);
            extra.insert("authentication.kubernetes.io/pod-uid".to_owned(), vec![pod.uid.clone()]);
        }
        if let Some(secret) = &k.secret {
            still_there(objects, &k.namespace, "secrets", secret).await?;
        }
        if let Some(node) = &k.node {
            extra.insert(
                "authentication.kubernetes.io/node-name".to_owned(),
                vec![node.name.clone()],
            );
        }
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_owned(),
            vec![format!("JTI={}", claims.jti)],
        );
        let user = User {
            name: format!("{SERVICE_ACCOUNT_PREFIX}{}:{}", k.namespace, k.serviceaccount.name),
            uid: k.serviceaccount.uid.clone(),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{}", k.namespace),
            ],
            extra,
        };
        Ok((user, matched))
    }

    async fn bootstrap(&self, id: &str, secret: &str) -> Result<User, TokenError> {
        let objects = self.objects.as_ref().ok_or(TokenError::Unsupported)?;
        let res = resource("", "secrets").map_err(TokenError::Store)?;
        let name = format!("bootstrap-token-{id}");
        let obj = match objects.get(res, Some("kube-system"), &name).await {
            Ok(o) => o,
            Err(e) if e.code == 404 => return Err(TokenError::Bootstrap("no such token")),
            Err(e) => return Err(TokenError::Store(e)),
        };
        if obj.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token") {
            return Err(TokenError::Bootstrap(
                "the secret is not of type bootstrap.kubernetes.io/token",
            ));
        }
        if obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
            return Err(TokenError::Bootstrap("the token is being deleted"));
        }
        let data = |k: &str| -> Option<String> {
            let b64 = obj.get("data")?.get(k)?.as_str()?;
            let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(raw).ok()
        };
        if data("token-id").as_deref() != Some(id) {
            return Err(TokenError::Bootstrap("token-id does not match the secret's name"));
        }
        let stored = data("token-secret").unwrap_or_default();
        if !constant_time_eq(stored.as_bytes(), secret.as_bytes()) {
            return Err(TokenError::Bootstrap("wrong secret"));
        }
        if let Some(exp) = data("expiration") {
            let t = chrono::DateTime::parse_from_rfc3339(&exp)
                .map_err(|_| TokenError::Bootstrap("unparsable expiration"))?;
            if t.timestamp() <= now() {
                return Err(TokenError::Bootstrap("expired"));
            }
        }
        if data("usage-bootstrap-authentication").as_deref() != Some("true") {
            return Err(TokenError::Bootstrap("not usable for authentication"));
        }
        let mut groups = vec!["system:bootstrappers".to_owned()];
        for g in data("auth-extra-groups").unwrap_or_default().split(',') {
            let g = g.trim();
            if g.is_empty() {
                continue;
            }
            if !g.starts_with("system:bootstrappers:") {
                return Err(TokenError::Bootstrap(
                    "auth-extra-groups must start with system:bootstrappers:",
                ));
            }
            groups.push(g.to_owned());
        }
        Ok(User { name: format!("system:bootstrap:{id}"), groups, ..Default::default() })
    }

    /// Decides one request.
    pub async fn authorize(&self, user: &User, info: &RequestInfo) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow;
        }
        let mut reason = String::new();
        if let Some(node) = node::node_name(user) {
            match self.objects() {
                Ok(objects) => match node::authorize(objects, node, info).await {
                    node::Verdict::Allow => return Decision::Allow,
                    node::Verdict::NoOpinion(why) => reason = why,
                },
                Err(e) => reason = e.message,
            }
        }
        if self.rbac.snapshot().allows(user, info) {
            return Decision::Allow;
        }
        Decision::Deny(reason)
    }

    /// Keeps the RBAC index current: lists, writes aggregated roles' rules back, then waits on
    /// a watch of the RBAC prefix and starts again on every change (or after a second when the
    /// watch fails). Runs until the store closes or the returned task is aborted.
    pub fn spawn_refresher(
        state: Arc<ApiState>,
        store: Arc<dyn keelson_store::Store>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let auth = state.auth().clone();
            loop {
                let revision = match auth.refresh().await {
                    Ok(rev) => rev,
                    Err(e) => {
                        tracing::warn!(error = %e, "refresh the RBAC index");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = review::write_aggregated(&state).await {
                    tracing::warn!(error = %e, "write aggregated ClusterRole rules");
                }
                let req = keelson_store::WatchRequest {
                    range: keelson_store::KeyRange::prefix(
                        b"/registry/rbac.authorization.k8s.io/".to_vec(),
                    ),
                    start_revision: revision + 1,
                    prev_kv: false,
                    progress_notify: false,
                };
                let mut watch = match store.watch(req).await {
                    Ok(w) => w,
                    Err(keelson_store::Error::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "watch the RBAC objects");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    match watch.next().await {
                        Some(Ok(resp)) if resp.events.is_empty() => continue,
                        Some(Ok(_)) => break,
                        Some(Err(keelson_store::Error::Closed)) | None => {
                            if store.current_revision().await.is_err() {
                                return;
                            }
                            break;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "RBAC watch ended");
                            break;
                        }
                    }
                }
            }
        })
    }
}

/// The object a token names, when it still exists with the token's uid.
async fn still_there(
    objects: &Objects,
    namespace: &str,
    plural: &'static str,
    r: &token::Ref,
) -> Result<Value, TokenError> {
    let res = resource("", plural).map_err(TokenError::Store)?;
    let obj = match objects.get(res, Some(namespace), &r.name).await {
        Ok(o) => o,
        Err(e) if e.code == 404 => {
            return Err(TokenError::Stale(format!("{plural} \"{}\" not found", r.name)))
        }
        Err(e) => return Err(TokenError::Store(e)),
    };
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    if uid != r.uid {
        return Err(TokenError::Stale(format!(
            "{plural} \"{}\" uid ({uid}) does not match the token's ({})",
            r.name, r.uid
        )));
    }
    Ok(obj)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `<id>.<secret>` with a 6-character id and a 16-character secret of `[a-z0-9]`.
fn bootstrap_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized() -> Response {
    ApiError::new(401, "Unauthorized", "Unauthorized").into_response()
}

/// The 403 `Status` upstream answers for a refused request.
pub fn forbidden(user: &User, info: &RequestInfo, reason: &str) -> ApiError {
    let msg = forbidden_message(user, info);
    let err = if reason.is_empty() { msg } else { format!("{msg}: {reason}") };
    let qualified = if info.is_resource_request {
        if info.api_group.is_empty() {
            info.resource.clone()
        } else {
            format!("{}.{}", info.resource, info.api_group)
        }
    } else {
        String::new()
    };
    let message = if qualified.is_empty() {
        format!("forbidden: {err}")
    } else if info.name.is_empty() {
        format!("{qualified} is forbidden: {err}")
    } else {
        format!("{qualified} \"{}\" is forbidden: {err}", info.name)
    };
    let mut e = ApiError::new(403, "Forbidden", message);
    if info.is_resource_request {
        e.details = Some((info.resource.clone(), info.name.clone()));
    }
    e
}

/// Upstream's `forbiddenMessage`: who cannot do what, where.
pub fn forbidden_message(user: &User, info: &RequestInfo) -> String {
    if !info.is_resource_request {
        return format!("User \"{}\" cannot {} path \"{}\"", user.name, info.verb, info.path);
    }
    let mut resource = info.resource.clone();
    if !info.subresource.is_empty() {
        resource = format!("{resource}/{}", info.subresource);
    }
    if info.namespace.is_empty() {
        format!(
            "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" at the cluster scope",
            user.name, info.verb, info.api_group
        )
    } else {
        format!(
            "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" in the namespace \"{}\"",
            user.name, info.verb, info.api_group, info.namespace
        )
    }
}

/// The largest body the node admission reads.
const MAX_ADMITTED_BODY: usize = 8 << 20;

/// The middleware: authenticates, authorizes, admits a node's writes, and passes the request
/// on with its [`User`] and [`RequestInfo`] as extensions.
pub async fn middleware(
    State(state): State<Arc<ApiState>>,
    cert: Option<Extension<Authenticated>>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = state.auth().clone();
    let user = match cert.and_then(|Extension(a)| a.0) {
        Some(u) => User::from(u),
        None => match bearer(request.headers()) {
            None => return unauthorized(),
            Some(t) => match auth.authenticate_token(t, &[]).await {
                Ok((u, _)) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "bearer token refused");
                    return unauthorized();
                }
            },
        },
    }
    .with_authenticated();
    let info =
        request::parse(request.method().as_str(), request.uri().path(), request.uri().query());
    if let Decision::Deny(reason) = auth.authorize(&user, &info).await {
        tracing::debug!(user = %user.name, verb = %info.verb, path = %info.path, "forbidden");
        let mut response = forbidden(&user, &info, &reason).into_response();
        response.extensions_mut().insert(user);
        return response;
    }
    if let (Some(node), Ok(objects)) = (node::node_name(&user), auth.objects()) {
        if node::admission_applies(&info) {
            let (parts, body) = request.into_parts();
            let bytes = match axum::body::to_bytes(body, MAX_ADMITTED_BODY).await {
                Ok(b) => b,
                Err(_) => {
                    return ApiError::new(
                        413,
                        "RequestEntityTooLarge",
                        "the request body is too large",
                    )
                    .into_response()
                }
            };
            let content_type =
                parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            if let Err(e) =
                node::admit(objects, state.schemas(), node, &info, content_type, &bytes).await
            {
                let mut response = e.into_response();
                response.extensions_mut().insert(user);
                return response;
            }
            request = Request::from_parts(parts, axum::body::Body::from(bytes));
        }
    }
    request.extensions_mut().insert(user.clone());
    request.extensions_mut().insert(info);
    let mut response = next.run(request).await;
    // For the audit log, which wraps this middleware.
    response.extensions_mut().insert(user);
    response
}

#[cfg(test)]
mod tests;
