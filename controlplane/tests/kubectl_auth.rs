//! Authentication and authorization as the real `kubectl` (1.32) sees them, against a server
//! this test starts on a free loopback port: `auth can-i` and `auth whoami` as the admin, a
//! service-account token kubeconfig (from `kubectl create token`) bound to `view`, an expired
//! token, a node's client certificate (signed by the cluster CA), and no credentials at all.
//! Needs no root and only loopback; skips with a printed reason when kubectl is missing
//! (`KEELSON_TEST_STRICT=1` turns that into a failure).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keelson_controlplane::auth::token::{Claims, Private, Ref, Signer, ISSUER};
use keelson_controlplane::server::{bind, Config};

fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A server with its admin kubeconfig; other identities get kubeconfigs of their own.
struct Server {
    dir: tempfile::TempDir,
    home: PathBuf,
    admin: PathBuf,
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(test: &str) -> Result<Option<Server>> {
        if !kubectl_available() {
            assert!(
                std::env::var("KEELSON_TEST_STRICT").as_deref() != Ok("1"),
                "kubectl is required in strict mode"
            );
            eprintln!("SKIP {test}: kubectl is not installed");
            return Ok(None);
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        let config = Config {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse()?,
            advertise: None,
            store: Default::default(),
            encryption_key_file: None,
            audit_log: None,
            services: Default::default(),
            compaction_interval: keelson_controlplane::server::DEFAULT_COMPACTION_INTERVAL,
        };
        let listener = bind(&config).await?;
        let url = format!("https://{}", listener.local_addr()?);
        let admin = listener.kubeconfig().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listener.serve(async {
            let _ = stopped.await;
        }));
        Ok(Some(Server { dir, home, admin, url, stop, task }))
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("data/pki")
    }

    async fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        tokio::process::Command::new("kubectl")
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.join("cache"))
            .args(args)
            .output()
            .await
            .with_context(|| format!("run kubectl {args:?}"))
    }

    async fn ok(&self, kubeconfig: &Path, args: &[&str]) -> Result<String> {
        let out = self.kubectl(kubeconfig, args).await?;
        ensure!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// stderr of a command that must fail.
    async fn fails(&self, kubeconfig: &Path, args: &[&str]) -> Result<String> {
        let out = self.kubectl(kubeconfig, args).await?;
        ensure!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// A kubeconfig for this server with `user` (kubectl config set-credentials arguments).
    async fn kubeconfig(&self, name: &str, credentials: &[&str]) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let ca = self.pki().join("ca.crt");
        let ca = ca.to_string_lossy();
        let server = format!("--server={}", self.url);
        let ca = format!("--certificate-authority={ca}");
        self.ok(&path, &["config", "set-cluster", "keelson", &server, &ca, "--embed-certs"])
            .await?;
        let mut creds = vec!["config", "set-credentials", name];
        creds.extend_from_slice(credentials);
        self.ok(&path, &creds).await?;
        let user = format!("--user={name}");
        self.ok(&path, &["config", "set-context", "ctx", "--cluster=keelson", &user]).await?;
        self.ok(&path, &["config", "use-context", "ctx"]).await?;
        Ok(path)
    }

    fn manifest(&self, name: &str, text: &str) -> Result<String> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await?;
        Ok(())
    }
}

/// Retries `f` for up to five seconds: RBAC changes reach the index through a store watch.
async fn eventually<F, Fut>(what: &str, mut f: F) -> Result<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let mut last = None;
    for _ in 0..50 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")).context(what.to_owned()))
}

/// kubectl's words for a 401.
fn unauthorized(stderr: &str) -> bool {
    stderr.contains("You must be logged in to the server") || stderr.contains("Unauthorized")
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: busybox}]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_and_whoami_answer_for_the_admin() -> Result<()> {
    let Some(s) = Server::start("kubectl_auth_can_i_and_whoami_answer_for_the_admin").await? else {
        return Ok(());
    };
    let admin = s.admin.clone();
    for args in [
        &["auth", "can-i", "create", "pods"][..],
        &["auth", "can-i", "*", "*", "--all-namespaces"],
        &["auth", "can-i", "delete", "nodes"],
        &["auth", "can-i", "get", "/metrics"],
    ] {
        let out = s.ok(&admin, args).await?;
        ensure!(out.trim() == "yes", "{args:?}: {out}");
    }
    let who = s.ok(&admin, &["auth", "whoami", "-o", "json"]).await?;
    let who: serde_json::Value = serde_json::from_str(&who)?;
    ensure!(who["status"]["userInfo"]["username"] == "kubernetes-admin", "{who}");
    ensure!(
        who["status"]["userInfo"]["groups"]
            == serde_json::json!(["system:masters", "system:authenticated"]),
        "{who}"
    );
    // The default roles are there, and the aggregated ones have their rules.
    let roles = s.ok(&admin, &["get", "clusterroles", "-o", "name"]).await?;
    for r in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:node",
        "system:basic-user",
        "system:discovery",
    ] {
        ensure!(
            roles.lines().any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{r}")),
            "{r}:\n{roles}"
        );
    }
    let view = eventually("view's aggregated rules", || async {
        let v = s
            .ok(&admin, &["get", "clusterrole", "view", "-o", "jsonpath={.rules[*].resources}"])
            .await?;
        ensure!(v.contains("pods"), "view's rules: {v}");
        Ok(v)
    })
    .await?;
    ensure!(!view.contains("secrets"), "view reads no secrets: {view}");
    // A new role labelled for `view` reaches view, edit and admin through the store watch.
    let widgets = s.manifest(
        "widgets.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: widgets-view\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules: [{apiGroups: [example.com], resources: [widgets], verbs: [get]}]\n",
    )?;
    s.ok(&admin, &["create", "-f", &widgets]).await?;
    for role in ["view", "edit", "admin"] {
        eventually(&format!("{role} aggregates widgets"), || async {
            let r = s
                .ok(&admin, &["get", "clusterrole", role, "-o", "jsonpath={.rules[*].resources}"])
                .await?;
            ensure!(r.contains("widgets"), "{role}: {r}");
            Ok(r)
        })
        .await?;
    }
    s.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_bound_to_view_lists_pods_but_cannot_create_them() -> Result<()> {
    let Some(s) =
        Server::start("a_service_account_token_bound_to_view_lists_pods_but_cannot_create_them")
            .await?
    else {
        return Ok(());
    };
    let admin = s.admin.clone();
    s.ok(&admin, &["create", "serviceaccount", "reader"]).await?;
    s.ok(
        &admin,
        &[
            "create",
            "rolebinding",
            "reader-view",
            "--clusterrole=view",
            "--serviceaccount=default:reader",
        ],
    )
    .await?;
    let token = s.ok(&admin, &["create", "token", "reader", "--duration=10m"]).await?;
    let token = token.trim().to_owned();
    ensure!(token.split('.').count() == 3, "a JWT: {token}");
    let arg = format!("--token={token}");
    let reader = s.kubeconfig("reader", &[&arg]).await?;
    eventually("the reader lists pods", || async { s.ok(&reader, &["get", "pods"]).await }).await?;
    let who =
        s.ok(&reader, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]).await?;
    ensure!(who == "system:serviceaccount:default:reader", "{who}");
    let pod = s.manifest("pod.yaml", POD)?;
    let err = s.fails(&reader, &["create", "-f", &pod]).await?;
    ensure!(
        err.contains("pods is forbidden: User \"system:serviceaccount:default:reader\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\""),
        "create as a viewer: {err}"
    );
    let out = s.kubectl(&reader, &["auth", "can-i", "create", "pods"]).await?;
    ensure!(String::from_utf8_lossy(&out.stdout).trim() == "no", "can-i create: {out:?}");
    let out = s.ok(&reader, &["auth", "can-i", "list", "pods"]).await?;
    ensure!(out.trim() == "yes", "can-i list: {out}");
    let err = s.fails(&reader, &["get", "pods", "-n", "kube-system"]).await?;
    ensure!(
        err.contains(
            "cannot list resource \"pods\" in API group \"\" in the namespace \"kube-system\""
        ),
        "{err}"
    );
    let err = s.fails(&reader, &["get", "secrets"]).await?;
    ensure!(err.contains("secrets is forbidden"), "{err}");
    // The audit log names the token's user, allowed or refused, with its uid (written by a
    // thread of its own, so it may trail the responses a little).
    let audit_file = s.dir.path().join("data/audit.log");
    eventually("the reader's audit events", || async {
        let audit = std::fs::read_to_string(&audit_file)?;
        let events: Vec<serde_json::Value> = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["user"]["username"] == "system:serviceaccount:default:reader")
            .collect();
        ensure!(
            events
                .iter()
                .any(|e| e["responseStatus"]["code"] == 403
                    && e["objectRef"]["resource"] == "secrets")
                && events.iter().any(|e| e["responseStatus"]["code"] == 200)
                && events.iter().all(|e| e["user"]["uid"].is_string()),
            "the reader's audit events: {events:?}"
        );
        Ok(String::new())
    })
    .await?;

    // kubectl create token refuses nothing the server would: too short a duration is a 422.
    let err = s.fails(&admin, &["create", "token", "reader", "--duration=5m"]).await?;
    ensure!(err.contains("may not specify a duration less than 10 minutes"), "{err}");

    // A token past its expiry, signed with the cluster's key, is 401.
    let signer = Signer::load_or_create(&s.pki())?;
    let sa: serde_json::Value = serde_json::from_str(
        &s.ok(&admin, &["get", "serviceaccount", "reader", "-o", "json"]).await?,
    )?;
    let now = chrono::Utc::now().timestamp();
    let expired = signer.sign(&Claims {
        iss: ISSUER.into(),
        sub: "system:serviceaccount:default:reader".into(),
        aud: vec![ISSUER.into()],
        iat: now - 3600,
        nbf: now - 3600,
        exp: now - 60,
        jti: "expired".into(),
        kubernetes: Private {
            namespace: "default".into(),
            serviceaccount: Ref {
                name: "reader".into(),
                uid: sa["metadata"]["uid"].as_str().unwrap_or_default().into(),
            },
            pod: None,
            secret: None,
            node: None,
        },
    })?;
    let arg = format!("--token={expired}");
    let stale = s.kubeconfig("expired", &[&arg]).await?;
    let err = s.fails(&stale, &["get", "pods"]).await?;
    ensure!(unauthorized(&err), "an expired token: {err}");

    // Deleting the service account ends its tokens.
    s.ok(&admin, &["delete", "serviceaccount", "reader"]).await?;
    let err = s.fails(&reader, &["get", "pods"]).await?;
    ensure!(unauthorized(&err), "a deleted service account's token: {err}");
    s.stop().await
}

/// A client certificate for `cn` in `org`, signed by the cluster CA in `pki`; returns the
/// certificate and key paths.
fn client_cert(pki: &Path, cn: &str, org: &str, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let ca_crt = std::fs::read_to_string(pki.join("ca.crt"))?;
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key"))?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_crt, ca_key)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate()?;
    let crt = params.signed_by(&key, &issuer)?;
    let (c, k) = (out.join(format!("{cn}.crt")), out.join(format!("{cn}.key")));
    std::fs::write(&c, crt.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_updates_its_own_node_but_not_another() -> Result<()> {
    let Some(s) = Server::start("a_node_certificate_updates_its_own_node_but_not_another").await?
    else {
        return Ok(());
    };
    let admin = s.admin.clone();
    for n in ["n1", "n2"] {
        let m = s.manifest(
            &format!("{n}.yaml"),
            &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n"),
        )?;
        s.ok(&admin, &["create", "-f", &m]).await?;
    }
    let (crt, key) = client_cert(&s.pki(), "system:node:n1", "system:nodes", s.dir.path())?;
    let crt = format!("--client-certificate={}", crt.display());
    let key = format!("--client-key={}", key.display());
    let node = s.kubeconfig("n1", &[&crt, &key, "--embed-certs"]).await?;
    let who =
        s.ok(&node, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]).await?;
    ensure!(who == "system:node:n1", "{who}");
    s.ok(&node, &["get", "node", "n1"]).await?;
    s.ok(&node, &["label", "node", "n1", "topology.kubernetes.io/zone=z1", "app=web"]).await?;
    s.ok(&node, &["annotate", "node", "n1", "example.com/note=hello"]).await?;
    let labels = s.ok(&admin, &["get", "node", "n1", "-o", "jsonpath={.metadata.labels}"]).await?;
    ensure!(labels.contains("\"topology.kubernetes.io/zone\":\"z1\""), "{labels}");
    let err = s.fails(&node, &["label", "node", "n2", "app=web"]).await?;
    ensure!(
        err.contains("forbidden") && err.contains("system:node:n1"),
        "label another node: {err}"
    );
    let err = s.fails(&node, &["get", "node", "n2"]).await?;
    ensure!(err.contains("nodes \"n2\" is forbidden"), "read another node: {err}");
    let err =
        s.fails(&node, &["label", "node", "n1", "node-role.kubernetes.io/control-plane="]).await?;
    ensure!(
        err.contains("is not allowed to modify labels: node-role.kubernetes.io/control-plane"),
        "{err}"
    );
    let err = s.fails(&node, &["delete", "node", "n1"]).await?;
    ensure!(err.contains("forbidden"), "{err}");
    let err = s.fails(&node, &["get", "secrets"]).await?;
    ensure!(err.contains("secrets is forbidden"), "{err}");
    s.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_credentials_get_401() -> Result<()> {
    let Some(s) = Server::start("requests_without_credentials_get_401").await? else {
        return Ok(());
    };
    // kubectl asks for a password when its user has no credentials at all, so the anonymous
    // requests go through curl (over TLS, verifying the server against the cluster CA).
    let ca = s.pki().join("ca.crt");
    for path in
        ["/api/v1/namespaces/default/pods", "/version", "/healthz", "/apis", "/openid/v1/jwks"]
    {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca)
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}{path}", s.url))
            .output()
            .await
            .context("run curl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        ensure!(code == "401", "{path}: {code} {body}");
        let status: serde_json::Value = serde_json::from_str(body)?;
        ensure!(status["kind"] == "Status" && status["reason"] == "Unauthorized", "{path}: {body}");
    }
    // A token that is no token of ours is 401 as well; kubectl says so.
    let bogus = s.kubeconfig("bogus", &["--token=abcdef.0123456789abcdef"]).await?;
    for args in [&["get", "pods"][..], &["auth", "can-i", "get", "pods"]] {
        let err = s.fails(&bogus, args).await?;
        ensure!(unauthorized(&err), "{args:?}: {err}");
    }
    s.stop().await
}
