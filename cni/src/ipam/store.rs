//! The on-disk layout of one network's allocations, `<state_dir>/networks/<network>/`:
//!
//! - `VERSION`: `{"format":"keelson-ipam","v":1}`, written once when the directory is created.
//!   A directory with another format or version is refused, never guessed at.
//! - `lock`: taken with `flock(2)`, exclusive around allocate, release and gc, shared around
//!   reads, so lookups by key and the round-robin markers are consistent across processes.
//! - `<address>` (e.g. `10.42.0.7`, `fd00::7`): one file per allocated address holding the
//!   record `{"v":1,"containerId":"…","ifname":"…"}`. The record is first written and fsynced
//!   under the staging name `.staging` (created with `O_EXCL`) and then hard-linked to each
//!   address name; `link(2)` fails with `EEXIST` when the address is taken, so an address can
//!   never be handed out twice even without the lock, and a half-written record never exists
//!   under an address name. A crash leaves at most a stale `.staging`, removed by the next
//!   writer.
//! - `k.<hash>.<address>`: a second hard link of the record, named by the 64-bit FNV-1a hash
//!   of the key (`containerId`, a zero byte, `ifname`; 16 lowercase hex digits). It lets ADD
//!   and DEL find a key's addresses from one directory listing instead of reading every
//!   record. The index is only a hint: an entry counts only while `readdir` shows it as the
//!   same inode as its address, and the record is still read to confirm the key (hashes may
//!   collide). A crash may leave an address without its index entry (found by reading the few
//!   unindexed records, and re-indexed) or an index entry whose address is gone or was
//!   re-created (removed when seen).
//! - `last_reserved.<set>`: the address last handed out from range set `<set>`, overwritten in
//!   place and padded, so the next allocation continues after it (host-local's round robin).
//!   Only a hint: a missing or unreadable marker restarts at the beginning of the set.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::{DirEntryExt, FileExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{AllocKey, Error, Result};

/// The version of the directory layout and of the records.
pub const FORMAT_VERSION: u64 = 1;
const FORMAT_NAME: &str = "keelson-ipam";
const VERSION_FILE: &str = "VERSION";
const LOCK_FILE: &str = "lock";
const STAGING_FILE: &str = ".staging";
const MARKER_PREFIX: &str = "last_reserved.";
const INDEX_PREFIX: &str = "k.";
/// Markers are overwritten in place with this many bytes (the longest IPv6 text is 39), so a
/// marker update needs neither truncation nor rename (either makes ext4 flush data early).
const MARKER_WIDTH: usize = 48;

/// The hash naming a key's index entries: FNV-1a, 64 bits, over `containerId`, a zero byte
/// and `ifname`. Part of format version 1; never change it within a version.
pub(crate) fn key_hash(key: &AllocKey) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = key.container_id.bytes().chain([0]).chain(key.ifname.bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn index_name(hash: u64, ip: IpAddr) -> String {
    format!("{INDEX_PREFIX}{hash:016x}.{ip}")
}

fn parse_index_name(name: &str) -> Option<(u64, IpAddr)> {
    let rest = name.strip_prefix(INDEX_PREFIX)?;
    let (hash, ip) = rest.split_at_checked(16)?;
    let hash = u64::from_str_radix(hash, 16).ok()?;
    Some((hash, ip.strip_prefix('.')?.parse().ok()?))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatMarker {
    format: String,
    v: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecordV1 {
    v: u64,
    container_id: String,
    ifname: String,
}

/// One allocated address and its owner, as read from disk.
pub(crate) struct Entry {
    pub(crate) ip: IpAddr,
    pub(crate) key: AllocKey,
}

/// What [`Store::read_all`] found: readable records and the errors of unreadable ones.
pub(crate) struct Listing {
    pub(crate) entries: Vec<Entry>,
    pub(crate) corrupt: Vec<Error>,
}

impl Listing {
    /// The entries, or the first unreadable record's error.
    pub(crate) fn strict(self) -> Result<Vec<Entry>> {
        match self.corrupt.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(self.entries),
        }
    }
}

/// One directory listing: the allocated addresses and the index entries, with the inode
/// numbers `readdir` reports (an index entry is valid only while it is a link to its
/// address's inode).
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// Address to inode.
    pub(crate) addresses: BTreeMap<IpAddr, u64>,
    /// `(hash, address, inode)` of every index entry.
    pub(crate) index: Vec<(u64, IpAddr, u64)>,
}

impl Names {
    /// Whether the index entry links to the record its address names now.
    pub(crate) fn is_current(&self, ip: IpAddr, ino: u64) -> bool {
        self.addresses.get(&ip) == Some(&ino)
    }

    /// Addresses that no current index entry points at (a crash between linking the address
    /// and its index entry, or records written by hand).
    pub(crate) fn unindexed(&self) -> Vec<IpAddr> {
        let indexed: BTreeSet<IpAddr> = self
            .index
            .iter()
            .filter(|(_, ip, ino)| self.is_current(*ip, *ino))
            .map(|(_, ip, _)| *ip)
            .collect();
        self.addresses.keys().filter(|ip| !indexed.contains(ip)).copied().collect()
    }
}

/// A held `flock`; released on drop.
#[derive(Debug)]
pub(crate) struct Lock {
    _flock: Flock<File>,
}

/// One network's directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

/// Fsyncs a directory, so entries created, linked or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))
}

impl Store {
    /// Opens (and on first use creates) the directory, checking its format marker.
    pub(crate) fn open(dir: PathBuf) -> Result<Self> {
        let store = Store { dir };
        if store.has_format()? {
            return Ok(store);
        }
        let created = !store.dir.exists();
        fs::create_dir_all(&store.dir).map_err(io_err("create directory", &store.dir))?;
        let _lock = store.lock(true)?;
        // Another process may have initialised it while we waited for the lock.
        if store.has_format()? {
            return Ok(store);
        }
        if let Some(ip) = store.scan()?.addresses.into_keys().next() {
            return Err(Error::Unversioned { path: store.dir.clone(), example: ip });
        }
        let marker = FormatMarker { format: FORMAT_NAME.into(), v: FORMAT_VERSION };
        let mut text = serde_json::to_vec(&marker)
            .map_err(|e| Error::Encode { path: store.path(VERSION_FILE), reason: e.to_string() })?;
        text.push(b'\n');
        store.replace_file(VERSION_FILE, &text)?;
        store.sync()?;
        if created {
            // Make the new directory's own entry durable too.
            let mut parent = store.dir.parent();
            for _ in 0..2 {
                let Some(p) = parent else { break };
                sync_dir(p)?;
                parent = p.parent();
            }
        }
        Ok(store)
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `true` when `VERSION` is present and ours, `false` when it is absent; an error when it
    /// names another format or version.
    fn has_format(&self) -> Result<bool> {
        let path = self.path(VERSION_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::Io { op: "read", path, source: e }),
        };
        match serde_json::from_slice::<FormatMarker>(&text) {
            Ok(m) if m.format == FORMAT_NAME && m.v == FORMAT_VERSION => Ok(true),
            _ => Err(Error::UnsupportedFormat {
                path,
                found: String::from_utf8_lossy(&text).trim().chars().take(80).collect(),
            }),
        }
    }

    /// Takes the network's lock, waiting for it.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<Lock> {
        let path = self.path(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        let arg = if exclusive { FlockArg::LockExclusive } else { FlockArg::LockShared };
        loop {
            match Flock::lock(file, arg) {
                Ok(flock) => return Ok(Lock { _flock: flock }),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => return Err(Error::Lock { path, source: errno }),
            }
        }
    }

    /// Lists the directory: addresses and index entries.
    pub(crate) fn scan(&self) -> Result<Names> {
        let entries = fs::read_dir(&self.dir).map_err(io_err("read directory", &self.dir))?;
        let mut names = Names::default();
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if let Ok(ip) = name.parse::<IpAddr>() {
                names.addresses.insert(ip, entry.ino());
            } else if let Some((hash, ip)) = parse_index_name(&name) {
                names.index.push((hash, ip, entry.ino()));
            }
        }
        Ok(names)
    }

    /// Every allocation record. Call with the lock held.
    pub(crate) fn read_all(&self) -> Result<Listing> {
        let mut listing = Listing { entries: Vec::new(), corrupt: Vec::new() };
        for ip in self.scan()?.addresses.into_keys() {
            match self.read_record(ip) {
                Ok(Some(key)) => listing.entries.push(Entry { ip, key }),
                Ok(None) => {}
                Err(err @ Error::Io { .. }) => return Err(err),
                Err(err) => listing.corrupt.push(err),
            }
        }
        listing.entries.sort_by_key(|e| e.ip);
        Ok(listing)
    }

    /// The key `ip`'s record names; `None` when there is no record.
    pub(crate) fn read_record(&self, ip: IpAddr) -> Result<Option<AllocKey>> {
        let path = self.path(&ip.to_string());
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io { op: "read record", path, source: e }),
        };
        let corrupt = |reason: String| Error::CorruptRecord { path: path.clone(), reason };
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        match value.get("v").and_then(serde_json::Value::as_u64) {
            Some(FORMAT_VERSION) => {}
            Some(version) => {
                return Err(Error::UnsupportedRecordVersion { path: path.clone(), version })
            }
            None => return Err(corrupt("no version field \"v\"".into())),
        }
        let record: RecordV1 = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(AllocKey { container_id: record.container_id, ifname: record.ifname }))
    }

    /// Removes a staging file a crashed writer left behind. Call with the exclusive lock held.
    pub(crate) fn clear_staging(&self) -> Result<()> {
        let path = self.path(STAGING_FILE);
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "removed a staging record left by a crash");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io { op: "remove", path, source: e }),
        }
    }

    /// Writes `key`'s record under the staging name, fsynced, ready to be linked to addresses.
    /// Call with the exclusive lock held, after [`Store::clear_staging`].
    pub(crate) fn stage(&self, key: &AllocKey) -> Result<Staged> {
        let path = self.path(STAGING_FILE);
        let record = RecordV1 {
            v: FORMAT_VERSION,
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
        };
        let text = serde_json::to_vec(&record)
            .map_err(|e| Error::Encode { path: path.clone(), reason: e.to_string() })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        // From here on the staging file is ours; dropping `staged` removes it on any error.
        let staged = Staged { path: path.clone(), hash: key_hash(key) };
        file.write_all(&text).map_err(io_err("write", &path))?;
        file.sync_all().map_err(io_err("fsync", &path))?;
        Ok(staged)
    }

    /// Links the staged record to `ip`'s name and to its index entry. `false` when the
    /// address is taken.
    pub(crate) fn claim(&self, staged: &Staged, ip: IpAddr) -> Result<bool> {
        let path = self.path(&ip.to_string());
        match fs::hard_link(&staged.path, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::Io { op: "link record", path, source: e }),
        }
        if let Err(e) = self.link_index(&staged.path, staged.hash, ip) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(true)
    }

    /// Links `record` to the index entry of `(hash, ip)`, replacing a stale one.
    fn link_index(&self, record: &Path, hash: u64, ip: IpAddr) -> Result<()> {
        let path = self.path(&index_name(hash, ip));
        for _ in 0..2 {
            match fs::hard_link(record, &path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => self.remove_index(hash, ip)?,
                Err(e) => return Err(Error::Io { op: "link index entry", path, source: e }),
            }
        }
        Err(Error::Io {
            op: "link index entry",
            path,
            source: io::Error::from(ErrorKind::AlreadyExists),
        })
    }

    /// Gives an unindexed address its index entry. Call with the exclusive lock held.
    pub(crate) fn reindex(&self, key: &AllocKey, ip: IpAddr) -> Result<()> {
        self.link_index(&self.path(&ip.to_string()), key_hash(key), ip)
    }

    /// Removes one index entry; harmless when it is already gone.
    pub(crate) fn remove_index(&self, hash: u64, ip: IpAddr) -> Result<()> {
        let path = self.path(&index_name(hash, ip));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io { op: "remove index entry", path, source: e }),
        }
    }

    /// Removes `ip`'s record, then its index entry for `hash`; harmless when they are gone.
    pub(crate) fn remove(&self, ip: IpAddr, hash: u64) -> Result<()> {
        let path = self.path(&ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io { op: "remove record", path, source: e }),
        }
        self.remove_index(hash, ip)
    }

    /// The address last handed out from range set `set`, if the marker is readable.
    pub(crate) fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let path = self.path(&format!("{MARKER_PREFIX}{set}"));
        match fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    tracing::warn!(path = %path.display(), "ignoring an unreadable round-robin marker");
                    None
                }
            },
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable round-robin marker");
                None
            }
        }
    }

    /// Records `ip` as the address last handed out from range set `set`, overwriting the
    /// marker in place. Not fsynced: after a crash the marker may be old, unreadable or torn,
    /// which at worst moves the round-robin position.
    pub(crate) fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<()> {
        let path = self.path(&format!("{MARKER_PREFIX}{set}"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let text = format!("{:<width$}\n", ip, width = MARKER_WIDTH - 1);
        file.write_all_at(text.as_bytes(), 0).map_err(io_err("write", &path))
    }

    /// Atomically replaces `name` with `content` (write a temporary, rename over).
    fn replace_file(&self, name: &str, content: &[u8]) -> Result<()> {
        let tmp = self.path(&format!(".{name}.tmp"));
        let target = self.path(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(content).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, &target).map_err(io_err("rename", &target))
    }

    /// Makes every entry created, linked, renamed or removed so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        sync_dir(&self.dir)
    }
}

/// A record written under the staging name; unlinked on drop (its address links stay).
#[derive(Debug)]
pub(crate) struct Staged {
    path: PathBuf,
    hash: u64,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the staging record");
            }
        }
    }
}
