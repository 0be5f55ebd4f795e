//! A fake [`Netlink`] and [`Sysctl`] for unit tests: a world of simulated network namespaces
//! that records every applied operation and enforces the kernel rules the plans rely on
//! (names are unique, a route needs its interface up and its gateway on a connected subnet,
//! deleting one end of a veth deletes the other, a pod end is created in the namespace its
//! descriptor names).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use super::{Error, Link, LinkRef, Netlink, Op, Result, Route, Sysctl, LOOPBACK_INDEX};

/// One simulated namespace.
#[derive(Debug, Clone)]
pub struct FakeNs {
    /// Links by index.
    pub links: BTreeMap<u32, Link>,
    /// Addresses by link index.
    pub addresses: HashMap<u32, Vec<IpNet>>,
    /// Routes (gateway routes only; connected routes are implied by addresses).
    pub routes: Vec<Route>,
    /// Sysctls.
    pub sysctls: HashMap<String, String>,
    /// Every operation applied here, in order.
    pub log: Vec<Op>,
    /// Netlink requests served here (each query and each applied operation counts one).
    pub requests: usize,
    next_index: u32,
}

impl FakeNs {
    fn new() -> Self {
        let mut links = BTreeMap::new();
        links.insert(
            LOOPBACK_INDEX,
            Link {
                index: LOOPBACK_INDEX,
                name: "lo".into(),
                kind: None,
                mtu: 65536,
                mac: [0; 6],
                master: None,
                up: false,
                alias: None,
                hairpin: None,
                group: 0,
            },
        );
        let sysctls = [
            ("net/ipv4/ip_forward", "0"),
            ("net/ipv6/conf/all/forwarding", "0"),
            ("net/ipv6/conf/default/accept_dad", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        FakeNs {
            links,
            addresses: HashMap::new(),
            routes: Vec::new(),
            sysctls,
            log: Vec::new(),
            requests: 0,
            next_index: 2,
        }
    }

    /// The link named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }

    fn resolve(&self, r: &LinkRef) -> Option<u32> {
        match r {
            LinkRef::Index(i) => self.links.contains_key(i).then_some(*i),
            LinkRef::Name(n) => self.by_name(n).map(|l| l.index),
        }
    }

    fn add_link(&mut self, mut link: Link) -> u32 {
        link.index = self.next_index;
        self.next_index += 1;
        let index = link.index;
        self.links.insert(index, link);
        index
    }

    fn remove_link(&mut self, index: u32) {
        self.links.remove(&index);
        self.addresses.remove(&index);
        self.routes.retain(|r| r.oif != Some(index));
    }
}

/// Selects the operations an injected failure applies to.
pub type OpMatcher = fn(&Op) -> bool;

#[derive(Debug)]
struct World {
    namespaces: Vec<FakeNs>,
    /// Pretend descriptors of namespaces, for `VethSpec::peer_netns`.
    fds: HashMap<RawFd, usize>,
    /// Veth peers: (ns, index) both ways.
    peers: HashMap<(usize, u32), (usize, u32)>,
    /// Injected failures: the first operation matching fails with the errno, once.
    failures: Vec<(OpMatcher, i32)>,
}

/// A shared world of simulated namespaces.
#[derive(Debug, Clone)]
pub struct FakeWorld(Arc<Mutex<World>>);

impl Default for FakeWorld {
    fn default() -> Self {
        FakeWorld(Arc::new(Mutex::new(World {
            namespaces: Vec::new(),
            fds: HashMap::new(),
            peers: HashMap::new(),
            failures: Vec::new(),
        })))
    }
}

impl FakeWorld {
    /// An empty world.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a namespace (with `lo`, down); returns its pretend descriptor.
    pub fn add_namespace(&self) -> RawFd {
        let mut w = self.lock();
        w.namespaces.push(FakeNs::new());
        let fd = 1000 + w.namespaces.len() as RawFd;
        let ns = w.namespaces.len() - 1;
        w.fds.insert(fd, ns);
        fd
    }

    /// Forgets a namespace's descriptor, as if its pin were gone; its links die with it.
    pub fn remove_namespace(&self, fd: RawFd) {
        let mut w = self.lock();
        if let Some(ns) = w.fds.remove(&fd) {
            let indexes: Vec<u32> = w.namespaces[ns].links.keys().copied().collect();
            for i in indexes {
                if let Some(peer) = w.peers.remove(&(ns, i)) {
                    w.peers.remove(&peer);
                    w.namespaces[peer.0].remove_link(peer.1);
                }
            }
            w.namespaces[ns] = FakeNs::new();
        }
    }

    /// Whether a namespace descriptor is still live.
    pub fn has_namespace(&self, fd: RawFd) -> bool {
        self.lock().fds.contains_key(&fd)
    }

    /// A client of the namespace behind `fd`.
    pub fn netlink(&self, fd: RawFd) -> FakeNetlink {
        FakeNetlink { world: self.clone(), fd }
    }

    /// The sysctls of the namespace behind `fd`.
    pub fn sysctl(&self, fd: RawFd) -> FakeSysctl {
        FakeSysctl { world: self.clone(), fd }
    }

    /// A copy of the namespace behind `fd`.
    pub fn ns(&self, fd: RawFd) -> FakeNs {
        let w = self.lock();
        w.namespaces[w.fds[&fd]].clone()
    }

    /// Changes the namespace behind `fd` directly (to simulate someone else's changes).
    pub fn edit<T>(&self, fd: RawFd, f: impl FnOnce(&mut FakeNs) -> T) -> T {
        let mut w = self.lock();
        let ns = w.fds[&fd];
        f(&mut w.namespaces[ns])
    }

    /// Adds a plain link (an uplink, say) to the namespace behind `fd`; returns its index.
    pub fn add_link(&self, fd: RawFd, name: &str, mtu: u32, up: bool) -> u32 {
        self.edit(fd, |ns| {
            ns.add_link(Link {
                index: 0,
                name: name.into(),
                kind: None,
                mtu,
                mac: [2, 0, 0, 0, 0, 1],
                master: None,
                up,
                alias: None,
                hairpin: None,
                group: 0,
            })
        })
    }

    /// Makes the next operation that `matches` fail with `errno`.
    pub fn fail_once(&self, matches: OpMatcher, errno: i32) {
        self.lock().failures.push((matches, errno));
    }
}

/// A [`Netlink`] client of one simulated namespace.
#[derive(Debug, Clone)]
pub struct FakeNetlink {
    world: FakeWorld,
    fd: RawFd,
}

fn errno(op: &Op, code: i32) -> Error {
    Error::Netlink { op: op.to_string(), source: io::Error::from_raw_os_error(code) }
}

fn apply_one(w: &mut World, ns: usize, op: &Op) -> Result<()> {
    if let Some(pos) = w.failures.iter().position(|(m, _)| m(op)) {
        let (_, code) = w.failures.remove(pos);
        return Err(errno(op, code));
    }
    let here = &mut w.namespaces[ns];
    let missing = || errno(op, libc::ENODEV);
    match op {
        Op::CreateBridge { name, mtu, mac } => {
            if here.by_name(name).is_some() {
                return Err(errno(op, libc::EEXIST));
            }
            here.add_link(Link {
                index: 0,
                name: name.clone(),
                kind: Some("bridge".into()),
                mtu: *mtu,
                mac: *mac,
                master: None,
                up: true,
                alias: None,
                hairpin: None,
                group: 0,
            });
        }
        Op::CreateVeth(v) => {
            let Some(&peer_ns) = w.fds.get(&v.peer_netns) else {
                return Err(errno(op, libc::EBADF));
            };
            let here = &w.namespaces[ns];
            if here.by_name(&v.host).is_some() || w.namespaces[peer_ns].by_name(&v.peer).is_some() {
                return Err(errno(op, libc::EEXIST));
            }
            match here.links.get(&v.master) {
                Some(l) if l.kind.as_deref() == Some("bridge") => {}
                Some(_) => return Err(errno(op, libc::EINVAL)),
                None => return Err(missing()),
            }
            let host = w.namespaces[ns].add_link(Link {
                index: 0,
                name: v.host.clone(),
                kind: Some("veth".into()),
                mtu: v.mtu,
                mac: v.host_mac,
                master: Some(v.master),
                up: true,
                // Like the kernel: a create request's IFLA_IFALIAS is ignored.
                alias: None,
                hairpin: Some(false),
                group: 0,
            });
            let peer = w.namespaces[peer_ns].add_link(Link {
                index: 0,
                name: v.peer.clone(),
                kind: Some("veth".into()),
                mtu: v.mtu,
                mac: v.peer_mac,
                master: None,
                up: false,
                alias: None,
                hairpin: None,
                group: 0,
            });
            w.peers.insert((ns, host), (peer_ns, peer));
            w.peers.insert((peer_ns, peer), (ns, host));
        }
        Op::SetUp(r) => {
            let i = here.resolve(r).ok_or_else(missing)?;
            if let Some(l) = here.links.get_mut(&i) {
                l.up = true;
            }
        }
        Op::SetMtu(r, mtu) => {
            let i = here.resolve(r).ok_or_else(missing)?;
            if let Some(l) = here.links.get_mut(&i) {
                l.mtu = *mtu;
            }
        }
        Op::SetMaster(r, master) => {
            let i = here.resolve(r).ok_or_else(missing)?;
            if !here.links.contains_key(master) {
                return Err(missing());
            }
            if let Some(l) = here.links.get_mut(&i) {
                l.master = Some(*master);
                l.hairpin = Some(false);
            }
        }
        Op::SetAlias(r, alias) => {
            let i = here.resolve(r).ok_or_else(missing)?;
            if let Some(l) = here.links.get_mut(&i) {
                l.alias = Some(alias.clone());
            }
        }
        Op::SetHairpin(r, on) => {
            let i = here.resolve(r).ok_or_else(missing)?;
            let l = here.links.get_mut(&i).ok_or_else(missing)?;
            if l.master.is_none() {
                return Err(errno(op, libc::EOPNOTSUPP));
            }
            l.hairpin = Some(*on);
        }
        Op::AddAddress { index, address, .. } => {
            if !here.links.contains_key(index) {
                return Err(missing());
            }
            let addrs = here.addresses.entry(*index).or_default();
            if addrs.iter().any(|a| a.addr() == address.addr()) {
                return Err(errno(op, libc::EEXIST));
            }
            addrs.push(*address);
        }
        Op::AddRoute { dst, gateway, oif } => {
            let l = here.links.get(oif).ok_or_else(missing)?;
            if !l.up {
                return Err(errno(op, libc::ENETDOWN));
            }
            let on_link = here
                .addresses
                .get(oif)
                .is_some_and(|a| a.iter().any(|net| net.trunc().contains(gateway)));
            if !on_link {
                return Err(errno(op, libc::ENETUNREACH));
            }
            if here.routes.iter().any(|r| r.dst == *dst) {
                return Err(errno(op, libc::EEXIST));
            }
            here.routes.push(Route { dst: *dst, gateway: Some(*gateway), oif: Some(*oif) });
        }
        Op::SetDown(r) => {
            let i = here.resolve(r).ok_or_else(missing)?;
            if let Some(l) = here.links.get_mut(&i) {
                l.up = false;
            }
            // The kernel drops routes through a downed link, and its IPv6 addresses.
            here.routes.retain(|r| r.oif != Some(i));
            if let Some(a) = here.addresses.get_mut(&i) {
                a.retain(|a| a.addr().is_ipv4());
            }
        }
        Op::Rename(i, name) => {
            if here.by_name(name).is_some() {
                return Err(errno(op, libc::EEXIST));
            }
            let l = here.links.get_mut(i).ok_or_else(missing)?;
            if l.up {
                return Err(errno(op, libc::EBUSY));
            }
            l.name.clone_from(name);
        }
        Op::SetGroup(r, g) => {
            let i = here.resolve(r).ok_or_else(missing)?;
            if let Some(l) = here.links.get_mut(&i) {
                l.group = *g;
            }
        }
        Op::DeleteLink(r) => {
            let i = here.resolve(r).ok_or_else(missing)?;
            delete(w, ns, i);
        }
        Op::DeleteGroup(g) => {
            let doomed: Vec<u32> =
                here.links.values().filter(|l| l.group == *g).map(|l| l.index).collect();
            if doomed.is_empty() {
                return Err(missing());
            }
            for i in doomed {
                delete(w, ns, i);
            }
        }
    }
    Ok(())
}

fn delete(w: &mut World, ns: usize, index: u32) {
    w.namespaces[ns].remove_link(index);
    if let Some(peer) = w.peers.remove(&(ns, index)) {
        w.peers.remove(&peer);
        w.namespaces[peer.0].remove_link(peer.1);
    }
}

impl FakeNetlink {
    fn with<T>(&self, f: impl FnOnce(&mut World, usize) -> Result<T>) -> Result<T> {
        let mut w = self.world.lock();
        let Some(&ns) = w.fds.get(&self.fd) else {
            return Err(Error::Netlink {
                op: "use namespace".into(),
                source: io::Error::from_raw_os_error(libc::EBADF),
            });
        };
        w.namespaces[ns].requests += 1;
        f(&mut w, ns)
    }
}

impl Netlink for FakeNetlink {
    async fn link(&mut self, r: &LinkRef) -> Result<Option<Link>> {
        self.with(|w, ns| {
            let here = &w.namespaces[ns];
            Ok(here.resolve(r).and_then(|i| here.links.get(&i).cloned()))
        })
    }

    async fn links(&mut self) -> Result<Vec<Link>> {
        self.with(|w, ns| Ok(w.namespaces[ns].links.values().cloned().collect()))
    }

    async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>> {
        self.with(|w, ns| Ok(w.namespaces[ns].addresses.get(&index).cloned().unwrap_or_default()))
    }

    async fn default_routes(&mut self) -> Result<Vec<Route>> {
        self.with(|w, ns| {
            Ok(w.namespaces[ns]
                .routes
                .iter()
                .filter(|r| r.dst.prefix_len() == 0)
                .cloned()
                .collect())
        })
    }

    async fn apply(&mut self, ops: &[Op]) -> Result<()> {
        let mut w = self.world.lock();
        let Some(&ns) = w.fds.get(&self.fd) else {
            return Err(Error::Netlink {
                op: "use namespace".into(),
                source: io::Error::from_raw_os_error(libc::EBADF),
            });
        };
        let mut first = None;
        for op in ops {
            w.namespaces[ns].requests += 1;
            w.namespaces[ns].log.push(op.clone());
            if let Err(e) = apply_one(&mut w, ns, op) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The sysctls of one simulated namespace: global keys exist from the start, per-interface
/// keys (`net/ipv6/conf/<ifname>/…`, `net/ipv4/conf/<ifname>/…`) only while the link does.
#[derive(Debug, Clone)]
pub struct FakeSysctl {
    world: FakeWorld,
    fd: RawFd,
}

fn interface_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("net/ipv6/conf/").or_else(|| key.strip_prefix("net/ipv4/conf/"))?;
    let (ifname, _) = rest.split_once('/')?;
    (!matches!(ifname, "all" | "default")).then_some(ifname)
}

impl Sysctl for FakeSysctl {
    fn get(&mut self, key: &str) -> io::Result<String> {
        let mut w = self.world.lock();
        let ns = *w.fds.get(&self.fd).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let here = &mut w.namespaces[ns];
        if let Some(ifname) = interface_of(key) {
            if here.by_name(ifname).is_none() {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
        }
        here.sysctls.get(key).cloned().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn set(&mut self, key: &str, value: &str) -> io::Result<()> {
        let mut w = self.world.lock();
        let ns = *w.fds.get(&self.fd).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let here = &mut w.namespaces[ns];
        if let Some(ifname) = interface_of(key) {
            if here.by_name(ifname).is_none() {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
        } else if !here.sysctls.contains_key(key) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        here.sysctls.insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}
