//! Privileged tests of the node API end to end: a real runtime (shims, namespaces, a busybox
//! root filesystem), the agent's API server on a unix socket in a tempdir, and agentctl's
//! client library.
//!
//! Run: `KEELSON_TEST_TIERS=privileged cargo test -p keelson-tests --test agentctl` as root.
//! Each test has its own state and cgroup directories and removes its sandbox on every exit
//! path (a Drop guard). No network: the sandboxes use `NoNetwork`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use keelson_agent::api::{serve, ContainerRef, Listen, ManifestError, NodeApi, PodRegistry};
use keelson_agentctl::proto::{ExecStart, LogsRequest};
use keelson_agentctl::Client;
use keelson_runtime::api::{ContainerImage, Rootfs, Runtime};
use keelson_runtime::cgroup::{detect_host, Layout};
use keelson_runtime::config::{ContainerConfig, ContainerId, PodMeta, SandboxConfig, SandboxId};
use keelson_runtime::network::NoNetwork;
use keelson_runtime::sandbox::{CgroupConfig, RuntimeConfig, ShimRuntime};
use keelson_tests::{need_root, require, Tier};

fn shim_binary() -> Result<PathBuf> {
    static SHIM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SHIM.get_or_init(|| {
        if let Ok(p) = std::env::var("KEELSON_SHIM") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe.parent().and_then(Path::parent).ok_or("odd test binary path")?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target = profile_dir.parent().ok_or("odd test binary path")?;
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "keelson-shim"]).env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().map_err(|e| format!("run cargo: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build -p keelson-shim: {st}"));
        }
        Ok(profile_dir.join("keelson-shim"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copy /bin/busybox (busybox-static)")?;
    let list = std::process::Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(root)
}

/// One pod, `default/web`, with one container `app`.
#[derive(Default)]
struct OnePod(Mutex<Option<ContainerId>>);

impl PodRegistry for OnePod {
    fn pods(&self) -> Vec<k8s_openapi::api::core::v1::Pod> {
        Vec::new()
    }
    fn manifest_errors(&self) -> Vec<ManifestError> {
        Vec::new()
    }
    fn container_id(&self, pod: &str, container: Option<&str>) -> Option<ContainerRef> {
        let id = self.0.lock().ok()?.clone()?;
        (pod == "default/web" && container.is_none_or(|c| c == "app")).then(|| ContainerRef {
            id,
            name: "app".into(),
            restart_count: 0,
            previous: None,
        })
    }
}

struct Env {
    dir: tempfile::TempDir,
    rt: ShimRuntime,
    sandbox: Option<SandboxId>,
    cgroup_base: Option<PathBuf>,
    /// The API server; its tasks end with the test's tokio runtime.
    _server: Option<keelson_agent::api::ApiServer>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let rt = self.rt.clone();
        let sb = self.sandbox.take();
        let base = self.cgroup_base.clone();
        let _ = std::thread::spawn(move || {
            let Ok(t) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            if let Some(id) = sb {
                if let Err(e) = t.block_on(rt.remove_sandbox(&id)) {
                    eprintln!("cleanup of sandbox {id}: {e:#}");
                }
            }
            if let Some(b) = base {
                for d in ["burstable", "besteffort", ""] {
                    let _ = std::fs::remove_dir(b.join(d));
                }
            }
        })
        .join();
    }
}

/// A runtime running `args` as `default/web`'s `app`, and a client over the API's socket.
async fn start(args: &[&str]) -> Result<(Env, Client)> {
    let dir = tempfile::tempdir()?;
    // Unique per test: tests of one process run in parallel, and two pods with one uid
    // would share a pod cgroup (and kill each other's containers on removal).
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base = format!("keelson-test-agentctl-{}-{n}-{nanos:x}", std::process::id());
    let setup = detect_host().context("detect cgroup layout")?;
    let root = setup.v2_root().map(Path::to_owned);
    let cfg = RuntimeConfig {
        shim_path: shim_binary()?,
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
        netns_dir: dir.path().join("netns"),
        log_root: dir.path().join("logs"),
        cgroup: root
            .is_some()
            .then(|| CgroupConfig { setup, layout: Layout { base: PathBuf::from(&base) } }),
        shim_log: Some(dir.path().join("shim.log")),
    };
    let rt = ShimRuntime::new(cfg, Arc::new(NoNetwork)).await?;
    let rootfs = busybox_rootfs(dir.path())?;
    let mut env =
        Env { rt, sandbox: None, cgroup_base: root.map(|r| r.join(&base)), dir, _server: None };
    let uid = format!(
        "{nanos:08x}-0000-4000-8000-{:012x}",
        (u64::from(std::process::id()) << 8) | u64::from(n)
    );
    let sb =
        env.rt.create_sandbox(SandboxConfig::new(PodMeta::new("web", "default", uid))).await?.id;
    env.sandbox = Some(sb.clone());
    let image = ContainerImage {
        reference: "keelson.test/busybox:latest".into(),
        config: oci_spec::image::Config::default(),
        rootfs: Rootfs::Directory(rootfs),
    };
    let command = args.iter().map(|s| s.to_string()).collect();
    let c = ContainerConfig::new("app", "keelson.test/busybox:latest", command);
    let id = env.rt.create_container(&sb, c, image).await?;
    env.rt.start_container(&id).await?;
    let registry = Arc::new(OnePod(Mutex::new(Some(id))));
    let runtime: Arc<dyn Runtime> = Arc::new(env.rt.clone());
    let api = NodeApi::new(registry, runtime, None, None, env.dir.path().join("uploads"));
    let socket = env.dir.path().join("agent.sock");
    let listen = Listen { socket: Some(socket.clone()), tcp: None };
    env._server = Some(serve(api, &listen, None).await?);
    let client = Client::connect_unix(&socket).await?;
    Ok((env, client))
}

fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(f)
}

#[test]
fn agentctl_exec_passes_stdin_output_and_the_exit_code() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let (_env, client) = start(&["sleep", "1000"]).await?;
        let exec = |script: &str| ExecStart {
            pod: "web".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        };
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            client.exec_collect(
                exec("read x; echo got:$x; echo err >&2; exit 7"),
                Some(b"abc\n".to_vec()),
            ),
        )
        .await??;
        assert_eq!(String::from_utf8_lossy(&r.stdout), "got:abc\n");
        assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");
        assert_eq!(r.exit.code, 7);
        let r = client.exec_collect(exec("exit 0"), None).await?;
        assert_eq!(r.exit.code, 0);
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn agentctl_logs_tail_and_follow_a_running_container() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let script = "echo line1; echo line2; echo line3; sleep 2; echo late; sleep 1000";
        let (_env, client) = start(&["sh", "-c", script]).await?;
        let req =
            |tail, follow| LogsRequest { pod: "web".into(), tail, follow, ..Default::default() };
        // Until the first three lines are in the log.
        let mut seen = Vec::new();
        for _ in 0..100 {
            let mut s = client.logs(req(None, false)).await?;
            seen.clear();
            while let Some(r) = s.message().await? {
                seen.push(String::from_utf8(r.content)?);
            }
            if seen.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(&seen[..3], ["line1", "line2", "line3"]);
        let mut s = client.logs(req(Some(1), false)).await?;
        let last = s.message().await?.context("one record")?;
        assert_eq!(last.content, b"line3");
        assert!(s.message().await?.is_none());
        let mut live = client.logs(req(Some(1), true)).await?;
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            let mut got = Vec::new();
            while let Some(r) = live.message().await? {
                got.push(String::from_utf8(r.content)?);
                if got.last().is_some_and(|l| l == "late") {
                    break;
                }
            }
            anyhow::Ok(got)
        })
        .await??;
        assert_eq!(got, ["line3", "late"]);
        Ok(())
    })
    .expect("test body failed");
}
