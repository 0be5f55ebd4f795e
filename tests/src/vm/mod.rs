//! The VM test tier: boot Debian's kernel in qemu with an initramfs we write, run a test inside.
//!
//! # Writing a VM test
//!
//! A test in `tests/tests/*.rs` (crate `keelson-tests`) starts with [`vm_test!`](crate::vm_test):
//!
//! ```ignore
//! use keelson_tests::vm::VmOptions;
//!
//! #[test]
//! fn cgroup_memory_max_is_enforced_in_vm() {
//!     keelson_tests::vm_test!(VmOptions::default().module("overlay"));
//!     // Everything below runs inside the VM, as root, with a pure cgroup v2 hierarchy.
//! }
//! ```
//!
//! On the host the macro skips the test unless the `vm` tier is enabled
//! (`KEELSON_TEST_TIERS=vm`) and qemu and the kernel cache are there (in strict mode a missing
//! requirement fails instead, see [`crate::require!`]); then it boots a VM whose init runs this
//! same test binary with `--exact <this test> --nocapture --test-threads=1` and
//! `KEELSON_IN_VM=1`, waits for the result, panics with the guest's failure (and the path of
//! the kept serial log) if it failed, and returns. Inside the VM ([`in_vm`] is true) the macro
//! does nothing and the body runs. The test's name comes from the enclosing function, so there
//! is nothing to keep in sync. [`run_test_in_vm`] is the same without the macro.
//!
//! Run the tier with `KEELSON_TEST_TIERS=vm cargo test -p keelson-tests --test vm --
//! --test-threads=1` (each VM already uses both cores).
//!
//! # What a VM is made of
//!
//! - the kernel: Debian's 6.12 package that `dev/setup` unpacks, with `vmlinux` extracted for a
//!   PVH direct boot ([`kernel`]);
//! - an initramfs ([`initramfs`], written with our [`cpio`] writer) holding `keelson-vminit` as
//!   `/init` ([`guest`]), the test binary, both with their shared libraries, the requested
//!   modules with their dependency closure ([`modules`]), uncompressed, in load order, and
//!   whatever files, binaries (with their libraries) and directory trees the test adds through
//!   [`VmOptions`] (the shim binary, an OCI image layout, ...);
//! - qemu, TCG, `-M q35` (see [`qemu::Machine`] for why not microvm), 2 CPUs, 1 GiB, no network
//!   device, serial console to a log ([`qemu`]).
//!
//! A test adds what it needs with the [`VmOptions`] builder: `.binary(path, "/usr/bin/x")` for
//! a host executable with its shared libraries (the shim: [`target_binary`] finds binaries of
//! other workspace crates in the same target dir, once cargo has built them), `.tree(dir,
//! "/images/busybox")` for a directory (an OCI layout), `.file`, `.bytes`, `.env`, `.module`.
//!
//! Logs: the serial log is deleted when the test passes and kept (its path printed) when it
//! fails. `KEELSON_VM_KEEP_LOGS=1` keeps every log and initramfs (the log's first line is the
//! qemu command line, to reproduce a run by hand); `KEELSON_VM_KERNEL_ARGS` adds kernel
//! arguments to every VM (`loglevel=7` to see what `quiet` hides). Logs live in
//! `$KEELSON_VM_LOGS`, default `<temp dir>/keelson-vm-logs-<uid>`.
//!
//! The tier needs no root on the host (TCG, no devices): only the kernel cache, which the first
//! run prepares (about 15 s: `vmlinux` and the module index) and later runs reuse.
//!
//! The guest's marker line decides: the payload's exit status must be 0, and for a test, libtest
//! must report exactly one test passed (so a misspelt name cannot pass by running nothing).
//!
//! Test binaries are x86_64, so `vm_test!` runs x86_64 guests. [`VmOptions::arch`] boots an
//! aarch64 guest (`-M virt -cpu cortex-a57`, Debian's arm64 kernel) with an init built for it;
//! `tests/tests/vm.rs` proves the path with a small static C init cross-compiled by the test.
//! Running Rust tests in an arm64 guest needs the arm64 Rust cross build (TOOLCHAIN.md).

pub mod cpio;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use guest::GuestResult;
pub use kernel::{Arch, Kernel};

/// Set to `1` in the guest's environment for the payload.
pub const IN_VM_ENV: &str = "KEELSON_IN_VM";

/// Errors of a VM run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel could not be found or prepared.
    #[error("preparing the guest kernel")]
    Kernel(#[from] kernel::Error),
    /// The initramfs could not be written.
    #[error("building the initramfs")]
    Initramfs(#[from] initramfs::Error),
    /// qemu could not be run.
    #[error("running qemu")]
    Qemu(#[from] qemu::Error),
    /// The init binary was not found.
    #[error(
        "VM init binary {0} not found (built with keelson-tests: cargo test -p keelson-tests)"
    )]
    NoInit(PathBuf),
    /// Finding the running test binary failed.
    #[error("finding the current test binary")]
    CurrentExe(#[source] std::io::Error),
    /// A temporary directory could not be made.
    #[error("creating a temporary directory")]
    TempDir(#[source] std::io::Error),
    /// The guest did not print its result before the deadline; qemu was killed.
    #[error(
        "guest gave no result within {timeout:?}: qemu (pid {qemu_pid}) killed; serial log {log}"
    )]
    Timeout {
        /// The deadline.
        timeout: Duration,
        /// qemu's pid (reaped).
        qemu_pid: u32,
        /// The kept serial log.
        log: PathBuf,
    },
    /// qemu ended without the guest printing a result (kernel panic, init crash, ...).
    #[error("guest ended without a result (qemu {status}); serial log {log}")]
    NoResult {
        /// qemu's exit status.
        status: String,
        /// The kept serial log.
        log: PathBuf,
    },
    /// The payload failed in the guest.
    #[error("guest payload failed: {result:?}; serial log {log}")]
    Failed {
        /// What the init reported.
        result: GuestResult,
        /// The kept serial log.
        log: PathBuf,
    },
    /// The payload succeeded but libtest did not run exactly the one test.
    #[error("test {test} did not run in the guest (no \"1 passed\"); serial log {log}")]
    TestNotRun {
        /// The test's name.
        test: String,
        /// The kept serial log.
        log: PathBuf,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether this process runs inside a test VM (the init sets [`IN_VM_ENV`]).
pub fn in_vm() -> bool {
    std::env::var(IN_VM_ENV).is_ok_and(|v| v == "1")
}

/// `None` when this machine can run VMs (qemu and the kernel cache are there), else why not.
pub fn available() -> Option<String> {
    available_for(Arch::host())
}

/// [`available`] for guests of `arch`.
pub fn available_for(arch: Arch) -> Option<String> {
    if qemu::find_in_path(arch.qemu()).is_none() {
        return Some(format!("{} not found (run dev/setup)", arch.qemu()));
    }
    Kernel::find(arch).err().map(|e| e.to_string())
}

/// A file the test wants in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFile {
    /// A host file copied to a guest path.
    File {
        /// Host path.
        host: PathBuf,
        /// Guest path.
        guest: String,
    },
    /// A host executable copied with its shared libraries.
    Binary {
        /// Host path.
        host: PathBuf,
        /// Guest path.
        guest: String,
    },
    /// A host directory tree copied to a guest path.
    Tree {
        /// Host path.
        host: PathBuf,
        /// Guest path.
        guest: String,
    },
    /// A file with the given content.
    Bytes {
        /// Guest path.
        guest: String,
        /// Content.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
}

/// How to build and run a VM. Builder-style: `VmOptions::default().module("overlay")`.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Deadline from qemu's start to the guest's result (default 120 s).
    pub timeout: Duration,
    /// Guest memory in MiB (default 1024).
    pub memory_mib: u32,
    /// Guest CPUs (default 2).
    pub cpus: u32,
    /// Guest architecture (default: the host's, which is what test binaries are built for;
    /// another one needs an init and payload built for it).
    pub arch: Arch,
    /// x86_64 machine type (default q35, see [`qemu::Machine`]).
    pub machine: qemu::Machine,
    /// Kernel modules to load, by name or alias; their closure is loaded in order.
    pub modules: Vec<String>,
    /// cgroup v2 controllers the init enables at the root (default cpu, memory, pids, io).
    pub controllers: Vec<String>,
    /// Extra files.
    pub files: Vec<GuestFile>,
    /// Extra environment for the payload.
    pub env: Vec<(String, String)>,
    /// Extra kernel command line.
    pub kernel_args: Vec<String>,
    /// The init binary; default: `keelson-vminit` next to the test binary's directory
    /// (`target/<profile>/keelson-vminit`), or `$KEELSON_VMINIT`.
    pub init: Option<PathBuf>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            timeout: Duration::from_secs(120),
            memory_mib: 1024,
            cpus: 2,
            arch: Arch::host(),
            machine: qemu::Machine::default(),
            modules: Vec::new(),
            controllers: ["cpu", "memory", "pids", "io"].map(String::from).to_vec(),
            files: Vec::new(),
            env: Vec::new(),
            kernel_args: Vec::new(),
            init: None,
        }
    }
}

impl VmOptions {
    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the guest memory.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets the guest architecture.
    pub fn arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// Adds a kernel module (name or alias) to load.
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_owned());
        self
    }

    /// Adds a host file at a guest path.
    pub fn file(mut self, host: impl Into<PathBuf>, guest: &str) -> Self {
        self.files.push(GuestFile::File { host: host.into(), guest: guest.to_owned() });
        self
    }

    /// Adds a host executable, with its shared libraries, at a guest path.
    pub fn binary(mut self, host: impl Into<PathBuf>, guest: &str) -> Self {
        self.files.push(GuestFile::Binary { host: host.into(), guest: guest.to_owned() });
        self
    }

    /// Adds a host directory tree at a guest path.
    pub fn tree(mut self, host: impl Into<PathBuf>, guest: &str) -> Self {
        self.files.push(GuestFile::Tree { host: host.into(), guest: guest.to_owned() });
        self
    }

    /// Adds a file with the given content.
    pub fn bytes(mut self, guest: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push(GuestFile::Bytes { guest: guest.to_owned(), data: data.into(), mode });
        self
    }

    /// Adds an environment variable for the payload.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds kernel command line arguments.
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.kernel_args.push(arg.to_owned());
        self
    }

    /// Uses this init binary unless one is set already.
    pub fn init_if_unset(mut self, init: impl Into<PathBuf>) -> Self {
        if self.init.is_none() {
            self.init = Some(init.into());
        }
        self
    }

    fn init_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.init {
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os("KEELSON_VMINIT") {
            return Ok(PathBuf::from(p));
        }
        target_binary("keelson-vminit")
    }
}

/// The path of the workspace binary `name` in the running test's target dir:
/// `target/<profile>/deps/<test>-<hash>` -> `target/<profile>/<name>`. The binary is there only
/// once cargo has built it (it does so for the binaries of the test's own package).
pub fn target_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(Error::CurrentExe)?;
    Ok(exe.parent().and_then(Path::parent).map_or_else(|| PathBuf::from(name), |d| d.join(name)))
}

/// What a successful VM run reports.
#[derive(Debug, Clone)]
pub struct VmReport {
    /// The kernel release that ran.
    pub kernel_release: String,
    /// qemu start to the init's first line.
    pub boot_to_init: Option<Duration>,
    /// qemu start to the result line.
    pub boot_to_result: Duration,
    /// qemu start until qemu was gone.
    pub total: Duration,
    /// Preparing the kernel, modules and initramfs.
    pub prepare: Duration,
    /// Size of the initramfs.
    pub initramfs_bytes: u64,
    /// The serial console.
    pub transcript: String,
}

/// Runs `argv` (guest paths) as the payload of a fresh VM and waits for it. The payload's
/// binaries must be in `opts.files`; [`run_test_in_vm`] adds the test binary itself.
pub fn run_in_vm(label: &str, argv: &[String], opts: &VmOptions) -> Result<VmReport> {
    let prepare_started = std::time::Instant::now();
    let arch = opts.arch;
    let kernel = Kernel::find(arch)?;
    let image = kernel.boot_image()?;
    let names: Vec<&str> = opts.modules.iter().map(String::as_str).collect();
    let modules = kernel.prepare_modules(&names)?;

    let init = opts.init_path()?;
    if !init.is_file() {
        return Err(Error::NoInit(init));
    }
    let work = tempfile::Builder::new().prefix("keelson-vm-").tempdir().map_err(Error::TempDir)?;
    let mut fs = initramfs::Initramfs::new();
    fs.add_host_binary_as(&init, &stripped(&init, work.path()), "/init")?;
    fs.add_bytes("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    fs.add_bytes("/etc/group", "root:x:0:\n", 0o644)?;
    let mut module_paths = Vec::new();
    for m in &modules {
        let guest = format!("/lib/modules/{}.ko", m.name);
        fs.add_host_file(&m.path, &guest)?;
        module_paths.push(guest);
    }
    for f in &opts.files {
        match f {
            GuestFile::File { host, guest } => fs.add_host_file(host, guest)?,
            GuestFile::Binary { host, guest } => {
                fs.add_host_binary_as(host, &stripped(host, work.path()), guest)?
            }
            GuestFile::Tree { host, guest } => fs.add_host_tree(host, guest)?,
            GuestFile::Bytes { guest, data, mode } => fs.add_bytes(guest, data.clone(), *mode)?,
        };
    }
    let mut env = vec![
        (IN_VM_ENV.to_owned(), "1".to_owned()),
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
        ("RUST_BACKTRACE".to_owned(), "1".to_owned()),
    ];
    env.extend(opts.env.iter().cloned());
    let config = guest::GuestConfig {
        version: guest::CONFIG_VERSION,
        modules: module_paths,
        controllers: opts.controllers.clone(),
        argv: argv.to_vec(),
        env,
    };
    let json = serde_json::to_vec_pretty(&config).expect("the guest config always serializes");
    fs.add_bytes(guest::CONFIG_PATH, json, 0o644)?;

    let initrd = work.path().join("initramfs.cpio");
    fs.write(&initrd)?;
    let initramfs_bytes = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    let prepare = prepare_started.elapsed();

    let log = log_path(label);
    let outcome = qemu::run(&qemu::QemuConfig {
        arch,
        kernel: image,
        initrd,
        append: opts
            .kernel_args
            .iter()
            .cloned()
            .chain(
                std::env::var("KEELSON_VM_KERNEL_ARGS")
                    .ok()
                    .iter()
                    .flat_map(|a| a.split_whitespace().map(str::to_owned).collect::<Vec<_>>()),
            )
            .collect(),
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        machine: opts.machine,
        timeout: opts.timeout,
        log: log.clone(),
        exit_grace: qemu::EXIT_GRACE,
        program: None,
        nonce: qemu::new_nonce(),
    })?;
    let report = VmReport {
        kernel_release: kernel.release.clone(),
        boot_to_init: outcome.init_started,
        boot_to_result: outcome.result_at.unwrap_or(outcome.total),
        total: outcome.total,
        prepare,
        initramfs_bytes,
        transcript: outcome.transcript,
    };
    let verdict = match outcome.result {
        _ if outcome.timed_out => Err(Error::Timeout {
            timeout: opts.timeout,
            qemu_pid: outcome.qemu_pid,
            log: log.clone(),
        }),
        None => Err(Error::NoResult {
            status: outcome
                .qemu_status
                .map_or_else(|| "status unknown".to_owned(), |s| s.to_string()),
            log: log.clone(),
        }),
        Some(result) if !result.success() => Err(Error::Failed { result, log: log.clone() }),
        Some(_) => Ok(report),
    };
    if keep_logs() {
        // For reproducing by hand: the log's first line is the qemu command, naming this file.
        let kept = work.keep();
        eprintln!("kept serial log {} and initramfs in {}", log.display(), kept.display());
    } else if verdict.is_ok() {
        let _ = std::fs::remove_file(&log);
    }
    verdict
}

/// A copy of `binary` without debug sections in `dir` (`objcopy --strip-debug`), or `binary`
/// itself if that fails or `KEELSON_VM_DEBUGINFO=1`. Debug info is most of a debug build's
/// size (21 MB -> 4 MB for a test binary) and unpacking the initramfs under TCG costs about a
/// second per 30 MB; panics still name file and line, backtraces still name functions.
fn stripped(binary: &Path, dir: &Path) -> PathBuf {
    if std::env::var("KEELSON_VM_DEBUGINFO").is_ok_and(|v| v == "1") {
        return binary.to_owned();
    }
    let name = binary.file_name().map_or_else(|| "binary".into(), |n| n.to_os_string());
    let out = dir.join("stripped").join(name);
    let ok = std::fs::create_dir_all(dir.join("stripped")).is_ok()
        && !out.exists()
        && std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&out)
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        out
    } else {
        tracing::debug!(binary = %binary.display(), "not stripped: objcopy failed or name taken");
        binary.to_owned()
    }
}

/// Runs the test `name` of the module `module_path` (as `module_path!()` gives it: the crate
/// name first, which libtest leaves out) of the current test binary inside a VM.
pub fn run_test_in_vm(module_path: &str, name: &str, opts: VmOptions) -> Result<VmReport> {
    run_named_test(&libtest_name(module_path, name), opts)
}

/// The name libtest gives test `name` in module `module_path` (`module_path!()`, crate first).
pub fn libtest_name(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, inner)) => format!("{inner}::{name}"),
        None => name.to_owned(),
    }
}

/// Runs the test whose libtest name (path without the crate) is `test` inside a VM.
pub fn run_named_test(test: &str, opts: VmOptions) -> Result<VmReport> {
    let exe = std::env::current_exe().map_err(Error::CurrentExe)?;
    let guest_exe =
        format!("/bin/{}", exe.file_name().and_then(|n| n.to_str()).unwrap_or("keelson-test"));
    let opts = opts.clone_with_binary(&exe, &guest_exe);
    let argv: Vec<String> =
        [guest_exe.as_str(), "--exact", test, "--nocapture", "--test-threads=1"]
            .map(String::from)
            .to_vec();
    let report = run_in_vm(test, &argv, &opts)?;
    let ran = report.transcript.lines().any(|l| l.contains("test result: ok. 1 passed"));
    if !ran {
        let log = log_path(test);
        let _ = std::fs::write(&log, &report.transcript);
        return Err(Error::TestNotRun { test: test.to_owned(), log });
    }
    Ok(report)
}

impl VmOptions {
    fn clone_with_binary(&self, host: &Path, guest: &str) -> VmOptions {
        let mut opts = self.clone();
        opts.files.push(GuestFile::Binary { host: host.to_owned(), guest: guest.to_owned() });
        opts
    }
}

/// The libtest name of a test from the type name of a function item defined inside it
/// (`vm::some_test::__here` -> `some_test`): what [`vm_test!`](crate::vm_test) uses.
pub fn test_name_from_marker_fn(type_name: &str) -> String {
    let inner = type_name.rsplit_once("::").map_or(type_name, |(path, _marker)| path);
    inner.split_once("::").map_or(inner, |(_crate, rest)| rest).to_owned()
}

fn keep_logs() -> bool {
    std::env::var("KEELSON_VM_KEEP_LOGS").is_ok_and(|v| v == "1")
}

fn log_path(label: &str) -> PathBuf {
    let dir = std::env::var_os("KEELSON_VM_LOGS").map_or_else(
        || std::env::temp_dir().join(format!("keelson-vm-logs-{}", nix::unistd::getuid())),
        PathBuf::from,
    );
    let safe: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    dir.join(format!("{safe}-{stamp}-{}.log", std::process::id()))
}

/// Makes the rest of the calling `#[test]` function run inside a VM (see the [module
/// docs](crate::vm)). Takes a [`VmOptions`], default if left out. Usable in the integration
/// tests of `keelson-tests`, which build the `keelson-vminit` binary.
#[macro_export]
macro_rules! vm_test {
    () => {
        $crate::vm_test!($crate::vm::VmOptions::default())
    };
    ($opts:expr) => {
        if !$crate::vm::in_vm() {
            $crate::require!($crate::Tier::Vm, $crate::vm::available());
            fn __keelson_vm_here() {}
            let test = $crate::vm::test_name_from_marker_fn(::std::any::type_name_of_val(
                &__keelson_vm_here,
            ));
            let opts: $crate::vm::VmOptions = $opts;
            let opts = opts.init_if_unset(env!("CARGO_BIN_EXE_keelson-vminit"));
            match $crate::vm::run_named_test(&test, opts) {
                Ok(report) => eprintln!(
                    "{test}: passed in the VM (kernel {}, init after {:?}, result after {:?}, qemu total {:?}, prepare {:?})",
                    report.kernel_release,
                    report.boot_to_init,
                    report.boot_to_result,
                    report.total,
                    report.prepare,
                ),
                Err(e) => panic!("{test} in the VM: {}", $crate::vm::error_chain(&e)),
            }
            return;
        }
    };
}

/// An error and its sources, joined with `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_name_comes_from_the_enclosing_function() {
        fn marker() {}
        let name = test_name_from_marker_fn(std::any::type_name_of_val(&marker));
        assert_eq!(name, "vm::tests::test_name_comes_from_the_enclosing_function");
        assert_eq!(test_name_from_marker_fn("vm::boots::__here"), "boots");
        assert_eq!(test_name_from_marker_fn("vm::m::boots::__here"), "m::boots");
    }

    #[test]
    fn run_test_in_vm_names_follow_libtest() {
        // module_path!() of a top-level integration test is just the crate name.
        assert_eq!(libtest_name("vm", "boots"), "boots");
        assert_eq!(libtest_name("vm::cgroups", "boots"), "cgroups::boots");
        assert_eq!(libtest_name(module_path!(), "x"), "vm::tests::x");
    }

    #[test]
    fn options_builder_collects_files_modules_and_env() {
        let o = VmOptions::default()
            .module("overlay")
            .binary("/usr/bin/true", "/bin/true")
            .tree("/tmp/x", "/images/x")
            .bytes("/etc/x", "y", 0o600)
            .env("A", "b")
            .timeout(Duration::from_secs(5));
        assert_eq!(o.modules, ["overlay"]);
        assert_eq!(o.files.len(), 3);
        assert_eq!(o.env, [("A".to_owned(), "b".to_owned())]);
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.controllers, ["cpu", "memory", "pids", "io"]);
        assert_eq!(
            o.clone().init_if_unset("/a").init_if_unset("/b").init,
            Some(PathBuf::from("/a"))
        );
    }
}
