//! The whole chain through the router (no socket): tokens, RBAC, the node authorizer and
//! NodeRestriction, the review APIs, over an embedded store in a temporary directory.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keelson_store::embedded::{EmbeddedStore, Options};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::token::{Claims, Private, Ref, Signer, ISSUER};
use super::*;
use crate::pki::UserInfo;
use crate::server::{router, ApiState, Authenticated};

struct H {
    state: Arc<ApiState>,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

enum Who<'a> {
    Admin,
    Cert(&'a str, &'a [&'a str]),
    Bearer(&'a str),
    Anonymous,
}

async fn h() -> H {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { history_window: None, ..Options::default() };
    let store = Arc::new(EmbeddedStore::open(dir.path().join("db"), opts).await.unwrap());
    let objects = crate::objects::Objects::new(store);
    let state = Arc::new(
        ApiState::new("127.0.0.1:6443".into())
            .with_objects(objects.clone())
            .with_auth(Auth::new(Some(Signer::ephemeral().unwrap()), Some(objects))),
    );
    crate::bootstrap::run(&state, "127.0.0.1:6443".parse().unwrap()).await.unwrap();
    state.auth().refresh().await.unwrap();
    review::write_aggregated(&state).await.unwrap();
    state.auth().refresh().await.unwrap();
    H { router: router(state.clone()), state, _dir: dir }
}

impl H {
    async fn call(
        &self,
        who: Who<'_>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_ct(who, method, path, body, "application/json").await
    }

    async fn call_ct(
        &self,
        who: Who<'_>,
        method: &str,
        path: &str,
        body: Option<Value>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        let cert = match who {
            Who::Admin => {
                Some(UserInfo { name: "kubernetes-admin".into(), groups: vec![MASTERS.into()] })
            }
            Who::Cert(name, groups) => Some(UserInfo {
                name: name.into(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            }),
            Who::Bearer(t) => {
                req = req.header("authorization", format!("Bearer {t}"));
                None
            }
            Who::Anonymous => None,
        };
        if body.is_some() {
            req = req.header("content-type", content_type);
        }
        let body = body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty);
        let res = self
            .router
            .clone()
            .layer(axum::Extension(Authenticated(cert)))
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, v) = self.call(Who::Admin, method, path, Some(body)).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    async fn token(&self, ns: &str, sa: &str, spec: Value) -> (StatusCode, Value) {
        self.call(
            Who::Admin,
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
            Some(json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec })),
        )
        .await
    }

    /// The uid of service account `name`, created unless it exists (every namespace has
    /// `default`).
    async fn sa(&self, ns: &str, name: &str) -> String {
        let path = format!("/api/v1/namespaces/{ns}/serviceaccounts");
        let (status, sa) = self
            .call(Who::Admin, "POST", &path, Some(json!({ "metadata": { "name": name } })))
            .await;
        let sa = if status == StatusCode::CONFLICT {
            self.admin_get(&format!("{path}/{name}")).await
        } else {
            assert!(status.is_success(), "POST {path}: {status} {sa}");
            sa
        };
        sa["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    async fn admin_get(&self, path: &str) -> Value {
        let (status, v) = self.call(Who::Admin, "GET", path, None).await;
        assert!(status.is_success(), "GET {path}: {status} {v}");
        v
    }
}

fn pod(name: &str, node: &str, spec_extra: Value) -> Value {
    let mut spec = json!({ "nodeName": node, "containers": [{ "name": "c", "image": "busybox" }] });
    for (k, v) in spec_extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({ "metadata": { "name": name }, "spec": spec })
}

#[tokio::test]
async fn anonymous_and_bad_tokens_get_401() {
    let h = h().await;
    for path in ["/version", "/healthz", "/api/v1/namespaces/default/pods", "/apis"] {
        let (status, body) = h.call(Who::Anonymous, "GET", path, None).await;
        assert_eq!(
            (status, &body["reason"]),
            (StatusCode::UNAUTHORIZED, &json!("Unauthorized")),
            "{path}"
        );
        let (status, _) = h.call(Who::Bearer("abc.def.ghi"), "GET", path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _) = h.call(Who::Bearer("abcdef.0123456789abcdef"), "GET", path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn a_service_account_bound_to_view_lists_pods_but_may_not_create_them() {
    let h = h().await;
    h.sa("default", "reader").await;
    let (status, tr) = h.token("default", "reader", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{tr}");
    assert_eq!(tr["spec"]["expirationSeconds"], 3600);
    let token = tr["status"]["token"].as_str().unwrap().to_owned();
    // Authenticated, but nothing granted yet beyond discovery.
    let (status, body) =
        h.call(Who::Bearer(&token), "GET", "/api/v1/namespaces/default/pods", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = h.call(Who::Bearer(&token), "GET", "/apis", None).await;
    assert_eq!(status, StatusCode::OK);
    h.admin(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        json!({ "metadata": { "name": "reader-view" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view" },
                "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": "default" }] }),
    )
    .await;
    h.state.auth().refresh().await.unwrap();
    let (status, body) =
        h.call(Who::Bearer(&token), "GET", "/api/v1/namespaces/default/pods", None).await;
    assert_eq!((status, &body["kind"]), (StatusCode::OK, &json!("PodList")), "{body}");
    let (status, body) = h
        .call(
            Who::Bearer(&token),
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("p", "n1", json!({}))),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "pods is forbidden: User \"system:serviceaccount:default:reader\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!((&body["reason"], &body["code"]), (&json!("Forbidden"), &json!(403)));
    // Elsewhere the RoleBinding grants nothing.
    let (status, body) =
        h.call(Who::Bearer(&token), "GET", "/api/v1/namespaces/kube-system/pods/x", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "pods \"x\" is forbidden: User \"system:serviceaccount:default:reader\" cannot get resource \"pods\" in API group \"\" in the namespace \"kube-system\""
    );
    let (_, body) = h.call(Who::Bearer(&token), "GET", "/metrics", None).await;
    assert_eq!(
        body["message"],
        "forbidden: User \"system:serviceaccount:default:reader\" cannot get path \"/metrics\""
    );
    // The token's holder sees who it is and what it may do.
    let (status, who) = h
        .call(
            Who::Bearer(&token),
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let info = &who["status"]["userInfo"];
    assert_eq!(info["username"], "system:serviceaccount:default:reader");
    assert_eq!(
        info["groups"],
        json!(["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"])
    );
    let can = |verb: &str| {
        json!({ "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": { "resourceAttributes": { "namespace": "default", "verb": verb, "resource": "pods" } } })
    };
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let (_, r) = h.call(Who::Bearer(&token), "POST", path, Some(can("list"))).await;
    assert_eq!(r["status"]["allowed"], true, "{r}");
    let (_, r) = h.call(Who::Bearer(&token), "POST", path, Some(can("delete"))).await;
    assert_eq!(r["status"]["allowed"], false, "{r}");
}

#[tokio::test]
async fn tokens_stop_working_when_expired_or_their_objects_are_gone() {
    let h = h().await;
    let sa_uid = h.sa("default", "worker").await;
    h.admin(
        "POST",
        "/api/v1/namespaces/default/pods",
        pod("holder", "n1", json!({ "serviceAccountName": "worker" })),
    )
    .await;
    let (status, e) = h.token("default", "worker", json!({ "expirationSeconds": 599 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["message"].as_str().unwrap().contains("spec.expirationSeconds"), "{e}");
    let (status, _) = h
        .token("default", "worker", json!({ "boundObjectRef": { "kind": "Node", "name": "n1" } }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = h.token("default", "nobody", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, tr) = h
        .token("default", "worker", json!({ "expirationSeconds": 600, "boundObjectRef": { "kind": "Pod", "apiVersion": "v1", "name": "holder" } }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{tr}");
    let bound = tr["status"]["token"].as_str().unwrap().to_owned();
    let (_, r) = h
        .call(Who::Admin, "POST", "/apis/authentication.k8s.io/v1/tokenreviews",
              Some(json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": { "token": bound } })))
        .await;
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["uid"], json!(sa_uid));
    assert_eq!(
        r["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["holder"])
    );
    let (_, r) = h
        .call(
            Who::Admin,
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(json!({ "spec": { "token": bound, "audiences": ["vault"] } })),
        )
        .await;
    assert_eq!(r["status"]["authenticated"], false, "another audience: {r}");
    let (status, _) = h.call(Who::Bearer(&bound), "GET", "/version", None).await;
    assert_eq!(status, StatusCode::OK);
    // An expired token, signed by the right key.
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: "system:serviceaccount:default:worker".into(),
        aud: vec![ISSUER.into()],
        iat: now - 4000,
        nbf: now - 4000,
        exp: now - 400,
        jti: "old".into(),
        kubernetes: Private {
            namespace: "default".into(),
            serviceaccount: Ref { name: "worker".into(), uid: sa_uid.clone() },
            pod: None,
            secret: None,
            node: None,
        },
    };
    let expired = h.state.auth().signer().unwrap().sign(&claims).unwrap();
    let (status, _) = h.call(Who::Bearer(&expired), "GET", "/version", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Deleting the bound pod ends its token; a service account recreated under the same name
    // does not revive the old ones.
    h.call(Who::Admin, "DELETE", "/api/v1/namespaces/default/pods/holder", None).await;
    let (status, _) = h.call(Who::Bearer(&bound), "GET", "/version", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, tr) = h.token("default", "worker", json!({})).await;
    let unbound = tr["status"]["token"].as_str().unwrap().to_owned();
    h.call(Who::Admin, "DELETE", "/api/v1/namespaces/default/serviceaccounts/worker", None).await;
    h.sa("default", "worker").await;
    let (status, _) = h.call(Who::Bearer(&unbound), "GET", "/version", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bootstrap_tokens_authenticate_until_they_expire() {
    let h = h().await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secret = |id: &str, exp: &str| {
        json!({ "metadata": { "name": format!("bootstrap-token-{id}") },
                "type": "bootstrap.kubernetes.io/token",
                "data": { "token-id": b64(id), "token-secret": b64("0123456789abcdef"),
                          "expiration": b64(exp), "usage-bootstrap-authentication": b64("true"),
                          "auth-extra-groups": b64("system:bootstrappers:keelson:default-node-token") } })
    };
    h.admin(
        "POST",
        "/api/v1/namespaces/kube-system/secrets",
        secret("abcdef", "2999-01-01T00:00:00Z"),
    )
    .await;
    h.admin(
        "POST",
        "/api/v1/namespaces/kube-system/secrets",
        secret("oldold", "2000-01-01T00:00:00Z"),
    )
    .await;
    let path = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
    let (status, r) = h.call(Who::Bearer("abcdef.0123456789abcdef"), "POST", path, None).await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(r["status"]["userInfo"]["username"], "system:bootstrap:abcdef");
    assert_eq!(
        r["status"]["userInfo"]["groups"],
        json!([
            "system:bootstrappers",
            "system:bootstrappers:keelson:default-node-token",
            "system:authenticated"
        ])
    );
    // The bootstrappers may ask for certificates, nothing else.
    let (status, body) = h
        .call(
            Who::Bearer("abcdef.0123456789abcdef"),
            "GET",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) =
        h.call(Who::Bearer("abcdef.0123456789abcdef"), "GET", "/api/v1/nodes", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in ["abcdef.0123456789abcdee", "oldold.0123456789abcdef", "zzzzzz.0123456789abcdef"] {
        let (status, _) = h.call(Who::Bearer(bad), "POST", path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
    }
}

#[tokio::test]
async fn a_node_reads_only_what_its_pods_need_and_writes_only_its_own_objects() {
    let h = h().await;
    for n in ["n1", "n2"] {
        h.admin(
            "POST",
            "/api/v1/nodes",
            json!({ "metadata": { "name": n, "labels": { "kubernetes.io/hostname": n } } }),
        )
        .await;
    }
    for s in ["mine", "theirs"] {
        h.admin("POST", "/api/v1/namespaces/default/secrets", json!({ "metadata": { "name": s } }))
            .await;
    }
    h.admin(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        json!({ "metadata": { "name": "cfg" } }),
    )
    .await;
    h.sa("default", "default").await;
    h.sa("default", "other").await;
    h.admin(
        "POST",
        "/api/v1/namespaces/default/pods",
        pod("a", "n1", json!({ "volumes": [{ "name": "s", "secret": { "secretName": "mine" } }, { "name": "c", "configMap": { "name": "cfg" } }] })),
    )
    .await;
    h.admin(
        "POST",
        "/api/v1/namespaces/default/pods",
        pod(
            "b",
            "n2",
            json!({ "volumes": [{ "name": "s", "secret": { "secretName": "theirs" } }] }),
        ),
    )
    .await;
    let n1 = || Who::Cert("system:node:n1", &["system:nodes"]);
    let (s, _) = h.call(n1(), "GET", "/api/v1/namespaces/default/secrets/mine", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = h.call(n1(), "GET", "/api/v1/namespaces/default/secrets/theirs", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "secrets \"theirs\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"
    );
    let (s, _) = h.call(n1(), "GET", "/api/v1/namespaces/default/secrets", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no listing secrets");
    let (s, _) = h.call(n1(), "GET", "/api/v1/namespaces/default/configmaps/cfg", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) =
        h.call(n1(), "GET", "/api/v1/namespaces/default/serviceaccounts/default", None).await;
    assert_eq!(s, StatusCode::OK, "its pods' service account");
    let (s, _) =
        h.call(n1(), "GET", "/api/v1/namespaces/default/serviceaccounts/other", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.call(n1(), "GET", "/api/v1/namespaces/default/pods/a", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.call(n1(), "GET", "/api/v1/namespaces/default/pods/b", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.call(n1(), "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.call(n1(), "GET", "/api/v1/pods", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.call(n1(), "GET", "/api/v1/nodes/n1", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.call(n1(), "GET", "/api/v1/nodes/n2", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.call(n1(), "GET", "/api/v1/namespaces/default/services", None).await;
    assert_eq!(s, StatusCode::OK, "services by system:node's rules");
    // Writes: its own Node and labels it may set.
    let merge = "application/merge-patch+json";
    let (s, body) = h
        .call_ct(n1(), "PATCH", "/api/v1/nodes/n1", Some(json!({ "metadata": { "labels": { "topology.kubernetes.io/zone": "z1", "app": "x" } } })), merge)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = h
        .call_ct(n1(), "PATCH", "/api/v1/nodes/n1", Some(json!({ "metadata": { "labels": { "node-role.kubernetes.io/control-plane": "" } } })), merge)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        body["message"].as_str().unwrap().contains("node-role.kubernetes.io/control-plane"),
        "{body}"
    );
    let (s, _) = h
        .call_ct(
            n1(),
            "PATCH",
            "/api/v1/nodes/n2",
            Some(json!({ "metadata": { "labels": { "a": "b" } } })),
            merge,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .call_ct(
            n1(),
            "PATCH",
            "/api/v1/nodes/n1/status",
            Some(json!({ "status": { "phase": "Running" } })),
            merge,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) =
        h.call(n1(), "POST", "/api/v1/nodes", Some(json!({ "metadata": { "name": "n3" } }))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a node registers only itself");
    let (s, _) = h.call(n1(), "DELETE", "/api/v1/nodes/n1", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Pod status only for its pods; pods it creates are mirror pods bound to it.
    let (s, _) = h
        .call_ct(
            n1(),
            "PATCH",
            "/api/v1/namespaces/default/pods/a/status",
            Some(json!({ "status": { "phase": "Running" } })),
            merge,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h
        .call_ct(
            n1(),
            "PATCH",
            "/api/v1/namespaces/default/pods/b/status",
            Some(json!({ "status": { "phase": "Failed" } })),
            merge,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .call(n1(), "POST", "/api/v1/namespaces/default/pods", Some(pod("plain", "n1", json!({}))))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut mirror = pod("mirror", "n1", json!({}));
    mirror["metadata"]["annotations"] = json!({ "kubernetes.io/config.mirror": "abc" });
    let (s, body) =
        h.call(n1(), "POST", "/api/v1/namespaces/default/pods", Some(mirror.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    mirror["metadata"]["name"] = json!("elsewhere");
    mirror["spec"]["nodeName"] = json!("n2");
    let (s, _) = h.call(n1(), "POST", "/api/v1/namespaces/default/pods", Some(mirror)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.call(n1(), "DELETE", "/api/v1/namespaces/default/pods/b", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Its lease only.
    let lease =
        |name: &str| json!({ "metadata": { "name": name }, "spec": { "holderIdentity": name } });
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let (s, body) = h.call(n1(), "POST", leases, Some(lease("n1"))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, _) = h.call(n1(), "POST", leases, Some(lease("n2"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .call(
            n1(),
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            Some(lease("n1")),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Tokens only for its pods' service accounts, bound to those pods.
    let token = |pod: Option<&str>| {
        let mut spec = json!({});
        if let Some(p) = pod {
            spec["boundObjectRef"] = json!({ "kind": "Pod", "apiVersion": "v1", "name": p });
        }
        json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec })
    };
    let sa_token = "/api/v1/namespaces/default/serviceaccounts/default/token";
    let (s, body) = h.call(n1(), "POST", sa_token, Some(token(Some("a")))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    for (pod, why) in [(None, "unbound"), (Some("b"), "another node's pod")] {
        let (s, _) = h.call(n1(), "POST", sa_token, Some(token(pod))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{why}");
    }
    let (s, _) = h
        .call(
            n1(),
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/other/token",
            Some(token(Some("a"))),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a service account its pods do not use");
    // Without the group the name alone is nobody.
    let (s, _) = h.call(Who::Cert("system:node:n1", &[]), "GET", "/api/v1/nodes/n1", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn aggregated_roles_follow_their_labelled_roles_in_the_store() {
    let h = h().await;
    let view =
        h.admin("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/view", json!(null)).await;
    let rules = view["rules"].as_array().unwrap();
    assert!(!rules.is_empty(), "the controller wrote view's rules: {view}");
    h.admin(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({ "metadata": { "name": "widgets-view", "labels": { "rbac.authorization.k8s.io/aggregate-to-view": "true" } },
                "rules": [{ "apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"] }] }),
    )
    .await;
    h.state.auth().refresh().await.unwrap();
    review::write_aggregated(&h.state).await.unwrap();
    for role in ["view", "edit", "admin"] {
        h.state.auth().refresh().await.unwrap();
        review::write_aggregated(&h.state).await.unwrap();
        let got = h
            .admin(
                "GET",
                &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}"),
                json!(null),
            )
            .await;
        assert!(
            got["rules"].as_array().unwrap().iter().any(|r| r["resources"] == json!(["widgets"])),
            "{role}: {got}"
        );
    }
}

#[tokio::test]
async fn subject_access_reviews_answer_for_other_users() {
    let h = h().await;
    let sar = |user: &str, groups: Value, verb: &str| {
        json!({ "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": { "user": user, "groups": groups,
                          "resourceAttributes": { "verb": verb, "resource": "nodes" } } })
    };
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let (s, r) =
        h.call(Who::Admin, "POST", path, Some(sar("system:kube-proxy", json!([]), "list"))).await;
    assert_eq!((s, &r["status"]["allowed"]), (StatusCode::CREATED, &json!(true)), "{r}");
    let (_, r) =
        h.call(Who::Admin, "POST", path, Some(sar("system:kube-proxy", json!([]), "delete"))).await;
    assert_eq!(r["status"]["allowed"], false);
    let (s, _) = h.call(Who::Admin, "POST", path, Some(sar("", json!([]), "list"))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // A plain user may not ask about others.
    let (s, _) =
        h.call(Who::Cert("alice", &[]), "POST", path, Some(sar("bob", json!([]), "list"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn static_review_routes_leave_the_object_routes_and_discovery_alone() {
    let h = h().await;
    let (s, body) =
        h.call(Who::Admin, "GET", "/api/v1/namespaces/default/serviceaccounts", None).await;
    assert_eq!((s, &body["kind"]), (StatusCode::OK, &json!("ServiceAccountList")));
    h.sa("default", "x").await;
    let (s, body) =
        h.call(Who::Admin, "GET", "/api/v1/namespaces/default/serviceaccounts/x", None).await;
    assert_eq!((s, &body["kind"]), (StatusCode::OK, &json!("ServiceAccount")));
    let (s, body) = h.call(Who::Admin, "GET", "/apis/authorization.k8s.io/v1", None).await;
    assert_eq!((s, &body["kind"]), (StatusCode::OK, &json!("APIResourceList")), "{body}");
    let (s, body) = h.call(Who::Admin, "GET", "/openid/v1/jwks", None).await;
    assert_eq!((s, &body["keys"][0]["alg"]), (StatusCode::OK, &json!("ES256")));
}

#[test]
fn authorizing_against_the_default_policy_takes_microseconds() {
    let snapshot = rbac::Snapshot::build(
        &rbac::Objects {
            cluster_roles: policy::cluster_roles(),
            cluster_role_bindings: policy::cluster_role_bindings(),
            ..Default::default()
        },
        1,
    );
    let user = User::new(
        "system:serviceaccount:default:reader",
        &["system:serviceaccounts", AUTHENTICATED],
    );
    let infos: Vec<RequestInfo> = [
        ("GET", "/api/v1/namespaces/default/pods"),
        ("POST", "/apis/apps/v1/namespaces/default/deployments"),
        ("GET", "/apis"),
    ]
    .iter()
    .map(|(m, p)| request::parse(m, p, None))
    .collect();
    let n = 20_000;
    let start = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..n {
        let info = request::parse("GET", "/api/v1/namespaces/default/pods", Some("limit=500"));
        if snapshot.allows(&user, &info) || snapshot.allows(&user, &infos[i % infos.len()]) {
            allowed += 1;
        }
    }
    let per = start.elapsed() / n as u32;
    eprintln!("request info + RBAC decision: {per:?} per request (debug build)");
    assert_eq!(allowed, (0..n).filter(|i| i % 3 == 2).count(), "only /apis is allowed");
    assert!(per < std::time::Duration::from_millis(1), "{per:?}");
}

/// What authentication and authorization add to a request, by identity (printed; the
/// assertion only catches a pathological regression). Debug build figures.
#[tokio::test]
async fn the_overhead_of_each_identity_is_measured() {
    let h = h().await;
    h.sa("default", "reader").await;
    h.admin(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        json!({ "metadata": { "name": "reader-view" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view" },
                "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": "default" }] }),
    )
    .await;
    h.state.auth().refresh().await.unwrap();
    let (_, tr) = h.token("default", "reader", json!({})).await;
    let token = tr["status"]["token"].as_str().unwrap().to_owned();
    h.admin(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        json!({ "metadata": { "name": "cfg" } }),
    )
    .await;
    h.admin(
        "POST",
        "/api/v1/namespaces/default/pods",
        pod("a", "n1", json!({ "volumes": [{ "name": "c", "configMap": { "name": "cfg" } }] })),
    )
    .await;
    let path = "/api/v1/namespaces/default/configmaps/cfg";
    let n = 200u32;
    let mut figures = Vec::new();
    for (label, who) in [
        ("system:masters certificate", 0),
        ("service-account token (RBAC)", 1),
        ("node certificate (node authorizer)", 2),
    ] {
        let start = std::time::Instant::now();
        for _ in 0..n {
            let w = match who {
                0 => Who::Admin,
                1 => Who::Bearer(&token),
                _ => Who::Cert("system:node:n1", &["system:nodes"]),
            };
            let (s, _) = h.call(w, "GET", path, None).await;
            assert_eq!(s, StatusCode::OK, "{label}");
        }
        figures.push((label, start.elapsed() / n));
    }
    for (label, per) in &figures {
        eprintln!("GET configmap as {label}: {per:?} per request (debug build, in-process router)");
    }
    assert!(figures.iter().all(|(_, per)| *per < std::time::Duration::from_millis(100)));
}
