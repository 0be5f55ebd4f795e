//! The pod cgroup tree (DESIGN.md): `keelson/` with Guaranteed pods directly under it and
//! `burstable/`, `besteffort/` beside them; `pod<uid>/` with a leaf `shim` for the shim and one
//! leaf per container (cgroup v2 allows processes only in leaves).
//!
//! With limits on, `+cpu +memory +pids` (those the parent offers) are enabled in
//! `cgroup.subtree_control` from the hierarchy's root down to the pod, and the pod's own
//! requests and limits are written to the pod cgroup. Container leaves are created by
//! libcontainer from the spec's `cgroupsPath` ([`PodCgroup::cgroups_path`]); their limits come
//! from `linux.resources`, or from [`apply_limits`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::convert;
use super::detect::POD_CONTROLLERS;
use super::fs::CgroupFs;
use super::{Error, Result};
use crate::config::{ContainerId, QosClass, Resources};

/// Name of the shim's leaf in a pod cgroup.
pub const SHIM_LEAF: &str = "shim";

/// Where Keelson's tree lives in the cgroup2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The top cgroup, relative to the hierarchy's root (`keelson`; tests and simulated nodes
    /// use others such as `keelson-node2`).
    pub base: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self { base: PathBuf::from("keelson") }
    }
}

impl Layout {
    /// The cgroup of a QoS class.
    pub fn qos_dir(&self, qos: QosClass) -> PathBuf {
        match qos {
            QosClass::Guaranteed => self.base.clone(),
            QosClass::Burstable => self.base.join("burstable"),
            QosClass::BestEffort => self.base.join("besteffort"),
        }
    }

    /// The pods that have a cgroup under this layout, as (QoS class, pod uid), sorted: what a
    /// restarted agent adopts or garbage-collects.
    pub fn list_pods(&self, fs: &dyn CgroupFs) -> Result<Vec<(QosClass, String)>> {
        let mut out = Vec::new();
        for qos in [QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort] {
            for child in fs.children(&self.qos_dir(qos))? {
                if let Some(uid) = child.strip_prefix("pod") {
                    if self.pod_dir(qos, uid).is_ok() {
                        out.push((qos, uid.to_owned()));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// The cgroup of a pod, `pod<uid>` under its QoS class.
    pub fn pod_dir(&self, qos: QosClass, pod_uid: &str) -> Result<PathBuf> {
        let ok = !pod_uid.is_empty()
            && pod_uid.len() <= 128
            && pod_uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Error::BadPodUid { uid: pod_uid.to_owned() });
        }
        Ok(self.qos_dir(qos).join(format!("pod{pod_uid}")))
    }
}

/// A pod's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod cgroup, relative to the hierarchy's root.
    pub path: PathBuf,
    /// Whether controllers were enabled and limits written.
    pub limits: bool,
}

/// Enables the pod controllers the cgroup `path` is offered in its `cgroup.subtree_control`.
fn enable_controllers(fs: &dyn CgroupFs, path: &Path) -> Result<()> {
    let offered = fs.read(path, "cgroup.controllers")?;
    let enabled = fs.read(path, "cgroup.subtree_control")?;
    let missing: Vec<String> = POD_CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs.write(path, "cgroup.subtree_control", &missing.join(" "))
}

/// Writes requests and limits to the cgroup `path`: `cpu.weight`, `cpu.max`, `memory.max`,
/// `memory.swap.max` (0: no swap), `pids.max`. A file whose controller is not enabled there
/// is skipped.
pub fn apply_limits(fs: &dyn CgroupFs, path: &Path, r: &Resources) -> Result<()> {
    // The API server defaults a missing request to the limit.
    let request = r.cpu_request_millis.or(r.cpu_limit_millis);
    let writes = [
        ("cpu.weight", convert::cpu_weight(request).to_string()),
        ("cpu.max", convert::cpu_max(r.cpu_limit_millis)),
        ("memory.max", convert::max_or(r.memory_limit_bytes)),
        (
            "memory.swap.max",
            if r.memory_limit_bytes.is_some() { "0".to_owned() } else { "max".to_owned() },
        ),
        ("pids.max", convert::max_or(r.pids_limit)),
    ];
    for (file, value) in writes {
        if fs.has_file(path, file) {
            fs.write(path, file, &value)?;
        }
    }
    Ok(())
}

impl PodCgroup {
    /// Creates (or adopts) the pod's cgroup and its shim leaf. With `limits`, enables the pod
    /// controllers down the path and writes the pod-level `resources`.
    pub fn create(
        fs: &dyn CgroupFs,
        layout: &Layout,
        qos: QosClass,
        pod_uid: &str,
        limits: bool,
        resources: &Resources,
    ) -> Result<Self> {
        let path = layout.pod_dir(qos, pod_uid)?;
        super::fs::check_relative(&path)?;
        let mut level = PathBuf::new();
        if limits {
            enable_controllers(fs, &level)?;
        }
        for component in path.components() {
            level.push(component);
            fs.create_dir(&level)?;
            if limits {
                enable_controllers(fs, &level)?;
            }
        }
        let pod = Self { path, limits };
        fs.create_dir(&pod.shim())?;
        if limits {
            apply_limits(fs, &pod.path, resources)?;
        }
        tracing::debug!(path = %pod.path.display(), limits, "pod cgroup ready");
        Ok(pod)
    }

    /// The handle of an existing pod cgroup (after an agent restart), without touching it.
    pub fn open(layout: &Layout, qos: QosClass, pod_uid: &str, limits: bool) -> Result<Self> {
        Ok(Self { path: layout.pod_dir(qos, pod_uid)?, limits })
    }

    /// Moves process `pid` (the shim) into the pod's shim leaf.
    pub fn add_shim(&self, fs: &dyn CgroupFs, pid: i32) -> Result<()> {
        fs.write(&self.shim(), "cgroup.procs", &pid.to_string())
    }

    /// The shim's leaf.
    pub fn shim(&self) -> PathBuf {
        self.path.join(SHIM_LEAF)
    }

    /// A container's leaf, relative to the hierarchy's root.
    pub fn container(&self, id: &ContainerId) -> PathBuf {
        self.path.join(id.as_str())
    }

    /// The spec's `linux.cgroupsPath` for a container: its leaf as an absolute path in the
    /// cgroup2 hierarchy (`/keelson/burstable/pod<uid>/<id>`).
    pub fn cgroups_path(&self, id: &ContainerId) -> PathBuf {
        Path::new("/").join(self.container(id))
    }

    /// Writes new pod-level limits (no-op without limits).
    pub fn update(&self, fs: &dyn CgroupFs, resources: &Resources) -> Result<()> {
        if self.limits {
            apply_limits(fs, &self.path, resources)?;
        }
        Ok(())
    }

    /// Kills whatever still runs in the pod, then removes the leaves and the pod cgroup.
    /// Removing a pod that is already gone is fine.
    pub fn remove(&self, fs: &dyn CgroupFs) -> Result<()> {
        fs.kill(&self.path)?;
        // cgroup.kill and SIGKILL are asynchronous: wait (bounded) for the tree to empty.
        for _ in 0..200 {
            if tree_pids(fs, &self.path)?.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        remove_tree(fs, &self.path)
    }
}

fn tree_pids(fs: &dyn CgroupFs, path: &Path) -> Result<Vec<i32>> {
    let mut out = fs.pids(path)?;
    for child in fs.children(path)? {
        out.extend(tree_pids(fs, &path.join(child))?);
    }
    Ok(out)
}

fn remove_tree(fs: &dyn CgroupFs, path: &Path) -> Result<()> {
    for child in fs.children(path)? {
        remove_tree(fs, &path.join(child))?;
    }
    fs.remove_dir(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cgroup::fs::FakeCgroupFs;

    fn uid() -> &'static str {
        "0f1e2d3c-aaaa-bbbb-cccc-1234567890ab"
    }

    #[test]
    fn qos_classes_map_to_the_design_layout() {
        let l = Layout::default();
        assert_eq!(l.pod_dir(QosClass::Guaranteed, "u1").unwrap(), Path::new("keelson/podu1"));
        assert_eq!(
            l.pod_dir(QosClass::Burstable, "u1").unwrap(),
            Path::new("keelson/burstable/podu1")
        );
        assert_eq!(
            l.pod_dir(QosClass::BestEffort, "u1").unwrap(),
            Path::new("keelson/besteffort/podu1")
        );
    }

    #[test]
    fn hostile_pod_uids_are_refused() {
        let l = Layout::default();
        for bad in ["", "../../etc", "a/b", "x y", &"a".repeat(129)] {
            assert!(
                matches!(l.pod_dir(QosClass::Burstable, bad), Err(Error::BadPodUid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pod_with_limits_enables_controllers_down_the_path_and_writes_pod_limits() {
        let fs = FakeCgroupFs::new("cpuset cpu io memory pids", true);
        let r = Resources {
            cpu_request_millis: Some(500),
            cpu_limit_millis: Some(1500),
            memory_limit_bytes: Some(256 << 20),
            pids_limit: Some(100),
            ..Resources::default()
        };
        let pod = PodCgroup::create(&fs, &Layout::default(), QosClass::Burstable, uid(), true, &r)
            .unwrap();
        let path = Path::new("keelson/burstable").join(format!("pod{}", uid()));
        assert_eq!(pod.path, path);
        for level in ["", "keelson", "keelson/burstable", path.to_str().unwrap()] {
            let enabled = fs.read(Path::new(level), "cgroup.subtree_control").unwrap();
            for c in ["cpu", "memory", "pids"] {
                assert!(
                    enabled.split_whitespace().any(|e| e == c),
                    "{c} not enabled in {level:?}: {enabled:?}"
                );
            }
            assert!(!enabled.contains("io") && !enabled.contains("cpuset"), "{level:?}: {enabled}");
        }
        assert!(fs.exists(&path.join("shim")));
        assert_eq!(fs.read(&path, "cpu.weight").unwrap(), "59");
        assert_eq!(fs.read(&path, "cpu.max").unwrap(), "150000 100000");
        assert_eq!(fs.read(&path, "memory.max").unwrap(), (256u64 << 20).to_string());
        assert_eq!(fs.read(&path, "memory.swap.max").unwrap(), "0");
        assert_eq!(fs.read(&path, "pids.max").unwrap(), "100");
        // The shim leaf gets the controllers' files (it is a leaf below an enabled pod).
        assert!(fs.has_file(&pod.shim(), "memory.max"));
        let id = ContainerId::new("c1").unwrap();
        assert_eq!(pod.cgroups_path(&id), Path::new("/").join(&path).join("c1"));
    }

    #[test]
    fn creating_twice_adopts_and_does_not_rewrite_enabled_controllers() {
        let fs = FakeCgroupFs::new("cpu memory pids", true);
        let l = Layout::default();
        PodCgroup::create(&fs, &l, QosClass::Guaranteed, "u1", true, &Resources::default())
            .unwrap();
        let before = fs.writes().iter().filter(|w| w.1 == "cgroup.subtree_control").count();
        PodCgroup::create(&fs, &l, QosClass::Guaranteed, "u1", true, &Resources::default())
            .unwrap();
        let after = fs.writes().iter().filter(|w| w.1 == "cgroup.subtree_control").count();
        assert_eq!(before, after);
        assert!(fs.exists(Path::new("keelson/podu1/shim")));
    }

    #[test]
    fn pod_without_limits_only_creates_directories() {
        // The hybrid dev machines: the v2 root offers nothing useful.
        let fs = FakeCgroupFs::new("hugetlb", false);
        let pod = PodCgroup::create(
            &fs,
            &Layout::default(),
            QosClass::BestEffort,
            "u2",
            false,
            &Resources { memory_limit_bytes: Some(1 << 20), ..Resources::default() },
        )
        .unwrap();
        assert!(fs.exists(Path::new("keelson/besteffort/podu2/shim")));
        assert!(fs.writes().is_empty(), "wrote {:?}", fs.writes());
        pod.update(&fs, &Resources::default()).unwrap();
        assert!(fs.writes().is_empty());
    }

    #[test]
    fn only_offered_controllers_are_enabled() {
        let fs = FakeCgroupFs::new("cpu pids", true);
        let pod = PodCgroup::create(
            &fs,
            &Layout::default(),
            QosClass::Guaranteed,
            "u3",
            true,
            &Resources {
                memory_limit_bytes: Some(1 << 20),
                pids_limit: Some(5),
                ..Resources::default()
            },
        )
        .unwrap();
        assert_eq!(fs.read(Path::new("keelson"), "cgroup.subtree_control").unwrap(), "cpu pids");
        assert!(!fs.has_file(&pod.path, "memory.max"));
        assert_eq!(fs.read(&pod.path, "pids.max").unwrap(), "5");
    }

    #[test]
    fn removal_kills_remaining_processes_then_removes_leaves_and_pod() {
        for has_kill in [true, false] {
            let fs = FakeCgroupFs::new("cpu memory pids", has_kill);
            let pod = PodCgroup::create(
                &fs,
                &Layout::default(),
                QosClass::Burstable,
                "u4",
                true,
                &Resources::default(),
            )
            .unwrap();
            let c = pod.container(&ContainerId::new("c1").unwrap());
            fs.create_dir(&c).unwrap();
            fs.add_proc(&c, 100);
            fs.add_proc(&pod.shim(), 99);
            pod.remove(&fs).unwrap();
            assert!(!fs.exists(&pod.path), "has_kill={has_kill}");
            assert!(fs.exists(Path::new("keelson/burstable")), "the QoS cgroup stays");
            assert_eq!(
                fs.writes().iter().any(|w| w.1 == "cgroup.kill"),
                has_kill,
                "cgroup.kill used only when present"
            );
            // Removing again is fine.
            pod.remove(&fs).unwrap();
        }
    }

    #[test]
    fn pods_are_listed_for_adoption_and_opened_without_changes() {
        let fs = FakeCgroupFs::new("cpu memory pids", true);
        let l = Layout::default();
        let r = Resources::default();
        PodCgroup::create(&fs, &l, QosClass::Guaranteed, "g1", true, &r).unwrap();
        PodCgroup::create(&fs, &l, QosClass::BestEffort, "b1", true, &r).unwrap();
        let pod = PodCgroup::create(&fs, &l, QosClass::Burstable, "a1", true, &r).unwrap();
        // Not pods: the QoS cgroups themselves and foreign names.
        fs.create_dir(Path::new("keelson/stray")).unwrap();
        assert_eq!(
            l.list_pods(&fs).unwrap(),
            vec![
                (QosClass::Burstable, "a1".to_owned()),
                (QosClass::BestEffort, "b1".to_owned()),
                (QosClass::Guaranteed, "g1".to_owned()),
            ]
        );
        let writes = fs.writes().len();
        let opened = PodCgroup::open(&l, QosClass::Burstable, "a1", true).unwrap();
        assert_eq!(opened, pod);
        assert_eq!(fs.writes().len(), writes);
        opened.add_shim(&fs, 4242).unwrap();
        assert_eq!(fs.pids(&opened.shim()).unwrap(), vec![4242]);
        // An empty hierarchy lists nothing.
        assert!(Layout::default().list_pods(&FakeCgroupFs::new("", true)).unwrap().is_empty());
    }

    #[test]
    fn apply_limits_writes_max_for_missing_limits() {
        let fs = FakeCgroupFs::new("cpu memory pids", true);
        fs.write(Path::new(""), "cgroup.subtree_control", "+cpu +memory +pids").unwrap();
        fs.create_dir(Path::new("c")).unwrap();
        apply_limits(&fs, Path::new("c"), &Resources::default()).unwrap();
        assert_eq!(fs.read(Path::new("c"), "cpu.weight").unwrap(), "1");
        assert_eq!(fs.read(Path::new("c"), "cpu.max").unwrap(), "max 100000");
        assert_eq!(fs.read(Path::new("c"), "memory.max").unwrap(), "max");
        assert_eq!(fs.read(Path::new("c"), "memory.swap.max").unwrap(), "max");
        assert_eq!(fs.read(Path::new("c"), "pids.max").unwrap(), "max");
    }
}
