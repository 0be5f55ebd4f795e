//! Host-local address management: one address per configured range set for every pod
//! interface, keyed by container id and interface name, durable and safe when many processes
//! allocate at once.
//!
//! Semantics follow the reference `host-local` plugin: a range defaults to the subnet's
//! addresses after the network address (IPv4: up to the address before broadcast), the gateway
//! defaults to the subnet's first host address, the network address, the IPv4 broadcast and
//! the gateway are never handed out, and allocation continues round robin after the address
//! last handed out from the set, so a released address is not reused at once. Unlike
//! host-local, allocating again for a key that already holds addresses returns them
//! (idempotent ADD), and an allocation is all or nothing across range sets.
//!
//! Durability and concurrency: see [`store`] for the on-disk layout (one record file per
//! address, written and fsynced under a staging name, then hard-linked to the address name so
//! `EEXIST` guards the address; the directory is fsynced before [`Ipam::allocate`] returns;
//! a per-network `flock` orders allocate, release and gc).
//!
//! Limits: records that cannot be read make [`Ipam::allocate`], [`Ipam::get`] and
//! [`Ipam::list`] fail with an error naming the file (they might belong to the caller); release
//! and gc skip them with a warning, so a DEL still frees everything it can.

mod range;
pub mod store;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::RangeSet;
use crate::IpConfig;
use range::{describe, walk, ResolvedSet};
pub use range::{resolve, ResolvedRange};
use store::{Names, Store};

/// Errors of address management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network name cannot name a directory.
    #[error("invalid network name {name:?}: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'")]
    InvalidNetworkName {
        /// The name given.
        name: String,
    },
    /// An allocation key with an empty part.
    #[error("invalid allocation key: container id and interface name must not be empty")]
    InvalidKey,
    /// No range set configured.
    #[error("no address ranges configured")]
    NoRanges,
    /// A range set without ranges.
    #[error("range set {set} is empty")]
    EmptyRangeSet {
        /// Index of the range set.
        set: usize,
    },
    /// IPv4 and IPv6 ranges in one set.
    #[error("range set {set} mixes IPv4 and IPv6 ranges")]
    MixedFamilies {
        /// Index of the range set.
        set: usize,
    },
    /// A subnet written with host bits.
    #[error(
        "subnet {subnet} of range set {set} has host bits set; the network address is {network}"
    )]
    HostBitsSet {
        /// Index of the range set.
        set: usize,
        /// The subnet as configured.
        subnet: IpNet,
        /// Its network address.
        network: IpAddr,
    },
    /// A /31, /32, /127 or /128.
    #[error("subnet {subnet} of range set {set} is too small to allocate from")]
    SubnetTooSmall {
        /// Index of the range set.
        set: usize,
        /// The subnet.
        subnet: IpNet,
    },
    /// `rangeStart`, `rangeEnd` or `gateway` outside the subnet.
    #[error("{field} {addr} of range set {set} is not in subnet {subnet}")]
    OutsideSubnet {
        /// Index of the range set.
        set: usize,
        /// The field: `rangeStart`, `rangeEnd` or `gateway`.
        field: &'static str,
        /// The address.
        addr: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },
    /// `rangeStart` after `rangeEnd`.
    #[error("rangeStart {start} of range set {set} is after rangeEnd {end}")]
    StartAfterEnd {
        /// Index of the range set.
        set: usize,
        /// The start.
        start: IpAddr,
        /// The end.
        end: IpAddr,
    },
    /// A gateway on the network or broadcast address.
    #[error(
        "gateway {gateway} of range set {set} is the network or broadcast address of {subnet}"
    )]
    ReservedGateway {
        /// Index of the range set.
        set: usize,
        /// The gateway.
        gateway: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },
    /// Two ranges share addresses.
    #[error("{a} overlaps {b}")]
    Overlap {
        /// The first range, described.
        a: String,
        /// The second range, described.
        b: String,
    },
    /// Every address of a range set is taken.
    #[error("no free address in range set {set} ({ranges})")]
    Exhausted {
        /// Index of the range set.
        set: usize,
        /// Its ranges, `start-end` comma separated.
        ranges: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Taking the network's lock failed.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::errno::Errno,
    },
    /// Encoding a record failed (it cannot, for strings).
    #[error("cannot encode {}: {reason}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An allocation record that is not valid JSON of the expected shape.
    #[error("corrupt allocation record {}: {reason}", path.display())]
    CorruptRecord {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An allocation record of a version this release does not know.
    #[error("allocation record {} has version {version}, this release reads version {}", path.display(), store::FORMAT_VERSION)]
    UnsupportedRecordVersion {
        /// The record file.
        path: PathBuf,
        /// Its version.
        version: u64,
    },
    /// The directory's `VERSION` names another format or version.
    #[error("{} holds {found:?}, this release reads keelson-ipam version {}", path.display(), store::FORMAT_VERSION)]
    UnsupportedFormat {
        /// The `VERSION` file.
        path: PathBuf,
        /// Its content (shortened).
        found: String,
    },
    /// A directory with address files but no `VERSION` (another tool's, e.g. host-local's).
    #[error("{} holds address files (such as {example}) but no VERSION marker; refusing to use another tool's directory", path.display())]
    Unversioned {
        /// The directory.
        path: PathBuf,
        /// One address file found.
        example: IpAddr,
    },
}

/// Result of address management.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an allocation belongs to: CNI's `(CNI_CONTAINERID, CNI_IFNAME)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocKey {
    /// The sandbox's id.
    pub container_id: String,
    /// The interface inside the sandbox.
    pub ifname: String,
}

impl AllocKey {
    /// A key from its parts.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        AllocKey { container_id: container_id.into(), ifname: ifname.into() }
    }

    fn validate(&self) -> Result<()> {
        if self.container_id.is_empty() || self.ifname.is_empty() {
            return Err(Error::InvalidKey);
        }
        Ok(())
    }
}

impl std::fmt::Display for AllocKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Whether `name` is a valid CNI network name (and so a safe directory name).
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One network's address management. Cheap to open per command; every operation takes the
/// network's lock itself, so an `Ipam` may be shared between threads and processes may open
/// the same network at once.
#[derive(Debug, Clone)]
pub struct Ipam {
    store: Store,
    sets: Vec<ResolvedSet>,
}

impl Ipam {
    /// Validates `ranges` (see [`resolve`]) and opens the network's directory
    /// `<state_dir>/networks/<network>/`, creating it on first use.
    pub fn open(state_dir: &Path, network: &str, ranges: &[RangeSet]) -> Result<Self> {
        if !valid_network_name(network) {
            return Err(Error::InvalidNetworkName { name: network.into() });
        }
        let sets = resolve(ranges)?;
        let store = Store::open(state_dir.join("networks").join(network))?;
        Ok(Ipam { store, sets })
    }

    /// The network's directory.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// The validated ranges, one list per range set, in configuration order.
    pub fn ranges(&self) -> &[Vec<ResolvedRange>] {
        &self.sets
    }

    /// Every gateway with its subnet's prefix length (what the bridge holds), without
    /// duplicates, in configuration order.
    pub fn gateways(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        for range in self.sets.iter().flatten() {
            if let Ok(net) = IpNet::new(range.gateway, range.subnet.prefix_len()) {
                if !out.contains(&net) {
                    out.push(net);
                }
            }
        }
        out
    }

    /// The range of set `set` that `ip` belongs to: by `[start, end]`, else by subnet (the
    /// configuration may have narrowed the range since the address was handed out).
    fn range_for(&self, set: usize, ip: IpAddr) -> Option<&ResolvedRange> {
        let ranges = &self.sets[set];
        ranges
            .iter()
            .find(|r| r.contains(ip))
            .or_else(|| ranges.iter().find(|r| r.subnet.contains(&ip)))
    }

    fn config(range: &ResolvedRange, ip: IpAddr) -> IpConfig {
        IpConfig {
            // The prefix length comes from a subnet of the same family as `ip`.
            address: IpNet::new(ip, range.subnet.prefix_len()).unwrap_or_else(|_| IpNet::from(ip)),
            gateway: range.gateway,
        }
    }

    /// For each range set in order, the first of `owned` that belongs to it.
    fn match_sets(&self, owned: &[IpAddr]) -> Vec<Option<IpConfig>> {
        (0..self.sets.len())
            .map(|set| {
                owned.iter().find_map(|ip| self.range_for(set, *ip).map(|r| Self::config(r, *ip)))
            })
            .collect()
    }

    /// What `key` holds according to the index, checked against the records, plus what repair
    /// the index needs. `strict`: an unreadable record among those read is an error (it might
    /// be the key's); otherwise it is skipped with a warning.
    fn find(&self, names: &Names, key: &AllocKey, strict: bool) -> Result<Held> {
        let hash = store::key_hash(key);
        let mut held = Held::default();
        let read = |ip: IpAddr| match self.store.read_record(ip) {
            Ok(record) => Ok(record),
            Err(e @ Error::Io { .. }) => Err(e),
            Err(e) if strict => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable allocation record");
                Ok(None)
            }
        };
        for &(h, ip, ino) in names.index.iter().filter(|(h, _, _)| *h == hash) {
            if !names.is_current(ip, ino) {
                held.stale.push((h, ip));
                continue;
            }
            // Another key with the same hash is not ours.
            if read(ip)?.is_some_and(|k| &k == key) {
                held.owned.push(ip);
            }
        }
        for ip in names.unindexed() {
            if let Some(k) = read(ip)? {
                if &k == key {
                    held.owned.push(ip);
                }
                held.unindexed.push((k, ip));
            }
        }
        held.owned.sort();
        held.owned.dedup();
        Ok(held)
    }

    /// Applies the index repair [`Ipam::find`] found. Call with the exclusive lock held.
    fn repair(&self, held: &Held) -> Result<()> {
        for (hash, ip) in &held.stale {
            self.store.remove_index(*hash, *ip)?;
        }
        for (key, ip) in &held.unindexed {
            tracing::info!(%key, %ip, "re-indexed an allocation");
            self.store.reindex(key, *ip)?;
        }
        Ok(())
    }

    /// One address from every range set, in configuration order. A key that already holds an
    /// address in a set gets it back; when any set is exhausted, the addresses taken by this
    /// call are released again and nothing changes. Every new record is durable on return.
    pub fn allocate(&self, key: &AllocKey) -> Result<Vec<IpConfig>> {
        key.validate()?;
        let _lock = self.store.lock(true)?;
        self.store.clear_staging()?;
        let names = self.store.scan()?;
        let held = self.find(&names, key, true)?;
        self.repair(&held)?;
        let existing = self.match_sets(&held.owned);

        let mut out = Vec::with_capacity(self.sets.len());
        let mut created: Vec<(usize, IpAddr)> = Vec::new();
        let mut staged = None;
        let mut outcome = Ok(());
        for (set, ranges) in self.sets.iter().enumerate() {
            if let Some(config) = existing[set] {
                out.push(config);
                continue;
            }
            let staged = match &staged {
                Some(staged) => staged,
                None => match self.store.stage(key) {
                    Ok(s) => staged.insert(s),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                },
            };
            let mut found = None;
            for (i, ip) in walk(ranges, self.store.last_reserved(set)) {
                if names.addresses.contains_key(&ip) {
                    continue;
                }
                match self.store.claim(staged, ip) {
                    Ok(true) => {
                        found = Some((i, ip));
                        break;
                    }
                    Ok(false) => continue,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            if outcome.is_err() {
                break;
            }
            let Some((i, ip)) = found else {
                outcome = Err(Error::Exhausted { set, ranges: describe(ranges) });
                break;
            };
            created.push((set, ip));
            out.push(Self::config(&ranges[i], ip));
        }
        drop(staged);

        if outcome.is_ok() && !created.is_empty() {
            for (set, ip) in &created {
                if let Err(e) = self.store.set_last_reserved(*set, *ip) {
                    tracing::warn!(error = %e, "cannot record the round-robin position");
                }
            }
            outcome = self.store.sync();
        }
        if let Err(err) = outcome {
            let hash = store::key_hash(key);
            for (_, ip) in &created {
                if let Err(e) = self.store.remove(*ip, hash) {
                    tracing::warn!(error = %e, %ip, "cannot roll back an allocation");
                }
            }
            if !created.is_empty() {
                if let Err(e) = self.store.sync() {
                    tracing::warn!(error = %e, "cannot sync the rollback");
                }
            }
            return Err(err);
        }
        if !created.is_empty() {
            tracing::debug!(%key, addresses = ?created.iter().map(|c| c.1).collect::<Vec<_>>(), "allocated");
        }
        Ok(out)
    }

    /// The addresses `key` holds, one per range set it has an address in, in configuration
    /// order. Addresses outside every configured range are not reported (see [`Ipam::list`]).
    pub fn get(&self, key: &AllocKey) -> Result<Vec<IpConfig>> {
        let _lock = self.store.lock(false)?;
        let names = self.store.scan()?;
        let held = self.find(&names, key, true)?;
        Ok(self.match_sets(&held.owned).into_iter().flatten().collect())
    }

    /// Releases every address `key` holds, in any range; returns them. Harmless when it holds
    /// none. Unreadable records are skipped with a warning.
    pub fn release(&self, key: &AllocKey) -> Result<Vec<IpAddr>> {
        let _lock = self.store.lock(true)?;
        self.store.clear_staging()?;
        let names = self.store.scan()?;
        let held = self.find(&names, key, false)?;
        let hash = store::key_hash(key);
        let mut released = Vec::new();
        let mut first_err = None;
        for ip in &held.owned {
            // Keep going on failure: free as much as possible, report the first error.
            match self.store.remove(*ip, hash) {
                Ok(()) => released.push(*ip),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let unindexed: Vec<(AllocKey, IpAddr)> =
            held.unindexed.iter().filter(|(k, _)| k != key).cloned().collect();
        if let Err(e) = self.repair(&Held { owned: Vec::new(), stale: held.stale, unindexed }) {
            first_err.get_or_insert(e);
        }
        self.finish(released, first_err)
    }

    /// Syncs after removals and reports the first error, if any.
    fn finish<T>(&self, released: Vec<T>, mut first_err: Option<Error>) -> Result<Vec<T>> {
        if !released.is_empty() {
            if let Err(e) = self.store.sync() {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    /// The indices of range sets without a free address (an ADD would fail; STATUS reports
    /// it).
    pub fn exhausted(&self) -> Result<Vec<usize>> {
        let _lock = self.store.lock(false)?;
        let names = self.store.scan()?;
        Ok((0..self.sets.len())
            .filter(|&set| {
                walk(&self.sets[set], self.store.last_reserved(set))
                    .all(|(_, ip)| names.addresses.contains_key(&ip))
            })
            .collect())
    }

    /// Every allocation, ordered by address.
    pub fn list(&self) -> Result<Vec<(AllocKey, IpAddr)>> {
        let _lock = self.store.lock(false)?;
        let entries = self.store.read_all()?.strict()?;
        Ok(entries.into_iter().map(|e| (e.key, e.ip)).collect())
    }

    /// Releases every allocation whose key is not live; returns what it released. Unreadable
    /// records are skipped with a warning; index entries whose address is gone are removed.
    pub fn gc(&self, is_live: impl Fn(&AllocKey) -> bool) -> Result<Vec<(AllocKey, IpAddr)>> {
        let _lock = self.store.lock(true)?;
        self.store.clear_staging()?;
        let listing = self.store.read_all()?;
        for err in &listing.corrupt {
            tracing::warn!(error = %err, "skipping an unreadable allocation record");
        }
        let mut released = Vec::new();
        let mut first_err = None;
        for entry in listing.entries {
            if is_live(&entry.key) {
                continue;
            }
            match self.store.remove(entry.ip, store::key_hash(&entry.key)) {
                Ok(()) => {
                    tracing::info!(key = %entry.key, ip = %entry.ip, "released a leaked address");
                    released.push((entry.key, entry.ip));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match self.store.scan() {
            Ok(names) => {
                for &(hash, ip, ino) in &names.index {
                    if !names.is_current(ip, ino) {
                        if let Err(e) = self.store.remove_index(hash, ip) {
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        self.finish(released, first_err)
    }
}

/// What [`Ipam::find`] found for one key.
#[derive(Debug, Default)]
struct Held {
    /// The key's addresses, sorted.
    owned: Vec<IpAddr>,
    /// Index entries of the key's hash whose address is gone or was re-created.
    stale: Vec<(u64, IpAddr)>,
    /// Records without an index entry, with their keys.
    unindexed: Vec<(AllocKey, IpAddr)>,
}
