//! The versioned protocol between Keelson's runtime and its per-pod `keelson-shim`, the shim's
//! persisted state, and the CRI log format both sides use.
//!
//! # Wire format
//! A stream unix socket at `<run_dir>/shims/<sandbox-id>.sock`. Every message is one line of
//! JSON. A client opens a connection, writes a [`Hello`] line carrying [`PROTOCOL_VERSION`]
//! (it may pipeline its first [`Request`] right behind it), and the shim answers with a
//! [`HelloReply`] and then one [`Response`] per request, in order. A shim refuses a version it
//! does not speak with a [`Response::Error`] and closes the connection.
//!
//! File descriptors (exec stdio, PTY masters, attach pipes) travel as `SCM_RIGHTS` ancillary
//! data on the same `sendmsg` as the line they belong to; each side queues received
//! descriptors in arrival order and the message says how many are its own ([`fdpass`]).
//!
//! After [`Request::Subscribe`] the connection turns into an event stream: the shim answers
//! [`Response::Subscribed`] and then writes one [`Event`] line per container or exec state
//! change, until the connection closes.
//!
//! # Versions
//! [`PROTOCOL_VERSION`] covers the socket protocol and [`state::STATE_VERSION`] the files in
//! the state dir. A new release must keep reading the previous release's version of both.
#![warn(missing_docs)]

pub mod cri_log;
pub mod fdpass;
pub mod seccomp;
pub mod state;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use state::{ContainerState, ContainerStatus, ExitStatus};

/// The version of the socket protocol this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Errors of encoding and decoding protocol lines.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line is not a valid message.
    #[error("malformed protocol line {line:?}")]
    Decode {
        /// The offending line (shortened).
        line: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The peer speaks another protocol version.
    #[error("shim protocol version {theirs} is not supported (this side speaks {ours})")]
    Version {
        /// The peer's version.
        theirs: u32,
        /// Ours.
        ours: u32,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The first line a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub protocol: u32,
}

/// The first line the shim sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The protocol version the shim speaks.
    pub protocol: u32,
    /// The sandbox this shim holds.
    pub sandbox_id: String,
    /// The shim's pid (the sandbox's pause process).
    pub shim_pid: i32,
}

/// Checks the version of a peer.
pub fn check_version(theirs: u32) -> Result<()> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Error::Version { theirs, ours: PROTOCOL_VERSION })
    }
}

/// Everything the shim needs to create a container from a prepared OCI bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// Container id (unique on the node).
    pub id: String,
    /// The bundle directory, holding `config.json` and the (mounted) rootfs.
    pub bundle: PathBuf,
    /// Keep a stdin pipe open for attach.
    pub stdin: bool,
    /// Close stdin when the first attach that used it goes away.
    pub stdin_once: bool,
    /// The spec asks for a terminal; the shim holds the PTY master.
    pub tty: bool,
    /// The CRI log file (`.../<container>/<restart>.log`).
    pub log_path: PathBuf,
    /// Rotate the log at this size.
    pub log_max_size: u64,
    /// Keep at most this many log files, the live one included.
    pub log_max_files: u32,
    /// The container's cgroup directory (absolute, on the cgroup2 mount), read for OOM kills
    /// and stats; `None` when the runtime runs without cgroups.
    pub cgroup_dir: Option<PathBuf>,
}

/// An exec into a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The container to exec in.
    pub container_id: String,
    /// Id of this exec (unique within the shim while it lives).
    pub exec_id: String,
    /// An OCI `process.json` describing the process.
    pub process_path: PathBuf,
    /// With a terminal: the response carries the PTY master. Without: the request carries the
    /// process's stdio (stdin when `stdin`, then stdout, then stderr).
    pub tty: bool,
    /// Whether a stdin descriptor is passed (without a terminal).
    pub stdin: bool,
}

/// A request to the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a container (forks a libcontainer child); answered with [`Response::Created`]
    /// once its init waits for `start`.
    Create(CreateRequest),
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Send a signal to a container's init.
    Kill {
        /// Container id.
        id: String,
        /// Signal number.
        signal: i32,
    },
    /// Remove an exited (or created) container: delete its libcontainer state and cgroup.
    Delete {
        /// Container id.
        id: String,
    },
    /// The state of one container.
    State {
        /// Container id.
        id: String,
    },
    /// The states of every container.
    List,
    /// Answered with [`Response::State`] once the container has exited (at once if it has).
    Wait {
        /// Container id.
        id: String,
    },
    /// Start an exec process; answered with [`Response::Exec`].
    Exec(ExecRequest),
    /// Answered with [`Response::ExecExited`] once the exec process has exited.
    WaitExec {
        /// Exec id.
        exec_id: String,
    },
    /// Attach to a running container: answered with [`Response::Attach`] and descriptors.
    Attach {
        /// Container id.
        id: String,
    },
    /// Resize the terminal of a container created with a TTY.
    Resize {
        /// Container id.
        id: String,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Turn this connection into an event stream.
    Subscribe,
    /// Kill every container, release the sandbox's namespaces and exit.
    Shutdown,
}

/// The shim's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Done, nothing to report.
    Ok,
    /// The request failed.
    Error {
        /// What went wrong, with its causes.
        message: String,
    },
    /// A container was created.
    Created {
        /// Pid of its init process (host pid namespace).
        pid: i32,
    },
    /// A container's state.
    State(ContainerState),
    /// Every container's state.
    List {
        /// The containers.
        containers: Vec<ContainerState>,
    },
    /// An exec process runs; with a TTY one descriptor (the PTY master) comes along.
    Exec {
        /// Its pid.
        pid: i32,
    },
    /// An exec process has exited.
    ExecExited {
        /// How.
        exit: ExitStatus,
    },
    /// Attached. Descriptors come along in this order: stdout (the terminal's output when
    /// `tty`), stderr (unless `tty`), stdin (when `stdin`: a pipe the shim copies into the
    /// container's stdin, closed for good at its end when the container is `stdin_once`; or
    /// the PTY master).
    Attach {
        /// The container has a terminal.
        tty: bool,
        /// A stdin descriptor is included.
        stdin: bool,
    },
    /// The connection is now an event stream.
    Subscribed,
}

/// Something that happened in the sandbox, pushed to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A container was started.
    Started {
        /// Container id.
        id: String,
        /// Its init pid.
        pid: i32,
    },
    /// A container's init exited and was reaped.
    Exited {
        /// Container id.
        id: String,
        /// How.
        exit: ExitStatus,
    },
    /// The kernel's OOM killer killed a process of the container (from `memory.events`).
    OomKilled {
        /// Container id.
        id: String,
    },
    /// An exec process exited.
    ExecExited {
        /// Container id.
        container_id: String,
        /// Exec id.
        exec_id: String,
        /// How.
        exit: ExitStatus,
    },
}

/// Encodes a message as one line, newline included.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("protocol messages always serialize");
    v.push(b'\n');
    v
}

/// Decodes one line (with or without its newline).
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(line).map_err(|source| Error::Decode {
        line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
        source,
    })
}

/// Splits complete lines off the front of `buf`, leaving a partial line in it.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let rest = buf.split_off(pos + 1);
        out.push(std::mem::replace(buf, rest));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_lines() {
        let reqs = vec![
            Request::Create(CreateRequest {
                id: "c1".into(),
                bundle: "/b".into(),
                stdin: true,
                stdin_once: false,
                tty: false,
                log_path: "/l/0.log".into(),
                log_max_size: 10,
                log_max_files: 2,
                cgroup_dir: Some("/sys/fs/cgroup/x".into()),
            }),
            Request::Kill { id: "c1".into(), signal: 15 },
            Request::List,
            Request::Resize { id: "c".into(), cols: 80, rows: 24 },
            Request::Subscribe,
        ];
        let mut buf = Vec::new();
        for r in &reqs {
            buf.extend(encode(r));
        }
        buf.extend(b"{\"op\":\"li");
        let lines = take_lines(&mut buf);
        assert_eq!(buf, b"{\"op\":\"li");
        let back: Vec<Request> = lines.iter().map(|l| decode(l).unwrap()).collect();
        assert_eq!(back, reqs);
    }

    #[test]
    fn wire_names_are_stable() {
        // These strings are the protocol: changing them needs a new PROTOCOL_VERSION.
        assert_eq!(
            encode(&Request::Start { id: "a".into() }),
            b"{\"op\":\"start\",\"id\":\"a\"}\n"
        );
        assert_eq!(encode(&Response::Created { pid: 7 }), b"{\"result\":\"created\",\"pid\":7}\n");
        assert_eq!(encode(&Hello { protocol: 1 }), b"{\"protocol\":1}\n");
    }

    #[test]
    fn other_protocol_versions_are_refused() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        let err = check_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    #[test]
    fn garbage_lines_are_decode_errors_not_panics() {
        assert!(decode::<Request>(b"{\"op\":\"nonsense\"}\n").is_err());
        assert!(decode::<Request>(b"\xff\xfe").is_err());
    }
}

/// How the runtime starts a shim: serialized as the shim's only argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The sandbox id.
    pub sandbox_id: String,
    /// Where to listen.
    pub socket: PathBuf,
    /// The sandbox's state directory (`shim.json`, `containers/`).
    pub state_dir: PathBuf,
    /// libcontainer's state root for this sandbox's containers.
    pub libcontainer_root: PathBuf,
    /// Where to pin a new network namespace; `None` keeps the host's network (and UTS).
    pub netns_path: Option<PathBuf>,
    /// Hostname to set in a new UTS namespace (ignored with the host network).
    pub hostname: String,
    /// Create a new IPC namespace (false with `hostIPC`).
    pub new_ipc: bool,
    /// The shim's own leaf cgroup directory (absolute, on the cgroup2 mount).
    pub cgroup_dir: Option<PathBuf>,
    /// The cgroup2 mount to show to libcontainer as `/sys/fs/cgroup` (in a private mount
    /// namespace of each libcontainer child) when the host's `/sys/fs/cgroup` is not cgroup2,
    /// as on hybrid hosts; `None` when `/sys/fs/cgroup` is cgroup2 already.
    pub cgroup2_mount_over: Option<PathBuf>,
    /// A file for the shim's own diagnostics.
    pub log_file: Option<PathBuf>,
    /// Namespaced sysctls to set in the new namespaces (`net.ipv4.ip_forward` style names;
    /// the runtime has checked that they belong to a namespace the shim creates).
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
}
