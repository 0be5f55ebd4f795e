//! The driver of `bench/static-pods`: a standalone node (`keelson agent --manifests DIR`)
//! against `podman run -d`, side by side in one run, both running the same busybox image with a
//! network (our bridge and CNI library; podman's default CNI network) and the same command.
//!
//! `bench-static-pods --keelson PATH --shim PATH --image DIR --docker-archive FILE --work DIR`
//!
//! It first moves itself into a network and a private mount namespace of its own, so both
//! bridges, their veths and rules, every mount and every pinned namespace live in throw-away
//! namespaces; podman runs in a child mount namespace where the cgroup v2 mount looks empty
//! (crun refuses this machine's hybrid layout otherwise, see TOOLCHAIN.md) and its CNI state
//! directory is a scratch one. Nothing is sent anywhere.
//!
//! Figures:
//! - one at a time (`--pods` of each, alternating): ours from the manifest renamed into the
//!   directory until the agent's node API reports the pod Running with every container ready
//!   (polled every `--poll-ms`, which only ever adds to our figure); podman's from spawning
//!   `podman run -d` until it exits (it returns once the container runs);
//! - `--pods` at once: all manifests written, until all run; all `podman run -d` spawned at
//!   once, until the last exits;
//! - memory and CPU, idle: the agent's PSS before any pod, then with `--total` pods the
//!   agent's and the shims' PSS (each shim's mean), conmon's for podman's, and the CPU the
//!   agent plus its shims (podman: its conmons) use over `--idle-secs`.
//!
//! Every exit path removes the pods (manifests deleted, then the agent stopped; podman's
//! containers removed), and as a last resort kills what is left in our cgroup tree.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use keelson_agentctl::client::Client;
use keelson_tests::bench::{isolate, report};

#[derive(Debug, Parser)]
struct Args {
    /// The `keelson` binary.
    #[arg(long)]
    keelson: PathBuf,
    /// The `keelson-shim` binary.
    #[arg(long)]
    shim: PathBuf,
    /// The busybox image as an OCI layout directory (what our manifests name).
    #[arg(long)]
    image: PathBuf,
    /// The same image as a `docker save` archive tagged `keelson.test/busybox:latest` (what
    /// podman loads).
    #[arg(long)]
    docker_archive: PathBuf,
    /// Scratch directory.
    #[arg(long)]
    work: PathBuf,
    /// Pods per side one at a time, and again at once.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Pods per side for the memory and idle CPU figures.
    #[arg(long, default_value_t = 110)]
    total: usize,
    /// How often the node API is asked whether a pod runs.
    #[arg(long, default_value_t = 2)]
    poll_ms: u64,
    /// Length of each idle CPU sample.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
}

const NODE: &str = "bench";
const PODMAN_IMAGE: &str = "keelson.test/busybox:latest";

fn main() -> Result<()> {
    let args = Args::parse();
    // Before any thread exists: unshare(CLONE_NEWNS) refuses a threaded process.
    isolate()?;
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let podman = Podman::new(&work.join("podman"))?;
    podman.load(&args.docker_archive)?;
    let mut node = Node::start(&args, &work)?;
    let client = rt.block_on(node.connect())?;
    let outcome = run(&args, &rt, &client, &mut node, &podman);
    // Clean up before reporting an error: pods off, agent stopped, podman's containers gone.
    let stopped = rt.block_on(node.stop(&client));
    drop(client);
    podman.remove_all();
    outcome?;
    stopped
}

fn run(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    node: &mut Node,
    podman: &Podman,
) -> Result<()> {
    let shim = args.shim.canonicalize().context("the shim binary")?;
    let conmon = Path::new("/usr/bin/conmon");

    // Idle with no pods (after start-up settles).
    std::thread::sleep(Duration::from_secs(3));
    let idle = Duration::from_secs(args.idle_secs);
    let agent_pss_empty = pss_kib(node.pid())?;
    let agent_cpu_empty = cpu_percent(&[node.pid()], idle)?;

    // Warm-up, outside the figures: the image is imported and the bridges made once.
    rt.block_on(node.run_pods(client, &["warm".to_string()], args.poll_ms))?;
    podman.run("warm")?;
    let mut up = 1;

    // One at a time, alternating which side goes first.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..args.pods {
        let name = format!("one{i:03}");
        let mut ran_ours =
            || rt.block_on(node.run_pods(client, std::slice::from_ref(&name), args.poll_ms));
        if i % 2 == 0 {
            ours.push(ran_ours()?);
            theirs.push(podman.run(&name)?);
        } else {
            theirs.push(podman.run(&name)?);
            ours.push(ran_ours()?);
        }
    }
    up += args.pods;
    report("static_pod_start", &ours, Some(("podman", &theirs)));

    // All at once.
    let names: Vec<String> = (0..args.pods).map(|i| format!("many{i:03}")).collect();
    let ours_many = rt.block_on(node.run_pods(client, &names, args.poll_ms))?;
    let theirs_many = podman.run_at_once(&names)?;
    up += args.pods;
    println!("BENCH static_pods_{}_at_once_keelson {:.2} ms", args.pods, ms(ours_many));
    println!("BENCH static_pods_{}_at_once_podman {:.2} ms", args.pods, ms(theirs_many));
    println!(
        "BENCH static_pods_{}_at_once_ratio_vs_podman {:.2} x",
        args.pods,
        ours_many.as_secs_f64() / theirs_many.as_secs_f64()
    );

    // Fill up to the total, then idle.
    if up < args.total {
        let rest: Vec<String> = (up..args.total).map(|i| format!("fill{i:03}")).collect();
        rt.block_on(node.run_pods(client, &rest, args.poll_ms))?;
        podman.run_at_once(&rest)?;
    }
    let pods = args.total.max(up);
    std::thread::sleep(Duration::from_secs(5));
    let shims = pids_of(&shim)?;
    ensure!(shims.len() >= pods, "{} shims for {pods} pods", shims.len());
    let conmons = pids_of(conmon)?;
    let agent_pss_full = pss_kib(node.pid())?;
    let shims_pss: u64 = shims.iter().map(|&p| pss_kib(p)).sum::<Result<u64>>()?;
    let conmons_pss: u64 = conmons.iter().map(|&p| pss_kib(p)).sum::<Result<u64>>()?;
    let mut ours_pids = shims.clone();
    ours_pids.push(node.pid());
    let ours_cpu = cpu_percent(&ours_pids, idle)?;
    let theirs_cpu = cpu_percent(&conmons, idle)?;

    println!("BENCH static_pods_idle_pods {pods} pods");
    println!("BENCH agent_pss_idle_0_pods {:.1} MB", mib(agent_pss_empty));
    println!("BENCH agent_cpu_idle_0_pods {agent_cpu_empty:.2} %");
    println!("BENCH agent_pss_idle_{pods}_pods {:.1} MB", mib(agent_pss_full));
    println!("BENCH shim_pss_idle_mean {:.2} MB", mib(shims_pss) / shims.len() as f64);
    println!(
        "BENCH agent_and_shims_pss_idle_{pods}_pods {:.1} MB",
        mib(agent_pss_full + shims_pss)
    );
    println!("BENCH agent_and_shims_cpu_idle_{pods}_pods {ours_cpu:.2} %");
    if !conmons.is_empty() {
        println!(
            "BENCH podman_conmon_pss_idle_mean {:.2} MB",
            mib(conmons_pss) / conmons.len() as f64
        );
        println!("BENCH podman_conmons_pss_idle_{pods}_pods {:.1} MB", mib(conmons_pss));
        println!("BENCH podman_conmons_cpu_idle_{pods}_pods {theirs_cpu:.2} %");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The agent: a `keelson agent` child process with every directory under `work`.
struct Node {
    child: Option<Child>,
    manifests: PathBuf,
    staging: PathBuf,
    socket: PathBuf,
    image: PathBuf,
    cgroup_base: String,
    started: HashSet<String>,
}

impl Node {
    fn start(args: &Args, work: &Path) -> Result<Node> {
        let d = |name: &str| work.join("node").join(name);
        let manifests = d("manifests");
        let staging = d("staging");
        for dir in [&manifests, &staging] {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(d("hosts"), "127.0.0.1 localhost\n")?;
        std::fs::write(d("resolv.conf"), "nameserver 127.0.0.53\n")?;
        let socket = d("agent.sock");
        let cgroup_base = format!("keelson-bench-{}", std::process::id());
        let path = |p: PathBuf| p.into_os_string();
        let child = Command::new(&args.keelson)
            .arg("agent")
            .arg("--manifests")
            .arg(&manifests)
            .args(["--state-dir".into(), path(d("state"))])
            .args(["--data-dir".into(), path(d("data"))])
            .args(["--run-dir".into(), path(d("run"))])
            .args(["--log-root".into(), path(d("logs"))])
            .args(["--hosts-file".into(), path(d("hosts"))])
            .args(["--resolv-conf".into(), path(d("resolv.conf"))])
            .args(["--api-socket".into(), path(socket.clone())])
            .args(["--pki-dir".into(), path(d("pki"))])
            .args(["--agentctl-config".into(), path(d("agentctl.yaml"))])
            .args(["--network-state-dir".into(), path(d("cni"))])
            .args(["--pod-cidr", "10.77.0.0/24", "--node-name", NODE, "--node-ip", "127.0.0.1"])
            .args(["--cgroup-base", &cgroup_base])
            .arg("--shim")
            .arg(&args.shim)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d("agent.log"))?)
            .spawn()
            .context("start keelson agent")?;
        Ok(Node {
            child: Some(child),
            manifests,
            staging,
            socket,
            image: args.image.canonicalize().context("the image layout")?,
            cgroup_base,
            started: HashSet::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    async fn connect(&mut self) -> Result<Client> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "the agent exited at start-up ({st}); see its log next to {}",
                    self.socket.display()
                );
            }
            if self.socket.exists() {
                if let Ok(c) = Client::connect_unix(&self.socket).await {
                    if c.health().await.is_ok() {
                        return Ok(c);
                    }
                }
            }
            ensure!(Instant::now() < deadline, "the agent's node API did not come up in 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes one manifest per name (each atomically: written aside, renamed in), then waits
    /// until all those pods run with every container ready; returns the time from the first
    /// rename to the last pod seen running.
    async fn run_pods(
        &mut self,
        client: &Client,
        names: &[String],
        poll_ms: u64,
    ) -> Result<Duration> {
        let mut staged = Vec::with_capacity(names.len());
        for name in names {
            let file = format!("{name}.yaml");
            let aside = self.staging.join(&file);
            std::fs::write(&aside, self.manifest(name))?;
            staged.push((aside, self.manifests.join(&file)));
        }
        let start = Instant::now();
        for (aside, into) in staged {
            std::fs::rename(&aside, &into)?;
        }
        let mut waiting: HashSet<String> = names.iter().map(|n| format!("{n}-{NODE}")).collect();
        self.started.extend(waiting.iter().cloned());
        let deadline = start + Duration::from_secs(120);
        loop {
            let list = client.list_pods().await?;
            for p in &list.pods {
                if p.phase == "Running"
                    && p.total_containers > 0
                    && p.ready_containers == p.total_containers
                {
                    waiting.remove(&p.name);
                }
            }
            if waiting.is_empty() {
                return Ok(start.elapsed());
            }
            if let Some(e) = list.manifest_errors.first() {
                bail!("manifest {}: {}", e.path, e.message);
            }
            ensure!(Instant::now() < deadline, "pods not running after 120 s: {waiting:?}");
            tokio::time::sleep(Duration::from_millis(poll_ms)).await;
        }
    }

    fn manifest(&self, name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, \"3600\"]\n",
            self.image.display()
        )
    }

    /// Removes every manifest, waits for the pods to go, then stops the agent; whatever is
    /// left in our cgroup tree after that is killed.
    async fn stop(&mut self, client: &Client) -> Result<()> {
        let mut outcome = Ok(());
        if let Ok(entries) = std::fs::read_dir(&self.manifests) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match client.list_pods().await {
                Ok(l) if l.pods.is_empty() => break,
                Ok(l) if Instant::now() > deadline => {
                    outcome = Err(anyhow::anyhow!(
                        "{} pods still up 120 s after their manifests went",
                        l.pods.len()
                    ));
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    outcome = Err(anyhow::Error::new(e).context("list pods while stopping"));
                    break;
                }
            }
        }
        self.terminate();
        outcome
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // The last resort: what the agent did not stop dies with our cgroup tree.
        if let Ok(setup) = keelson_runtime::cgroup::detect_host() {
            if let Some(root) = setup.v2_root() {
                let base = root.join(&self.cgroup_base);
                if base.exists() {
                    let _ = std::fs::write(base.join("cgroup.kill"), "1");
                    remove_cgroup_tree(&base);
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Removes a cgroup directory tree, children first (cgroup directories hold only control
/// files, which `rmdir` takes with them).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// podman with its storage, run directory, network configuration and CNI state under one
/// scratch directory, run in a mount namespace of its own (held by a keeper process).
struct Podman {
    dir: PathBuf,
    keeper: Child,
    mnt: OwnedFd,
    /// `/var/lib/cni` did not exist before (our mount point over it): removed at the end.
    made_cni_dir: bool,
}

impl Podman {
    fn new(dir: &Path) -> Result<Podman> {
        std::fs::create_dir_all(dir.join("cni"))?;
        std::fs::create_dir_all(dir.join("net.d"))?;
        std::fs::write(dir.join("empty"), "")?;
        // No CAP_SYS_RESOURCE here: ulimits within the hard limits; no systemd: cgroupfs.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )?;
        let made_cni_dir = !Path::new("/var/lib/cni").exists();
        std::fs::create_dir_all("/var/lib/cni").context("create /var/lib/cni")?;
        let script = format!(
            "set -e\n\
             if [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then\n\
               mount --bind {d}/empty /sys/fs/cgroup/unified/cgroup.controllers\n\
             fi\n\
             mount --bind {d}/cni /var/lib/cni\n\
             echo ready\n\
             exec sleep infinity\n",
            d = dir.display()
        );
        let mut keeper = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .context("start podman's mount namespace")?;
        let mut ready = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(keeper.stdout.take().context("keeper stdout")?)
            .read_line(&mut ready)?;
        if ready.trim() != "ready" {
            let _ = keeper.kill();
            bail!("podman's mount namespace could not be prepared");
        }
        let mnt = std::fs::File::open(format!("/proc/{}/ns/mnt", keeper.id()))?.into();
        Ok(Podman { dir: dir.to_owned(), keeper, mnt, made_cni_dir })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        let d = &self.dir;
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--network-config-dir")
            .arg(d.join("net.d"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let fd = self.mnt.as_fd().as_raw_fd();
        // SAFETY: between fork and exec only setns(2) runs, which is async-signal-safe; the
        // descriptor stays open in the parent for as long as `self` lives.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    fn load(&self, archive: &Path) -> Result<()> {
        let st = self.command().args(["load", "-q", "-i"]).arg(archive).status()?;
        ensure!(st.success(), "podman load {}: {st}", archive.display());
        Ok(())
    }

    fn run_cmd(&self, name: &str) -> Command {
        let mut cmd = self.command();
        cmd.args(["run", "-d", "--name", name, PODMAN_IMAGE, "sleep", "3600"]);
        cmd
    }

    /// `podman run -d`; returns its wall time (it exits once the container runs).
    fn run(&self, name: &str) -> Result<Duration> {
        let start = Instant::now();
        let st = self.run_cmd(name).status()?;
        let took = start.elapsed();
        ensure!(st.success(), "podman run {name}: {st}");
        Ok(took)
    }

    /// One `podman run -d` per name, all spawned at once; returns the time until the last
    /// exits.
    fn run_at_once(&self, names: &[String]) -> Result<Duration> {
        let start = Instant::now();
        let children: Vec<_> = names.iter().map(|n| self.run_cmd(n).spawn()).collect();
        let mut failed = Vec::new();
        for (child, name) in children.into_iter().zip(names) {
            if !child?.wait()?.success() {
                failed.push(name.clone());
            }
        }
        let took = start.elapsed();
        ensure!(failed.is_empty(), "podman run failed for {failed:?}");
        Ok(took)
    }

    fn remove_all(&self) {
        let _ = self.command().args(["rm", "-f", "-a", "-t", "0"]).status();
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.remove_all();
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
        if self.made_cni_dir {
            let _ = std::fs::remove_dir("/var/lib/cni");
        }
    }
}

/// Processes whose executable is `exe`.
fn pids_of(exe: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == exe) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// A process's proportional set size, in KiB.
fn pss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read the smaps of {pid}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no Pss line for {pid}"))
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok()).context("stat field");
    Ok(field(14)? + field(15)?)
}

/// The CPU `pids` use together over `window`, in percent of one core.
fn cpu_percent(pids: &[u32], window: Duration) -> Result<f64> {
    let sum = |pids: &[u32]| pids.iter().map(|&p| cpu_ticks(p)).sum::<Result<u64>>();
    let before = sum(pids)?;
    std::thread::sleep(window);
    let after = sum(pids)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(after.saturating_sub(before) as f64 / hz / window.as_secs_f64() * 100.0)
}
