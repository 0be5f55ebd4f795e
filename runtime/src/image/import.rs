//! Import from an OCI image layout (directory or tar, optionally gzipped) or a `docker save`
//! archive. The format is detected: a directory must be an OCI layout; a tar holding
//! `oci-layout` and `index.json` is an OCI layout, one holding `manifest.json` a docker archive.
//!
//! Every blob goes through the content store, which verifies it against its digest. A docker
//! archive has no manifest: its layers are checked against the config's diff ids, and an OCI
//! manifest is written for it (uncompressed layers, as containerd does).
//!
//! Tars are read by scanning for the wanted entry each time: layouts have a handful of files,
//! and this never extracts archive paths onto the host.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};

use super::content::ContentStore;
use super::digest::Digest;
use super::manifest::{self, Platform};
use super::metadata::ImageRecord;
use super::progress::{emit, Phase, Progress, ProgressSender};
use super::{io_err, Error, Result};

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The name to record. Without it, the archive's own name is used (`RepoTags` of a docker
    /// archive, `io.containerd.image.name` or a full `org.opencontainers.image.ref.name`).
    /// A name without a tag takes the layout's `ref.name` tag, if it has one.
    pub name: Option<String>,
    /// The platform to select from an index (default: the host's).
    pub platform: Option<Platform>,
}

impl ImportOptions {
    /// Import under `name`.
    pub fn named(name: &str) -> Self {
        Self { name: Some(name.to_owned()), platform: None }
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

enum Source {
    Dir(PathBuf),
    Tar { path: PathBuf, gzip: bool },
}

impl Source {
    fn detect(path: &Path) -> Result<(Self, bool)> {
        if path.is_dir() {
            if !path.join("oci-layout").is_file() {
                return Err(Error::Archive {
                    path: path.to_owned(),
                    reason: "directory without an oci-layout file".into(),
                });
            }
            return Ok((Source::Dir(path.to_owned()), true));
        }
        let mut magic = [0u8; 2];
        let mut f = File::open(path).map_err(io_err("opening", path))?;
        let n = f.read(&mut magic).map_err(io_err("reading", path))?;
        let src = Source::Tar { path: path.to_owned(), gzip: n == 2 && magic == [0x1f, 0x8b] };
        let names = src.names()?;
        if names.contains("oci-layout") && names.contains("index.json") {
            Ok((src, true))
        } else if names.contains("manifest.json") {
            Ok((src, false))
        } else {
            Err(Error::Archive {
                path: path.to_owned(),
                reason: "neither an OCI layout (oci-layout, index.json) nor a docker archive (manifest.json)".into(),
            })
        }
    }

    fn path(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Tar { path: p, .. } => p,
        }
    }

    /// Visits the tar's entries in order until `visit` returns `Some`. Uncompressed tars skip
    /// over entry data by seeking, so looking a file up does not read the layers before it.
    fn scan<T>(
        &self,
        mut visit: impl FnMut(String, tar::EntryType, Option<u64>, &mut dyn Read) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let Source::Tar { path, gzip } = self else {
            unreachable!("scan() is only called on tars")
        };
        let f = BufReader::new(File::open(path).map_err(io_err("opening", path))?);
        if *gzip {
            let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
            for e in a.entries().map_err(io_err("reading", path))? {
                if let Some(t) = step(e, path, &mut visit)? {
                    return Ok(Some(t));
                }
            }
        } else {
            let mut a = tar::Archive::new(f);
            for e in a.entries_with_seek().map_err(io_err("reading", path))? {
                if let Some(t) = step(e, path, &mut visit)? {
                    return Ok(Some(t));
                }
            }
        }
        Ok(None)
    }

    fn names(&self) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        self.scan::<()>(|name, _, _, _| {
            out.insert(name);
            Ok(None)
        })?;
        Ok(out)
    }

    /// Runs `f` on the file `rel` (`index.json`, `blobs/sha256/…`); `None` if absent.
    fn with_file<T>(
        &self,
        rel: &str,
        f: impl FnOnce(&mut dyn Read, Option<u64>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self {
            Source::Dir(dir) => {
                let p = dir.join(rel);
                match File::open(&p) {
                    Ok(mut file) => {
                        let len = file.metadata().ok().map(|m| m.len());
                        f(&mut file, len).map(Some)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err("opening", &p)(e)),
                }
            }
            Source::Tar { .. } => {
                let mut f = Some(f);
                self.scan(|name, kind, len, r| {
                    let regular =
                        matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
                    match f.take() {
                        Some(f) if regular && name == rel => f(r, len).map(Some),
                        other => {
                            f = other;
                            Ok(None)
                        }
                    }
                })
            }
        }
    }

    fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        const LIMIT: u64 = 16 << 20;
        self.with_file(rel, |r, _| {
            let mut data = Vec::new();
            r.take(LIMIT + 1)
                .read_to_end(&mut data)
                .map_err(|source| Error::Read { what: rel.to_owned(), source })?;
            if data.len() as u64 > LIMIT {
                return Err(Error::Archive {
                    path: self.path().to_owned(),
                    reason: format!("{rel} is too large"),
                });
            }
            Ok(data)
        })?
        .ok_or_else(|| Error::Archive {
            path: self.path().to_owned(),
            reason: format!("{rel} is missing"),
        })
    }

    /// Copies the file `rel` into the store as `digest`, verified.
    fn store(
        &self,
        content: &ContentStore,
        rel: &str,
        digest: &Digest,
        size: Option<u64>,
        progress: Option<&ProgressSender>,
    ) -> Result<()> {
        let id = digest.short().to_owned();
        if content.contains(digest) {
            emit(
                progress,
                Progress::Blob {
                    id,
                    phase: Phase::Exists,
                    done: size.unwrap_or(0),
                    total: size.unwrap_or(0),
                },
            );
            return Ok(());
        }
        let res = self.with_file(rel, |r, len| {
            let total = size.or(len).unwrap_or(0);
            content.write_from(digest, size, r, |done| {
                emit(
                    progress,
                    Progress::Blob { id: id.clone(), phase: Phase::Transferring, done, total },
                );
            })?;
            emit(
                progress,
                Progress::Blob { id: id.clone(), phase: Phase::Done, done: total, total },
            );
            Ok(())
        });
        match res {
            Ok(Some(())) => Ok(()),
            Ok(None) => Err(Error::Archive {
                path: self.path().to_owned(),
                reason: format!("{rel} is missing"),
            }),
            Err(e) => {
                emit(
                    progress,
                    Progress::Blob {
                        id: digest.short().to_owned(),
                        phase: Phase::Failed,
                        done: 0,
                        total: size.unwrap_or(0),
                    },
                );
                Err(e)
            }
        }
    }
}

type Visit<'v, T> =
    dyn FnMut(String, tar::EntryType, Option<u64>, &mut dyn Read) -> Result<Option<T>> + 'v;

fn step<R: Read, T>(
    e: io::Result<tar::Entry<'_, R>>,
    path: &Path,
    visit: &mut Visit<'_, T>,
) -> Result<Option<T>> {
    let mut e = e.map_err(io_err("reading", path))?;
    let name = normalize(&e.path_bytes());
    let (kind, len) = (e.header().entry_type(), e.header().size().ok());
    visit(name, kind, len, &mut e)
}

/// Tar paths as compared: no leading `./` or `/`, no trailing `/`.
fn normalize(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut s: &str = &s;
    loop {
        if let Some(rest) = s.strip_prefix("./") {
            s = rest;
        } else if let Some(rest) = s.strip_prefix('/') {
            s = rest;
        } else {
            break;
        }
    }
    s.trim_end_matches('/').to_owned()
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Imports `path` into `content` and returns the image record (not yet saved).
pub fn import(
    content: &ContentStore,
    path: &Path,
    opts: &ImportOptions,
    progress: Option<&ProgressSender>,
) -> Result<ImageRecord> {
    let (src, oci) = Source::detect(path)?;
    if oci {
        import_oci(content, &src, opts, progress)
    } else {
        import_docker(content, &src, opts, progress)
    }
}

/// Combines a requested name with a layout tag: a requested name without a tag takes `tag`.
fn name_for(requested: Option<&str>, tag: Option<&str>) -> Result<Option<String>> {
    let Some(req) = requested else { return Ok(None) };
    let r = manifest::parse_reference(req)?;
    let has_tag = req.rsplit('/').next().is_some_and(|last| last.contains(':'));
    match (has_tag, tag) {
        (false, Some(t)) if !t.contains('/') && !t.contains(':') => {
            Ok(Some(format!("{}/{}:{t}", r.registry(), r.repository())))
        }
        _ => Ok(Some(manifest::record_name(&r))),
    }
}

fn import_oci(
    content: &ContentStore,
    src: &Source,
    opts: &ImportOptions,
    progress: Option<&ProgressSender>,
) -> Result<ImageRecord> {
    let index_json = src.read_small("index.json")?;
    let index = manifest::parse_index(&index_json, "index.json")?;
    let want = opts.platform.clone().unwrap_or_else(Platform::host);
    let annotation = |d: &oci_spec::image::Descriptor, key: &str| {
        d.annotations().as_ref().and_then(|a| a.get(key).cloned())
    };
    // Which entry of index.json: the only one, or the one whose ref.name is the wanted tag,
    // or, for a flat multi-platform index.json, the platform's.
    let requested_tag = opts.name.as_deref().and_then(|n| {
        let last = n.rsplit('/').next().unwrap_or(n);
        last.split_once(':').map(|(_, t)| t.to_owned())
    });
    let entries = index.manifests();
    let top = if entries.len() == 1 {
        entries[0].clone()
    } else if let Some(d) = entries.iter().find(|d| {
        let rn = annotation(d, REF_NAME);
        rn.is_some() && (rn == requested_tag || rn == opts.name)
    }) {
        d.clone()
    } else if entries.iter().all(|d| d.platform().is_some()) {
        manifest::select_manifest(&index, &want)?
    } else {
        return Err(Error::Archive {
            path: src.path().to_owned(),
            reason: format!("index.json lists {} images: name the one to import", entries.len()),
        });
    };

    let ref_name = annotation(&top, REF_NAME);
    let name = match name_for(opts.name.as_deref(), ref_name.as_deref())? {
        Some(n) => n,
        None => {
            let own = annotation(&top, CONTAINERD_NAME)
                .or(ref_name.filter(|r| r.contains('/')))
                .ok_or_else(|| Error::NoName(src.path().to_owned()))?;
            manifest::record_name(&manifest::parse_reference(&own)?)
        }
    };

    let mut desc = top.clone();
    let target_digest = manifest::descriptor_digest(&top)?;
    let target_mt = top.media_type().to_string();
    // Resolve through (possibly nested) indexes to one manifest.
    let (manifest_digest, manifest_bytes) = loop {
        let d = manifest::descriptor_digest(&desc)?;
        src.store(content, &blob_path(&d), &d, Some(desc.size()), None)?;
        let data = content.read(&d)?;
        let mt = match desc.media_type().to_string() {
            mt if manifest::is_index(&mt) || manifest::is_manifest(&mt) => mt,
            _ => manifest::sniff_media_type(&data).unwrap_or_default(),
        };
        if manifest::is_index(&mt) {
            let idx = manifest::parse_index(&data, &format!("index {d}"))?;
            desc = manifest::select_manifest(&idx, &want)?;
        } else if manifest::is_manifest(&mt) {
            break (d, data);
        } else {
            return Err(Error::UnsupportedMediaType { media_type: mt, what: format!("{d}") });
        }
    };
    let m = manifest::parse_resolved(&manifest_bytes, &manifest_digest, &name, progress)?;
    let config_digest = manifest::descriptor_digest(m.config())?;
    src.store(
        content,
        &blob_path(&config_digest),
        &config_digest,
        Some(m.config().size()),
        progress,
    )?;
    let config =
        manifest::parse_config(&content.read(&config_digest)?, &format!("config {config_digest}"))?;
    for l in m.layers() {
        let d = manifest::descriptor_digest(l)?;
        src.store(content, &blob_path(&d), &d, Some(l.size()), progress)?;
    }
    manifest::build_record(name, (target_digest, target_mt), manifest_digest, &m, &config)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn import_docker(
    content: &ContentStore,
    src: &Source,
    opts: &ImportOptions,
    progress: Option<&ProgressSender>,
) -> Result<ImageRecord> {
    let data = src.read_small("manifest.json")?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&data).map_err(|source| {
        Error::Json { what: format!("{}: manifest.json", src.path().display()), source }
    })?;
    let wanted = match &opts.name {
        Some(n) => Some(manifest::record_name(&manifest::parse_reference(n)?)),
        None => None,
    };
    let tags_of = |e: &DockerEntry| -> Vec<String> {
        e.repo_tags
            .iter()
            .flatten()
            .filter_map(|t| manifest::parse_reference(t).ok().map(|r| manifest::record_name(&r)))
            .collect()
    };
    let entry = match &wanted {
        Some(w) if entries.len() > 1 => entries.iter().find(|e| tags_of(e).contains(w)),
        _ => entries.first(),
    }
    .ok_or_else(|| Error::Archive {
        path: src.path().to_owned(),
        reason: "no matching image in manifest.json".into(),
    })?;
    let name = wanted
        .or_else(|| tags_of(entry).into_iter().next())
        .ok_or_else(|| Error::NoName(src.path().to_owned()))?;

    let config_rel = normalize(entry.config.as_bytes());
    let config_bytes = src.read_small(&config_rel)?;
    let config_digest = Digest::of(&config_bytes);
    content.write_bytes(&config_digest, &config_bytes)?;
    let config = manifest::parse_config(&config_bytes, &format!("config {config_digest}"))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(Error::Archive {
            path: src.path().to_owned(),
            reason: format!("{} layers but {} diff ids", entry.layers.len(), diff_ids.len()),
        });
    }
    emit(
        progress,
        Progress::Resolved {
            reference: name.clone(),
            manifest: String::new(),
            layers: diff_ids.len(),
        },
    );
    let mut layers = Vec::new();
    for (rel, diff) in entry.layers.iter().zip(diff_ids) {
        let d = Digest::parse(diff)?;
        // Layers of a docker archive are uncompressed: the blob digest is the diff id.
        src.store(content, &normalize(rel.as_bytes()), &d, None, progress)?;
        let size =
            content.open_blob(&d)?.metadata().map_err(io_err("reading", &content.path(&d)))?.len();
        layers.push(descriptor(MediaType::ImageLayer, &d, size)?);
    }
    let spec = |source| Error::Spec { what: "synthesized manifest".into(), source };
    let m = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_digest, config_bytes.len() as u64)?)
        .layers(layers)
        .build()
        .map_err(spec)?;
    let bytes = m.to_string().map_err(spec)?.into_bytes();
    let manifest_digest = Digest::of(&bytes);
    content.write_bytes(&manifest_digest, &bytes)?;
    manifest::build_record(
        name,
        (manifest_digest.clone(), manifest::OCI_MANIFEST.to_owned()),
        manifest_digest,
        &m,
        &config,
    )
}

fn descriptor(mt: MediaType, d: &Digest, size: u64) -> Result<oci_spec::image::Descriptor> {
    let digest: oci_spec::image::Digest =
        d.as_str().parse().map_err(|source| Error::Spec { what: format!("digest {d}"), source })?;
    DescriptorBuilder::default()
        .media_type(mt)
        .digest(digest)
        .size(size)
        .build()
        .map_err(|source| Error::Spec { what: format!("descriptor {d}"), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_paths_are_compared_without_dot_slash() {
        assert_eq!(normalize(b"./blobs/sha256/ab"), "blobs/sha256/ab");
        assert_eq!(normalize(b"/index.json"), "index.json");
        assert_eq!(normalize(b"blobs/"), "blobs");
    }

    #[test]
    fn a_name_without_tag_takes_the_layout_tag() {
        assert_eq!(
            name_for(Some("keelson.test/busybox"), Some("1.0")).expect("name"),
            Some("keelson.test/busybox:1.0".into())
        );
        assert_eq!(
            name_for(Some("127.0.0.1:5000/busybox"), Some("latest")).expect("name"),
            Some("127.0.0.1:5000/busybox:latest".into())
        );
        assert_eq!(
            name_for(Some("busybox:2"), Some("latest")).expect("name"),
            Some("docker.io/library/busybox:2".into())
        );
    }
}
