//! [`Nftables`]: commits batches and reads back tables, rules and set elements over a
//! [`Netfilter`] transport.

use super::batch::{
    Batch, Element, NFTA_DATA_VALUE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_HANDLE,
    NFTA_RULE_TABLE, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_NAME, NFTA_SET_TABLE,
    NFTA_TABLE_NAME, NFTA_TABLE_USERDATA, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETSETELEM,
    NFT_MSG_GETTABLE,
};
use super::expr::Family;
use super::transport::{Netfilter, NetlinkSocket};
use super::wire::{self, nft_type, Writer, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST};
use super::{Error, Result};

const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

/// A rule as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// Its chain.
    pub chain: String,
    /// Its handle, unique in its table.
    pub handle: u64,
    /// Its expressions' names, in order (`meta`, `cmp`, `payload`, `lookup`, …).
    pub exprs: Vec<String>,
    /// Its counter's packets and bytes, if it has a counter.
    pub counter: Option<(u64, u64)>,
}

/// A client of nf_tables over one transport.
#[derive(Debug)]
pub struct Nftables<T: Netfilter = NetlinkSocket> {
    transport: T,
    seq: u32,
}

impl Nftables<NetlinkSocket> {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        Ok(Nftables::new(NetlinkSocket::open().map_err(Error::Socket)?))
    }
}

impl<T: Netfilter> Nftables<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Nftables { transport, seq: 1 }
    }

    /// The transport, for tests that inspect a fake.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn next_seqs(&mut self, n: usize) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n as u32);
        first
    }

    /// Applies `batch` as one transaction: all of it or, on any error, none of it. Reads
    /// every acknowledgement and reports the first error with the message it belongs to.
    pub fn commit(&mut self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let first = self.next_seqs(batch.len() + 2);
        let encoded = batch.encode(first);
        self.transport.send(&encoded.bytes).map_err(|source| Error::Send { source })?;
        let mut acked = Vec::new();
        let mut first_error: Option<(u32, i32)> = None;
        while let Some(datagram) =
            self.transport.recv(false).map_err(|source| Error::Recv { source })?
        {
            for m in wire::messages(&datagram).map_err(Error::Malformed)? {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let code = wire::error_code(m.payload).map_err(Error::Malformed)?;
                if code == 0 {
                    acked.push(m.seq);
                } else if first_error.is_none_or(|(s, _)| m.seq < s) {
                    first_error = Some((m.seq, -code));
                }
            }
        }
        if let Some((seq, errno)) = first_error {
            return Err(Error::from_errno(encoded.describe(seq), errno));
        }
        // Batch begin and end are never acknowledged; everything in between must be.
        let inner = &encoded.seqs[1..encoded.seqs.len() - 1];
        if let Some((_, what)) = inner.iter().find(|(s, _)| !acked.contains(s)) {
            return Err(Error::MissingAck { what: what.clone() });
        }
        tracing::debug!(messages = batch.len(), "nf_tables batch committed");
        Ok(())
    }

    /// Sends a dump request and returns every reply message's payload.
    fn dump(
        &mut self,
        msg: u16,
        family: Family,
        what: &str,
        attrs: impl FnOnce(&mut Writer),
    ) -> Result<Vec<Vec<u8>>> {
        let seq = self.next_seqs(1);
        let mut w = Writer::default();
        w.begin_message(nft_type(msg), NLM_F_REQUEST | NLM_F_DUMP, seq, family as u8, 0);
        attrs(&mut w);
        w.end_message();
        self.transport.send(&w.into_bytes()).map_err(|source| Error::Send { source })?;
        let mut out = Vec::new();
        loop {
            let datagram =
                self.transport.recv(true).map_err(|source| Error::Recv { source })?.ok_or_else(
                    || Error::Malformed(format!("{what}: dump ended without NLMSG_DONE")),
                )?;
            for m in wire::messages(&datagram).map_err(Error::Malformed)? {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = wire::error_code(m.payload).map_err(Error::Malformed)?;
                        return Err(Error::from_errno(what.to_owned(), -code));
                    }
                    ty if ty == nft_type(msg - 1) => out.push(m.payload.to_vec()),
                    _ => {}
                }
            }
        }
    }

    /// Names of the tables of `family`.
    pub fn tables(&mut self, family: Family) -> Result<Vec<String>> {
        let replies = self.dump(NFT_MSG_GETTABLE, family, "list tables", |_| {})?;
        let mut names = Vec::new();
        for p in replies {
            for a in wire::nft_attrs(&p).map_err(Error::Malformed)? {
                if a.ty == NFTA_TABLE_NAME {
                    names.push(a.string().map_err(Error::Malformed)?);
                }
            }
        }
        Ok(names)
    }

    /// The userdata of `table` of `family` (see [`crate::nft::Batch::add_table_with_userdata`]):
    /// `None` when the table does not exist, empty when it has none.
    pub fn table_userdata(&mut self, family: Family, table: &str) -> Result<Option<Vec<u8>>> {
        let replies = self.dump(NFT_MSG_GETTABLE, family, "list tables", |_| {})?;
        for p in replies {
            let attrs = wire::nft_attrs(&p).map_err(Error::Malformed)?;
            let mut name = None;
            let mut userdata = Vec::new();
            for a in attrs {
                match a.ty {
                    NFTA_TABLE_NAME => name = Some(a.string().map_err(Error::Malformed)?),
                    NFTA_TABLE_USERDATA => userdata = a.payload.to_vec(),
                    _ => {}
                }
            }
            if name.as_deref() == Some(table) {
                return Ok(Some(userdata));
            }
        }
        Ok(None)
    }

    /// Names of the sets of `table`.
    pub fn sets(&mut self, family: Family, table: &str) -> Result<Vec<String>> {
        let what = format!("list sets of table {table}");
        let replies =
            self.dump(NFT_MSG_GETSET, family, &what, |w| w.put_str(NFTA_SET_TABLE, table))?;
        let mut names = Vec::new();
        for p in replies {
            for a in wire::nft_attrs(&p).map_err(Error::Malformed)? {
                if a.ty == NFTA_SET_NAME {
                    names.push(a.string().map_err(Error::Malformed)?);
                }
            }
        }
        Ok(names)
    }

    /// The rules of `table`, in chain order.
    pub fn rules(&mut self, family: Family, table: &str) -> Result<Vec<RuleInfo>> {
        let what = format!("list rules of table {table}");
        let replies =
            self.dump(NFT_MSG_GETRULE, family, &what, |w| w.put_str(NFTA_RULE_TABLE, table))?;
        let mut rules = Vec::new();
        for p in replies {
            let mut rule =
                RuleInfo { chain: String::new(), handle: 0, exprs: Vec::new(), counter: None };
            let mut in_table = false;
            for a in wire::nft_attrs(&p).map_err(Error::Malformed)? {
                match a.ty {
                    NFTA_RULE_TABLE => in_table = a.string().map_err(Error::Malformed)? == table,
                    NFTA_RULE_CHAIN => rule.chain = a.string().map_err(Error::Malformed)?,
                    NFTA_RULE_HANDLE => rule.handle = a.u64().map_err(Error::Malformed)?,
                    NFTA_RULE_EXPRESSIONS => parse_exprs(&a, &mut rule)?,
                    _ => {}
                }
            }
            if in_table {
                rules.push(rule);
            }
        }
        Ok(rules)
    }

    /// The elements of set `set` in `table`.
    pub fn set_elements(&mut self, family: Family, table: &str, set: &str) -> Result<Vec<Element>> {
        let what = format!("list elements of set {table} {set}");
        let replies = self.dump(NFT_MSG_GETSETELEM, family, &what, |w| {
            w.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
            w.put_str(NFTA_SET_ELEM_LIST_SET, set);
        })?;
        let mut out = Vec::new();
        for p in replies {
            for a in wire::nft_attrs(&p).map_err(Error::Malformed)? {
                if a.ty != NFTA_SET_ELEM_LIST_ELEMENTS {
                    continue;
                }
                for elem in a.nested().map_err(Error::Malformed)? {
                    let mut e = Element { key: Vec::new(), flags: 0 };
                    for f in elem.nested().map_err(Error::Malformed)? {
                        match f.ty {
                            NFTA_SET_ELEM_KEY => {
                                for v in f.nested().map_err(Error::Malformed)? {
                                    if v.ty == NFTA_DATA_VALUE {
                                        e.key = v.payload.to_vec();
                                    }
                                }
                            }
                            NFTA_SET_ELEM_FLAGS => e.flags = f.u32().map_err(Error::Malformed)?,
                            _ => {}
                        }
                    }
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

fn parse_exprs(list: &wire::Attr<'_>, rule: &mut RuleInfo) -> Result<()> {
    for elem in list.nested().map_err(Error::Malformed)? {
        let mut name = String::new();
        let mut data = None;
        for a in elem.nested().map_err(Error::Malformed)? {
            match a.ty {
                NFTA_EXPR_NAME => name = a.string().map_err(Error::Malformed)?,
                NFTA_EXPR_DATA => data = Some(a),
                _ => {}
            }
        }
        if name == "counter" {
            let (mut packets, mut bytes) = (0, 0);
            if let Some(d) = data {
                for c in d.nested().map_err(Error::Malformed)? {
                    match c.ty {
                        NFTA_COUNTER_PACKETS => packets = c.u64().map_err(Error::Malformed)?,
                        NFTA_COUNTER_BYTES => bytes = c.u64().map_err(Error::Malformed)?,
                        _ => {}
                    }
                }
            }
            rule.counter = Some((packets, bytes));
        }
        rule.exprs.push(name);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::super::batch::NFT_MSG_NEWTABLE;
    use super::super::transport::FakeNetfilter;
    use super::*;

    #[test]
    fn commit_sends_one_datagram_and_accepts_all_acks() {
        let mut nft = Nftables::new(FakeNetfilter::new());
        let mut b = Batch::new();
        b.add_table(Family::Inet, "keelson");
        nft.commit(&b).unwrap();
        assert_eq!(nft.transport().sent.len(), 1);
    }

    #[test]
    fn kernel_errors_name_the_failed_message_and_map_the_errno() {
        let mut fake = FakeNetfilter::new();
        fake.fail(0x0a02, libc::ENOENT);
        let mut nft = Nftables::new(fake);
        let mut b = Batch::new();
        b.add_table(Family::Inet, "keelson");
        b.delete_table(Family::Inet, "keelson");
        let err = nft.commit(&b).unwrap_err();
        assert!(
            matches!(err, Error::NotFound { ref what, .. } if what == "delete table inet keelson"),
            "{err:?}"
        );

        let mut fake = FakeNetfilter::new();
        fake.fail(0x0a00, libc::EPERM);
        let mut nft = Nftables::new(fake);
        let err = nft.commit(&b).unwrap_err();
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
        assert!(err.to_string().contains("add table inet keelson"), "{err}");
    }

    /// A transport that swallows the batch: the missing acknowledgement is an error, not
    /// silent success.
    #[derive(Debug, Default)]
    struct Silent;
    impl Netfilter for Silent {
        fn send(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn recv(&mut self, _: bool) -> std::io::Result<Option<Vec<u8>>> {
            Ok(None)
        }
    }

    #[test]
    fn a_missing_acknowledgement_is_an_error() {
        let mut nft = Nftables::new(Silent);
        let mut b = Batch::new();
        b.add_table(Family::Inet, "keelson");
        assert!(matches!(nft.commit(&b), Err(Error::MissingAck { .. })));
    }

    #[test]
    fn table_dump_replies_are_parsed() {
        let mut fake = FakeNetfilter::new();
        let table = |name: &str| {
            let mut w = Writer::default();
            w.extend(&[1, 0, 0, 0]);
            w.put_str(NFTA_TABLE_NAME, name);
            w.into_bytes()
        };
        fake.dump(
            nft_type(NFT_MSG_GETTABLE),
            nft_type(NFT_MSG_NEWTABLE),
            vec![table("filter"), table("keelson")],
        );
        let mut nft = Nftables::new(fake);
        assert_eq!(nft.tables(Family::Inet).unwrap(), ["filter", "keelson"]);
        // The request was a dump of inet tables.
        let sent = &nft.transport().sent[0];
        let m = wire::messages(sent).unwrap();
        assert_eq!((m[0].ty, m[0].flags, m[0].payload[0]), (0x0a01, 0x0301, 1));
    }
}
