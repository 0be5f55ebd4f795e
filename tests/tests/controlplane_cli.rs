//! `keelson controlplane` as a process: it serves kubectl over TLS on a free loopback port,
//! writes `DIR/admin.kubeconfig`, and a restart on the same DIR keeps the CA, the objects and the admin's
//! credentials (the old kubeconfig still works).
//!
//! Unit tier (no root, loopback only); skips with a printed reason when kubectl is missing,
//! fails instead with `KEELSON_TEST_STRICT=1`. Run: `cargo test -p keelson-tests --test
//! controlplane_cli` (builds the `keelson` binary on first use). The etcd variant starts
//! Debian's etcd on loopback and runs in the privileged tier, with the other etcd tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Kills the server on drop, also when the test fails.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &Path, port: u16) -> Result<Server> {
    start_with(data, port, &[])
}

fn start_with(data: &Path, port: u16, extra: &[&str]) -> Result<Server> {
    let child = Command::new(keelson_tests::bins::keelson()?)
        .arg("controlplane")
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start keelson controlplane")?;
    Ok(Server(child))
}

fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run kubectl")?;
    ensure!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// Waits until the server answers `/readyz` through `kubeconfig`.
fn wait_ready(server: &mut Server, kubeconfig: &Path, home: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = server.0.try_wait()? {
            bail!("keelson controlplane exited: {st}");
        }
        if kubeconfig.exists() {
            if let Ok(out) = kubectl(kubeconfig, home, &["get", "--raw", "/readyz"]) {
                ensure!(out == "ok", "readyz says {out:?}");
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[test]
fn controlplane_serves_kubectl_and_keeps_its_credentials_across_a_restart() -> Result<()> {
    let kubectl_missing = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .map_or(true, |o| !o.status.success());
    if kubectl_missing {
        assert!(!keelson_tests::strict(), "kubectl is required in strict mode");
        eprintln!("SKIP controlplane_serves_kubectl_and_keeps_its_credentials_across_a_restart: kubectl is not installed");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (data, home) = (dir.path().join("data"), dir.path().join("home"));
    std::fs::create_dir_all(&home)?;
    let kubeconfig = data.join("admin.kubeconfig");
    let port = free_port()?;

    let mut server = start(&data, port)?;
    wait_ready(&mut server, &kubeconfig, &home)?;
    let version = kubectl(&kubeconfig, &home, &["version"])?;
    ensure!(version.contains("Server Version: v1.33.0"), "version:\n{version}");
    let resources =
        kubectl(&kubeconfig, &home, &["api-resources", "--api-group=apps", "-o", "name"])?;
    ensure!(resources.lines().any(|l| l == "deployments.apps"), "api-resources:\n{resources}");
    let cm = dir.path().join("cm.yaml");
    std::fs::write(&cm, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kept}\ndata: {k: v}\n")?;
    kubectl(&kubeconfig, &home, &["create", "-f", &cm.to_string_lossy()])?;
    let first_kubeconfig = std::fs::read_to_string(&kubeconfig)?;
    let ca = std::fs::read_to_string(data.join("pki/ca.crt"))?;
    drop(server);

    // Same DIR, same port: same CA and credentials; the kubeconfig saved before still works.
    let saved = dir.path().join("saved.kubeconfig");
    std::fs::write(&saved, &first_kubeconfig)?;
    let mut server = start(&data, port)?;
    wait_ready(&mut server, &saved, &home)?;
    ensure!(
        std::fs::read_to_string(data.join("pki/ca.crt"))? == ca,
        "the CA changed across a restart"
    );
    ensure!(
        std::fs::read_to_string(&kubeconfig)? == first_kubeconfig,
        "the admin kubeconfig changed across a restart"
    );
    let healthz = kubectl(&saved, &home, &["get", "--raw", "/healthz"])?;
    ensure!(healthz == "ok", "healthz: {healthz:?}");
    // Objects written before the restart are still there (the store is durable on commit).
    let kept = kubectl(&saved, &home, &["get", "configmap", "kept", "-o", "jsonpath={.data.k}"])?;
    ensure!(kept == "v", "the configmap after a restart: {kept:?}");
    Ok(())
}

#[test]
fn controlplane_on_etcd_serves_kubectl_and_its_objects_outlive_the_server() {
    use keelson_tests::etcd::{need_etcd, EtcdCluster};
    use keelson_tests::{need_root, require, Tier};
    require!(Tier::Privileged, need_root(), need_etcd(), need_kubectl());
    let run = || -> Result<()> {
        let etcd = EtcdCluster::start(1, Duration::from_secs(1))?;
        let store = format!("etcd:{}", etcd.endpoints().join(","));
        let dir = tempfile::tempdir()?;
        let (data, home) = (dir.path().join("data"), dir.path().join("home"));
        std::fs::create_dir_all(&home)?;
        let kubeconfig = data.join("admin.kubeconfig");
        let port = free_port()?;
        let mut server = start_with(&data, port, &["--store", &store])?;
        wait_ready(&mut server, &kubeconfig, &home)?;
        let cm = dir.path().join("cm.yaml");
        std::fs::write(
            &cm,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: in-etcd}\ndata: {k: v}\n",
        )?;
        kubectl(&kubeconfig, &home, &["create", "-f", &cm.to_string_lossy()])?;
        kubectl(&kubeconfig, &home, &["label", "configmap", "in-etcd", "a=b"])?;
        drop(server);
        ensure!(
            !data.join("store.redb").exists(),
            "an etcd-backed server opened the embedded store"
        );
        let mut server = start_with(&data, port, &["--store", &store])?;
        wait_ready(&mut server, &kubeconfig, &home)?;
        let label = kubectl(
            &kubeconfig,
            &home,
            &["get", "configmap", "in-etcd", "-o", "jsonpath={.metadata.labels.a}"],
        )?;
        ensure!(label == "b", "the configmap in etcd after a restart: {label:?}");
        Ok(())
    };
    run().expect("controlplane on etcd");
}

fn need_kubectl() -> Option<String> {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| "kubectl is not installed".to_owned())
}

#[test]
fn a_bad_store_option_is_refused_with_what_to_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(keelson_tests::bins::keelson()?)
        .args(["controlplane", "--data-dir"])
        .arg(dir.path())
        .args(["--store", "etcd:127.0.0.1:2379"])
        .output()?;
    ensure!(!out.status.success(), "a store URL without a scheme was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("must start with http://"), "the error: {err}");
    Ok(())
}

#[test]
fn snapshot_save_from_a_running_server_and_restore_bring_back_that_moment() -> Result<()> {
    if need_kubectl().is_some() {
        assert!(!keelson_tests::strict(), "kubectl is required in strict mode");
        eprintln!("SKIP snapshot_save_from_a_running_server_and_restore_bring_back_that_moment: kubectl is not installed");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (data, home) = (dir.path().join("data"), dir.path().join("home"));
    std::fs::create_dir_all(&home)?;
    let kubeconfig = data.join("admin.kubeconfig");
    let port = free_port()?;
    let snapshot = |args: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new(keelson_tests::bins::keelson()?)
            .args(["controlplane", "snapshot"])
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()?)
    };
    let cm = |name: &str| -> Result<()> {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"),
        )?;
        kubectl(&kubeconfig, &home, &["create", "-f", &f.to_string_lossy()])?;
        Ok(())
    };
    let mut server = start(&data, port)?;
    wait_ready(&mut server, &kubeconfig, &home)?;
    cm("before")?;
    let snap = dir.path().join("snap.db");
    let out = snapshot(&["save", &snap.to_string_lossy()])?;
    ensure!(out.status.success(), "save: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("at revision"),
        "save said {:?}",
        out.stdout
    );
    cm("after")?;
    let out = snapshot(&["restore", &snap.to_string_lossy()])?;
    ensure!(!out.status.success(), "a restore under a running server was accepted");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("stop it before restoring"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = snapshot(&["save", &snap.to_string_lossy()])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "a save overwrote a file"
    );
    drop(server);

    // Offline: save straight from the data dir; restore the earlier snapshot.
    let offline = dir.path().join("offline.db");
    let out = snapshot(&["save", &offline.to_string_lossy()])?;
    ensure!(out.status.success(), "offline save: {}", String::from_utf8_lossy(&out.stderr));
    let out = snapshot(&["restore", &snap.to_string_lossy()])?;
    ensure!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let mut server = start(&data, port)?;
    wait_ready(&mut server, &kubeconfig, &home)?;
    let names = kubectl(&kubeconfig, &home, &["get", "configmaps", "-o", "name"])?;
    ensure!(
        names.contains("configmap/before") && !names.contains("configmap/after"),
        "after restore: {names}"
    );
    drop(server);
    let out = snapshot(&["restore", &offline.to_string_lossy()])?;
    ensure!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let mut server = start(&data, port)?;
    wait_ready(&mut server, &kubeconfig, &home)?;
    let names = kubectl(&kubeconfig, &home, &["get", "configmaps", "-o", "name"])?;
    ensure!(names.contains("configmap/after"), "the offline snapshot: {names}");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"junk")?;
    drop(server);
    let out = snapshot(&["restore", &junk.to_string_lossy()])?;
    ensure!(!out.status.success(), "a junk file was restored");
    Ok(())
}

/// The Python client's interpreter, installed by dev/setup into its own venv.
fn python_client() -> std::path::PathBuf {
    let cache = std::env::var("KEELSON_CACHE").unwrap_or_else(|_| "/var/cache/keelson".into());
    std::path::Path::new(&cache).join("pyclient/bin/python")
}

fn need_python_client() -> Option<String> {
    let ok = Command::new(python_client())
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| {
        format!(
            "the Python kubernetes client is not installed at {} (dev/setup installs it)",
            python_client().display()
        )
    })
}

#[test]
fn the_python_kubernetes_client_lists_watches_and_patches() {
    use keelson_tests::{require, Tier};
    require!(Tier::Privileged, need_python_client(), need_kubectl());
    let run = || -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (data, home) = (dir.path().join("data"), dir.path().join("home"));
        std::fs::create_dir_all(&home)?;
        let kubeconfig = data.join("admin.kubeconfig");
        let mut server = start(&data, free_port()?)?;
        wait_ready(&mut server, &kubeconfig, &home)?;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
        let out = Command::new(python_client())
            .arg(&script)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &home)
            .output()?;
        ensure!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"), "no ok line");
        Ok(())
    };
    run().expect("the Python client against keelson controlplane");
}
