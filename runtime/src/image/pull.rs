//! Pull from an OCI registry with `oci-client`.
//!
//! Authentication: anonymous, HTTP basic, and bearer tokens (obtained by the client from the
//! registry's `WWW-Authenticate: Bearer realm=…` challenge, with basic credentials if given,
//! or passed directly as [`RegistryAuth::Bearer`]). Plain HTTP is used only for registries
//! configured insecure and for loopback addresses.
//!
//! Integrity: every manifest and blob is hashed here, while it streams into the content
//! store, and checked against the digest that named it (the reference's digest, the index
//! entry, the manifest's descriptor); `oci-client`'s own checks are not relied upon. A
//! mismatching blob is discarded (see [`super::content`]). Layers download in parallel, at
//! most [`PullOptions::max_concurrent`] at a time.

use std::net::IpAddr;
use std::sync::Once;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::content::ContentStore;
use super::digest::Digest;
use super::manifest::{self, Platform};
use super::metadata::ImageRecord;
use super::progress::{emit, Phase, Progress, ProgressSender};
use super::{Error, Result};

/// Options of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to select from an index (default: the host's).
    pub platform: Option<Platform>,
    /// Parallel layer downloads.
    pub max_concurrent: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self { platform: None, max_concurrent: 3 }
    }
}

/// Installs ring as rustls' process-wide crypto provider, once (aws-lc-rs cannot build here).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one already: that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Whether `registry` (`host[:port]`) may be reached over plain HTTP.
pub fn is_insecure(registry: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|r| r == registry) {
        return true;
    }
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn registry_err(
    op: &'static str,
    r: &Reference,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Error {
    let reference = r.whole();
    move |source| Error::Registry { op, reference, source }
}

fn oci_descriptor(digest: &Digest, media_type: &str, size: u64) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_string(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

/// Pulls `reference` into `content` and returns the image record (not yet saved).
pub async fn pull(
    content: &ContentStore,
    reference: &str,
    auth: &RegistryAuth,
    opts: &PullOptions,
    insecure: &[String],
    progress: Option<&ProgressSender>,
) -> Result<ImageRecord> {
    install_crypto_provider();
    let r = manifest::parse_reference(reference)?;
    let registry = r.resolve_registry().to_owned();
    let protocol = if is_insecure(&registry, insecure) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        platform_resolver: None,
        max_concurrent_download: opts.max_concurrent.max(1),
        ..Default::default()
    });
    client
        .auth(&r, auth, RegistryOperation::Pull)
        .await
        .map_err(registry_err("authenticating for", &r))?;

    // The manifest (or index) the reference names.
    let (data, _) = client
        .pull_manifest_raw(&r, auth, manifest::ACCEPTED)
        .await
        .map_err(registry_err("fetching the manifest of", &r))?;
    let target = Digest::of(&data);
    if let Some(expected) = r.digest() {
        if expected != target.as_str() {
            return Err(Error::DigestMismatch {
                expected: expected.to_owned(),
                actual: target.to_string(),
            });
        }
    }
    let target_mt =
        manifest::sniff_media_type(&data).unwrap_or_else(|| manifest::OCI_MANIFEST.to_owned());
    content.write_bytes(&target, &data)?;

    let want = opts.platform.clone().unwrap_or_else(Platform::host);
    let (manifest_digest, manifest_bytes) = if manifest::is_index(&target_mt) {
        let index = manifest::parse_index(&data, &format!("index {target}"))?;
        let desc = manifest::select_manifest(&index, &want)?;
        let d = manifest::descriptor_digest(&desc)?;
        let by_digest = r.clone_with_digest(d.to_string());
        let (bytes, _) = client
            .pull_manifest_raw(&by_digest, auth, manifest::ACCEPTED)
            .await
            .map_err(registry_err("fetching the platform manifest of", &r))?;
        content.write_bytes(&d, &bytes)?; // verifies the bytes against the index's digest
        (d, bytes.to_vec())
    } else if manifest::is_manifest(&target_mt) {
        (target.clone(), data.to_vec())
    } else {
        return Err(Error::UnsupportedMediaType { media_type: target_mt, what: r.whole() });
    };
    let name = manifest::record_name(&r);
    let m = manifest::parse_resolved(&manifest_bytes, &manifest_digest, &name, progress)?;

    let config_digest = manifest::descriptor_digest(m.config())?;
    fetch_blob(
        &client,
        &r,
        content,
        &config_digest,
        m.config().media_type().as_ref(),
        m.config().size(),
        progress,
    )
    .await?;
    let config =
        manifest::parse_config(&content.read(&config_digest)?, &format!("config {config_digest}"))?;

    let mut layers = Vec::new();
    for l in m.layers() {
        let d = manifest::descriptor_digest(l)?;
        emit(
            progress,
            Progress::Blob {
                id: d.short().to_owned(),
                phase: Phase::Waiting,
                done: 0,
                total: l.size(),
            },
        );
        layers.push((d, l.media_type().to_string(), l.size()));
    }
    futures::stream::iter(
        layers.iter().map(|(d, mt, size)| fetch_blob(&client, &r, content, d, mt, *size, progress)),
    )
    .buffer_unordered(opts.max_concurrent.max(1))
    .try_collect::<Vec<()>>()
    .await?;

    manifest::build_record(name, (target, target_mt), manifest_digest, &m, &config)
}

async fn fetch_blob(
    client: &Client,
    r: &Reference,
    content: &ContentStore,
    digest: &Digest,
    media_type: &str,
    size: u64,
    progress: Option<&ProgressSender>,
) -> Result<()> {
    let id = digest.short().to_owned();
    if content.contains(digest) {
        emit(progress, Progress::Blob { id, phase: Phase::Exists, done: size, total: size });
        return Ok(());
    }
    let res = async {
        let mut stream = client
            .pull_blob_stream(r, &oci_descriptor(digest, media_type, size))
            .await
            .map_err(registry_err("fetching a blob of", r))?;
        let mut w = content.writer(digest, Some(size))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| Error::Read { what: digest.to_string(), source })?;
            std::io::Write::write_all(&mut w, &chunk).map_err(|source| Error::Read {
                what: format!("{digest} into the store"),
                source,
            })?;
            emit(
                progress,
                Progress::Blob {
                    id: id.clone(),
                    phase: Phase::Transferring,
                    done: w.written(),
                    total: size,
                },
            );
        }
        // fsync and rename off the async workers.
        tokio::task::spawn_blocking(move || w.commit()).await.map_err(Error::Task)?
    }
    .await;
    let phase = if res.is_ok() { Phase::Done } else { Phase::Failed };
    emit(
        progress,
        Progress::Blob { id, phase, done: if res.is_ok() { size } else { 0 }, total: size },
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_configured_registries() {
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("[::1]:5000", &[]));
        assert!(!is_insecure("registry.example:5000", &[]));
        assert!(is_insecure("registry.example:5000", &["registry.example:5000".into()]));
        assert!(!is_insecure("10.0.0.1", &[]));
    }
}
