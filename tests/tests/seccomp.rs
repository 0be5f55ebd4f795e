//! The RuntimeDefault profile on a real kernel, as libcontainer 0.7 loads it and as the runtime
//! compiles it once and the shim loads it (`keelson_runtime::spec::filter`).
//!
//! Each check runs on a dedicated thread: `no_new_privs` and a seccomp filter without TSYNC
//! bind only the calling thread, so they end with it and never leak into other tests. Needs no
//! root; the check that CAP_SYS_ADMIN's rules allow `clone(CLONE_NEWUSER)` needs root (a
//! non-root user may be refused user namespaces for other reasons) and is skipped otherwise.
//!
//! It also pins libcontainer's reversed reading of masked comparisons (see
//! `keelson_runtime::spec::seccomp::swap_masked_eq_for_libcontainer`): if a libcontainer
//! upgrade fixes it, `unadapted_profile_lets_libcontainer_allow_clone_newuser` fails, and the
//! swap must go.

use keelson_runtime::spec::caps;
use keelson_runtime::spec::filter::FilterCache;
use keelson_runtime::spec::seccomp::{swap_masked_eq_for_libcontainer, Profile, TargetArch};
use keelson_shim_proto::seccomp::Program;
use oci_spec::runtime::{Capabilities, Capability, LinuxSeccomp};

/// What a few syscalls return under a filter.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    plain_clone: i32,
    clone_newuser: i32,
    unshare_newuser: i32,
    clone3: i32,
}

const OK: i32 = 0;

/// 0 on success, else the errno.
fn errno_of(ret: libc::c_long) -> i32 {
    if ret >= 0 {
        OK
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// `clone(flags)` without a new stack; the child exits at once and is reaped.
fn try_clone(flags: libc::c_int) -> i32 {
    // SAFETY: clone without CLONE_VM gives the child a copy of our memory; the child only
    // calls _exit, which is async-signal-safe, and the parent reaps it.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_long, 0, 0, 0, 0)
    };
    if pid == 0 {
        // SAFETY: ends the child without running anything of the parent's state.
        unsafe { libc::_exit(0) };
    }
    let result = errno_of(pid);
    if pid > 0 {
        let mut status = 0;
        // SAFETY: waits for the child we just created.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    }
    result
}

/// Who loads the filter: libcontainer from the profile, or the shim's executor from the
/// program the runtime compiled and cached.
#[derive(Debug, Clone, Copy)]
enum Loader {
    Libcontainer,
    Compiled,
}

/// Loads `seccomp` on a fresh thread and probes it there.
fn probe(seccomp: LinuxSeccomp, loader: Loader) -> Outcome {
    let program = match loader {
        Loader::Libcontainer => None,
        Loader::Compiled => {
            let dir = tempfile::tempdir().expect("tempdir");
            let cache = FilterCache::new(dir.path());
            let bytes = cache.program(&seccomp).expect("compiles");
            Some(Program::parse(&bytes).expect("a program"))
        }
    };
    std::thread::spawn(move || {
        // SAFETY: prctl with constant arguments; affects only this thread.
        let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        assert_eq!(nnp, 0, "set no_new_privs");
        match program {
            None => {
                libcontainer::seccomp::initialize_seccomp(&seccomp)
                    .expect("libcontainer loads the profile");
            }
            Some(p) => p.load().expect("the kernel takes the program"),
        }
        Outcome {
            plain_clone: try_clone(0),
            clone_newuser: try_clone(libc::CLONE_NEWUSER),
            // SAFETY: unshare with a constant flag; in a multi-threaded process the kernel
            // refuses CLONE_NEWUSER with EINVAL, seccomp with EPERM before that.
            unshare_newuser: errno_of(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()),
            // SAFETY: clone3 with a null argument: seccomp answers first (ENOSYS here), the
            // kernel would answer EFAULT/EINVAL.
            clone3: errno_of(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) }),
        }
    })
    .join()
    .expect("probe thread")
}

fn runtime_default(bounding: &Capabilities) -> LinuxSeccomp {
    Profile::runtime_default().resolve(TargetArch::native(), bounding).expect("resolves")
}

#[test]
fn adapted_runtime_default_refuses_namespaces_without_sys_admin_under_libcontainer() {
    let mut seccomp = runtime_default(&caps::default_set());
    swap_masked_eq_for_libcontainer(&mut seccomp);
    let got = probe(seccomp, Loader::Libcontainer);
    assert_eq!(
        got,
        Outcome {
            plain_clone: OK,
            clone_newuser: libc::EPERM,
            unshare_newuser: libc::EPERM,
            clone3: libc::ENOSYS,
        }
    );
}

#[test]
fn unadapted_profile_lets_libcontainer_allow_clone_newuser() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: creating a user namespace may be refused to non-root users");
        return;
    }
    let got = probe(runtime_default(&caps::default_set()), Loader::Libcontainer);
    assert_eq!(got.plain_clone, OK);
    assert_eq!(
        got.clone_newuser, OK,
        "libcontainer now reads masked comparisons like runc: remove swap_masked_eq_for_libcontainer"
    );
}

#[test]
fn sys_admin_rules_allow_clone_newuser_under_libcontainer() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: creating a user namespace may be refused to non-root users");
        return;
    }
    let mut bounding = caps::default_set();
    bounding.insert(Capability::SysAdmin);
    let mut seccomp = runtime_default(&bounding);
    swap_masked_eq_for_libcontainer(&mut seccomp);
    let got = probe(seccomp, Loader::Libcontainer);
    assert_eq!(got.plain_clone, OK);
    assert_eq!(got.clone_newuser, OK);
    // Allowed by the filter; the kernel itself refuses a user namespace to a threaded process.
    assert_eq!(got.unshare_newuser, libc::EINVAL);
}

#[test]
fn compiled_runtime_default_refuses_namespaces_without_sys_admin() {
    let got = probe(runtime_default(&caps::default_set()), Loader::Compiled);
    assert_eq!(
        got,
        Outcome {
            plain_clone: OK,
            clone_newuser: libc::EPERM,
            unshare_newuser: libc::EPERM,
            clone3: libc::ENOSYS,
        }
    );
}

#[test]
fn compiled_sys_admin_rules_allow_clone_newuser() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: creating a user namespace may be refused to non-root users");
        return;
    }
    let mut bounding = caps::default_set();
    bounding.insert(Capability::SysAdmin);
    let got = probe(runtime_default(&bounding), Loader::Compiled);
    assert_eq!(got.plain_clone, OK);
    assert_eq!(got.clone_newuser, OK);
    assert_eq!(got.unshare_newuser, libc::EINVAL);
    assert_ne!(got.clone3, libc::ENOSYS, "clone3 is allowed with CAP_SYS_ADMIN");
}
