//! Running qemu: one guest, serial console captured, a deadline, and qemu killed on every path.
//!
//! qemu runs with TCG (KVM here is a nested `kvm_pvm` that crawls and dies, see TOOLCHAIN.md),
//! no network device, no disk, no default devices; the serial console goes to qemu's stdout,
//! which a thread reads line by line into the log file and the run's transcript. The run ends
//! when qemu exits (the init powers off after printing its result), or at the deadline, or a
//! few seconds after the result line if qemu does not exit by itself.
//!
//! qemu is killed on every way out: a guard kills and reaps it on return and on unwinding (a
//! panicking test), and `PR_SET_PDEATHSIG` kills it if the test process itself dies.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::guest::{GuestResult, INIT_MARKER, NONCE_ARG};
use super::kernel::Arch;

/// How long qemu may take by default to exit by itself after the guest printed its result.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Errors of running qemu.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// qemu is not installed.
    #[error("{binary} not found (install qemu-system from bookworm-backports: run dev/setup)")]
    Missing {
        /// The emulator binary.
        binary: &'static str,
    },
    /// qemu could not be started.
    #[error("starting {binary}")]
    Spawn {
        /// The emulator binary.
        binary: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The serial log could not be written.
    #[error("writing serial log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The x86_64 machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// `q35`: has an HPET, so the guest's TSC calibration never depends on PIT timing. The
    /// default, because on a loaded 2-core host TCG misses the PIT calibration window often.
    #[default]
    Q35,
    /// `microvm`: no PCI and no HPET; boots about a second faster, but when the PIT calibration
    /// fails under host load the kernel has no clock reference and hangs early in boot.
    Microvm,
}

/// One qemu run.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Guest architecture.
    pub arch: Arch,
    /// `-kernel`: `vmlinux` (x86_64, PVH) or `Image` (aarch64).
    pub kernel: PathBuf,
    /// `-initrd`.
    pub initrd: PathBuf,
    /// Extra kernel command line, after the console and panic settings.
    pub append: Vec<String>,
    /// Guest memory.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Machine type (x86_64 only; aarch64 always uses `virt`).
    pub machine: Machine,
    /// Deadline from qemu's start.
    pub timeout: Duration,
    /// Where the serial console (and qemu's stderr, prefixed) is written.
    pub log: PathBuf,
    /// How long qemu may take to exit by itself after the guest printed its result.
    pub exit_grace: Duration,
    /// The emulator to run instead of `arch`'s qemu from `PATH` (tests use a fake).
    pub program: Option<PathBuf>,
    /// This run's nonce: passed as `keelson.nonce=` on the kernel command line; only a result
    /// line carrying it counts (see [`GuestResult::parse`]).
    pub nonce: String,
}

/// A nonce for one run: unique enough to tell runs apart, not a secret.
pub fn new_nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{nanos:08x}{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The guest's result line, if it printed one.
    pub result: Option<GuestResult>,
    /// Time from qemu's start to the init's first line.
    pub init_started: Option<Duration>,
    /// Time from qemu's start to the result line.
    pub result_at: Option<Duration>,
    /// Time from qemu's start until it was gone.
    pub total: Duration,
    /// Whether the deadline killed qemu.
    pub timed_out: bool,
    /// qemu's process id (gone by the time this is returned).
    pub qemu_pid: u32,
    /// qemu's exit status.
    pub qemu_status: Option<ExitStatus>,
    /// The whole serial console (and qemu's stderr), lossily decoded.
    pub transcript: String,
}

/// Whether `binary` is on `PATH`.
pub fn find_in_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.is_file())
}

/// The qemu command line for `cfg` (without the program).
pub fn qemu_args(cfg: &QemuConfig) -> Vec<String> {
    let (machine, cpu, console) = match cfg.arch {
        Arch::X86_64 => match cfg.machine {
            Machine::Q35 => ("q35", "max", "ttyS0"),
            Machine::Microvm => ("microvm", "max", "ttyS0"),
        },
        Arch::Aarch64 => ("virt", "cortex-a57", "ttyAMA0"),
    };
    let mut append = vec![
        format!("console={console}"),
        "panic=-1".to_owned(),
        "quiet".to_owned(),
        format!("{NONCE_ARG}{}", cfg.nonce),
    ];
    append.extend(cfg.append.iter().cloned());
    let mut args: Vec<String> = [
        "-accel",
        "tcg",
        "-M",
        machine,
        "-cpu",
        cpu,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-m".to_owned(),
        cfg.memory_mib.to_string(),
        "-smp".to_owned(),
        cfg.cpus.to_string(),
        "-kernel".to_owned(),
        cfg.kernel.display().to_string(),
        "-initrd".to_owned(),
        cfg.initrd.display().to_string(),
        "-append".to_owned(),
        append.join(" "),
    ]);
    args
}

/// Kills and reaps qemu when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

enum Line {
    Serial(Vec<u8>),
    Stderr(Vec<u8>),
}

fn pump(read: impl Read, tx: mpsc::Sender<(Instant, Line)>, wrap: fn(Vec<u8>) -> Line) {
    let mut reader = BufReader::new(read);
    loop {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send((Instant::now(), wrap(buf))).is_err() {
                    return;
                }
            }
        }
    }
}

/// Boots the guest and waits for it (see the module docs).
pub fn run(cfg: &QemuConfig) -> Result<Outcome> {
    let binary = cfg.arch.qemu();
    let program = match &cfg.program {
        Some(p) => p.clone(),
        None => find_in_path(binary).ok_or(Error::Missing { binary })?,
    };
    let log_err = |source| Error::Log { path: cfg.log.clone(), source };
    if let Some(dir) = cfg.log.parent() {
        std::fs::create_dir_all(dir).map_err(log_err)?;
    }
    let mut log = File::create(&cfg.log).map_err(log_err)?;
    let args = qemu_args(cfg);
    writeln!(log, "# {} {}", program.display(), args.join(" ")).map_err(log_err)?;

    let mut cmd = Command::new(&program);
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the closure only calls prctl, which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| Error::Spawn { binary, source })?;
    let qemu_pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut guard = Guard(child);
    tracing::debug!(pid = qemu_pid, log = %cfg.log.display(), "qemu started");

    let (tx, rx) = mpsc::channel();
    let mut pumps = Vec::new();
    if let Some(out) = stdout {
        let tx = tx.clone();
        pumps.push(std::thread::spawn(move || pump(out, tx, Line::Serial)));
    }
    if let Some(err) = stderr {
        let tx = tx.clone();
        pumps.push(std::thread::spawn(move || pump(err, tx, Line::Stderr)));
    }
    drop(tx);

    let mut outcome = Outcome {
        result: None,
        init_started: None,
        result_at: None,
        total: Duration::ZERO,
        timed_out: false,
        qemu_pid,
        qemu_status: None,
        transcript: String::new(),
    };
    let mut deadline = start + cfg.timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            outcome.timed_out = outcome.result.is_none();
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok((at, Line::Serial(bytes))) => {
                log.write_all(&bytes).map_err(log_err)?;
                let text = String::from_utf8_lossy(&bytes);
                if outcome.init_started.is_none() && text.contains(INIT_MARKER) {
                    outcome.init_started = Some(at - start);
                }
                if outcome.result.is_none() {
                    if let Some(result) = GuestResult::parse(&text, &cfg.nonce) {
                        outcome.result = Some(result);
                        outcome.result_at = Some(at - start);
                        deadline = deadline.min(Instant::now() + cfg.exit_grace);
                    }
                }
                outcome.transcript.push_str(&text);
            }
            Ok((_, Line::Stderr(bytes))) => {
                log.write_all(b"qemu: ").and_then(|()| log.write_all(&bytes)).map_err(log_err)?;
                outcome.transcript.push_str("qemu: ");
                outcome.transcript.push_str(&String::from_utf8_lossy(&bytes));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: qemu is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Ok(None) = guard.0.try_wait() {
        let _ = guard.0.kill();
    }
    outcome.qemu_status = guard.0.wait().ok();
    outcome.total = start.elapsed();
    drop(guard);
    for p in pumps {
        let _ = p.join();
    }
    // Lines that arrived between the last receive and qemu's end.
    while let Ok((_, line)) = rx.try_recv() {
        let (prefix, bytes) = match line {
            Line::Serial(b) => ("", b),
            Line::Stderr(b) => ("qemu: ", b),
        };
        log.write_all(prefix.as_bytes()).and_then(|()| log.write_all(&bytes)).map_err(log_err)?;
        outcome.transcript.push_str(prefix);
        outcome.transcript.push_str(&String::from_utf8_lossy(&bytes));
    }
    if outcome.timed_out {
        writeln!(log, "\n# killed at the {:?} timeout", cfg.timeout).map_err(log_err)?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A config that runs `script` (a shell script standing in for qemu) instead of qemu.
    fn fake(dir: &Path, script: &str, timeout: Duration) -> QemuConfig {
        let program = dir.join("fake-qemu");
        std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).expect("write fake");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        QemuConfig {
            arch: Arch::X86_64,
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd"),
            append: vec!["extra=1".to_owned()],
            memory_mib: 256,
            cpus: 1,
            machine: Machine::Q35,
            timeout,
            log: dir.join("serial.log"),
            exit_grace: Duration::from_millis(500),
            program: Some(program),
            nonce: "n1".to_owned(),
        }
    }

    fn gone(pid: u32) -> bool {
        // Reaped by the runner: no /proc entry (pids are not reused this quickly).
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn qemu_command_line_has_no_network_and_no_reboot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = qemu_args(&fake(dir.path(), "", Duration::from_secs(1)));
        let joined = args.join(" ");
        for want in [
            "-accel tcg",
            "-M q35",
            "-nodefaults",
            "-no-reboot",
            "-serial stdio",
            "-m 256",
            "-smp 1",
        ] {
            assert!(joined.contains(want), "{want} missing: {joined}");
        }
        assert!(!joined.contains("-net") && !joined.contains("-device"), "{joined}");
        let append = args.last().expect("append");
        assert_eq!(append, "console=ttyS0 panic=-1 quiet keelson.nonce=n1 extra=1");
    }

    #[test]
    fn runner_reads_markers_and_logs_the_serial_console() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "echo booting; echo KEELSON-VMINIT-STARTED; echo oops >&2; echo 'KEELSON-VM-RESULT nonce=n1 exit=3'";
        let out = run(&fake(dir.path(), script, Duration::from_secs(20))).expect("run");
        assert_eq!(out.result, Some(GuestResult::Exited(3)));
        assert!(out.init_started.is_some() && out.result_at.is_some());
        assert!(!out.timed_out);
        assert!(out.qemu_status.is_some_and(|s| s.success()));
        let log = std::fs::read_to_string(dir.path().join("serial.log")).expect("log");
        assert!(log.contains("booting\n") && log.contains("qemu: oops\n"), "{log}");
        assert!(out.transcript.contains("KEELSON-VM-RESULT nonce=n1 exit=3"));
        assert!(gone(out.qemu_pid));
    }

    #[test]
    fn runner_kills_a_silent_guest_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let out = run(&fake(
            dir.path(),
            "echo KEELSON-VMINIT-STARTED; exec sleep 600",
            Duration::from_secs(1),
        ))
        .expect("run");
        assert!(out.timed_out && out.result.is_none());
        assert!(out.init_started.is_some());
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(gone(out.qemu_pid), "the fake qemu survived");
        let log = std::fs::read_to_string(dir.path().join("serial.log")).expect("log");
        assert!(log.contains("killed at the 1s timeout"), "{log}");
    }

    #[test]
    fn runner_kills_a_guest_that_does_not_power_off_after_its_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let out = run(&fake(
            dir.path(),
            "echo 'KEELSON-VM-RESULT nonce=n1 exit=0'; exec sleep 600",
            Duration::from_secs(60),
        ))
        .expect("run");
        assert_eq!(out.result, Some(GuestResult::Exited(0)));
        assert!(!out.timed_out, "a result arrived: not a timeout");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited {:?} instead of the grace",
            started.elapsed()
        );
        assert!(gone(out.qemu_pid));
    }

    #[test]
    fn runner_ignores_a_result_line_of_another_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "echo 'KEELSON-VM-RESULT nonce=other exit=0'; echo 'KEELSON-VM-RESULT exit=0'";
        let out = run(&fake(dir.path(), script, Duration::from_secs(20))).expect("run");
        assert_eq!(out.result, None, "a marker without this run's nonce was taken");
    }

    #[test]
    fn nonces_differ_between_runs() {
        assert_ne!(new_nonce(), new_nonce());
    }

    #[test]
    fn missing_qemu_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = fake(dir.path(), "", Duration::from_secs(1));
        cfg.program = Some(dir.path().join("no-such-qemu"));
        let err = run(&cfg).expect_err("no program");
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
    }
}
