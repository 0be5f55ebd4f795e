//! Small system calls the shim makes directly: cgroup membership, loopback, the netns pin,
//! terminal sizes, the hybrid-cgroup mount trick.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Creates `dir` (a cgroup2 directory) and moves the calling process into it.
///
/// A write to `cgroup.procs` takes the kernel's cgroup threadgroup lock for writing, which
/// waits for an RCU grace period (measured at 12–14 ms on the development machines, more than
/// half of a sandbox creation); [`fork_into_cgroup`] avoids it and is used where it can be.
pub fn join_cgroup(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("cgroup.procs"), b"0")
}

/// The kernel's `struct clone_args` for clone3(2), up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
/// Not in the `libc` crate for x86_64 glibc.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What [`fork_into_cgroup`] returns in each process.
#[derive(Debug)]
pub enum Forked {
    /// In the parent.
    Parent,
    /// In the child, which already sits in the cgroup.
    Child,
}

/// Creates `dir` (a cgroup2 directory) and forks the calling process with the child born in
/// it (`clone3` with `CLONE_INTO_CGROUP`): no migration, so none of the grace-period wait of
/// [`join_cgroup`]. Fails (the caller falls back to fork + [`join_cgroup`]) on kernels without
/// clone3 or `CLONE_INTO_CGROUP`, or when `dir` is not a cgroup2 directory.
///
/// # Safety
/// Only for a single-threaded process (like `fork`). The child is created by the raw system
/// call, so glibc's cached thread id in the child still names the parent's thread: only
/// `raise`/`pthread_kill` on itself use it (`abort` still ends the process through its
/// fallbacks), and a later libc `fork` in the child refreshes it for the grandchild. The shim
/// calls neither; its children are forked with libc's `fork`.
pub unsafe fn fork_into_cgroup(dir: &Path) -> io::Result<Forked> {
    fs::create_dir_all(dir)?;
    let cg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cg.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed, alive for the call; no new stack
    // is given, so the child continues on a copy of ours like after fork(2), which the caller
    // guarantees is sound (single-threaded process).
    let r = unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>())
    };
    match r {
        0 => Ok(Forked::Child),
        pid if pid > 0 => Ok(Forked::Parent),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Sets `IFF_UP` on `lo` in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked and closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a descriptor we just opened and own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into `req`, which is a valid ifreq for the call's duration.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the flags member of the union for SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, valid for the call's duration.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bind-mounts the current network namespace on `path` (created as an empty file).
pub fn pin_netns(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
    mount(Some("/proc/self/ns/net"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(io::Error::from)
}

/// Undoes [`pin_netns`].
pub fn unpin_netns(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// In a fresh private mount namespace, shows the cgroup2 mount `src` at `/sys/fs/cgroup`, so
/// that libcontainer (which reads the host's layout from `/sys/fs/cgroup`) sees a pure cgroup v2
/// host and places the container in the v2 hierarchy, never in v1. Only for forked children.
pub fn cgroup2_over_sys_fs_cgroup(src: &Path) -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
    mount(Some(src), "/sys/fs/cgroup", None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    Ok(())
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize that lives for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `O_NONBLOCK` on a descriptor.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Reads `oom_kill` from a cgroup's `memory.events` (0 when the file is absent, as on hosts
/// without the memory controller in cgroup2).
pub fn oom_kills(cgroup_dir: &Path) -> u64 {
    let Ok(s) = fs::read_to_string(cgroup_dir.join("memory.events")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Kills what is left in a container's cgroup and removes it. Empty cgroups go at once; a
/// cgroup whose processes are still dying is retried briefly.
pub fn remove_cgroup(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let _ = fs::write(dir.join("cgroup.kill"), b"1");
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}
