//! nf_tables objects (tables, chains, sets, elements, rules) and the batch that carries them
//! to the kernel as one transaction.
//!
//! A batch is `NFNL_MSG_BATCH_BEGIN`, the messages, `NFNL_MSG_BATCH_END`, in one datagram:
//! the kernel applies all of it or none of it. Every message in between asks for an
//! acknowledgement (`NLM_F_ACK`) so a failure names the message that caused it.

use std::cmp::Ordering;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::expr::{Expr, Family};
use super::wire::{
    nft_type, Writer, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NLM_F_ACK,
    NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};

pub(crate) const NFT_MSG_NEWTABLE: u16 = 0;
pub(crate) const NFT_MSG_GETTABLE: u16 = 1;
pub(crate) const NFT_MSG_DELTABLE: u16 = 2;
pub(crate) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;
pub(crate) const NFT_MSG_GETRULE: u16 = 7;
pub(crate) const NFT_MSG_NEWSET: u16 = 9;
pub(crate) const NFT_MSG_GETSET: u16 = 10;
pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(crate) const NFT_MSG_GETSETELEM: u16 = 13;

pub(crate) const NFTA_TABLE_NAME: u16 = 1;
/// Opaque bytes kept with the table (kernel 5.13+), at most `NFT_USERDATA_MAXLEN` (256).
pub(crate) const NFTA_TABLE_USERDATA: u16 = 6;

const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;

pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_HANDLE: u16 = 3;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;

pub(crate) const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFT_SET_INTERVAL: u32 = 0x4;

pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(crate) const NFTA_SET_ELEM_FLAGS: u16 = 3;
/// `NFT_SET_ELEM_INTERVAL_END`: the element closes the interval opened before it.
pub const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;

/// `nft`'s data type ids for set keys (informational for the kernel, shown by `nft`).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

/// The netfilter hooks (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `NF_INET_PRE_ROUTING`.
    Prerouting = 0,
    /// `NF_INET_LOCAL_IN`.
    Input = 1,
    /// `NF_INET_FORWARD`.
    Forward = 2,
    /// `NF_INET_LOCAL_OUT`.
    Output = 3,
    /// `NF_INET_POST_ROUTING`.
    Postrouting = 4,
}

/// The priority `nft` calls `srcnat`: after filtering, where masquerade belongs.
pub const PRIORITY_SRCNAT: i32 = 100;

/// A chain's verdict for packets no rule decided (`NF_DROP`, `NF_ACCEPT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `NF_DROP`.
    Drop = 0,
    /// `NF_ACCEPT`.
    Accept = 1,
}

/// A base chain attached to a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Family of its table.
    pub family: Family,
    /// Its table.
    pub table: String,
    /// Its name.
    pub name: String,
    /// `filter`, `nat` or `route`.
    pub kind: String,
    /// Where it hooks in.
    pub hook: Hook,
    /// Order among chains on the same hook (lower first).
    pub priority: i32,
    /// Default verdict; `None` leaves the kernel's (accept).
    pub policy: Option<Policy>,
}

/// The key of a set of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// IPv4 addresses (4 bytes).
    Ipv4Addr,
    /// IPv6 addresses (16 bytes).
    Ipv6Addr,
}

impl KeyType {
    fn len(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => 4,
            KeyType::Ipv6Addr => 16,
        }
    }
}

/// A named set of address intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Family of its table.
    pub family: Family,
    /// Its table.
    pub table: String,
    /// Its name, referred to by lookups.
    pub name: String,
    /// Its id in the batch, so lookups and elements in the same batch find it.
    pub id: u32,
    /// What its keys are.
    pub key: KeyType,
}

/// One element of a set: a key, which for interval sets opens an interval or, flagged
/// [`NFT_SET_ELEM_INTERVAL_END`], ends the one before it (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The key bytes in network order.
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_*` flags.
    pub flags: u32,
}

impl Element {
    /// The interval elements for a list of prefixes of one family: overlapping and adjacent
    /// prefixes merge (the kernel rejects overlapping intervals), each interval becomes a
    /// start element and, unless it reaches the top of the address space, an end element at
    /// the first address after it. Prefixes of the other family are ignored.
    pub fn intervals(key: KeyType, prefixes: &[IpNet]) -> Vec<Element> {
        let mut ranges: Vec<(u128, u128)> = prefixes
            .iter()
            .filter_map(|p| match (key, p.trunc()) {
                (KeyType::Ipv4Addr, IpNet::V4(n)) => {
                    Some((u128::from(u32::from(n.network())), u128::from(u32::from(n.broadcast()))))
                }
                (KeyType::Ipv6Addr, IpNet::V6(n)) => {
                    Some((u128::from(n.network()), u128::from(n.broadcast())))
                }
                _ => None,
            })
            .collect();
        ranges.sort_by(|a, b| match a.0.cmp(&b.0) {
            Ordering::Equal => a.1.cmp(&b.1),
            o => o,
        });
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let top = match key {
            KeyType::Ipv4Addr => u128::from(u32::MAX),
            KeyType::Ipv6Addr => u128::MAX,
        };
        let bytes = |v: u128| match key {
            KeyType::Ipv4Addr => Ipv4Addr::from(v as u32).octets().to_vec(),
            KeyType::Ipv6Addr => Ipv6Addr::from(v).octets().to_vec(),
        };
        let mut out = Vec::new();
        for (start, end) in merged {
            out.push(Element { key: bytes(start), flags: 0 });
            if end < top {
                out.push(Element { key: bytes(end + 1), flags: NFT_SET_ELEM_INTERVAL_END });
            }
        }
        out
    }
}

/// A rule appended to a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Family of its table.
    pub family: Family,
    /// Its table.
    pub table: String,
    /// Its chain.
    pub chain: String,
    /// What it does, in order.
    pub exprs: Vec<Expr>,
}

#[derive(Debug, Clone)]
struct Message {
    ty: u16,
    flags: u16,
    family: Family,
    attrs: Vec<u8>,
    what: String,
}

/// Messages to apply as one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    messages: Vec<Message>,
}

/// An encoded batch: the datagram and what each sequence number stands for, so an error
/// reply can say which message failed.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The datagram to send.
    pub bytes: Vec<u8>,
    /// Each message's sequence number and description, batch begin and end included.
    pub seqs: Vec<(u32, String)>,
}

impl Encoded {
    /// What the message with sequence number `seq` was, for error context.
    pub fn describe(&self, seq: u32) -> String {
        self.seqs
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| format!("message {seq}"))
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Inet => "inet",
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Number of messages (without batch begin and end).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    fn push(
        &mut self,
        ty: u16,
        flags: u16,
        family: Family,
        what: String,
        f: impl FnOnce(&mut Writer),
    ) {
        let mut w = Writer::default();
        f(&mut w);
        self.messages.push(Message { ty, flags, family, attrs: w.into_bytes(), what });
    }

    /// `NFT_MSG_NEWTABLE` without `NLM_F_EXCL`: creates the table, or leaves an existing one.
    pub fn add_table(&mut self, family: Family, name: &str) {
        let what = format!("add table {} {name}", family_name(family));
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, what, |w| {
            w.put_str(NFTA_TABLE_NAME, name)
        });
    }

    /// [`Batch::add_table`] carrying `userdata` (at most 256 bytes), which table dumps return:
    /// a fingerprint of what the transaction installs, so a later run can tell whether it
    /// would change anything.
    pub fn add_table_with_userdata(&mut self, family: Family, name: &str, userdata: &[u8]) {
        let what = format!("add table {} {name}", family_name(family));
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, what, |w| {
            w.put_str(NFTA_TABLE_NAME, name);
            w.put(NFTA_TABLE_USERDATA, userdata);
        });
    }

    /// `NFT_MSG_DELTABLE`: deletes the table with everything in it. Fails if it does not
    /// exist; precede it with [`Batch::add_table`] to delete whether or not it does.
    pub fn delete_table(&mut self, family: Family, name: &str) {
        let what = format!("delete table {} {name}", family_name(family));
        self.push(NFT_MSG_DELTABLE, 0, family, what, |w| w.put_str(NFTA_TABLE_NAME, name));
    }

    /// `NFT_MSG_NEWCHAIN` for a base chain.
    pub fn add_chain(&mut self, c: &Chain) {
        let what = format!("add chain {} {} {}", family_name(c.family), c.table, c.name);
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, c.family, what, |w| {
            w.put_str(NFTA_CHAIN_TABLE, &c.table);
            w.put_str(NFTA_CHAIN_NAME, &c.name);
            if let Some(p) = c.policy {
                w.put_u32(NFTA_CHAIN_POLICY, p as u32);
            }
            w.put_str(NFTA_CHAIN_TYPE, &c.kind);
            w.nest(NFTA_CHAIN_HOOK, |w| {
                w.put_u32(NFTA_HOOK_HOOKNUM, c.hook as u32);
                w.put_u32(NFTA_HOOK_PRIORITY, c.priority as u32);
            });
        });
    }

    /// `NFT_MSG_NEWSET` for an interval set.
    pub fn add_set(&mut self, s: &Set) {
        let what = format!("add set {} {} {}", family_name(s.family), s.table, s.name);
        self.push(NFT_MSG_NEWSET, NLM_F_CREATE, s.family, what, |w| {
            w.put_str(NFTA_SET_TABLE, &s.table);
            w.put_str(NFTA_SET_NAME, &s.name);
            w.put_u32(NFTA_SET_FLAGS, NFT_SET_INTERVAL);
            w.put_u32(
                NFTA_SET_KEY_TYPE,
                match s.key {
                    KeyType::Ipv4Addr => TYPE_IPADDR,
                    KeyType::Ipv6Addr => TYPE_IP6ADDR,
                },
            );
            w.put_u32(NFTA_SET_KEY_LEN, s.key.len());
            w.put_u32(NFTA_SET_ID, s.id);
        });
    }

    /// `NFT_MSG_NEWSETELEM`: adds `elements` to `set`. Nothing is sent for no elements.
    pub fn add_elements(&mut self, set: &Set, elements: &[Element]) {
        if elements.is_empty() {
            return;
        }
        let what = format!(
            "add {} elements to set {} {} {}",
            elements.len(),
            family_name(set.family),
            set.table,
            set.name
        );
        self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, set.family, what, |w| {
            w.put_str(NFTA_SET_ELEM_LIST_TABLE, &set.table);
            w.put_str(NFTA_SET_ELEM_LIST_SET, &set.name);
            w.put_u32(NFTA_SET_ELEM_LIST_SET_ID, set.id);
            w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                for e in elements {
                    w.nest(NFTA_LIST_ELEM, |w| {
                        w.nest(NFTA_SET_ELEM_KEY, |w| w.put(NFTA_DATA_VALUE, &e.key));
                        if e.flags != 0 {
                            w.put_u32(NFTA_SET_ELEM_FLAGS, e.flags);
                        }
                    });
                }
            });
        });
    }

    /// `NFT_MSG_NEWRULE`, appended at the end of its chain.
    pub fn add_rule(&mut self, r: &Rule) {
        let names: Vec<&str> = r.exprs.iter().map(Expr::name).collect();
        let what = format!(
            "add rule {} {} {} [{}]",
            family_name(r.family),
            r.table,
            r.chain,
            names.join(" ")
        );
        self.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, r.family, what, |w| {
            w.put_str(NFTA_RULE_TABLE, &r.table);
            w.put_str(NFTA_RULE_CHAIN, &r.chain);
            w.nest(NFTA_RULE_EXPRESSIONS, |w| {
                for e in &r.exprs {
                    e.encode(w);
                }
            });
        });
    }

    /// The datagram: batch begin, every message with `NLM_F_REQUEST | NLM_F_ACK` and
    /// consecutive sequence numbers from `first_seq + 1`, batch end.
    pub fn encode(&self, first_seq: u32) -> Encoded {
        let mut w = Writer::default();
        let mut seqs = Vec::with_capacity(self.messages.len() + 2);
        let mut seq = first_seq;
        w.begin_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES);
        w.end_message();
        seqs.push((seq, "batch begin".to_owned()));
        for m in &self.messages {
            seq = seq.wrapping_add(1);
            w.begin_message(
                nft_type(m.ty),
                NLM_F_REQUEST | NLM_F_ACK | m.flags,
                seq,
                m.family as u8,
                0,
            );
            w.extend(&m.attrs);
            w.end_message();
            seqs.push((seq, m.what.clone()));
        }
        seq = seq.wrapping_add(1);
        w.begin_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES);
        w.end_message();
        seqs.push((seq, "batch end".to_owned()));
        Encoded { bytes: w.into_bytes(), seqs }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// The header of the first message of a datagram, for tests that compare the rest.
    fn body(encoded: &Encoded, index: usize) -> Vec<u8> {
        let msgs = super::super::wire::messages(&encoded.bytes).unwrap();
        msgs[index].payload.to_vec()
    }

    /// nlmon capture of `nft -f` (netlink-packet-netfilter 0.4.0, MIT, test
    /// `test_nft_load_examle_file`): `NFNL_MSG_BATCH_BEGIN`, flags `NLM_F_REQUEST`, seq 0,
    /// family unspec, version 0, res_id `NFNL_SUBSYS_NFTABLES` big endian.
    #[test]
    fn batch_begin_and_end_match_an_nft_capture() {
        let begin: &[u8] = &[
            0x14, 0x00, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x0a,
        ];
        let end_seq_1: &[u8] = &[
            0x14, 0x00, 0x00, 0x00, 0x11, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x0a,
        ];
        let e = Batch::new().encode(0);
        assert_eq!(&e.bytes[..20], begin);
        assert_eq!(&e.bytes[20..], end_seq_1);
    }

    /// The same capture's chain `hookin` in `table ip6 foo_table`: `type filter hook
    /// prerouting priority raw; policy accept;` (nfgenmsg and attributes; the header differs
    /// only in flags and seq, since we also ask for an ack).
    #[test]
    fn base_chain_matches_an_nft_capture() {
        let captured_after_header: &[u8] = &[
            0x0a, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x01, 0x00, 0x66, 0x6f, 0x6f, 0x5f, 0x74, 0x61,
            0x62, 0x6c, 0x65, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x68, 0x6f, 0x6f, 0x6b,
            0x69, 0x6e, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0b, 0x00,
            0x07, 0x00, 0x66, 0x69, 0x6c, 0x74, 0x65, 0x72, 0x00, 0x00, 0x14, 0x00, 0x04, 0x80,
            0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02, 0x00, 0xff, 0xff,
            0xfe, 0xd4,
        ];
        let mut b = Batch::new();
        b.add_chain(&Chain {
            family: Family::Ipv6,
            table: "foo_table".into(),
            name: "hookin".into(),
            kind: "filter".into(),
            hook: Hook::Prerouting,
            priority: -300,
            policy: Some(Policy::Accept),
        });
        let e = b.encode(0);
        assert_eq!(body(&e, 1), captured_after_header);
        let msgs = super::super::wire::messages(&e.bytes).unwrap();
        // NFT_MSG_NEWCHAIN in subsystem 10; REQUEST | ACK | CREATE.
        assert_eq!(msgs[1].ty, 0x0a03);
        assert_eq!(msgs[1].flags, 0x0405);
        assert_eq!(msgs[1].seq, 1);
    }

    /// NEWTABLE then DELTABLE for `inet keelson`, derived from the uapi: nlmsghdr (len,
    /// type 0x0a00/0x0a02, flags, seq, port 0), nfgenmsg (NFPROTO_INET, V0, res_id 0),
    /// NFTA_TABLE_NAME "keelson\0".
    #[test]
    fn table_messages_match_the_uapi_layout() {
        let mut b = Batch::new();
        b.add_table(Family::Inet, "keelson");
        b.delete_table(Family::Inet, "keelson");
        let e = b.encode(41);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // batch begin, seq 41
            20, 0, 0, 0, 0x10, 0, 1, 0, 41, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10,
            // NEWTABLE, 16 + 4 + 12 = 32, flags REQUEST|ACK|CREATE, seq 42
            32, 0, 0, 0, 0x00, 0x0a, 0x05, 0x04, 42, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
            12, 0, 1, 0, b'k', b'e', b'e', b'l', b's', b'o', b'n', 0,
            // DELTABLE, flags REQUEST|ACK, seq 43
            32, 0, 0, 0, 0x02, 0x0a, 0x05, 0x00, 43, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
            12, 0, 1, 0, b'k', b'e', b'e', b'l', b's', b'o', b'n', 0,
            // batch end, seq 44
            20, 0, 0, 0, 0x11, 0, 1, 0, 44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10,
        ];
        assert_eq!(e.bytes, expected);
        assert_eq!(e.describe(43), "delete table inet keelson");
    }

    /// An interval element list for `10.42.0.0/16`: start 10.42.0.0, end 10.43.0.0 flagged
    /// NFT_SET_ELEM_INTERVAL_END, each in a LIST_ELEM { KEY { DATA_VALUE } [FLAGS] }.
    #[test]
    fn set_elements_match_the_uapi_layout() {
        let set = Set {
            family: Family::Inet,
            table: "t".into(),
            name: "s".into(),
            id: 3,
            key: KeyType::Ipv4Addr,
        };
        let mut b = Batch::new();
        b.add_elements(
            &set,
            &Element::intervals(KeyType::Ipv4Addr, &["10.42.0.0/16".parse().unwrap()]),
        );
        let e = b.encode(0);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            1, 0, 0, 0, // nfgenmsg: inet
            6, 0, 1, 0, b't', 0, 0, 0, // LIST_TABLE
            6, 0, 2, 0, b's', 0, 0, 0, // LIST_SET
            8, 0, 4, 0, 0, 0, 0, 3, // LIST_SET_ID
            44, 0, 3, 0x80, // LIST_ELEMENTS
            16, 0, 1, 0x80, 12, 0, 1, 0x80, 8, 0, 1, 0, 10, 42, 0, 0,
            24, 0, 1, 0x80, 12, 0, 1, 0x80, 8, 0, 1, 0, 10, 43, 0, 0, 8, 0, 3, 0, 0, 0, 0, 1,
        ];
        assert_eq!(body(&e, 1), expected);
    }

    #[test]
    fn overlapping_and_adjacent_prefixes_merge_into_one_interval() {
        let nets: Vec<IpNet> =
            ["10.42.0.0/24", "10.42.1.0/24", "10.42.0.128/25", "10.96.0.0/12", "fd00::/8"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        let v4 = Element::intervals(KeyType::Ipv4Addr, &nets);
        assert_eq!(
            v4,
            vec![
                Element { key: vec![10, 42, 0, 0], flags: 0 },
                Element { key: vec![10, 42, 2, 0], flags: NFT_SET_ELEM_INTERVAL_END },
                Element { key: vec![10, 96, 0, 0], flags: 0 },
                Element { key: vec![10, 112, 0, 0], flags: NFT_SET_ELEM_INTERVAL_END },
            ]
        );
        let v6 = Element::intervals(KeyType::Ipv6Addr, &nets);
        assert_eq!(v6.len(), 2);
        assert_eq!(v6[1].key[0], 0xfe);
    }

    #[test]
    fn an_interval_reaching_the_top_has_no_end_element() {
        let e = Element::intervals(KeyType::Ipv4Addr, &["0.0.0.0/0".parse().unwrap()]);
        assert_eq!(e, vec![Element { key: vec![0, 0, 0, 0], flags: 0 }]);
        let e = Element::intervals(KeyType::Ipv6Addr, &["ffff::/16".parse().unwrap()]);
        assert_eq!(e.len(), 1);
    }
}
