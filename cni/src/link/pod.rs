//! The per-pod veth pair.
//!
//! ADD is two plans on two namespaces. In the host's, [`add_host`] sends one request that
//! creates the pair with the pod end directly inside the pod's namespace (`IFLA_NET_NS_FD`
//! on the peer: moving a link between namespaces afterwards costs far more under load) and
//! the host end up and enslaved to the bridge; then, by the new link's index, the pod's key
//! as the host end's alias (the kernel ignores an alias in a create request) and hairpin
//! mode on the new bridge port. In the pod's, [`configure_pod`] turns off
//! duplicate address detection on the interface, then sends in one batch: `lo` up, the
//! interface up, its addresses (`IFA_F_NODAD` on IPv6) and one default route per family via
//! that family's gateway (IPv4 needs no `onlink`: the subnet route comes with the address).
//!
//! A second ADD of the same key finds the host end (the create fails with `EEXIST`), checks
//! the alias is this key's, and plans only what is missing on both sides. CHECK is the same
//! comparison with the plan required to be empty.
//!
//! DEL is cheap and leaves the expensive part for later: deleting a link makes the kernel wait
//! for RCU (about 20 ms here, the reference plugin's whole DEL). [`retire_pod`] sets the pod's
//! interface down (its peer loses carrier, so the pod is off the bridge) and renames it (so
//! the name is free for a new ADD); [`retire_host`] moves the host end to
//! [`RETIRED_GROUP`]; [`reap`] deletes the whole group in one request, one
//! RCU wait for any number of pairs. If the pod's namespace ends first, the kernel deletes
//! the pair itself, asynchronously.

use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnet::IpNet;

use super::{
    host_veth_alias, host_veth_name, is_host_veth_name, parse_alias, random_mac, retired_name,
    Error, Link, LinkRef, Netlink, Op, Result, Route, Sysctl, VethSpec, LOOPBACK_INDEX,
    RETIRED_GROUP,
};
use crate::link::bridge::Bridge;
use crate::IpConfig;

/// What one pod interface must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// The sandbox's id (with `ifname`, the key).
    pub container_id: String,
    /// The interface's name inside the pod.
    pub ifname: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// Hairpin mode on the host end's bridge port.
    pub hairpin: bool,
    /// Addresses and gateways; the first of each family gives that family's default route.
    pub ips: Vec<IpConfig>,
}

impl PodSpec {
    /// The host end's name.
    pub fn host_name(&self) -> String {
        host_veth_name(&self.container_id, &self.ifname)
    }

    /// The host end's alias.
    pub fn alias(&self) -> String {
        host_veth_alias(&self.container_id, &self.ifname)
    }

    fn has_ipv6(&self) -> bool {
        self.ips.iter().any(|ip| ip.address.addr().is_ipv6())
    }

    /// The default route per family: (destination, gateway).
    fn default_routes(&self) -> Vec<(IpNet, IpAddr)> {
        let mut out: Vec<(IpNet, IpAddr)> = Vec::new();
        for ip in &self.ips {
            let dst = match ip.gateway {
                IpAddr::V4(_) => IpNet::V4(Default::default()),
                IpAddr::V6(_) => IpNet::V6(Default::default()),
            };
            if !out.iter().any(|(d, _)| *d == dst) {
                out.push((dst, ip.gateway));
            }
        }
        out
    }
}

/// The host end as added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEnd {
    /// Its name.
    pub name: String,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Whether this ADD created the pair (else it existed from an earlier ADD).
    pub created: bool,
}

/// The pod end as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodEnd {
    /// Its index in the pod's namespace.
    pub index: u32,
    /// Its MAC.
    pub mac: [u8; 6],
}

/// Creates the pair (pod end inside the namespace `pod_netns` refers to) on `bridge`, or
/// finds and repairs the one an earlier ADD of the same key created.
pub async fn add_host(
    nl: &mut impl Netlink,
    bridge: &Bridge,
    spec: &PodSpec,
    pod_netns: RawFd,
) -> Result<HostEnd> {
    let name = spec.host_name();
    let mac = random_mac();
    let create = [Op::CreateVeth(VethSpec {
        host: name.clone(),
        host_mac: mac,
        master: bridge.index,
        mtu: spec.mtu,
        peer: spec.ifname.clone(),
        peer_mac: random_mac(),
        peer_netns: pod_netns,
    })];
    match nl.apply(&create).await {
        Ok(()) => return finish_host(nl, &name, mac, spec).await,
        Err(e) if e.errno() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    // The host name or the pod's interface name is taken: ours from an earlier ADD, a
    // retired pair of this key not reaped yet, the remains of an ADD interrupted between
    // the create and the alias, or someone else's.
    let mut existing = nl.link(&LinkRef::Name(name.clone())).await?;
    if existing.is_none() {
        // The host name was freed in between (the reaper deleted a retired pair of this
        // key): create again. Still EEXIST means the pod's interface name is taken.
        match nl.apply(&create).await {
            Ok(()) => return finish_host(nl, &name, mac, spec).await,
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        existing = nl.link(&LinkRef::Name(name.clone())).await?;
    }
    if let Some(old) = existing.as_ref().filter(|l| l.group == RETIRED_GROUP || l.alias.is_none()) {
        match nl.apply(&[Op::DeleteLink(LinkRef::Index(old.index))]).await {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::ENODEV) => {}
            Err(e) => return Err(e),
        }
        match nl.apply(&create).await {
            Ok(()) => return finish_host(nl, &name, mac, spec).await,
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        existing = nl.link(&LinkRef::Name(name.clone())).await?;
    }
    let Some(existing) = existing else {
        return Err(Error::NameClash {
            name: format!("{} in the pod", spec.ifname),
            owner: None,
            want: spec.alias(),
        });
    };
    if existing.alias.as_deref() != Some(spec.alias().as_str()) {
        return Err(Error::NameClash { name, owner: existing.alias, want: spec.alias() });
    }
    let ops = plan_host(&existing, bridge, spec);
    if !ops.is_empty() {
        nl.apply(&ops).await?;
    }
    Ok(HostEnd { name, mac: existing.mac, created: false })
}

/// Sets the alias and hairpin of a host end just created. A second batch, by index: pipelined
/// behind the create by name, they would land on someone else's link when the create fails
/// with `EEXIST`.
async fn finish_host(
    nl: &mut impl Netlink,
    name: &str,
    mac: [u8; 6],
    spec: &PodSpec,
) -> Result<HostEnd> {
    let link = nl
        .link(&LinkRef::Name(name.to_owned()))
        .await?
        .ok_or_else(|| Error::NoSuchLink { name: name.to_owned() })?;
    let me = LinkRef::Index(link.index);
    let mut ops = vec![Op::SetAlias(me.clone(), spec.alias())];
    if spec.hairpin {
        ops.push(Op::SetHairpin(me, true));
    }
    nl.apply(&ops).await?;
    Ok(HostEnd { name: name.to_owned(), mac, created: true })
}

/// What is missing from an existing host end.
pub fn plan_host(link: &Link, bridge: &Bridge, spec: &PodSpec) -> Vec<Op> {
    let me = LinkRef::Index(link.index);
    let mut ops = Vec::new();
    if link.master != Some(bridge.index) {
        ops.push(Op::SetMaster(me.clone(), bridge.index));
    }
    if link.mtu != spec.mtu {
        ops.push(Op::SetMtu(me.clone(), spec.mtu));
    }
    if !link.up {
        ops.push(Op::SetUp(me.clone()));
    }
    let hairpin = link.hairpin.unwrap_or(false) && link.master == Some(bridge.index);
    if hairpin != spec.hairpin {
        ops.push(Op::SetHairpin(me, spec.hairpin));
    }
    ops
}

/// The pod namespace as observed: the interface, whether `lo` is up, the interface's
/// addresses and the default routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The pod's interface.
    pub link: Link,
    /// `lo` is up.
    pub lo_up: bool,
    /// The interface's addresses.
    pub addresses: Vec<IpNet>,
    /// Default routes.
    pub routes: Vec<Route>,
}

/// What is missing in the pod namespace.
pub fn plan_pod(state: &PodState, spec: &PodSpec) -> Vec<Op> {
    let index = state.link.index;
    let mut ops = Vec::new();
    if !state.lo_up {
        ops.push(Op::SetUp(LinkRef::Index(LOOPBACK_INDEX)));
    }
    if state.link.mtu != spec.mtu {
        ops.push(Op::SetMtu(LinkRef::Index(index), spec.mtu));
    }
    if !state.link.up {
        ops.push(Op::SetUp(LinkRef::Index(index)));
    }
    for ip in &spec.ips {
        if !state.addresses.contains(&ip.address) {
            let nodad = ip.address.addr().is_ipv6();
            ops.push(Op::AddAddress { index, address: ip.address, nodad });
        }
    }
    for (dst, gateway) in spec.default_routes() {
        let present = state
            .routes
            .iter()
            .any(|r| r.dst == dst && r.gateway == Some(gateway) && r.oif == Some(index));
        if !present {
            ops.push(Op::AddRoute { dst, gateway, oif: index });
        }
    }
    ops
}

/// Observes the pod namespace; `None` when the interface is missing.
pub async fn observe_pod(nl: &mut impl Netlink, ifname: &str) -> Result<Option<PodState>> {
    let Some(link) = nl.link(&LinkRef::Name(ifname.to_owned())).await? else {
        return Ok(None);
    };
    let lo_up = nl.link(&LinkRef::Index(LOOPBACK_INDEX)).await?.is_some_and(|l| l.up);
    let addresses = nl.addresses(link.index).await?;
    let routes = nl.default_routes().await?;
    Ok(Some(PodState { link, lo_up, addresses, routes }))
}

/// Configures the pod's interface inside the pod's namespace (`nl` and `sys` serve it).
/// `fresh`: the interface was just created by [`add_host`], so it is known to be down, with
/// nothing on it, and observing it would only cost round trips.
pub async fn configure_pod(
    nl: &mut impl Netlink,
    sys: &mut impl Sysctl,
    spec: &PodSpec,
    fresh: bool,
) -> Result<PodEnd> {
    if spec.has_ipv6() {
        // No duplicate address detection on the pod's link-local address either: with
        // hairpin on, the bridge echoes the probes back.
        let key = format!("net/ipv6/conf/{}/accept_dad", spec.ifname);
        sys.set(&key, "0").map_err(|source| Error::Sysctl { key, source })?;
    }
    let state = if fresh {
        let link = nl
            .link(&LinkRef::Name(spec.ifname.clone()))
            .await?
            .ok_or_else(|| Error::NoSuchLink { name: spec.ifname.clone() })?;
        PodState { link, lo_up: false, addresses: Vec::new(), routes: Vec::new() }
    } else {
        observe_pod(nl, &spec.ifname)
            .await?
            .ok_or_else(|| Error::NoSuchLink { name: spec.ifname.clone() })?
    };
    let ops = plan_pod(&state, spec);
    if !ops.is_empty() {
        nl.apply(&ops).await?;
    }
    Ok(PodEnd { index: state.link.index, mac: state.link.mac })
}

/// CHECK of the host side: the host end exists, is this pod's, up, on `bridge`.
pub async fn check_host(nl: &mut impl Netlink, bridge: &str, spec: &PodSpec) -> Result<()> {
    let name = spec.host_name();
    let Some(link) = nl.link(&LinkRef::Name(name.clone())).await? else {
        return Err(Error::Check(format!("host end {name} is missing")));
    };
    if link.alias.as_deref() != Some(spec.alias().as_str()) {
        return Err(Error::Check(format!("host end {name} belongs to {:?}", link.alias)));
    }
    let Some(br) = nl.link(&LinkRef::Name(bridge.to_owned())).await? else {
        return Err(Error::Check(format!("bridge {bridge} is missing")));
    };
    if link.master != Some(br.index) {
        return Err(Error::Check(format!("host end {name} is not on {bridge}")));
    }
    if !link.up {
        return Err(Error::Check(format!("host end {name} is down")));
    }
    if spec.hairpin && link.hairpin != Some(true) {
        return Err(Error::Check(format!("hairpin mode is off on {name}")));
    }
    Ok(())
}

/// CHECK of the pod side: everything [`configure_pod`] sets is still there.
pub async fn check_pod(nl: &mut impl Netlink, spec: &PodSpec) -> Result<()> {
    let ifname = &spec.ifname;
    let Some(state) = observe_pod(nl, ifname).await? else {
        return Err(Error::Check(format!("{ifname} is missing in the pod")));
    };
    match plan_pod(&state, spec).first() {
        None => Ok(()),
        Some(op) => Err(Error::Check(match op {
            Op::SetUp(LinkRef::Index(LOOPBACK_INDEX)) => "lo is down in the pod".to_owned(),
            Op::SetUp(_) => format!("{ifname} is down in the pod"),
            Op::SetMtu(_, m) => format!("{ifname} has mtu {}, not {m}", state.link.mtu),
            Op::AddAddress { address, .. } => format!("{ifname} lacks address {address}"),
            Op::AddRoute { gateway, .. } => {
                format!("no default route via {gateway} on {ifname} in the pod")
            }
            other => format!("pod needs: {other}"),
        })),
    }
}

/// DEL inside the pod's namespace: takes the interface off the network at once (down, so
/// its peer loses carrier, and renamed, so the name is free for a new ADD) and leaves the
/// deletion to [`reap`] or to the end of the namespace. Returns whether there was one.
pub async fn retire_pod(nl: &mut impl Netlink, ifname: &str) -> Result<bool> {
    let Some(link) = nl.link(&LinkRef::Name(ifname.to_owned())).await? else {
        return Ok(false);
    };
    let ops = [Op::SetDown(LinkRef::Index(link.index)), Op::Rename(link.index, retired_name())];
    match nl.apply(&ops).await {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// DEL in the host namespace: moves this key's host end to [`RETIRED_GROUP`] (and down, when
/// the pod side could not be reached) if it carries this key's alias. Returns whether there
/// was one.
pub async fn retire_host(
    nl: &mut impl Netlink,
    container_id: &str,
    ifname: &str,
    down: bool,
) -> Result<bool> {
    let name = host_veth_name(container_id, ifname);
    let Some(link) = nl.link(&LinkRef::Name(name.clone())).await? else {
        return Ok(false);
    };
    if link.alias.as_deref() != Some(host_veth_alias(container_id, ifname).as_str()) {
        tracing::warn!(link = %name, alias = ?link.alias, "not retiring a host veth of another key");
        return Ok(false);
    }
    retire_link(nl, &link, down).await
}

/// Moves a host end to [`RETIRED_GROUP`], down first when `down`.
pub async fn retire_link(nl: &mut impl Netlink, link: &Link, down: bool) -> Result<bool> {
    let me = LinkRef::Index(link.index);
    let mut ops = Vec::with_capacity(2);
    if down {
        ops.push(Op::SetDown(me.clone()));
    }
    ops.push(Op::SetGroup(me, RETIRED_GROUP));
    match nl.apply(&ops).await {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes every retired pair of the namespace `nl` serves in one batch (one RCU wait for
/// all). Nothing retired is not an error.
pub async fn reap(nl: &mut impl Netlink) -> Result<()> {
    match nl.apply(&[Op::DeleteGroup(RETIRED_GROUP)]).await {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A port of ours on the bridge, with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The host end.
    pub link: Link,
    /// Its container id.
    pub container_id: String,
    /// Its pod interface name.
    pub ifname: String,
}

/// Our ports on `bridge` (host ends whose alias carries a key), retired ones excluded. A
/// port with our naming and no alias is the remains of an interrupted ADD: it is listed with
/// an empty key, which is never live.
pub async fn ports(nl: &mut impl Netlink, bridge: &str) -> Result<Vec<Port>> {
    let Some(br) = nl.link(&LinkRef::Name(bridge.to_owned())).await? else {
        return Ok(Vec::new());
    };
    Ok(nl
        .links()
        .await?
        .into_iter()
        .filter(|l| l.master == Some(br.index) && l.group != RETIRED_GROUP)
        .filter_map(|link| {
            let (container_id, ifname) = match link.alias.as_deref() {
                Some(alias) => {
                    let (id, ifname) = parse_alias(alias)?;
                    (id.to_owned(), ifname.to_owned())
                }
                None if is_host_veth_name(&link.name) => (String::new(), String::new()),
                None => return None,
            };
            Some(Port { link, container_id, ifname })
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::link::fake::FakeWorld;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    fn spec(ips: &[(&str, &str)]) -> PodSpec {
        PodSpec {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            mtu: 1500,
            hairpin: true,
            ips: ips
                .iter()
                .map(|(a, g)| IpConfig { address: a.parse().unwrap(), gateway: g.parse().unwrap() })
                .collect(),
        }
    }

    fn dual() -> PodSpec {
        spec(&[("10.42.0.2/24", "10.42.0.1"), ("fd42::2/64", "fd42::1")])
    }

    struct Setup {
        world: FakeWorld,
        host: RawFd,
        pod: RawFd,
        bridge: Bridge,
    }

    fn setup() -> Setup {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        let pod = world.add_namespace();
        let mut nl = world.netlink(host);
        block_on(nl.apply(&[Op::CreateBridge { name: "keel0".into(), mtu: 1500, mac: [2; 6] }]))
            .unwrap();
        let index = world.ns(host).by_name("keel0").unwrap().index;
        Setup { world, host, pod, bridge: Bridge { index, mac: [2; 6], mtu: 1500 } }
    }

    fn add(s: &Setup, spec: &PodSpec) -> Result<(HostEnd, PodEnd)> {
        block_on(async {
            let h = add_host(&mut s.world.netlink(s.host), &s.bridge, spec, s.pod).await?;
            let p = configure_pod(
                &mut s.world.netlink(s.pod),
                &mut s.world.sysctl(s.pod),
                spec,
                h.created,
            )
            .await?;
            Ok((h, p))
        })
    }

    #[test]
    fn add_creates_the_pod_end_inside_the_pod_namespace_in_one_request() {
        let s = setup();
        let spec = dual();
        let (host_end, _) = add(&s, &spec).unwrap();
        let host = s.world.ns(s.host);
        let creates: Vec<_> =
            host.log.iter().filter(|op| matches!(op, Op::CreateVeth(_))).collect();
        assert_eq!(creates.len(), 1);
        let Op::CreateVeth(v) = creates[0] else { unreachable!() };
        assert_eq!(v.peer_netns, s.pod, "the peer is born in the pod namespace");
        assert_eq!(v.peer, "eth0");
        assert_eq!(v.master, s.bridge.index);
        assert!(host.by_name("eth0").is_none(), "never created in the host namespace");
        let h = host.by_name(&host_end.name).unwrap();
        assert_eq!(h.alias.as_deref(), Some("keelson:c1/eth0"));
        assert_eq!(h.hairpin, Some(true));
        assert!(h.up);
        assert!(h.name.len() <= 15);
    }

    #[test]
    fn pod_gets_lo_up_addresses_nodad_and_default_routes_per_family() {
        let s = setup();
        let spec = dual();
        let (_, pod_end) = add(&s, &spec).unwrap();
        let pod = s.world.ns(s.pod);
        assert!(pod.links[&LOOPBACK_INDEX].up);
        let eth0 = pod.by_name("eth0").unwrap();
        assert!(eth0.up);
        assert_eq!(eth0.index, pod_end.index);
        assert_eq!(pod.addresses[&eth0.index].len(), 2);
        for op in &pod.log {
            if let Op::AddAddress { address, nodad, .. } = op {
                assert_eq!(*nodad, address.addr().is_ipv6(), "{op}");
            }
        }
        let gws: Vec<_> = pod.routes.iter().map(|r| r.gateway.unwrap().to_string()).collect();
        assert_eq!(gws, ["10.42.0.1", "fd42::1"]);
        assert_eq!(pod.sysctls["net/ipv6/conf/eth0/accept_dad"], "0");
        // One pipelined batch in the pod: lookup of eth0, then the plan.
        assert_eq!(pod.requests, 1 + pod.log.len());
    }

    #[test]
    fn ipv4_only_pods_need_no_ipv6_sysctl() {
        let s = setup();
        add(&s, &spec(&[("10.42.0.2/24", "10.42.0.1")])).unwrap();
        let pod = s.world.ns(s.pod);
        assert!(!pod.sysctls.contains_key("net/ipv6/conf/eth0/accept_dad"));
        assert_eq!(pod.routes.len(), 1);
    }

    #[test]
    fn second_add_of_the_same_key_repairs_and_keeps_the_pair() {
        let s = setup();
        let spec = dual();
        let (first, _) = add(&s, &spec).unwrap();
        let (second, _) = add(&s, &spec).unwrap();
        assert!(!second.created);
        assert_eq!(first.name, second.name);
        assert_eq!(first.mac, second.mac);
        // Nothing was missing, so nothing was applied in the pod the second time.
        let pod = s.world.ns(s.pod);
        assert_eq!(pod.log.iter().filter(|op| matches!(op, Op::AddRoute { .. })).count(), 2);
    }

    #[test]
    fn second_add_restores_a_deleted_route() {
        let s = setup();
        let spec = dual();
        add(&s, &spec).unwrap();
        s.world.edit(s.pod, |ns| ns.routes.retain(|r| r.dst.addr().is_ipv6()));
        add(&s, &spec).unwrap();
        block_on(check_pod(&mut s.world.netlink(s.pod), &spec)).unwrap();
    }

    #[test]
    fn a_host_name_owned_by_another_key_is_a_clash_not_a_takeover() {
        let s = setup();
        let spec = dual();
        let name = spec.host_name();
        s.world.edit(s.host, |ns| {
            let l = ns.links.values_mut().next().unwrap();
            l.name.clone_from(&name);
            l.alias = Some("keelson:other/eth0".into());
        });
        let err = add(&s, &spec).unwrap_err();
        assert!(matches!(err, Error::NameClash { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("is not keelson:c1/eth0's: it carries alias \"keelson:other/eth0\""),
            "{text}"
        );
    }

    #[test]
    fn the_remains_of_an_add_interrupted_before_the_alias_are_replaced_and_listed_for_gc() {
        let s = setup();
        let spec = dual();
        s.world.fail_once(|op| matches!(op, Op::SetAlias(..)), libc::EINTR);
        assert!(add(&s, &spec).is_err());
        let orphans = block_on(ports(&mut s.world.netlink(s.host), "keel0")).unwrap();
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].container_id, "", "no key: never live");
        // The pod end exists too (the create succeeded), yet a new ADD goes through.
        let (h, _) = add(&s, &spec).unwrap();
        assert!(h.created);
        block_on(check_host(&mut s.world.netlink(s.host), "keel0", &spec)).unwrap();
    }

    #[test]
    fn check_passes_after_add_and_names_a_deleted_default_route() {
        let s = setup();
        let spec = dual();
        add(&s, &spec).unwrap();
        block_on(check_host(&mut s.world.netlink(s.host), "keel0", &spec)).unwrap();
        block_on(check_pod(&mut s.world.netlink(s.pod), &spec)).unwrap();
        s.world.edit(s.pod, |ns| ns.routes.retain(|r| r.dst.addr().is_ipv6()));
        let err = block_on(check_pod(&mut s.world.netlink(s.pod), &spec)).unwrap_err();
        assert_eq!(err.to_string(), "check: no default route via 10.42.0.1 on eth0 in the pod");
    }

    #[test]
    fn check_fails_when_the_host_end_left_the_bridge() {
        let s = setup();
        let spec = dual();
        add(&s, &spec).unwrap();
        let name = spec.host_name();
        s.world.edit(s.host, |ns| {
            ns.links.values_mut().find(|l| l.name == name).unwrap().master = None;
        });
        let err = block_on(check_host(&mut s.world.netlink(s.host), "keel0", &spec)).unwrap_err();
        assert!(err.to_string().contains("not on keel0"), "{err}");
    }

    fn del(s: &Setup, spec: &PodSpec) -> (bool, bool) {
        block_on(async {
            let pod = retire_pod(&mut s.world.netlink(s.pod), &spec.ifname).await.unwrap();
            let host =
                retire_host(&mut s.world.netlink(s.host), &spec.container_id, &spec.ifname, !pod)
                    .await
                    .unwrap();
            (pod, host)
        })
    }

    #[test]
    fn retiring_takes_the_pod_off_the_network_at_once_and_reaping_deletes_both_ends() {
        let s = setup();
        let spec = dual();
        let (h, p) = add(&s, &spec).unwrap();
        assert_eq!(del(&s, &spec), (true, true));
        let pod = s.world.ns(s.pod);
        assert!(pod.by_name("eth0").is_none(), "the name is free for a new ADD");
        let old = &pod.links[&p.index];
        assert!(!old.up && old.name.starts_with("kr"));
        assert!(pod.routes.is_empty());
        assert_eq!(s.world.ns(s.host).by_name(&h.name).unwrap().group, RETIRED_GROUP);
        assert!(block_on(ports(&mut s.world.netlink(s.host), "keel0")).unwrap().is_empty());
        block_on(reap(&mut s.world.netlink(s.host))).unwrap();
        assert!(s.world.ns(s.host).by_name(&h.name).is_none());
        assert!(!s.world.ns(s.pod).links.contains_key(&p.index), "the peer went with it");
        block_on(reap(&mut s.world.netlink(s.host))).unwrap();
    }

    #[test]
    fn del_twice_is_harmless() {
        let s = setup();
        let spec = dual();
        add(&s, &spec).unwrap();
        del(&s, &spec);
        // The host end is already retired: marking it again changes nothing.
        assert_eq!(del(&s, &spec), (false, true));
        block_on(reap(&mut s.world.netlink(s.host))).unwrap();
        assert_eq!(del(&s, &spec), (false, false));
    }

    #[test]
    fn add_after_del_before_the_reap_replaces_the_retired_pair() {
        let s = setup();
        let spec = dual();
        let (first, _) = add(&s, &spec).unwrap();
        del(&s, &spec);
        let (second, _) = add(&s, &spec).unwrap();
        assert!(second.created);
        let host = s.world.ns(s.host);
        let link = host.by_name(&first.name).unwrap();
        assert_eq!(link.group, 0);
        assert_eq!(link.mac, second.mac);
        block_on(check_pod(&mut s.world.netlink(s.pod), &spec)).unwrap();
        block_on(reap(&mut s.world.netlink(s.host))).unwrap();
        block_on(check_host(&mut s.world.netlink(s.host), "keel0", &spec)).unwrap();
    }

    #[test]
    fn retiring_from_the_host_only_touches_this_keys_veth() {
        let s = setup();
        let spec = dual();
        let (h, _) = add(&s, &spec).unwrap();
        let mut host = s.world.netlink(s.host);
        assert!(!block_on(retire_host(&mut host, "c2", "eth0", true)).unwrap());
        s.world.edit(s.host, |ns| {
            ns.links.values_mut().find(|l| l.name == h.name).unwrap().alias = Some("x".into());
        });
        assert!(!block_on(retire_host(&mut host, "c1", "eth0", true)).unwrap(), "alias mismatch");
        assert_eq!(s.world.ns(s.host).by_name(&h.name).unwrap().group, 0);
    }

    #[test]
    fn ports_lists_our_bridge_ports_with_their_keys() {
        let s = setup();
        add(&s, &dual()).unwrap();
        s.world.add_link(s.host, "other", 1500, true);
        let ports = block_on(ports(&mut s.world.netlink(s.host), "keel0")).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!((ports[0].container_id.as_str(), ports[0].ifname.as_str()), ("c1", "eth0"));
    }

    #[test]
    fn a_failed_route_is_reported_with_its_operation() {
        let s = setup();
        s.world.fail_once(|op| matches!(op, Op::AddRoute { .. }), libc::ENETUNREACH);
        let err = add(&s, &dual()).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETUNREACH));
        assert!(err.to_string().contains("add route 0.0.0.0/0 via 10.42.0.1"), "{err}");
    }
}
