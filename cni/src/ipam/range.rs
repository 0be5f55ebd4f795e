//! Range validation and the round-robin walk over a range set, with host-local's semantics:
//! a range defaults to `[network + 1, last address]` (IPv4: the address before broadcast), the
//! gateway defaults to `network + 1`, and the walk skips the network address, the IPv4
//! broadcast and the range's gateway.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{Error, Result};
use crate::config::RangeSet;

/// One validated range with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedRange {
    /// The subnet; addresses are handed out with its prefix length.
    pub subnet: IpNet,
    /// First allocatable address, inclusive.
    pub start: IpAddr,
    /// Last allocatable address, inclusive.
    pub end: IpAddr,
    /// The gateway, never handed out.
    pub gateway: IpAddr,
}

impl fmt::Display for ResolvedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A validated range set: alternatives for one address of the pod, all of one family.
pub(crate) type ResolvedSet = Vec<ResolvedRange>;

/// Renders a range set for messages: `10.42.0.1-10.42.0.254,10.43.0.1-10.43.0.254`.
pub(crate) fn describe(set: &[ResolvedRange]) -> String {
    set.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// An address as a number, so ranges can be walked and compared in one way for both families.
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`to_u128`] in the family of `like`. Values come from ranges of that family,
/// so the IPv4 conversion cannot overflow; it saturates rather than panics if it ever did.
fn from_u128(n: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

impl ResolvedRange {
    /// Validates one configured range and fills in its defaults. `set` is the range set's index,
    /// for messages.
    fn resolve(set: usize, range: &crate::config::IpRange) -> Result<Self> {
        let subnet = range.subnet;
        if subnet.addr() != subnet.network() {
            return Err(Error::HostBitsSet { set, subnet, network: subnet.network() });
        }
        if subnet.max_prefix_len() - subnet.prefix_len() < 2 {
            return Err(Error::SubnetTooSmall { set, subnet });
        }
        let network = subnet.network();
        let first = from_u128(to_u128(network) + 1, network);
        let last = match subnet {
            IpNet::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4.broadcast()) - 1)),
            IpNet::V6(v6) => IpAddr::V6(v6.broadcast()),
        };
        let inside = |field: &'static str, addr: Option<IpAddr>, default: IpAddr| match addr {
            Some(addr) if !subnet.contains(&addr) => {
                Err(Error::OutsideSubnet { set, field, addr, subnet })
            }
            Some(addr) => Ok(addr),
            None => Ok(default),
        };
        let start = inside("rangeStart", range.range_start, first)?;
        let end = inside("rangeEnd", range.range_end, last)?;
        let gateway = inside("gateway", range.gateway, first)?;
        if to_u128(start) > to_u128(end) {
            return Err(Error::StartAfterEnd { set, start, end });
        }
        if gateway == network || is_v4_broadcast(subnet, gateway) {
            return Err(Error::ReservedGateway { set, gateway, subnet });
        }
        Ok(ResolvedRange { subnet, start, end, gateway })
    }

    /// Whether `ip` lies in `[start, end]` (and so in the subnet).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// Whether `ip` may never be handed out: the network address, the IPv4 broadcast or the
    /// gateway.
    pub(crate) fn is_reserved(&self, ip: IpAddr) -> bool {
        ip == self.subnet.network() || ip == self.gateway || is_v4_broadcast(self.subnet, ip)
    }

    fn overlaps(&self, other: &ResolvedRange) -> bool {
        self.start.is_ipv4() == other.start.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
}

fn is_v4_broadcast(subnet: IpNet, ip: IpAddr) -> bool {
    matches!(subnet, IpNet::V4(_)) && ip == subnet.broadcast()
}

/// Validates configured range sets and fills in host-local's defaults: at least one set, no
/// empty set, one family per set, host bits clear, room for at least two hosts, range bounds
/// and gateway inside the subnet, start not after end, no two ranges overlapping (within a set
/// or across sets).
pub fn resolve(ranges: &[RangeSet]) -> Result<Vec<ResolvedSet>> {
    if ranges.is_empty() {
        return Err(Error::NoRanges);
    }
    let mut sets = Vec::with_capacity(ranges.len());
    for (set, configured) in ranges.iter().enumerate() {
        let Some(first) = configured.first() else {
            return Err(Error::EmptyRangeSet { set });
        };
        let family_v4 = first.subnet.addr().is_ipv4();
        let mut resolved = Vec::with_capacity(configured.len());
        for range in configured {
            if range.subnet.addr().is_ipv4() != family_v4 {
                return Err(Error::MixedFamilies { set });
            }
            resolved.push(ResolvedRange::resolve(set, range)?);
        }
        sets.push(resolved);
    }
    let all: Vec<(usize, &ResolvedRange)> =
        sets.iter().enumerate().flat_map(|(i, set)| set.iter().map(move |r| (i, r))).collect();
    for (n, (set_a, a)) in all.iter().enumerate() {
        for (set_b, b) in &all[n + 1..] {
            if a.overlaps(b) {
                return Err(Error::Overlap {
                    a: format!("range {a} of set {set_a}"),
                    b: format!("range {b} of set {set_b}"),
                });
            }
        }
    }
    Ok(sets)
}

/// The order in which a set's addresses are tried: after `last` (the last address reserved
/// from this set) to the end of its range, through the following ranges, wrapping around, and
/// `last` itself at the very end; from the first range's start when `last` is unknown or no
/// longer in the set. Reserved addresses are skipped. Yields the range index with the address.
pub(crate) fn walk(
    set: &[ResolvedRange],
    last: Option<IpAddr>,
) -> impl Iterator<Item = (usize, IpAddr)> + '_ {
    let position = last.and_then(|ip| set.iter().position(|r| r.contains(ip)).map(|i| (i, ip)));
    let mut segments: Vec<(usize, u128, u128)> = Vec::with_capacity(set.len() + 1);
    match position {
        None => {
            segments
                .extend(set.iter().enumerate().map(|(i, r)| (i, to_u128(r.start), to_u128(r.end))));
        }
        Some((i, last)) => {
            let last = to_u128(last);
            let r = &set[i];
            if last < to_u128(r.end) {
                segments.push((i, last + 1, to_u128(r.end)));
            }
            for k in 1..set.len() {
                let j = (i + k) % set.len();
                segments.push((j, to_u128(set[j].start), to_u128(set[j].end)));
            }
            segments.push((i, to_u128(r.start), last));
        }
    }
    segments.into_iter().flat_map(move |(i, from, to)| {
        let range = &set[i];
        (from..=to)
            .map(move |n| (i, from_u128(n, range.start)))
            .filter(move |(_, ip)| !range.is_reserved(*ip))
    })
}
