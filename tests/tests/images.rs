//! Privileged image tests: import, pull (anonymous, basic, bearer, tampered blob), hostile
//! layers, whiteouts in a real overlay, garbage collection.
//!
//! Run: `cargo xtask test-images --out DIR` once, then
//! `KEELSON_TEST_IMAGES=DIR KEELSON_TEST_TIERS=privileged cargo test -p keelson-tests --test images`.
//! Registries run on 127.0.0.1 only.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use keelson_runtime::image::{
    Digest, Image, ImageStore, ImportOptions, Mounter, OverlayMounter, Platform, Progress,
    PullOptions, RegistryAuth, RootfsMount,
};
use keelson_tests::images::{self, DockerRegistry, TokenRegistry};
use keelson_tests::{need_root, require, Tier};

const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

// ---- helpers --------------------------------------------------------------------------------

fn store(tmp: &Path) -> ImageStore {
    ImageStore::open(tmp.join("store")).expect("open store")
}

/// A tar entry with raw header bytes, so hostile names survive.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Device(&'a str, u32, u32),
}

fn tar_layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o644);
        let (path, data, link): (&str, &[u8], Option<&str>) = match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (p, b"", None)
            }
            E::File(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                (p, d, None)
            }
            E::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                (p, b"", Some(t))
            }
            E::Hardlink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                (p, b"", Some(t))
            }
            E::Device(p, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(*major).expect("major");
                h.set_device_minor(*minor).expect("minor");
                (p, b"", None)
            }
        };
        assert!(path.len() < 100, "test paths fit the old header");
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(t) = link {
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("tar")
}

fn put_blob(layout: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    fs::write(layout.join("blobs/sha256").join(d.hex()), data).expect("write blob");
    d
}

/// Writes an OCI layout holding one image of uncompressed `layers`, tagged `latest`.
fn write_layout(layout: &Path, layers: &[Vec<u8>]) -> PathBuf {
    fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = put_blob(layout, l);
        diff_ids.push(d.to_string());
        descs.push(serde_json::json!({"mediaType": OCI_LAYER_TAR, "digest": d.to_string(), "size": l.len()}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": Platform::host().architecture, "os": "linux",
        "config": {"Cmd": ["sh"], "User": "1000", "StopSignal": "SIGQUIT", "WorkingDir": "/tmp"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let cd = put_blob(layout, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .expect("manifest");
    let md = put_blob(layout, &manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&index).expect("index"))
        .expect("index.json");
    layout.to_owned()
}

/// Unmounts on drop, also when the test panics.
struct MountGuard(PathBuf);

impl MountGuard {
    fn mount(rootfs: &RootfsMount, target: &Path) -> Self {
        fs::create_dir_all(target).expect("mkdir target");
        OverlayMounter.mount(rootfs, target).expect("mount overlay");
        Self(target.to_owned())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = OverlayMounter.unmount(&self.0);
    }
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let m = fs::symlink_metadata(e.path()).expect("meta");
        if m.is_dir() {
            walk(&e.path(), out);
        }
        out.push((e.path(), m));
    }
}

/// The amd64 image's digests from the layout: (index, manifest, config, layer).
fn layout_digests(layout: &Path) -> (String, String, String, String) {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&fs::read(p).expect("read")).expect("json")
    };
    let blob = |d: &str| read(&layout.join("blobs/sha256").join(d.trim_start_matches("sha256:")));
    let index =
        read(&layout.join("index.json"))["manifests"][0]["digest"].as_str().expect("d").to_owned();
    let nested = blob(&index);
    let manifest = nested["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .expect("amd64")["digest"]
        .as_str()
        .expect("d")
        .to_owned();
    let m = blob(&manifest);
    let config = m["config"]["digest"].as_str().expect("d").to_owned();
    let layer = m["layers"][0]["digest"].as_str().expect("d").to_owned();
    (index, manifest, config, layer)
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Progress>) -> Vec<Progress> {
    let mut v = Vec::new();
    while let Ok(p) = rx.try_recv() {
        v.push(p);
    }
    v
}

// ---- import ---------------------------------------------------------------------------------

#[test]
fn import_accepts_oci_layout_dir_tar_and_docker_archive() {
    require!(Tier::Privileged, need_root(), images::need_test_images());
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (index, manifest, config, _) = layout_digests(&images::oci_layout());

    let dir = s
        .import(&images::oci_layout(), &ImportOptions::named("keelson.test/busybox-dir"), Some(&tx))
        .expect("dir");
    assert_eq!(dir.name(), "keelson.test/busybox-dir:latest");
    assert_eq!(dir.record.target.as_str(), index);
    assert_eq!(dir.record.manifest.as_str(), manifest);
    assert_eq!(dir.id().as_str(), config);
    assert_eq!(dir.record.platform, "linux/amd64");
    assert_eq!(dir.run.cmd, ["sh"]);
    assert!(dir.run.env.iter().any(|e| e.starts_with("PATH=")));
    let events = drain(&mut rx);
    assert!(events.iter().any(|e| matches!(e, Progress::Resolved { layers: 1, .. })), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Progress::Stored { .. })), "{events:?}");

    let tar = s
        .import(&images::oci_tar(), &ImportOptions::named("keelson.test/busybox-tar:v1"), None)
        .expect("tar");
    assert_eq!(tar.name(), "keelson.test/busybox-tar:v1");
    assert_eq!(tar.id(), dir.id());
    assert_eq!(tar.record.manifest, dir.record.manifest);

    // The docker archive names itself; its layer is uncompressed, so only the diff ids and the
    // config (the same bytes) match the OCI image.
    let docker = s.import(&images::docker_tar(), &ImportOptions::default(), None).expect("docker");
    assert_eq!(docker.name(), images::DOCKER_TAG);
    assert_eq!(docker.id(), dir.id());
    assert_eq!(docker.record.layers[0].diff_id, dir.record.layers[0].diff_id);
    assert_eq!(docker.record.layers[0].digest, docker.record.layers[0].diff_id);

    // Lookups by name, bare name, digest and id prefix.
    assert_eq!(s.get("keelson.test/busybox-dir").expect("bare").id(), dir.id());
    assert_eq!(s.get(&config).expect("digest").id(), dir.id());
    assert_eq!(s.get(&dir.id().hex()[..12]).expect("prefix").id(), dir.id());
    assert_eq!(
        s.get(&format!("keelson.test/busybox-tar@{manifest}")).expect("name@digest").name(),
        tar.name()
    );
    assert_eq!(s.list().expect("list").len(), 3);

    // All three share one snapshot: the layer is unpacked once.
    let a = s.prepare_rootfs(&dir, "a").expect("rootfs a");
    let b = s.prepare_rootfs(&docker, "b").expect("rootfs b");
    assert_eq!(a.lowerdirs, b.lowerdirs);
    assert_ne!(a.upperdir, b.upperdir);

    // Removing by digest removes every name of the image.
    let removed = s.remove(&config).expect("remove");
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(s.get("keelson.test/busybox-dir").is_err());
}

#[test]
fn import_selects_the_requested_platform() {
    require!(Tier::Privileged, need_root(), images::need_test_images());
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let opts = ImportOptions {
        name: Some("keelson.test/busybox-arm".into()),
        platform: Platform::parse("linux/arm64"),
    };
    let arm = s.import(&images::oci_tar(), &opts, None).expect("arm64");
    assert_eq!(arm.record.platform, "linux/arm64/v8");
    assert_eq!(arm.config.architecture().to_string(), "arm64");
    let opts = ImportOptions { platform: Platform::parse("linux/s390x"), ..opts };
    let err = s.import(&images::oci_tar(), &opts, None).expect_err("no s390x");
    assert!(err.to_string().contains("linux/s390x"), "{err}");
}

#[test]
fn imported_busybox_runs_from_its_overlay_rootfs() {
    require!(Tier::Privileged, need_root(), images::need_test_images());
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let image = s
        .import(&images::oci_layout(), &ImportOptions::named("keelson.test/busybox"), None)
        .expect("import");
    let rootfs = s.prepare_rootfs(&image, "run").expect("rootfs");
    let mnt = tmp.path().join("mnt");
    let _m = MountGuard::mount(&rootfs, &mnt);
    let out = std::process::Command::new("chroot")
        .arg(&mnt)
        .args([
            "/bin/sh",
            "-c",
            "echo hello > /tmp/x && cat /tmp/x && stat -c %a /tmp && id -u user",
        ])
        .output()
        .expect("chroot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n1777\n1000\n");
    // The write went to the container's upper dir, not the shared snapshot.
    assert!(rootfs.upperdir.join("tmp/x").is_file());
    assert!(!rootfs.lowerdirs[0].join("tmp/x").exists());
}

// ---- pull -----------------------------------------------------------------------------------

fn need_registry_tools() -> Option<String> {
    images::need_binary("docker-registry", "docker-registry")
        .or_else(|| images::need_binary("skopeo", "skopeo"))
        .or_else(|| images::need_binary("htpasswd", "apache2-utils"))
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_anonymous_from_local_registry() {
    require!(Tier::Privileged, need_root(), images::need_test_images(), need_registry_tools());
    let registry = DockerRegistry::start(None).expect("registry");
    let reference =
        registry.push_oci_layout(&images::oci_layout(), "latest", "keelson/busybox").expect("push");
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (index, manifest, config, layer) = layout_digests(&images::oci_layout());

    let image = s
        .pull(&reference, &RegistryAuth::Anonymous, &PullOptions::default(), Some(&tx))
        .await
        .expect("pull");
    assert_eq!(image.name(), reference);
    assert_eq!(image.record.target.as_str(), index);
    assert_eq!(image.record.manifest.as_str(), manifest);
    assert_eq!(image.id().as_str(), config);
    let events = drain(&mut rx);
    let short = &layer["sha256:".len().."sha256:".len() + 12];
    assert!(
        events.iter().any(|e| matches!(e, Progress::Blob { id, phase: keelson_runtime::image::Phase::Done, done, total }
            if id == short && done == total && *total > 0)),
        "{events:?}"
    );

    let arm = s
        .pull(
            &reference,
            &RegistryAuth::Anonymous,
            &PullOptions { platform: Platform::parse("linux/arm64"), ..Default::default() },
            None,
        )
        .await
        .expect("pull arm64");
    assert_eq!(arm.config.architecture().to_string(), "arm64");

    let rootfs = s.prepare_rootfs(&image, "pulled").expect("rootfs");
    assert!(rootfs.lowerdirs[0].join("bin/busybox").is_file());

    // By digest alone: recorded under repo@digest.
    let by_digest = format!("{}/keelson/busybox@{index}", registry.addr);
    let pinned = s
        .pull(&by_digest, &RegistryAuth::Anonymous, &PullOptions::default(), None)
        .await
        .expect("by digest");
    assert_eq!(pinned.name(), by_digest);
    assert_eq!(pinned.id(), image.id());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_accepts_docker_v2_media_types() {
    require!(Tier::Privileged, need_root(), images::need_test_images(), need_registry_tools());
    let registry = DockerRegistry::start(None).expect("registry");
    let reference = registry
        .push_oci_layout_with(&images::oci_layout(), "latest", "v2s2", &["--format", "v2s2"])
        .expect("push as docker v2");
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let image = s
        .pull(&reference, &RegistryAuth::Anonymous, &PullOptions::default(), None)
        .await
        .expect("pull");
    assert_eq!(
        image.record.target_media_type,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(
        image.record.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let (_, _, config, _) = layout_digests(&images::oci_layout());
    assert_eq!(image.id().as_str(), config, "the config bytes are kept");
    let rootfs = s.prepare_rootfs(&image, "v2s2").expect("rootfs");
    assert!(rootfs.lowerdirs[0].join("bin/busybox").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_with_basic_auth_needs_the_right_credentials() {
    require!(Tier::Privileged, need_root(), images::need_test_images(), need_registry_tools());
    let registry = DockerRegistry::start(Some(("keelson", "s3cret"))).expect("registry");
    let reference =
        registry.push_oci_layout(&images::oci_layout(), "latest", "busybox").expect("push");
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let opts = PullOptions::default();
    assert!(
        s.pull(&reference, &RegistryAuth::Anonymous, &opts, None).await.is_err(),
        "anonymous must fail"
    );
    let wrong = RegistryAuth::Basic("keelson".into(), "wrong".into());
    assert!(s.pull(&reference, &wrong, &opts, None).await.is_err(), "a wrong password must fail");
    assert!(s.list().expect("list").is_empty());
    let right = RegistryAuth::Basic("keelson".into(), "s3cret".into());
    let image = s.pull(&reference, &right, &opts, None).await.expect("pull with basic auth");
    assert_eq!(image.record.platform, Platform::host().to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_with_bearer_token_from_the_registry_challenge() {
    require!(Tier::Privileged, need_root(), images::need_test_images());
    let registry =
        TokenRegistry::start(&images::oci_layout(), "keelson", "s3cret").expect("token registry");
    let reference = format!("{}/busybox:latest", registry.addr);
    let opts = PullOptions::default();

    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    assert!(
        s.pull(&reference, &RegistryAuth::Anonymous, &opts, None).await.is_err(),
        "anonymous must fail"
    );
    let wrong = RegistryAuth::Basic("keelson".into(), "nope".into());
    assert!(s.pull(&reference, &wrong, &opts, None).await.is_err(), "the token server must refuse");

    let basic = RegistryAuth::Basic("keelson".into(), "s3cret".into());
    let image = s.pull(&reference, &basic, &opts, None).await.expect("pull via token");
    let (_, _, config, _) = layout_digests(&images::oci_layout());
    assert_eq!(image.id().as_str(), config);
    let log = registry.requests();
    assert!(log.iter().any(|l| l.starts_with("GET /token Basic")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("/blobs/sha256:") && l.ends_with("Bearer")), "{log:?}");

    // A token obtained elsewhere works directly.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    let s2 = store(tmp2.path());
    s2.pull(&reference, &RegistryAuth::Bearer(registry.token.clone()), &opts, None)
        .await
        .expect("pull with token");
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_downloads_layers_in_parallel_within_the_bound() {
    require!(Tier::Privileged, need_root());
    let tmp = tempfile::tempdir().expect("tempdir");
    let bodies: Vec<Vec<u8>> = (0..6).map(|i| format!("layer {i}").into_bytes()).collect();
    let layers: Vec<Vec<u8>> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| tar_layer(&[E::File(&format!("f{i}"), b)]))
        .collect();
    let layout = write_layout(&tmp.path().join("layout"), &layers);
    let registry = TokenRegistry::start(&layout, "u", "p").expect("registry");
    registry.set_blob_delay(300);
    let s = store(tmp.path());
    let auth = RegistryAuth::Basic("u".into(), "p".into());
    let opts = PullOptions { max_concurrent: 2, ..Default::default() };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let image = s
        .pull(&format!("{}/multi:latest", registry.addr), &auth, &opts, Some(&tx))
        .await
        .expect("pull");
    assert_eq!(image.record.layers.len(), 6);
    assert_eq!(registry.max_parallel_blobs(), 2, "downloads overlap, never more than the bound");
    let done = drain(&mut rx)
        .into_iter()
        .filter(|e| matches!(e, Progress::Blob { phase: keelson_runtime::image::Phase::Done, .. }))
        .count();
    assert_eq!(done, 7, "config and six layers");
    let rootfs = s.prepare_rootfs(&image, "multi").expect("rootfs");
    assert_eq!(fs::read(rootfs.lowerdirs[0].join("f5")).expect("top layer"), b"layer 5");
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_rejects_a_tampered_blob_and_keeps_nothing() {
    require!(Tier::Privileged, need_root(), images::need_test_images(), need_registry_tools());
    let registry = DockerRegistry::start(None).expect("registry");
    let reference =
        registry.push_oci_layout(&images::oci_layout(), "latest", "busybox").expect("push");
    let (_, _, _, layer) = layout_digests(&images::oci_layout());
    let layer = Digest::parse(&layer).expect("digest");
    let data_file = registry.blob_data(layer.hex());
    let mut data = fs::read(&data_file).expect("registry blob");
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&data_file, &data).expect("tamper");

    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let err = s
        .pull(&reference, &RegistryAuth::Anonymous, &PullOptions::default(), None)
        .await
        .expect_err("tampered");
    eprintln!("pull failed as it must: {err:#?}");
    assert!(!s.content().contains(&layer), "the tampered blob must not be kept");
    assert!(names_in(&s.root().join("ingest")).is_empty(), "no partial blob may remain");
    assert!(s.list().expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_checks_blobs_itself_not_only_through_the_client() {
    require!(Tier::Privileged, need_root());
    // The layer hashes to its digest (so oci-client's own check passes) but the manifest
    // declares one byte more: only the store's own verification can refuse it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let layer = tar_layer(&[E::File("f", b"data")]);
    let layout = write_layout(&tmp.path().join("layout"), std::slice::from_ref(&layer));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index")).expect("json");
    let md = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:")
        .to_owned();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&md)).expect("manifest"))
            .expect("json");
    manifest["layers"][0]["size"] = serde_json::json!(layer.len() + 1);
    let bytes = serde_json::to_vec(&manifest).expect("manifest");
    let lying = put_blob(&layout, &bytes);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": lying.to_string(), "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&index).expect("index"))
        .expect("index.json");

    let registry = TokenRegistry::start(&layout, "u", "p").expect("registry");
    let s = store(tmp.path());
    let auth = RegistryAuth::Basic("u".into(), "p".into());
    let err = s
        .pull(&format!("{}/liar:latest", registry.addr), &auth, &PullOptions::default(), None)
        .await
        .expect_err("size mismatch");
    assert!(matches!(err, keelson_runtime::image::Error::SizeMismatch { .. }), "{err:#?}");
    assert!(!s.content().contains(&Digest::of(&layer)));
    assert!(names_in(&s.root().join("ingest")).is_empty());
    assert!(s.list().expect("list").is_empty());
}

// ---- hostile layers, whiteouts, gc ------------------------------------------------------------

#[test]
fn hostile_layers_leave_the_host_untouched() {
    require!(Tier::Privileged, need_root());
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("outside");
    let canary = outside.join("canary");
    fs::write(&canary, b"original").expect("canary");
    let out = outside.display().to_string();
    let dotdot = format!("../../../../../../../..{out}/dotdot");
    let canary_s = canary.display().to_string();

    let s = store(tmp.path());
    let hostile = write_layout(
        &tmp.path().join("hostile"),
        &[tar_layer(&[
            E::File(&dotdot, b"pwned"),
            E::Symlink("evil", &out),
            E::File("evil/through-symlink", b"pwned"),
            E::Symlink("rel", "../../../../../../.."),
            E::File(&format!("rel{out}/through-relative"), b"pwned"),
            E::Symlink("evilfile", &canary_s),
            E::File("evilfile", b"pwned"),
            E::Dir("dev/"),
            E::Device("dev/sda", 8, 0),
            E::Device("dev/mem", 1, 1),
        ])],
    );
    let image =
        s.import(&hostile, &ImportOptions::named("keelson.test/hostile"), None).expect("import");
    let rootfs = s.prepare_rootfs(&image, "hostile").expect("a confined layer unpacks");
    assert_eq!(names_in(&outside), BTreeSet::from(["canary".to_owned()]), "nothing new outside");
    assert_eq!(fs::read(&canary).expect("canary"), b"original");
    let snap = &rootfs.lowerdirs[0];
    let mut entries = Vec::new();
    walk(snap, &mut entries);
    for (p, m) in &entries {
        let ft = m.file_type();
        assert!(
            !ft.is_char_device() && !ft.is_block_device(),
            "device node {} was created",
            p.display()
        );
    }
    // Where the writes went instead: inside the snapshot.
    assert_eq!(fs::read(snap.join(format!(".{out}/dotdot"))).expect("dotdot inside"), b"pwned");
    assert_eq!(
        fs::read(snap.join(format!(".{out}/through-symlink"))).expect("symlink inside"),
        b"pwned"
    );
    assert_eq!(fs::read(snap.join("evilfile")).expect("replaced symlink"), b"pwned");

    // A hard link to an outside file fails the unpack; nothing of it stays visible.
    let link =
        write_layout(&tmp.path().join("link"), &[tar_layer(&[E::Hardlink("stolen", &canary_s)])]);
    let image =
        s.import(&link, &ImportOptions::named("keelson.test/hardlink"), None).expect("import");
    assert!(s.prepare_rootfs(&image, "hardlink").is_err(), "a hard link outside must fail");
    assert_eq!(fs::metadata(&canary).expect("canary").nlink(), 1);
    assert!(s.snapshot_dir(&image.chain_ids[0]).is_none());
    let snapshots = names_in(&s.root().join("snapshots"));
    assert!(!snapshots.iter().any(|n| n.starts_with("tmp-")), "{snapshots:?}");
    let link2 = write_layout(
        &tmp.path().join("link2"),
        &[tar_layer(&[E::Hardlink("stolen", &format!("../../../..{canary_s}"))])],
    );
    let image =
        s.import(&link2, &ImportOptions::named("keelson.test/hardlink2"), None).expect("import");
    assert!(s.prepare_rootfs(&image, "hardlink2").is_err());
    assert_eq!(fs::metadata(&canary).expect("canary").nlink(), 1);
    assert_eq!(fs::read(&canary).expect("canary"), b"original");
}

fn whiteout_image(s: &ImageStore, dir: &Path) -> Image {
    let lower = tar_layer(&[
        E::Dir("etc/"),
        E::File("etc/a", b"a"),
        E::File("etc/b", b"b"),
        E::Dir("d/"),
        E::File("d/x", b"x"),
        E::File("d/y", b"y"),
    ]);
    let upper = tar_layer(&[
        E::Dir("etc/"),
        E::File("etc/.wh.a", b""),
        E::Dir("d/"),
        E::File("d/.wh..wh..opq", b""),
        E::File("d/z", b"z"),
    ]);
    let layout = write_layout(dir, &[lower, upper]);
    s.import(&layout, &ImportOptions::named("keelson.test/whiteouts"), None).expect("import")
}

#[test]
fn whiteouts_and_opaque_dirs_hide_lower_entries_in_the_overlay() {
    require!(Tier::Privileged, need_root());
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let image = whiteout_image(&s, &tmp.path().join("layout"));
    assert_eq!(image.run.user.as_deref(), Some("1000"));
    assert_eq!(image.run.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(image.run.working_dir.as_deref(), Some("/tmp"));
    let rootfs = s.prepare_rootfs(&image, "wh").expect("rootfs");
    assert_eq!(rootfs.lowerdirs.len(), 2);

    // On disk: a 0/0 character device and the opaque xattr.
    let top = &rootfs.lowerdirs[0];
    let wh = fs::symlink_metadata(top.join("etc/a")).expect("whiteout");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
    let mut buf = [0u8; 8];
    let path = std::ffi::CString::new(top.join("d").as_os_str().as_encoded_bytes()).expect("cstr");
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 1, "opaque xattr missing: {}", std::io::Error::last_os_error());
    assert_eq!(buf[0], b'y');

    // Through overlayfs: etc/a is gone, d shows only the upper layer.
    let mnt = tmp.path().join("mnt");
    let _m = MountGuard::mount(&rootfs, &mnt);
    assert_eq!(names_in(&mnt.join("etc")), BTreeSet::from(["b".to_owned()]));
    assert_eq!(names_in(&mnt.join("d")), BTreeSet::from(["z".to_owned()]));
    fs::write(mnt.join("etc/new"), b"n").expect("write through overlay");
    assert!(rootfs.upperdir.join("etc/new").is_file());
}

#[test]
fn gc_removes_exactly_the_unreferenced_blobs_and_snapshots() {
    require!(Tier::Privileged, need_root(), images::need_test_images());
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = store(tmp.path());
    let a =
        s.import(&images::oci_layout(), &ImportOptions::named("keelson.test/a"), None).expect("a");
    let b = whiteout_image(&s, &tmp.path().join("layout"));
    s.prepare_rootfs(&a, "ca").expect("rootfs a");
    s.prepare_rootfs(&b, "cb").expect("rootfs b");
    assert_eq!(s.gc().expect("gc"), Default::default(), "everything is referenced");

    let blobs_of = |i: &Image| -> BTreeSet<Digest> {
        let mut v = BTreeSet::from([
            i.record.target.clone(),
            i.record.manifest.clone(),
            i.record.config.clone(),
        ]);
        v.extend(i.record.layers.iter().map(|l| l.digest.clone()));
        v
    };
    // b's image is removed and its container released: its blobs and snapshots go; a's stay.
    s.remove("keelson.test/whiteouts").expect("remove b");
    s.release_rootfs("cb").expect("release b");
    let report = s.gc().expect("gc");
    assert_eq!(report.blobs.iter().cloned().collect::<BTreeSet<_>>(), blobs_of(&b));
    assert_eq!(
        report.snapshots.iter().cloned().collect::<BTreeSet<_>>(),
        b.chain_ids.iter().cloned().collect()
    );
    assert_eq!(
        s.content().list().expect("list").into_iter().collect::<BTreeSet<_>>(),
        blobs_of(&a)
    );
    assert!(s.snapshot_dir(&a.chain_ids[0]).expect("a's snapshot").is_dir());
    assert!(!s.root().join("containers/cb").exists());

    // a's image is removed but its container still runs: the snapshot stays, the blobs go.
    s.remove("keelson.test/a").expect("remove a");
    let report = s.gc().expect("gc");
    assert_eq!(report.blobs.iter().cloned().collect::<BTreeSet<_>>(), blobs_of(&a));
    assert!(report.snapshots.is_empty());
    assert!(s.snapshot_dir(&a.chain_ids[0]).expect("still used").is_dir());

    s.release_rootfs("ca").expect("release a");
    let report = s.gc().expect("gc");
    assert_eq!(report.snapshots, a.chain_ids);
    assert!(names_in(&s.root().join("snapshots")).is_empty());
    assert!(s.content().list().expect("list").is_empty());
}
