//! The real [`Netlink`] client over an rtnetlink connection.

use std::io;
use std::net::IpAddr;

use futures::stream::{Stream, StreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Error, Link, LinkRef, Netlink, Op, Result, Route, VethSpec};

/// [`Netlink`] over an rtnetlink connection (opened by [`crate::netns::NsThread::connect`]
/// in the namespace it serves).
#[derive(Debug, Clone)]
pub struct RtNetlink {
    handle: rtnetlink::Handle,
}

impl RtNetlink {
    /// Wraps a connection's handle.
    pub fn new(handle: rtnetlink::Handle) -> Self {
        RtNetlink { handle }
    }

    fn send(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &dyn Fn() -> String,
    ) -> Result<impl Stream<Item = NetlinkMessage<RouteNetlinkMessage>> + use<>> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        self.handle
            .request(req)
            .map_err(|e| Error::Netlink { op: op(), source: io::Error::other(e.to_string()) })
    }
}

/// The replies of one request: the payloads, or the kernel's error as an errno.
async fn collect(
    mut replies: impl Stream<Item = NetlinkMessage<RouteNetlinkMessage>> + Unpin,
    op: &dyn Fn() -> String,
) -> Result<Vec<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    while let Some(msg) = replies.next().await {
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(Error::Netlink {
                        op: op(),
                        source: io::Error::from_raw_os_error(-code.get()),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn link_message(r: &LinkRef) -> LinkMessage {
    let mut m = LinkMessage::default();
    match r {
        LinkRef::Index(i) => m.header.index = *i,
        LinkRef::Name(n) => m.attributes.push(LinkAttribute::IfName(n.clone())),
    }
    m
}

fn parse_link(m: LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        mac: [0; 6],
        master: None,
        up: m.header.flags.contains(LinkFlags::Up),
        alias: None,
        hairpin: None,
        group: 0,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(v) => link.mtu = v,
            LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(&a),
            LinkAttribute::Controller(i) if i != 0 => link.master = Some(i),
            LinkAttribute::IfAlias(s) => link.alias = Some(s),
            LinkAttribute::Group(g) => link.group = g,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            for p in port {
                                if let InfoBridgePort::HairpinMode(on) = p {
                                    link.hairpin = Some(on);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn veth_message(v: &VethSpec) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(v.peer.clone()),
        LinkAttribute::Address(v.peer_mac.to_vec()),
        LinkAttribute::Mtu(v.mtu),
        LinkAttribute::NetNsFd(v.peer_netns),
    ];
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes = vec![
        LinkAttribute::IfName(v.host.clone()),
        LinkAttribute::Address(v.host_mac.to_vec()),
        LinkAttribute::Mtu(v.mtu),
        LinkAttribute::Controller(v.master),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    m
}

fn address_message(index: u32, address: IpNet, nodad: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(address.addr());
    m.header.prefix_len = address.prefix_len();
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    let mut flags = AddressFlags::Permanent;
    if nodad {
        flags |= AddressFlags::Nodad;
        m.header.flags = AddressHeaderFlags::Nodad;
    }
    m.attributes.push(AddressAttribute::Local(address.addr()));
    m.attributes.push(AddressAttribute::Address(address.addr()));
    if let IpNet::V4(v4) = address {
        m.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
    }
    m.attributes.push(AddressAttribute::Flags(flags));
    m
}

fn route_message(dst: IpNet, gateway: IpAddr, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(dst.addr());
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if dst.prefix_len() > 0 {
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
    }
    m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    m.attributes.push(RouteAttribute::Oif(oif));
    m
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The request of one operation, and its netlink flags.
fn request(op: &Op) -> (RouteNetlinkMessage, u16) {
    const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;
    const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    match op {
        Op::CreateBridge { name, mtu, mac } => {
            let mut m = LinkMessage::default();
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
            m.attributes = vec![
                LinkAttribute::IfName(name.clone()),
                LinkAttribute::Mtu(*mtu),
                LinkAttribute::Address(mac.to_vec()),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
            ];
            (RouteNetlinkMessage::NewLink(m), CREATE)
        }
        Op::CreateVeth(v) => (RouteNetlinkMessage::NewLink(veth_message(v)), CREATE),
        Op::SetUp(r) => {
            let mut m = link_message(r);
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
            (RouteNetlinkMessage::SetLink(m), CHANGE)
        }
        Op::SetMtu(r, mtu) => {
            let mut m = link_message(r);
            m.attributes.push(LinkAttribute::Mtu(*mtu));
            (RouteNetlinkMessage::SetLink(m), CHANGE)
        }
        Op::SetMaster(r, master) => {
            let mut m = link_message(r);
            m.attributes.push(LinkAttribute::Controller(*master));
            (RouteNetlinkMessage::SetLink(m), CHANGE)
        }
        Op::SetAlias(r, alias) => {
            let mut m = link_message(r);
            m.attributes.push(LinkAttribute::IfAlias(alias.clone()));
            (RouteNetlinkMessage::SetLink(m), CHANGE)
        }
        Op::SetHairpin(r, on) => {
            // RTM_NEWLINK on an existing port with bridge slave data: the kernel applies it
            // through the bridge's slave_changelink, and the port may be named.
            let mut m = link_message(r);
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    *on,
                )])),
            ]));
            (RouteNetlinkMessage::NewLink(m), CHANGE)
        }
        Op::AddAddress { index, address, nodad } => {
            (RouteNetlinkMessage::NewAddress(address_message(*index, *address, *nodad)), CREATE)
        }
        Op::AddRoute { dst, gateway, oif } => {
            (RouteNetlinkMessage::NewRoute(route_message(*dst, *gateway, *oif)), CREATE)
        }
        Op::SetDown(r) => {
            let mut m = link_message(r);
            m.header.change_mask = LinkFlags::Up;
            (RouteNetlinkMessage::SetLink(m), CHANGE)
        }
        Op::Rename(index, name) => {
            let mut m = LinkMessage::default();
            m.header.index = *index;
            m.attributes.push(LinkAttribute::IfName(name.clone()));
            (RouteNetlinkMessage::SetLink(m), CHANGE)
        }
        Op::SetGroup(r, g) => {
            let mut m = link_message(r);
            m.attributes.push(LinkAttribute::Group(*g));
            (RouteNetlinkMessage::SetLink(m), CHANGE)
        }
        Op::DeleteLink(r) => (RouteNetlinkMessage::DelLink(link_message(r)), CHANGE),
        Op::DeleteGroup(g) => {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::Group(*g));
            (RouteNetlinkMessage::DelLink(m), CHANGE)
        }
    }
}

impl Netlink for RtNetlink {
    async fn link(&mut self, r: &LinkRef) -> Result<Option<Link>> {
        let op = || format!("get {r}");
        let replies =
            self.send(RouteNetlinkMessage::GetLink(link_message(r)), NLM_F_REQUEST, &op)?;
        match collect(replies, &op).await {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn links(&mut self) -> Result<Vec<Link>> {
        let op = || "list links".to_owned();
        let replies = self.send(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            &op,
        )?;
        Ok(collect(replies, &op)
            .await?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect())
    }

    async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>> {
        let op = || format!("list addresses of link {index}");
        let mut req = AddressMessage::default();
        req.header.index = index;
        let replies =
            self.send(RouteNetlinkMessage::GetAddress(req), NLM_F_REQUEST | NLM_F_DUMP, &op)?;
        let mut out = Vec::new();
        for m in collect(replies, &op).await? {
            let RouteNetlinkMessage::NewAddress(a) = m else { continue };
            if a.header.index != index || a.header.scope == AddressScope::Link {
                continue;
            }
            let ip = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(net) = ip.and_then(|ip| IpNet::new(ip, a.header.prefix_len).ok()) {
                out.push(net);
            }
        }
        Ok(out)
    }

    async fn default_routes(&mut self) -> Result<Vec<Route>> {
        // One dump for both families (AF_UNSPEC): IPv4's routes, then IPv6's; with strict
        // checking (see `NsThread::connect`) the kernel sends the main table's unicast
        // routes only.
        let op = || "list routes".to_string();
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Unspec;
        req.header.table = RouteHeader::RT_TABLE_MAIN;
        req.header.kind = RouteType::Unicast;
        let replies =
            self.send(RouteNetlinkMessage::GetRoute(req), NLM_F_REQUEST | NLM_F_DUMP, &op)?;
        let mut out = Vec::new();
        for m in collect(replies, &op).await? {
            let RouteNetlinkMessage::NewRoute(r) = m else { continue };
            let dst = match r.header.address_family {
                AddressFamily::Inet => IpNet::V4(Default::default()),
                AddressFamily::Inet6 => IpNet::V6(Default::default()),
                _ => continue,
            };
            if r.header.destination_prefix_length != 0
                || r.header.table != RouteHeader::RT_TABLE_MAIN
                || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut route = Route { dst, gateway: None, oif: None };
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Gateway(g) => route.gateway = route_ip(g),
                    RouteAttribute::Oif(i) => route.oif = Some(*i),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }

    async fn apply(&mut self, ops: &[Op]) -> Result<()> {
        // Send every request before reading any answer: one round trip for the batch.
        let mut pending = Vec::with_capacity(ops.len());
        for op in ops {
            let (msg, flags) = request(op);
            let describe = || op.to_string();
            pending.push((self.send(msg, flags, &describe)?, op));
        }
        let mut first = None;
        for (replies, op) in pending {
            let describe = || op.to_string();
            if let Err(e) = collect(replies, &describe).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
