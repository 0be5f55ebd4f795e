//! `keelson-shim`: one per pod; the pause process, subreaper and stdio owner of the pod.
//!
//! Started by the runtime as `keelson-shim <ShimConfig as JSON>` with a readiness pipe on
//! descriptor 3. It detaches (fork, `setsid`) so that it outlives the agent, moves itself into
//! its leaf cgroup, becomes the child subreaper, unshares the sandbox's network, IPC and UTS
//! namespaces (never the mount namespace: the network namespace is pinned with a bind mount
//! that must be visible on the host), brings up loopback, listens on its socket and reports
//! `ok <pid>` (or `error <message>`) on the readiness pipe. Then it serves the protocol of
//! `keelson-shim-proto` in a single-threaded poll loop ([`server`]); every libcontainer call
//! that creates a process runs in a forked child ([`child`]), because libcontainer must not run
//! in a multi-threaded process and its create path changes process-wide state.
//!
//! No tokio and no threads: the shim is a long-lived process per pod, so its memory matters.

mod child;
mod executor;
mod oneshot;
mod server;
mod sys;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use anyhow::{bail, Context, Result};
use keelson_shim_proto::state::{self, ShimState, STATE_VERSION};
use keelson_shim_proto::ShimConfig;
use nix::sched::CloneFlags;
use nix::unistd::{fork, setsid, ForkResult};

/// The descriptor on which the runtime waits for readiness.
const READY_FD: i32 = 3;

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg == "--version" {
        println!(
            "keelson-shim {} protocol {}",
            env!("CARGO_PKG_VERSION"),
            keelson_shim_proto::PROTOCOL_VERSION
        );
        return;
    }
    if arg == "run" {
        let args: Vec<String> = std::env::args().skip(2).collect();
        std::process::exit(oneshot::main(&args));
    }
    // Without a readiness pipe on descriptor 3 the shim would later hand that number to
    // something else and then close it: refuse to start.
    if nix::fcntl::fcntl(READY_FD, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        eprintln!("keelson-shim: no readiness pipe on descriptor {READY_FD}; the runtime starts this program");
        std::process::exit(2);
    }
    // SAFETY: descriptor 3 is open (checked above) and is the readiness pipe the runtime passed
    // us (documented contract); nothing else in this fresh process owns it.
    let ready = unsafe { OwnedFd::from_raw_fd(READY_FD) };
    let mut ready = File::from(ready);
    let cfg: ShimConfig = match serde_json::from_str(&arg) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(ready, "error invalid shim configuration: {e}");
            std::process::exit(2);
        }
    };
    // Detach from the runtime: our parent exits at once (the runtime reaps it) and we are
    // re-parented to init, in our own session. The child is born in its cgroup leaf when the
    // kernel can do that (no migration: see `sys::join_cgroup`).
    let mut in_cgroup = false;
    if let Some(cg) = &cfg.cgroup_dir {
        // SAFETY: the process is single-threaded here (nothing has spawned a thread).
        match unsafe { sys::fork_into_cgroup(cg) } {
            Ok(sys::Forked::Parent) => std::process::exit(0),
            Ok(sys::Forked::Child) => in_cgroup = true,
            // Old kernel or no cgroup2 directory: fork, then join (reporting errors) below.
            Err(_) => {}
        }
    }
    if !in_cgroup {
        // SAFETY: the process is single-threaded here (nothing has spawned a thread), so the
        // child may run arbitrary code.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { .. }) => std::process::exit(0),
            Ok(ForkResult::Child) => {}
            Err(e) => {
                let _ = writeln!(ready, "error fork: {e}");
                std::process::exit(1);
            }
        }
    }
    let _ = setsid();
    match setup(&cfg, in_cgroup) {
        Ok((listener, netns_pinned)) => {
            let _ = writeln!(ready, "ok {}", std::process::id());
            drop(ready);
            let mut srv = server::Server::new(cfg, listener, netns_pinned);
            let code = srv.run();
            std::process::exit(code);
        }
        Err(e) => {
            let _ = writeln!(ready, "error {e:#}");
            std::process::exit(1);
        }
    }
}

/// Everything before the loop. Returns the listening socket and whether a netns was pinned.
/// `in_cgroup`: the process was forked into `cfg.cgroup_dir` already.
fn setup(cfg: &ShimConfig, in_cgroup: bool) -> Result<(UnixListener, bool)> {
    std::env::set_current_dir("/").context("chdir /")?;
    redirect_stdio(cfg.log_file.as_deref())?;
    if let (Some(cg), false) = (&cfg.cgroup_dir, in_cgroup) {
        sys::join_cgroup(cg).with_context(|| format!("join cgroup {}", cg.display()))?;
    }
    nix::sys::prctl::set_child_subreaper(true).context("become child subreaper")?;

    let mut flags = CloneFlags::empty();
    if cfg.netns_path.is_some() {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    if cfg.new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if !flags.is_empty() {
        nix::sched::unshare(flags).context("unshare sandbox namespaces")?;
    }
    for (key, value) in &cfg.sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value).with_context(|| format!("set sysctl {key}={value}"))?;
    }
    let mut pinned = false;
    if let Some(path) = &cfg.netns_path {
        nix::unistd::sethostname(&cfg.hostname)
            .with_context(|| format!("set hostname {:?}", cfg.hostname))?;
        sys::loopback_up().context("bring up loopback")?;
        sys::pin_netns(path)
            .with_context(|| format!("pin network namespace at {}", path.display()))?;
        pinned = true;
    }

    fs::create_dir_all(cfg.state_dir.join("containers"))
        .with_context(|| format!("create state dir {}", cfg.state_dir.display()))?;
    fs::create_dir_all(&cfg.libcontainer_root)
        .with_context(|| format!("create {}", cfg.libcontainer_root.display()))?;
    if let Some(dir) = cfg.socket.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match fs::remove_file(&cfg.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("remove stale socket {}", cfg.socket.display()))
        }
    }
    let listener = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("listen on {}", cfg.socket.display()))?;
    listener.set_nonblocking(true).context("non-blocking listener")?;
    let st = ShimState {
        version: STATE_VERSION,
        sandbox_id: cfg.sandbox_id.clone(),
        pid: std::process::id() as i32,
        socket: cfg.socket.clone(),
        netns_path: cfg.netns_path.clone(),
        started_at_ns: state::now_ns(),
    };
    state::write_atomic(&cfg.state_dir.join("shim.json"), &st)?;
    Ok((listener, pinned))
}

/// stdin and stdout to /dev/null, stderr to the diagnostics file (or /dev/null).
fn redirect_stdio(log: Option<&Path>) -> Result<()> {
    let null =
        OpenOptions::new().read(true).write(true).open("/dev/null").context("open /dev/null")?;
    let err = match log {
        Some(p) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("open {}", p.display()))?,
        None => null.try_clone().context("dup /dev/null")?,
    };
    use std::os::fd::AsRawFd;
    for (src, dst) in [(null.as_raw_fd(), 0), (null.as_raw_fd(), 1), (err.as_raw_fd(), 2)] {
        if nix::unistd::dup2(src, dst).is_err() {
            bail!("dup2 onto {dst}");
        }
    }
    Ok(())
}

/// Writes one diagnostics line to stderr (the shim's log file).
macro_rules! diag {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{} {}", keelson_shim_proto::cri_log::timestamp_now(), format_args!($($arg)*));
    }};
}
pub(crate) use diag;
