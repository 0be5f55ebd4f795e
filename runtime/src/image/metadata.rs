//! The store's persisted metadata: image records, snapshots and active container root
//! filesystems, in one versioned JSON file replaced atomically (write, fsync, rename, fsync
//! the directory).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::{io_err, Error, Result};

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (possibly compressed).
    pub digest: Digest,
    /// Media type from the manifest.
    pub media_type: String,
    /// Blob size.
    pub size: u64,
    /// Digest of the uncompressed tar (from the image config).
    pub diff_id: Digest,
}

/// An image as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Normalized `registry/repository:tag`.
    pub name: String,
    /// What the name pointed at when stored: an index or a manifest.
    pub target: Digest,
    /// Media type of `target`.
    pub target_media_type: String,
    /// The platform manifest.
    pub manifest: Digest,
    /// The image config: also the image id.
    pub config: Digest,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// `os/arch[/variant]` of the selected manifest.
    pub platform: String,
    /// Unix seconds when the record was written.
    pub stored_at: u64,
}

/// An unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Short on-disk id: the directory `<root>/snapshots/<id>`.
    pub id: String,
    /// Chain id of the layer below, if any.
    pub parent: Option<Digest>,
}

/// A container's prepared root filesystem (its snapshots must survive GC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsRecord {
    /// Chain ids of the lower layers, bottom first.
    pub chain: Vec<Digest>,
    /// The image it came from, for listings.
    pub image: String,
}

/// Everything persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Format version.
    pub version: u32,
    /// Images by name.
    pub images: BTreeMap<String, ImageRecord>,
    /// Snapshots by chain id.
    pub snapshots: BTreeMap<Digest, SnapshotRecord>,
    /// The next short snapshot id.
    pub next_snapshot: u64,
    /// Prepared root filesystems by container id.
    pub containers: BTreeMap<String, RootfsRecord>,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            version: VERSION,
            images: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            next_snapshot: 1,
            containers: BTreeMap::new(),
        }
    }
}

impl Metadata {
    /// Reads `path`, or returns empty metadata if it does not exist.
    pub fn load(path: &Path) -> Result<Self> {
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let probe: Probe = serde_json::from_slice(&data)
            .map_err(|source| Error::Json { what: path.display().to_string(), source })?;
        if probe.version != VERSION {
            return Err(Error::MetadataVersion { path: path.to_owned(), version: probe.version });
        }
        serde_json::from_slice(&data)
            .map_err(|source| Error::Json { what: path.display().to_string(), source })
    }

    /// Writes to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let data = serde_json::to_vec_pretty(self)
            .map_err(|source| Error::Json { what: path.display().to_string(), source })?;
        write_atomic(path, &data)
    }
}

/// Writes `data` to `path` through a temp file, fsync and rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{:08x}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        rand::random::<u32>()
    ));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(io_err("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_rejects_unknown_versions() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("metadata.json");
        assert_eq!(Metadata::load(&path).expect("missing is empty"), Metadata::default());
        let m = Metadata { next_snapshot: 7, ..Default::default() };
        m.save(&path).expect("save");
        assert_eq!(Metadata::load(&path).expect("load"), m);
        fs::write(&path, br#"{"version": 99}"#).expect("write");
        assert!(matches!(Metadata::load(&path), Err(Error::MetadataVersion { version: 99, .. })));
    }
}
