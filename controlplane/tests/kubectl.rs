//! The real `kubectl` (1.32 is preinstalled on our machines) against an API server this test
//! starts on a free loopback port: discovery, `explain` through OpenAPI v3, `version`, and
//! anonymous refusal. Needs no root and only loopback; skips with a printed reason when kubectl
//! is missing (`KEELSON_TEST_STRICT=1` turns that into a failure).

use std::path::Path;
use std::process::Output;

use anyhow::{ensure, Context, Result};
use keelson_controlplane::registry::RESOURCES;
use keelson_controlplane::server::{bind, Config, DEFAULT_COMPACTION_INTERVAL};

fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> Result<Output> {
    let out = tokio::process::Command::new("kubectl")
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .output()
        .await
        .with_context(|| format!("run kubectl {args:?}"))?;
    Ok(out)
}

async fn kubectl_ok(kubeconfig: &Path, home: &Path, args: &[&str]) -> Result<String> {
    let out = kubectl(kubeconfig, home, args).await?;
    ensure!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A server on a free loopback port with its admin kubeconfig, and a HOME for kubectl.
struct Cluster {
    dir: tempfile::TempDir,
    home: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Starts one, or `None` (after printing why) when kubectl is missing.
    async fn start(test: &str) -> Result<Option<Cluster>> {
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
            compaction_interval: DEFAULT_COMPACTION_INTERVAL,
        };
        let listener = bind(&config).await?;
        let kubeconfig = listener.kubeconfig().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listener.serve(async {
            let _ = stopped.await;
        }));
        Ok(Some(Cluster { dir, home, kubeconfig, stop, server }))
    }

    async fn run(&self, args: &[&str]) -> Result<Output> {
        kubectl(&self.kubeconfig, &self.home, args).await
    }

    async fn ok(&self, args: &[&str]) -> Result<String> {
        kubectl_ok(&self.kubeconfig, &self.home, args).await
    }

    /// kubectl's error output for a command that must fail.
    async fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        ensure!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Writes a manifest into the test's directory; returns its path.
    fn manifest(&self, name: &str, text: &str) -> Result<String> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    }

    async fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.ok(&all).await?)?)
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.server.await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_discovers_explains_and_versions_against_the_server() -> Result<()> {
    let Some(c) =
        Cluster::start("kubectl_discovers_explains_and_versions_against_the_server").await?
    else {
        return Ok(());
    };
    let (dir, home, kubeconfig) = (c.dir.path(), c.home.clone(), c.kubeconfig.clone());

    // api-resources: every registered resource, with upstream's columns, from aggregated
    // discovery alone (two requests, /api and /apis; no per-group-version fetches).
    let run = kubectl(&kubeconfig, &home, &["api-resources", "-v=6"]).await?;
    ensure!(run.status.success(), "api-resources: {}", String::from_utf8_lossy(&run.stderr));
    let log = String::from_utf8_lossy(&run.stderr);
    let gets = log.lines().filter(|l| l.contains("verb=\"GET\"")).count();
    ensure!(
        gets == 2 && !log.contains("/api/v1?") && !log.contains("/apis/apps/v1?"),
        "discovery requests:\n{log}"
    );
    let out = String::from_utf8(run.stdout)?;
    let lines: Vec<Vec<&str>> =
        out.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    for r in RESOURCES {
        let mut want = vec![r.plural.to_owned()];
        if !r.short_names.is_empty() {
            want.push(r.short_names.join(","));
        }
        want.push(r.gvk.api_version());
        want.push(r.namespaced.to_string());
        want.push(r.gvk.kind.to_owned());
        ensure!(
            lines.iter().any(|l| l.iter().map(|s| s.to_string()).collect::<Vec<_>>() == want),
            "api-resources lacks {want:?}:\n{out}"
        );
    }
    ensure!(
        lines.len() == RESOURCES.len(),
        "api-resources lists {} resources, we serve {}:\n{out}",
        lines.len(),
        RESOURCES.len()
    );
    let all = kubectl_ok(&kubeconfig, &home, &["api-resources", "--categories=all", "-o", "name"])
        .await?;
    ensure!(
        all.lines().any(|l| l == "deployments.apps") && all.lines().any(|l| l == "pods"),
        "category all:\n{all}"
    );

    // explain reads the OpenAPI v3 document of apps/v1.
    let out = kubectl_ok(&kubeconfig, &home, &["explain", "deployment.spec.replicas"]).await?;
    ensure!(
        out.contains("KIND:       Deployment") || out.contains("KIND:     Deployment"),
        "explain:\n{out}"
    );
    ensure!(out.contains("replicas") && out.contains("<integer>"), "explain:\n{out}");
    ensure!(out.contains("Number of desired pods"), "explain shows the description:\n{out}");
    let out = kubectl_ok(&kubeconfig, &home, &["explain", "pods.spec.containers.ports"]).await?;
    ensure!(
        out.contains("containerPort") && out.contains("<integer> -required-"),
        "explain ports:\n{out}"
    );

    // kubectl's probe of server-side field validation reads the v3 paths: `create` goes to
    // the server with fieldValidation=Strict instead of downloading /openapi/v2 for client-side
    // validation.
    let manifest = dir.join("deployment.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n",
    )?;
    let manifest = manifest.to_string_lossy().into_owned();
    let out = kubectl(&kubeconfig, &home, &["create", "-f", &manifest, "-v=6"]).await?;
    let log = String::from_utf8_lossy(&out.stderr);
    ensure!(
        log.contains(
            "/namespaces/default/deployments?fieldManager=kubectl-create&fieldValidation=Strict"
        ),
        "create:\n{log}"
    );
    ensure!(!log.contains("/openapi/v2"), "kubectl fell back to client-side validation:\n{log}");
    ensure!(out.status.success(), "create failed:\n{log}");

    // The object is stored: get it (one and as a list), create it again, delete it.
    let out = kubectl_ok(&kubeconfig, &home, &["get", "deployment", "web", "-o", "json"]).await?;
    let d: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(d["metadata"]["uid"].is_string() && d["metadata"]["generation"] == 1, "{d:#}");
    ensure!(d["metadata"]["namespace"] == "default", "{d:#}");
    let out = kubectl_ok(&kubeconfig, &home, &["get", "deployments", "-o", "name"]).await?;
    ensure!(out.trim() == "deployment.apps/web", "get deployments:\n{out}");
    let out = kubectl(&kubeconfig, &home, &["create", "-f", &manifest]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("AlreadyExists"), "second create: {err}");
    let out = kubectl_ok(&kubeconfig, &home, &["delete", "deployment", "web"]).await?;
    ensure!(out.contains("deployment.apps \"web\" deleted"), "delete:\n{out}");
    let out = kubectl(&kubeconfig, &home, &["get", "deployment", "web"]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("NotFound"), "get after delete: {err}");

    // A core resource, and a dry run that stores nothing. (Manifests: kubectl's generators
    // send protobuf, which this server does not decode yet.)
    let cm = dir.join("cm.yaml");
    std::fs::write(&cm, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n")?;
    let cm = cm.to_string_lossy().into_owned();
    kubectl_ok(&kubeconfig, &home, &["create", "-f", &cm, "--dry-run=server"]).await?;
    let out = kubectl(&kubeconfig, &home, &["get", "configmap", "cfg"]).await?;
    ensure!(!out.status.success(), "a server-side dry run stored the object");
    kubectl_ok(&kubeconfig, &home, &["create", "-f", &cm]).await?;
    let out =
        kubectl_ok(&kubeconfig, &home, &["get", "configmap", "cfg", "-o", "jsonpath={.data.a}"])
            .await?;
    ensure!(out == "b", "configmap data: {out:?}");
    std::fs::write(&cm, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: c}\n")?;
    kubectl_ok(&kubeconfig, &home, &["replace", "-f", &cm]).await?;
    let out =
        kubectl_ok(&kubeconfig, &home, &["get", "configmap", "cfg", "-o", "jsonpath={.data.a}"])
            .await?;
    ensure!(out == "c", "configmap data after replace: {out:?}");

    // /metrics under upstream's names, counting what kubectl just did.
    let metrics = kubectl_ok(&kubeconfig, &home, &["get", "--raw", "/metrics"]).await?;
    ensure!(
        metrics.lines().any(|l| l.starts_with("apiserver_request_total{")
            && l.contains("verb=\"create\"")
            && l.contains("resource=\"configmaps\"")),
        "metrics:\n{metrics}"
    );
    ensure!(metrics.contains("process_resident_memory_bytes"), "metrics:\n{metrics}");

    // version reports the server's version.
    let out = kubectl_ok(&kubeconfig, &home, &["version"]).await?;
    ensure!(out.contains("Server Version: v1.33.0"), "version:\n{out}");

    // A client without a certificate is refused with 401 (kubectl says Unauthorized).
    let anonymous = dir.join("anonymous.kubeconfig");
    let admin = std::fs::read_to_string(&kubeconfig)?;
    let mut config: serde_json::Value = serde_yaml_ng::from_str(&admin)?;
    // No certificate; a token we do not accept (with no credentials at all kubectl would prompt
    // for a user name on stdin).
    config["users"][0]["user"] = serde_json::json!({ "token": "not-a-known-token" });
    std::fs::write(&anonymous, serde_yaml_ng::to_string(&config)?)?;
    let out = kubectl(&anonymous, &home, &["get", "--raw", "/version"]).await?;
    ensure!(!out.status.success(), "anonymous request succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("Unauthorized"), "anonymous error: {err}");

    // The audit log has a line per request: who did what to which object, and the answer.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let audit = std::fs::read_to_string(dir.join("data/audit.log"))?;
    let events: Vec<serde_json::Value> =
        audit.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(
        events.iter().any(|e| e["verb"] == "create"
            && e["objectRef"]["resource"] == "configmaps"
            && e["objectRef"]["namespace"] == "default"
            && e["user"]["username"] == "kubernetes-admin"
            && e["responseStatus"]["code"] == 201),
        "no audit event for the configmap create:\n{audit}"
    );
    ensure!(
        events
            .iter()
            .any(|e| e["user"]["username"] == "system:anonymous"
                && e["responseStatus"]["code"] == 401),
        "no audit event for the anonymous request"
    );
    ensure!(events.iter().all(|e| e["kind"] == "Event" && e["level"] == "Metadata"), "{audit}");
    c.stop().await
}

const NGINX_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels: {app: nginx}
spec:
  replicas: 3
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_patches_applies_scales_and_labels_with_field_ownership() -> Result<()> {
    let Some(c) =
        Cluster::start("kubectl_patches_applies_scales_and_labels_with_field_ownership").await?
    else {
        return Ok(());
    };
    let deploy = ["deployment", "nginx-deployment"];

    // Server-side apply creates the docs' Deployment, owned by the applier.
    let m = c.manifest("nginx.yaml", NGINX_DEPLOYMENT)?;
    let out = c.ok(&["apply", "--server-side", "-f", &m]).await?;
    ensure!(out.contains("deployment.apps/nginx-deployment serverside-applied"), "apply: {out}");
    let d = c.get_json(&[deploy[0], deploy[1], "--show-managed-fields"]).await?;
    ensure!(d["spec"]["replicas"] == 3 && d["metadata"]["generation"] == 1, "{d:#}");
    ensure!(d["metadata"]["managedFields"][0]["manager"] == "kubectl", "{d:#}");
    ensure!(d["metadata"]["managedFields"][0]["operation"] == "Apply", "{d:#}");

    // scale goes through the scale subresource and takes .spec.replicas from the applier (its
    // manager is the user agent's "kubectl", an Update entry beside the Apply one)...
    let out = c.ok(&["scale", "deployment", "nginx-deployment", "--replicas=5"]).await?;
    ensure!(out.contains("scaled"), "scale: {out}");
    let d = c.get_json(&[deploy[0], deploy[1], "--show-managed-fields"]).await?;
    ensure!(d["spec"]["replicas"] == 5 && d["metadata"]["generation"] == 2, "{d:#}");
    let scaler = d["metadata"]["managedFields"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["subresource"] == "scale"))
        .cloned()
        .unwrap_or_default();
    ensure!(
        scaler["manager"] == "kubectl" && scaler["operation"] == "Update",
        "the scaler's entry: {d:#}"
    );
    let scale = c
        .ok(&[
            "get",
            "--raw",
            "/apis/apps/v1/namespaces/default/deployments/nginx-deployment/scale",
        ])
        .await?;
    let scale: serde_json::Value = serde_json::from_str(&scale)?;
    ensure!(scale["kind"] == "Scale" && scale["spec"]["replicas"] == 5, "{scale:#}");
    ensure!(scale["status"]["selector"] == "app=nginx", "{scale:#}");

    // ... so applying 3 again conflicts, naming the field and its owner, until forced.
    let err = c.fails(&["apply", "--server-side", "-f", &m]).await?;
    ensure!(err.contains("conflict") && err.contains(".spec.replicas"), "conflict: {err}");
    c.ok(&["apply", "--server-side", "--force-conflicts", "-f", &m]).await?;
    let d = c.get_json(&deploy).await?;
    ensure!(d["spec"]["replicas"] == 3, "forced apply: {d:#}");

    // label and annotate (merge patches), then remove the label.
    c.ok(&["label", "deployment", "nginx-deployment", "tier=web"]).await?;
    c.ok(&["annotate", "deployment", "nginx-deployment", "owner=ops"]).await?;
    let d = c.get_json(&deploy).await?;
    ensure!(d["metadata"]["labels"]["tier"] == "web", "label: {d:#}");
    ensure!(d["metadata"]["annotations"]["owner"] == "ops", "annotate: {d:#}");
    c.ok(&["label", "deployment", "nginx-deployment", "tier-"]).await?;
    let d = c.get_json(&deploy).await?;
    ensure!(d["metadata"]["labels"].get("tier").is_none(), "label removal: {d:#}");

    // patch of every type.
    let smp =
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}"#;
    c.ok(&["patch", "deployment", "nginx-deployment", "-p", smp]).await?;
    let d = c.get_json(&deploy).await?;
    let containers = &d["spec"]["template"]["spec"]["containers"];
    ensure!(
        containers.as_array().map(Vec::len) == Some(1)
            && containers[0]["image"] == "nginx:1.27"
            && containers[0]["ports"][0]["containerPort"] == 80,
        "a strategic merge patch merges containers by name: {containers:#}"
    );
    c.ok(&[
        "patch",
        "deployment",
        "nginx-deployment",
        "--type=merge",
        "-p",
        r#"{"metadata":{"annotations":{"owner":null}}}"#,
    ])
    .await?;
    let d = c.get_json(&deploy).await?;
    ensure!(
        d["metadata"].get("annotations").is_none_or(|a| a.get("owner").is_none()),
        "merge patch: {d:#}"
    );
    c.ok(&[
        "patch",
        "deployment",
        "nginx-deployment",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ])
    .await?;
    let d = c.get_json(&deploy).await?;
    ensure!(d["spec"]["replicas"] == 4, "json patch: {d:#}");
    let err = c
        .fails(&[
            "patch",
            "deployment",
            "nginx-deployment",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":7}]"#,
        ])
        .await?;
    ensure!(err.contains("value did not match"), "a failed test operation: {err}");
    let err = c.fails(&["patch", "deployment", "nope", "-p", "{}"]).await?;
    ensure!(
        err.contains("NotFound") || err.contains("not found"),
        "patch of a missing object: {err}"
    );

    // status: only through the subresource.
    c.ok(&[
        "patch",
        "deployment",
        "nginx-deployment",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":4,"readyReplicas":2}}"#,
    ])
    .await?;
    c.ok(&[
        "patch",
        "deployment",
        "nginx-deployment",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":9},"spec":{"paused":true}}"#,
    ])
    .await?;
    let d = c.get_json(&deploy).await?;
    ensure!(d["status"]["replicas"] == 4 && d["status"]["readyReplicas"] == 2, "status: {d:#}");
    ensure!(d["spec"]["paused"] == true, "the spec part of the patch landed: {d:#}");

    // Strict field validation names the misspelt field, for create and for apply.
    let typo = c.manifest(
        "typo.yaml",
        &NGINX_DEPLOYMENT
            .replace("replicas: 3", "replicass: 3")
            .replace("nginx-deployment", "typo"),
    )?;
    let err = c.fails(&["create", "-f", &typo]).await?;
    ensure!(err.contains(r#"unknown field "spec.replicass""#), "strict create: {err}");
    let err = c.fails(&["apply", "--server-side", "-f", &typo]).await?;
    ensure!(err.contains(r#"unknown field "spec.replicass""#), "strict apply: {err}");
    let out = c.run(&["get", "deployment", "typo"]).await?;
    ensure!(!out.status.success(), "a refused create stored the object");

    // Client-side apply: create, then a strategic merge patch against last-applied.
    let cm = c.manifest(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b, c: d}\n",
    )?;
    ensure!(c.ok(&["apply", "-f", &cm]).await?.contains("created"), "client-side apply create");
    std::fs::write(&cm, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: x}\n")?;
    ensure!(c.ok(&["apply", "-f", &cm]).await?.contains("configured"), "client-side apply patch");
    let cfg = c.get_json(&["configmap", "cfg"]).await?;
    ensure!(cfg["data"] == serde_json::json!({ "a": "x" }), "client-side apply removed c: {cfg:#}");

    // get in every output format; the table columns come from the server's printers.
    let table = c.ok(&["get", "deployments"]).await?;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    ensure!(header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "table:\n{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    // readyReplicas 2 from the status patch above.
    ensure!(row.get(..4) == Some(&["nginx-deployment", "2/4", "0", "0"][..]), "table:\n{table}");
    let wide = c.ok(&["get", "deployment", "nginx-deployment", "-o", "wide"]).await?;
    ensure!(
        wide.contains("CONTAINERS") && wide.contains("nginx:1.27") && wide.contains("app=nginx"),
        "wide:\n{wide}"
    );
    let labels = c.ok(&["get", "deployments", "--show-labels"]).await?;
    ensure!(labels.contains("LABELS") && labels.contains("app=nginx"), "labels:\n{labels}");
    let all_ns = c.ok(&["get", "deployments", "-A"]).await?;
    ensure!(all_ns.starts_with("NAMESPACE") && all_ns.contains("default"), "-A:\n{all_ns}");
    let yaml = c.ok(&["get", "deployment", "nginx-deployment", "-o", "yaml"]).await?;
    ensure!(yaml.contains("kind: Deployment") && yaml.contains("replicas: 4"), "yaml:\n{yaml}");
    let name = c.ok(&["get", "deployments", "-o", "name"]).await?;
    ensure!(name.trim() == "deployment.apps/nginx-deployment", "name: {name}");
    let cols = c
        .ok(&["get", "deployments", "-o", "custom-columns=N:.metadata.name,R:.spec.replicas"])
        .await?;
    ensure!(
        cols.lines().nth(1).is_some_and(|l| l.split_whitespace().eq(["nginx-deployment", "4"])),
        "custom-columns:\n{cols}"
    );
    let tpl = c
        .ok(&["get", "deployment", "nginx-deployment", "-o", "go-template={{.spec.replicas}}"])
        .await?;
    ensure!(tpl == "4", "go-template: {tpl}");
    let cms = c.ok(&["get", "configmaps"]).await?;
    ensure!(
        cms.lines().next().is_some_and(|h| h.split_whitespace().eq(["NAME", "DATA", "AGE"])),
        "configmaps:\n{cms}"
    );

    // kubectl's generators send their objects as protobuf.
    c.ok(&["create", "deployment", "gen", "--image=busybox:1.36", "--replicas=0", "--port=8080"])
        .await?;
    let g = c.get_json(&["deployment", "gen"]).await?;
    ensure!(g["spec"]["replicas"] == 0, "replicas 0 survives protobuf: {g:#}");
    let gc = &g["spec"]["template"]["spec"]["containers"][0];
    ensure!(gc["image"] == "busybox:1.36" && gc["ports"][0]["containerPort"] == 8080, "{g:#}");
    ensure!(
        g["spec"]["strategy"]["rollingUpdate"].is_null() || g["spec"]["strategy"].is_object(),
        "{g:#}"
    );
    c.ok(&["create", "configmap", "gen-cm", "--from-literal=k=v"]).await?;
    ensure!(
        c.get_json(&["configmap", "gen-cm"]).await?["data"] == serde_json::json!({ "k": "v" }),
        "configmap"
    );
    c.ok(&["create", "secret", "generic", "gen-secret", "--from-literal=password=hunter2"]).await?;
    let sec = c.get_json(&["secret", "gen-secret"]).await?;
    ensure!(
        sec["data"]["password"] == "aHVudGVyMg==" && sec["type"] == "Opaque",
        "secret: {sec:#}"
    );
    // Secrets are encrypted at rest: the store file never holds the value.
    let db = std::fs::read(c.dir.path().join("data/store.redb"))?;
    ensure!(
        !db.windows(12).any(|w| w == b"aHVudGVyMg=="),
        "the store holds the secret in the clear"
    );
    ensure!(db.windows(18).any(|w| w == b"k8s:enc:aesgcm:v1:"), "no sealed value in the store");
    c.ok(&["create", "service", "clusterip", "gen-svc", "--tcp=80:8080"]).await?;
    let svc = c.get_json(&["service", "gen-svc"]).await?;
    ensure!(
        svc["spec"]["ports"][0]["targetPort"] == 8080 && svc["spec"]["clusterIP"].is_string(),
        "service: {svc:#}"
    );
    c.ok(&["create", "serviceaccount", "gen-sa"]).await?;
    c.ok(&["create", "role", "gen-role", "--verb=get", "--resource=pods"]).await?;
    let role = c.get_json(&["role", "gen-role"]).await?;
    ensure!(role["rules"][0]["verbs"] == serde_json::json!(["get"]), "role: {role:#}");
    c.ok(&["run", "gen-pod", "--image=busybox:1.36", "--restart=Never", "--", "sleep", "1"])
        .await?;
    let pod = c.get_json(&["pod", "gen-pod"]).await?;
    ensure!(
        pod["spec"]["containers"][0]["args"] == serde_json::json!(["sleep", "1"])
            && pod["spec"]["restartPolicy"] == "Never",
        "pod: {pod:#}"
    );
    c.ok(&["create", "job", "gen-job", "--image=busybox:1.36", "--", "true"]).await?;
    c.ok(&[
        "create",
        "cronjob",
        "gen-cron",
        "--image=busybox:1.36",
        "--schedule=*/5 * * * *",
        "--",
        "true",
    ])
    .await?;
    let cron = c.get_json(&["cronjob", "gen-cron"]).await?;
    ensure!(cron["spec"]["schedule"] == "*/5 * * * *", "cronjob: {cron:#}");

    // A server-side dry run of a patch changes nothing.
    c.ok(&[
        "patch",
        "deployment",
        "nginx-deployment",
        "--dry-run=server",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":1}}"#,
    ])
    .await?;
    ensure!(c.get_json(&deploy).await?["spec"]["replicas"] == 4, "a dry-run patch was stored");
    c.stop().await
}

const NGINX_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: my-nginx-svc
  labels: {app: nginx}
spec:
  type: NodePort
  ports:
  - port: 80
  selector: {app: nginx}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_system_namespaces_the_kubernetes_service_and_allocated_services() -> Result<()>
{
    let Some(c) = Cluster::start(
        "kubectl_sees_system_namespaces_the_kubernetes_service_and_allocated_services",
    )
    .await?
    else {
        return Ok(());
    };
    let ns = c
        .ok(&[
            "get",
            "namespaces",
            "-o",
            "custom-columns=N:.metadata.name,P:.status.phase",
            "--no-headers",
        ])
        .await?;
    let mut ns: Vec<String> =
        ns.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    ns.sort();
    ensure!(
        ns == [
            "default Active",
            "kube-node-lease Active",
            "kube-public Active",
            "kube-system Active"
        ],
        "namespaces: {ns:?}"
    );
    let svc = c.get_json(&["service", "kubernetes"]).await?;
    ensure!(svc["spec"]["clusterIP"] == "10.96.0.1", "kubernetes service: {svc:#}");
    let slice = c.get_json(&["endpointslice", "kubernetes"]).await?;
    ensure!(slice["endpoints"][0]["addresses"][0] == "127.0.0.1", "endpointslice: {slice:#}");
    let ep = c.get_json(&["endpoints", "kubernetes"]).await?;
    ensure!(ep["subsets"][0]["addresses"][0]["ip"] == "127.0.0.1", "endpoints: {ep:#}");

    // The docs' Service: a ClusterIP from 10.96.0.0/12 and a node port from 30000-32767.
    let m = c.manifest("svc.yaml", NGINX_SERVICE)?;
    c.ok(&["apply", "-f", &m]).await?;
    let s = c.get_json(&["service", "my-nginx-svc"]).await?;
    let ip: std::net::Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap_or_default().parse()?;
    ensure!(
        ip.octets()[0] == 10
            && (96..112).contains(&ip.octets()[1])
            && ip != std::net::Ipv4Addr::new(10, 96, 0, 1),
        "clusterIP {ip}"
    );
    let node_port = s["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or_default();
    ensure!((30000..=32767).contains(&node_port), "nodePort {node_port}");
    let table = c.ok(&["get", "service", "my-nginx-svc"]).await?;
    ensure!(
        table.contains("NodePort") && table.contains(&format!("80:{node_port}/TCP")),
        "table:\n{table}"
    );
    // A second apply (unchanged) keeps both; a taken node port is refused.
    c.ok(&["apply", "-f", &m]).await?;
    ensure!(
        c.get_json(&["service", "my-nginx-svc"]).await?["spec"] == s["spec"],
        "re-apply moved the allocations"
    );
    let clash = c.manifest(
        "clash.yaml",
        &NGINX_SERVICE
            .replace("my-nginx-svc", "clash")
            .replace("- port: 80", &format!("- port: 80\n    nodePort: {node_port}")),
    )?;
    let err = c.fails(&["create", "-f", &clash]).await?;
    ensure!(err.contains("provided port is already allocated"), "clash: {err}");

    // deletecollection: what the selector picks goes, the rest stays.
    for (name, batch) in [("old-a", "old"), ("old-b", "old"), ("new-a", "new")] {
        c.ok(&["create", "configmap", name, "--from-literal=k=v"]).await?;
        c.ok(&["label", "configmap", name, &format!("batch={batch}")]).await?;
    }
    let out = c
        .ok(&["delete", "--raw", "/api/v1/namespaces/default/configmaps?labelSelector=batch%3Dold"])
        .await?;
    let deleted: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        deleted["kind"] == "ConfigMapList" && deleted["items"].as_array().map(Vec::len) == Some(2),
        "deletecollection: {deleted:#}"
    );
    let left = c.ok(&["get", "configmaps", "-l", "batch", "-o", "name"]).await?;
    ensure!(left.trim() == "configmap/new-a", "after deletecollection: {left}");

    // Namespace lifecycle.
    let err = c.fails(&["delete", "namespace", "default"]).await?;
    ensure!(err.contains("may not be deleted"), "delete default: {err}");
    // kubectl's generators send protobuf.
    c.ok(&["create", "namespace", "doomed"]).await?;
    c.ok(&["delete", "namespace", "doomed", "--wait=false"]).await?;
    let phase = c.ok(&["get", "namespace", "doomed", "-o", "jsonpath={.status.phase}"]).await?;
    ensure!(phase == "Terminating", "phase: {phase}");
    let cm = c.manifest(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late, namespace: doomed}\n",
    )?;
    let err = c.fails(&["create", "-f", &cm]).await?;
    ensure!(err.contains("being terminated"), "create in a terminating namespace: {err}");
    let nowhere = c.manifest(
        "cm2.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lost, namespace: nowhere}\n",
    )?;
    let err = c.fails(&["create", "-f", &nowhere]).await?;
    ensure!(
        err.contains("namespaces \"nowhere\" not found"),
        "create in a missing namespace: {err}"
    );

    // ServiceAccount admission: a new namespace has its `default` account, a pod gets it and
    // its token volume, a pod naming a missing account is refused.
    c.ok(&["create", "namespace", "team"]).await?;
    c.ok(&["get", "serviceaccount", "default", "-n", "team"]).await?;
    c.ok(&["run", "web", "-n", "team", "--image=nginx"]).await?;
    let pod = c.get_json(&["pod", "web", "-n", "team"]).await?;
    ensure!(pod["spec"]["serviceAccountName"] == "default", "{pod:#}");
    let volume = pod["spec"]["volumes"][0]["name"].as_str().unwrap_or_default();
    ensure!(volume.starts_with("kube-api-access-"), "{pod:#}");
    ensure!(
        pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
            == "/var/run/secrets/kubernetes.io/serviceaccount",
        "{pod:#}"
    );
    let err = c
        .fails(&[
            "run",
            "lost",
            "-n",
            "team",
            "--image=nginx",
            "--overrides",
            r#"{"spec":{"serviceAccountName":"ghost"}}"#,
        ])
        .await?;
    ensure!(
        err.contains(
            "error looking up service account team/ghost: serviceaccount \"ghost\" not found"
        ),
        "a missing service account: {err}"
    );
    c.stop().await
}

/// A running `kubectl get -w`, its output lines read as they come; killed on drop.
struct Watching {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Watching {
    async fn start(s: &Cluster, args: &[&str]) -> Result<Watching> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("kubectl")
            .env("HOME", &s.home)
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&s.kubeconfig)
            .arg("--cache-dir")
            .arg(s.home.join("cache"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start kubectl get -w")?;
        let stdout = child.stdout.take().context("kubectl stdout")?;
        Ok(Watching { child, lines: tokio::io::BufReader::new(stdout).lines(), seen: Vec::new() })
    }

    /// Waits for a line containing every one of `words`; returns it.
    async fn expect(&mut self, words: &[&str]) -> Result<String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line()).await;
            match line {
                Ok(Ok(Some(l))) => {
                    self.seen.push(l.clone());
                    if words.iter().all(|w| l.contains(w)) {
                        return Ok(l);
                    }
                }
                Ok(Ok(None)) => {
                    anyhow::bail!("kubectl ended before {words:?}:\n{}", self.seen.join("\n"))
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    anyhow::bail!("no line with {words:?} in time:\n{}", self.seen.join("\n"))
                }
            }
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn pod_manifest(name: &str, app: &str, node: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: {image}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_and_selectors_work_against_the_server() -> Result<()> {
    let Some(s) = Cluster::start("kubectl_get_watch_and_selectors_work_against_the_server").await?
    else {
        return Ok(());
    };
    let (kc, home) = (s.kubeconfig.clone(), s.home.clone());
    let manifest = |name: &str, body: String| -> Result<String> {
        let p = home.join(format!("{name}.yaml"));
        std::fs::write(&p, body)?;
        Ok(p.to_string_lossy().into_owned())
    };
    let web = manifest("web", pod_manifest("web", "web", "n1", "nginx"))?;
    let db = manifest("db", pod_manifest("db", "db", "n2", "postgres"))?;
    kubectl_ok(&kc, &home, &["create", "-f", &web]).await?;

    // `kubectl get pods -w` lists, then follows every pod; `kubectl get pod web -w
    // --output-watch-events` follows one pod by name.
    let mut all = Watching::start(&s, &["get", "pods", "-w"]).await?;
    // The server's Table columns: READY and STATUS, not only NAME and AGE.
    all.expect(&["web", "0/1", "Pending"]).await?;
    let mut one =
        Watching::start(&s, &["get", "pod", "web", "-w", "--output-watch-events"]).await?;
    one.expect(&["ADDED", "web"]).await?;

    kubectl_ok(&kc, &home, &["create", "-f", &db]).await?;
    all.expect(&["db"]).await?;
    kubectl_ok(&kc, &home, &["label", "pod", "web", "tier=front"]).await?;
    one.expect(&["MODIFIED", "web"]).await?;
    kubectl_ok(&kc, &home, &["delete", "pod", "web"]).await?;
    one.expect(&["DELETED", "web"]).await?;
    // The watch of all pods printed web's change and its deletion too (kubectl prints
    // NAME and AGE for each event without its type).
    all.expect(&["web"]).await?;
    all.expect(&["web"]).await?;
    ensure!(!one.seen.iter().any(|l| l.contains("db")), "the pinned watch saw db:\n{:?}", one.seen);

    // Label and field selectors on lists.
    kubectl_ok(&kc, &home, &["create", "-f", &web]).await?;
    let out = kubectl_ok(&kc, &home, &["get", "pods", "-l", "app=web", "-o", "name"]).await?;
    ensure!(out.trim() == "pod/web", "-l app=web:\n{out}");
    let out =
        kubectl_ok(&kc, &home, &["get", "pods", "-l", "app notin (web)", "-o", "name"]).await?;
    ensure!(out.trim() == "pod/db", "-l app notin (web):\n{out}");
    let out = kubectl_ok(
        &kc,
        &home,
        &["get", "pods", "--field-selector", "spec.nodeName=n2", "-o", "name"],
    )
    .await?;
    ensure!(out.trim() == "pod/db", "--field-selector spec.nodeName=n2:\n{out}");
    let out = kubectl_ok(
        &kc,
        &home,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "metadata.namespace=default,spec.nodeName!=n2",
            "-o",
            "name",
        ],
    )
    .await?;
    ensure!(out.trim() == "pod/web", "--field-selector spec.nodeName!=n2:\n{out}");
    let out = kubectl(&kc, &home, &["get", "pods", "--field-selector", "spec.foo=x"]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("field label not supported: spec.foo"),
        "unsupported field: {err}"
    );
    let out = kubectl(&kc, &home, &["get", "pods", "-l", "app=(web"]).await?;
    ensure!(!out.status.success(), "a bad label selector was accepted");
    Ok(())
}
