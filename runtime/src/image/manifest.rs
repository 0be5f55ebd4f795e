//! Manifests, indexes and configs in OCI and Docker v2 media types, platform selection, and
//! reference normalization. Shared by import and pull.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_client::Reference;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use super::digest::Digest;
use super::metadata::{ImageRecord, LayerRecord};
use super::{Error, Result};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker v2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker v2 image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Manifest media types a pull accepts.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Whether `mt` is an index (OCI index or Docker manifest list).
pub fn is_index(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}

/// Whether `mt` is an image manifest.
pub fn is_manifest(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

/// Whether `mt` is a layer this store can unpack.
pub fn is_layer(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.diff.tar")
}

/// The `mediaType` a JSON document declares about itself, if any.
pub fn sniff_media_type(data: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(data).ok()?;
    p.media_type.or_else(|| match (p.manifests, p.layers) {
        (Some(_), None) => Some(OCI_INDEX.to_owned()),
        (None, Some(_)) => Some(OCI_MANIFEST.to_owned()),
        _ => None,
    })
}

/// A platform: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// Go architecture name (`amd64`, `arm64`).
    pub architecture: String,
    /// CPU variant (`v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            other => (other, None),
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?.to_owned();
        let architecture = it.next().filter(|x| !x.is_empty())?.to_owned();
        let variant = it.next().map(str::to_owned);
        it.next().is_none().then_some(Self { os, architecture, variant })
    }

    fn normalized_variant(arch: &str, variant: Option<&str>) -> Option<String> {
        match (arch, variant) {
            ("arm64", None) => Some("v8".into()),
            (_, v) => v.map(str::to_owned),
        }
    }

    /// Whether an index entry's platform satisfies this one (a missing variant on either side
    /// matches, except that arm64's default variant is v8).
    pub fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        if p.os().to_string() != self.os || p.architecture().to_string() != self.architecture {
            return false;
        }
        let theirs = Self::normalized_variant(&self.architecture, p.variant().as_deref());
        let ours = Self::normalized_variant(&self.architecture, self.variant.as_deref());
        match (ours, theirs) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    fn of(p: &oci_spec::image::Platform) -> Self {
        Self {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Parses and normalizes a reference (`busybox` → `docker.io/library/busybox:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .parse::<Reference>()
        .map_err(|source| Error::Reference { reference: reference.to_owned(), source })
}

/// The record name of a reference: `registry/repository:tag`, or `registry/repository@digest`
/// for a reference by digest alone (as containerd names them).
pub fn record_name(r: &Reference) -> String {
    match (r.tag(), r.digest()) {
        (None, Some(d)) => format!("{}/{}@{d}", r.registry(), r.repository()),
        (tag, _) => format!("{}/{}:{}", r.registry(), r.repository(), tag.unwrap_or("latest")),
    }
}

/// Parses an index.
pub fn parse_index(data: &[u8], what: &str) -> Result<ImageIndex> {
    ImageIndex::from_reader(data).map_err(|source| Error::Spec { what: what.to_owned(), source })
}

/// Parses a manifest (OCI or Docker v2 schema 2: same fields).
pub fn parse_manifest(data: &[u8], what: &str) -> Result<ImageManifest> {
    ImageManifest::from_reader(data).map_err(|source| Error::Spec { what: what.to_owned(), source })
}

/// Parses the platform manifest an import or pull resolved `reference` to, and reports it.
pub(crate) fn parse_resolved(
    data: &[u8],
    digest: &Digest,
    reference: &str,
    progress: Option<&super::ProgressSender>,
) -> Result<ImageManifest> {
    let m = parse_manifest(data, &format!("manifest {digest}"))?;
    super::progress::emit(
        progress,
        super::Progress::Resolved {
            reference: reference.to_owned(),
            manifest: digest.to_string(),
            layers: m.layers().len(),
        },
    );
    Ok(m)
}

/// Parses an image config (OCI or Docker: same fields).
pub fn parse_config(data: &[u8], what: &str) -> Result<ImageConfiguration> {
    ImageConfiguration::from_reader(data)
        .map_err(|source| Error::Spec { what: what.to_owned(), source })
}

/// Picks the manifest for `want` from an index.
pub fn select_manifest(index: &ImageIndex, want: &Platform) -> Result<Descriptor> {
    let candidates = || {
        index.manifests().iter().filter(|d| {
            is_manifest(d.media_type().as_ref()) || d.media_type().to_string().is_empty()
        })
    };
    if let Some(d) = candidates().find(|d| d.platform().as_ref().is_some_and(|p| want.matches(p))) {
        return Ok(d.clone());
    }
    let available: Vec<String> = candidates()
        .filter_map(|d| d.platform().as_ref().map(|p| Platform::of(p).to_string()))
        .collect();
    Err(Error::NoPlatform { wanted: want.to_string(), available: available.join(", ") })
}

/// A `digest` from an oci-spec descriptor.
pub fn descriptor_digest(d: &Descriptor) -> Result<Digest> {
    Digest::try_from(d.digest())
}

/// Builds the record of a resolved image, checking that the config's diff ids match the
/// manifest's layers.
pub fn build_record(
    name: String,
    target: (Digest, String),
    manifest_digest: Digest,
    manifest: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<ImageRecord> {
    let bad = |reason: String| Error::BadImage { image: manifest_digest.to_string(), reason };
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(format!(
            "{} layers but {} diff ids in the config",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (l, diff) in manifest.layers().iter().zip(diff_ids) {
        let media_type = l.media_type().to_string();
        if !is_layer(&media_type) {
            return Err(Error::UnsupportedMediaType { media_type, what: "layer".into() });
        }
        layers.push(LayerRecord {
            digest: descriptor_digest(l)?,
            media_type,
            size: l.size(),
            diff_id: Digest::parse(diff)?,
        });
    }
    let platform = Platform {
        os: config.os().to_string(),
        architecture: config.architecture().to_string(),
        variant: config.variant().clone(),
    };
    Ok(ImageRecord {
        name,
        target: target.0,
        target_media_type: target.1,
        manifest: manifest_digest,
        config: descriptor_digest(manifest.config())?,
        layers,
        platform: platform.to_string(),
        stored_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_normalize_like_containerd() {
        let r = parse_reference("busybox").expect("parse");
        assert_eq!(record_name(&r), "docker.io/library/busybox:latest");
        let r = parse_reference("127.0.0.1:5000/x/busybox:1.2").expect("parse");
        assert_eq!(record_name(&r), "127.0.0.1:5000/x/busybox:1.2");
        let r = parse_reference("keelson.test/busybox").expect("parse");
        assert_eq!(record_name(&r), "keelson.test/busybox:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("busybox@{d}")).expect("parse");
        assert_eq!(record_name(&r), format!("docker.io/library/busybox@{d}"));
    }

    #[test]
    fn platform_selection_picks_the_wanted_architecture() {
        let index = parse_index(
            br#"{"schemaVersion":2,"manifests":[
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
               "digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",
               "platform":{"os":"linux","architecture":"amd64"}},
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
               "digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222",
               "platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#,
            "test index",
        )
        .expect("index");
        let arm =
            select_manifest(&index, &Platform::parse("linux/arm64").expect("p")).expect("arm64");
        assert!(arm.digest().to_string().ends_with("2222"));
        let amd =
            select_manifest(&index, &Platform::parse("linux/amd64").expect("p")).expect("amd64");
        assert!(amd.digest().to_string().ends_with("1111"));
        let err =
            select_manifest(&index, &Platform::parse("linux/s390x").expect("p")).expect_err("none");
        assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
    }
}
