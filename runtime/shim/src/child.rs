//! Forked children that call libcontainer: one per container create and one per exec.
//!
//! The child resets the signal state it inherited from the shim (blocked SIGCHLD/SIGTERM for
//! the signalfd, ignored SIGPIPE: both would otherwise leak into the container's process), on
//! hybrid hosts shows the cgroup2 mount as `/sys/fs/cgroup` in a private mount namespace (see
//! [`crate::sys::cgroup2_over_sys_fs_cgroup`]), runs libcontainer's `build()`, and reports one
//! line on its result socket: `ok <pid>` (with the PTY master attached when a terminal was
//! asked for) or `error <message>`. The container's init (or the exec process) is re-parented
//! to the shim, the subreaper, when libcontainer's intermediate process exits.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use keelson_shim_proto::fdpass;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
use nix::unistd::{fork, ForkResult, Pid};

/// What a child should do.
#[derive(Debug)]
pub enum Job {
    /// Create a container from a bundle.
    Create {
        /// Container id.
        id: String,
        /// Bundle directory.
        bundle: PathBuf,
    },
    /// Start a process in a running container.
    Exec {
        /// Container id.
        container_id: String,
        /// The OCI process description.
        process_path: PathBuf,
    },
}

/// The descriptors a child hands to libcontainer.
#[derive(Debug, Default)]
pub struct Stdio {
    /// stdin of the process (`None`: the shim's, /dev/null).
    pub stdin: Option<OwnedFd>,
    /// stdout.
    pub stdout: Option<OwnedFd>,
    /// stderr.
    pub stderr: Option<OwnedFd>,
    /// Bind a console socket here and receive the PTY master.
    pub console: Option<PathBuf>,
}

/// Forks a child for `job`. Returns its pid and the shim's end of its result socket.
pub fn spawn(
    job: Job,
    stdio: Stdio,
    root: &Path,
    cgroup2_over: Option<&Path>,
) -> std::io::Result<(Pid, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    // The console listener is bound before the fork so the socket file exists when
    // libcontainer connects; only the child keeps it.
    let console = match &stdio.console {
        Some(p) => {
            let _ = std::fs::remove_file(p);
            Some(UnixListener::bind(p)?)
        }
        None => None,
    };
    // SAFETY: the shim is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(theirs);
            drop(console);
            Ok((child, ours))
        }
        ForkResult::Child => {
            drop(ours);
            let res = run(job, stdio, console, root, cgroup2_over);
            let mut sock = theirs;
            match res {
                Ok((pid, master)) => {
                    let line = format!("ok {pid}\n");
                    let fds: Vec<_> = master.iter().map(|m| m.as_fd()).collect();
                    let _ = fdpass::send_with_fds(sock.as_fd(), line.as_bytes(), &fds);
                    // SAFETY: _exit ends the child without running the shim's destructors.
                    unsafe { libc::_exit(0) }
                }
                Err(msg) => {
                    let _ = writeln!(sock, "error {}", msg.replace('\n', " "));
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) }
                }
            }
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn run(
    job: Job,
    stdio: Stdio,
    console: Option<UnixListener>,
    root: &Path,
    cgroup2_over: Option<&Path>,
) -> Result<(i32, Option<OwnedFd>), String> {
    SigSet::all().thread_unblock().map_err(|e| format!("unblock signals: {e}"))?;
    // SAFETY: restoring the default disposition installs no handler.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|e| format!("reset SIGPIPE: {e}"))?;
    if let Some(src) = cgroup2_over {
        crate::sys::cgroup2_over_sys_fs_cgroup(src)
            .map_err(|e| format!("show {} as /sys/fs/cgroup: {e}", src.display()))?;
    }
    let id = match &job {
        Job::Create { id, .. } => id.clone(),
        Job::Exec { container_id, .. } => container_id.clone(),
    };
    let bundle = match &job {
        Job::Create { bundle, .. } => bundle.as_path(),
        Job::Exec { process_path, .. } => process_path.parent().unwrap_or(Path::new("/")),
    };
    let executor = crate::executor::SeccompExecutor::for_bundle(bundle)?;
    let mut b = ContainerBuilder::new(id, SyscallType::Linux)
        .with_root_path(root)
        .map_err(|e| format!("libcontainer root {}: {}", root.display(), chain(&e)))?
        .with_console_socket(stdio.console.as_deref())
        .with_executor(executor);
    if let Some(fd) = stdio.stdin {
        b = b.with_stdin(fd);
    }
    if let Some(fd) = stdio.stdout {
        b = b.with_stdout(fd);
    }
    if let Some(fd) = stdio.stderr {
        b = b.with_stderr(fd);
    }
    let pid = match job {
        Job::Create { bundle, .. } => {
            let c = b
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("create container: {}", chain(&e)))?;
            c.pid().ok_or("created container has no pid")?.as_raw()
        }
        Job::Exec { process_path, .. } => b
            .as_tenant()
            .with_process(Some(&process_path))
            .with_detach(true)
            .build()
            .map_err(|e| format!("exec: {}", chain(&e)))?
            .as_raw(),
    };
    let master = match console {
        Some(l) => {
            let (conn, _) = l.accept().map_err(|e| format!("accept console connection: {e}"))?;
            let mut buf = [0u8; 64];
            let (_, fds) = fdpass::recv_with_fds(conn.as_fd(), &mut buf)
                .map_err(|e| format!("receive PTY master: {e}"))?;
            Some(fds.into_iter().next().ok_or("no PTY master received")?)
        }
        None => None,
    };
    Ok((pid, master))
}
