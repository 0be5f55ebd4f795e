//! The shim's persisted state: one versioned JSON file per container under
//! `<state_dir>/sandboxes/<sandbox-id>/containers/<container-id>.json`, plus `shim.json` in the
//! sandbox directory. Files are written atomically (temporary file, rename), so that a reader
//! (the runtime after a restart, or after either process was killed mid-write) sees either the
//! old or the new content, never a torn one. There is no fsync: the state dir is on tmpfs
//! (`/run/keelson`) and means nothing after a reboot, when every shim is gone too, so durability
//! against power loss would cost a disk flush per container transition for nothing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of every file written by this module.
pub const STATE_VERSION: u32 = 1;

/// Errors of reading and writing state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{op} state file {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("parse state file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by a release whose format we cannot read.
    #[error("state file {path} has version {version}, this release reads version {STATE_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
}

/// Lifecycle of a container as the shim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// Created, its init waits for start.
    Created,
    /// Started and not yet reaped.
    Running,
    /// Its init exited and was reaped.
    Exited,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; `128 + signal` when killed by a signal (the shell's convention, and the
    /// kubelet's).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The container's cgroup recorded an OOM kill.
    pub oom_killed: bool,
    /// When it was reaped, nanoseconds since the Unix epoch.
    pub finished_at_ns: i64,
}

/// The persisted and reported state of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Status.
    pub status: ContainerStatus,
    /// Init pid (host namespace) once created.
    pub pid: Option<i32>,
    /// Created, nanoseconds since the Unix epoch.
    pub created_at_ns: i64,
    /// Started, nanoseconds since the Unix epoch.
    pub started_at_ns: Option<i64>,
    /// How it exited, once it has.
    pub exit: Option<ExitStatus>,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// Created with a terminal.
    pub tty: bool,
    /// Created with a stdin pipe.
    pub stdin: bool,
    /// The container's cgroup directory, if any.
    pub cgroup_dir: Option<PathBuf>,
}

/// What the shim records about itself in `shim.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The sandbox id.
    pub sandbox_id: String,
    /// The shim's pid.
    pub pid: i32,
    /// Its socket.
    pub socket: PathBuf,
    /// Where the network namespace is pinned (none with the host network).
    pub netns_path: Option<PathBuf>,
    /// Started, nanoseconds since the Unix epoch.
    pub started_at_ns: i64,
}

/// A state file type: carries [`STATE_VERSION`].
pub trait Versioned {
    /// The version recorded in the value.
    fn version(&self) -> u32;
}

impl Versioned for ContainerState {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for ShimState {
    fn version(&self) -> u32 {
        self.version
    }
}

/// Writes `value` to `path` atomically: a temporary file beside it, then rename.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io = |op, source| StateError::Io { op, path: path.to_owned(), source };
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(value).expect("state values always serialize");
    let mut f = fs::File::create(&tmp).map_err(|e| io("create", e))?;
    f.write_all(&data).map_err(|e| io("write", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    Ok(())
}

/// Reads a state file, refusing versions this release cannot read.
pub fn read<T: Versioned + for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StateError> {
    let data = fs::read(path).map_err(|source| StateError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    #[derive(Deserialize)]
    struct V {
        version: u32,
    }
    let v: V = serde_json::from_slice(&data)
        .map_err(|source| StateError::Parse { path: path.to_owned(), source })?;
    if v.version != STATE_VERSION {
        return Err(StateError::Version { path: path.to_owned(), version: v.version });
    }
    let value: T = serde_json::from_slice(&data)
        .map_err(|source| StateError::Parse { path: path.to_owned(), source })?;
    debug_assert_eq!(value.version(), STATE_VERSION);
    Ok(value)
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn sample() -> ContainerState {
        ContainerState {
            version: STATE_VERSION,
            id: "c1".into(),
            bundle: "/b".into(),
            status: ContainerStatus::Exited,
            pid: Some(42),
            created_at_ns: 1,
            started_at_ns: Some(2),
            exit: Some(ExitStatus {
                code: 137,
                signal: Some(9),
                oom_killed: true,
                finished_at_ns: 3,
            }),
            log_path: "/l".into(),
            tty: false,
            stdin: false,
            cgroup_dir: None,
        }
    }

    #[test]
    fn state_files_round_trip_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c1.json");
        write_atomic(&p, &sample()).unwrap();
        let back: ContainerState = read(&p).unwrap();
        assert_eq!(back, sample());
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c1.json")]);
    }

    #[test]
    fn state_files_of_an_unknown_version_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c1.json");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = 99.into();
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = read::<ContainerState>(&p).unwrap_err();
        assert!(matches!(err, StateError::Version { version: 99, .. }), "{err}");
    }

    #[test]
    fn torn_state_files_are_parse_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c1.json");
        fs::write(&p, b"{\"version\":1,\"id\":").unwrap();
        assert!(matches!(read::<ContainerState>(&p), Err(StateError::Parse { .. })));
    }
}
