use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::config::IpRange;

fn range(subnet: &str) -> IpRange {
    IpRange { subnet: subnet.parse().unwrap(), range_start: None, range_end: None, gateway: None }
}

fn bounded(subnet: &str, start: &str, end: &str) -> IpRange {
    IpRange {
        range_start: Some(start.parse().unwrap()),
        range_end: Some(end.parse().unwrap()),
        ..range(subnet)
    }
}

fn key(id: &str) -> AllocKey {
    AllocKey::new(id, "eth0")
}

fn addrs(configs: &[IpConfig]) -> Vec<String> {
    configs.iter().map(|c| c.address.to_string()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn open(dir: &tempfile::TempDir, ranges: &[RangeSet]) -> Ipam {
    Ipam::open(dir.path(), "testnet", ranges).unwrap()
}

#[test]
fn allocation_skips_network_and_gateway_and_proceeds_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/29")]]);
    let got: Vec<String> =
        ["a", "b", "c"].iter().flat_map(|id| addrs(&ipam.allocate(&key(id)).unwrap())).collect();
    assert_eq!(got, ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29"]);
    let first = ipam.get(&key("a")).unwrap();
    assert_eq!(first[0].gateway, ip("10.0.0.1"));
}

#[test]
fn released_address_is_not_reused_before_the_range_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/29")]]);
    // .2 .. .6 are allocatable (.1 gateway, .7 broadcast).
    assert_eq!(addrs(&ipam.allocate(&key("a")).unwrap()), ["10.0.0.2/29"]);
    assert_eq!(ipam.release(&key("a")).unwrap(), [ip("10.0.0.2")]);
    assert_eq!(addrs(&ipam.allocate(&key("b")).unwrap()), ["10.0.0.3/29"]);
    assert_eq!(addrs(&ipam.allocate(&key("c")).unwrap()), ["10.0.0.4/29"]);
    assert_eq!(addrs(&ipam.allocate(&key("d")).unwrap()), ["10.0.0.5/29"]);
    assert_eq!(addrs(&ipam.allocate(&key("e")).unwrap()), ["10.0.0.6/29"]);
    // Wraps around past the gateway to the released address.
    assert_eq!(addrs(&ipam.allocate(&key("f")).unwrap()), ["10.0.0.2/29"]);
}

#[test]
fn round_robin_position_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ranges = [vec![range("10.0.0.0/29")]];
    {
        let ipam = open(&dir, &ranges);
        ipam.allocate(&key("a")).unwrap();
        ipam.allocate(&key("b")).unwrap();
        ipam.release(&key("a")).unwrap();
        ipam.release(&key("b")).unwrap();
    }
    let ipam = open(&dir, &ranges);
    assert_eq!(addrs(&ipam.allocate(&key("c")).unwrap()), ["10.0.0.4/29"]);
}

#[test]
fn allocating_twice_for_one_key_returns_the_same_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")], vec![range("fd00:1::/64")]]);
    let first = ipam.allocate(&key("a")).unwrap();
    let second = ipam.allocate(&key("a")).unwrap();
    assert_eq!(first, second);
    assert_eq!(ipam.list().unwrap().len(), 2);
    // Another interface of the same container is another key.
    let other = ipam.allocate(&AllocKey::new("a", "net1")).unwrap();
    assert_ne!(first, other);
}

#[test]
fn releasing_twice_or_releasing_nothing_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")]]);
    ipam.allocate(&key("a")).unwrap();
    assert_eq!(ipam.release(&key("a")).unwrap(), [ip("10.0.0.2")]);
    assert!(ipam.release(&key("a")).unwrap().is_empty());
    assert!(ipam.release(&key("never")).unwrap().is_empty());
    assert!(ipam.list().unwrap().is_empty());
    assert!(ipam.get(&key("a")).unwrap().is_empty());
}

#[test]
fn dual_stack_gives_one_address_per_set_in_configuration_order() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("fd00:42::/64")], vec![range("10.42.0.0/24")]]);
    let got = ipam.allocate(&key("a")).unwrap();
    assert_eq!(addrs(&got), ["fd00:42::2/64", "10.42.0.2/24"]);
    assert_eq!(got[0].gateway, ip("fd00:42::1"));
    assert_eq!(got[1].gateway, ip("10.42.0.1"));
    assert_eq!(ipam.get(&key("a")).unwrap(), got);
    assert_eq!(
        ipam.gateways(),
        vec!["fd00:42::1/64".parse::<IpNet>().unwrap(), "10.42.0.1/24".parse().unwrap()]
    );
}

#[test]
fn exhaustion_of_a_later_set_rolls_back_the_earlier_sets_address() {
    let dir = tempfile::tempdir().unwrap();
    // The /30 has exactly one allocatable address (.0 network, .1 gateway, .3 broadcast).
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")], vec![range("10.1.0.0/30")]]);
    assert_eq!(addrs(&ipam.allocate(&key("a")).unwrap()), ["10.0.0.2/24", "10.1.0.2/30"]);
    let err = ipam.allocate(&key("b")).unwrap_err();
    assert!(matches!(err, Error::Exhausted { set: 1, .. }), "{err}");
    let held: Vec<IpAddr> = ipam.list().unwrap().into_iter().map(|(_, ip)| ip).collect();
    assert_eq!(held, [ip("10.0.0.2"), ip("10.1.0.2")]);
    assert!(ipam.get(&key("b")).unwrap().is_empty());
    // Freeing the second set's address lets b in.
    ipam.release(&key("a")).unwrap();
    assert_eq!(ipam.allocate(&key("b")).unwrap().len(), 2);
}

#[test]
fn exhausted_reports_the_full_range_sets() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")], vec![range("10.1.0.0/30")]]);
    assert!(ipam.exhausted().unwrap().is_empty());
    ipam.allocate(&key("a")).unwrap();
    assert_eq!(ipam.exhausted().unwrap(), [1]);
    ipam.release(&key("a")).unwrap();
    assert!(ipam.exhausted().unwrap().is_empty());
}

#[test]
fn exhaustion_gives_an_error_naming_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![bounded("10.0.0.0/24", "10.0.0.10", "10.0.0.11")]]);
    ipam.allocate(&key("a")).unwrap();
    ipam.allocate(&key("b")).unwrap();
    let err = ipam.allocate(&key("c")).unwrap_err();
    assert_eq!(err.to_string(), "no free address in range set 0 (10.0.0.10-10.0.0.11)");
    // The failed attempt left no record behind.
    assert_eq!(ipam.list().unwrap().len(), 2);
}

#[test]
fn gateway_network_and_broadcast_are_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = bounded("10.0.0.0/29", "10.0.0.0", "10.0.0.7");
    r.gateway = Some(ip("10.0.0.5"));
    let ipam = open(&dir, &[vec![r]]);
    let mut got = HashSet::new();
    for n in 0.. {
        match ipam.allocate(&key(&format!("c{n}"))) {
            Ok(c) => assert!(got.insert(c[0].address.addr())),
            Err(Error::Exhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let want: HashSet<IpAddr> =
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.6"].map(ip).into();
    assert_eq!(got, want);
}

#[test]
fn ipv6_ranges_include_the_last_address_and_skip_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("fd00::/126")]]);
    assert_eq!(addrs(&ipam.allocate(&key("a")).unwrap()), ["fd00::2/126"]);
    assert_eq!(addrs(&ipam.allocate(&key("b")).unwrap()), ["fd00::3/126"]);
    assert!(matches!(ipam.allocate(&key("c")), Err(Error::Exhausted { .. })));
}

#[test]
fn ranges_of_a_set_are_used_one_after_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/30"), range("10.0.1.0/30")]]);
    let a = ipam.allocate(&key("a")).unwrap();
    let b = ipam.allocate(&key("b")).unwrap();
    assert_eq!(addrs(&a), ["10.0.0.2/30"]);
    assert_eq!(addrs(&b), ["10.0.1.2/30"]);
    assert_eq!(b[0].gateway, ip("10.0.1.1"));
    assert!(matches!(ipam.allocate(&key("c")), Err(Error::Exhausted { set: 0, .. })));
}

#[test]
fn gc_releases_every_allocation_that_is_not_live() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")], vec![range("fd00::/64")]]);
    for id in ["a", "b", "c"] {
        ipam.allocate(&key(id)).unwrap();
    }
    let released = ipam.gc(|k| k.container_id == "b").unwrap();
    let released_keys: HashSet<String> =
        released.iter().map(|(k, _)| k.container_id.clone()).collect();
    assert_eq!(released.len(), 4);
    assert_eq!(released_keys, HashSet::from(["a".to_string(), "c".to_string()]));
    let left = ipam.list().unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|(k, _)| k.container_id == "b"));
    assert!(ipam.gc(|k| k.container_id == "b").unwrap().is_empty());
}

#[test]
fn concurrent_allocations_from_many_threads_get_unique_addresses() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ranges = vec![vec![range("10.0.0.0/24")], vec![range("fd00::/120")]];
    let shared = Arc::new(open(&dir, &ranges));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let dir = Arc::clone(&dir);
            let ranges = ranges.clone();
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                // Half the threads share one Ipam, half open their own (as processes do).
                let own;
                let ipam = if t % 2 == 0 {
                    &*shared
                } else {
                    own = Ipam::open(dir.path(), "testnet", &ranges).unwrap();
                    &own
                };
                (0..8)
                    .flat_map(|n| ipam.allocate(&key(&format!("t{t}-{n}"))).unwrap())
                    .map(|c| c.address.addr())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<IpAddr> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let unique: HashSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(all.len(), 16 * 8 * 2);
    assert_eq!(unique.len(), all.len());
    assert_eq!(shared.list().unwrap().len(), all.len());
}

#[test]
fn allocations_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ranges = [vec![range("10.0.0.0/24")], vec![range("fd00::/64")]];
    let first = open(&dir, &ranges).allocate(&key("a")).unwrap();
    let ipam = open(&dir, &ranges);
    assert_eq!(ipam.get(&key("a")).unwrap(), first);
    assert_eq!(ipam.allocate(&key("a")).unwrap(), first);
    assert_eq!(ipam.list().unwrap().len(), 2);
}

#[test]
fn a_new_range_set_gives_existing_keys_one_more_address() {
    let dir = tempfile::tempdir().unwrap();
    let v4 = vec![range("10.0.0.0/24")];
    let first = open(&dir, std::slice::from_ref(&v4)).allocate(&key("a")).unwrap();
    let ipam = open(&dir, &[v4, vec![range("fd00::/64")]]);
    assert_eq!(ipam.get(&key("a")).unwrap(), first);
    let both = ipam.allocate(&key("a")).unwrap();
    assert_eq!(both[0], first[0]);
    assert_eq!(addrs(&both)[1], "fd00::2/64");
}

#[test]
fn records_are_versioned_json_named_by_address() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")], vec![range("fd00::/64")]]);
    ipam.allocate(&AllocKey::new("abc", "eth0")).unwrap();
    for name in ["10.0.0.2", "fd00::2"] {
        let text = std::fs::read(ipam.dir().join(name)).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value, serde_json::json!({"v": 1, "containerId": "abc", "ifname": "eth0"}));
    }
    let version: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ipam.dir().join("VERSION")).unwrap()).unwrap();
    assert_eq!(version, serde_json::json!({"format": "keelson-ipam", "v": 1}));
    assert_eq!(ipam.dir(), dir.path().join("networks").join("testnet"));
    assert!(!ipam.dir().join(".staging").exists());
}

#[test]
fn bad_ranges_are_rejected_with_clear_errors() {
    let with_gw = |subnet: &str, gw: &str| IpRange { gateway: Some(ip(gw)), ..range(subnet) };
    let cases: Vec<(Vec<RangeSet>, &str)> = vec![
        (vec![], "no address ranges configured"),
        (vec![vec![]], "range set 0 is empty"),
        (
            vec![vec![range("10.0.0.0/24"), range("fd00::/64")]],
            "range set 0 mixes IPv4 and IPv6 ranges",
        ),
        (
            vec![vec![range("10.0.0.5/24")]],
            "subnet 10.0.0.5/24 of range set 0 has host bits set; the network address is 10.0.0.0",
        ),
        (vec![vec![range("10.0.0.0/31")]], "subnet 10.0.0.0/31 of range set 0 is too small"),
        (vec![vec![range("fd00::/127")]], "subnet fd00::/127 of range set 0 is too small"),
        (
            vec![vec![bounded("10.0.0.0/24", "10.0.1.1", "10.0.0.20")]],
            "rangeStart 10.0.1.1 of range set 0 is not in subnet 10.0.0.0/24",
        ),
        (
            vec![vec![bounded("10.0.0.0/24", "10.0.0.1", "10.0.1.20")]],
            "rangeEnd 10.0.1.20 of range set 0 is not in subnet 10.0.0.0/24",
        ),
        (
            vec![vec![bounded("10.0.0.0/24", "10.0.0.30", "10.0.0.20")]],
            "rangeStart 10.0.0.30 of range set 0 is after rangeEnd 10.0.0.20",
        ),
        (
            vec![vec![with_gw("10.0.0.0/24", "10.0.1.1")]],
            "gateway 10.0.1.1 of range set 0 is not in subnet 10.0.0.0/24",
        ),
        (
            vec![vec![with_gw("10.0.0.0/24", "fd00::1")]],
            "gateway fd00::1 of range set 0 is not in subnet 10.0.0.0/24",
        ),
        (
            vec![vec![range("10.0.0.0/24")], vec![with_gw("10.1.0.0/24", "10.1.0.255")]],
            "gateway 10.1.0.255 of range set 1 is the network or broadcast address",
        ),
        (
            vec![vec![range("10.0.0.0/24")], vec![range("10.0.0.0/25")]],
            "range 10.0.0.1-10.0.0.254 of set 0 overlaps range 10.0.0.1-10.0.0.126 of set 1",
        ),
        (
            vec![vec![
                bounded("10.0.0.0/24", "10.0.0.10", "10.0.0.50"),
                bounded("10.0.0.0/24", "10.0.0.50", "10.0.0.60"),
            ]],
            "overlaps",
        ),
    ];
    for (ranges, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = Ipam::open(dir.path(), "testnet", &ranges).unwrap_err().to_string();
        assert!(err.contains(want), "{ranges:?}: got {err:?}, want {want:?}");
        // Validation happens before anything is written.
        assert!(!dir.path().join("networks").exists());
    }
    // Disjoint ranges in one subnet are fine, as in host-local.
    let ok = [vec![
        bounded("10.0.0.0/24", "10.0.0.10", "10.0.0.50"),
        bounded("10.0.0.0/24", "10.0.0.51", "10.0.0.60"),
    ]];
    assert!(resolve(&ok).is_ok());
}

#[test]
fn bad_network_names_and_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", "..", "a/b", "-x", "a b"] {
        let err = Ipam::open(dir.path(), name, &[vec![range("10.0.0.0/24")]]).unwrap_err();
        assert!(matches!(err, Error::InvalidNetworkName { .. }), "{name}: {err}");
    }
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")]]);
    assert!(matches!(ipam.allocate(&AllocKey::new("", "eth0")), Err(Error::InvalidKey)));
    assert!(matches!(ipam.allocate(&AllocKey::new("a", "")), Err(Error::InvalidKey)));
}

#[test]
fn a_corrupt_record_gives_a_clear_error_and_blocks_nothing_else_in_release() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")]]);
    ipam.allocate(&key("a")).unwrap();
    let bad = ipam.dir().join("10.0.0.9");
    std::fs::write(&bad, b"{\"v\":1,\"containerId\":").unwrap();
    let err = ipam.allocate(&key("b")).unwrap_err();
    assert!(matches!(err, Error::CorruptRecord { .. }), "{err}");
    assert!(err.to_string().contains(&bad.display().to_string()), "{err}");
    assert!(matches!(ipam.list(), Err(Error::CorruptRecord { .. })));
    assert!(matches!(ipam.get(&key("a")), Err(Error::CorruptRecord { .. })));
    // DEL still frees what it can; the unreadable record stays for the operator.
    assert_eq!(ipam.release(&key("a")).unwrap(), [ip("10.0.0.2")]);
    assert!(bad.exists());
}

#[test]
fn a_record_of_an_unknown_version_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")]]);
    std::fs::write(ipam.dir().join("10.0.0.9"), br#"{"v":2,"owner":"x"}"#).unwrap();
    let err = ipam.list().unwrap_err();
    assert!(matches!(err, Error::UnsupportedRecordVersion { version: 2, .. }), "{err}");
    assert!(err.to_string().contains("has version 2, this release reads version 1"), "{err}");
}

#[test]
fn a_directory_of_an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("networks").join("testnet");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("VERSION"), br#"{"format":"keelson-ipam","v":7}"#).unwrap();
    let err = Ipam::open(dir.path(), "testnet", &[vec![range("10.0.0.0/24")]]).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
}

#[test]
fn another_tools_directory_without_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("networks").join("testnet");
    std::fs::create_dir_all(&net).unwrap();
    // host-local's record format: "<id>\r\n<ifname>".
    std::fs::write(net.join("10.0.0.2"), b"abc\r\neth0").unwrap();
    let err = Ipam::open(dir.path(), "testnet", &[vec![range("10.0.0.0/24")]]).unwrap_err();
    assert!(matches!(err, Error::Unversioned { .. }), "{err}");
    assert!(!net.join("VERSION").exists());
}

#[test]
fn a_half_written_staging_record_from_a_crash_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")]]);
    // A writer killed between creating and fsyncing its staging record.
    std::fs::write(ipam.dir().join(".staging"), b"{\"v\":1,\"conta").unwrap();
    assert!(ipam.list().unwrap().is_empty());
    assert_eq!(addrs(&ipam.allocate(&key("a")).unwrap()), ["10.0.0.2/24"]);
    assert!(!ipam.dir().join(".staging").exists());
    assert_eq!(ipam.list().unwrap(), [(key("a"), ip("10.0.0.2"))]);
    // A stale staging file does not block release or gc either.
    std::fs::write(ipam.dir().join(".staging"), b"").unwrap();
    assert_eq!(ipam.gc(|_| false).unwrap().len(), 1);
    assert!(!ipam.dir().join(".staging").exists());
}

#[test]
fn an_unreadable_round_robin_marker_restarts_at_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")]]);
    std::fs::write(ipam.dir().join("last_reserved.0"), b"garbage").unwrap();
    assert_eq!(addrs(&ipam.allocate(&key("a")).unwrap()), ["10.0.0.2/24"]);
    // A marker outside the set (the configuration changed) does too.
    std::fs::write(ipam.dir().join("last_reserved.0"), b"192.168.0.9").unwrap();
    assert_eq!(addrs(&ipam.allocate(&key("b")).unwrap()), ["10.0.0.3/24"]);
}

#[test]
fn an_address_without_its_index_entry_is_still_found_and_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")]]);
    // A crash between linking the address and its index entry.
    std::fs::write(ipam.dir().join("10.0.0.7"), br#"{"v":1,"containerId":"a","ifname":"eth0"}"#)
        .unwrap();
    assert_eq!(addrs(&ipam.get(&key("a")).unwrap()), ["10.0.0.7/24"]);
    assert_eq!(addrs(&ipam.allocate(&key("a")).unwrap()), ["10.0.0.7/24"]);
    let index = ipam.dir().join(format!("k.{:016x}.10.0.0.7", store::key_hash(&key("a"))));
    assert!(index.exists(), "allocate re-indexes the record");
    assert_eq!(ipam.release(&key("a")).unwrap(), [ip("10.0.0.7")]);
    assert!(!index.exists());
    assert!(!ipam.dir().join("10.0.0.7").exists());
}

#[test]
fn an_index_entry_without_its_address_is_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &[vec![range("10.0.0.0/24")]]);
    ipam.allocate(&key("a")).unwrap();
    // A crash between removing an address and its index entry; the address went to b since.
    std::fs::remove_file(ipam.dir().join("10.0.0.2")).unwrap();
    assert!(ipam.get(&key("a")).unwrap().is_empty());
    std::fs::write(ipam.dir().join("10.0.0.2"), br#"{"v":1,"containerId":"b","ifname":"eth0"}"#)
        .unwrap();
    assert!(ipam.get(&key("a")).unwrap().is_empty());
    assert_eq!(addrs(&ipam.get(&key("b")).unwrap()), ["10.0.0.2/24"]);
    // a gets a new address, b keeps its own.
    assert_eq!(addrs(&ipam.allocate(&key("a")).unwrap()), ["10.0.0.3/24"]);
    assert!(ipam.release(&key("b")).unwrap() == [ip("10.0.0.2")]);
    let stale = ipam.dir().join(format!("k.{:016x}.10.0.0.2", store::key_hash(&key("a"))));
    assert!(!stale.exists());
}

#[test]
fn the_key_hash_is_stable() {
    // Part of the on-disk format: FNV-1a 64 of "abc\0eth0".
    assert_eq!(store::key_hash(&AllocKey::new("abc", "eth0")), 0x540c_4ae8_1be8_1b20);
    assert_ne!(store::key_hash(&AllocKey::new("ab", "ceth0")), store::key_hash(&key("abc")));
}

/// Set in the environment of the child processes of
/// [`allocators_killed_mid_operation_leave_a_consistent_state_and_nothing_after_gc`].
const CHILD_DIR: &str = "KEELSON_IPAM_TEST_CHILD_DIR";

#[test]
fn allocators_killed_mid_operation_leave_a_consistent_state_and_nothing_after_gc() {
    let ranges = vec![vec![range("10.0.0.0/24")], vec![range("fd00::/120")]];
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        // Child: allocate and release until killed.
        let ipam = Ipam::open(std::path::Path::new(&dir), "testnet", &ranges).unwrap();
        let me = std::process::id();
        for n in 0u64.. {
            let k = key(&format!("p{me}-{n}"));
            ipam.allocate(&k).unwrap();
            if n % 3 != 0 {
                ipam.release(&k).unwrap();
            }
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ipam = open(&dir, &ranges);
    let exe = std::env::current_exe().unwrap();
    for round in 0..3 {
        let mut children: Vec<std::process::Child> = (0..4)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "ipam::tests::allocators_killed_mid_operation_leave_a_consistent_state_and_nothing_after_gc",
                        "--test-threads=1",
                    ])
                    .env(CHILD_DIR, dir.path())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Let them run into each other for a while, then kill -9 all of them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while ipam.list().unwrap().len() < 20 * (round + 1) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for child in &mut children {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        // Every record readable, every key at most one address per set.
        let held = ipam.list().unwrap();
        let mut per_key: std::collections::HashMap<AllocKey, (u32, u32)> = Default::default();
        for (k, addr) in &held {
            let slot = per_key.entry(k.clone()).or_default();
            if addr.is_ipv4() {
                slot.0 += 1
            } else {
                slot.1 += 1
            }
        }
        assert!(per_key.values().all(|&(v4, v6)| v4 <= 1 && v6 <= 1), "{held:?}");
        // Each surviving key still gets exactly its addresses back.
        for k in per_key.keys().take(5) {
            assert_eq!(ipam.allocate(k).unwrap().len(), 2);
        }
    }
    assert!(!ipam.list().unwrap().is_empty());
    ipam.gc(|_| false).unwrap();
    assert!(ipam.list().unwrap().is_empty());
    let mut left: Vec<String> = std::fs::read_dir(ipam.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("last_reserved."))
        .collect();
    left.sort();
    assert_eq!(left, ["VERSION", "lock"]);
}
