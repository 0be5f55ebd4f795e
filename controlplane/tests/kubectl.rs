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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_discovers_explains_and_versions_against_the_server() -> Result<()> {
    if !kubectl_available() {
        assert!(
            std::env::var("KEELSON_TEST_STRICT").as_deref() != Ok("1"),
            "kubectl is required in strict mode"
        );
        eprintln!("SKIP kubectl_discovers_explains_and_versions_against_the_server: kubectl is not installed");
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;
    let config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        compaction_interval: DEFAULT_COMPACTION_INTERVAL,
    };
    let listener = bind(&config).await?;
    let kubeconfig = listener.kubeconfig().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(async {
        let _ = stopped.await;
    }));

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
    let manifest = dir.path().join("deployment.yaml");
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
    let cm = dir.path().join("cm.yaml");
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

    // version reports the server's version.
    let out = kubectl_ok(&kubeconfig, &home, &["version"]).await?;
    ensure!(out.contains("Server Version: v1.33.0"), "version:\n{out}");

    // A client without a certificate is refused with 401 (kubectl says Unauthorized).
    let anonymous = dir.path().join("anonymous.kubeconfig");
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

    let _ = stop.send(());
    server.await?;
    Ok(())
}

/// A server on a free loopback port, stopped on drop.
struct TestServer {
    _dir: tempfile::TempDir,
    home: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn test_server() -> Result<TestServer> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;
    let config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        compaction_interval: DEFAULT_COMPACTION_INTERVAL,
    };
    let listener = bind(&config).await?;
    let kubeconfig = listener.kubeconfig().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listener.serve(async {
        let _ = stopped.await;
    }));
    Ok(TestServer { _dir: dir, home, kubeconfig, stop: Some(stop) })
}

/// A running `kubectl get -w`, its output lines read as they come; killed on drop.
struct Watching {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Watching {
    async fn start(s: &TestServer, args: &[&str]) -> Result<Watching> {
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
    if !kubectl_available() {
        assert!(
            std::env::var("KEELSON_TEST_STRICT").as_deref() != Ok("1"),
            "kubectl is required in strict mode"
        );
        eprintln!("SKIP kubectl_get_watch_and_selectors_work_against_the_server: kubectl is not installed");
        return Ok(());
    }
    let s = test_server().await?;
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
    all.expect(&["web"]).await?;
    let mut one =
        Watching::start(&s, &["get", "pod", "web", "-w", "--output-watch-events"]).await?;
    one.expect(&["ADDED", "web"]).await?;

    kubectl_ok(&kc, &home, &["create", "-f", &db]).await?;
    all.expect(&["db"]).await?;
    // A change to web (a new label through replace: patch verbs are not served yet).
    let relabelled = manifest(
        "web2",
        pod_manifest("web", "web", "n1", "nginx").replace("{app: web}", "{app: web, tier: front}"),
    )?;
    kubectl_ok(&kc, &home, &["replace", "-f", &relabelled]).await?;
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
