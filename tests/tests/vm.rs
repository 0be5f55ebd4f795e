//! The VM tier: Debian's 6.12 kernel in qemu (TCG) with our initramfs and init; what a pure
//! cgroup v2 kernel enforces, proven with plain processes.
//!
//! Run: `KEELSON_TEST_TIERS=vm cargo test -p keelson-tests --test vm -- --test-threads=1`.
//! Each test that starts with `vm_test!` boots its own VM on the host and runs its body inside
//! it (see `keelson_tests::vm`). Tests that only check the harness itself run on the host.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keelson_tests::vm::{self, VmOptions};
use keelson_tests::{require, vm_test, Tier};

// --- the harness itself -----------------------------------------------------------------------

/// The guest boots Debian's 6.12 kernel, the init mounts a pure cgroup v2 hierarchy with the
/// controllers the runtime needs, and requested modules are loaded with their dependencies
/// (nf_conntrack pulls libcrc32c, whose softdep is the `crc32c` alias).
#[test]
fn vm_boots_6_12_with_pure_cgroup_v2_and_modules() {
    vm_test!(VmOptions::default().module("overlay").module("nf_conntrack"));

    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert!(release.starts_with("6.12."), "kernel {release}");

    let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
    let cgroup_mounts: Vec<&str> = mounts
        .lines()
        .filter(|l| l.split_whitespace().nth(2).is_some_and(|t| t.starts_with("cgroup")))
        .collect();
    assert_eq!(cgroup_mounts.len(), 1, "one cgroup mount: {cgroup_mounts:?}");
    assert!(
        cgroup_mounts[0].starts_with("cgroup2 /sys/fs/cgroup cgroup2 "),
        "{}",
        cgroup_mounts[0]
    );

    let available = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").expect("controllers");
    let enabled =
        fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control").expect("subtree_control");
    for c in ["cpu", "memory", "pids", "io"] {
        assert!(available.split_whitespace().any(|x| x == c), "{c} not available: {available}");
        assert!(enabled.split_whitespace().any(|x| x == c), "{c} not enabled: {enabled}");
    }

    for m in ["overlay", "nf_conntrack", "libcrc32c", "crc32c_generic"] {
        assert!(Path::new("/sys/module").join(m).exists(), "module {m} not loaded");
    }
    // The loaded overlay module works: mount an overlay and see both layers.
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir_all(format!("/tmp/ovl/{d}")).expect("mkdir");
    }
    fs::write("/tmp/ovl/lower/from-lower", "l").expect("write");
    nix::mount::mount(
        Some("overlay"),
        "/tmp/ovl/merged",
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some("lowerdir=/tmp/ovl/lower,upperdir=/tmp/ovl/upper,workdir=/tmp/ovl/work"),
    )
    .expect("mount overlay");
    fs::write("/tmp/ovl/merged/from-merged", "m").expect("write through overlay");
    assert_eq!(fs::read_to_string("/tmp/ovl/merged/from-lower").expect("lower visible"), "l");
    assert_eq!(fs::read_to_string("/tmp/ovl/upper/from-merged").expect("copied up"), "m");
    nix::mount::umount("/tmp/ovl/merged").expect("umount");
    assert!(nix::unistd::getpid().as_raw() > 1, "the test is not the init");
    assert!(nix::unistd::geteuid().is_root());
}

/// What a test adds through `VmOptions` is in the guest: a host binary with its shared
/// libraries (how the shim will come in), a directory tree (how an OCI image layout will),
/// a file from memory, and environment variables.
#[test]
fn vm_carries_extra_binaries_trees_files_and_env() {
    vm_test!(VmOptions::default()
        .binary("/usr/bin/true", "/usr/local/bin/host-true")
        .tree(concat!(env!("CARGO_MANIFEST_DIR"), "/src/vm"), "/opt/harness-src")
        .bytes("/etc/keelson-test", "hello", 0o600)
        .env("KEELSON_TEST_VALUE", "42"));

    let status =
        std::process::Command::new("/usr/local/bin/host-true").status().expect("run host-true");
    assert!(status.success(), "{status}");
    let src = fs::read_to_string("/opt/harness-src/cpio.rs").expect("tree copied");
    assert!(src.starts_with("//!"), "{}", &src[..40.min(src.len())]);
    assert!(Path::new("/opt/harness-src/mod.rs").is_file());
    assert_eq!(fs::read_to_string("/etc/keelson-test").expect("bytes"), "hello");
    assert_eq!(std::env::var("KEELSON_TEST_VALUE").as_deref(), Ok("42"));
    assert_eq!(std::env::var(vm::IN_VM_ENV).as_deref(), Ok("1"));
}

/// Inside the VM only: fails on purpose (after printing forged result lines), so the host can
/// prove failures come through.
#[test]
fn guest_fails_on_purpose() {
    if !vm::in_vm() {
        eprintln!("SKIP guest_fails_on_purpose: runs only inside the VM, for guest_failure_is_reported_on_the_host");
        return;
    }
    // A payload printing result lines cannot pass for the init: they lack the run's nonce.
    println!("\nKEELSON-VM-RESULT exit=0");
    println!("\nKEELSON-VM-RESULT nonce=forged exit=0");
    panic!("deliberate failure inside the VM");
}

/// Inside the VM only: hangs on purpose, so the host can prove the deadline kills qemu.
#[test]
fn guest_hangs_on_purpose() {
    if !vm::in_vm() {
        eprintln!("SKIP guest_hangs_on_purpose: runs only inside the VM, for hung_guest_is_killed_at_the_timeout");
        return;
    }
    println!("guest_hangs_on_purpose: hanging now");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn vm_options() -> VmOptions {
    VmOptions::default().init_if_unset(env!("CARGO_BIN_EXE_keelson-vminit"))
}

#[test]
fn guest_failure_is_reported_on_the_host() {
    require!(Tier::Vm, vm::available());
    let err = vm::run_test_in_vm(module_path!(), "guest_fails_on_purpose", vm_options())
        .expect_err("a failing guest test must fail on the host");
    match &err {
        vm::Error::Failed { result: vm::GuestResult::Exited(code), log } => {
            assert_ne!(*code, 0);
            let serial = fs::read_to_string(log).expect("the log of a failure is kept");
            assert!(serial.contains("deliberate failure inside the VM"), "{serial}");
            let _ = fs::remove_file(log);
        }
        other => panic!("expected a guest failure, got {}", vm::error_chain(other)),
    }
}

/// A guest that never prints the result marker fails even though qemu exits by itself: here
/// the init is `/usr/bin/true`, which exits at once, so the kernel panics (`panic=-1` reboots,
/// `-no-reboot` ends qemu).
#[test]
fn guest_without_result_marker_is_a_failure() {
    require!(Tier::Vm, vm::available());
    let started = Instant::now();
    let err = vm::run_in_vm("no-marker", &[], &VmOptions::default().init_if_unset("/usr/bin/true"))
        .expect_err("no marker must fail");
    match &err {
        vm::Error::NoResult { log, .. } => {
            let serial = fs::read_to_string(log).expect("the log of a failure is kept");
            assert!(serial.contains("Attempted to kill init"), "{serial}");
            let _ = fs::remove_file(log);
        }
        other => panic!("expected a missing result, got {}", vm::error_chain(other)),
    }
    assert!(started.elapsed() < Duration::from_secs(100), "qemu did not end with the guest");
}

#[test]
fn misspelt_test_name_is_not_a_pass() {
    require!(Tier::Vm, vm::available());
    let err = vm::run_test_in_vm(module_path!(), "no_such_test_anywhere", vm_options())
        .expect_err("running zero tests must not pass");
    match &err {
        vm::Error::TestNotRun { log, .. } => {
            let serial = fs::read_to_string(log).expect("the log of a failure is kept");
            assert!(serial.contains("running 0 tests"), "{serial}");
            let _ = fs::remove_file(log);
        }
        other => panic!("expected a test that did not run, got {}", vm::error_chain(other)),
    }
}

#[test]
fn hung_guest_is_killed_at_the_timeout() {
    require!(Tier::Vm, vm::available());
    let timeout = Duration::from_secs(40);
    let started = Instant::now();
    let err =
        vm::run_test_in_vm(module_path!(), "guest_hangs_on_purpose", vm_options().timeout(timeout))
            .expect_err("a hung guest must fail");
    let elapsed = started.elapsed();
    match &err {
        vm::Error::Timeout { qemu_pid, log, .. } => {
            assert!(elapsed >= timeout, "returned after {elapsed:?}, before the timeout");
            assert!(elapsed < timeout + Duration::from_secs(30), "took {elapsed:?}");
            assert!(
                !Path::new(&format!("/proc/{qemu_pid}")).exists(),
                "qemu {qemu_pid} still there"
            );
            let serial = fs::read_to_string(log).expect("the log of a timeout is kept");
            assert!(
                serial.contains("guest_hangs_on_purpose: hanging now"),
                "the guest never got to the hang:\n{serial}"
            );
            let _ = fs::remove_file(log);
        }
        other => panic!("expected a timeout, got {}", vm::error_chain(other)),
    }
}

/// On the host, only as the helper process of `qemu_dies_with_its_test_process`: boots a VM
/// that hangs, and waits for it (until killed).
#[test]
fn host_helper_holds_a_hanging_vm() {
    if std::env::var("KEELSON_VM_HELPER").as_deref() != Ok("hang") || vm::in_vm() {
        eprintln!("SKIP host_helper_holds_a_hanging_vm: a helper process for qemu_dies_with_its_test_process");
        return;
    }
    let opts = vm_options().timeout(Duration::from_secs(600));
    let _ = vm::run_test_in_vm(module_path!(), "guest_hangs_on_purpose", opts);
}

/// `(parent pid, state)` of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(u32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// A test process that dies by SIGKILL (no unwinding, no Drop) takes its qemu with it.
#[test]
fn qemu_dies_with_its_test_process() {
    require!(Tier::Vm, vm::available());
    let exe = std::env::current_exe().expect("test binary");
    // The helper dies without cleaning up: give it a temporary and log dir we remove.
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut helper = std::process::Command::new(exe)
        .args(["--exact", "host_helper_holds_a_hanging_vm", "--nocapture", "--test-threads=1"])
        .env("KEELSON_VM_HELPER", "hang")
        .env("KEELSON_TEST_TIERS", "vm")
        .env("TMPDIR", scratch.path())
        .env("KEELSON_VM_LOGS", scratch.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start helper");
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let helper_pid = helper.id();
    let guard = KillOnDrop(&mut helper);
    let deadline = Instant::now() + Duration::from_secs(60);
    let qemu = loop {
        let found = fs::read_dir("/proc").expect("/proc").filter_map(|e| e.ok()).find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let (ppid, _) = proc_stat(pid)?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (ppid == helper_pid && String::from_utf8_lossy(&cmdline).contains("qemu-system"))
                .then_some(pid)
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(Instant::now() < deadline, "the helper never started qemu");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(proc_stat(qemu).is_some_and(|(_, s)| s != 'Z'), "qemu {qemu} is running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper_pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .expect("kill helper");
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_stat(qemu).is_some_and(|(_, s)| s != 'Z' && s != 'X') {
        assert!(Instant::now() < deadline, "qemu {qemu} outlived its killed test process");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On Debian's real module set: nf_conntrack's closure holds its hard dependencies and, through
/// libcrc32c's `softdep=pre: crc32c`, the alias's providers; each module comes after everything
/// it depends on, and the files are uncompressed ELF modules.
#[test]
fn real_module_closure_orders_dependencies_first() {
    require!(Tier::Vm, vm::available());
    let kernel = vm::Kernel::find(vm::Arch::host()).expect("kernel");
    let mods = kernel.prepare_modules(&["nf_conntrack", "overlay"]).expect("closure");
    let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
    println!("load order: {names:?}");
    let at = |n: &str| {
        names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n} missing from {names:?}"))
    };
    assert!(at("libcrc32c") < at("nf_conntrack"));
    assert!(
        at("crc32c_generic") < at("libcrc32c"),
        "softdep pre: crc32c resolved through its alias"
    );
    assert!(at("nf_defrag_ipv4") < at("nf_conntrack"));
    assert!(at("nf_defrag_ipv6") < at("nf_conntrack"));
    assert_eq!(names.iter().filter(|n| **n == "overlay").count(), 1);
    for m in &mods {
        let bytes = fs::read(&m.path).expect("module file");
        assert!(bytes.starts_with(b"\x7fELF"), "{} is not an uncompressed ELF", m.path.display());
        let info = vm::modules::ModInfo::parse(
            &m.name,
            vm::kernel::modinfo_section(&bytes).expect("modinfo"),
        );
        for dep in &info.depends {
            assert!(at(dep) < at(&m.name), "{dep} must load before {}", m.name);
        }
    }
}

/// `None` when `program` is on PATH, else the reason a test cannot run.
fn need_program(program: &str) -> Option<String> {
    vm::qemu::find_in_path(program)
        .is_none()
        .then(|| format!("{program} not found (run dev/setup)"))
}

/// aarch64: Debian's arm64 kernel boots in `qemu-system-aarch64 -M virt` from our initramfs,
/// with a static init cross-compiled from `tests/fixtures/arm64-init.c`, and reports a pure
/// cgroup v2 hierarchy through the same marker protocol.
#[test]
fn arm64_guest_boots_debian_kernel_with_a_static_init() {
    require!(Tier::Vm, vm::available_for(vm::Arch::Aarch64), need_program("aarch64-linux-gnu-gcc"));
    let dir = tempfile::tempdir().expect("tempdir");
    let init = dir.path().join("init");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/arm64-init.c");
    let cc = std::process::Command::new("aarch64-linux-gnu-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&init)
        .arg(source)
        .output()
        .expect("run aarch64-linux-gnu-gcc");
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    let opts = VmOptions::default().arch(vm::Arch::Aarch64).init_if_unset(&init);
    let report = vm::run_in_vm("arm64-smoke", &[], &opts)
        .unwrap_or_else(|e| panic!("arm64 guest: {}", vm::error_chain(&e)));
    assert!(report.kernel_release.ends_with("arm64"), "{}", report.kernel_release);
    assert!(
        report.transcript.contains("release=6.12.")
            && report.transcript.contains("machine=aarch64"),
        "{}",
        report.transcript
    );
    eprintln!(
        "arm64 guest: init after {:?}, result after {:?}, qemu total {:?}",
        report.boot_to_init, report.boot_to_result, report.total
    );
}

/// Asking for a module the kernel does not have fails before any VM boots, naming it.
#[test]
fn unknown_module_is_a_clear_error_before_booting() {
    require!(Tier::Vm, vm::available());
    let started = Instant::now();
    let err = vm::run_in_vm("unknown-module", &[], &vm_options().module("no_such_module_anywhere"))
        .expect_err("unknown module");
    let chain = vm::error_chain(&err);
    assert!(matches!(err, vm::Error::Kernel(_)), "{chain}");
    assert!(chain.contains("kernel module no_such_module_anywhere not found"), "{chain}");
    assert!(started.elapsed() < Duration::from_secs(30), "it booted a VM first?");
}

/// The init is harmless on a host: it refuses to run unless it is PID 1.
#[test]
fn vminit_refuses_to_run_unless_pid_1() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keelson-vminit"))
        .output()
        .expect("run init");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only as PID 1"));
}

// --- cgroup v2 limits, with plain processes ---------------------------------------------------

/// A child cgroup of the root, removed (after killing what is left in it) when dropped.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let path = Path::new("/sys/fs/cgroup").join(name);
        fs::create_dir(&path).expect("create cgroup");
        Cgroup(path)
    }

    fn write(&self, file: &str, value: &str) {
        fs::write(self.0.join(file), value)
            .unwrap_or_else(|e| panic!("write {value:?} to {file}: {e}"));
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.0.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
    }

    /// A `key value` field of a flat-keyed file such as `memory.events` or `cpu.stat`.
    fn stat(&self, file: &str, key: &str) -> u64 {
        let text = self.read(file);
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} not in {file}:\n{text}"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Forks a child that waits until it has been moved into `cg`, then runs `work` (which may use
/// only async-signal-safe calls: the parent is multi-threaded) and exits with its value.
fn spawn_in(cg: &Cgroup, work: fn() -> i32) -> nix::sys::wait::WaitStatus {
    use nix::unistd::{fork, ForkResult};
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only calls async-signal-safe functions (read, close, raw syscalls, mmap,
    // clock_gettime, _exit) before it exits; it never returns into the test harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            use std::os::fd::AsRawFd;
            let mut byte = 0u8;
            // SAFETY: reads one byte into a valid local buffer from a pipe we own.
            unsafe {
                libc::read(read_end.as_raw_fd(), (&raw mut byte).cast(), 1);
                libc::_exit(work())
            }
        }
        ForkResult::Parent { child } => {
            drop(read_end);
            cg.write("cgroup.procs", &child.to_string());
            nix::unistd::write(&write_end, b"g").expect("release child");
            drop(write_end);
            nix::sys::wait::waitpid(child, None).expect("waitpid")
        }
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `memory.max` is enforced: a process allocating past it is OOM-killed, and `memory.events`
/// counts the kill.
#[test]
fn cgroup_memory_max_is_enforced_in_vm() {
    vm_test!();
    let cg = Cgroup::new("memtest");
    cg.write("memory.max", &(32 << 20).to_string());
    cg.write("memory.swap.max", "0");
    let status = spawn_in(&cg, || {
        // Touch 256 MiB, page by page: far past the 32 MiB limit.
        const LEN: usize = 256 << 20;
        // SAFETY: an anonymous private mapping; written only within its bounds.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return 3;
            }
            let bytes = p.cast::<u8>();
            for off in (0..LEN).step_by(4096) {
                bytes.add(off).write_volatile(1);
            }
        }
        0
    });
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Signaled(
            pid_of(&status),
            nix::sys::signal::Signal::SIGKILL,
            false
        ),
        "the allocation past memory.max must be OOM-killed"
    );
    assert!(cg.stat("memory.events", "oom_kill") >= 1, "{}", cg.read("memory.events"));
    assert!(cg.stat("memory.events", "max") >= 1);
    println!("memory.events:\n{}", cg.read("memory.events"));
}

fn pid_of(status: &nix::sys::wait::WaitStatus) -> nix::unistd::Pid {
    status.pid().expect("a finished child has a pid")
}

/// `cpu.max` throttles: a busy loop under a 10% quota is throttled (`nr_throttled` in
/// `cpu.stat`) and gets far less than the wall time it spans.
#[test]
fn cgroup_cpu_max_throttles_in_vm() {
    vm_test!();
    let cg = Cgroup::new("cputest");
    cg.write("cpu.max", "10000 100000");
    let started = Instant::now();
    let status = spawn_in(&cg, || {
        let end = now_ns() + 1_500_000_000;
        let mut x = 0u64;
        while now_ns() < end {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        0
    });
    let wall = started.elapsed();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid_of(&status), 0));
    println!("cpu.stat after {wall:?}:\n{}", cg.read("cpu.stat"));
    assert!(cg.stat("cpu.stat", "nr_throttled") > 0, "never throttled");
    assert!(cg.stat("cpu.stat", "throttled_usec") > 0);
    let usage = Duration::from_micros(cg.stat("cpu.stat", "usage_usec"));
    assert!(usage < wall / 2, "used {usage:?} of CPU in {wall:?} under a 10% quota");
}

/// `pids.max` refuses forks: a process in a cgroup limited to 4 tasks can create 3 more, then
/// `fork` fails with EAGAIN, and `pids.events` counts the refusal.
#[test]
fn cgroup_pids_max_refuses_forks_in_vm() {
    vm_test!();
    let cg = Cgroup::new("pidstest");
    cg.write("pids.max", "4");
    let status = spawn_in(&cg, || {
        for made in 0..20 {
            // A raw fork (glibc's fork runs atfork handlers: not async-signal-safe here).
            // SAFETY: the new process only pauses until the cgroup is killed.
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            match pid {
                0 => loop {
                    // SAFETY: pause has no preconditions.
                    unsafe { libc::pause() };
                },
                -1 => {
                    // SAFETY: errno is thread-local and valid to read.
                    let errno = unsafe { *libc::__errno_location() };
                    return if errno == libc::EAGAIN { made } else { 100 + errno.min(100) };
                }
                _ => {}
            }
        }
        99
    });
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(pid_of(&status), 3),
        "3 forks succeed under pids.max=4, the 4th fails with EAGAIN (exit code = successful forks, 99 = never refused, >100 = other errno)"
    );
    assert!(cg.stat("pids.events", "max") >= 1, "{}", cg.read("pids.events"));
}
