//! Reproducible busybox test images.
//!
//! Input: Debian's `busybox-static` packages for amd64 and arm64 (dev/setup caches the .debs
//! under `/var/cache/keelson/debs`), unpacked with `dpkg-deb -x`. Output, in `--out DIR`:
//! - `busybox-oci/`: an OCI image layout whose `index.json` names one image index
//!   (`org.opencontainers.image.ref.name` = `latest`) listing linux/amd64 and linux/arm64/v8;
//! - `busybox-oci.tar`: the same layout as a tar;
//! - `busybox-docker.tar`: the amd64 image as a `docker save` archive tagged
//!   `keelson.test/busybox:latest`;
//! - `README`: what each file is.
//!
//! Every byte is a function of the two .debs: tar entries are sorted, with a fixed mtime,
//! uid/gid 0 (except `/home/user`) and user/group names, ustar headers (no PAX timestamps);
//! gzip has mtime 0 and a fixed OS byte; JSON comes from structs (fixed field order) and
//! `BTreeMap`s; `created` is fixed. The applet list comes from running the host's busybox
//! `--list-full`: both packages are the same Debian build configuration, so the list is the
//! same for both architectures.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The fixed timestamp of every entry and of `created` (2024-01-01T00:00:00Z).
pub const EPOCH: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";
/// The tag of the docker archive.
pub const DOCKER_TAG: &str = "keelson.test/busybox:latest";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What one architecture's image is made of.
#[derive(Debug, Clone)]
pub struct ArchInput {
    /// Debian architecture name (`amd64`, `arm64`).
    pub arch: &'static str,
    /// OCI platform variant (`v8` for arm64).
    pub variant: Option<&'static str>,
    /// The `busybox` binary.
    pub busybox: Vec<u8>,
    /// Debian's copyright file for the package (busybox is GPL-2: ship its licence text).
    pub copyright: Vec<u8>,
    /// The package version, recorded in the image history.
    pub version: String,
}

/// Everything the images are built from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// One entry per architecture, amd64 first.
    pub arches: Vec<ArchInput>,
    /// Applet paths relative to `/` (`bin/sh`, `usr/bin/awk`, …), from `busybox --list-full`.
    pub applets: Vec<String>,
}

impl Inputs {
    /// Unpacks the amd64 and arm64 `busybox-static` .debs found in `debs`.
    pub fn from_debs(debs: &Path) -> Result<Self> {
        let work = tempfile::tempdir().context("creating a scratch dir")?;
        let mut arches = Vec::new();
        for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
            let deb = find_deb(debs, arch)?;
            let dir = work.path().join(arch);
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
            let version = String::from_utf8(run(Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&deb)
                .arg("Version"))?)
            .context("package version is not utf-8")?
            .trim()
            .to_owned();
            arches.push(ArchInput {
                arch,
                variant,
                busybox: fs::read(dir.join("bin/busybox"))
                    .with_context(|| format!("reading bin/busybox from {}", deb.display()))?,
                copyright: fs::read(dir.join("usr/share/doc/busybox-static/copyright"))
                    .with_context(|| {
                        format!("reading the copyright file from {}", deb.display())
                    })?,
                version,
            });
        }
        let host = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => bail!("no busybox-static package to run on {other}"),
        };
        let list =
            run(Command::new(work.path().join(host).join("bin/busybox")).arg("--list-full"))?;
        let applets = String::from_utf8(list)
            .context("applet list is not utf-8")?
            .lines()
            .map(str::trim)
            // `linuxrc` is busybox's initrd init, meaningless in a container image.
            .filter(|l| l.contains('/') && *l != "bin/busybox")
            .map(str::to_owned)
            .collect();
        Ok(Self { arches, applets })
    }
}

fn find_deb(dir: &Path, arch: &str) -> Result<PathBuf> {
    let suffix = format!("_{arch}.deb");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| {
            format!("reading {} (run dev/setup to fetch the busybox-static .debs)", dir.display())
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("busybox-static_") && n.ends_with(&suffix))
        })
        .collect();
    found.sort();
    // Several versions after an upgrade: the last in name order is the newest of one version
    // series, and the README records which one was used.
    found.pop().with_context(|| {
        format!("no busybox-static_*{suffix} in {} (run dev/setup)", dir.display())
    })
}

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

// ---- deterministic tar ------------------------------------------------------------------

enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

struct Entry {
    path: String,
    mode: u32,
    uid: u64,
    kind: Kind,
}

fn dir(path: &str, mode: u32) -> Entry {
    Entry { path: path.to_owned(), mode, uid: 0, kind: Kind::Dir }
}

fn file(path: &str, mode: u32, data: Vec<u8>) -> Entry {
    Entry { path: path.to_owned(), mode, uid: 0, kind: Kind::File(data) }
}

/// Writes `entries` as a ustar archive, sorted by path components, with fixed metadata.
fn tar(mut entries: Vec<Entry>) -> Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    let mut builder = tar::Builder::new(Vec::new());
    for e in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(EPOCH);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        let name = if e.uid == 0 { "root" } else { "user" };
        h.set_username(name)?;
        h.set_groupname(name)?;
        h.set_mode(e.mode);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_path(format!("{}/", e.path))?;
                h.set_size(0);
                h.set_cksum();
                builder.append(&h, std::io::empty())?;
            }
            Kind::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_path(&e.path)?;
                h.set_size(data.len() as u64);
                h.set_cksum();
                builder.append(&h, data.as_slice())?;
            }
            Kind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_path(&e.path)?;
                h.set_link_name(target)?;
                h.set_size(0);
                h.set_cksum();
                builder.append(&h, std::io::empty())?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // mtime 0 and OS 255 ("unknown") make the header independent of the build host.
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The root filesystem layer (uncompressed tar) for one architecture.
pub fn rootfs_layer(input: &ArchInput, applets: &[String]) -> Result<Vec<u8>> {
    let mut entries = vec![
        dir("bin", 0o755),
        dir("dev", 0o755),
        dir("etc", 0o755),
        dir("home", 0o755),
        Entry { path: "home/user".into(), mode: 0o755, uid: 1000, kind: Kind::Dir },
        dir("proc", 0o755),
        dir("root", 0o700),
        dir("sbin", 0o755),
        dir("sys", 0o755),
        dir("tmp", 0o1777),
        dir("usr", 0o755),
        dir("usr/bin", 0o755),
        dir("usr/sbin", 0o755),
        dir("usr/share", 0o755),
        dir("usr/share/doc", 0o755),
        dir("usr/share/doc/busybox-static", 0o755),
        dir("var", 0o755),
        file("bin/busybox", 0o755, input.busybox.clone()),
        file("usr/share/doc/busybox-static/copyright", 0o644, input.copyright.clone()),
        file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n\
              nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
              user:x:1000:1000:user:/home/user:/bin/sh\n"
                .to_vec(),
        ),
        file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\nuser:x:1000:\n".to_vec()),
    ];
    let dirs: Vec<String> =
        entries.iter().filter(|e| matches!(e.kind, Kind::Dir)).map(|e| e.path.clone()).collect();
    for applet in applets {
        let parent = applet.rsplit_once('/').map_or("", |(p, _)| p);
        ensure!(dirs.iter().any(|d| d == parent), "applet {applet} lives in an unexpected dir");
        entries.push(Entry {
            path: applet.clone(),
            mode: 0o777,
            uid: 0,
            kind: Kind::Symlink("/bin/busybox".into()),
        });
    }
    tar(entries)
}

// ---- OCI and docker JSON ------------------------------------------------------------------

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Platform {
    architecture: String,
    os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

fn descriptor(media_type: &str, data: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: format!("sha256:{}", sha256(data)),
        size: data.len(),
        platform: None,
        annotations: None,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: String,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ImageConfig {
    architecture: String,
    os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    created: String,
    config: RunConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    env: Vec<String>,
    cmd: Vec<String>,
    working_dir: String,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// One built platform image.
struct Built {
    layer_tar: Vec<u8>,
    layer_gz: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    platform: Platform,
}

fn build_arch(input: &ArchInput, applets: &[String]) -> Result<Built> {
    let layer_tar = rootfs_layer(input, applets)?;
    let layer_gz = gzip(&layer_tar)?;
    let config = serde_json::to_vec(&ImageConfig {
        architecture: input.arch.into(),
        os: "linux".into(),
        variant: input.variant.map(Into::into),
        created: CREATED.into(),
        config: RunConfig {
            env: vec![PATH_ENV.into()],
            cmd: vec!["sh".into()],
            working_dir: "/".into(),
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![format!("sha256:{}", sha256(&layer_tar))],
        },
        history: vec![History {
            created: CREATED.into(),
            created_by: format!(
                "keelson xtask test-images: Debian busybox-static {} ({})",
                input.version, input.arch
            ),
        }],
    })?;
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: MT_MANIFEST.into(),
        config: descriptor(MT_CONFIG, &config),
        layers: vec![descriptor(MT_LAYER_GZIP, &layer_gz)],
    })?;
    let platform = Platform {
        architecture: input.arch.into(),
        os: "linux".into(),
        variant: input.variant.map(Into::into),
    };
    Ok(Built { layer_tar, layer_gz, config, manifest, platform })
}

/// All output files, relative path → bytes (directories are implied).
pub fn render(inputs: &Inputs) -> Result<BTreeMap<String, Vec<u8>>> {
    ensure!(!inputs.arches.is_empty(), "no architectures to build");
    let built: Vec<Built> =
        inputs.arches.iter().map(|a| build_arch(a, &inputs.applets)).collect::<Result<_>>()?;

    // The OCI layout.
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut manifests = Vec::new();
    for b in &built {
        for data in [&b.layer_gz, &b.config, &b.manifest] {
            blobs.insert(sha256(data), data.clone());
        }
        let mut d = descriptor(MT_MANIFEST, &b.manifest);
        d.platform = Some(b.platform.clone());
        manifests.push(d);
    }
    let index =
        serde_json::to_vec(&Index { schema_version: 2, media_type: MT_INDEX.into(), manifests })?;
    blobs.insert(sha256(&index), index.clone());
    let mut top = descriptor(MT_INDEX, &index);
    top.annotations =
        Some(BTreeMap::from([("org.opencontainers.image.ref.name".into(), "latest".into())]));
    let index_json = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: MT_INDEX.into(),
        manifests: vec![top],
    })?;
    let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();

    let mut layout: Vec<(String, Vec<u8>)> =
        vec![("index.json".into(), index_json), ("oci-layout".into(), oci_layout)];
    for (hex, data) in &blobs {
        layout.push((format!("blobs/sha256/{hex}"), data.clone()));
    }
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tar_entries = vec![dir("blobs", 0o755), dir("blobs/sha256", 0o755)];
    for (path, data) in &layout {
        out.insert(format!("busybox-oci/{path}"), data.clone());
        tar_entries.push(file(path, 0o644, data.clone()));
    }
    out.insert("busybox-oci.tar".into(), tar(tar_entries)?);

    // The docker archive: amd64 only, uncompressed layer, like `docker save`.
    let amd64 = &built[0];
    let config_name = format!("{}.json", sha256(&amd64.config));
    let layer_id = sha256(&amd64.layer_tar);
    let layer_name = format!("{layer_id}/layer.tar");
    let manifest_json = serde_json::to_vec(&[DockerManifestEntry {
        config: config_name.clone(),
        repo_tags: vec![DOCKER_TAG.into()],
        layers: vec![layer_name.clone()],
    }])?;
    let (repo, tag) = DOCKER_TAG.rsplit_once(':').expect("DOCKER_TAG has a tag");
    let repositories = serde_json::to_vec(&BTreeMap::from([(
        repo.to_owned(),
        BTreeMap::from([(tag.to_owned(), layer_id.clone())]),
    )]))?;
    out.insert(
        "busybox-docker.tar".into(),
        tar(vec![
            file(&config_name, 0o644, amd64.config.clone()),
            dir(&layer_id, 0o755),
            file(&format!("{layer_id}/VERSION"), 0o644, b"1.0".to_vec()),
            file(&layer_name, 0o644, amd64.layer_tar.clone()),
            file("manifest.json", 0o644, manifest_json),
            file("repositories", 0o644, repositories),
        ])?,
    );

    out.insert("README".into(), readme(inputs, &index).into_bytes());
    Ok(out)
}

fn readme(inputs: &Inputs, index: &[u8]) -> String {
    let versions: Vec<String> =
        inputs.arches.iter().map(|a| format!("{} {}", a.arch, a.version)).collect();
    format!(
        "Keelson test images, built by `cargo xtask test-images` (xtask/src/test_images.rs).\n\
         Reproducible: the same .debs give the same bytes on every build.\n\
         \n\
         Source: Debian busybox-static ({versions}), busybox plus one symlink per applet,\n\
         /etc/passwd and /etc/group with root (0), nobody (65534) and user (1000, home\n\
         /home/user), /tmp (1777), /root, /home, /dev, /proc, /sys. Default command: sh.\n\
         \n\
         busybox-oci/         OCI image layout. index.json names one image index\n\
         \x20                    (org.opencontainers.image.ref.name = latest) listing\n\
         \x20                    linux/amd64 and linux/arm64/v8; layers are tar+gzip.\n\
         \x20                    Image index digest: sha256:{index_digest}\n\
         busybox-oci.tar      the same layout as a tar archive.\n\
         busybox-docker.tar   the linux/amd64 image as a `docker save` archive\n\
         \x20                    (manifest.json, repositories, config, uncompressed layer),\n\
         \x20                    tagged {DOCKER_TAG}.\n",
        versions = versions.join(", "),
        index_digest = sha256(index),
    )
}

/// Builds the images into `out`, replacing it as a whole.
pub fn build(inputs: &Inputs, out: &Path) -> Result<()> {
    let files = render(inputs)?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".test-images-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
    for (path, data) in &files {
        let p = tmp.path().join(path);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    }
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("removing the old {}", out.display()))?;
    }
    let tmp = tmp.keep();
    fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_inputs() -> Inputs {
        let arch = |arch, variant, byte| ArchInput {
            arch,
            variant,
            busybox: vec![byte; 4096],
            copyright: b"GPL-2".to_vec(),
            version: "1:1.35.0-4".into(),
        };
        Inputs {
            arches: vec![arch("amd64", None, 1), arch("arm64", Some("v8"), 2)],
            applets: vec!["bin/sh".into(), "usr/bin/awk".into(), "sbin/ip".into()],
        }
    }

    fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("read_dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).expect("prefix").to_string_lossy().into_owned();
                    out.insert(rel, fs::read(&p).expect("read"));
                }
            }
        }
        out
    }

    #[test]
    fn two_builds_are_byte_identical() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        build(&fake_inputs(), &a).expect("first build");
        build(&fake_inputs(), &b).expect("second build");
        let (ta, tb) = (tree(&a), tree(&b));
        assert!(ta.contains_key("busybox-oci.tar"));
        assert!(ta.contains_key("busybox-docker.tar"));
        assert!(ta.contains_key("busybox-oci/index.json"));
        assert!(ta.contains_key("README"));
        assert_eq!(ta, tb);
    }

    #[test]
    fn real_debs_build_reproducibly() {
        let debs =
            std::env::var("KEELSON_DEBS").unwrap_or_else(|_| "/var/cache/keelson/debs".into());
        let inputs = match Inputs::from_debs(Path::new(&debs)) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("SKIP real_debs_build_reproducibly: {e:#}");
                return;
            }
        };
        assert!(inputs.applets.iter().any(|a| a == "bin/sh"));
        assert_eq!(render(&inputs).expect("first"), render(&inputs).expect("second"));
    }

    #[test]
    fn layer_is_sorted_with_fixed_metadata() {
        let inputs = fake_inputs();
        let layer = rootfs_layer(&inputs.arches[0], &inputs.applets).expect("layer");
        let mut archive = tar::Archive::new(layer.as_slice());
        let mut paths = Vec::new();
        for e in archive.entries().expect("entries") {
            let e = e.expect("entry");
            assert_eq!(e.header().mtime().expect("mtime"), EPOCH);
            assert!(e.header().as_ustar().is_some(), "ustar headers only");
            paths.push(e.path().expect("path").to_string_lossy().trim_end_matches('/').to_owned());
        }
        let mut sorted = paths.clone();
        sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        assert_eq!(paths, sorted);
        assert!(paths.iter().any(|p| p == "tmp"));
        assert!(paths.iter().any(|p| p == "bin/sh"));
    }

    #[test]
    fn index_lists_both_platforms() {
        let files = render(&fake_inputs()).expect("render");
        let index: serde_json::Value =
            serde_json::from_slice(&files["busybox-oci/index.json"]).expect("index.json");
        let top = &index["manifests"][0];
        assert_eq!(top["annotations"]["org.opencontainers.image.ref.name"], "latest");
        let hex = top["digest"].as_str().expect("digest").trim_start_matches("sha256:");
        let nested: serde_json::Value =
            serde_json::from_slice(&files[&format!("busybox-oci/blobs/sha256/{hex}")])
                .expect("nested");
        let arches: Vec<&str> = nested["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().expect("arch"))
            .collect();
        assert_eq!(arches, ["amd64", "arm64"]);
    }
}
