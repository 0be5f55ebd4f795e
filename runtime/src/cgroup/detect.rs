//! Which cgroup layout the host has, from `/proc/self/mountinfo`.
//!
//! The parser is a few lines over the documented mountinfo format (proc(5)); the `procfs` crate
//! would parse it too but reads `/proc` itself, while this takes the text so that the hybrid and
//! pure-v2 layouts are unit-testable.

use std::path::{Path, PathBuf};

use super::fs::CgroupFs;
use super::{Error, Result};

/// The controllers Keelson enables for pods.
pub const POD_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSetup {
    /// Pure cgroup v2 mounted at `root` (the OS image, the VM tier).
    Unified {
        /// Mount point of the cgroup2 hierarchy.
        root: PathBuf,
    },
    /// v1 hierarchies hold the controllers and cgroup2 is mounted beside them (the
    /// development machines): pods go into the v2 tree for accounting, without limits.
    Hybrid {
        /// Mount point of the cgroup2 hierarchy (`/sys/fs/cgroup/unified`).
        unified_root: PathBuf,
    },
    /// No cgroup2 mount at all: Keelson cannot place pods.
    Legacy,
}

impl CgroupSetup {
    /// The cgroup2 mount point, if there is one.
    pub fn v2_root(&self) -> Option<&Path> {
        match self {
            Self::Unified { root } => Some(root),
            Self::Hybrid { unified_root } => Some(unified_root),
            Self::Legacy => None,
        }
    }

    /// Whether resource limits can be applied: a unified hierarchy whose root offers the cpu,
    /// memory and pids controllers. `fs` is rooted at [`Self::v2_root`].
    pub fn limits_enabled(&self, fs: &dyn CgroupFs) -> bool {
        match self {
            Self::Unified { .. } => fs
                .read(Path::new(""), "cgroup.controllers")
                .map(|c| {
                    let have: Vec<&str> = c.split_whitespace().collect();
                    POD_CONTROLLERS.iter().all(|w| have.contains(w))
                })
                .unwrap_or(false),
            Self::Hybrid { .. } | Self::Legacy => false,
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` text into the cgroup layout.
///
/// cgroup2 at `/sys/fs/cgroup` is `Unified`; cgroup2 elsewhere beside v1 hierarchies is
/// `Hybrid`; cgroup2 elsewhere without v1 (a custom mount point) is `Unified` there; no
/// cgroup2 is `Legacy`. Malformed lines are errors, not guesses.
pub fn detect(mountinfo: &str) -> Result<CgroupSetup> {
    let mut v2: Vec<PathBuf> = Vec::new();
    let mut v1 = false;
    for (n, line) in mountinfo.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || Error::Mountinfo { line: n + 1, text: line.to_owned() };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let sep = fields.iter().position(|f| *f == "-").ok_or_else(bad)?;
        if sep < 6 || fields.len() < sep + 2 {
            return Err(bad());
        }
        let mount_point = unescape(fields[4]);
        match fields[sep + 1] {
            "cgroup2" => v2.push(PathBuf::from(mount_point)),
            "cgroup" => v1 = true,
            _ => {}
        }
    }
    let standard = Path::new("/sys/fs/cgroup");
    if v2.iter().any(|p| p == standard) {
        return Ok(CgroupSetup::Unified { root: standard.to_owned() });
    }
    Ok(match (v2.into_iter().next(), v1) {
        (Some(root), true) => CgroupSetup::Hybrid { unified_root: root },
        (Some(root), false) => CgroupSetup::Unified { root },
        (None, _) => CgroupSetup::Legacy,
    })
}

/// Detects the layout of this process's mount namespace.
pub fn detect_host() -> Result<CgroupSetup> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    detect(&text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cgroup::fs::FakeCgroupFs;

    /// The development machines' layout, as measured (TOOLCHAIN.md).
    const HYBRID: &str = "\
22 1 254:1 / / rw,relatime - ext4 /dev/vda rw
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A pure v2 host (systemd's default, the VM tier).
    const UNIFIED: &str = "\
22 1 254:1 / / rw,relatime - ext4 /dev/vda rw
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 23 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 23 0:24 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:8 - bpf bpf rw,mode=700
";

    #[test]
    fn hybrid_layout_of_the_dev_machines_is_detected() {
        assert_eq!(
            detect(HYBRID).unwrap(),
            CgroupSetup::Hybrid { unified_root: "/sys/fs/cgroup/unified".into() }
        );
    }

    #[test]
    fn pure_v2_layout_is_detected() {
        let setup = detect(UNIFIED).unwrap();
        assert_eq!(setup, CgroupSetup::Unified { root: "/sys/fs/cgroup".into() });
        assert_eq!(setup.v2_root(), Some(Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn v1_only_is_legacy_and_custom_v2_mounts_are_unified() {
        let legacy: String =
            HYBRID.lines().filter(|l| !l.contains("cgroup2")).map(|l| format!("{l}\n")).collect();
        assert_eq!(detect(&legacy).unwrap(), CgroupSetup::Legacy);
        let custom = "30 22 0:40 / /run/my\\040cgroup rw - cgroup2 none rw\n";
        assert_eq!(detect(custom).unwrap(), CgroupSetup::Unified { root: "/run/my cgroup".into() });
    }

    #[test]
    fn malformed_mountinfo_is_an_error() {
        let err = detect("31 23 0:28 / /sys/fs/cgroup rw,relatime tmpfs tmpfs\n").unwrap_err();
        assert!(matches!(err, Error::Mountinfo { line: 1, .. }), "{err}");
        assert!(detect("1 2 - x\n").is_err());
    }

    #[test]
    fn limits_need_a_unified_root_offering_cpu_memory_and_pids() {
        let unified = CgroupSetup::Unified { root: "/sys/fs/cgroup".into() };
        assert!(unified.limits_enabled(&FakeCgroupFs::new(
            "cpuset cpu io memory hugetlb pids rdma misc",
            true
        )));
        assert!(!unified.limits_enabled(&FakeCgroupFs::new("cpu pids", true)));
        let hybrid = CgroupSetup::Hybrid { unified_root: "/sys/fs/cgroup/unified".into() };
        assert!(!hybrid.limits_enabled(&FakeCgroupFs::new("cpu memory pids", true)));
        assert!(!CgroupSetup::Legacy.limits_enabled(&FakeCgroupFs::new("cpu memory pids", true)));
    }

    #[test]
    fn this_hosts_mountinfo_parses() {
        // Whatever the machine, its own mountinfo must parse.
        detect_host().unwrap();
    }
}
