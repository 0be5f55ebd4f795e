//! Privileged tests of egress masquerade (`keelson_cni::nft`) against the real kernel, inside
//! network namespaces the test creates (nothing in the machine's root namespace):
//!
//! ```text
//!  pod  p0 ── h0 [keel0 10.42.0.1, fd42::1]  host  u0 ── o0  out   (10.99.0.0/24, 2001:db8:99::/64;
//!  10.42.0.2                                  │                      out also holds service 10.96.0.10)
//!  fd42::2                                    r0 ── x0  peer  (10.42.1.0/24, fd42:0:0:1::/64: another
//!                                                               node's pods, cluster CIDR, routed)
//! ```
//!
//! The masquerade is installed in `host` through the library, on a thread that entered it.
//! UDP datagrams from the pod show which source address each destination sees.
//!
//! Run: `KEELSON_TEST_TIERS=privileged KEELSON_TEST_STRICT=1 cargo test -p keelson-tests --test
//! cni_masquerade`

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use ipnet::IpNet;
use keelson_cni::nft::{Element, Family, KeyType, Masquerade, MasqueradeRules, CHAIN, TABLE};
use keelson_tests::Tier;
use nix::sched::{setns, CloneFlags};

/// Deletes the test's namespaces (and so every link in them), also on panic.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn create(roles: &[&str]) -> anyhow::Result<Namespaces> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let mut ns = Namespaces { names: Vec::new() };
        for role in roles {
            let name = format!("kt-masq-{}-{n}-{role}", std::process::id());
            ip(&["netns", "add", &name])?;
            ns.names.push(name);
        }
        Ok(ns)
    }

    fn name(&self, role: &str) -> &str {
        self.names
            .iter()
            .find(|n| n.ends_with(&format!("-{role}")))
            .expect("a role the test created")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `ip -n <ns> <args>`: every link and address is made inside a test namespace.
fn ipn(ns: &str, args: &str) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend(args.split_whitespace());
    ip(&all)
}

fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", &format!("{key}={value}")])
        .output()
        .context("running sysctl")?;
    if !out.status.success() {
        bail!("sysctl {key} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `f` on a thread that entered network namespace `ns`; sockets it opens stay there.
fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
    let file =
        File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || -> anyhow::Result<R> {
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
    })
}

fn build_topology(ns: &Namespaces) -> anyhow::Result<()> {
    let (pod, host, out, peer) = (ns.name("pod"), ns.name("host"), ns.name("out"), ns.name("peer"));
    for n in [pod, host, out, peer] {
        ipn(n, "link set lo up")?;
    }
    // host: bridge with the gateways, the pod's veth on it.
    ipn(host, "link add keel0 type bridge")?;
    ipn(host, "addr add 10.42.0.1/24 dev keel0")?;
    ipn(host, "addr add fd42::1/64 dev keel0 nodad")?;
    ipn(host, "link set keel0 up")?;
    ipn(host, &format!("link add h0 type veth peer name p0 netns {pod}"))?;
    ipn(host, "link set h0 master keel0 up")?;
    ipn(pod, "addr add 10.42.0.2/24 dev p0")?;
    ipn(pod, "addr add fd42::2/64 dev p0 nodad")?;
    ipn(pod, "link set p0 up")?;
    ipn(pod, "route add default via 10.42.0.1")?;
    ipn(pod, "-6 route add default via fd42::1")?;
    // host: uplink to the outside, which also holds a service address.
    ipn(host, &format!("link add u0 type veth peer name o0 netns {out}"))?;
    ipn(host, "addr add 10.99.0.1/24 dev u0")?;
    ipn(host, "addr add 2001:db8:99::1/64 dev u0 nodad")?;
    ipn(host, "link set u0 up")?;
    ipn(out, "addr add 10.99.0.2/24 dev o0")?;
    ipn(out, "addr add 10.96.0.10/32 dev o0")?;
    ipn(out, "addr add 2001:db8:99::2/64 dev o0 nodad")?;
    ipn(out, "link set o0 up")?;
    // The outside routes pod addresses back, so an unmasqueraded datagram still arrives
    // (and is seen with its pod source) whatever the reverse-path filter says.
    ipn(out, "route add 10.42.0.0/16 via 10.99.0.1")?;
    ipn(out, "-6 route add fd42::/48 via 2001:db8:99::1")?;
    ipn(host, "route add 10.96.0.0/16 via 10.99.0.2")?;
    // host: a routed link (not the bridge) to another node's pods, inside the cluster CIDR.
    ipn(host, &format!("link add r0 type veth peer name x0 netns {peer}"))?;
    ipn(host, "addr add 10.42.1.1/24 dev r0")?;
    ipn(host, "addr add fd42:0:0:1::1/64 dev r0 nodad")?;
    ipn(host, "link set r0 up")?;
    ipn(peer, "addr add 10.42.1.2/24 dev x0")?;
    ipn(peer, "addr add fd42:0:0:1::2/64 dev x0 nodad")?;
    ipn(peer, "link set x0 up")?;
    ipn(peer, "route add default via 10.42.1.1")?;
    ipn(peer, "-6 route add default via fd42:0:0:1::1")?;
    sysctl(host, "net.ipv4.ip_forward", "1")?;
    sysctl(host, "net.ipv6.conf.all.forwarding", "1")?;
    Ok(())
}

/// A UDP receiver in a namespace.
struct Receiver {
    socket: UdpSocket,
    port: u16,
}

impl Receiver {
    fn open(ns: &str, ipv6: bool) -> anyhow::Result<Receiver> {
        let bind: SocketAddr = if ipv6 { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
        let socket = in_netns(ns, move || UdpSocket::bind(bind))??;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        let port = socket.local_addr()?.port();
        Ok(Receiver { socket, port })
    }
}

/// Sends one datagram from the pod (a fresh socket, so a fresh connection-tracking entry)
/// to `dst` and returns the source address `rx` saw.
fn source_seen(pod: &str, dst: IpAddr, rx: &Receiver) -> anyhow::Result<IpAddr> {
    let bind: SocketAddr = if dst.is_ipv6() { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
    let tx = in_netns(pod, move || UdpSocket::bind(bind))??;
    let token = format!("probe-{}", tx.local_addr()?.port());
    // The first datagram may wait on neighbour resolution; resend until one arrives.
    for _ in 0..3 {
        tx.send_to(token.as_bytes(), SocketAddr::new(dst, rx.port))?;
        let mut buf = [0u8; 64];
        match rx.socket.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == token.as_bytes() => return Ok(from.ip()),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no datagram from the pod reached {dst}")
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().expect("a valid CIDR")).collect()
}

fn rules(service_cidrs: &[&str]) -> MasqueradeRules {
    let mut exclude = nets(&["10.42.0.0/16", "fd42::/48"]);
    exclude.extend(nets(service_cidrs));
    MasqueradeRules {
        pod_cidrs: nets(&["10.42.0.0/24", "fd42::/64"]),
        exclude,
        bridge: "keel0".into(),
        fully_random: true,
    }
}

/// Runs `f` with a [`Masquerade`] opened on a thread inside `ns`.
fn with_masquerade<R: Send>(
    ns: &str,
    f: impl FnOnce(&mut Masquerade) -> keelson_cni::nft::Result<R> + Send,
) -> anyhow::Result<R> {
    Ok(in_netns(ns, move || Masquerade::open().and_then(|mut m| f(&mut m)))??)
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("a valid address")
}

#[test]
fn masquerade_gives_egress_the_node_address_and_leaves_cluster_traffic_alone() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    masquerade_in_namespaces().expect("masquerade in test namespaces");
}

fn masquerade_in_namespaces() -> anyhow::Result<()> {
    // Reading (never writing) the root namespace: our table's presence there must not change.
    let root_before = Masquerade::open()?.is_installed()?;

    let ns = Namespaces::create(&["pod", "host", "out", "peer"])?;
    build_topology(&ns)?;
    let (pod, host) = (ns.name("pod"), ns.name("host"));
    let out4 = Receiver::open(ns.name("out"), false)?;
    let out6 = Receiver::open(ns.name("out"), true)?;
    let peer4 = Receiver::open(ns.name("peer"), false)?;
    let peer6 = Receiver::open(ns.name("peer"), true)?;

    // Without masquerade the outside sees the pod's own address: the check can tell.
    assert_eq!(source_seen(pod, addr("10.99.0.2"), &out4)?, addr("10.42.0.2"));
    assert_eq!(source_seen(pod, addr("2001:db8:99::2"), &out6)?, addr("fd42::2"));

    let with_services = rules(&["10.96.0.0/16"]);
    let r = with_services.clone();
    with_masquerade(host, move |m| m.ensure(&r))?;

    // Egress through the uplink takes the node's uplink address, IPv4 and IPv6.
    assert_eq!(source_seen(pod, addr("10.99.0.2"), &out4)?, addr("10.99.0.1"));
    assert_eq!(source_seen(pod, addr("2001:db8:99::2"), &out6)?, addr("2001:db8:99::1"));
    // A service address, out the same uplink, keeps the pod's address.
    assert_eq!(source_seen(pod, addr("10.96.0.10"), &out4)?, addr("10.42.0.2"));
    // Another pod in the cluster CIDR, routed through a non-bridge link, too.
    assert_eq!(source_seen(pod, addr("10.42.1.2"), &peer4)?, addr("10.42.0.2"));
    assert_eq!(source_seen(pod, addr("fd42:0:0:1::2"), &peer6)?, addr("fd42::2"));

    // Ensure again: still exactly one table, one rule per family, no duplicated elements.
    let r = with_services.clone();
    let fingerprint = r.fingerprint();
    let (userdata, tables, rules_after, sets, nomasq4) = with_masquerade(host, move |m| {
        let userdata = m.nftables().table_userdata(Family::Inet, TABLE)?;
        m.ensure(&r)?;
        let tables = m.nftables().tables(Family::Inet)?;
        let rules = m.rules()?;
        let sets = m.nftables().sets(Family::Inet, TABLE)?;
        let nomasq4 = m.nftables().set_elements(Family::Inet, TABLE, "nomasq4")?;
        Ok((userdata, tables, rules, sets, nomasq4))
    })?;
    // The kernel keeps the rules' fingerprint with the table: that is how a second ensure
    // (every CNI plugin process runs one) knows it has nothing to do.
    assert_eq!(userdata.as_deref(), Some(fingerprint.as_bytes()));
    assert_eq!(tables, [TABLE], "only our table, once");
    assert_eq!(rules_after.len(), 2, "one rule per family: {rules_after:?}");
    for rule in &rules_after {
        assert_eq!(rule.chain, CHAIN);
        assert_eq!(rule.exprs.last().map(String::as_str), Some("masq"), "{rule:?}");
        assert!(rule.exprs.iter().any(|e| e == "lookup"), "{rule:?}");
    }
    let mut sets = sets;
    sets.sort();
    assert_eq!(sets, ["nomasq4", "nomasq6", "pod4", "pod6"]);
    let mut expected =
        Element::intervals(KeyType::Ipv4Addr, &nets(&["10.42.0.0/16", "10.96.0.0/16"]));
    let mut got = nomasq4;
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    got.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(got, expected, "the exclusion set holds each interval once");

    // The replaced ruleset still masquerades, and its counter (read back through our own
    // rule dump) sees the new flow.
    assert_eq!(source_seen(pod, addr("10.99.0.2"), &out4)?, addr("10.99.0.1"));
    let counters = with_masquerade(host, |m| m.rules())?;
    // Rules are listed in chain order: IPv4's first.
    let (packets, _) =
        counters.first().and_then(|r| r.counter).context("a counter on the IPv4 rule")?;
    assert!(packets >= 1, "{counters:?}");

    // A new configuration replaces, not extends: without the service CIDR, service traffic
    // is masqueraded too.
    let without_services = rules(&[]);
    with_masquerade(host, move |m| m.ensure(&without_services))?;
    assert_eq!(source_seen(pod, addr("10.96.0.10"), &out4)?, addr("10.99.0.1"));
    assert_eq!(source_seen(pod, addr("10.42.1.2"), &peer4)?, addr("10.42.0.2"));

    // Remove cleans up; removing again is harmless; egress keeps the pod address again.
    let (installed, rules_left) = with_masquerade(host, |m| {
        m.remove()?;
        m.remove()?;
        Ok((m.is_installed()?, m.rules()?))
    })?;
    assert!(!installed);
    assert!(rules_left.is_empty());
    assert_eq!(source_seen(pod, addr("10.99.0.2"), &out4)?, addr("10.42.0.2"));
    assert_eq!(source_seen(pod, addr("2001:db8:99::2"), &out6)?, addr("fd42::2"));

    assert_eq!(
        Masquerade::open()?.is_installed()?,
        root_before,
        "the root namespace was not touched"
    );
    Ok(())
}

#[test]
fn masquerade_in_a_namespace_without_the_bridge_or_pods_still_installs_and_removes() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
    let run = || -> anyhow::Result<()> {
        let ns = Namespaces::create(&["bare"])?;
        let bare = ns.name("bare");
        let r = rules(&["10.96.0.0/16"]);
        let installed = with_masquerade(bare, move |m| {
            m.ensure(&r)?;
            m.is_installed()
        })?;
        assert!(installed);
        // An invalid configuration is refused and leaves the installed ruleset in place.
        let bad = MasqueradeRules { bridge: "x".repeat(16), ..rules(&[]) };
        let (err, still) = with_masquerade(bare, move |m| {
            let err = m.ensure(&bad).map(|_| ()).err().map(|e| e.to_string());
            Ok((err, m.rules()?.len()))
        })?;
        assert!(err.is_some_and(|e| e.contains("bridge name")));
        assert_eq!(still, 2);
        with_masquerade(bare, |m| m.remove())?;
        Ok(())
    };
    run().expect("masquerade in a bare namespace");
}
