//! A deterministic writer (and a small reader) for the `newc` cpio format, the format of a Linux
//! initramfs.
//!
//! Why our own: `newc` is a 110-byte ASCII header, the name and the data, each padded to four
//! bytes, and a `TRAILER!!!` entry (the kernel's `Documentation/driver-api/early-userspace/
//! buffer-format.rst`). The harness needs full control over exactly the fields a crate tends to
//! fill from the host (inode numbers, mtimes, owners, device numbers) so that the same inputs
//! give the same bytes, and it needs device nodes and symlinks; that is less code than adapting
//! a crate, and the reader below proves the writer in the unit tests.
//!
//! The writer does not create parent directories: the kernel's unpacker does not either, so the
//! caller writes a directory before anything inside it ([`super::initramfs`] does).

use std::io::{self, Read, Write};

/// The magic of a `newc` header (no checksum).
const MAGIC: &[u8; 6] = b"070701";
/// The name of the last entry of an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a `newc` header.
const HEADER_LEN: usize = 110;

/// File type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;
/// Mask of the file type bits.
pub const S_IFMT: u32 = 0o170_000;

/// Errors of the cpio writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the archive failed.
    #[error("writing cpio entry {name}")]
    Write {
        /// The entry being written.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A regular file's reader yielded a different number of bytes than announced.
    #[error("cpio entry {name}: announced {announced} bytes, the reader gave {actual}")]
    SizeMismatch {
        /// The entry.
        name: String,
        /// Size written into the header.
        announced: u64,
        /// Bytes the reader produced.
        actual: u64,
    },
    /// A field does not fit the format's 32 bits.
    #[error("cpio entry {name}: {field} does not fit in 32 bits")]
    TooLarge {
        /// The entry.
        name: String,
        /// The field.
        field: &'static str,
    },
    /// The archive being read is malformed.
    #[error("malformed cpio archive at byte {offset}: {what}")]
    Malformed {
        /// Where.
        offset: usize,
        /// What is wrong.
        what: String,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The metadata of one entry; everything not listed here is written as zero (owner root, mtime
/// 0), which keeps archives reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    mode: u32,
    size: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

/// Writes a `newc` archive entry by entry. Inode numbers count up from 1 in write order.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
}

impl<W: Write> Writer<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Writer { out, next_ino: 1, offset: 0 }
    }

    /// Writes a directory (`mode` holds the permission bits).
    pub fn dir(&mut self, name: &str, mode: u32) -> Result<()> {
        let header =
            Header { mode: S_IFDIR | (mode & 0o7777), size: 0, rdev_major: 0, rdev_minor: 0 };
        self.entry(name, header, &mut io::empty(), 0)
    }

    /// Writes a regular file with the given content.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.file_from(name, mode, data.len() as u64, &mut &data[..])
    }

    /// Writes a regular file of `size` bytes read from `data` (which must yield exactly that).
    pub fn file_from(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<()> {
        let size32 = u32::try_from(size)
            .map_err(|_| Error::TooLarge { name: name.to_owned(), field: "file size" })?;
        let header =
            Header { mode: S_IFREG | (mode & 0o7777), size: size32, rdev_major: 0, rdev_minor: 0 };
        self.entry(name, header, data, size)
    }

    /// Writes a symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        let size = target.len() as u64;
        let size32 = u32::try_from(size)
            .map_err(|_| Error::TooLarge { name: name.to_owned(), field: "link target" })?;
        let header = Header { mode: S_IFLNK | 0o777, size: size32, rdev_major: 0, rdev_minor: 0 };
        self.entry(name, header, &mut target.as_bytes(), size)
    }

    /// Writes a character device node.
    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        let header = Header {
            mode: S_IFCHR | (mode & 0o7777),
            size: 0,
            rdev_major: major,
            rdev_minor: minor,
        };
        self.entry(name, header, &mut io::empty(), 0)
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.raw_header(TRAILER, 0, Header { mode: 0, size: 0, rdev_major: 0, rdev_minor: 0 })
            .and_then(|()| self.out.flush())
            .map_err(|source| Error::Write { name: TRAILER.to_owned(), source })?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, header: Header, data: &mut dyn Read, size: u64) -> Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let write_err = |source| Error::Write { name: name.to_owned(), source };
        self.raw_header(name, ino, header).map_err(write_err)?;
        let copied = io::copy(&mut data.take(size), &mut self.out).map_err(write_err)?;
        if copied != size {
            return Err(Error::SizeMismatch {
                name: name.to_owned(),
                announced: size,
                actual: copied,
            });
        }
        // The data must be exactly `size` bytes: a longer reader is an error too.
        let mut probe = [0u8; 1];
        if data.read(&mut probe).map_err(write_err)? != 0 {
            return Err(Error::SizeMismatch {
                name: name.to_owned(),
                announced: size,
                actual: size + 1,
            });
        }
        self.offset += copied;
        self.pad().map_err(write_err)
    }

    fn raw_header(&mut self, name: &str, ino: u32, h: Header) -> io::Result<()> {
        let nlink = if h.mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let namesize = name.len() + 1;
        let fields = [
            ino,
            h.mode,
            0,
            0,
            nlink,
            0,
            h.size,
            0,
            0,
            h.rdev_major,
            h.rdev_minor,
            namesize as u32,
            0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + namesize + 3);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.out.write_all(&header)?;
        self.offset += header.len() as u64;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.offset += pad as u64;
        Ok(())
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive.
    pub name: String,
    /// Inode number.
    pub ino: u32,
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: u32,
    /// Device numbers of a device node.
    pub rdev: (u32, u32),
    /// File content, or a symlink's target.
    pub data: Vec<u8>,
}

/// Reads every entry of a `newc` archive up to its trailer (which is not returned).
pub fn read(archive: &[u8]) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    let malformed = |offset, what: &str| Error::Malformed { offset, what: what.to_owned() };
    loop {
        let header =
            archive.get(at..at + HEADER_LEN).ok_or_else(|| malformed(at, "truncated header"))?;
        if &header[..6] != MAGIC {
            return Err(malformed(at, "bad magic"));
        }
        let here = at;
        let field = |i: usize| -> Result<u32> {
            let raw = &header[6 + 8 * i..6 + 8 * (i + 1)];
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or_else(|| malformed(here + 6 + 8 * i, "field is not hex"))
        };
        let namesize = field(11)? as usize;
        let name_start = at + HEADER_LEN;
        let name_bytes = archive
            .get(name_start..name_start + namesize)
            .ok_or_else(|| malformed(name_start, "truncated name"))?;
        let (last, name) =
            name_bytes.split_last().ok_or_else(|| malformed(name_start, "empty name"))?;
        if *last != 0 {
            return Err(malformed(name_start, "name not NUL-terminated"));
        }
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| malformed(name_start, "name not UTF-8"))?;
        let data_start = (name_start + namesize).next_multiple_of(4);
        let size = field(6)? as usize;
        let data = archive
            .get(data_start..data_start + size)
            .ok_or_else(|| malformed(data_start, "truncated data"))?;
        at = (data_start + size).next_multiple_of(4);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            ino: field(0)?,
            mode: field(1)?,
            uid: field(2)?,
            gid: field(3)?,
            mtime: field(5)?,
            rdev: (field(9)?, field(10)?),
            data: data.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        w.dir("dev", 0o755).expect("dir");
        w.char_device("dev/console", 0o600, 5, 1).expect("dev");
        w.dir("bin", 0o755).expect("dir");
        w.file("bin/a", 0o755, b"hello").expect("file");
        w.file("empty", 0o644, b"").expect("file");
        w.symlink("lib64", "lib").expect("symlink");
        w.finish().expect("finish")
    }

    #[test]
    fn cpio_writer_output_reads_back_with_every_field() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0, "archive length is padded to 4");
        let entries = read(&bytes).expect("read back");
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "bin", "bin/a", "empty", "lib64"]);
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[1].mode, S_IFCHR | 0o600);
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[3].mode, S_IFREG | 0o755);
        assert_eq!(entries[3].data, b"hello");
        assert!(entries[4].data.is_empty());
        assert_eq!(entries[5].mode & S_IFMT, S_IFLNK);
        assert_eq!(entries[5].data, b"lib");
        let inos: Vec<_> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 6], "inode numbers are unique and count up");
        assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 0));
    }

    #[test]
    fn cpio_writer_is_deterministic() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn cpio_writer_rejects_a_reader_of_the_wrong_length() {
        let mut w = Writer::new(Vec::new());
        let short = w.file_from("short", 0o644, 10, &mut &b"abc"[..]);
        assert!(matches!(short, Err(Error::SizeMismatch { actual: 3, .. })), "{short:?}");
        let mut w = Writer::new(Vec::new());
        let long = w.file_from("long", 0o644, 2, &mut &b"abc"[..]);
        assert!(matches!(long, Err(Error::SizeMismatch { .. })), "{long:?}");
    }

    #[test]
    fn cpio_reader_rejects_garbage_and_truncation() {
        assert!(read(&[b'x'; 200]).is_err(), "garbage");
        let bytes = sample();
        assert!(read(&bytes[..bytes.len() - 20]).is_err(), "missing trailer is an error");
    }

    /// GNU cpio, when installed, lists and extracts what we wrote.
    #[test]
    fn gnu_cpio_reads_our_archive() {
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("SKIP gnu_cpio_reads_our_archive: cpio is not installed");
            return;
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, sample()).expect("write");
        let listing = std::process::Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .expect("cpio -t");
        assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
        let names = String::from_utf8(listing.stdout).expect("utf-8");
        assert_eq!(
            names.lines().collect::<Vec<_>>(),
            ["dev", "dev/console", "bin", "bin/a", "empty", "lib64"]
        );
        // Extract the regular file and the symlink (device nodes need root: leave them out).
        let extract = std::process::Command::new("cpio")
            .args(["-i", "--quiet", "-d", "-F"])
            .arg(&archive)
            .args(["bin/a", "lib64", "empty"])
            .current_dir(dir.path())
            .output()
            .expect("cpio -i");
        assert!(extract.status.success(), "{}", String::from_utf8_lossy(&extract.stderr));
        assert_eq!(std::fs::read(dir.path().join("bin/a")).expect("bin/a"), b"hello");
        assert_eq!(
            std::fs::read_link(dir.path().join("lib64")).expect("lib64"),
            std::path::Path::new("lib")
        );
    }
}
