//! Privileged tests of the cgroup v2 layer against the host's real cgroup2 hierarchy: a pod
//! tree is created under a test-only top cgroup, a process is placed in the shim leaf, stats
//! are read, and removal kills it and removes the tree.
//!
//! Run: `KEELSON_TEST_TIERS=privileged cargo test -p keelson-tests --test cgroup`

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use keelson_runtime::cgroup::{self, CgroupFs, Layout, PodCgroup, RealCgroupFs};
use keelson_runtime::config::{QosClass, Resources};
use keelson_tests::Tier;

/// Removes the test's top cgroup (and anything left in it) and kills the child, also on panic.
struct Cleanup {
    fs: RealCgroupFs,
    base: PathBuf,
    child: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.fs.kill(&self.base);
        remove_tree(&self.fs, &self.base);
    }
}

fn remove_tree(fs: &RealCgroupFs, path: &Path) {
    for child in fs.children(path).unwrap_or_default() {
        remove_tree(fs, &path.join(child));
    }
    let _ = fs.remove_dir(path);
}

fn no_cgroup2() -> Option<String> {
    match cgroup::detect_host() {
        Ok(setup) if setup.v2_root().is_some() => None,
        Ok(_) => Some("no cgroup2 hierarchy mounted".into()),
        Err(e) => Some(format!("cannot read mountinfo: {e}")),
    }
}

#[test]
fn pod_cgroup_holds_the_shim_and_removal_kills_what_is_left() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root(), no_cgroup2());
    pod_cgroup_lifecycle().expect("pod cgroup lifecycle");
}

fn pod_cgroup_lifecycle() -> anyhow::Result<()> {
    let setup = cgroup::detect_host()?;
    let root = setup.v2_root().expect("checked by no_cgroup2").to_owned();
    let fs = RealCgroupFs::new(&root);
    let limits = setup.limits_enabled(&fs);
    let base = PathBuf::from(format!("keelson-test-{}", std::process::id()));
    let mut guard = Cleanup { fs: fs.clone(), base: base.clone(), child: None };

    let layout = Layout { base: base.clone() };
    let resources = Resources {
        cpu_request_millis: Some(250),
        cpu_limit_millis: Some(500),
        memory_limit_bytes: Some(64 << 20),
        pids_limit: Some(32),
        ..Resources::default()
    };
    let pod =
        PodCgroup::create(&fs, &layout, QosClass::Burstable, "test-uid-1", limits, &resources)?;
    assert!(root.join(pod.shim()).is_dir());
    if limits {
        assert_eq!(fs.read(&pod.path, "memory.max")?.trim(), (64u64 << 20).to_string());
        assert_eq!(fs.read(&pod.path, "cpu.max")?.trim(), "50000 100000");
        assert_eq!(fs.read(&pod.path, "pids.max")?.trim(), "32");
    } else {
        eprintln!("cgroup limits are off on this host ({setup:?}): checking placement only");
    }

    let child = Command::new("sleep").arg("300").spawn()?;
    let pid = i32::try_from(child.id())?;
    guard.child = Some(child);
    pod.add_shim(&fs, pid)?;
    assert_eq!(layout.list_pods(&fs)?, vec![(QosClass::Burstable, "test-uid-1".to_owned())]);
    assert_eq!(fs.pids(&pod.shim())?, vec![pid]);

    let stats = cgroup::read_stats(&fs, &pod.shim())?;
    assert!(stats.cpu_usage_usec.is_some(), "cpu.stat has usage on every cgroup2 cgroup");
    if limits {
        assert_eq!(stats.pids_current, Some(1));
        assert!(stats.memory_current.is_some());
    }

    pod.remove(&fs)?;
    let status = guard.child.as_mut().expect("set above").wait()?;
    assert!(!status.success(), "the shim's process was killed: {status:?}");
    guard.child = None;
    assert!(!root.join(&pod.path).exists(), "pod cgroup removed");
    assert!(root.join(layout.qos_dir(QosClass::Burstable)).is_dir(), "QoS cgroup kept");
    Ok(())
}

#[test]
fn host_layout_is_detected_consistently_with_the_mounts() {
    keelson_tests::require!(Tier::Privileged, keelson_tests::need_root(), no_cgroup2());
    let setup = cgroup::detect_host().expect("mountinfo parses");
    let root = setup.v2_root().expect("checked by no_cgroup2");
    assert!(root.join("cgroup.controllers").is_file(), "{} is a cgroup2 root", root.display());
}
