//! cgroup v2 for pods and containers: layout detection, the pod tree, resource conversions,
//! limits and stats.
//!
//! Keelson uses only the cgroup2 hierarchy (DESIGN.md). On a pure v2 host (the OS image, the
//! VM tier) pods get limits; on the hybrid development machines (cgroup2 at
//! `/sys/fs/cgroup/unified` with no controllers) pods are still placed in the v2 tree for
//! accounting and BPF hooks, and [`CgroupSetup::limits_enabled`] is false. Nothing here ever
//! touches a v1 hierarchy.
//!
//! Every file operation goes through [`CgroupFs`]: [`RealCgroupFs`] over a mount point (or a
//! tempdir in tests) and [`FakeCgroupFs`], an in-memory model of the kernel's rules for unit
//! tests here and in other modules. We write our own small layer instead of using
//! `cgroups-rs` (zbus, nix 0.25, 54 s of build, TOOLCHAIN.md) or libcgroups (which libcontainer
//! drives inside the shim for container leaves): pods need only directory creation,
//! `subtree_control`, five limit files and the stats files.

pub mod convert;
pub mod detect;
pub mod fs;
pub mod pod;
pub mod stats;

use std::path::PathBuf;

pub use detect::{detect, detect_host, CgroupSetup};
pub use fs::{CgroupFs, FakeCgroupFs, RealCgroupFs};
pub use pod::{apply_limits, Layout, PodCgroup};
pub use stats::{read_stats, CgroupStats, OomWatcher};

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation on the cgroup hierarchy failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`read`, `write`, `create cgroup`, …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A cgroup path that is absolute or climbs out of the hierarchy.
    #[error("cgroup path {path} leaves the hierarchy")]
    BadPath {
        /// The path as given.
        path: PathBuf,
    },
    /// A pod uid that cannot name a cgroup.
    #[error("pod uid {uid:?} cannot name a cgroup: expected 1 to 128 characters of [A-Za-z0-9_-]")]
    BadPodUid {
        /// The uid as given.
        uid: String,
    },
    /// A cgroup file holds something unexpected.
    #[error("unexpected content {line:?} in {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending text.
        line: String,
    },
    /// A line of `/proc/self/mountinfo` is malformed.
    #[error("malformed mountinfo line {line}: {text:?}")]
    Mountinfo {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
