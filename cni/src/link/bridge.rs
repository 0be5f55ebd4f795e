//! The node bridge: created once, up, holding every range's gateway, with the configured or
//! derived MTU; forwarding on in the host namespace. [`ensure`] is idempotent and repairs
//! what is missing (a deleted address, a downed bridge, a fixed MTU changed). A derived MTU
//! is the uplink's when the bridge is created; an existing bridge keeps its own.

use ipnet::IpNet;

use super::{ensure_sysctl, random_mac, Error, Link, LinkRef, Netlink, Op, Result, Sysctl};
use crate::config::Mtu;

/// MTU when the host namespace has no default route.
pub const FALLBACK_MTU: u32 = 1500;

/// What the bridge must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Its name.
    pub name: String,
    /// How its MTU is chosen.
    pub mtu: Mtu,
    /// The gateways it holds, with their subnets' prefix lengths.
    pub gateways: Vec<IpNet>,
}

/// The bridge as ensured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bridge {
    /// Interface index.
    pub index: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU, also every veth's.
    pub mtu: u32,
}

/// The MTU `mtu` resolves to in the namespace `nl` serves: the uplink's (the device of the
/// first default route) minus the overlay's overhead, or the fixed value.
pub async fn resolve_mtu(nl: &mut impl Netlink, mtu: Mtu) -> Result<u32> {
    match mtu {
        Mtu::Fixed(m) => Ok(m),
        Mtu::Auto { overlay } => {
            let uplink = nl.default_routes().await?.into_iter().find_map(|r| r.oif);
            let base = match uplink {
                Some(i) => nl.link(&LinkRef::Index(i)).await?.map_or(FALLBACK_MTU, |l| l.mtu),
                None => FALLBACK_MTU,
            };
            Ok(base.saturating_sub(overlay.map_or(0, |o| o.overhead())))
        }
    }
}

/// What is missing from an existing bridge `link` with `addresses`.
pub fn plan(link: &Link, addresses: &[IpNet], mtu: u32, spec: &BridgeSpec) -> Vec<Op> {
    let me = LinkRef::Index(link.index);
    let mut ops = Vec::new();
    if link.mtu != mtu {
        ops.push(Op::SetMtu(me.clone(), mtu));
    }
    if !link.up {
        ops.push(Op::SetUp(me));
    }
    for gw in &spec.gateways {
        if !addresses.iter().any(|a| a.addr() == gw.addr()) {
            ops.push(Op::AddAddress { index: link.index, address: *gw, nodad: true });
        }
    }
    ops
}

/// Makes the bridge exist as `spec` says, and forwarding on for the families it serves.
/// Safe to run concurrently with another process doing the same.
pub async fn ensure(
    nl: &mut impl Netlink,
    sys: &mut impl Sysctl,
    spec: &BridgeSpec,
) -> Result<Bridge> {
    if spec.gateways.iter().any(|g| g.addr().is_ipv4()) {
        ensure_sysctl(sys, "net/ipv4/ip_forward", "1")?;
    }
    if spec.gateways.iter().any(|g| g.addr().is_ipv6()) {
        ensure_sysctl(sys, "net/ipv6/conf/all/forwarding", "1")?;
    }
    let name = LinkRef::Name(spec.name.clone());
    let (link, mtu) = match nl.link(&name).await? {
        // An existing bridge keeps the MTU it was given (a fixed one is enforced): resolving
        // the uplink's means a route dump, which every ADD would pay for.
        Some(l) => {
            let mtu = match spec.mtu {
                Mtu::Fixed(m) => m,
                Mtu::Auto { .. } => l.mtu,
            };
            (l, mtu)
        }
        None => {
            let mtu = resolve_mtu(nl, spec.mtu).await?;
            let create = Op::CreateBridge { name: spec.name.clone(), mtu, mac: random_mac() };
            match nl.apply(&[create]).await {
                Ok(()) => {}
                // Someone else created it in between: use theirs.
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
            let l = nl
                .link(&name)
                .await?
                .ok_or_else(|| Error::NoSuchLink { name: spec.name.clone() })?;
            (l, mtu)
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(Error::NotABridge {
            name: spec.name.clone(),
            kind: link.kind.unwrap_or_else(|| "none".into()),
        });
    }
    let addresses = nl.addresses(link.index).await?;
    let ops = plan(&link, &addresses, mtu, spec);
    if !ops.is_empty() {
        tracing::info!(bridge = %spec.name, ops = ops.len(), "repairing bridge");
        match nl.apply(&ops).await {
            Ok(()) => {}
            // A concurrent ensure added the same address.
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bridge { index: link.index, mac: link.mac, mtu })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::config::Overlay;
    use crate::link::fake::FakeWorld;
    use crate::link::Route;

    fn spec(mtu: Mtu) -> BridgeSpec {
        BridgeSpec {
            name: "keel0".into(),
            mtu,
            gateways: vec!["10.42.0.1/24".parse().unwrap(), "fd42::1/64".parse().unwrap()],
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn bridge_is_created_up_with_gateways_nodad_and_forwarding_on() {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        let b = block_on(ensure(
            &mut world.netlink(host),
            &mut world.sysctl(host),
            &spec(Mtu::Fixed(1400)),
        ))
        .unwrap();
        let ns = world.ns(host);
        let link = ns.by_name("keel0").unwrap();
        assert_eq!(link.index, b.index);
        assert!(link.up);
        assert_eq!(link.mtu, 1400);
        assert_eq!(link.mac, b.mac);
        assert_eq!(b.mtu, 1400);
        assert!(ns.log.iter().all(|op| match op {
            Op::AddAddress { nodad, .. } => *nodad,
            _ => true,
        }));
        assert_eq!(ns.addresses[&b.index].len(), 2);
        assert_eq!(ns.sysctls["net/ipv4/ip_forward"], "1");
        assert_eq!(ns.sysctls["net/ipv6/conf/all/forwarding"], "1");
    }

    #[test]
    fn ensuring_twice_changes_nothing_the_second_time() {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        let s = spec(Mtu::Fixed(1500));
        let a = block_on(ensure(&mut world.netlink(host), &mut world.sysctl(host), &s)).unwrap();
        let ops_after_first = world.ns(host).log.len();
        let b = block_on(ensure(&mut world.netlink(host), &mut world.sysctl(host), &s)).unwrap();
        assert_eq!(a, b);
        assert_eq!(world.ns(host).log.len(), ops_after_first, "no operation on the second run");
    }

    #[test]
    fn a_deleted_gateway_address_and_a_downed_bridge_are_repaired() {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        let s = spec(Mtu::Fixed(1500));
        let b = block_on(ensure(&mut world.netlink(host), &mut world.sysctl(host), &s)).unwrap();
        world.edit(host, |ns| {
            ns.addresses.get_mut(&b.index).unwrap().retain(|a| a.addr().is_ipv4());
            ns.links.get_mut(&b.index).unwrap().up = false;
        });
        block_on(ensure(&mut world.netlink(host), &mut world.sysctl(host), &s)).unwrap();
        let ns = world.ns(host);
        assert!(ns.links[&b.index].up);
        assert_eq!(ns.addresses[&b.index].len(), 2);
    }

    #[test]
    fn auto_mtu_follows_the_default_route_uplink_minus_the_overlay() {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        let uplink = world.add_link(host, "eth0", 9000, true);
        world.edit(host, |ns| {
            ns.routes.push(Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("192.0.2.1".parse().unwrap()),
                oif: Some(uplink),
            })
        });
        let mut nl = world.netlink(host);
        assert_eq!(block_on(resolve_mtu(&mut nl, Mtu::Auto { overlay: None })).unwrap(), 9000);
        let vx = Mtu::Auto { overlay: Some(Overlay::VxlanV6) };
        assert_eq!(block_on(resolve_mtu(&mut nl, vx)).unwrap(), 8930);
    }

    #[test]
    fn an_existing_bridge_keeps_its_mtu_when_auto_and_gets_the_fixed_one() {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        let b = block_on(ensure(
            &mut world.netlink(host),
            &mut world.sysctl(host),
            &spec(Mtu::Fixed(1400)),
        ))
        .unwrap();
        let auto = spec(Mtu::Auto { overlay: None });
        let again = block_on(ensure(&mut world.netlink(host), &mut world.sysctl(host), &auto));
        assert_eq!(again.unwrap().mtu, 1400, "auto keeps the bridge's MTU");
        assert!(!world.ns(host).log.iter().any(|op| matches!(op, Op::SetMtu(..))));
        let fixed = block_on(ensure(
            &mut world.netlink(host),
            &mut world.sysctl(host),
            &spec(Mtu::Fixed(1300)),
        ))
        .unwrap();
        assert_eq!(fixed.mtu, 1300);
        assert_eq!(world.ns(host).links[&b.index].mtu, 1300, "a fixed MTU is enforced");
    }

    #[test]
    fn auto_mtu_without_a_default_route_is_1500() {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        let vx = Mtu::Auto { overlay: Some(Overlay::VxlanV4) };
        assert_eq!(block_on(resolve_mtu(&mut world.netlink(host), vx)).unwrap(), 1450);
    }

    #[test]
    fn a_non_bridge_link_with_the_bridge_name_is_refused() {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        world.add_link(host, "keel0", 1500, true);
        let err = block_on(ensure(
            &mut world.netlink(host),
            &mut world.sysctl(host),
            &spec(Mtu::Fixed(1500)),
        ))
        .unwrap_err();
        assert!(matches!(err, Error::NotABridge { .. }), "{err}");
    }

    #[test]
    fn a_bridge_missing_after_a_lost_creation_race_is_an_error() {
        let world = FakeWorld::new();
        let host = world.add_namespace();
        // Creation "loses a race" (EEXIST), yet the winner's bridge is not there either.
        world.fail_once(|op| matches!(op, Op::CreateBridge { .. }), libc::EEXIST);
        let err = block_on(ensure(
            &mut world.netlink(host),
            &mut world.sysctl(host),
            &spec(Mtu::Fixed(1500)),
        ))
        .unwrap_err();
        assert!(matches!(err, Error::NoSuchLink { .. }), "{err}");
    }
}
