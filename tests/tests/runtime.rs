//! Privileged tests of the sandbox and container path: real shims, real namespaces, real
//! containers from a busybox root filesystem, through the `Runtime` trait.
//!
//! Run: `KEELSON_TEST_TIERS=privileged cargo test -p keelson-tests --test runtime` as root.
//! Each test has its own state, socket, netns, log and cgroup directories (tempdirs and a
//! `keelson-test-<n>` cgroup tree) and removes its sandboxes on every exit path (a Drop
//! guard). The `keelson-shim` binary is built on first use with the same cargo and target dir.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use keelson_runtime::api::{
    ContainerImage, ContainerState, ExecConfig, LogOptions, Rootfs, Runtime, RuntimeEvent,
    SandboxState,
};
use keelson_runtime::cgroup::{detect_host, Layout};
use keelson_runtime::config::{
    ContainerConfig, ContainerId, PodMeta, SandboxConfig, SandboxId, SeccompProfile, StopOptions,
};
use keelson_runtime::network::NoNetwork;
use keelson_runtime::sandbox::{CgroupConfig, RuntimeConfig, ShimRuntime};
use keelson_tests::{need_root, require, Tier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Builds `keelson-shim` once per test process (a no-op when it is fresh) and returns it.
fn shim_binary() -> Result<PathBuf> {
    static SHIM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SHIM.get_or_init(|| {
        if let Ok(p) = std::env::var("KEELSON_SHIM") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/runtime-<hash> -> target/<profile>/keelson-shim
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

/// A busybox root filesystem with an /etc/passwd that knows uid 1000.
fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copy /bin/busybox (busybox-static)")?;
    let list = std::process::Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n")?;
    Ok(root)
}

struct Env {
    dir: tempfile::TempDir,
    cfg: RuntimeConfig,
    rt: ShimRuntime,
    rootfs: PathBuf,
    cgroup_base: Option<PathBuf>,
    sandboxes: Arc<std::sync::Mutex<Vec<SandboxId>>>,
}

fn runtime_config(dir: &Path, base: &str) -> Result<(RuntimeConfig, Option<PathBuf>)> {
    let setup = detect_host().context("detect cgroup layout")?;
    let root = setup.v2_root().map(Path::to_owned);
    let cfg = RuntimeConfig {
        shim_path: shim_binary()?,
        state_dir: dir.join("state"),
        run_dir: dir.join("run"),
        netns_dir: dir.join("netns"),
        log_root: dir.join("logs"),
        cgroup: root
            .is_some()
            .then(|| CgroupConfig { setup, layout: Layout { base: PathBuf::from(base) } }),
        shim_log: Some(dir.join("shim.log")),
    };
    Ok((cfg, root.map(|r| r.join(base))))
}

async fn env() -> Result<Env> {
    let dir = tempfile::tempdir()?;
    let base = format!("keelson-test-{}-{:x}", std::process::id(), rand_u32());
    let (cfg, cgroup_base) = runtime_config(dir.path(), &base)?;
    let rt = ShimRuntime::new(cfg.clone(), Arc::new(NoNetwork)).await?;
    let rootfs = busybox_rootfs(dir.path())?;
    Ok(Env { dir, cfg, rt, rootfs, cgroup_base, sandboxes: Default::default() })
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32)
}

impl Drop for Env {
    fn drop(&mut self) {
        // Remove what the test left, also when it panicked: on a fresh thread with its own
        // tokio runtime, since this may run inside the test's runtime.
        let rt = self.rt.clone();
        let ids: Vec<SandboxId> = self.sandboxes.lock().map(|v| v.clone()).unwrap_or_default();
        let base = self.cgroup_base.clone();
        let _ = std::thread::spawn(move || {
            let Ok(tokio_rt) = tokio::runtime::Builder::new_current_thread().enable_all().build()
            else {
                return;
            };
            tokio_rt.block_on(async {
                for id in ids {
                    if let Err(e) = rt.remove_sandbox(&id).await {
                        eprintln!("cleanup of sandbox {id}: {e:#}");
                    }
                }
            });
            if let Some(b) = base {
                for d in ["burstable", "besteffort", ""] {
                    let _ = std::fs::remove_dir(b.join(d));
                }
            }
        })
        .join();
        if let Ok(log) = std::fs::read_to_string(self.dir.path().join("shim.log")) {
            if !log.is_empty() {
                eprintln!("--- shim diagnostics ---\n{log}");
            }
        }
    }
}

fn pod(name: &str) -> SandboxConfig {
    let uid = format!("{:08x}-0000-4000-8000-{:012x}", rand_u32(), std::process::id());
    SandboxConfig::new(PodMeta::new(name, "default", uid))
}

fn container(name: &str, args: &[&str]) -> ContainerConfig {
    let command = args.iter().map(|s| s.to_string()).collect();
    ContainerConfig::new(name, "keelson.test/busybox:latest", command)
}

impl Env {
    fn image(&self) -> ContainerImage {
        ContainerImage {
            reference: "keelson.test/busybox:latest".into(),
            config: oci_spec::image::Config::default(),
            rootfs: Rootfs::Directory(self.rootfs.clone()),
        }
    }

    async fn sandbox(&self, name: &str) -> Result<SandboxId> {
        let info = self.rt.create_sandbox(pod(name)).await?;
        self.sandboxes.lock().expect("not poisoned").push(info.id.clone());
        Ok(info.id)
    }

    async fn run(&self, sb: &SandboxId, c: ContainerConfig) -> Result<ContainerId> {
        let id = self.rt.create_container(sb, c, self.image()).await?;
        self.rt.start_container(&id).await?;
        Ok(id)
    }

    /// Waits for a container to exit (through the event stream, subscribed before `start`
    /// by the caller) and returns its status.
    async fn wait_exit(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>,
        id: &ContainerId,
    ) -> Result<keelson_runtime::api::ContainerStatus> {
        let st = self.rt.container_status(id).await?;
        if st.state != ContainerState::Exited {
            tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match events.recv().await {
                        Ok(RuntimeEvent::ContainerExited { id: e, .. }) if &e == id => {
                            return Ok(())
                        }
                        Ok(_) => {}
                        Err(e) => bail!("event stream: {e}"),
                    }
                }
            })
            .await
            .context("container did not exit in time")??;
        }
        Ok(self.rt.container_status(id).await?)
    }

    async fn log_text(&self, id: &ContainerId) -> Result<String> {
        keelson_tests::log_text(&self.rt, id).await
    }

    /// Follows the log until a line equal to `marker` appears.
    async fn await_line(&self, id: &ContainerId, marker: &str) -> Result<()> {
        let mut s = self.rt.logs(id, LogOptions { follow: true, tail: None }).await?;
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(e) = s.next().await {
                if e?.content == marker.as_bytes() {
                    return Ok(());
                }
            }
            bail!("log ended without {marker:?}")
        })
        .await
        .context("marker did not appear in time")?
    }
}

fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(f)
}

#[test]
fn container_output_and_exit_code_are_recorded() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("hello").await?;
        let mut ev = env.rt.events();
        let id = env
            .run(&sb, container("main", &["sh", "-c", "echo hello; echo oops >&2; exit 3"]))
            .await?;
        let st = env.wait_exit(&mut ev, &id).await?;
        assert_eq!(st.state, ContainerState::Exited);
        assert_eq!(st.exit_code, Some(3));
        assert_eq!(st.signal, None);
        assert!(st.finished_at >= st.started_at);
        let log = env.log_text(&id).await?;
        assert_eq!(log, "hello\noops\n");
        let raw = std::fs::read_to_string(&st.log_path)?;
        assert!(raw.lines().any(|l| l.contains(" stdout F hello")), "{raw}");
        assert!(raw.lines().any(|l| l.contains(" stderr F oops")), "{raw}");
        assert!(st.log_path.ends_with("main/0.log"), "{}", st.log_path.display());
        env.rt.remove_container(&id).await?;
        assert!(env.rt.container_status(&id).await.is_err());
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn containers_are_placed_in_the_cgroup2_tree_and_never_in_v1() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("cgroups").await?;
        let id = env.run(&sb, container("main", &["sleep", "1000"])).await?;
        let st = env.rt.container_status(&id).await?;
        let pid = st.pid.context("pid")?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let base = env.cgroup_base.as_ref().context("cgroup2 root")?;
        let base_name = base.file_name().context("base name")?.to_string_lossy().into_owned();
        let v2 = text.lines().find_map(|l| l.strip_prefix("0::")).context("no cgroup2 line")?;
        assert!(v2.starts_with(&format!("/{base_name}/")), "{text}");
        assert!(v2.ends_with(&format!("/{id}")), "{text}");
        for l in text.lines().filter(|l| !l.starts_with("0::")) {
            assert!(
                !l.contains(id.as_str()) && !l.contains(&base_name),
                "placed in a v1 hierarchy: {l}"
            );
        }
        let shim = env.rt.sandbox_status(&sb).await?.shim_pid.context("shim pid")?;
        let shim_cg = std::fs::read_to_string(format!("/proc/{shim}/cgroup"))?;
        assert!(shim_cg.lines().any(|l| l.starts_with("0::") && l.ends_with("/shim")), "{shim_cg}");
        let stats = env.rt.container_stats(&id).await?;
        assert!(
            stats.cgroup.cpu_usage_usec.is_some(),
            "cpu.stat is read from the container's cgroup"
        );
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn exec_with_a_terminal_sees_the_resize() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("tty").await?;
        let id = env.run(&sb, container("main", &["sleep", "1000"])).await?;
        let mut ex = env
            .rt
            .exec(
                &id,
                ExecConfig {
                    command: vec!["sh".into(), "-c".into(), "read x; stty size; exit 5".into()],
                    tty: true,
                    ..Default::default()
                },
            )
            .await?;
        ex.resize(100, 40)?;
        let mut stdin = ex.stdin.take().context("terminal input")?;
        stdin.write_all(b"go\n").await?;
        let mut out = String::new();
        let mut stdout = ex.stdout.take().context("terminal output")?;
        tokio::time::timeout(Duration::from_secs(20), stdout.read_to_string(&mut out)).await??;
        assert!(out.contains("40 100"), "terminal output: {out:?}");
        assert_eq!(ex.wait().await?.code, 5);
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn exec_without_terminal_passes_stdin_and_exit_code() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("exec").await?;
        let id = env.run(&sb, container("main", &["sleep", "1000"])).await?;
        let mut ex = env
            .rt
            .exec(
                &id,
                ExecConfig {
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        "read x; echo got:$x; echo err >&2; exit 7".into(),
                    ],
                    stdin: true,
                    ..Default::default()
                },
            )
            .await?;
        let mut stdin = ex.stdin.take().context("stdin")?;
        stdin.write_all(b"abc\n").await?;
        drop(stdin);
        let (mut o, mut e) = (String::new(), String::new());
        let mut so = ex.stdout.take().context("stdout")?;
        let mut se = ex.stderr.take().context("stderr")?;
        tokio::time::timeout(Duration::from_secs(20), async {
            so.read_to_string(&mut o).await?;
            se.read_to_string(&mut e).await
        })
        .await??;
        assert_eq!(o, "got:abc\n");
        assert_eq!(e, "err\n");
        assert_eq!(ex.wait().await?.code, 7);
        // The exec's output went to the caller, not to the container's log.
        assert_eq!(env.log_text(&id).await?, "");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn attach_reads_live_output_and_writes_stdin() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("attach").await?;
        let mut c = container("main", &["sh", "-c", "while read x; do echo seen:$x; done"]);
        c.stdin = true;
        let id = env.run(&sb, c).await?;
        let mut a = env.rt.attach(&id).await?;
        let mut stdin = a.stdin.take().context("stdin")?;
        stdin.write_all(b"one\n").await?;
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), a.stdout.read(&mut buf)).await??;
        assert_eq!(&buf[..n], b"seen:one\n");
        // And the log has it too.
        env.await_line(&id, "seen:one").await?;
        // Without stdinOnce, a client going away leaves stdin open for the next one.
        drop(stdin);
        drop(a);
        let mut b = env.rt.attach(&id).await?;
        b.stdin.take().context("stdin")?.write_all(b"two\n").await?;
        let n = tokio::time::timeout(Duration::from_secs(20), b.stdout.read(&mut buf)).await??;
        assert_eq!(&buf[..n], b"seen:two\n");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn run_as_user_sets_the_uid() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("user").await?;
        let mut ev = env.rt.events();
        let mut c = container("main", &["id", "-u"]);
        c.security.run_as_user = Some(1000);
        let id = env.run(&sb, c).await?;
        assert_eq!(env.wait_exit(&mut ev, &id).await?.exit_code, Some(0));
        assert_eq!(env.log_text(&id).await?, "1000\n");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn containers_of_a_sandbox_share_hostname_ipc_and_network_but_not_pids() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("sharing").await?;
        let mut ev = env.rt.events();
        let show =
            "hostname; for n in uts ipc net pid; do readlink /proc/self/ns/$n; done; ps -o comm";
        let first = env
            .run(
                &sb,
                container(
                    "first",
                    &[
                        "sh",
                        "-c",
                        &format!("{show}; echo x > /dev/shm/marker; echo ready; sleep 1000"),
                    ],
                ),
            )
            .await?;
        env.await_line(&first, "ready").await?;
        let second = env
            .run(&sb, container("second", &["sh", "-c", &format!("{show}; cat /dev/shm/marker")]))
            .await?;
        assert_eq!(env.wait_exit(&mut ev, &second).await?.exit_code, Some(0));
        let a: Vec<String> = env.log_text(&first).await?.lines().map(str::to_owned).collect();
        let b: Vec<String> = env.log_text(&second).await?.lines().map(str::to_owned).collect();
        assert_eq!(a[0], "sharing");
        assert_eq!(b[0], "sharing");
        assert_eq!(a[1..4], b[1..4], "uts, ipc and net namespaces are the sandbox's");
        assert_ne!(a[4], b[4], "each container has its own pid namespace");
        // ps in the second container sees only its own processes.
        let procs: Vec<&str> =
            b[5..].iter().map(String::as_str).take_while(|l| *l != "x").collect();
        assert!(
            !procs.contains(&"sleep"),
            "second container sees the first's processes: {procs:?}"
        );
        assert_eq!(b.last().map(String::as_str), Some("x"), "the pod's /dev/shm is shared");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn stop_honours_a_trapped_sigterm_and_kills_an_ignoring_container() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("stop").await?;
        let trapped = env
            .run(
                &sb,
                container(
                    "trapped",
                    &["sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done"],
                ),
            )
            .await?;
        let ignoring = env
            .run(
                &sb,
                container(
                    "ignoring",
                    &["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"],
                ),
            )
            .await?;
        env.await_line(&trapped, "ready").await?;
        env.await_line(&ignoring, "ready").await?;
        env.rt
            .stop_container(&trapped, StopOptions { grace_period: Duration::from_secs(10) })
            .await?;
        let st = env.rt.container_status(&trapped).await?;
        assert_eq!((st.exit_code, st.signal), (Some(0), None));
        let t0 = std::time::Instant::now();
        env.rt
            .stop_container(&ignoring, StopOptions { grace_period: Duration::from_millis(500) })
            .await?;
        assert!(t0.elapsed() >= Duration::from_millis(500));
        let st = env.rt.container_status(&ignoring).await?;
        assert_eq!((st.exit_code, st.signal), (Some(137), Some(9)));
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn runtime_default_seccomp_refuses_user_namespaces_that_unconfined_allows() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("seccomp").await?;
        let mut ev = env.rt.events();
        let probe = ["sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true"];
        // no_new_privs: the shim's executor loads the program the runtime compiled.
        let compiled = env.run(&sb, container("compiled", &probe)).await?;
        // Escalation allowed and no CAP_SYS_ADMIN: libcontainer loads the profile itself.
        let mut c = container("libcontainer", &probe);
        c.security.allow_privilege_escalation = Some(true);
        let loaded = env.run(&sb, c).await?;
        let mut c = container("unconfined", &probe);
        c.security.seccomp = SeccompProfile::Unconfined;
        let unconfined = env.run(&sb, c).await?;
        for id in [&compiled, &loaded] {
            let exit = env.wait_exit(&mut ev, id).await?;
            let log = env.log_text(id).await?;
            assert_ne!(
                exit.exit_code,
                Some(0),
                "{id}: RuntimeDefault let unshare -U through: {log}"
            );
            assert!(log.contains("Seccomp:\t2"), "{id}: not in filter mode: {log}");
        }
        let b = env.wait_exit(&mut ev, &unconfined).await?;
        let log = env.log_text(&unconfined).await?;
        assert_eq!(b.exit_code, Some(0), "unconfined unshare -U failed: {log}");
        assert!(log.contains("Seccomp:\t0"), "unconfined is filtered: {log}");

        // An exec into a container whose program the executor loads is filtered too.
        let main = env.run(&sb, container("main", &["sleep", "1000"])).await?;
        let mut ex = env
            .rt
            .exec(
                &main,
                ExecConfig { command: probe.map(String::from).to_vec(), ..Default::default() },
            )
            .await?;
        let mut out = String::new();
        let mut so = ex.stdout.take().context("stdout")?;
        tokio::time::timeout(Duration::from_secs(20), so.read_to_string(&mut out)).await??;
        assert_ne!(ex.wait().await?.code, 0, "exec let unshare -U through: {out}");
        assert!(out.contains("Seccomp:\t2"), "exec is not filtered: {out}");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn containers_have_no_cap_sys_admin() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("caps").await?;
        let mut ev = env.rt.events();
        let id = env.run(&sb, container("main", &["grep", "CapEff", "/proc/self/status"])).await?;
        assert_eq!(env.wait_exit(&mut ev, &id).await?.exit_code, Some(0));
        let log = env.log_text(&id).await?;
        let hex = log.split_whitespace().nth(1).context("CapEff line")?;
        let caps = u64::from_str_radix(hex, 16)?;
        const CAP_SYS_ADMIN: u32 = 21;
        assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0, "CapEff {hex} has CAP_SYS_ADMIN");
        assert_ne!(caps, 0, "the default set is not empty");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn sandbox_sysctls_apply_to_the_pod_and_not_the_host() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let key = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
        let host_before = std::fs::read_to_string(key)?;
        let mut p = pod("sysctl");
        p.sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "123".into());
        let info = env.rt.create_sandbox(p).await?;
        env.sandboxes.lock().expect("not poisoned").push(info.id.clone());
        let mut ev = env.rt.events();
        let id = env.run(&info.id, container("main", &["cat", key])).await?;
        assert_eq!(env.wait_exit(&mut ev, &id).await?.exit_code, Some(0));
        assert_eq!(env.log_text(&id).await?, "123\n");
        assert_eq!(std::fs::read_to_string(key)?, host_before, "the host's value changed");
        let mut bad = pod("badsysctl");
        bad.sysctls.insert("kernel.hostname".into(), "x".into());
        assert!(env.rt.create_sandbox(bad).await.is_err(), "a non-namespaced sysctl was accepted");
        assert_eq!(env.rt.list_sandboxes().await?.len(), 1, "the refused sandbox left a record");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn stdin_once_closes_the_containers_stdin_when_the_client_detaches() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("stdinonce").await?;
        let mut ev = env.rt.events();
        let mut c = container("main", &["sh", "-c", "cat; echo eof-seen"]);
        c.stdin = true;
        c.stdin_once = true;
        let id = env.run(&sb, c).await?;
        let mut a = env.rt.attach(&id).await?;
        let mut stdin = a.stdin.take().context("stdin")?;
        stdin.write_all(b"payload\n").await?;
        drop(stdin);
        let st = env.wait_exit(&mut ev, &id).await?;
        assert_eq!(st.exit_code, Some(0));
        assert_eq!(env.log_text(&id).await?, "payload\neof-seen\n");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn attach_to_a_terminal_container_resizes_it() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("ttyattach").await?;
        let mut c = container("main", &["sh", "-c", "read x; stty size; sleep 1000"]);
        c.tty = true;
        c.stdin = true;
        let id = env.run(&sb, c).await?;
        let mut a = env.rt.attach(&id).await?;
        assert!(a.tty && a.stderr.is_none());
        a.resize(90, 30).await?;
        let mut stdin = a.stdin.take().context("terminal input")?;
        stdin.write_all(b"go\n").await?;
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        tokio::time::timeout(Duration::from_secs(20), async {
            while !seen.contains("30 90") {
                let n = a.stdout.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            anyhow::Ok(())
        })
        .await??;
        assert!(seen.contains("30 90"), "terminal output: {seen:?}");
        // The terminal's output is logged as stdout.
        env.await_line(&id, "30 90\r").await?;
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn overlay_rootfs_is_mounted_for_the_container_and_unmounted_at_removal() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("overlay").await?;
        let layer = env.dir.path().join("layer");
        std::fs::create_dir_all(&layer)?;
        let image = ContainerImage {
            rootfs: Rootfs::Overlay {
                lowerdirs: vec![env.rootfs.clone()],
                upperdir: layer.join("upper"),
                workdir: layer.join("work"),
            },
            ..env.image()
        };
        std::fs::create_dir_all(layer.join("upper"))?;
        std::fs::create_dir_all(layer.join("work"))?;
        let mut ev = env.rt.events();
        let id = env
            .rt
            .create_container(
                &sb,
                container("main", &["sh", "-c", "echo written > /tmp/file; cat /tmp/file"]),
                image,
            )
            .await?;
        env.rt.start_container(&id).await?;
        assert_eq!(env.wait_exit(&mut ev, &id).await?.exit_code, Some(0));
        assert_eq!(env.log_text(&id).await?, "written\n");
        assert!(layer.join("upper/tmp/file").exists(), "the write went to the upper layer");
        assert!(!env.rootfs.join("tmp/file").exists(), "the write reached the lower layer");
        env.rt.remove_container(&id).await?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        assert!(!mounts.contains(&id.to_string()), "the overlay is still mounted");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn container_runs_from_an_imported_oci_image() {
    require!(Tier::Privileged, need_root(), keelson_tests::images::need_test_images());
    block_on(async {
        let env = env().await?;
        let store = keelson_runtime::image::ImageStore::open(env.dir.path().join("images"))?;
        let image = store.import(
            &keelson_tests::images::oci_layout(),
            &keelson_runtime::image::ImportOptions::named("keelson.test/busybox:latest"),
            None,
        )?;
        let mount = store.prepare_rootfs(&image, "runtime-test")?;
        let sb = env.sandbox("fromimage").await?;
        let mut ev = env.rt.events();
        let image_spec = ContainerImage {
            reference: image.name().to_owned(),
            config: image.container_config(),
            rootfs: Rootfs::Overlay {
                lowerdirs: mount.lowerdirs.clone(),
                upperdir: mount.upperdir.clone(),
                workdir: mount.workdir.clone(),
            },
        };
        let id = env
            .rt
            .create_container(
                &sb,
                container("main", &["sh", "-c", "echo from-image; id -u"]),
                image_spec,
            )
            .await?;
        env.rt.start_container(&id).await?;
        let st = env.wait_exit(&mut ev, &id).await?;
        assert_eq!(st.exit_code, Some(0), "log: {}", env.log_text(&id).await?);
        assert_eq!(env.log_text(&id).await?, "from-image\n0\n");
        assert_eq!(st.image, image.name());
        env.rt.remove_container(&id).await?;
        store.release_rootfs("runtime-test")?;
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn host_network_sandbox_uses_the_hosts_network_namespace() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let mut p = pod("hostnet");
        p.host_namespaces.network = true;
        let info = env.rt.create_sandbox(p).await?;
        env.sandboxes.lock().expect("not poisoned").push(info.id.clone());
        assert_eq!(info.netns_path, None);
        let mut ev = env.rt.events();
        let id = env.run(&info.id, container("main", &["readlink", "/proc/self/ns/net"])).await?;
        assert_eq!(env.wait_exit(&mut ev, &id).await?.exit_code, Some(0));
        let host = std::fs::read_link("/proc/self/ns/net")?;
        assert_eq!(env.log_text(&id).await?.trim(), host.to_string_lossy());
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn a_dead_shim_makes_its_sandbox_not_ready_and_removable() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let sb = env.sandbox("deadshim").await?;
        let id = env.run(&sb, container("main", &["sleep", "1000"])).await?;
        let netns = env.rt.sandbox_status(&sb).await?.netns_path.context("netns")?;
        let shim = env.rt.sandbox_status(&sb).await?.shim_pid.context("shim pid")?;
        let mut ev = env.rt.events();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let RuntimeEvent::SandboxNotReady { id } = ev.recv().await? {
                    if id == sb {
                        return anyhow::Ok(());
                    }
                }
            }
        })
        .await??;
        assert_eq!(env.rt.sandbox_status(&sb).await?.state, SandboxState::NotReady);
        assert_eq!(env.rt.container_status(&id).await?.state, ContainerState::Unknown);
        assert!(env.rt.start_container(&id).await.is_err());
        env.rt.remove_sandbox(&sb).await?;
        assert!(!netns.exists(), "the netns pin is left");
        assert!(env.rt.list_sandboxes().await?.is_empty());
        assert!(env.rt.container_status(&id).await.is_err());
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn removing_an_old_sandbox_of_a_pod_leaves_its_successor_running() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let env = env().await?;
        let p = pod("recreated");
        let old = env.rt.create_sandbox(p.clone()).await?.id;
        env.sandboxes.lock().expect("not poisoned").push(old.clone());
        let a = env.run(&old, container("main", &["sleep", "1000"])).await?;
        env.rt.stop_sandbox(&old).await?;
        let new = env.rt.create_sandbox(p).await?.id;
        env.sandboxes.lock().expect("not poisoned").push(new.clone());
        let b = env.run(&new, container("main", &["sleep", "1000"])).await?;
        env.rt.remove_sandbox(&old).await?;
        let st = env.rt.container_status(&b).await?;
        assert_eq!(st.state, ContainerState::Running, "the successor's container was hurt");
        assert!(Path::new(&format!("/proc/{}", st.pid.context("pid")?)).exists());
        assert_eq!(env.rt.sandbox_status(&new).await?.state, SandboxState::Ready);
        assert!(env.rt.container_status(&a).await.is_err());
        Ok(())
    })
    .expect("test body failed");
}

/// The "agent" of `restarted_runtime_readopts_running_containers`: run in a child process
/// that the test kills with SIGKILL. Does nothing unless started that way.
#[test]
#[ignore = "helper process of restarted_runtime_readopts_running_containers"]
fn agent_child_process() {
    let Ok(dir) = std::env::var("KEELSON_TEST_AGENT_DIR") else { return };
    let base = std::env::var("KEELSON_TEST_AGENT_CGROUP").unwrap_or_default();
    block_on(async move {
        let dir = PathBuf::from(dir);
        let (cfg, _) = runtime_config(&dir, &base)?;
        let rt = ShimRuntime::new(cfg, Arc::new(NoNetwork)).await?;
        let rootfs = dir.join("rootfs");
        let image = ContainerImage {
            reference: "keelson.test/busybox:latest".into(),
            config: oci_spec::image::Config::default(),
            rootfs: Rootfs::Directory(rootfs),
        };
        let sb = rt.create_sandbox(pod("restart")).await?.id;
        let stays =
            rt.create_container(&sb, container("stays", &["sleep", "1000"]), image.clone()).await?;
        rt.start_container(&stays).await?;
        let dies = rt.create_container(&sb, container("dies", &["sleep", "1000"]), image).await?;
        rt.start_container(&dies).await?;
        let s1 = rt.container_status(&stays).await?.pid.context("pid")?;
        let s2 = rt.container_status(&dies).await?.pid.context("pid")?;
        std::fs::write(dir.join("ids.tmp"), format!("{sb} {stays} {s1} {dies} {s2}\n"))?;
        std::fs::rename(dir.join("ids.tmp"), dir.join("ids"))?;
        // Wait to be killed.
        std::future::pending::<()>().await;
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn restarted_runtime_readopts_running_containers() {
    require!(Tier::Privileged, need_root());
    block_on(async {
        let dir = tempfile::tempdir()?;
        let base = format!("keelson-test-{}-{:x}", std::process::id(), rand_u32());
        busybox_rootfs(dir.path())?;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["--exact", "agent_child_process", "--ignored", "--nocapture"])
            .env("KEELSON_TEST_AGENT_DIR", dir.path())
            .env("KEELSON_TEST_AGENT_CGROUP", &base)
            .spawn()?;
        let ids_file = dir.path().join("ids");
        let t0 = std::time::Instant::now();
        while !ids_file.exists() {
            if let Some(st) = child.try_wait()? {
                bail!("agent child exited early: {st}");
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                bail!("agent child did not create its containers in time");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ids = std::fs::read_to_string(&ids_file)?;
        let f: Vec<&str> = ids.split_whitespace().collect();
        let (sb, stays, stays_pid, dies, dies_pid): (
            SandboxId,
            ContainerId,
            i32,
            ContainerId,
            i32,
        ) = (f[0].parse()?, f[1].parse()?, f[2].parse()?, f[3].parse()?, f[4].parse()?);
        // kill -9 the agent; then one container dies while nobody watches.
        child.kill()?;
        child.wait()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(dies_pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;

        let (cfg, cgroup_base) = runtime_config(dir.path(), &base)?;
        let rt = ShimRuntime::new(cfg.clone(), Arc::new(NoNetwork)).await?;
        let env = Env {
            dir,
            cfg,
            rt: rt.clone(),
            rootfs: PathBuf::new(),
            cgroup_base,
            sandboxes: Arc::new(std::sync::Mutex::new(vec![sb.clone()])),
        };
        let sbs = rt.list_sandboxes().await?;
        assert_eq!(sbs.len(), 1);
        assert_eq!(sbs[0].id, sb);
        assert_eq!(sbs[0].state, SandboxState::Ready);
        let mut ev = rt.events();
        let st = rt.container_status(&stays).await?;
        assert_eq!(st.state, ContainerState::Running);
        assert_eq!(st.pid, Some(stays_pid), "the running container was not restarted");
        assert!(Path::new(&format!("/proc/{stays_pid}")).exists());
        let st = env.wait_exit(&mut ev, &dies).await?;
        assert_eq!(
            (st.exit_code, st.signal),
            (Some(137), Some(9)),
            "the exit during the outage was recorded"
        );
        let all = rt.list_containers(Some(&sb)).await?;
        assert_eq!(all.len(), 2);
        // The new runtime drives the old sandbox normally.
        rt.stop_container(&stays, StopOptions { grace_period: Duration::from_secs(5) }).await?;
        assert_eq!(rt.container_status(&stays).await?.state, ContainerState::Exited);
        let _ = &env.cfg;
        Ok(())
    })
    .expect("test body failed");
}
