//! `keelson-shim run --bundle DIR --id ID [--root DIR]`: one container, start to finish, the
//! way the shim runs it, without a sandbox, socket or log. For the benchmark (`bench/runtime`)
//! and for debugging a bundle by hand.
//!
//! The same steps as the serving shim, with the same code: become the child subreaper, fork
//! a child that runs libcontainer's create ([`child::spawn`], including the hybrid-host
//! cgroup2 mount trick), read its `ok <pid>` line, `start` the container with libcontainer,
//! wait for the container's init, then delete it as the shim does (libcontainer's state
//! directory and the container's cgroup). The container inherits this process's stdio. The
//! exit status is the container's (128 + signal when it was killed).
//!
//! Not part of the protocol: the serving shim never calls this.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::child::{self, Job, Stdio};

/// Where the one-shot path keeps libcontainer's state unless `--root` says otherwise.
const DEFAULT_ROOT: &str = "/run/keelson/oneshot";

/// The command line of `run`.
#[derive(Debug)]
struct Args {
    bundle: PathBuf,
    id: String,
    root: PathBuf,
}

fn parse(args: &[String]) -> Result<Args> {
    let (mut bundle, mut id, mut root) = (None, None, PathBuf::from(DEFAULT_ROOT));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bundle" => bundle = Some(PathBuf::from(value()?)),
            "--id" => id = Some(value()?.clone()),
            "--root" => root = PathBuf::from(value()?),
            other => {
                bail!("unknown argument {other:?} (usage: run --bundle DIR --id ID [--root DIR])")
            }
        }
    }
    Ok(Args {
        bundle: bundle.context("--bundle is required")?,
        id: id.context("--id is required")?,
        root,
    })
}

/// Runs `keelson-shim run ARGS…` (`args` without `run`); returns the exit status.
pub fn main(args: &[String]) -> i32 {
    match parse(args).and_then(|a| run(&a.bundle, &a.id, &a.root)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keelson-shim run: {e:#}");
            125
        }
    }
}

/// Creates, starts, waits for and deletes the container `id` of `bundle`.
pub fn run(bundle: &Path, id: &str, root: &Path) -> Result<i32> {
    let bundle = bundle.canonicalize().with_context(|| format!("bundle {}", bundle.display()))?;
    std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    nix::sys::prctl::set_child_subreaper(true).context("become child subreaper")?;
    let over = cgroup2_mount_over();
    let cgroup_dir = container_cgroup(&bundle, over.as_deref())?;
    let res = create_start_wait(&bundle, id, root, over.as_deref());
    let deleted = delete(root, id, cgroup_dir.as_deref());
    let code = res?;
    deleted?;
    Ok(code)
}

fn create_start_wait(bundle: &Path, id: &str, root: &Path, over: Option<&Path>) -> Result<i32> {
    let job = Job::Create { id: id.to_owned(), bundle: bundle.to_owned() };
    let (child_pid, mut sock) =
        child::spawn(job, Stdio::default(), root, over).context("fork libcontainer child")?;
    // The result is complete once the child has exited; reading to EOF would block, as the
    // container's init (waiting for `start`) holds a copy of the child's end.
    let status = waitpid(child_pid, None);
    sock.set_nonblocking(true).context("non-blocking result socket")?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read the libcontainer child's result"),
        }
    }
    let text = String::from_utf8_lossy(&data);
    let text = text.trim();
    let pid = match text.strip_prefix("ok ").and_then(|p| p.parse::<i32>().ok()) {
        Some(pid) => Pid::from_raw(pid),
        None => match text.strip_prefix("error ") {
            Some(m) => bail!("create container {id}: {m}"),
            None => bail!("libcontainer child ended ({status:?}) without a result"),
        },
    };
    let mut lc = libcontainer::container::Container::load(root.join(id))
        .with_context(|| format!("load container {id}"))?;
    lc.start().with_context(|| format!("start container {id}"))?;
    wait_for(pid)
}

/// Waits for `pid` (ours as the subreaper), reaping whatever else is re-parented to us.
fn wait_for(pid: Pid) -> Result<i32> {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(code),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return Ok(128 + sig as i32),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => bail!("wait for container init {pid}: {e}"),
        }
    }
}

/// Deletes the container as the serving shim does: libcontainer's state directory, then the
/// container's cgroup.
fn delete(root: &Path, id: &str, cgroup_dir: Option<&Path>) -> Result<()> {
    let dir = root.join(id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", dir.display())),
    }
    if let Some(cg) = cgroup_dir {
        crate::sys::remove_cgroup(cg).with_context(|| format!("remove cgroup {}", cg.display()))?;
    }
    Ok(())
}

/// The cgroup2 mount to show as `/sys/fs/cgroup` to libcontainer on a hybrid host (the
/// serving shim is told this by the runtime): `/sys/fs/cgroup/unified` when `/sys/fs/cgroup`
/// itself is not cgroup2 but that is.
fn cgroup2_mount_over() -> Option<PathBuf> {
    let is_cgroup2 = |p: &str| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    };
    (!is_cgroup2("/sys/fs/cgroup") && is_cgroup2("/sys/fs/cgroup/unified"))
        .then(|| PathBuf::from("/sys/fs/cgroup/unified"))
}

/// The host directory of the container's cgroup: the bundle's `linux.cgroupsPath` (when
/// absolute) under the cgroup2 hierarchy.
fn container_cgroup(bundle: &Path, over: Option<&Path>) -> Result<Option<PathBuf>> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))?;
    let Some(cg) = spec.pointer("/linux/cgroupsPath").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let Some(rel) = cg.strip_prefix('/') else { return Ok(None) };
    let v2 = over.unwrap_or(Path::new("/sys/fs/cgroup"));
    Ok(Some(v2.join(rel)))
}
