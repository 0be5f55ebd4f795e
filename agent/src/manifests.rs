//! Static pod manifests: a directory of `core/v1` Pod files (YAML or JSON), watched, turned
//! into desired-state [`Snapshot`]s keyed by file.
//!
//! Naming is the kubelet's for static pods: the name gets `-<nodename>` appended, the
//! namespace defaults to `default`, and the uid is derived from the file's content and the
//! node name (the same file on the same node always gives the same uid, so a restarted agent
//! finds its pods again; a changed file gives a new uid, so the pod is replaced). The hash is
//! also recorded in the `kubernetes.io/config.hash` annotation, and the source file in
//! `kubernetes.io/config.source`/`keelson.dev/manifest`.
//!
//! Files whose names start with `.` or end with `~` (editor and atomic-write temporaries) are
//! skipped; everything else must be one Pod. A file that cannot be read or parsed goes into
//! the snapshot's error list with its path and reason, and never affects other files. Two files
//! defining the same pod: the first by path wins, the other is an error.
//!
//! [`Watcher::run`] rescans on every inotify event of the directory and periodically (a
//! safety net for missed events and for a directory that appears later).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use sha2::{Digest, Sha256};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::api::registry::ManifestError;

/// Annotation: the hash the pod's uid is derived from.
pub const ANNOTATION_HASH: &str = "kubernetes.io/config.hash";
/// Annotation: where the pod came from (`file`).
pub const ANNOTATION_SOURCE: &str = "kubernetes.io/config.source";
/// Annotation: the manifest file.
pub const ANNOTATION_MANIFEST: &str = "keelson.dev/manifest";

/// A pod from a manifest file, named for this node.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    /// The file.
    pub path: PathBuf,
    /// The pod, with name, namespace, uid and annotations set.
    pub pod: Pod,
    /// The content hash (hex).
    pub hash: String,
}

impl StaticPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
            self.pod.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

/// The desired state read from the directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Valid pods by file.
    pub pods: BTreeMap<PathBuf, StaticPod>,
    /// Files that could not be used.
    pub errors: Vec<ManifestError>,
}

/// Whether `name` is a manifest candidate.
fn is_candidate(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with('~') && !name.ends_with(".swp")
}

/// Parses one manifest's `content` into the static pod it defines on `node`.
pub fn parse(path: &Path, content: &[u8], node: &str) -> Result<StaticPod, String> {
    let text = std::str::from_utf8(content).map_err(|_| "not UTF-8 text".to_owned())?;
    if text.trim().is_empty() {
        return Err("empty file".into());
    }
    // JSON is YAML; one document only.
    let mut docs = serde_yaml_ng::Deserializer::from_str(text);
    let first = docs.next().ok_or_else(|| "empty file".to_owned())?;
    let value: serde_yaml_ng::Value =
        serde::Deserialize::deserialize(first).map_err(|e| e.to_string())?;
    if docs.next().is_some() {
        return Err("more than one document: a manifest holds exactly one Pod".into());
    }
    let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
    let api = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
    if kind != "Pod" || api != "v1" {
        return Err(format!(
            "apiVersion {api:?}, kind {kind:?}: only apiVersion v1, kind Pod is supported"
        ));
    }
    let mut pod: Pod = serde_yaml_ng::from_value(value).map_err(|e| e.to_string())?;
    let name = pod.metadata.name.clone().ok_or_else(|| "metadata.name: required".to_owned())?;
    let mut h = Sha256::new();
    h.update(content);
    h.update([0]);
    h.update(node.as_bytes());
    let hash = hex::encode(&h.finalize()[..16]);
    let md = &mut pod.metadata;
    md.name = Some(format!("{name}-{}", node.to_lowercase()));
    md.namespace = Some(md.namespace.clone().unwrap_or_else(|| "default".into()));
    md.uid = Some(uuid_from(&hash));
    let ann = md.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(ANNOTATION_HASH.into(), hash.clone());
    ann.insert(ANNOTATION_SOURCE.into(), "file".into());
    ann.insert(ANNOTATION_MANIFEST.into(), path.display().to_string());
    Ok(StaticPod { path: path.to_owned(), pod, hash })
}

/// A uid shaped like a UUID from 32 hex characters.
fn uuid_from(hex: &str) -> String {
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Reads the directory once.
pub fn scan(dir: &Path, node: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            snap.errors.push(ManifestError {
                path: dir.to_owned(),
                message: "the manifest directory does not exist".into(),
            });
            return snap;
        }
        Err(e) => {
            snap.errors.push(ManifestError { path: dir.to_owned(), message: format!("read: {e}") });
            return snap;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_candidate))
        .map(|e| e.path())
        .filter(|p| !p.is_dir())
        .collect();
    paths.sort();
    let mut owners: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in paths {
        let res = std::fs::read(&path)
            .map_err(|e| format!("read: {e}"))
            .and_then(|c| parse(&path, &c, node));
        match res {
            Ok(sp) => {
                let key = sp.key();
                if let Some(other) = owners.get(&key) {
                    snap.errors.push(ManifestError {
                        path,
                        message: format!("pod {key} is already defined by {}", other.display()),
                    });
                    continue;
                }
                owners.insert(key, path.clone());
                snap.pods.insert(path, sp);
            }
            Err(message) => {
                tracing::warn!(path = %path.display(), %message, "invalid manifest");
                snap.errors.push(ManifestError { path, message });
            }
        }
    }
    snap
}

/// Watches a manifest directory.
#[derive(Debug, Clone)]
pub struct Watcher {
    /// The directory.
    pub dir: PathBuf,
    /// This node's name.
    pub node: String,
    /// How often to rescan without events.
    pub rescan: Duration,
}

impl Watcher {
    /// A watcher of `dir` for `node`, rescanning every 20 s (the kubelet's file check period).
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        Self { dir: dir.into(), node: node.into(), rescan: Duration::from_secs(20) }
    }

    fn inotify(&self) -> Option<AsyncFd<Ino>> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF;
        if let Err(e) = ino.add_watch(&self.dir, mask) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "no inotify watch yet");
            return None;
        }
        // SAFETY: the AsyncFd owns the inotify descriptor; nothing else closes or replaces it.
        unsafe { AsyncFd::register_with_interest(Ino(ino), tokio::io::Interest::READABLE) }.ok()
    }

    /// Publishes a snapshot on `tx` at start and whenever the directory's contents change,
    /// until every receiver is gone.
    pub async fn run(self, tx: watch::Sender<Snapshot>) {
        let mut ino = self.inotify();
        loop {
            let node = self.node.clone();
            let dir = self.dir.clone();
            let snap = match tokio::task::spawn_blocking(move || scan(&dir, &node)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "manifest scan task failed");
                    Snapshot::default()
                }
            };
            tx.send_if_modified(|cur| {
                let changed = *cur != snap;
                if changed {
                    *cur = snap;
                }
                changed
            });
            if tx.is_closed() {
                return;
            }
            let event = async {
                match &ino {
                    Some(fd) => match fd.readable().await {
                        Ok(mut guard) => {
                            // Drain; the events themselves do not matter, a rescan follows.
                            let gone = match fd.get_ref().0.read_events() {
                                Ok(evs) => evs.iter().any(|e| {
                                    e.mask.intersects(
                                        AddWatchFlags::IN_DELETE_SELF
                                            | AddWatchFlags::IN_MOVE_SELF
                                            | AddWatchFlags::IN_IGNORED,
                                    )
                                }),
                                Err(nix::errno::Errno::EAGAIN) => {
                                    guard.clear_ready();
                                    false
                                }
                                Err(_) => true,
                            };
                            gone
                        }
                        Err(_) => true,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                gone = event => if gone { ino = None; },
                () = tokio::time::sleep(self.rescan) => {}
                () = tx.closed() => return,
            }
            if ino.is_none() {
                ino = self.inotify();
            }
        }
    }
}

/// The inotify instance, as a raw fd for tokio.
struct Ino(Inotify);

impl AsRawFd for Ino {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: busybox}]}\n";

    #[test]
    fn static_pods_are_named_for_the_node_in_the_default_namespace() {
        let sp = parse(Path::new("/m/web.yaml"), POD.as_bytes(), "Edge-1").unwrap();
        assert_eq!(sp.pod.metadata.name.as_deref(), Some("web-edge-1"));
        assert_eq!(sp.pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(sp.key(), "default/web-edge-1");
        let ann = sp.pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[ANNOTATION_HASH], sp.hash);
        assert_eq!(ann[ANNOTATION_SOURCE], "file");
        assert_eq!(ann[ANNOTATION_MANIFEST], "/m/web.yaml");
    }

    #[test]
    fn uids_are_stable_for_the_same_content_and_change_with_it() {
        let uid = |c: &str, n: &str| {
            parse(Path::new("/m/a"), c.as_bytes(), n).unwrap().pod.metadata.uid.unwrap()
        };
        assert_eq!(uid(POD, "n1"), uid(POD, "n1"));
        assert_ne!(uid(POD, "n1"), uid(POD, "n2"));
        assert_ne!(uid(POD, "n1"), uid(&POD.replace("busybox", "busybox:1"), "n1"));
        let u = uid(POD, "n1");
        assert_eq!(u.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{u}");
    }

    #[test]
    fn json_manifests_are_read_too() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"kube-system"},"spec":{"containers":[{"name":"c","image":"b"}]}}"#;
        let sp = parse(Path::new("/m/j.json"), json.as_bytes(), "n").unwrap();
        assert_eq!(sp.key(), "kube-system/j-n");
    }

    #[test]
    fn invalid_manifests_say_why() {
        let err = |c: &str| parse(Path::new("/m/x"), c.as_bytes(), "n").unwrap_err();
        assert_eq!(err("  \n"), "empty file");
        assert!(
            err("apiVersion: apps/v1\nkind: Deployment\n").contains("only apiVersion v1, kind Pod")
        );
        assert!(err(&format!("{POD}---\n{POD}")).starts_with("more than one document"));
        assert_eq!(
            err("apiVersion: v1\nkind: Pod\nspec: {containers: []}\n"),
            "metadata.name: required"
        );
        assert!(!err("apiVersion: v1\nkind: Pod\nmetadata: {name: [}").is_empty());
        assert!(!err("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 5}\n")
            .is_empty());
    }

    #[test]
    fn a_scan_keeps_good_files_and_lists_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), POD).unwrap();
        std::fs::write(dir.path().join("b.yaml"), "kind: Nope").unwrap();
        std::fs::write(dir.path().join("c.yaml"), POD.replace("web", "other")).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "garbage").unwrap();
        std::fs::write(dir.path().join("a.yaml~"), "garbage").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let s = scan(dir.path(), "n");
        assert_eq!(s.pods.len(), 2);
        assert!(s.pods.contains_key(&dir.path().join("a.yaml")));
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].path, dir.path().join("b.yaml"));
    }

    #[test]
    fn a_pod_defined_twice_is_an_error_on_the_second_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), POD).unwrap();
        std::fs::write(dir.path().join("2.yaml"), POD.replace("busybox", "busybox:2")).unwrap();
        let s = scan(dir.path(), "n");
        assert_eq!(s.pods.len(), 1);
        assert!(s.pods.contains_key(&dir.path().join("1.yaml")));
        assert_eq!(s.errors[0].path, dir.path().join("2.yaml"));
        assert!(s.errors[0].message.starts_with("pod default/web-n is already defined by"));
    }

    #[test]
    fn a_missing_directory_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let s = scan(&dir.path().join("nope"), "n");
        assert!(s.pods.is_empty());
        assert_eq!(s.errors[0].message, "the manifest directory does not exist");
    }

    async fn next(rx: &mut watch::Receiver<Snapshot>) -> Snapshot {
        tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.unwrap().unwrap();
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn the_watcher_publishes_additions_changes_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = watch::channel(Snapshot::default());
        // A long rescan period: only inotify can make this test pass in time.
        let w = Watcher { rescan: Duration::from_secs(3600), ..Watcher::new(dir.path(), "n") };
        let task = tokio::spawn(w.run(tx));
        let f = dir.path().join("web.yaml");
        std::fs::write(&f, POD).unwrap();
        let mut s = next(&mut rx).await;
        while s.pods.is_empty() {
            s = next(&mut rx).await;
        }
        let uid = s.pods[&f].pod.metadata.uid.clone();
        std::fs::write(&f, POD.replace("busybox", "busybox:2")).unwrap();
        let mut s2 = next(&mut rx).await;
        while s2.pods.get(&f).map(|p| p.pod.metadata.uid.clone()) == Some(uid.clone()) {
            s2 = next(&mut rx).await;
        }
        assert!(s2.pods.contains_key(&f));
        std::fs::remove_file(&f).unwrap();
        let mut s3 = next(&mut rx).await;
        while !s3.pods.is_empty() {
            s3 = next(&mut rx).await;
        }
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_directory_created_later_is_picked_up_by_the_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("manifests");
        let (tx, mut rx) = watch::channel(Snapshot::default());
        let w = Watcher { rescan: Duration::from_millis(50), ..Watcher::new(&m, "n") };
        let _task = tokio::spawn(w.run(tx));
        let s = next(&mut rx).await;
        assert_eq!(s.errors.len(), 1);
        std::fs::create_dir(&m).unwrap();
        std::fs::write(m.join("web.yaml"), POD).unwrap();
        let mut s = next(&mut rx).await;
        while s.pods.is_empty() {
            s = next(&mut rx).await;
        }
        assert!(s.errors.is_empty());
    }
}
