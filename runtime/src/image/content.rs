//! The content-addressed blob store: `<root>/blobs/sha256/<hex>`.
//!
//! A blob is written to `<root>/ingest/` while its sha256 and size are computed, then checked
//! against the expected digest, fsynced and renamed into place (and the directory fsynced).
//! A mismatch, an error or a dropped writer removes the temporary file: nothing of a bad blob
//! is ever visible under `blobs/`.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::{io_err, Error, Result};

/// The blob store.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store under `root` and removes leftovers of interrupted writes.
    pub fn open(root: &Path) -> Result<Self> {
        let blobs = root.join("blobs/sha256");
        let ingest = root.join("ingest");
        fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        if ingest.exists() {
            fs::remove_dir_all(&ingest).map_err(io_err("cleaning", &ingest))?;
        }
        fs::create_dir_all(&ingest).map_err(io_err("creating", &ingest))?;
        Ok(Self { blobs, ingest })
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Starts writing a blob that must hash to `expected` (and have `size` bytes, if given).
    pub fn writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter> {
        let tmp = self.ingest.join(format!("{}-{:016x}", expected.hex(), rand::random::<u64>()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        Ok(BlobWriter {
            file,
            tmp: Some(tmp),
            hasher: Sha256::new(),
            written: 0,
            expected: expected.clone(),
            size,
            dest: self.path(expected),
        })
    }

    /// Copies `reader` into the store as `expected`, calling `on_bytes` with the running total.
    /// Does nothing if the blob is already there.
    pub fn write_from(
        &self,
        expected: &Digest,
        size: Option<u64>,
        mut reader: impl Read,
        mut on_bytes: impl FnMut(u64),
    ) -> Result<()> {
        if self.contains(expected) {
            return Ok(());
        }
        let mut w = self.writer(expected, size)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Read { what: expected.to_string(), source });
                }
            };
            w.write_all(&buf[..n]).map_err(io_err("writing", w.tmp_path()))?;
            on_bytes(w.written());
        }
        w.commit()
    }

    /// Stores `data` as `expected`.
    pub fn write_bytes(&self, expected: &Digest, data: &[u8]) -> Result<()> {
        self.write_from(expected, Some(data.len() as u64), data, |_| {})
    }

    /// Opens a stored blob.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.path(digest);
        File::open(&p).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::BlobNotFound(digest.to_string())
            } else {
                Error::Io { op: "opening", path: p, source }
            }
        })
    }

    /// Reads a stored blob (manifests, indexes and configs are small).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut data)
            .map_err(io_err("reading", &self.path(digest)))?;
        Ok(data)
    }

    /// Removes a blob; a missing blob is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let p = self.path(digest);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &p)(e)),
            _ => Ok(()),
        }
    }

    /// Every stored blob.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.blobs).map_err(io_err("listing", &self.blobs))? {
            let e = e.map_err(io_err("listing", &self.blobs))?;
            if let Some(d) =
                e.file_name().to_str().and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A blob being written; [`BlobWriter::commit`] verifies and publishes it, dropping it
/// discards it.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    tmp: Option<PathBuf>,
    hasher: Sha256,
    written: u64,
    expected: Digest,
    size: Option<u64>,
    dest: PathBuf,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn tmp_path(&self) -> &Path {
        self.tmp.as_deref().unwrap_or(Path::new("(committed)"))
    }

    /// Verifies size and digest, fsyncs and renames the blob into place.
    pub fn commit(mut self) -> Result<()> {
        let tmp = self.tmp.take().expect("commit consumes the writer, so tmp is still set");
        let guard = RemoveOnDrop(&tmp);
        if let Some(size) = self.size {
            if size != self.written {
                return Err(Error::SizeMismatch {
                    digest: self.expected.to_string(),
                    expected: size,
                    actual: self.written,
                });
            }
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.expected {
            return Err(Error::DigestMismatch {
                expected: self.expected.to_string(),
                actual: actual.to_string(),
            });
        }
        self.file.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, &self.dest).map_err(io_err("publishing", &self.dest))?;
        std::mem::forget(guard);
        if let Some(dir) = self.dest.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing", dir))?;
        }
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest_is_empty(root: &Path) -> bool {
        fs::read_dir(root.join("ingest")).expect("ingest").next().is_none()
    }

    #[test]
    fn blob_is_stored_under_its_digest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(tmp.path()).expect("open");
        let d = Digest::of(b"hello");
        store.write_bytes(&d, b"hello").expect("write");
        assert_eq!(store.read(&d).expect("read"), b"hello");
        assert_eq!(store.list().expect("list"), vec![d]);
        assert!(ingest_is_empty(tmp.path()));
    }

    #[test]
    fn digest_mismatch_keeps_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(tmp.path()).expect("open");
        let d = Digest::of(b"hello");
        let err = store.write_bytes(&d, b"hellO").expect_err("mismatch must fail");
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!store.contains(&d));
        assert!(store.list().expect("list").is_empty());
        assert!(ingest_is_empty(tmp.path()));
    }

    #[test]
    fn size_mismatch_keeps_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(tmp.path()).expect("open");
        let d = Digest::of(b"hello");
        let err = store.write_from(&d, Some(4), &b"hello"[..], |_| {}).expect_err("size");
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        assert!(!store.contains(&d));
        assert!(ingest_is_empty(tmp.path()));
    }

    #[test]
    fn dropped_writer_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(tmp.path()).expect("open");
        let mut w = store.writer(&Digest::of(b"x"), None).expect("writer");
        w.write_all(b"partial").expect("write");
        drop(w);
        assert!(ingest_is_empty(tmp.path()));
    }
}
