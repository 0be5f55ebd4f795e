//! Rule expressions: the small part of the nf_tables virtual machine egress masquerade needs.
//!
//! Each expression encodes as one `NFTA_LIST_ELEM` holding `NFTA_EXPR_NAME` and a nested
//! `NFTA_EXPR_DATA`, attributes in the order libnftnl emits them (the kernel does not care,
//! but it makes captures of `nft` comparable byte for byte).

use std::net::IpAddr;

use ipnet::IpNet;

use super::wire::Writer;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;

const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 1;

const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

const NFTA_MASQ_FLAGS: u16 = 1;

/// `IFNAMSIZ`: interface names are compared as 16 NUL-padded bytes.
pub const IFNAMSIZ: usize = 16;

/// A data register (`enum nft_registers`). Only the four 16-byte registers are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    /// `NFT_REG_1`.
    R1 = 1,
    /// `NFT_REG_2`.
    R2 = 2,
    /// `NFT_REG_3`.
    R3 = 3,
    /// `NFT_REG_4`.
    R4 = 4,
}

/// What a `meta` expression loads (`enum nft_meta_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// `NFT_META_IIFNAME`: the input interface's name (16 bytes).
    IifName = 6,
    /// `NFT_META_OIFNAME`: the output interface's name (16 bytes).
    OifName = 7,
    /// `NFT_META_NFPROTO`: the netfilter family of the packet (1 byte, `NFPROTO_*`).
    NfProto = 15,
    /// `NFT_META_L4PROTO`: the transport protocol number (1 byte).
    L4Proto = 16,
}

/// Where a payload offset counts from (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    /// `NFT_PAYLOAD_LL_HEADER`.
    LinkLayer = 0,
    /// `NFT_PAYLOAD_NETWORK_HEADER`.
    Network = 1,
    /// `NFT_PAYLOAD_TRANSPORT_HEADER`.
    Transport = 2,
}

/// A comparison (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `NFT_CMP_EQ`.
    Eq = 0,
    /// `NFT_CMP_NEQ`.
    Neq = 1,
}

/// Which address of the network header to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// The source address.
    Source,
    /// The destination address.
    Destination,
}

/// The netfilter protocol families (`NFPROTO_*`) a rule or table can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `NFPROTO_INET`: IPv4 and IPv6 in one table.
    Inet = 1,
    /// `NFPROTO_IPV4`.
    Ipv4 = 2,
    /// `NFPROTO_IPV6`.
    Ipv6 = 10,
}

/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`: pick source ports at random for every connection.
pub const NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load packet metadata into `dreg`.
    Meta {
        /// What to load.
        key: MetaKey,
        /// Where to.
        dreg: Register,
    },
    /// Load `len` bytes of the packet at `base + offset` into `dreg`.
    Payload {
        /// The header the offset is relative to.
        base: PayloadBase,
        /// Offset in bytes.
        offset: u32,
        /// Length in bytes.
        len: u32,
        /// Where to.
        dreg: Register,
    },
    /// `dreg = (sreg & mask) ^ xor`; `mask` and `xor` have the same length.
    Bitwise {
        /// Operand.
        sreg: Register,
        /// Result.
        dreg: Register,
        /// The AND mask.
        mask: Vec<u8>,
        /// The XOR value.
        xor: Vec<u8>,
    },
    /// Compare `sreg` with `data`; the rule stops when the comparison fails.
    Cmp {
        /// The register compared.
        sreg: Register,
        /// The comparison.
        op: CmpOp,
        /// The value compared with.
        data: Vec<u8>,
    },
    /// Look `sreg` up in a set; the rule stops unless it is found (or, inverted, unless it is
    /// not).
    Lookup {
        /// The key's register.
        sreg: Register,
        /// The set's name.
        set: String,
        /// The set's id in this transaction, when the batch also creates the set.
        set_id: Option<u32>,
        /// Match when the key is absent.
        invert: bool,
    },
    /// Count packets and bytes.
    Counter,
    /// Masquerade: source NAT to the address of the output interface.
    Masquerade {
        /// `NF_NAT_RANGE_*` flags, e.g. [`NAT_RANGE_PROTO_RANDOM_FULLY`].
        flags: u32,
    },
}

impl Expr {
    /// `meta nfproto <family>`: a check every network-header match in an `inet` table
    /// depends on, as `nft` inserts it.
    pub fn nfproto(family: Family) -> [Expr; 2] {
        [
            Expr::Meta { key: MetaKey::NfProto, dreg: Register::R1 },
            Expr::Cmp { sreg: Register::R1, op: CmpOp::Eq, data: vec![family as u8] },
        ]
    }

    /// Load the IPv4 (`ipv6 == false`) or IPv6 source or destination address into `R1`.
    pub fn load_addr(ipv6: bool, which: Addr) -> Expr {
        let (offset, len) = match (ipv6, which) {
            (false, Addr::Source) => (12, 4),
            (false, Addr::Destination) => (16, 4),
            (true, Addr::Source) => (8, 16),
            (true, Addr::Destination) => (24, 16),
        };
        Expr::Payload { base: PayloadBase::Network, offset, len, dreg: Register::R1 }
    }

    /// `<addr> [!=] <prefix>` without a set: load, mask with the prefix, compare.
    pub fn addr_in_prefix(which: Addr, net: IpNet, op: CmpOp) -> Vec<Expr> {
        let net = net.trunc();
        let ipv6 = matches!(net, IpNet::V6(_));
        let mask = match net.netmask() {
            IpAddr::V4(m) => m.octets().to_vec(),
            IpAddr::V6(m) => m.octets().to_vec(),
        };
        let addr = ip_bytes(net.network());
        let mut out = vec![Expr::load_addr(ipv6, which)];
        if mask.iter().any(|b| *b != 0xff) {
            let xor = vec![0; mask.len()];
            out.push(Expr::Bitwise { sreg: Register::R1, dreg: Register::R1, mask, xor });
        }
        out.push(Expr::Cmp { sreg: Register::R1, op, data: addr });
        out
    }

    /// `oifname`/`iifname` `[!=] name`: the name NUL-padded to [`IFNAMSIZ`]. The caller
    /// checks the name fits.
    pub fn ifname(key: MetaKey, op: CmpOp, name: &str) -> [Expr; 2] {
        let mut data = name.as_bytes().to_vec();
        data.resize(IFNAMSIZ, 0);
        [Expr::Meta { key, dreg: Register::R1 }, Expr::Cmp { sreg: Register::R1, op, data }]
    }

    /// The name the kernel knows this expression type by.
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Cmp { .. } => "cmp",
            Expr::Lookup { .. } => "lookup",
            Expr::Counter => "counter",
            Expr::Masquerade { .. } => "masq",
        }
    }

    /// Writes this expression as one `NFTA_LIST_ELEM`.
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.nest(NFTA_LIST_ELEM, |w| {
            w.put_str(NFTA_EXPR_NAME, self.name());
            w.nest(NFTA_EXPR_DATA, |w| self.encode_data(w));
        });
    }

    fn encode_data(&self, w: &mut Writer) {
        match self {
            Expr::Meta { key, dreg } => {
                w.put_u32(NFTA_META_KEY, *key as u32);
                w.put_u32(NFTA_META_DREG, *dreg as u32);
            }
            Expr::Payload { base, offset, len, dreg } => {
                w.put_u32(NFTA_PAYLOAD_DREG, *dreg as u32);
                w.put_u32(NFTA_PAYLOAD_BASE, *base as u32);
                w.put_u32(NFTA_PAYLOAD_OFFSET, *offset);
                w.put_u32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                w.put_u32(NFTA_BITWISE_SREG, *sreg as u32);
                w.put_u32(NFTA_BITWISE_DREG, *dreg as u32);
                w.put_u32(NFTA_BITWISE_LEN, mask.len() as u32);
                w.nest(NFTA_BITWISE_MASK, |w| w.put(NFTA_DATA_VALUE, mask));
                w.nest(NFTA_BITWISE_XOR, |w| w.put(NFTA_DATA_VALUE, xor));
            }
            Expr::Cmp { sreg, op, data } => {
                w.put_u32(NFTA_CMP_SREG, *sreg as u32);
                w.put_u32(NFTA_CMP_OP, *op as u32);
                w.nest(NFTA_CMP_DATA, |w| w.put(NFTA_DATA_VALUE, data));
            }
            Expr::Lookup { sreg, set, set_id, invert } => {
                w.put_u32(NFTA_LOOKUP_SREG, *sreg as u32);
                w.put_str(NFTA_LOOKUP_SET, set);
                if let Some(id) = set_id {
                    w.put_u32(NFTA_LOOKUP_SET_ID, *id);
                }
                if *invert {
                    w.put_u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                }
            }
            Expr::Counter => {
                w.put_u64(NFTA_COUNTER_BYTES, 0);
                w.put_u64(NFTA_COUNTER_PACKETS, 0);
            }
            Expr::Masquerade { flags } => {
                if *flags != 0 {
                    w.put_u32(NFTA_MASQ_FLAGS, *flags);
                }
            }
        }
    }
}

/// An address as the bytes the network header carries.
pub(crate) fn ip_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    //! Expected bytes come from two sources, never from this encoder:
    //! - nlmon captures of `nft -f` published with netlink-packet-netfilter 0.4.0 (MIT,
    //!   `src/nftables/tests.rs`, `test_nft_load_examle_file`), sliced per expression;
    //! - hand derivations from `include/uapi/linux/netfilter/nf_tables.h`, spelled out
    //!   attribute by attribute.
    use super::*;

    fn encode(exprs: &[Expr]) -> Vec<u8> {
        let mut w = Writer::default();
        for e in exprs {
            e.encode(&mut w);
        }
        w.into_bytes()
    }

    /// `ip6 daddr 2001:db8::/32` as `nft` sent it: payload 4 bytes at network header + 24,
    /// then cmp eq (a /32 on a 4-byte load needs no bitwise).
    #[test]
    fn payload_and_cmp_match_an_nft_capture() {
        let captured: &[u8] = &[
            0x34, 0x00, 0x01, 0x80, 0x0c, 0x00, 0x01, 0x00, 0x70, 0x61, 0x79, 0x6c, 0x6f, 0x61,
            0x64, 0x00, 0x24, 0x00, 0x02, 0x80, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00,
            0x00, 0x18, 0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x2c, 0x00, 0x01, 0x80,
            0x08, 0x00, 0x01, 0x00, 0x63, 0x6d, 0x70, 0x00, 0x20, 0x00, 0x02, 0x80, 0x08, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x0c, 0x00, 0x03, 0x80, 0x08, 0x00, 0x01, 0x00, 0x20, 0x01, 0x0d, 0xb8,
        ];
        let ours = encode(&[
            Expr::Payload { base: PayloadBase::Network, offset: 24, len: 4, dreg: Register::R1 },
            Expr::Cmp { sreg: Register::R1, op: CmpOp::Eq, data: vec![0x20, 0x01, 0x0d, 0xb8] },
        ]);
        assert_eq!(ours, captured);
    }

    /// `ip6 daddr 3fff::/20 meta l4proto != icmpv6` as `nft` sent it: payload 16 bytes,
    /// bitwise with a /20 mask and zero xor, cmp eq, meta l4proto, cmp neq 58.
    #[test]
    fn prefix_match_and_meta_match_an_nft_capture() {
        let captured: &[u8] = &[
            0x34, 0x00, 0x01, 0x80, 0x0c, 0x00, 0x01, 0x00, 0x70, 0x61, 0x79, 0x6c, 0x6f, 0x61,
            0x64, 0x00, 0x24, 0x00, 0x02, 0x80, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00,
            0x00, 0x18, 0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x10, 0x5c, 0x00, 0x01, 0x80,
            0x0c, 0x00, 0x01, 0x00, 0x62, 0x69, 0x74, 0x77, 0x69, 0x73, 0x65, 0x00, 0x4c, 0x00,
            0x02, 0x80, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x10, 0x18, 0x00,
            0x04, 0x80, 0x14, 0x00, 0x01, 0x00, 0xff, 0xff, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x05, 0x80, 0x14, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x38, 0x00, 0x01, 0x80, 0x08, 0x00, 0x01, 0x00, 0x63, 0x6d,
            0x70, 0x00, 0x2c, 0x00, 0x02, 0x80, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x03, 0x80, 0x14, 0x00,
            0x01, 0x00, 0x3f, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x24, 0x00, 0x01, 0x80, 0x09, 0x00, 0x01, 0x00, 0x6d, 0x65,
            0x74, 0x61, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x02, 0x80, 0x08, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x10, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x2c, 0x00,
            0x01, 0x80, 0x08, 0x00, 0x01, 0x00, 0x63, 0x6d, 0x70, 0x00, 0x20, 0x00, 0x02, 0x80,
            0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x02, 0x00, 0x00, 0x00,
            0x00, 0x01, 0x0c, 0x00, 0x03, 0x80, 0x05, 0x00, 0x01, 0x00, 0x3a, 0x00, 0x00, 0x00,
        ];
        let mut exprs =
            Expr::addr_in_prefix(Addr::Destination, "3fff::/20".parse().unwrap(), CmpOp::Eq);
        exprs.push(Expr::Meta { key: MetaKey::L4Proto, dreg: Register::R1 });
        exprs.push(Expr::Cmp { sreg: Register::R1, op: CmpOp::Neq, data: vec![58] });
        assert_eq!(encode(&exprs), captured);
    }

    /// `lookup reg 1 set nomasq4 0x1` derived from the uapi:
    /// LIST_ELEM(nested, 1) { EXPR_NAME(1) "lookup\0" (4+7, padded 12),
    /// EXPR_DATA(nested, 2) { LOOKUP_SREG(2) be32 1, LOOKUP_SET(1) "nomasq4\0" (4+8),
    /// LOOKUP_SET_ID(4) be32 2, LOOKUP_FLAGS(5) be32 NFT_LOOKUP_F_INV } }.
    #[test]
    fn inverted_lookup_matches_the_uapi_layout() {
        let expected: &[u8] = &[
            56, 0, 1, 0x80, // LIST_ELEM, 4 + 12 + 40
            11, 0, 1, 0, b'l', b'o', b'o', b'k', b'u', b'p', 0, 0, // NAME
            40, 0, 2, 0x80, // DATA, 4 + 8 + 12 + 8 + 8
            8, 0, 2, 0, 0, 0, 0, 1, // SREG = NFT_REG_1
            12, 0, 1, 0, b'n', b'o', b'm', b'a', b's', b'q', b'4', 0, // SET
            8, 0, 4, 0, 0, 0, 0, 2, // SET_ID
            8, 0, 5, 0, 0, 0, 0, 1, // FLAGS = NFT_LOOKUP_F_INV
        ];
        let ours = encode(&[Expr::Lookup {
            sreg: Register::R1,
            set: "nomasq4".into(),
            set_id: Some(2),
            invert: true,
        }]);
        assert_eq!(ours, expected);
    }

    /// `oifname != "keel0"`: meta OIFNAME (7) into reg 1, cmp NEQ (1) with the name padded
    /// to IFNAMSIZ.
    #[test]
    fn interface_name_comparison_pads_to_ifnamsiz() {
        let expected: &[u8] = &[
            36, 0, 1, 0x80, // LIST_ELEM meta, 4 + 12 + 20
            9, 0, 1, 0, b'm', b'e', b't', b'a', 0, 0, 0, 0, // NAME
            20, 0, 2, 0x80, // DATA
            8, 0, 2, 0, 0, 0, 0, 7, // KEY = NFT_META_OIFNAME
            8, 0, 1, 0, 0, 0, 0, 1, // DREG = NFT_REG_1
            56, 0, 1, 0x80, // LIST_ELEM cmp, 4 + 8 + 44
            8, 0, 1, 0, b'c', b'm', b'p', 0, // NAME
            44, 0, 2, 0x80, // DATA, 4 + 8 + 8 + 24
            8, 0, 1, 0, 0, 0, 0, 1, // SREG
            8, 0, 2, 0, 0, 0, 0, 1, // OP = NFT_CMP_NEQ
            24, 0, 3, 0x80, // CMP_DATA
            20, 0, 1, 0, b'k', b'e', b'e', b'l', b'0', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(encode(&Expr::ifname(MetaKey::OifName, CmpOp::Neq, "keel0")), expected);
    }

    /// `counter` with zeroed NFTA_COUNTER_BYTES (1) and PACKETS (2), `masq` with
    /// NFTA_MASQ_FLAGS (1) = NF_NAT_RANGE_PROTO_RANDOM_FULLY (0x10).
    #[test]
    fn counter_and_fully_random_masquerade_match_the_uapi_layout() {
        let expected: &[u8] = &[
            44, 0, 1, 0x80, // LIST_ELEM counter, 4 + 12 + 28
            12, 0, 1, 0, b'c', b'o', b'u', b'n', b't', b'e', b'r', 0, // NAME
            28, 0, 2, 0x80, // DATA, 4 + 12 + 12
            12, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, // BYTES
            12, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, // PACKETS
            28, 0, 1, 0x80, // LIST_ELEM masq, 4 + 12 + 12
            9, 0, 1, 0, b'm', b'a', b's', b'q', 0, 0, 0, 0, // NAME
            12, 0, 2, 0x80, // DATA
            8, 0, 1, 0, 0, 0, 0, 0x10, // FLAGS
        ];
        let ours =
            encode(&[Expr::Counter, Expr::Masquerade { flags: NAT_RANGE_PROTO_RANDOM_FULLY }]);
        assert_eq!(ours, expected);
    }

    #[test]
    fn full_length_prefix_needs_no_bitwise() {
        let e = Expr::addr_in_prefix(Addr::Source, "10.0.0.1/32".parse().unwrap(), CmpOp::Eq);
        assert_eq!(e.len(), 2);
        let e = Expr::addr_in_prefix(Addr::Source, "10.42.7.9/16".parse().unwrap(), CmpOp::Eq);
        assert_eq!(
            e[1],
            Expr::Bitwise {
                sreg: Register::R1,
                dreg: Register::R1,
                mask: vec![255, 255, 0, 0],
                xor: vec![0; 4]
            }
        );
        assert_eq!(e[2], Expr::Cmp { sreg: Register::R1, op: CmpOp::Eq, data: vec![10, 42, 0, 0] });
    }
}
