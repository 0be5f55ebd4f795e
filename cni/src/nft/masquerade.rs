//! Egress masquerade: pods' traffic leaving the node gets the node's address.
//!
//! The whole ruleset lives in our own table, `inet keelson`, which one transaction replaces:
//! add the table (a no-op when it exists), delete it with everything in it, create it again
//! with its chain, sets and rules. A re-run therefore replaces rather than duplicates, a
//! failure leaves the previous ruleset in place, and nobody else's tables are touched. In
//! `nft` syntax:
//!
//! ```text
//! table inet keelson {
//!     set pod4 { type ipv4_addr; flags interval; elements = { <pod CIDRs> } }
//!     set nomasq4 { type ipv4_addr; flags interval; elements = { <cluster, service and pod CIDRs> } }
//!     (pod6, nomasq6 likewise)
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat;
//!         ip saddr @pod4 ip daddr != @nomasq4 oifname != "keel0" counter masquerade fully-random
//!         ip6 saddr @pod6 ip6 daddr != @nomasq6 oifname != "keel0" counter masquerade fully-random
//!     }
//! }
//! ```

use ipnet::IpNet;

use crate::config::NetworkConfig;

use super::batch::{Batch, Chain, Element, Hook, KeyType, Rule, Set, PRIORITY_SRCNAT};
use super::client::{Nftables, RuleInfo};
use super::expr::{
    Addr, CmpOp, Expr, Family, MetaKey, Register, IFNAMSIZ, NAT_RANGE_PROTO_RANDOM_FULLY,
};
use super::transport::{Netfilter, NetlinkSocket};
use super::{Error, Result};

/// Our table (family `inet`).
pub const TABLE: &str = "keelson";
/// Its one chain, on the postrouting hook at priority srcnat.
pub const CHAIN: &str = "postrouting";

/// What to masquerade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeRules {
    /// The node's pod ranges: only traffic from these sources is masqueraded.
    pub pod_cidrs: Vec<IpNet>,
    /// Destinations never masqueraded towards: the cluster and service CIDRs (the pod
    /// ranges are added to them).
    pub exclude: Vec<IpNet>,
    /// The pod bridge: traffic leaving through it stays on the node and keeps its source.
    pub bridge: String,
    /// Choose source ports at random per connection (`NF_NAT_RANGE_PROTO_RANDOM_FULLY`),
    /// which avoids port collisions between pods behind one address.
    pub fully_random: bool,
}

impl MasqueradeRules {
    /// The rules for `config`, or `None` when its masquerade is off. Pod ranges are every
    /// configured subnet; exclusions the cluster and service CIDRs.
    pub fn from_config(config: &NetworkConfig) -> Option<MasqueradeRules> {
        let m = config.masquerade.as_ref()?;
        let pod_cidrs = config.ranges.iter().flatten().map(|r| r.subnet).collect();
        let exclude = m.cluster_cidrs.iter().chain(&m.service_cidrs).copied().collect();
        Some(MasqueradeRules {
            pod_cidrs,
            exclude,
            bridge: config.bridge.clone(),
            fully_random: true,
        })
    }

    /// What the table's userdata records of these rules: a format tag and a 64-bit FNV-1a
    /// hash of the rules' canonical text. Equal fingerprints mean equal rulesets.
    pub fn fingerprint(&self) -> String {
        let text = format!(
            "pods={:?};exclude={:?};bridge={};random={}",
            self.pod_cidrs, self.exclude, self.bridge, self.fully_random
        );
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("keelson-masquerade/v1 {hash:016x}")
    }

    fn validate(&self) -> Result<()> {
        if self.pod_cidrs.is_empty() {
            return Err(Error::Invalid("no pod CIDR to masquerade from".into()));
        }
        if self.bridge.is_empty() || self.bridge.len() >= IFNAMSIZ || self.bridge.contains('\0') {
            return Err(Error::Invalid(format!(
                "bridge name {:?} is not an interface name (1 to {} bytes, no NUL)",
                self.bridge,
                IFNAMSIZ - 1
            )));
        }
        Ok(())
    }

    /// The transaction that installs these rules, replacing whatever our table held.
    pub fn batch(&self) -> Result<Batch> {
        self.validate()?;
        let mut b = Batch::new();
        b.add_table(Family::Inet, TABLE);
        b.delete_table(Family::Inet, TABLE);
        b.add_table_with_userdata(Family::Inet, TABLE, self.fingerprint().as_bytes());
        b.add_chain(&Chain {
            family: Family::Inet,
            table: TABLE.into(),
            name: CHAIN.into(),
            kind: "nat".into(),
            hook: Hook::Postrouting,
            priority: PRIORITY_SRCNAT,
            policy: None,
        });
        let exclude: Vec<IpNet> = self.exclude.iter().chain(&self.pod_cidrs).copied().collect();
        let mut next_id = 1;
        for (key, ipv6, suffix) in [(KeyType::Ipv4Addr, false, "4"), (KeyType::Ipv6Addr, true, "6")]
        {
            let pods = Element::intervals(key, &self.pod_cidrs);
            if pods.is_empty() {
                continue;
            }
            let set = |name: &str, id| Set {
                family: Family::Inet,
                table: TABLE.into(),
                name: name.into(),
                id,
                key,
            };
            let pod_set = set(&format!("pod{suffix}"), next_id);
            let nomasq_set = set(&format!("nomasq{suffix}"), next_id + 1);
            next_id += 2;
            b.add_set(&pod_set);
            b.add_elements(&pod_set, &pods);
            b.add_set(&nomasq_set);
            b.add_elements(&nomasq_set, &Element::intervals(key, &exclude));
            b.add_rule(&Rule {
                family: Family::Inet,
                table: TABLE.into(),
                chain: CHAIN.into(),
                exprs: self.rule(ipv6, &pod_set, &nomasq_set),
            });
        }
        Ok(b)
    }

    /// `<ip|ip6> saddr @pod ... daddr != @nomasq oifname != <bridge> counter masquerade`.
    fn rule(&self, ipv6: bool, pods: &Set, nomasq: &Set) -> Vec<Expr> {
        let family = if ipv6 { Family::Ipv6 } else { Family::Ipv4 };
        let mut e = Vec::new();
        e.extend(Expr::nfproto(family));
        e.push(Expr::load_addr(ipv6, Addr::Source));
        e.push(Expr::Lookup {
            sreg: Register::R1,
            set: pods.name.clone(),
            set_id: Some(pods.id),
            invert: false,
        });
        e.push(Expr::load_addr(ipv6, Addr::Destination));
        e.push(Expr::Lookup {
            sreg: Register::R1,
            set: nomasq.name.clone(),
            set_id: Some(nomasq.id),
            invert: true,
        });
        e.extend(Expr::ifname(MetaKey::OifName, CmpOp::Neq, &self.bridge));
        e.push(Expr::Counter);
        e.push(Expr::Masquerade {
            flags: if self.fully_random { NAT_RANGE_PROTO_RANDOM_FULLY } else { 0 },
        });
        e
    }
}

/// The transaction that removes our table whether or not it exists.
pub fn removal_batch() -> Batch {
    let mut b = Batch::new();
    b.add_table(Family::Inet, TABLE);
    b.delete_table(Family::Inet, TABLE);
    b
}

/// Egress masquerade in one network namespace (the one the transport was opened in).
#[derive(Debug)]
pub struct Masquerade<T: Netfilter = NetlinkSocket> {
    nft: Nftables<T>,
}

impl Masquerade<NetlinkSocket> {
    /// Opens nf_tables in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        Ok(Masquerade { nft: Nftables::open()? })
    }
}

impl<T: Netfilter> Masquerade<T> {
    /// Masquerade over `nft`.
    pub fn new(nft: Nftables<T>) -> Self {
        Masquerade { nft }
    }

    /// The client, for listing what is installed.
    pub fn nftables(&mut self) -> &mut Nftables<T> {
        &mut self.nft
    }

    /// Installs `rules`, atomically replacing our table. Idempotent, and cheap when the
    /// rules are already installed: a table whose userdata carries the rules' fingerprint is
    /// left alone (a transaction costs an RCU grace period; a dump does not), so every CNI
    /// plugin process can call this.
    pub fn ensure(&mut self, rules: &MasqueradeRules) -> Result<()> {
        let batch = rules.batch()?;
        let installed = self.nft.table_userdata(Family::Inet, TABLE)?;
        if installed.as_deref() == Some(rules.fingerprint().as_bytes()) {
            tracing::debug!("egress masquerade already installed");
            return Ok(());
        }
        self.nft.commit(&batch)?;
        tracing::info!(pods = ?rules.pod_cidrs, exclude = ?rules.exclude, bridge = %rules.bridge, "egress masquerade installed");
        Ok(())
    }

    /// Removes our table if it exists.
    pub fn remove(&mut self) -> Result<()> {
        self.nft.commit(&removal_batch())?;
        tracing::info!("egress masquerade removed");
        Ok(())
    }

    /// Whether our table exists.
    pub fn is_installed(&mut self) -> Result<bool> {
        Ok(self.nft.tables(Family::Inet)?.iter().any(|t| t == TABLE))
    }

    /// The rules of our table (none when it does not exist).
    pub fn rules(&mut self) -> Result<Vec<RuleInfo>> {
        if !self.is_installed()? {
            return Ok(Vec::new());
        }
        self.nft.rules(Family::Inet, TABLE)
    }
}

/// Installs `rules` in the calling thread's network namespace.
pub fn ensure(rules: &MasqueradeRules) -> Result<()> {
    Masquerade::open()?.ensure(rules)
}

/// Removes the masquerade from the calling thread's network namespace.
pub fn remove() -> Result<()> {
    Masquerade::open()?.remove()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::super::transport::FakeNetfilter;
    use super::super::wire;
    use super::*;

    fn rules() -> MasqueradeRules {
        MasqueradeRules {
            pod_cidrs: vec!["10.42.0.0/24".parse().unwrap(), "fd42::/64".parse().unwrap()],
            exclude: vec![
                "10.42.0.0/16".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap(),
                "fd42::/48".parse().unwrap(),
            ],
            bridge: "keel0".into(),
            fully_random: true,
        }
    }

    fn types(datagram: &[u8]) -> Vec<u16> {
        wire::messages(datagram).unwrap().iter().map(|m| m.ty).collect()
    }

    /// A fake whose table dump lists our table with `userdata`.
    fn fake_with_table(userdata: &[u8]) -> FakeNetfilter {
        let mut w = wire::Writer::default();
        w.extend(&[1, 0, 0, 0]);
        w.put_str(super::super::batch::NFTA_TABLE_NAME, TABLE);
        w.put(super::super::batch::NFTA_TABLE_USERDATA, userdata);
        let mut fake = FakeNetfilter::new();
        fake.dump(0x0a01, 0x0a00, vec![w.into_bytes()]);
        fake
    }

    #[test]
    fn ensure_replaces_our_table_in_one_transaction() {
        let mut m = Masquerade::new(Nftables::new(FakeNetfilter::new()));
        m.ensure(&rules()).unwrap();
        let sent = &m.nftables().transport().sent;
        assert_eq!(sent.len(), 2, "a table dump, then one datagram with one transaction");
        assert_eq!(types(&sent[0]), [0x0a01], "the dump of tables");
        #[rustfmt::skip]
        let expected = [
            0x10, // batch begin
            0x0a00, 0x0a02, 0x0a00, // add, delete, add table (with the fingerprint)
            0x0a03, // chain
            0x0a09, 0x0a0c, 0x0a09, 0x0a0c, 0x0a06, // pod4, nomasq4, rule
            0x0a09, 0x0a0c, 0x0a09, 0x0a0c, 0x0a06, // pod6, nomasq6, rule
            0x11, // batch end
        ];
        assert_eq!(types(&sent[1]), expected);
    }

    #[test]
    fn ensure_twice_sends_the_same_transaction() {
        let mut m = Masquerade::new(Nftables::new(FakeNetfilter::new()));
        m.ensure(&rules()).unwrap();
        m.ensure(&rules()).unwrap();
        let sent = &m.nftables().transport().sent;
        let strip_seq = |d: &[u8]| -> Vec<(u16, u16, Vec<u8>)> {
            wire::messages(d).unwrap().iter().map(|m| (m.ty, m.flags, m.payload.to_vec())).collect()
        };
        // The fake keeps no state: both runs find no table and install.
        assert_eq!(sent.len(), 4);
        assert_eq!(strip_seq(&sent[1]), strip_seq(&sent[3]));
    }

    #[test]
    fn ensure_leaves_a_table_carrying_the_same_rules_alone() {
        let r = rules();
        let mut m = Masquerade::new(Nftables::new(fake_with_table(r.fingerprint().as_bytes())));
        m.ensure(&r).unwrap();
        let sent = &m.nftables().transport().sent;
        assert_eq!(sent.len(), 1, "only the dump: no transaction");

        // Other rules (another bridge), or a table of an older release without a
        // fingerprint, are replaced.
        let mut other = r.clone();
        other.bridge = "keel1".into();
        assert_ne!(other.fingerprint(), r.fingerprint());
        for installed in [other.fingerprint().into_bytes(), Vec::new()] {
            let mut m = Masquerade::new(Nftables::new(fake_with_table(&installed)));
            m.ensure(&r).unwrap();
            assert_eq!(m.nftables().transport().sent.len(), 2, "dump and transaction");
        }
    }

    #[test]
    fn the_fingerprint_fits_table_userdata_and_names_its_format() {
        let f = rules().fingerprint();
        assert!(f.len() <= 256, "NFT_USERDATA_MAXLEN");
        assert!(f.starts_with("keelson-masquerade/v1 "));
        let mut unrandom = rules();
        unrandom.fully_random = false;
        assert_ne!(unrandom.fingerprint(), f);
    }

    #[test]
    fn the_ipv4_rule_matches_source_destination_and_interface() {
        let r = rules();
        let pods = Set {
            family: Family::Inet,
            table: TABLE.into(),
            name: "pod4".into(),
            id: 1,
            key: KeyType::Ipv4Addr,
        };
        let nomasq = Set { name: "nomasq4".into(), id: 2, ..pods.clone() };
        let mut name = b"keel0".to_vec();
        name.resize(16, 0);
        assert_eq!(
            r.rule(false, &pods, &nomasq),
            vec![
                Expr::Meta { key: MetaKey::NfProto, dreg: Register::R1 },
                Expr::Cmp { sreg: Register::R1, op: CmpOp::Eq, data: vec![2] },
                Expr::Payload {
                    base: super::super::PayloadBase::Network,
                    offset: 12,
                    len: 4,
                    dreg: Register::R1
                },
                Expr::Lookup {
                    sreg: Register::R1,
                    set: "pod4".into(),
                    set_id: Some(1),
                    invert: false
                },
                Expr::Payload {
                    base: super::super::PayloadBase::Network,
                    offset: 16,
                    len: 4,
                    dreg: Register::R1
                },
                Expr::Lookup {
                    sreg: Register::R1,
                    set: "nomasq4".into(),
                    set_id: Some(2),
                    invert: true
                },
                Expr::Meta { key: MetaKey::OifName, dreg: Register::R1 },
                Expr::Cmp { sreg: Register::R1, op: CmpOp::Neq, data: name },
                Expr::Counter,
                Expr::Masquerade { flags: 0x10 },
            ]
        );
    }

    #[test]
    fn a_single_family_configuration_gets_a_single_rule() {
        let r = MasqueradeRules { pod_cidrs: vec!["10.42.0.0/24".parse().unwrap()], ..rules() };
        let b = r.batch().unwrap();
        let e = b.encode(0);
        assert_eq!(types(&e.bytes).iter().filter(|t| **t == 0x0a06).count(), 1);
    }

    #[test]
    fn remove_deletes_only_our_table_whether_or_not_it_exists() {
        let mut m = Masquerade::new(Nftables::new(FakeNetfilter::new()));
        m.remove().unwrap();
        let sent = &m.nftables().transport().sent;
        assert_eq!(types(&sent[0]), [0x10, 0x0a00, 0x0a02, 0x11]);
        let msgs = wire::messages(&sent[0]).unwrap();
        for m in &msgs[1..3] {
            let a = wire::nft_attrs(m.payload).unwrap();
            assert_eq!(a[0].string().unwrap(), TABLE);
        }
    }

    #[test]
    fn bad_configuration_is_refused_before_anything_is_sent() {
        let mut m = Masquerade::new(Nftables::new(FakeNetfilter::new()));
        for bad in [
            MasqueradeRules { bridge: "a-name-far-too-long".into(), ..rules() },
            MasqueradeRules { bridge: String::new(), ..rules() },
            MasqueradeRules { pod_cidrs: vec![], ..rules() },
        ] {
            assert!(matches!(m.ensure(&bad), Err(Error::Invalid(_))));
        }
        assert!(m.nftables().transport().sent.is_empty());
    }

    #[test]
    fn a_refused_transaction_reports_the_failing_message() {
        let mut fake = FakeNetfilter::new();
        fake.fail(0x0a03, libc::ENOENT); // e.g. no nat chain type (nft_chain_nat missing)
        let mut m = Masquerade::new(Nftables::new(fake));
        let err = m.ensure(&rules()).unwrap_err();
        assert!(err.to_string().starts_with("add chain inet keelson postrouting"), "{err}");
        assert_eq!(err.errno(), Some(libc::ENOENT));
    }

    #[test]
    fn configuration_maps_ranges_and_exclusions() {
        let mut cfg = NetworkConfig::standalone(&["10.42.0.0/24".parse().unwrap()]);
        cfg.masquerade.as_mut().unwrap().service_cidrs = vec!["10.96.0.0/12".parse().unwrap()];
        let r = MasqueradeRules::from_config(&cfg).unwrap();
        assert_eq!(r.pod_cidrs, ["10.42.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(r.exclude.len(), 2);
        assert_eq!(r.bridge, "keel0");
        cfg.masquerade = None;
        assert!(MasqueradeRules::from_config(&cfg).is_none());
    }
}
