//! Work inside a network namespace, on a dedicated thread.
//!
//! A network namespace is a property of a thread (`setns(2)` changes only the caller), and a
//! netlink socket belongs to the namespace its creator was in when it was opened. So every
//! piece of namespace work runs on a fresh [`std::thread`] that enters the namespace, builds a
//! current-thread tokio runtime and opens its own rtnetlink connection there ([`run`],
//! [`run_blocking`]). The thread ends with the work, so no thread ever returns to a pool in a
//! foreign namespace, and no async worker of the caller ever calls `setns`.
//!
//! The work receives an [`NsThread`], the only way to switch namespaces, open connections and
//! write sysctls: it is neither `Send` nor `Sync`, so none of them can leak to another thread.
//! A thread may enter several namespaces in turn (open the host's connection, then enter the
//! pod's and open the pod's): a socket keeps the namespace it was opened in.
//!
//! [`create`] and [`remove`] pin a new namespace at a path (a bind mount of its nsfs file), for
//! tests and tools; the runtime pins sandbox namespaces itself.
//!
//! Cost: a thread, a runtime and a netlink socket are tens of microseconds, small against the
//! hundreds of the kernel's own link work.

use std::fs::File;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::link::Sysctl;

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace file does not exist (the sandbox is gone).
    #[error("network namespace {path} does not exist")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// The file is not a network namespace (not an nsfs file, or another kind of namespace).
    #[error("{path} is not a network namespace")]
    NotANetns {
        /// The path given.
        path: PathBuf,
    },
    /// The namespace file could not be opened.
    #[error("open network namespace {path}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `setns` refused the file (not a network namespace, or no permission).
    #[error("enter network namespace {path}")]
    Enter {
        /// The namespace's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The dedicated thread could not start.
    #[error("spawn namespace thread")]
    Spawn(#[source] io::Error),
    /// The thread's runtime could not be built.
    #[error("build namespace thread runtime")]
    Runtime(#[source] io::Error),
    /// The netlink socket could not be opened.
    #[error("open netlink socket")]
    Connect(#[source] io::Error),
    /// The work panicked.
    #[error("namespace thread panicked")]
    Panicked,
    /// A new namespace could not be created.
    #[error("create network namespace")]
    Unshare(#[source] Errno),
    /// The new namespace could not be pinned at a path.
    #[error("pin network namespace at {path}")]
    Pin {
        /// The pin's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A pinned namespace could not be removed.
    #[error("remove network namespace pin {path}")]
    Unpin {
        /// The pin's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// `ioctl(2)` on an nsfs file: which kind of namespace it is (`_IO(0xb7, 0x3)`, Linux 4.11).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An open network namespace (a file descriptor of its nsfs file).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace pinned at `path`; [`Error::Missing`] when there is no such file,
    /// [`Error::NotANetns`] when it is not a network namespace (the kernel would refuse it
    /// later with a bare `EINVAL`).
    pub fn open(path: &Path) -> Result<Netns> {
        let fd: OwnedFd = match File::open(path) {
            Ok(f) => f.into(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Missing { path: path.to_owned() })
            }
            Err(source) => return Err(Error::Open { path: path.to_owned(), source }),
        };
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads which kind of namespace the
        // open descriptor `fd` refers to; on any other file it fails with ENOTTY.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(Error::NotANetns { path: path.to_owned() });
        }
        Ok(Netns { fd, path: path.to_owned() })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The dedicated thread the work of [`run`] runs on; not `Send`, so it cannot leave it.
#[derive(Debug)]
pub struct NsThread {
    _not_send: PhantomData<*const ()>,
}

impl NsThread {
    /// Moves this thread into `ns`. Connections opened before keep their namespace.
    pub fn enter(&mut self, ns: &Netns) -> Result<()> {
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
            .map_err(|source| Error::Enter { path: ns.path.clone(), source })
    }

    /// Opens an rtnetlink connection in the thread's current namespace, driven by the
    /// thread's runtime. Must be called from inside the work's future.
    pub fn connect(&self) -> Result<rtnetlink::Handle> {
        let (mut conn, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        // Strict checking makes the kernel honour a dump request's filters (an address dump
        // for one link, a route dump for one table and family), so a dump's cost does not
        // grow with the node's pod count.
        use netlink_sys::AsyncSocket;
        conn.socket_mut().socket_mut().set_netlink_get_strict_chk(true).map_err(Error::Connect)?;
        tokio::spawn(conn);
        Ok(handle)
    }

    /// The sysctls (`/proc/sys`) of the thread's current namespace.
    pub fn sysctl(&self) -> ProcSys<'_> {
        ProcSys { _thread: PhantomData }
    }
}

/// Sysctls under `/proc/sys`, as the namespace thread sees them: the kernel resolves
/// `/proc/sys/net` against the opening thread's network namespace.
#[derive(Debug)]
pub struct ProcSys<'a> {
    _thread: PhantomData<&'a NsThread>,
}

impl Sysctl for ProcSys<'_> {
    fn get(&mut self, key: &str) -> io::Result<String> {
        Ok(std::fs::read_to_string(Path::new("/proc/sys").join(key))?.trim().to_owned())
    }

    fn set(&mut self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(Path::new("/proc/sys").join(key), value)
    }
}

/// Runs `work` on a new thread inside `ns` (`None`: the caller's namespace) with a
/// current-thread runtime, and waits for it without blocking the caller's executor.
pub async fn run<T, F, Fut>(ns: Option<&Netns>, work: F) -> Result<T>
where
    F: FnOnce(NsThread) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.map(dup).transpose()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    thread(move || {
        let _ = tx.send(enter_and_run(ns.as_ref(), work));
    })?;
    rx.await.map_err(|_| Error::Panicked)?
}

/// [`run`] for synchronous callers: blocks the calling thread until the work is done.
pub fn run_blocking<T, F, Fut>(ns: Option<&Netns>, work: F) -> Result<T>
where
    F: FnOnce(NsThread) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    spawn(ns, work)?.join().map_err(|_| Error::Panicked)?
}

/// [`run`] without waiting: starts the thread and returns its handle (for long-lived workers).
pub fn spawn<T, F, Fut>(ns: Option<&Netns>, work: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    F: FnOnce(NsThread) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.map(dup).transpose()?;
    thread(move || enter_and_run(ns.as_ref(), work))
}

fn dup(ns: &Netns) -> Result<Netns> {
    let fd = ns.fd.try_clone().map_err(|source| Error::Open { path: ns.path.clone(), source })?;
    Ok(Netns { fd, path: ns.path.clone() })
}

fn thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name("keelson-netns".into())
        .stack_size(256 << 10)
        .spawn(f)
        .map_err(Error::Spawn)
}

fn enter_and_run<T, F, Fut>(ns: Option<&Netns>, work: F) -> Result<T>
where
    F: FnOnce(NsThread) -> Fut,
    Fut: Future<Output = T>,
{
    let mut thread = NsThread { _not_send: PhantomData };
    if let Some(ns) = ns {
        thread.enter(ns)?;
    }
    // Timers too: work may bound itself with timeouts (the agent's network probes do).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::Runtime)?;
    Ok(rt.block_on(work(thread)))
}

/// Creates a new network namespace with loopback down and pins it at `path` (a new file);
/// returns it open.
pub fn create(path: &Path) -> Result<Netns> {
    let path = path.to_owned();
    let handle = thread(move || -> Result<Netns> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(Error::Unshare)?;
        let pin_err = |source| Error::Pin { path: path.clone(), source };
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(pin_err)?;
        let own = Path::new("/proc/thread-self/ns/net");
        if let Err(e) =
            nix::mount::mount(Some(own), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        {
            let _ = std::fs::remove_file(&path);
            return Err(pin_err(e.into()));
        }
        Netns::open(&path)
    })?;
    handle.join().map_err(|_| Error::Panicked)?
}

/// Unpins the namespace at `path` and removes the file; the namespace ends when nothing
/// else holds it. A missing pin is not an error.
pub fn remove(path: &Path) -> Result<()> {
    let unpin_err = |source| Error::Unpin { path: path.to_owned(), source };
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(unpin_err(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(unpin_err(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_network_namespace_is_refused_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        for path in [file.as_path(), Path::new("/proc/self/ns/uts")] {
            let err = Netns::open(path).unwrap_err();
            assert!(matches!(err, Error::NotANetns { .. }), "{}: {err}", path.display());
            assert!(err.to_string().contains("is not a network namespace"), "{err}");
        }
        Netns::open(Path::new("/proc/self/ns/net")).unwrap();
    }

    #[test]
    fn opening_a_missing_namespace_says_it_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = Netns::open(&dir.path().join("gone")).unwrap_err();
        assert!(matches!(err, Error::Missing { .. }), "{err}");
    }

    #[test]
    fn work_runs_on_its_own_thread_and_returns_its_value() {
        let caller = std::thread::current().id();
        let (id, name) = run_blocking(None, |_t| async {
            (std::thread::current().id(), std::thread::current().name().map(str::to_owned))
        })
        .unwrap();
        assert_ne!(id, caller);
        assert_eq!(name.as_deref(), Some("keelson-netns"));
    }

    #[test]
    fn a_panic_in_the_work_is_an_error_not_a_crash() {
        let r: Result<()> = run_blocking(None, |_t| async { panic!("boom") });
        assert!(matches!(r, Err(Error::Panicked)));
    }
}
