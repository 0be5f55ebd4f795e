//! VM tier: issue 2's resource-limit proof with real containers run by Keelson's runtime.
//!
//! `tests/tests/vm.rs` proves that the guest kernel enforces `memory.max`, `cpu.max` and
//! `pids.max` for plain processes. These tests prove that Keelson applies them to containers:
//! each boots a VM (pure cgroup v2, limits on) with the `keelson-shim` binary, the project's
//! busybox OCI layout and the `overlay` module; inside, it imports the image into an
//! [`ImageStore`] on tmpfs, starts a [`ShimRuntime`] with the default layout (`keelson/`), creates
//! a sandbox and containers with `Resources` limits, and checks what the kernel did and what the
//! runtime reported (exit status, OOM flag, events, stats), against the cgroup files of the
//! container's own cgroup, which is checked to be the one its process runs in.
//!
//! Run: `KEELSON_TEST_TIERS=vm cargo test -p keelson-tests --test vm_runtime --
//! --test-threads=1`. The shim is built on first use (`cargo build -p keelson-shim`, a no-op
//! when fresh) and the test images must exist (`cargo xtask test-images --out DIR`, found
//! through `KEELSON_TEST_IMAGES`). On failure the guest prints the container's log, its cgroup
//! files and the shim's diagnostics before the test fails; the serial log is kept.
//!
//! The guest's `/` is the initramfs, on which `pivot_root(2)` fails (`EINVAL`: the root mount
//! has no parent), and libcontainer pivots into every container's root. Before the runtime
//! starts, the test moves itself onto a recursive bind mount of `/` (see [`enter_bind_root`]),
//! as an OS booting from an initramfs switches to a real root first.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use keelson_runtime::api::{
    ContainerImage, ContainerState, ContainerStatus, LogOptions, Rootfs, Runtime, RuntimeEvent,
};
use keelson_runtime::cgroup::{detect_host, CgroupSetup, Layout, RealCgroupFs};
use keelson_runtime::config::{
    ContainerConfig, ContainerId, PodMeta, Resources, SandboxConfig, SandboxId, StopOptions,
};
use keelson_runtime::image::{Image, ImageStore, ImportOptions};
use keelson_runtime::network::NoNetwork;
use keelson_runtime::sandbox::{CgroupConfig, RuntimeConfig, ShimRuntime};
use keelson_tests::vm::{self, VmOptions};
use keelson_tests::{images, require, vm_test, Tier};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

/// Where the shim is in the guest.
const GUEST_SHIM: &str = "/usr/bin/keelson-shim";
/// Where the test images are in the guest (`KEELSON_TEST_IMAGES` there).
const GUEST_IMAGES: &str = "/images";
const IMAGE_NAME: &str = "keelson.test/busybox:latest";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

// --- host side ----------------------------------------------------------------------------------

/// Builds `keelson-shim` once per test process (a no-op when it is fresh) and returns its path,
/// or `$KEELSON_SHIM`.
fn shim_binary() -> Result<PathBuf, String> {
    static SHIM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SHIM.get_or_init(|| {
        if let Some(p) = std::env::var_os("KEELSON_SHIM") {
            return Ok(PathBuf::from(p));
        }
        let shim = vm::target_binary("keelson-shim").map_err(|e| vm::error_chain(&e))?;
        // target/<profile>/keelson-shim
        let profile_dir = shim.parent().ok_or("odd target binary path")?;
        let target = profile_dir.parent().ok_or("odd target binary path")?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "keelson-shim"]).env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().map_err(|e| format!("run cargo: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build -p keelson-shim: {st}"));
        }
        Ok(shim)
    })
    .clone()
}

/// `None` when the shim is built (building it if needed), else why not.
fn need_shim() -> Option<String> {
    shim_binary().err()
}

/// The VM of every test here: the shim, the busybox OCI layout, overlayfs.
fn vm_options() -> VmOptions {
    let shim = shim_binary().expect("checked by need_shim");
    VmOptions::default()
        .timeout(Duration::from_secs(300))
        .module("overlay")
        .binary(shim, GUEST_SHIM)
        .tree(images::oci_layout(), &format!("{GUEST_IMAGES}/busybox-oci"))
        .env("KEELSON_TEST_IMAGES", GUEST_IMAGES)
}

/// On the host: skips unless the tier and everything it needs are there, then runs the calling
/// test in a VM and returns from it. In the guest: does nothing.
macro_rules! in_vm_with_runtime {
    () => {
        if !vm::in_vm() {
            require!(Tier::Vm, vm::available(), images::need_test_images(), need_shim());
        }
        vm_test!(vm_options());
    };
}

// --- guest side ---------------------------------------------------------------------------------

/// Moves this process onto a recursive bind mount of `/`, once.
///
/// The guest runs from the initramfs, whose root mount has no parent: `pivot_root(2)` refuses
/// to pivot away from it (`EINVAL`), and libcontainer pivots into every container's root. A
/// bind mount of `/` mounted on a directory of it does have a parent; after `chroot` into it
/// every path is the same, and the container's pivot works. `/proc/self/mountinfo` then shows
/// the bind mount's copies (`/sys/fs/cgroup` among them) at their usual places.
fn enter_bind_root() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        use nix::mount::{mount, MsFlags};
        if !vm::in_vm() {
            return Err("refusing to chroot outside the test VM".into());
        }
        let new_root = Path::new("/.bindroot");
        std::fs::create_dir_all(new_root).map_err(|e| format!("mkdir {new_root:?}: {e}"))?;
        mount(Some("/"), new_root, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| format!("rbind / on {new_root:?}: {e}"))?;
        nix::unistd::chdir(new_root).map_err(|e| format!("chdir: {e}"))?;
        nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
        Ok(())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A runtime, an image store with the busybox image, and one sandbox, inside the VM.
struct Guest {
    dir: tempfile::TempDir,
    rt: ShimRuntime,
    store: ImageStore,
    image: Image,
    sandbox: SandboxId,
    pod_uid: String,
    /// Containers created, for the diagnostics.
    containers: std::sync::Mutex<Vec<ContainerId>>,
}

async fn guest() -> Result<Guest> {
    ensure!(vm::in_vm(), "these tests run only inside the test VM");
    enter_bind_root()?;
    let setup = detect_host().context("detect cgroup layout")?;
    ensure!(
        setup == CgroupSetup::Unified { root: CGROUP_ROOT.into() },
        "the guest must have a pure cgroup v2 hierarchy at {CGROUP_ROOT}, found {setup:?}"
    );
    ensure!(
        setup.limits_enabled(&RealCgroupFs::new(CGROUP_ROOT)),
        "the guest's cgroup root offers no cpu, memory and pids: {:?}",
        read(Path::new(CGROUP_ROOT), "cgroup.controllers")
    );
    let dir = tempfile::Builder::new().prefix("vmrt-").tempdir_in("/tmp")?;
    let cfg = RuntimeConfig {
        shim_path: PathBuf::from(GUEST_SHIM),
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
        netns_dir: dir.path().join("netns"),
        log_root: dir.path().join("logs"),
        cgroup: Some(CgroupConfig { setup, layout: Layout::default() }),
        shim_log: Some(dir.path().join("shim.log")),
    };
    let rt = ShimRuntime::new(cfg, Arc::new(NoNetwork)).await?;
    let t = Instant::now();
    let store = ImageStore::open(dir.path().join("images"))?;
    let image = store
        .import(&images::oci_layout(), &ImportOptions::named(IMAGE_NAME), None)
        .with_context(|| format!("import {}", images::oci_layout().display()))?;
    println!("image imported in {:?}", t.elapsed());
    let pod_uid = format!("{:08x}-0000-4000-8000-000000000001", std::process::id());
    let t = Instant::now();
    let sandbox = rt.create_sandbox(pod_config("limits", &pod_uid)).await?.id;
    println!("sandbox created in {:?}", t.elapsed());
    Ok(Guest { dir, rt, store, image, sandbox, pod_uid, containers: Default::default() })
}

fn pod_config(name: &str, uid: &str) -> SandboxConfig {
    SandboxConfig::new(PodMeta::new(name, "default", uid))
}

fn container_config(name: &str, script: &str, resources: Resources) -> ContainerConfig {
    let command = vec!["sh".into(), "-c".into(), script.into()];
    ContainerConfig {
        resources,
        // Every script waits for a line on stdin before it does its work, so the test can look
        // at the running container first.
        stdin: true,
        stdin_once: true,
        ..ContainerConfig::new(name, IMAGE_NAME, command)
    }
}

/// A cgroup file, trimmed.
fn read(dir: &Path, file: &str) -> Result<String> {
    let p = dir.join(file);
    Ok(std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?.trim().into())
}

/// A `key value` field of a flat-keyed cgroup file (`memory.events`, `cpu.stat`, ...).
fn field(dir: &Path, file: &str, key: &str) -> Result<u64> {
    let text = read(dir, file)?;
    keelson_runtime::cgroup::stats::flat_keyed(&text, key)
        .with_context(|| format!("no {key} in {}/{file}: {text:?}", dir.display()))
}

impl Guest {
    /// The pod's cgroup, as DESIGN.md lays it out (the sandbox config's default QoS class is
    /// Burstable).
    fn pod_cgroup(&self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(format!("keelson/burstable/pod{}", self.pod_uid))
    }

    /// The cgroup a container of this pod must be in.
    fn container_cgroup(&self, id: &ContainerId) -> PathBuf {
        self.pod_cgroup().join(id.as_str())
    }

    /// Creates a container on its own overlay rootfs from the imported image and starts it.
    /// Its script is blocked on `read` until [`Guest::release`].
    async fn start(&self, config: ContainerConfig) -> Result<ContainerId> {
        let mount = self.store.prepare_rootfs(&self.image, &config.name)?;
        let image = ContainerImage {
            reference: self.image.name().to_owned(),
            config: self.image.container_config(),
            rootfs: Rootfs::Overlay {
                lowerdirs: mount.lowerdirs.clone(),
                upperdir: mount.upperdir.clone(),
                workdir: mount.workdir.clone(),
            },
        };
        let t = Instant::now();
        let id = self.rt.create_container(&self.sandbox, config, image).await?;
        self.containers.lock().expect("not poisoned").push(id.clone());
        self.rt.start_container(&id).await?;
        println!("container {id} created and started in {:?}", t.elapsed());
        Ok(id)
    }

    /// Writes the line the container's script waits for and closes its stdin.
    async fn release(&self, id: &ContainerId) -> Result<()> {
        let mut a = self.rt.attach(id).await?;
        let mut stdin = a.stdin.take().context("the container has no stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.shutdown().await?;
        Ok(())
    }

    /// The running container's init pid, checked to be in the container's cgroup (its
    /// `/proc/<pid>/cgroup` names it, and the cgroup lists the pid).
    async fn check_placement(&self, id: &ContainerId) -> Result<i32> {
        let st = self.rt.container_status(id).await?;
        ensure!(st.state == ContainerState::Running, "{id} is not running: {st:?}");
        let pid = st.pid.context("a running container has a pid")?;
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let expected =
            format!("0::/{}", self.container_cgroup(id).strip_prefix(CGROUP_ROOT)?.display());
        ensure!(
            cg.trim() == expected,
            "container {id} (pid {pid}) runs in {cg:?}, expected {expected:?}"
        );
        let procs = read(&self.container_cgroup(id), "cgroup.procs")?;
        ensure!(
            procs.lines().any(|l| l == pid.to_string()),
            "cgroup.procs of {id} does not list its init {pid}: {procs:?}"
        );
        Ok(pid)
    }

    /// Waits until the container has exited and returns its status and the events seen for
    /// it (the receiver was subscribed before it started).
    async fn wait_exit(
        &self,
        events: &mut broadcast::Receiver<RuntimeEvent>,
        id: &ContainerId,
        timeout: Duration,
    ) -> Result<(ContainerStatus, Vec<RuntimeEvent>)> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => bail!("event stream of {id}: {e}"),
                Err(_) => bail!("container {id} did not exit within {timeout:?}"),
            };
            let ours = match &ev {
                RuntimeEvent::ContainerStarted { id: e, .. }
                | RuntimeEvent::ContainerExited { id: e, .. }
                | RuntimeEvent::ContainerOomKilled { id: e, .. } => e == id,
                _ => false,
            };
            if !ours {
                continue;
            }
            let exited = matches!(ev, RuntimeEvent::ContainerExited { .. });
            seen.push(ev);
            if exited {
                break;
            }
        }
        Ok((self.rt.container_status(id).await?, seen))
    }

    async fn log_text(&self, id: &ContainerId) -> Result<String> {
        keelson_tests::log_text(&self.rt, id).await
    }

    /// Follows the log until a line starting with `prefix` appears; returns the line.
    async fn await_line(
        &self,
        id: &ContainerId,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String> {
        let mut s = self.rt.logs(id, LogOptions { follow: true, tail: None }).await?;
        tokio::time::timeout(timeout, async {
            while let Some(e) = s.next().await {
                let line = String::from_utf8_lossy(&e?.content).into_owned();
                if line.starts_with(prefix) {
                    return Ok(line);
                }
            }
            bail!("the log of {id} ended without a line starting with {prefix:?}")
        })
        .await
        .with_context(|| format!("no line starting with {prefix:?} from {id} in {timeout:?}"))?
    }

    /// Prints what helps to understand a failure: each container's status, log and cgroup
    /// files, the pod's cgroup tree, and the shim's diagnostics.
    async fn dump(&self) {
        eprintln!("===== diagnostics =====");
        let ids = self.containers.lock().map(|v| v.clone()).unwrap_or_default();
        for id in ids {
            eprintln!("--- container {id}: {:?}", self.rt.container_status(&id).await);
            match self.log_text(&id).await {
                Ok(log) => eprintln!("--- log of {id}:\n{log}"),
                Err(e) => eprintln!("--- log of {id}: {e:#}"),
            }
            dump_cgroup(&self.container_cgroup(&id));
        }
        dump_cgroup(&self.pod_cgroup());
        for level in ["", "keelson", "keelson/burstable"] {
            let p = Path::new(CGROUP_ROOT).join(level);
            eprintln!(
                "{}/cgroup.subtree_control: {:?}",
                p.display(),
                read(&p, "cgroup.subtree_control")
            );
        }
        if let Ok(entries) = std::fs::read_dir(self.pod_cgroup()) {
            let names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            eprintln!("children of the pod cgroup: {names:?}");
        }
        match std::fs::read_to_string(self.dir.path().join("shim.log")) {
            Ok(log) => eprintln!("--- shim diagnostics:\n{log}"),
            Err(e) => eprintln!("--- no shim diagnostics: {e}"),
        }
        eprintln!("===== end of diagnostics =====");
    }

    async fn finish(self) -> Result<()> {
        self.rt.remove_sandbox(&self.sandbox).await?;
        ensure!(!self.pod_cgroup().exists(), "the pod cgroup is left after removal");
        Ok(())
    }
}

fn dump_cgroup(dir: &Path) {
    eprintln!("--- cgroup {}", dir.display());
    for f in [
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.events",
        "memory.max",
        "memory.swap.max",
        "memory.current",
        "memory.peak",
        "memory.events",
        "cpu.max",
        "cpu.weight",
        "cpu.stat",
        "pids.max",
        "pids.current",
        "pids.peak",
        "pids.events",
    ] {
        match std::fs::read_to_string(dir.join(f)) {
            Ok(v) => eprintln!("{f}: {}", v.trim().replace('\n', "; ")),
            Err(e) => eprintln!("{f}: ({e})"),
        }
    }
}

/// Runs a guest test body on a fresh runtime; on failure prints the diagnostics, then fails.
fn run_guest<F>(body: F)
where
    F: for<'a> FnOnce(&'a Guest) -> futures::future::BoxFuture<'a, Result<()>>,
{
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res: Result<()> = tokio_rt.block_on(async {
        let t = Instant::now();
        let g = guest().await.context("set up runtime, image and sandbox in the guest")?;
        println!("guest setup in {:?}", t.elapsed());
        let t = Instant::now();
        if let Err(e) = body(&g).await {
            g.dump().await;
            return Err(e);
        }
        println!("test body in {:?}", t.elapsed());
        g.finish().await
    });
    if let Err(e) = res {
        panic!("{e:#}");
    }
}

const MIB: u64 = 1 << 20;

/// `memory.max`: a container allocating 64 MiB under a 32 MiB limit is OOM-killed; the runtime
/// reports exit code 137 (SIGKILL) with the OOM flag and sends `ContainerOomKilled` and an
/// exit event marked OOM. The same allocation under 128 MiB succeeds (so the kill is the
/// limit's doing, not the VM's).
#[test]
fn container_memory_limit_is_enforced_and_oom_kill_reported_in_vm() {
    in_vm_with_runtime!();
    run_guest(|g| {
        Box::pin(async move {
            // dd reads 64 MiB of zeros into one buffer: anonymous memory, every page touched.
            let script = "read go; exec dd if=/dev/zero of=/dev/null bs=64M count=1";
            let limited = Resources { memory_limit_bytes: Some(32 * MIB), ..Default::default() };
            let roomy = Resources { memory_limit_bytes: Some(128 * MIB), ..Default::default() };
            let mut events = g.rt.events();
            let small = g.start(container_config("small", script, limited)).await?;
            let large = g.start(container_config("large", script, roomy)).await?;
            for (id, limit) in [(&small, 32 * MIB), (&large, 128 * MIB)] {
                g.check_placement(id).await?;
                let cg = g.container_cgroup(id);
                ensure!(read(&cg, "memory.max")? == limit.to_string(), "memory.max of {id}");
                ensure!(read(&cg, "memory.swap.max")? == "0", "memory.swap.max of {id}");
            }

            g.release(&small).await?;
            let (st, seen) = g.wait_exit(&mut events, &small, Duration::from_secs(60)).await?;
            println!("small: {st:?}\nevents: {seen:?}");
            ensure!(st.state == ContainerState::Exited, "{st:?}");
            ensure!(
                (st.exit_code, st.signal) == (Some(137), Some(9)),
                "the allocation past memory.max must end in SIGKILL (137): {st:?}"
            );
            ensure!(st.oom_killed, "the status does not say OOM-killed: {st:?}");
            ensure!(
                seen.iter().any(
                    |e| matches!(e, RuntimeEvent::ContainerOomKilled { id, .. } if *id == small)
                ),
                "no ContainerOomKilled event: {seen:?}"
            );
            ensure!(
                seen.iter().any(|e| matches!(
                    e,
                    RuntimeEvent::ContainerExited { id, exit, .. }
                        if *id == small && exit.oom_killed && exit.code == 137
                )),
                "no exit event with oom_killed and code 137: {seen:?}"
            );
            let cg = g.container_cgroup(&small);
            let kills = field(&cg, "memory.events", "oom_kill")?;
            ensure!(
                kills >= 1,
                "memory.events counts no OOM kill: {}",
                read(&cg, "memory.events")?
            );
            let stats = g.rt.container_stats(&small).await?.cgroup;
            ensure!(
                stats.memory_oom_kill == Some(kills),
                "container_stats reads another cgroup: {stats:?}, memory.events oom_kill {kills}"
            );
            ensure!(
                stats.memory_peak.is_some_and(|p| p <= 32 * MIB),
                "memory.peak above the limit: {stats:?}"
            );

            g.release(&large).await?;
            let (st, seen) = g.wait_exit(&mut events, &large, Duration::from_secs(60)).await?;
            println!("large: {st:?}\nevents: {seen:?}");
            ensure!(
                (st.exit_code, st.signal, st.oom_killed) == (Some(0), None, false),
                "the same allocation under 128 MiB must succeed: {st:?}\n{}",
                g.log_text(&large).await?
            );
            ensure!(
                !seen.iter().any(|e| matches!(e, RuntimeEvent::ContainerOomKilled { .. })),
                "OOM event for the container within its limit: {seen:?}"
            );
            let peak = g.rt.container_stats(&large).await?.cgroup.memory_peak.unwrap_or(0);
            ensure!(peak > 64 * MIB, "the roomy container did not use its 64 MiB: peak {peak}");
            println!("large: memory.peak {peak}");
            Ok(())
        })
    });
}

/// `cpu.max`: a container limited to 200 millicores gets `cpu.max` `20000 100000`; a busy loop
/// of 2 s wall time is throttled (`nr_throttled`, `throttled_usec`) and uses far less CPU than
/// the wall time, as `container_stats` reports from the container's own cgroup.
#[test]
fn container_cpu_limit_throttles_in_vm() {
    in_vm_with_runtime!();
    run_guest(|g| {
        Box::pin(async move {
            let script = "read go; timeout 2 sh -c 'while :; do :; done'; echo spun";
            let r = Resources { cpu_limit_millis: Some(200), ..Default::default() };
            let mut events = g.rt.events();
            let id = g.start(container_config("spin", script, r)).await?;
            g.check_placement(&id).await?;
            let cg = g.container_cgroup(&id);
            ensure!(read(&cg, "cpu.max")? == "20000 100000", "cpu.max of {id}");
            // The request defaults to the limit: 204 shares. libcgroups converts them to
            // cpu.weight; our pod cgroups use the same conversion, so the two must agree.
            let weight: u64 = read(&cg, "cpu.weight")?.parse()?;
            let ours = keelson_runtime::cgroup::convert::cpu_weight(Some(200));
            ensure!(weight == ours, "cpu.weight {weight} for a request of 200m, ours {ours}");
            let before = field(&cg, "cpu.stat", "usage_usec")?;
            let started = Instant::now();
            g.release(&id).await?;
            let (st, _) = g.wait_exit(&mut events, &id, Duration::from_secs(60)).await?;
            let wall = started.elapsed();
            ensure!(st.exit_code == Some(0), "{st:?}");
            // (busybox's timeout ends the loop with SIGTERM; the shell says "Terminated" on
            // stderr, in any order with stdout.)
            let log = g.log_text(&id).await?;
            ensure!(log.lines().any(|l| l == "spun"), "log: {log:?}");
            let stats = g.rt.container_stats(&id).await?.cgroup;
            println!("after {wall:?}: {stats:?}\ncpu.stat: {}", read(&cg, "cpu.stat")?);
            ensure!(
                stats.cpu_usage_usec == Some(field(&cg, "cpu.stat", "usage_usec")?)
                    && stats.cpu_nr_throttled == Some(field(&cg, "cpu.stat", "nr_throttled")?),
                "container_stats reads another cgroup than {}",
                cg.display()
            );
            ensure!(stats.cpu_nr_throttled.unwrap_or(0) > 0, "never throttled: {stats:?}");
            ensure!(stats.cpu_throttled_usec.unwrap_or(0) > 0, "no throttled time: {stats:?}");
            let used = Duration::from_micros(stats.cpu_usage_usec.unwrap_or(0) - before);
            ensure!(wall >= Duration::from_secs(2), "the loop ended early: {wall:?}");
            ensure!(
                used < wall * 2 / 5,
                "used {used:?} of CPU in {wall:?} wall time under a 20% quota"
            );
            println!("busy loop: {used:?} of CPU in {wall:?}");
            Ok(())
        })
    });
}

/// `pids.max`: a container limited to 8 tasks forks in a loop; once the cgroup holds 8 tasks
/// forks fail (`can't fork`), `pids.events` counts the refusals and `pids.peak` is 8. Also
/// checks the pod's cgroup layout: `keelson/burstable/pod<uid>/` with the leaves `shim`
/// (holding the shim) and one per container, and cpu, memory and pids enabled in
/// `cgroup.subtree_control` from the root down to the pod.
#[test]
fn container_pids_limit_refuses_forks_in_vm() {
    in_vm_with_runtime!();
    run_guest(|g| {
        Box::pin(async move {
            // The outer shell (1 task) runs an inner one (2) that starts sleeps until a fork
            // fails: 6 succeed. ash exits on a failed fork; the outer shell reports that and
            // waits, with the orphaned sleeps, until the test kills it.
            let script = "read go; \
                sh -c 'for i in $(seq 20); do echo forked $i; sleep 300 & done'; \
                echo inner-exit=$?; sleep 300";
            let r = Resources { pids_limit: Some(8), ..Default::default() };
            let id = g.start(container_config("forker", script, r)).await?;
            let pid = g.check_placement(&id).await?;
            let cg = g.container_cgroup(&id);
            ensure!(read(&cg, "pids.max")? == "8", "pids.max of {id}");

            // The layout DESIGN.md gives.
            let pod = g.pod_cgroup();
            for level in [
                "keelson",
                "keelson/burstable",
                pod.strip_prefix(CGROUP_ROOT)?.to_str().context("utf-8")?,
            ] {
                let dir = Path::new(CGROUP_ROOT).join(level);
                let enabled = read(&dir, "cgroup.subtree_control")?;
                for c in ["cpu", "memory", "pids"] {
                    ensure!(
                        enabled.split_whitespace().any(|e| e == c),
                        "{c} not enabled in {}/cgroup.subtree_control: {enabled:?}",
                        dir.display()
                    );
                }
            }
            let mut leaves: Vec<String> = std::fs::read_dir(&pod)?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            leaves.sort();
            let mut expected = vec!["shim".to_owned(), id.to_string()];
            expected.sort();
            ensure!(leaves == expected, "pod cgroup children {leaves:?}, expected {expected:?}");
            let shim_pid = g.rt.sandbox_status(&g.sandbox).await?.shim_pid.context("shim pid")?;
            let shim_procs = read(&pod.join("shim"), "cgroup.procs")?;
            ensure!(
                shim_procs == shim_pid.to_string(),
                "the shim leaf holds {shim_procs:?}, not the shim {shim_pid}"
            );
            ensure!(read(&pod, "cgroup.procs")?.is_empty(), "processes in the pod cgroup itself");
            println!("layout ok: {} with {leaves:?}; container init {pid}", pod.display());

            // Sample pids.current through the runtime while the container forks.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sampler = {
                let (rt, id, stop) = (g.rt.clone(), id.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut max = 0;
                    let mut samples = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Ok(s) = rt.container_stats(&id).await {
                            max = max.max(s.cgroup.pids_current.unwrap_or(0));
                            samples += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (max, samples)
                })
            };
            g.release(&id).await?;
            let exit_line = g.await_line(&id, "inner-exit=", Duration::from_secs(60)).await?;
            // Let the outer shell start its last sleep.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = g.rt.container_stats(&id).await?.cgroup.pids_current;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let (max, samples) = sampler.await?;
            let log = g.log_text(&id).await?;
            println!("log:\n{log}");
            println!("pids.current now {now:?}, max of {samples} samples {max}");
            ensure!(exit_line == "inner-exit=2", "the inner shell did not fail: {exit_line:?}");
            ensure!(log.contains("can't fork"), "no fork was refused: {log}");
            let forked: Vec<&str> = log.lines().filter(|l| l.starts_with("forked ")).collect();
            ensure!(
                forked.last() == Some(&"forked 7"),
                "2 shells + 6 sleeps fill pids.max 8, the 7th sleep's fork must fail: {forked:?}"
            );
            ensure!(
                field(&cg, "pids.events", "max")? >= 1,
                "pids.events: {}",
                read(&cg, "pids.events")?
            );
            // The kernel charges a fork before it compares with pids.max and takes the charge
            // back when it refuses it, so a sample can catch 9 for an instant (the shell forks
            // one at a time: never more). pids.peak counts only charges that were kept.
            ensure!(
                max <= 9 && now.is_some_and(|n| n <= 8),
                "pids.current above 8: max {max}, now {now:?}"
            );
            ensure!(max >= 7, "the sampler never saw the forks: max {max} in {samples} samples");
            if let Ok(peak) = read(&cg, "pids.peak") {
                ensure!(
                    peak == "8",
                    "pids.peak {peak}: the cgroup never reached, or exceeded, 8 tasks"
                );
            }
            g.rt.stop_container(&id, StopOptions { grace_period: Duration::from_secs(1) }).await?;
            let st = g.rt.container_status(&id).await?;
            ensure!(st.state == ContainerState::Exited, "{st:?}");
            Ok(())
        })
    });
}
