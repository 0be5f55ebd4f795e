//! What the runtime itself persists, beside the shim's own files, in
//! `<state_dir>/sandboxes/<id>/`: `sandbox.json` (the sandbox's config and where its pieces
//! are) and `records/<container-id>.json` (each container's config and bundle). Versioned
//! and written atomically like the shim's files, so a restarted runtime re-adopts everything.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use keelson_shim_proto::state::{self, StateError, Versioned, STATE_VERSION};
use serde::{Deserialize, Serialize};

use crate::config::{ContainerConfig, ContainerId, SandboxConfig, SandboxId};

/// `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SandboxRecord {
    pub version: u32,
    pub id: SandboxId,
    pub config: SandboxConfig,
    pub created_at_ns: i64,
    pub netns_path: Option<PathBuf>,
    pub ips: Vec<IpAddr>,
    /// The pod cgroup, relative to the cgroup2 root.
    pub cgroup_path: Option<PathBuf>,
    pub cgroup_limits: bool,
    pub shim_pid: i32,
    pub socket: PathBuf,
    /// The pod's shared `/dev/shm` (a tmpfs), when it has its own IPC namespace.
    pub shm: Option<PathBuf>,
    pub stopped: bool,
}

/// `records/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContainerRecord {
    pub version: u32,
    pub id: ContainerId,
    pub sandbox_id: SandboxId,
    pub config: ContainerConfig,
    pub image: String,
    pub stop_signal: i32,
    pub bundle: PathBuf,
    /// The runtime mounted an overlay at `<bundle>/rootfs`.
    pub overlay: bool,
    pub log_path: PathBuf,
    pub cgroup_dir: Option<PathBuf>,
}

impl Versioned for SandboxRecord {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for ContainerRecord {
    fn version(&self) -> u32 {
        self.version
    }
}

pub(crate) fn sandbox_file(dir: &Path) -> PathBuf {
    dir.join("sandbox.json")
}

pub(crate) fn record_file(dir: &Path, id: &ContainerId) -> PathBuf {
    dir.join("records").join(format!("{id}.json"))
}

pub(crate) fn write<T: Serialize>(path: &Path, v: &T) -> Result<(), StateError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|source| StateError::Io {
            op: "create dir for",
            path: path.to_owned(),
            source,
        })?;
    }
    state::write_atomic(path, v)
}

/// Reads every container record of a sandbox directory.
pub(crate) fn read_records(dir: &Path) -> Result<Vec<ContainerRecord>, StateError> {
    let rd = match std::fs::read_dir(dir.join("records")) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::Io { op: "list", path: dir.join("records"), source })
        }
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(state::read(&p)?);
        }
    }
    Ok(out)
}

pub(crate) const VERSION: u32 = STATE_VERSION;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::config::PodMeta;

    #[test]
    fn sandbox_and_container_records_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let sid = SandboxId::new("abc").unwrap();
        let rec = SandboxRecord {
            version: VERSION,
            id: sid.clone(),
            config: SandboxConfig::new(PodMeta::new("p", "n", "u")),
            created_at_ns: 5,
            netns_path: Some("/run/keelson/netns/abc".into()),
            ips: vec!["10.0.0.2".parse().unwrap()],
            cgroup_path: Some("keelson/burstable/podu".into()),
            cgroup_limits: false,
            shim_pid: 10,
            socket: "/s".into(),
            shm: None,
            stopped: false,
        };
        write(&sandbox_file(d.path()), &rec).unwrap();
        let back: SandboxRecord = state::read(&sandbox_file(d.path())).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&rec).unwrap());
        assert!(read_records(d.path()).unwrap().is_empty());
    }
}
