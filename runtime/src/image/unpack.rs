//! Unpacking one layer (tar, gzip or zstd) into an empty snapshot directory.
//!
//! Confinement: every path of the archive is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against the snapshot's directory fd, so
//! `..`, absolute paths and symlinks (absolute or relative) can never lead outside it; the
//! final component is then created with `*at` calls on the parent fd that never follow it
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdirat`, `symlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`). Whatever was at that name (an earlier entry of the same layer) is
//! removed first. No path-string checks are involved.
//!
//! Decisions:
//! - Whiteouts: `.wh.<name>` becomes an overlayfs whiteout (a 0/0 character device) and
//!   `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. These are the only
//!   device nodes ever created.
//! - Character and block devices in a layer are skipped (counted, logged): a device node in an
//!   image would be a host device inside the container. Containers get `/dev` from the runtime.
//!   FIFOs are harmless and kept.
//! - Xattrs: only `user.*` and `security.capability` (file capabilities) are applied;
//!   `trusted.*` (overlayfs' own namespace: opaque, redirect, metacopy), `security.selinux`
//!   and the rest are dropped so a layer cannot steer overlayfs.
//! - Ownership and modes are applied as recorded (no user namespace remapping yet); setuid
//!   bits are applied after `chown`, which would clear them.
//! - The diff id (sha256 of the uncompressed stream) is computed while unpacking so the caller
//!   can check it against the image config.
//!
//! Operations that need privileges (whiteout devices, `trusted.*` xattrs, chown) go through
//! [`PrivilegedOps`] so unit tests can run as any user with a recording fake.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, FchmodatFlags, Mode, SFlag,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::{Error, Result};

/// The privileged part of unpacking.
pub trait PrivilegedOps: Send + Sync + fmt::Debug {
    /// Creates an overlayfs whiteout (a 0/0 character device) `name` in `dir`.
    fn whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()>;
    /// Marks the directory `dir` (opened for reading) opaque: `trusted.overlay.opaque=y`.
    fn set_opaque(&self, dir: BorrowedFd<'_>) -> io::Result<()>;
    /// Sets the owner of `name` in `dir` without following a symlink.
    fn chown(&self, dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()>;
    /// Sets an extended attribute on an open file or directory.
    fn set_xattr(&self, fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()>;
}

/// The real operations, for a process with `CAP_MKNOD`, `CAP_CHOWN` and `CAP_SYS_ADMIN`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostOps;

impl PrivilegedOps for HostOps {
    fn whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        mknodat(Some(dir.as_raw_fd()), name, SFlag::S_IFCHR, Mode::empty(), 0)?;
        Ok(())
    }

    fn set_opaque(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        self.set_xattr(dir, "trusted.overlay.opaque", b"y")
    }

    fn chown(&self, dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        nix::unistd::fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    fn set_xattr(&self, fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
        let name = std::ffi::CString::new(name)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `name` is a NUL-terminated string and `value` a valid slice, both alive for
        // the call; `fd` is an open descriptor borrowed for the call.
        let rc = unsafe {
            libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// What unpacking a layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Entries applied.
    pub entries: u64,
    /// Device nodes skipped.
    pub skipped_devices: u64,
    /// Extended attributes dropped.
    pub skipped_xattrs: u64,
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decompresses by magic number (gzip `1f 8b`, zstd `28 b5 2f fd`), falling back to the media
/// type's suffix; anything else is read as a plain tar.
pub fn decompress<'a, R: BufRead + 'a>(
    mut reader: R,
    media_type: &str,
) -> io::Result<Box<dyn Read + 'a>> {
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) || (head.is_empty() && media_type.ends_with("gzip")) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(reader)?))
    } else {
        Ok(Box::new(reader))
    }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens `rel` below `root` with the path confined to `root`.
fn open_in_root(root: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(root.as_raw_fd(), rel, how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            r => return r.map(owned),
        }
    }
}

/// Opens the directory `rel` below `root` (`O_PATH`), creating missing components (0755).
/// A dangling symlink on the way has its target created, resolved inside `root` like any
/// other path (so `lib -> /usr/lib` followed by `lib/x` creates `usr/lib/x` in the snapshot).
fn open_dir_creating(root: BorrowedFd<'_>, rel: &Path) -> nix::Result<OwnedFd> {
    open_dir_creating_depth(root, rel, 0)
}

fn open_dir_creating_depth(root: BorrowedFd<'_>, rel: &Path, depth: u32) -> nix::Result<OwnedFd> {
    let dir = OFlag::O_PATH | OFlag::O_DIRECTORY;
    match open_in_root(root, rel, dir) {
        Err(Errno::ENOENT) => {}
        r => return r,
    }
    if depth > 40 {
        return Err(Errno::ELOOP);
    }
    let mut cur = std::path::PathBuf::new();
    for comp in rel.iter() {
        let next = cur.join(comp);
        match open_in_root(root, &next, dir) {
            Ok(_) => {
                cur = next;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let parent = open_in_root(root, &cur, dir)?;
        match mkdirat(Some(parent.as_raw_fd()), comp, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let target = nix::fcntl::readlinkat(Some(parent.as_raw_fd()), comp)?;
                let target = Path::new(&target);
                let resolved = match target.strip_prefix("/") {
                    Ok(abs) => abs.to_owned(),
                    Err(_) => cur.join(target),
                };
                open_dir_creating_depth(root, &resolved, depth + 1)?;
            }
            Err(e) => return Err(e),
        }
        cur = next;
    }
    open_in_root(root, rel, dir)
}

/// Removes `name` in `dir`, recursively if it is a directory, never following symlinks.
fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    remove_at_depth(dir, name, 0)
}

/// Deepest directory tree [`remove_at`] descends into: a hostile layer can build trees deeper
/// than `PATH_MAX` through symlinks, and recursion must not exhaust the stack.
const MAX_REMOVE_DEPTH: u32 = 1024;

fn remove_at_depth(dir: BorrowedFd<'_>, name: &OsStr, depth: u32) -> nix::Result<()> {
    if depth > MAX_REMOVE_DEPTH {
        return Err(Errno::ELOOP);
    }
    match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => {
            let sub = owned(openat(
                Some(dir.as_raw_fd()),
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?);
            let mut d = nix::dir::Dir::from_fd(sub.as_raw_fd())?;
            std::mem::forget(sub); // Dir owns the fd now.
            let names: Vec<std::ffi::CString> = d
                .iter()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_owned())
                .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
                .collect();
            // SAFETY: `d` keeps its fd open until it is dropped at the end of this block.
            let dfd = unsafe { BorrowedFd::borrow_raw(d.as_raw_fd()) };
            for n in names {
                remove_at_depth(dfd, OsStr::from_bytes(n.as_bytes()), depth + 1)?;
            }
            drop(d);
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
        }
        Err(e) => Err(e),
    }
}

fn is_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    fstatat(Some(dir.as_raw_fd()), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

/// Unpacks a layer blob into `dest`, an empty directory.
pub fn unpack_layer(
    blob: impl BufRead,
    media_type: &str,
    dest: &Path,
    layer: &str,
    ops: &dyn PrivilegedOps,
) -> Result<UnpackStats> {
    unpack_layer_over(blob, media_type, dest, &[], layer, ops)
}

/// Copies the regular file `target` from the first of `lowers` (topmost first) that has it,
/// resolved inside that snapshot, to `name` in `dir`, with its owner, mode and times.
fn copy_from_lowers(
    lowers: &[PathBuf],
    target: &Path,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    ops: &dyn PrivilegedOps,
) -> io::Result<()> {
    for lower in lowers {
        let root = File::open(lower)?;
        // O_NONBLOCK: a FIFO of the lower layer must not block the unpack; it is refused below.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
        let src = match open_in_root(root.as_fd(), target, flags) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let st = nix::sys::stat::fstat(src.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let fd = owned(openat(
            Some(dir.as_raw_fd()),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?);
        let mut dst = File::from(fd);
        io::copy(&mut &src, &mut dst)?;
        ops.chown(dir, name, st.st_uid, st.st_gid)?;
        fchmod(dst.as_raw_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))?;
        let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
        futimens(dst.as_raw_fd(), &mtime, &mtime)?;
        return Ok(());
    }
    Err(io::ErrorKind::NotFound.into())
}

/// Unpacks a layer blob into `dest`, an empty directory, above `lowers` (the snapshots below
/// it, topmost first), which are only read: to resolve hard links to files of lower layers.
pub fn unpack_layer_over(
    blob: impl BufRead,
    media_type: &str,
    dest: &Path,
    lowers: &[PathBuf],
    layer: &str,
    ops: &dyn PrivilegedOps,
) -> Result<UnpackStats> {
    let fail = |op: &'static str, entry: &str| {
        let (layer, entry) = (layer.to_owned(), entry.to_owned());
        move |e: io::Error| Error::Unpack { layer, op, entry, source: e }
    };
    let nix_fail = |op: &'static str, entry: &str| {
        let f = fail(op, entry);
        move |e: Errno| f(io::Error::from(e))
    };
    let link_target = |entry: &tar::Entry<'_, _>, shown: &str| -> Result<Vec<u8>> {
        entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .ok_or_else(|| fail("reading link of", shown)(io::ErrorKind::InvalidData.into()))
    };
    let reader = decompress(blob, media_type).map_err(fail("decompressing", ""))?;
    let mut archive = tar::Archive::new(HashingReader { inner: reader, hasher: Sha256::new() });
    let root_file = File::open(dest).map_err(fail("opening", &dest.display().to_string()))?;
    let root = root_file.as_fd();
    let mut stats =
        UnpackStats { diff_id: Digest::of(b""), entries: 0, skipped_devices: 0, skipped_xattrs: 0 };
    let mut dir_times: Vec<(std::path::PathBuf, i64)> = Vec::new();

    for entry in archive.entries().map_err(fail("reading", ""))? {
        let mut entry = entry.map_err(fail("reading", ""))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let path = Path::new(OsStr::from_bytes(&raw));
        // Split into parent and final name; `.`, `..` and the root itself have no name of their
        // own to create (the parent keeps any `..`: openat2 confines it).
        let name = path.file_name().map(OsStr::to_owned);
        let parent = match &name {
            Some(_) => path.parent().unwrap_or(Path::new("")).to_owned(),
            None => path.to_owned(),
        };
        let kind = entry.header().entry_type();
        let hdr = entry.header();
        let mode = hdr.mode().map_err(fail("reading mode of", &shown))? & 0o7777;
        let uid = hdr.uid().map_err(fail("reading uid of", &shown))? as u32;
        let gid = hdr.gid().map_err(fail("reading gid of", &shown))? as u32;
        let mtime = hdr.mtime().map_err(fail("reading mtime of", &shown))? as i64;

        let Some(name) = name else {
            // The layer's root (`./`): apply a directory's metadata to the snapshot root.
            if kind.is_dir() {
                let fd = open_in_root(root, Path::new(""), OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(nix_fail("opening", &shown))?;
                fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))
                    .map_err(nix_fail("chmod", &shown))?;
                dir_times.push((std::path::PathBuf::new(), mtime));
            }
            continue;
        };
        let name_str = name.to_string_lossy().into_owned();
        let pfd =
            open_dir_creating(root, &parent).map_err(nix_fail("opening parent of", &shown))?;
        let pfd = pfd.as_fd();

        if name_str == OPAQUE {
            let dir = open_in_root(root, &parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(nix_fail("opening", &shown))?;
            ops.set_opaque(dir.as_fd()).map_err(fail("marking opaque", &shown))?;
            stats.entries += 1;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            let hidden = OsStr::new(hidden);
            if hidden.is_empty()
                || hidden == "."
                || hidden == ".."
                || name_str.starts_with(".wh..wh.")
            {
                tracing::debug!(layer, entry = shown, "ignoring reserved whiteout name");
                continue;
            }
            remove_at(pfd, hidden).map_err(nix_fail("replacing", &shown))?;
            ops.whiteout(pfd, hidden).map_err(fail("creating whiteout", &shown))?;
            stats.entries += 1;
            continue;
        }
        if name == "." || name == ".." {
            continue;
        }

        let xattrs: Vec<(String, Vec<u8>)> =
            match entry.pax_extensions().map_err(fail("reading pax of", &shown))? {
                None => Vec::new(),
                Some(exts) => exts
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let key = e.key().ok()?;
                        key.strip_prefix("SCHILY.xattr.")
                            .map(|k| (k.to_owned(), e.value_bytes().to_owned()))
                    })
                    .collect(),
            };
        let apply_xattrs = |fd: BorrowedFd<'_>, stats: &mut UnpackStats| -> Result<()> {
            for (k, v) in &xattrs {
                if xattr_allowed(k) {
                    ops.set_xattr(fd, k, v).map_err(fail("setting xattr on", &shown))?;
                } else {
                    tracing::debug!(layer, entry = shown, xattr = k, "dropping xattr");
                    stats.skipped_xattrs += 1;
                }
            }
            Ok(())
        };
        let times = [TimeSpec::new(mtime, 0), TimeSpec::new(mtime, 0)];

        match kind {
            tar::EntryType::Directory => {
                if !is_dir_at(pfd, &name) {
                    remove_at(pfd, &name).map_err(nix_fail("replacing", &shown))?;
                    match mkdirat(
                        Some(pfd.as_raw_fd()),
                        name.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(nix_fail("creating directory", &shown)(e)),
                    }
                }
                let fd = owned(
                    openat(
                        Some(pfd.as_raw_fd()),
                        name.as_os_str(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(nix_fail("opening", &shown))?,
                );
                ops.chown(pfd, &name, uid, gid).map_err(fail("chown", &shown))?;
                fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))
                    .map_err(nix_fail("chmod", &shown))?;
                apply_xattrs(fd.as_fd(), &mut stats)?;
                dir_times.push((parent.join(&name), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_at(pfd, &name).map_err(nix_fail("replacing", &shown))?;
                let fd = owned(
                    openat(
                        Some(pfd.as_raw_fd()),
                        name.as_os_str(),
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )
                    .map_err(nix_fail("creating", &shown))?,
                );
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(fail("writing", &shown))?;
                ops.chown(pfd, &name, uid, gid).map_err(fail("chown", &shown))?;
                fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode))
                    .map_err(nix_fail("chmod", &shown))?;
                apply_xattrs(file.as_fd(), &mut stats)?;
                futimens(file.as_raw_fd(), &times[0], &times[1])
                    .map_err(nix_fail("setting times of", &shown))?;
            }
            tar::EntryType::Symlink => {
                let target = link_target(&entry, &shown)?;
                remove_at(pfd, &name).map_err(nix_fail("replacing", &shown))?;
                symlinkat(OsStr::from_bytes(&target), Some(pfd.as_raw_fd()), name.as_os_str())
                    .map_err(nix_fail("creating symlink", &shown))?;
                ops.chown(pfd, &name, uid, gid).map_err(fail("chown", &shown))?;
                nix::sys::stat::utimensat(
                    Some(pfd.as_raw_fd()),
                    name.as_os_str(),
                    &times[0],
                    &times[1],
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )
                .map_err(nix_fail("setting times of", &shown))?;
            }
            tar::EntryType::Link => {
                let target = link_target(&entry, &shown)?;
                let target = Path::new(OsStr::from_bytes(&target));
                let (tparent, tname) = match target.file_name() {
                    Some(n) => (target.parent().unwrap_or(Path::new("")), n),
                    None => return Err(fail("linking", &shown)(io::ErrorKind::InvalidData.into())),
                };
                // The target's parent is resolved inside the snapshot, and linkat without
                // AT_SYMLINK_FOLLOW links the entry itself: a link can only ever point at
                // something already inside this snapshot.
                remove_at(pfd, &name).map_err(nix_fail("replacing", &shown))?;
                let linked = open_in_root(root, tparent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .and_then(|tfd| {
                        linkat(
                            Some(tfd.as_raw_fd()),
                            tname,
                            Some(pfd.as_raw_fd()),
                            name.as_os_str(),
                            nix::fcntl::AtFlags::empty(),
                        )
                    });
                match linked {
                    Ok(()) => {}
                    // A link to a file of a lower layer: overlayfs would copy it up, so copy it.
                    Err(Errno::ENOENT) if !lowers.is_empty() => {
                        copy_from_lowers(lowers, target, pfd, &name, ops)
                            .map_err(fail("copying link target of", &shown))?;
                    }
                    Err(e) => return Err(nix_fail("linking", &shown)(e)),
                }
            }
            tar::EntryType::Fifo => {
                remove_at(pfd, &name).map_err(nix_fail("replacing", &shown))?;
                mknodat(
                    Some(pfd.as_raw_fd()),
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(nix_fail("creating fifo", &shown))?;
                ops.chown(pfd, &name, uid, gid).map_err(fail("chown", &shown))?;
                fchmodat(
                    Some(pfd.as_raw_fd()),
                    name.as_os_str(),
                    Mode::from_bits_truncate(mode),
                    FchmodatFlags::NoFollowSymlink,
                )
                .or_else(|e| if e == Errno::EOPNOTSUPP { Ok(()) } else { Err(e) })
                .map_err(nix_fail("chmod", &shown))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                tracing::warn!(layer, entry = shown, "skipping device node");
                stats.skipped_devices += 1;
                continue;
            }
            other => {
                tracing::debug!(layer, entry = shown, kind = ?other, "skipping entry");
                continue;
            }
        }
        stats.entries += 1;
    }

    // Directory times last: creating entries inside changed them.
    for (rel, mtime) in dir_times.iter().rev() {
        if let Ok(fd) = open_in_root(root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            let t = TimeSpec::new(*mtime, 0);
            let _ = futimens(fd.as_raw_fd(), &t, &t);
        }
    }

    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(fail("reading", "(end of archive)"))?;
    stats.diff_id = Digest::from_hasher(hashing.hasher);
    Ok(stats)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::Mutex;

    /// Records privileged operations by path instead of doing them; `user.*` xattrs are real.
    #[derive(Debug, Default)]
    pub(crate) struct RecordingOps {
        pub(crate) calls: Mutex<Vec<String>>,
    }

    fn fd_path(fd: BorrowedFd<'_>) -> String {
        fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    impl PrivilegedOps for RecordingOps {
        fn whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
            self.calls.lock().expect("lock").push(format!(
                "whiteout {}/{}",
                fd_path(dir),
                name.to_string_lossy()
            ));
            Ok(())
        }
        fn set_opaque(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
            self.calls.lock().expect("lock").push(format!("opaque {}", fd_path(dir)));
            Ok(())
        }
        fn chown(
            &self,
            _dir: BorrowedFd<'_>,
            _name: &OsStr,
            _uid: u32,
            _gid: u32,
        ) -> io::Result<()> {
            Ok(())
        }
        fn set_xattr(&self, fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
            self.calls.lock().expect("lock").push(format!("xattr {} {name}", fd_path(fd)));
            let _ = value;
            Ok(())
        }
    }

    /// A tar entry written with raw header bytes, so hostile names survive.
    pub(crate) enum T<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Device(&'a str),
        FileXattr(&'a str, &'a str),
    }

    pub(crate) fn layer(entries: &[T<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            let (path, data): (&str, &[u8]) = match e {
                T::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    (p, b"")
                }
                T::File(p, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    (p, d)
                }
                T::Symlink(p, t) | T::Hardlink(p, t) => {
                    h.set_entry_type(if matches!(e, T::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    let ln = &mut h.as_old_mut().linkname;
                    ln[..t.len()].copy_from_slice(t.as_bytes());
                    (p, b"")
                }
                T::Device(p) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o666);
                    h.set_device_major(1).expect("major");
                    h.set_device_minor(3).expect("minor");
                    (p, b"")
                }
                T::FileXattr(p, x) => {
                    let key = format!("SCHILY.xattr.{x}");
                    b.append_pax_extensions([(key.as_str(), &b"v"[..])]).expect("pax");
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    (p, b"x")
                }
            };
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn unpack(entries: &[T<'_>]) -> (tempfile::TempDir, Result<UnpackStats>, RecordingOps) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("snap");
        fs::create_dir(&dest).expect("mkdir");
        let ops = RecordingOps::default();
        let data = layer(entries);
        let res =
            unpack_layer(&data[..], "application/vnd.oci.image.layer.v1.tar", &dest, "test", &ops);
        (tmp, res, ops)
    }

    /// Everything under `dir` except `snap`.
    fn outside(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "snap")
            .collect();
        v.sort();
        v
    }

    #[test]
    fn plain_layer_unpacks_files_dirs_links() {
        let (tmp, res, _) = unpack(&[
            T::Dir("etc/"),
            T::File("etc/hostname", b"box\n"),
            T::Symlink("etc/link", "hostname"),
            T::Hardlink("etc/hard", "etc/hostname"),
            T::File("deep/missing/parent", b"p"),
        ]);
        let stats = res.expect("unpack");
        assert_eq!(stats.entries, 5);
        let snap = tmp.path().join("snap");
        assert_eq!(fs::read(snap.join("etc/hostname")).expect("read"), b"box\n");
        assert_eq!(fs::read_link(snap.join("etc/link")).expect("link").to_str(), Some("hostname"));
        let a = fs::metadata(snap.join("etc/hostname")).expect("meta");
        assert_eq!(a.ino(), fs::metadata(snap.join("etc/hard")).expect("meta").ino());
        assert_eq!(a.permissions().mode() & 0o777, 0o644);
        assert_eq!(a.mtime(), 1_700_000_000);
        assert_eq!(fs::read(snap.join("deep/missing/parent")).expect("read"), b"p");
    }

    #[test]
    fn diff_id_is_the_sha256_of_the_uncompressed_tar() {
        let data = layer(&[T::File("a", b"a")]);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).expect("gz");
        let gz = gz.finish().expect("gz");
        let stats = unpack_layer(
            &gz[..],
            "application/vnd.oci.image.layer.v1.tar+gzip",
            tmp.path(),
            "t",
            &RecordingOps::default(),
        )
        .expect("unpack gzip");
        assert_eq!(stats.diff_id, Digest::of(&data));
        let zst = zstd::encode_all(&data[..], 3).expect("zstd");
        let tmp2 = tempfile::tempdir().expect("tempdir");
        let stats = unpack_layer(
            &zst[..],
            "application/vnd.oci.image.layer.v1.tar+zstd",
            tmp2.path(),
            "t",
            &RecordingOps::default(),
        )
        .expect("unpack zstd");
        assert_eq!(stats.diff_id, Digest::of(&data));
        assert_eq!(fs::read(tmp2.path().join("a")).expect("read"), b"a");
    }

    #[test]
    fn hostile_layer_cannot_write_outside_snapshot_with_dotdot() {
        let (tmp, res, _) =
            unpack(&[T::File("../escape", b"x"), T::File("a/../../../escape2", b"x")]);
        res.expect("confined, not an error");
        assert_eq!(outside(tmp.path()), Vec::<String>::new());
        assert!(tmp.path().join("snap/escape").exists());
        assert!(tmp.path().join("snap/escape2").exists());
    }

    #[test]
    fn hostile_layer_cannot_write_through_absolute_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().display().to_string();
        let dest = tmp.path().join("snap");
        fs::create_dir(&dest).expect("mkdir");
        let data = layer(&[
            T::Symlink("evil", &target),
            T::File("evil/canary", b"pwned"),
            T::Symlink("rel", "../../.."),
            T::File("rel/canary2", b"pwned"),
        ]);
        let ops = RecordingOps::default();
        unpack_layer(&data[..], "", &dest, "t", &ops).expect("confined");
        assert_eq!(outside(tmp.path()), Vec::<String>::new());
        // The writes landed inside the snapshot, where the symlinks resolve under its root.
        let inside: Vec<_> = walk(&dest);
        assert!(inside.iter().any(|p| p.ends_with("canary")), "{inside:?}");
    }

    #[test]
    fn hostile_layer_cannot_replace_a_symlink_target_outside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let canary = tmp.path().join("canary");
        fs::write(&canary, b"original").expect("canary");
        let dest = tmp.path().join("snap");
        fs::create_dir(&dest).expect("mkdir");
        let data = layer(&[T::Symlink("f", &canary.display().to_string()), T::File("f", b"pwned")]);
        unpack_layer(&data[..], "", &dest, "t", &RecordingOps::default()).expect("unpack");
        assert_eq!(fs::read(&canary).expect("canary"), b"original");
        assert_eq!(fs::read(dest.join("f")).expect("f"), b"pwned");
        assert!(!fs::symlink_metadata(dest.join("f")).expect("f").file_type().is_symlink());
    }

    #[test]
    fn hostile_layer_cannot_hardlink_outside_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let canary = tmp.path().join("canary");
        fs::write(&canary, b"original").expect("canary");
        let dest = tmp.path().join("snap");
        fs::create_dir(&dest).expect("mkdir");
        let abs = canary.display().to_string();
        for (i, target) in [abs.as_str(), "../canary", "../../../../canary"].iter().enumerate() {
            let data = layer(&[T::Hardlink(&format!("l{i}"), target)]);
            let res = unpack_layer(&data[..], "", &dest, "t", &RecordingOps::default());
            assert!(res.is_err(), "link to {target} must fail");
        }
        // Through a symlinked directory as well.
        let data = layer(&[
            T::Symlink("up", &tmp.path().display().to_string()),
            T::Hardlink("l", "up/canary"),
        ]);
        assert!(unpack_layer(&data[..], "", &dest, "t", &RecordingOps::default()).is_err());
        assert_eq!(fs::metadata(&canary).expect("canary").nlink(), 1);
        assert_eq!(fs::read(&canary).expect("canary"), b"original");
    }

    #[test]
    fn hard_links_to_lower_layers_become_copies_confined_to_the_lowers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let canary = tmp.path().join("canary");
        fs::write(&canary, b"outside").expect("canary");
        let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
        fs::create_dir(&lower).expect("lower");
        fs::create_dir(&upper).expect("upper");
        let ops = RecordingOps::default();
        unpack_layer(&layer(&[T::File("bin/tool", b"tool")])[..], "", &lower, "l", &ops)
            .expect("lower");
        let data = layer(&[T::Hardlink("bin/alias", "bin/tool")]);
        unpack_layer_over(&data[..], "", &upper, std::slice::from_ref(&lower), "u", &ops)
            .expect("upper");
        assert_eq!(fs::read(upper.join("bin/alias")).expect("copy"), b"tool");
        assert_eq!(
            fs::metadata(lower.join("bin/tool")).expect("meta").nlink(),
            1,
            "lower untouched"
        );
        // Resolution in the lower is confined too.
        let canary_s = canary.display().to_string();
        let data = layer(&[T::Hardlink("x", &canary_s), T::Hardlink("y", "../canary")]);
        assert!(unpack_layer_over(&data[..], "", &upper, &[lower], "u", &ops).is_err());
        assert!(!upper.join("x").exists());
        assert_eq!(fs::read(&canary).expect("canary"), b"outside");
    }

    #[test]
    fn a_hard_link_to_a_lower_fifo_fails_instead_of_blocking() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
        fs::create_dir(&lower).expect("lower");
        fs::create_dir(&upper).expect("upper");
        nix::unistd::mkfifo(&lower.join("fifo"), Mode::from_bits_truncate(0o600)).expect("fifo");
        let data = layer(&[T::Hardlink("x", "fifo")]);
        let res = unpack_layer_over(
            &data[..],
            "",
            &upper,
            std::slice::from_ref(&lower),
            "u",
            &RecordingOps::default(),
        );
        assert!(res.is_err());
        assert!(!upper.join("x").exists());
    }

    #[test]
    fn replacing_a_very_deep_tree_fails_cleanly() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = File::open(tmp.path()).expect("root");
        let mut fd = owned(
            openat(
                Some(root.as_raw_fd()),
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .expect("dot"),
        );
        for _ in 0..(MAX_REMOVE_DEPTH + 10) {
            mkdirat(Some(fd.as_raw_fd()), "d", Mode::from_bits_truncate(0o755)).expect("mkdir");
            fd = owned(
                openat(
                    Some(fd.as_raw_fd()),
                    "d",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )
                .expect("d"),
            );
        }
        assert_eq!(remove_at(root.as_fd(), OsStr::new("d")), Err(Errno::ELOOP));
    }

    #[test]
    fn device_nodes_are_skipped() {
        let (tmp, res, _) = unpack(&[T::Device("dev/mem"), T::File("ok", b"ok")]);
        let stats = res.expect("unpack");
        assert_eq!(stats.skipped_devices, 1);
        assert!(fs::symlink_metadata(tmp.path().join("snap/dev/mem")).is_err());
        assert!(tmp.path().join("snap/ok").exists());
    }

    #[test]
    fn whiteouts_and_opaque_dirs_become_overlay_markers() {
        let (tmp, res, ops) = unpack(&[
            T::Dir("etc/"),
            T::File("etc/.wh.passwd", b""),
            T::Dir("var/"),
            T::File("var/.wh..wh..opq", b""),
        ]);
        res.expect("unpack");
        let snap = tmp.path().join("snap").canonicalize().expect("canon");
        let calls = ops.calls.lock().expect("lock").clone();
        assert!(
            calls.contains(&format!("whiteout {}/passwd", snap.join("etc").display())),
            "{calls:?}"
        );
        assert!(calls.contains(&format!("opaque {}", snap.join("var").display())), "{calls:?}");
        // The marker files themselves are never written.
        assert!(!snap.join("etc/.wh.passwd").exists());
        assert!(!snap.join("var/.wh..wh..opq").exists());
    }

    #[test]
    fn only_safe_xattrs_are_applied() {
        let (_tmp, res, ops) = unpack(&[
            T::FileXattr("a", "user.test"),
            T::FileXattr("b", "trusted.overlay.redirect"),
            T::FileXattr("c", "security.capability"),
        ]);
        let stats = res.expect("unpack");
        assert_eq!(stats.skipped_xattrs, 1);
        let calls = ops.calls.lock().expect("lock").clone();
        assert!(calls.iter().any(|c| c.ends_with("/a user.test")), "{calls:?}");
        assert!(calls.iter().any(|c| c.ends_with("/c security.capability")), "{calls:?}");
        assert!(!calls.iter().any(|c| c.contains("trusted")), "{calls:?}");
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let (tmp, res, _) =
            unpack(&[T::Dir("x/"), T::File("x/inner", b"1"), T::File("x", b"file now")]);
        res.expect("unpack");
        assert_eq!(fs::read(tmp.path().join("snap/x")).expect("x"), b"file now");
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).expect("read") {
            let e = e.expect("e");
            let p = e.path();
            out.push(p.display().to_string());
            if e.file_type().expect("ft").is_dir() {
                out.extend(walk(&p));
            }
        }
        out
    }

    #[test]
    fn setuid_bits_survive_chown() {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o4755);
        h.set_size(1);
        h.set_path("suid").expect("path");
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).expect("append");
        let data = b.into_inner().expect("tar");
        let tmp = tempfile::tempdir().expect("tempdir");
        unpack_layer(&data[..], "", tmp.path(), "t", &RecordingOps::default()).expect("unpack");
        let mode = fs::metadata(tmp.path().join("suid")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o7777, 0o4755);
    }
}
