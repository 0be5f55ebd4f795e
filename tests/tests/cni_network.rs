//! Privileged tests of the pod network library (`keelson_cni::Network`) against the real
//! kernel, entirely inside network namespaces the test creates: a "host" namespace holding
//! the bridge (the network's `host_netns`) and one namespace per pod, all pinned in a
//! tempdir and removed by a Drop guard. Nothing touches the machine's root namespace.
//! Traffic goes only between those namespaces, with plain sockets opened on threads that
//! entered them.
//!
//! Run: `KEELSON_TEST_TIERS=privileged KEELSON_TEST_STRICT=1 cargo test -p keelson-tests
//! --test cni_network -- --nocapture` (the timing lines are printed, not asserted).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use keelson_cni::config::{IpRange, Mtu, NetworkConfig};
use keelson_cni::ipam::AllocKey;
use keelson_cni::netns::{self, Netns};
use keelson_cni::nft::MasqueradeRules;
use keelson_cni::{Attach, Attachment, BoxError, ErrorKind, Masquerader, Network};
use keelson_tests::Tier;

/// Namespaces pinned in a tempdir; unpinned (so destroyed, with every link in them) on drop.
struct Fixture {
    dir: tempfile::TempDir,
    pins: Vec<PathBuf>,
}

impl Fixture {
    fn new() -> anyhow::Result<Self> {
        let mut f = Fixture { dir: tempfile::tempdir()?, pins: Vec::new() };
        f.netns("host")?;
        Ok(f)
    }

    fn netns(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        netns::create(&path).with_context(|| format!("create netns {name}"))?;
        self.pins.push(path.clone());
        Ok(path)
    }

    fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Dual-stack network on `keel0` in the host namespace, hairpin on, no masquerade.
    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            name: "test".into(),
            bridge: "keel0".into(),
            ranges: vec![range("10.42.0.0/24", None), range("fd42::/64", None)],
            mtu: Mtu::Auto { overlay: None },
            masquerade: None,
            hairpin: true,
            state_dir: self.state(),
            host_netns: Some(self.host()),
        }
    }

    fn attach(&self, id: &str, netns: &Path) -> Attach {
        Attach { container_id: id.into(), netns: netns.to_owned(), ifname: "eth0".into() }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pin in self.pins.iter().rev() {
            if let Err(e) = netns::remove(pin) {
                eprintln!("cannot remove netns pin {}: {e}", pin.display());
            }
        }
    }
}

fn range(subnet: &str, span: Option<(&str, &str)>) -> Vec<IpRange> {
    vec![IpRange {
        subnet: subnet.parse().expect("test subnet"),
        range_start: span.map(|(s, _)| s.parse().expect("test address")),
        range_end: span.map(|(_, e)| e.parse().expect("test address")),
        gateway: None,
    }]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `f` on a thread inside the namespace pinned at `path` (sockets it opens live there).
fn inside<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = Netns::open(path)?;
    netns::run_blocking(Some(&ns), move |_t| async move { f() })?
}

/// A TCP listener bound inside the namespace at `path`.
fn listen(path: &Path, ip: IpAddr) -> anyhow::Result<TcpListener> {
    inside(path, move || Ok(TcpListener::bind(SocketAddr::new(ip, 0))?))
}

/// Connects from the namespace at `path` to `to`, sends a line, expects it echoed by
/// [`serve_once`].
fn exchange(path: &Path, listener: &TcpListener, from: IpAddr) -> anyhow::Result<()> {
    let to = listener.local_addr()?;
    let server = serve_once(listener.try_clone()?);
    let msg = format!("hello from {from}");
    let sent = msg.clone();
    let got = inside(path, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .with_context(|| format!("connect {from} -> {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(sent.as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut back = String::new();
        s.read_to_string(&mut back)?;
        Ok(back)
    })?;
    let peer = server.join().map_err(|_| anyhow::anyhow!("server panicked"))??;
    ensure!(got == msg, "echo {got:?}, sent {msg:?}");
    ensure!(peer == from, "server saw {peer}, the pod is {from}: traffic was rewritten");
    Ok(())
}

/// Accepts one connection, echoes what it reads, returns the peer's address.
fn serve_once(l: TcpListener) -> std::thread::JoinHandle<anyhow::Result<IpAddr>> {
    std::thread::spawn(move || {
        let (mut s, peer) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        s.write_all(&buf)?;
        Ok(peer.ip())
    })
}

fn ip_of(att: &Attachment, v6: bool) -> IpAddr {
    att.ips
        .iter()
        .map(|c| c.address.addr())
        .find(|a| a.is_ipv6() == v6)
        .expect("an address of each family")
}

/// Link names in the namespace at `path`, from /sys/class/net as seen there.
fn links(path: &Path) -> anyhow::Result<BTreeSet<String>> {
    // /sys shows the mounting namespace's links: read them through netlink instead.
    let ns = Netns::open(path)?;
    let names = netns::run_blocking(Some(&ns), |t| async move {
        use keelson_cni::link::{Netlink, RtNetlink};
        let mut nl = RtNetlink::new(t.connect()?);
        let all = nl.links().await?;
        Ok::<_, anyhow::Error>(all.into_iter().map(|l| l.name).collect::<BTreeSet<_>>())
    })??;
    Ok(names)
}

fn files(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        out.insert(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(v: &mut [Duration]) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[test]
fn two_pods_reach_each_other_and_the_gateway_over_ipv4_and_ipv6() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    reachability().expect("reachability");
}

fn reachability() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let (pa, pb) = (fx.netns("pod-a")?, fx.netns("pod-b")?);
    let net = Network::new(fx.config())?;
    let rt = rt();
    let a = rt.block_on(net.add(&fx.attach("a", &pa)))?;
    let b = rt.block_on(net.add(&fx.attach("b", &pb)))?;
    ensure!(a.mtu == 1500, "no default route in the host namespace: mtu 1500, got {}", a.mtu);
    ensure!(a.ips.len() == 2 && b.ips.len() == 2, "one address per family: {a:?} {b:?}");
    for v6 in [false, true] {
        let (ia, ib) = (ip_of(&a, v6), ip_of(&b, v6));
        // Pod to pod, both ways.
        exchange(&pa, &listen(&pb, ib)?, ia).context("a -> b")?;
        exchange(&pb, &listen(&pa, ia)?, ib).context("b -> a")?;
        // Pod to the gateway (the bridge's address in the host namespace).
        let gw = a.ips.iter().find(|c| c.gateway.is_ipv6() == v6).expect("gateway").gateway;
        exchange(&pa, &listen(&fx.host(), gw)?, ia).context("a -> gateway")?;
    }
    rt.block_on(net.check(&fx.attach("a", &pa)))?;
    rt.block_on(net.check(&fx.attach("b", &pb)))?;
    Ok(())
}

#[test]
fn add_twice_is_idempotent() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    add_twice().expect("add twice");
}

fn add_twice() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let pa = fx.netns("pod-a")?;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut cfg = fx.config();
    cfg.masquerade = Some(keelson_cni::config::Masquerade {
        cluster_cidrs: vec!["10.42.0.0/16".parse()?],
        service_cidrs: vec![],
    });
    let net = Network::with_masquerader(cfg, Arc::new(CountingMasquerader(calls.clone())))?;
    let rt = rt();
    let first = rt.block_on(net.add(&fx.attach("a", &pa)))?;
    let second = rt.block_on(net.add(&fx.attach("a", &pa)))?;
    ensure!(first.ips == second.ips, "same addresses: {:?} then {:?}", first.ips, second.ips);
    ensure!(first.host_veth == second.host_veth && first.pod_mac == second.pod_mac);
    ensure!(calls.load(Ordering::SeqCst) == 1, "masquerade ensured once per Network");
    rt.block_on(net.check(&fx.attach("a", &pa)))?;
    let pod_links = links(&pa)?;
    ensure!(pod_links == BTreeSet::from(["eth0".into(), "lo".into()]), "{pod_links:?}");
    Ok(())
}

#[derive(Debug)]
struct CountingMasquerader(Arc<AtomicUsize>);

impl Masquerader for CountingMasquerader {
    fn ensure(&self, rules: &MasqueradeRules) -> Result<(), BoxError> {
        assert_eq!(rules.bridge, "keel0");
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn del_twice_is_harmless_also_when_the_namespace_is_gone() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    del_twice().expect("del twice");
}

fn del_twice() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let (pa, pb) = (fx.netns("pod-a")?, fx.netns("pod-b")?);
    let net = Network::new(fx.config())?;
    let rt = rt();
    let a = rt.block_on(net.add(&fx.attach("a", &pa)))?;
    rt.block_on(net.add(&fx.attach("b", &pb)))?;
    rt.block_on(net.del(&fx.attach("a", &pa)))?;
    rt.block_on(net.del(&fx.attach("a", &pa)))?;
    ensure!(!links(&pa)?.contains("eth0"), "eth0 is gone from the pod at once");
    let err = rt.block_on(net.check(&fx.attach("a", &pa))).expect_err("check after del");
    ensure!(err.kind() == ErrorKind::CheckFailed, "{err:#}");
    // The pod namespace disappears before its DEL (the runtime lost it): still fine, twice,
    // and also without a netns path at all.
    netns::remove(&pb)?;
    rt.block_on(net.del(&fx.attach("b", &pb)))?;
    rt.block_on(net.del(&fx.attach("b", Path::new(""))))?;
    rt.block_on(net.reap())?;
    let host = links(&fx.host())?;
    ensure!(!host.contains(&a.host_veth), "retired veth reaped: {host:?}");
    ensure!(host == BTreeSet::from(["keel0".into(), "lo".into()]), "{host:?}");
    let ipam = keelson_cni::ipam::Ipam::open(&fx.state(), "test", &fx.config().ranges)?;
    ensure!(ipam.list()?.is_empty(), "addresses released: {:?}", ipam.list()?);
    Ok(())
}

#[test]
fn check_fails_after_the_pods_default_route_is_deleted() {
    keelson_tests::require!(
        Tier::Privileged,
        keelson_tests::need_root(),
        which("nsenter"),
        which("ip")
    );
    check_route().expect("check after route deletion");
}

fn which(bin: &str) -> Option<String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    (!found).then(|| format!("needs {bin} in PATH"))
}

fn check_route() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let pa = fx.netns("pod-a")?;
    let net = Network::new(fx.config())?;
    let rt = rt();
    rt.block_on(net.add(&fx.attach("a", &pa)))?;
    rt.block_on(net.check(&fx.attach("a", &pa)))?;
    // Someone else deletes the IPv4 default route, inside the pod's namespace only.
    let status = Command::new("nsenter")
        .arg(format!("--net={}", pa.display()))
        .args(["ip", "-4", "route", "del", "default"])
        .status()?;
    ensure!(status.success(), "ip route del: {status}");
    let err = rt.block_on(net.check(&fx.attach("a", &pa))).expect_err("check must fail");
    ensure!(err.kind() == ErrorKind::CheckFailed, "{err:#}");
    ensure!(err.to_string().contains("no default route via 10.42.0.1"), "clear error: {err:#}");
    // A second ADD repairs it.
    rt.block_on(net.add(&fx.attach("a", &pa)))?;
    rt.block_on(net.check(&fx.attach("a", &pa)))?;
    Ok(())
}

#[test]
fn address_exhaustion_gives_a_clear_error_and_leaves_nothing() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    exhaustion().expect("exhaustion");
}

fn exhaustion() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let pods = [fx.netns("p0")?, fx.netns("p1")?, fx.netns("p2")?];
    let mut cfg = fx.config();
    cfg.ranges = vec![range("10.44.0.0/24", Some(("10.44.0.10", "10.44.0.11")))];
    let net = Network::new(cfg)?;
    let rt = rt();
    rt.block_on(net.add(&fx.attach("p0", &pods[0])))?;
    rt.block_on(net.add(&fx.attach("p1", &pods[1])))?;
    let err = rt.block_on(net.add(&fx.attach("p2", &pods[2]))).expect_err("range is full");
    ensure!(err.kind() == ErrorKind::Exhausted, "{err:#}");
    let text = format!("{:#}", anyhow::Error::from(err));
    ensure!(text.contains("no free address"), "clear error: {text}");
    ensure!(!links(&pods[2])?.contains("eth0"), "no interface for the refused pod");
    ensure!(links(&fx.host())?.len() == 4, "lo, keel0 and two veths");
    Ok(())
}

#[test]
fn gc_releases_dead_keys_and_retires_their_veths() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    gc().expect("gc");
}

fn gc() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let (pa, pb) = (fx.netns("pod-a")?, fx.netns("pod-b")?);
    let net = Network::new(fx.config())?;
    let rt = rt();
    rt.block_on(net.add(&fx.attach("a", &pa)))?;
    let b = rt.block_on(net.add(&fx.attach("b", &pb)))?;
    let report = rt.block_on(net.gc(&[AllocKey::new("a", "eth0")]))?;
    ensure!(report.released.len() == 2, "b's two addresses: {report:?}");
    ensure!(report.retired == vec![b.host_veth.clone()], "{report:?}");
    rt.block_on(net.reap())?;
    ensure!(!links(&fx.host())?.contains(&b.host_veth));
    rt.block_on(net.check(&fx.attach("a", &pa)))?;
    let status = rt.block_on(net.status())?;
    ensure!(
        status.bridge_present && status.allocated == 2 && status.exhausted.is_empty(),
        "{status:?}"
    );
    Ok(())
}

#[test]
fn a_thousand_add_del_cycles_leave_no_veth_allocation_or_file() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    cycles(1000).expect("cycles");
}

fn cycles(n: usize) -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let pod = fx.netns("pod")?;
    let net = Network::new(fx.config())?;
    let rt = rt();
    // Warm up (bridge, state directory), then take the baseline.
    rt.block_on(net.add(&fx.attach("warm", &pod)))?;
    rt.block_on(net.del(&fx.attach("warm", &pod)))?;
    rt.block_on(net.reap())?;
    let dir = fx.state().join("networks").join("test");
    let files_before = files(&dir)?;
    let (host_before, pod_before) = (links(&fx.host())?, links(&pod)?);

    let (mut adds, mut dels) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        // A new sandbox id each time (as a runtime does) in the same namespace, and every
        // tenth cycle the same id again, which must replace a pair not reaped yet.
        let id = if i % 10 == 9 { format!("c{}", i - 1) } else { format!("c{i}") };
        let a = fx.attach(&id, &pod);
        let t = Instant::now();
        let att = rt.block_on(net.add(&a)).with_context(|| format!("add #{i}"))?;
        adds.push(t.elapsed());
        if att.ips.len() != 2 {
            bail!("add #{i}: {att:?}");
        }
        let t = Instant::now();
        rt.block_on(net.del(&a)).with_context(|| format!("del #{i}"))?;
        dels.push(t.elapsed());
    }
    let t = Instant::now();
    rt.block_on(net.reap())?;
    let reap = t.elapsed();

    let (host_after, pod_after) = (links(&fx.host())?, links(&pod)?);
    ensure!(host_after == host_before, "host links: {host_before:?} -> {host_after:?}");
    ensure!(pod_after == pod_before, "pod links: {pod_before:?} -> {pod_after:?}");
    let ipam = keelson_cni::ipam::Ipam::open(&fx.state(), "test", &fx.config().ranges)?;
    ensure!(ipam.list()?.is_empty(), "allocations left: {:?}", ipam.list()?);
    let files_after = files(&dir)?;
    ensure!(files_after == files_before, "files: {files_before:?} -> {files_after:?}");
    eprintln!(
        "cni_network timing over {n} cycles (library, in process): ADD median {:?} p99 {:?}; \
         DEL median {:?} p99 {:?}; final reap {reap:?}",
        median(&mut adds),
        p99(&mut adds),
        median(&mut dels),
        p99(&mut dels),
    );
    Ok(())
}

#[test]
fn twenty_pods_added_at_once_get_distinct_addresses_and_all_check() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    concurrent(20).expect("concurrent");
}

fn concurrent(n: usize) -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let pods: Vec<PathBuf> =
        (0..n).map(|i| fx.netns(&format!("p{i}"))).collect::<Result<_, _>>()?;
    let net = Arc::new(Network::new(fx.config())?);
    let rt = rt();
    let attaches: Vec<Attach> =
        pods.iter().enumerate().map(|(i, p)| fx.attach(&format!("c{i}"), p)).collect();
    let t = Instant::now();
    let results = rt.block_on(futures::future::join_all(attaches.iter().map(|a| net.add(a))));
    let add_all = t.elapsed();
    let mut seen = BTreeSet::new();
    for r in results {
        for ip in r?.ips {
            ensure!(seen.insert(ip.address.addr()), "address {} handed out twice", ip.address);
        }
    }
    ensure!(seen.len() == 2 * n, "{seen:?}");
    for a in &attaches {
        rt.block_on(net.check(a))?;
    }
    let t = Instant::now();
    for r in rt.block_on(futures::future::join_all(attaches.iter().map(|a| net.del(a)))) {
        r?;
    }
    let del_all = t.elapsed();
    rt.block_on(net.reap())?;
    let host = links(&fx.host())?;
    ensure!(host == BTreeSet::from(["keel0".into(), "lo".into()]), "{host:?}");
    eprintln!("cni_network timing: {n} ADDs at once {add_all:?}, {n} DELs at once {del_all:?}");
    Ok(())
}
