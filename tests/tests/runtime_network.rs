//! Privileged tests of the runtime with the real pod network: a [`ShimRuntime`] given
//! [`CniNetwork`] (the `cni/` library in process) as its pod network, as the agent runs it.
//! The shim creates and pins each sandbox's namespace; the runtime hands that path to the
//! network, which wires it to a bridge in a "host" namespace the test created (the network's
//! `host_netns`), so nothing touches the machine's root namespace. Containers are busybox.
//!
//! Run: `KEELSON_TEST_TIERS=privileged KEELSON_TEST_STRICT=1 cargo test -p keelson-tests
//! --test runtime_network` as root. Each test has its own state, netns, log and cgroup
//! directories (a tempdir and a `keelson-test-net-<n>` cgroup tree) and removes its sandboxes
//! and the host namespace on every exit path (a Drop guard).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keelson_agent::network::CniNetwork;
use keelson_cni::config::{IpRange, Mtu, NetworkConfig};
use keelson_cni::ipam::{AllocKey, Ipam};
use keelson_cni::netns::{self, Netns};
use keelson_cni::Attach;
use keelson_runtime::api::{
    ContainerImage, ContainerState, ContainerStatus, Rootfs, Runtime, RuntimeEvent,
};
use keelson_runtime::cgroup::{detect_host, Layout};
use keelson_runtime::config::{ContainerConfig, ContainerId, PodMeta, SandboxConfig, SandboxId};
use keelson_runtime::sandbox::{CgroupConfig, RuntimeConfig, ShimRuntime};
use keelson_tests::{need_root, require, Tier};

const NET: &str = "kt";

/// A busybox root filesystem.
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
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(root)
}

/// A network namespace pinned by the test; unpinned (so destroyed, with its links) on drop.
struct Pin(PathBuf);

impl Pin {
    fn create(path: PathBuf) -> Result<Pin> {
        netns::create(&path).with_context(|| format!("create netns {}", path.display()))?;
        Ok(Pin(path))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Err(e) = netns::remove(&self.0) {
            eprintln!("cannot remove netns pin {}: {e}", self.0.display());
        }
    }
}

/// Fields drop in order after `Env::drop` removed the sandboxes: the pins before the tempdir
/// holding them.
struct Env {
    net_cfg: NetworkConfig,
    net: Arc<CniNetwork>,
    rt: ShimRuntime,
    rootfs: PathBuf,
    cgroup_base: Option<PathBuf>,
    sandboxes: Arc<Mutex<Vec<SandboxId>>>,
    extra_netns: Vec<Pin>,
    host: Pin,
    dir: tempfile::TempDir,
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32)
}

fn range(subnet: &str) -> Vec<IpRange> {
    vec![IpRange {
        subnet: subnet.parse().expect("test subnet"),
        range_start: None,
        range_end: None,
        gateway: None,
    }]
}

/// A runtime whose pod network is a bridge in a new host namespace, with `subnets` (one range
/// set each).
async fn env(subnets: &[&str]) -> Result<Env> {
    let dir = tempfile::tempdir()?;
    let host = Pin::create(dir.path().join("host-netns"))?;
    let net_cfg = NetworkConfig {
        name: NET.into(),
        bridge: "keel0".into(),
        ranges: subnets.iter().map(|s| range(s)).collect(),
        mtu: Mtu::Auto { overlay: None },
        masquerade: None,
        hairpin: true,
        state_dir: dir.path().join("cni"),
        host_netns: Some(host.0.clone()),
    };
    let net = Arc::new(CniNetwork::new(net_cfg.clone())?);
    let base = format!("keelson-test-net-{}-{:x}", std::process::id(), rand_u32());
    let setup = detect_host().context("detect cgroup layout")?;
    let cgroup_base = setup.v2_root().map(|r| r.join(&base));
    let cfg = RuntimeConfig {
        shim_path: keelson_tests::bins::shim()?,
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
        netns_dir: dir.path().join("netns"),
        log_root: dir.path().join("logs"),
        cgroup: cgroup_base
            .is_some()
            .then(|| CgroupConfig { setup, layout: Layout { base: PathBuf::from(&base) } }),
        shim_log: Some(dir.path().join("shim.log")),
    };
    let rt = ShimRuntime::new(cfg, net.clone()).await?;
    let rootfs = busybox_rootfs(dir.path())?;
    Ok(Env {
        dir,
        host,
        net_cfg,
        net,
        rt,
        rootfs,
        cgroup_base,
        sandboxes: Default::default(),
        extra_netns: Vec::new(),
    })
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

impl Env {
    fn image(&self) -> ContainerImage {
        ContainerImage {
            reference: "keelson.test/busybox:latest".into(),
            config: oci_spec::image::Config::default(),
            rootfs: Rootfs::Directory(self.rootfs.clone()),
        }
    }

    /// Creates a sandbox (removed by Drop); returns its id and IPs.
    async fn sandbox(&self, name: &str) -> Result<(SandboxId, Vec<IpAddr>)> {
        let info = self.rt.create_sandbox(pod(name)).await?;
        self.sandboxes.lock().expect("not poisoned").push(info.id.clone());
        Ok((info.id, info.ips))
    }

    /// Runs `sh -c script` in a new container of `sb` to its exit; returns the status and log.
    async fn sh(
        &self,
        sb: &SandboxId,
        name: &str,
        script: &str,
    ) -> Result<(ContainerStatus, String)> {
        let c = ContainerConfig::new(
            name,
            "keelson.test/busybox:latest",
            vec!["sh".into(), "-c".into(), script.into()],
        );
        let mut events = self.rt.events();
        let id = self.rt.create_container(sb, c, self.image()).await?;
        self.rt.start_container(&id).await?;
        let st = self.wait_exit(&mut events, &id).await?;
        let log = keelson_tests::log_text(&self.rt, &id).await?;
        Ok((st, log))
    }

    async fn wait_exit(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>,
        id: &ContainerId,
    ) -> Result<ContainerStatus> {
        let st = self.rt.container_status(id).await?;
        if st.state != ContainerState::Exited {
            tokio::time::timeout(Duration::from_secs(30), async {
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

    /// Removes a sandbox the test created (Drop no longer needs to).
    async fn remove(&self, id: &SandboxId) -> Result<()> {
        self.rt.remove_sandbox(id).await?;
        self.sandboxes.lock().expect("not poisoned").retain(|s| s != id);
        Ok(())
    }

    fn ipam(&self) -> Result<Ipam> {
        Ok(Ipam::open(&self.net_cfg.state_dir, NET, &self.net_cfg.ranges)?)
    }

    /// Link names in the host namespace.
    async fn host_links(&self) -> Result<BTreeSet<String>> {
        let ns = Netns::open(&self.host.0)?;
        netns::run(Some(&ns), |t| async move {
            use keelson_cni::link::{Netlink, RtNetlink};
            let mut nl = RtNetlink::new(t.connect()?);
            let all = nl.links().await?;
            Ok::<_, anyhow::Error>(all.into_iter().map(|l| l.name).collect())
        })
        .await?
    }
}

fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(f)
}

fn family(ips: &[IpAddr], v6: bool) -> Result<IpAddr> {
    ips.iter().copied().find(|ip| ip.is_ipv6() == v6).context("an address of each family")
}

#[test]
fn pods_get_their_ips_on_eth0_reach_the_gateway_and_each_other_and_release_them_on_removal() {
    require!(Tier::Privileged, need_root());
    block_on(pods_reach()).expect("test body failed");
}

async fn pods_reach() -> Result<()> {
    let env = env(&["10.42.0.0/24", "fd42::/64"]).await?;
    let (a, a_ips) = env.sandbox("web").await?;
    ensure!(a_ips.len() == 2, "IPv4 and IPv6: {a_ips:?}");
    let (a4, a6) = (family(&a_ips, false)?, family(&a_ips, true)?);
    ensure!(
        "10.42.0.0/24".parse::<ipnet::IpNet>()?.contains(&a4)
            && "fd42::/64".parse::<ipnet::IpNet>()?.contains(&a6),
        "{a_ips:?}"
    );
    let status = env.rt.sandbox_status(&a).await?;
    ensure!(status.ips == a_ips, "the status shows the pod IPs: {:?}", status.ips);
    // The allocation is the sandbox's, keyed by its id and eth0.
    let held: Vec<IpAddr> = env
        .ipam()?
        .list()?
        .into_iter()
        .filter(|(k, _)| k == &AllocKey::new(a.as_str(), "eth0"))
        .map(|(_, ip)| ip)
        .collect();
    ensure!(held.len() == 2 && a_ips.iter().all(|ip| held.contains(ip)), "{held:?}");

    // Inside the pod: the addresses on eth0, the pod's name for them in /etc/hosts, and the
    // gateway (the bridge in the host namespace) answers over both families.
    let script = "ip -o addr show dev eth0; cat /etc/hosts; \
                  ping -c 1 -W 3 10.42.0.1 >/dev/null && echo gw4-ok; \
                  ping -c 1 -W 3 fd42::1 >/dev/null && echo gw6-ok";
    let (st, log) = env.sh(&a, "probe", script).await?;
    ensure!(st.exit_code == Some(0), "exit {:?}: {log}", st.exit_code);
    ensure!(log.contains(&format!("inet {a4}/24 ")), "eth0 has {a4}: {log}");
    ensure!(log.contains(&format!("inet6 {a6}/64 ")), "eth0 has {a6}: {log}");
    ensure!(log.contains(&format!("{a4}\tweb")) && log.contains(&format!("{a6}\tweb")), "{log}");
    ensure!(log.contains("gw4-ok") && log.contains("gw6-ok"), "gateway unreachable: {log}");

    // A second pod reaches the first one's addresses.
    let (b, b_ips) = env.sandbox("client").await?;
    ensure!(b_ips.iter().all(|ip| !a_ips.contains(ip)), "distinct addresses: {a_ips:?} {b_ips:?}");
    let script = format!(
        "ping -c 1 -W 3 {a4} >/dev/null && echo a4-ok; ping -c 1 -W 3 {a6} >/dev/null && echo a6-ok"
    );
    let (st, log) = env.sh(&b, "probe", &script).await?;
    ensure!(st.exit_code == Some(0), "exit {:?}: {log}", st.exit_code);
    ensure!(log.contains("a4-ok") && log.contains("a6-ok"), "pod to pod: {log}");

    // Removing the sandboxes releases their addresses and, once reaped, their veths.
    env.remove(&a).await?;
    let left: Vec<AllocKey> = env.ipam()?.list()?.into_iter().map(|(k, _)| k).collect();
    ensure!(left.iter().all(|k| k.container_id == b.as_str()), "a's released: {left:?}");
    env.remove(&b).await?;
    ensure!(env.ipam()?.list()?.is_empty(), "IPAM is empty: {:?}", env.ipam()?.list()?);
    env.net.network().reap().await?;
    let host = env.host_links().await?;
    ensure!(host == BTreeSet::from(["keel0".into(), "lo".into()]), "veths left: {host:?}");
    Ok(())
}

#[test]
fn a_sandbox_whose_network_fails_is_not_created_and_holds_no_address() {
    require!(Tier::Privileged, need_root());
    block_on(network_failure()).expect("test body failed");
}

async fn network_failure() -> Result<()> {
    // A /30: one pod address.
    let env = env(&["10.45.0.0/30"]).await?;
    let (first, ips) = env.sandbox("first").await?;
    ensure!(ips == ["10.45.0.2".parse::<IpAddr>()?], "{ips:?}");
    let err = match env.rt.create_sandbox(pod("second")).await {
        Ok(info) => {
            env.sandboxes.lock().expect("not poisoned").push(info.id.clone());
            bail!("a sandbox without a free address was created: {:?}", info.ips)
        }
        Err(e) => e,
    };
    let text = format!("{:#}", anyhow::Error::from(err));
    ensure!(text.contains("pod network") && text.contains("no free address"), "{text}");
    let sandboxes = env.rt.list_sandboxes().await?;
    ensure!(sandboxes.len() == 1 && sandboxes[0].id == first, "only the first is left");
    let held: Vec<String> =
        env.ipam()?.list()?.into_iter().map(|(k, ip)| format!("{k} {ip}")).collect();
    ensure!(held == [format!("{first}/eth0 10.45.0.2")], "{held:?}");
    let netns_left: Vec<_> =
        std::fs::read_dir(env.dir.path().join("netns"))?.flatten().map(|e| e.file_name()).collect();
    ensure!(netns_left.len() == 1, "the failed sandbox's netns pin is gone: {netns_left:?}");
    Ok(())
}

#[test]
fn gc_against_the_runtimes_sandboxes_releases_what_a_lost_sandbox_held() {
    require!(Tier::Privileged, need_root());
    block_on(gc_lost()).expect("test body failed");
}

async fn gc_lost() -> Result<()> {
    let mut env = env(&["10.42.0.0/24", "fd42::/64"]).await?;
    let (live, _) = env.sandbox("live").await?;
    // A sandbox the runtime no longer knows (an agent that crashed between ADD and its
    // record): wired in a namespace of its own, directly through the library.
    let lost_ns = env.dir.path().join("lost-netns");
    env.extra_netns.push(Pin::create(lost_ns.clone())?);
    let lost = SandboxId::new("0123456789ab")?;
    let att = env.net.network().add(&CniNetwork::attach(&lost, &lost_ns)).await?;
    ensure!(env.ipam()?.list()?.len() == 4, "{:?}", env.ipam()?.list()?);

    let ids: Vec<SandboxId> = env.rt.list_sandboxes().await?.into_iter().map(|s| s.id).collect();
    let report = env.net.gc(&ids).await?;
    let released: BTreeSet<String> =
        report.released.iter().map(|(k, _)| k.container_id.clone()).collect();
    ensure!(released == BTreeSet::from([lost.to_string()]), "{report:?}");
    ensure!(report.retired == [att.host_veth.clone()], "{report:?}");
    let left: BTreeSet<String> =
        env.ipam()?.list()?.into_iter().map(|(k, _)| k.container_id).collect();
    ensure!(left == BTreeSet::from([live.to_string()]), "{left:?}");
    // The live sandbox is untouched.
    let status = env.rt.sandbox_status(&live).await?;
    let netns = status.netns_path.context("netns")?;
    let a = Attach { container_id: live.to_string(), netns, ifname: "eth0".into() };
    env.net.network().check(&a).await?;
    env.net.network().reap().await?;
    ensure!(!env.host_links().await?.contains(&att.host_veth), "the lost veth is reaped");
    Ok(())
}
