//! The guest's root file system: an uncompressed `newc` initramfs the harness writes itself.
//!
//! An [`Initramfs`] collects entries by guest path (directories, files from the host or from
//! memory, symlinks, character devices) and writes them sorted by path, which puts every
//! directory before its content (the kernel's unpacker creates no parent directories) and makes
//! the archive a function of its inputs only: owners are root, mtimes 0, inodes numbered in
//! order. Parent directories are added on demand (mode 0755).
//!
//! Host binaries are dynamically linked against glibc: [`Initramfs::add_host_binary`] also
//! adds every shared library `ldd` names (the dynamic loader included) at the same path, so the
//! binary runs in the guest unchanged. Libraries are stored as regular files at the path the
//! loader asks for (`/lib64/ld-linux-x86-64.so.2`), whatever symlinks lead there on the host.
//!
//! The archive is not compressed: decompressing in the guest under TCG costs more time than
//! qemu loading a larger file.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::cpio;

/// Errors of building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host file could not be read.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A guest path is not absolute and normal (no `..`, not `/`).
    #[error("invalid guest path {0:?}")]
    BadGuestPath(String),
    /// Two different things were added at one guest path.
    #[error("guest path {0} added twice with different content")]
    Conflict(String),
    /// `ldd` failed or named a library it could not find.
    #[error("shared libraries of {binary}: {what}")]
    Libraries {
        /// The binary.
        binary: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// Writing the archive failed.
    #[error("writing initramfs {path}")]
    Write {
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: cpio::Error,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One entry of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    HostFile { host: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

/// An initramfs being assembled. Guest paths are absolute (`/bin/x`).
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

/// `/a/b/` -> `a/b`, the form cpio archives store; rejects anything that is not a normal
/// absolute path.
fn archive_path(guest: &str) -> Result<String> {
    let path = Path::new(guest);
    let bad = || Error::BadGuestPath(guest.to_owned());
    if !path.is_absolute() {
        return Err(bad());
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(bad)?),
            _ => return Err(bad()),
        }
    }
    if parts.is_empty() {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

impl Initramfs {
    /// An empty image with the skeleton every guest needs: `/dev/console` (the kernel opens it
    /// for the init's stdio before anything is mounted) and the mount points the init uses.
    pub fn new() -> Initramfs {
        let mut fs = Initramfs::default();
        for dir in ["/dev", "/proc", "/sys", "/tmp", "/run", "/root", "/etc"] {
            fs.insert(dir, Node::Dir { mode: if dir == "/tmp" { 0o1777 } else { 0o755 } })
                .expect("skeleton paths are valid and distinct");
        }
        fs.insert("/dev/console", Node::CharDevice { mode: 0o600, major: 5, minor: 1 })
            .expect("skeleton paths are valid and distinct");
        fs
    }

    fn insert(&mut self, guest: &str, node: Node) -> Result<()> {
        let path = archive_path(guest)?;
        // Parents first, as directories.
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().map_or(&[][..], |(_, p)| p) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(Error::Conflict(format!("/{parent}"))),
            }
        }
        match self.nodes.get(&path) {
            None => {
                self.nodes.insert(path, node);
                Ok(())
            }
            Some(existing) if *existing == node => Ok(()),
            // A directory added explicitly after being implied as a parent: keep the new mode.
            Some(Node::Dir { .. }) if matches!(node, Node::Dir { .. }) => {
                self.nodes.insert(path, node);
                Ok(())
            }
            Some(_) => Err(Error::Conflict(guest.to_owned())),
        }
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, guest: &str, mode: u32) -> Result<&mut Self> {
        self.insert(guest, Node::Dir { mode: mode & 0o7777 })?;
        Ok(self)
    }

    /// Adds a file with the given content.
    pub fn add_bytes(
        &mut self,
        guest: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self> {
        self.insert(guest, Node::Bytes { data: data.into(), mode: mode & 0o7777 })?;
        Ok(self)
    }

    /// Adds a symlink.
    pub fn add_symlink(&mut self, guest: &str, target: &str) -> Result<&mut Self> {
        self.insert(guest, Node::Symlink { target: target.to_owned() })?;
        Ok(self)
    }

    /// Adds a host file (following symlinks) with the host's permission bits. The content is
    /// read when the archive is written.
    pub fn add_host_file(&mut self, host: &Path, guest: &str) -> Result<&mut Self> {
        let meta = fs::metadata(host).map_err(|source| Error::Io {
            op: "stat",
            path: host.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(Error::Io {
                op: "adding (not a regular file)",
                path: host.to_owned(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        self.insert(guest, Node::HostFile { host: host.to_owned(), mode })?;
        Ok(self)
    }

    /// Adds a host directory tree at `guest`: directories, regular files and symlinks (kept as
    /// symlinks), in sorted order. Other file types are skipped.
    pub fn add_host_tree(&mut self, host: &Path, guest: &str) -> Result<&mut Self> {
        let meta = fs::metadata(host).map_err(io_err("stat", host))?;
        self.add_dir(guest, meta.permissions().mode())?;
        let mut entries: Vec<_> = fs::read_dir(host)
            .map_err(io_err("listing", host))?
            .collect::<io::Result<_>>()
            .map_err(io_err("listing", host))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let name =
                name.to_str().ok_or_else(|| Error::BadGuestPath(format!("{guest}/{name:?}")))?;
            let child_guest = format!("{}/{name}", guest.trim_end_matches('/'));
            let path = e.path();
            let ft = e.file_type().map_err(io_err("stat", &path))?;
            if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(io_err("reading link", &path))?;
                let target =
                    target.to_str().ok_or_else(|| Error::BadGuestPath(child_guest.clone()))?;
                self.add_symlink(&child_guest, target)?;
            } else if ft.is_dir() {
                self.add_host_tree(&path, &child_guest)?;
            } else if ft.is_file() {
                self.add_host_file(&path, &child_guest)?;
            }
        }
        Ok(self)
    }

    /// Adds a host executable at `guest` together with its dynamic loader and shared
    /// libraries (as `ldd` lists them), each at its host path.
    pub fn add_host_binary(&mut self, host: &Path, guest: &str) -> Result<&mut Self> {
        self.add_host_binary_as(host, host, guest)
    }

    /// [`Initramfs::add_host_binary`] with the content taken from `content` (a stripped copy,
    /// say) and the libraries from what `host` needs.
    pub fn add_host_binary_as(
        &mut self,
        host: &Path,
        content: &Path,
        guest: &str,
    ) -> Result<&mut Self> {
        self.add_host_file(content, guest)?;
        for lib in shared_libraries(host)? {
            let guest_lib = lib.to_str().ok_or_else(|| Error::Libraries {
                binary: host.to_owned(),
                what: format!("library path {lib:?} is not UTF-8"),
            })?;
            self.add_host_file(&lib, guest_lib)?;
        }
        Ok(self)
    }

    /// Guest paths in the image, sorted (for tests and diagnostics).
    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().map(|p| format!("/{p}")).collect()
    }

    /// Writes the archive to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let file = fs::File::create(path).map_err(|source| Error::Io {
            op: "creating",
            path: path.to_owned(),
            source,
        })?;
        let werr = |source| Error::Write { path: path.to_owned(), source };
        let mut w = cpio::Writer::new(BufWriter::with_capacity(1 << 20, file));
        for (name, node) in &self.nodes {
            match node {
                Node::Dir { mode } => w.dir(name, *mode).map_err(werr)?,
                Node::Bytes { data, mode } => w.file(name, *mode, data).map_err(werr)?,
                Node::Symlink { target } => w.symlink(name, target).map_err(werr)?,
                Node::CharDevice { mode, major, minor } => {
                    w.char_device(name, *mode, *major, *minor).map_err(werr)?
                }
                Node::HostFile { host, mode } => {
                    let mut f = fs::File::open(host).map_err(|source| Error::Io {
                        op: "opening",
                        path: host.clone(),
                        source,
                    })?;
                    let len = f
                        .metadata()
                        .map_err(|source| Error::Io { op: "stat", path: host.clone(), source })?
                        .len();
                    w.file_from(name, *mode, len, &mut f).map_err(werr)?;
                }
            }
        }
        let out = w.finish().map_err(werr)?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(|source| Error::Io { op: "writing", path: path.to_owned(), source })
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_owned(), source }
}

/// The shared libraries (loader included) a dynamically linked host binary needs, from `ldd`;
/// empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let err = |what: String| Error::Libraries { binary: binary.to_owned(), what };
    let out =
        Command::new("ldd").arg(binary).output().map_err(|e| err(format!("running ldd: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // ldd exits 1 for static binaries ("not a dynamic executable").
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(err(format!("ldd failed: {}", stderr.trim())));
    }
    parse_ldd(&stdout).map_err(err)
}

/// Parses `ldd` output into library paths, in order. Errors on a library `not found`.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            // "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)".
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_loader_and_libraries() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd5a1f1000)\n\
                   \tlibseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x00007f1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let libs = parse_ldd(out).expect("parse");
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libseccomp.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").expect("static").is_empty());
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("missing lib");
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn guest_paths_must_be_absolute_and_normal() {
        let mut fs = Initramfs::new();
        for bad in ["relative", "/", "/a/../b", "/a/./b/.."] {
            assert!(fs.add_bytes(bad, "x", 0o644).is_err(), "{bad} accepted");
        }
        fs.add_bytes("/etc/x", "1", 0o644).expect("first");
        fs.add_bytes("/etc/x", "1", 0o644).expect("same content twice is fine");
        assert!(matches!(fs.add_bytes("/etc/x", "2", 0o644), Err(Error::Conflict(_))));
        assert!(matches!(fs.add_bytes("/etc/x/y", "2", 0o644), Err(Error::Conflict(_))));
    }

    /// The archive carries parents before children, the skeleton, host trees with symlinks,
    /// and the same inputs give the same bytes.
    #[test]
    fn initramfs_is_ordered_complete_and_reproducible() {
        let host = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(host.path().join("tree/blobs")).expect("mkdir");
        fs::write(host.path().join("tree/index.json"), "{}").expect("write");
        fs::write(host.path().join("tree/blobs/a-b"), "blob").expect("write");
        std::os::unix::fs::symlink("blobs/a-b", host.path().join("tree/link")).expect("symlink");
        let build = || {
            let mut fs = Initramfs::new();
            fs.add_host_tree(&host.path().join("tree"), "/images/test/").expect("tree");
            fs.add_bytes("/keelson/vm.json", "{}", 0o644).expect("bytes");
            let out = host.path().join("out.cpio");
            fs.write(&out).expect("write");
            fs::read(out).expect("read")
        };
        let bytes = build();
        assert_eq!(bytes, build(), "reproducible");
        let entries = cpio::read(&bytes).expect("read back");
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        for (i, name) in names.iter().enumerate() {
            if let Some((parent, _)) = name.rsplit_once('/') {
                let at = names.iter().position(|n| *n == parent).expect("parent present");
                assert!(at < i, "{parent} after {name}");
            }
        }
        for want in [
            "dev/console",
            "proc",
            "sys",
            "images/test/blobs/a-b",
            "images/test/link",
            "keelson/vm.json",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let link = entries.iter().find(|e| e.name == "images/test/link").expect("link");
        assert_eq!(
            (link.mode & cpio::S_IFMT, link.data.as_slice()),
            (cpio::S_IFLNK, &b"blobs/a-b"[..])
        );
        let blob = entries.iter().find(|e| e.name == "images/test/blobs/a-b").expect("blob");
        assert_eq!(blob.data, b"blob");
    }

    /// A real dynamically linked host binary comes with its loader and libc.
    #[test]
    fn host_binary_brings_its_shared_libraries() {
        let exe = std::env::current_exe().expect("current exe");
        let libs = match shared_libraries(&exe) {
            Ok(libs) => libs,
            Err(e) => {
                eprintln!("SKIP host_binary_brings_its_shared_libraries: {e}");
                return;
            }
        };
        if libs.is_empty() {
            eprintln!("SKIP host_binary_brings_its_shared_libraries: test binary is static");
            return;
        }
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("ld-linux")), "{libs:?}");
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")), "{libs:?}");
        let mut fs = Initramfs::new();
        fs.add_host_binary(&exe, "/bin/test").expect("add");
        let paths = fs.paths();
        for lib in &libs {
            assert!(paths.contains(&lib.display().to_string()), "{lib:?} not in image");
        }
    }
}
