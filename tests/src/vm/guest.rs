//! The guest side: what `keelson-vminit`, PID 1 of a test VM, does, and the contract between it
//! and the host (the config file it reads and the marker lines it prints).
//!
//! The init, in order: mounts `/proc`, `/sys`, `/dev` (devtmpfs: Debian's kernel does not mount
//! it itself), `/dev/pts`, `/dev/shm`, `/sys/fs/cgroup` (cgroup2, the only hierarchy) with the
//! configured controllers enabled in the root's `cgroup.subtree_control`, and tmpfs on `/tmp`
//! and `/run`; loads the configured modules in order with `finit_module` (`EEXIST` is fine,
//! `ENODEV` is reported and tolerated: a driver for hardware the virtual CPU lacks, such as
//! `crc32c_intel`); runs the payload with a clean environment and waits for it, reaping
//! orphans meanwhile; prints the [`RESULT_MARKER`] line; syncs and powers off.
//!
//! It refuses to run unless it is PID 1, so starting it by mistake on a host does nothing.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Where the init reads its [`GuestConfig`].
pub const CONFIG_PATH: &str = "/keelson/vm.json";
/// Version of [`GuestConfig`].
pub const CONFIG_VERSION: u32 = 1;
/// Printed by the init as soon as it starts.
pub const INIT_MARKER: &str = "KEELSON-VMINIT-STARTED";
/// Starts the line that carries the payload's result: `nonce=<the run's nonce>`, then
/// `exit=<code>`, `signal=<number>` or `error=<message>` (the init itself failed).
pub const RESULT_MARKER: &str = "KEELSON-VM-RESULT";
/// The kernel command line argument that carries the run's nonce (a value the host picks per
/// run, so that only the init's own marker line counts).
pub const NONCE_ARG: &str = "keelson.nonce=";

/// What the init does, written by the host into the initramfs at [`CONFIG_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestConfig {
    /// [`CONFIG_VERSION`].
    pub version: u32,
    /// Guest paths of uncompressed modules, in load order.
    pub modules: Vec<String>,
    /// cgroup v2 controllers to enable in the root's `cgroup.subtree_control`.
    pub controllers: Vec<String>,
    /// The payload's command line; `argv[0]` is a guest path.
    pub argv: Vec<String>,
    /// The payload's whole environment.
    pub env: Vec<(String, String)>,
}

/// How the payload ended, as reported by the init's marker line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestResult {
    /// The payload exited with this code.
    Exited(i32),
    /// The payload was killed by this signal.
    Signaled(i32),
    /// The init failed before or while running the payload.
    InitError(String),
}

impl GuestResult {
    /// The marker line for this result (without newline), carrying the run's nonce.
    pub fn line(&self, nonce: &str) -> String {
        let what = match self {
            GuestResult::Exited(code) => format!("exit={code}"),
            GuestResult::Signaled(sig) => format!("signal={sig}"),
            GuestResult::InitError(msg) => format!("error={}", msg.replace('\n', " ")),
        };
        format!("{RESULT_MARKER} nonce={nonce} {what}")
    }

    /// Finds and parses the marker line of the run with `nonce` in one line of serial output
    /// (which may carry kernel output before it on the same line). A marker with another or no
    /// nonce (a payload printing such a line, say) is not a result.
    pub fn parse(line: &str, nonce: &str) -> Option<GuestResult> {
        let prefix = format!("{RESULT_MARKER} nonce={nonce} ");
        let rest = line[line.find(&prefix)? + prefix.len()..].trim();
        if let Some(code) = rest.strip_prefix("exit=") {
            code.trim().parse().ok().map(GuestResult::Exited)
        } else if let Some(sig) = rest.strip_prefix("signal=") {
            sig.trim().parse().ok().map(GuestResult::Signaled)
        } else {
            rest.strip_prefix("error=").map(|m| GuestResult::InitError(m.to_owned()))
        }
    }

    /// Whether the payload succeeded.
    pub fn success(&self) -> bool {
        *self == GuestResult::Exited(0)
    }
}

/// The init's `main`: never returns (PID 1 must not exit; it powers the VM off instead).
pub fn init_main() -> ! {
    if std::process::id() != 1 {
        eprintln!("keelson-vminit is the init of a test VM and runs only as PID 1");
        std::process::exit(2);
    }
    let started = Instant::now();
    say(INIT_MARKER);
    let result = match boot_and_run(started) {
        Ok(result) => result,
        Err(msg) => GuestResult::InitError(msg),
    };
    // A newline first: kernel messages may have left a partial line on the console.
    say(&format!("\n{}", result.line(&cmdline_nonce())));
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot with LINUX_REBOOT_CMD_POWER_OFF only ends the VM; as PID 1 with
    // CAP_SYS_BOOT it does not return on success.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF) };
    say("keelson-vminit: power off failed; halting");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// The run's nonce, from `keelson.nonce=` on the kernel command line (`/proc` is mounted by
/// then, unless mounting failed: then the host sees no result and keeps the log).
fn cmdline_nonce() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| {
            c.split_whitespace().find_map(|w| w.strip_prefix(NONCE_ARG).map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn boot_and_run(started: Instant) -> Result<GuestResult, String> {
    mount_all()?;
    let text =
        std::fs::read_to_string(CONFIG_PATH).map_err(|e| format!("reading {CONFIG_PATH}: {e}"))?;
    let config: GuestConfig =
        serde_json::from_str(&text).map_err(|e| format!("parsing {CONFIG_PATH}: {e}"))?;
    if config.version != CONFIG_VERSION {
        return Err(format!(
            "{CONFIG_PATH} has version {}, this init reads {CONFIG_VERSION}",
            config.version
        ));
    }
    enable_controllers(&config.controllers)?;
    let modules_started = Instant::now();
    for module in &config.modules {
        load_module(module)?;
    }
    let names: Vec<&str> = config
        .modules
        .iter()
        .map(|m| m.rsplit('/').next().unwrap_or(m).trim_end_matches(".ko"))
        .collect();
    say(&format!(
        "keelson-vminit: ready after {} ms, kernel uptime {} s; modules loaded in {} ms: {}",
        started.elapsed().as_millis(),
        uptime(),
        modules_started.elapsed().as_millis(),
        if names.is_empty() { "none".to_owned() } else { names.join(" ") },
    ));
    run_payload(&config)
}

fn mount_all() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let steps: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", common | MsFlags::MS_NOEXEC, None),
        ("sysfs", "/sys", "sysfs", common | MsFlags::MS_NOEXEC, None),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("ptmxmode=0666,mode=0620"),
        ),
        ("shm", "/dev/shm", "tmpfs", common, Some("mode=1777")),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            common | MsFlags::MS_NOEXEC,
            Some("nsdelegate,memory_recursiveprot"),
        ),
        ("tmpfs", "/tmp", "tmpfs", common, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", common, Some("mode=0755")),
    ];
    for (source, target, fstype, flags, data) in steps {
        std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
        mount(Some(source), target, Some(fstype), flags, data)
            .map_err(|e| format!("mounting {fstype} on {target}: {e}"))?;
    }
    Ok(())
}

fn enable_controllers(controllers: &[String]) -> Result<(), String> {
    if controllers.is_empty() {
        return Ok(());
    }
    let path = "/sys/fs/cgroup/cgroup.subtree_control";
    let line: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    std::fs::write(path, line.join(" "))
        .map_err(|e| format!("writing {:?} to {path}: {e}", line.join(" ")))
}

fn load_module(path: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening module {path}: {e}"))?;
    let params = c"";
    // SAFETY: finit_module reads the module from a valid open fd and a NUL-terminated,
    // empty parameter string that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Ok(()),
        Some(libc::ENODEV) => {
            say(&format!("keelson-vminit: module {path}: no such device here (ENODEV), skipped"));
            Ok(())
        }
        _ => Err(format!("loading module {path}: {err}")),
    }
}

fn run_payload(config: &GuestConfig) -> Result<GuestResult, String> {
    use nix::sys::wait::{wait, WaitStatus};
    let (program, args) = config.argv.split_first().ok_or("empty payload command line")?;
    let child = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).map_err(|e| e.to_string())?);
    // Reap everything (orphans are re-parented to us) until the payload itself ends.
    loop {
        match wait() {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(GuestResult::Exited(code)),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                return Ok(GuestResult::Signaled(sig as i32))
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_marker_lines_round_trip() {
        for r in [
            GuestResult::Exited(0),
            GuestResult::Exited(101),
            GuestResult::Signaled(9),
            GuestResult::InitError("mounting x: EPERM".into()),
        ] {
            assert_eq!(GuestResult::parse(&r.line("n1"), "n1"), Some(r.clone()));
            // Kernel output glued before the marker on the same console line.
            assert_eq!(
                GuestResult::parse(&format!("[  3.1] oom-kill{}", r.line("n1")), "n1"),
                Some(r)
            );
        }
        assert_eq!(GuestResult::parse("test result: ok", "n1"), None);
        assert_eq!(GuestResult::parse(&format!("{RESULT_MARKER} nonce=n1 exit=x"), "n1"), None);
        assert!(GuestResult::Exited(0).success());
        assert!(!GuestResult::Exited(1).success());
    }

    #[test]
    fn marker_of_another_run_or_without_nonce_is_not_a_result() {
        let line = GuestResult::Exited(0).line("n1");
        assert_eq!(GuestResult::parse(&line, "n2"), None);
        assert_eq!(GuestResult::parse(&format!("{RESULT_MARKER} exit=0"), "n1"), None);
        assert_eq!(GuestResult::parse(&GuestResult::Exited(0).line("n10"), "n1"), None);
    }
}
