//! Seccomp profiles compiled to BPF once, not once per container.
//!
//! libcontainer compiles a container's `linux.seccomp` with libseccomp inside the container's
//! init process, every time: for the RuntimeDefault profile (about 350 syscalls on three
//! architectures) that is most of the CPU time of creating a container. Every pod with the
//! same profile and capabilities gets the same program, so the runtime compiles each distinct
//! profile once ([`FilterCache`]), writes the program next to the bundle's `config.json` as
//! [`BUNDLE_FILTER`], and removes `linux.seccomp` from the copy libcontainer reads
//! ([`prepare_bundle_seccomp`]). The shim's executor loads the program with `seccomp(2)` as
//! the last step before `execve`, for the container's process and for every exec.
//!
//! Loading a filter needs `no_new_privs` or `CAP_SYS_ADMIN`. Only processes that will have
//! one of them when the executor runs take this path; the others (privilege escalation
//! allowed, no `CAP_SYS_ADMIN`) keep `linux.seccomp` in the spec and libcontainer loads it
//! before dropping capabilities, as before. So do profiles with a notify action or filter
//! flags, which need libcontainer's listener plumbing.
//!
//! The translation from the OCI profile to libseccomp rules is libcontainer's and runc's:
//! actions and their default errno (`EPERM`), rules whose action is the default skipped,
//! unknown syscall names skipped, several comparisons of one argument added as separate rules,
//! and masked comparisons read as the runtime spec defines them (`value` is the mask). The
//! program is libseccomp's own export, the bytes `seccomp_load` would hand the kernel.

use std::collections::HashMap;
use std::collections::HashSet;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, Spec,
};
use sha2::{Digest, Sha256};

pub use keelson_shim_proto::seccomp::BUNDLE_FILTER;
use keelson_shim_proto::seccomp::{Program, INSN_LEN};

/// Errors compiling or caching a filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// libseccomp refused the profile.
    #[error("compile seccomp profile: {op}")]
    Compile {
        /// What was being done.
        op: String,
        /// The cause.
        source: libseccomp::error::SeccompError,
    },
    /// The cache or the bundle could not be written or read.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

type Result<T, E = FilterError> = std::result::Result<T, E>;

/// Compiled programs by profile digest, in memory and in a directory on tmpfs (so a restarted
/// runtime does not compile again, and a reboot starts clean).
#[derive(Debug)]
pub struct FilterCache {
    dir: PathBuf,
    programs: Mutex<HashMap<String, Arc<[u8]>>>,
}

impl FilterCache {
    /// A cache keeping its files in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), programs: Mutex::new(HashMap::new()) }
    }

    /// The program for `seccomp`, compiled at most once per distinct profile.
    pub fn program(&self, seccomp: &LinuxSeccomp) -> Result<Arc<[u8]>> {
        let key = digest(seccomp);
        if let Some(p) = self.programs.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let path = self.dir.join(format!("{key}.bpf"));
        let program: Arc<[u8]> = match std::fs::read(&path) {
            Ok(bytes) if Program::parse(&bytes).is_ok() => bytes.into(),
            // A missing or torn file (a crash mid-write cannot leave one: files are renamed
            // into place) is compiled again.
            Ok(_) | Err(_) => self.compile_into(seccomp, &path)?.into(),
        };
        self.programs.lock().unwrap_or_else(|e| e.into_inner()).insert(key, program.clone());
        Ok(program)
    }

    fn compile_into(&self, seccomp: &LinuxSeccomp, path: &Path) -> Result<Vec<u8>> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| FilterError::Io { op, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&self.dir).map_err(io("create", &self.dir))?;
        compile(seccomp)?
            .export_bpf(tmp.as_file())
            .map_err(|source| FilterError::Compile { op: "export BPF".into(), source })?;
        let mut bytes = Vec::new();
        tmp.as_file_mut().rewind().map_err(io("rewind", tmp.path()))?;
        tmp.as_file_mut().read_to_end(&mut bytes).map_err(io("read", tmp.path()))?;
        tmp.persist(path).map_err(|e| FilterError::Io {
            op: "rename",
            path: path.to_owned(),
            source: e.error,
        })?;
        tracing::debug!(path = %path.display(), insns = bytes.len() / INSN_LEN, "compiled seccomp profile");
        Ok(bytes)
    }
}

/// Whether the process of `spec` can load its own filter just before `execve`: it has
/// `no_new_privs` or keeps `CAP_SYS_ADMIN` in its effective set, and the profile needs none of
/// libcontainer's notify plumbing or filter flags.
pub fn executor_can_load(spec: &Spec) -> bool {
    let Some(process) = spec.process() else { return false };
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return false;
    };
    let nnp = process.no_new_privileges() == Some(true);
    let sys_admin = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.effective().as_ref())
        .is_some_and(|e| e.contains(&Capability::SysAdmin));
    (nnp || sys_admin)
        && seccomp.flags().as_ref().is_none_or(|f| f.is_empty())
        && seccomp.default_action() != LinuxSeccompAction::ScmpActNotify
        && !seccomp
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
}

/// Prepares a bundle's seccomp for libcontainer: when the executor can load the filter
/// ([`executor_can_load`]), writes the compiled program to `<bundle>/seccomp.bpf` and removes
/// `linux.seccomp` from `spec`; otherwise leaves the profile for libcontainer to load (then
/// the caller still adapts it, see [`super::adapt_for_libcontainer`]). Returns whether the
/// program was written.
pub fn prepare_bundle_seccomp(cache: &FilterCache, spec: &mut Spec, bundle: &Path) -> Result<bool> {
    let path = bundle.join(BUNDLE_FILTER);
    if !executor_can_load(spec) {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(FilterError::Io { op: "remove", path, source }),
        }
        return Ok(false);
    }
    let Some(linux) = spec.linux_mut() else { return Ok(false) };
    let Some(seccomp) = linux.seccomp().clone() else { return Ok(false) };
    let program = cache.program(&seccomp)?;
    std::fs::write(&path, &program).map_err(|source| FilterError::Io {
        op: "write",
        path,
        source,
    })?;
    linux.set_seccomp(None);
    Ok(true)
}

/// The cache key: the profile as JSON plus what else shapes the program.
fn digest(seccomp: &LinuxSeccomp) -> String {
    let mut h = Sha256::new();
    h.update(b"keelson-seccomp-v1\0");
    h.update(std::env::consts::ARCH.as_bytes());
    let v = ScmpVersion::current().map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro));
    h.update(v.unwrap_or_default().as_bytes());
    h.update(b"\0");
    h.update(serde_json::to_vec(seccomp).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Builds the libseccomp filter context for `seccomp` (not loaded).
pub fn compile(seccomp: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let err = |op: String| move |source| FilterError::Compile { op, source };
    let default = action(seccomp.default_action(), seccomp.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).map_err(err("new filter".into()))?;
    for &a in seccomp.architectures().iter().flatten() {
        ctx.add_arch(arch(a)).map_err(err(format!("add architecture {a:?}")))?;
    }
    // The executor sets nothing: no_new_privs comes from the spec, through libcontainer.
    ctx.set_ctl_nnp(false).map_err(err("clear the nnp attribute".into()))?;
    for rule in seccomp.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let args = rule.args().as_deref().unwrap_or_default();
            let cmps: Vec<ScmpArgCompare> = args
                .iter()
                .map(|a| {
                    let index = a.index() as u32;
                    match a.op() {
                        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpArgCompare::new(
                            index,
                            ScmpCompareOp::MaskedEqual(a.value()),
                            a.value_two().unwrap_or(0),
                        ),
                        op => ScmpArgCompare::new(index, compare(op), a.value()),
                    }
                })
                .collect();
            let mut seen = HashSet::new();
            let one_per_arg = args.iter().all(|a| seen.insert(a.index()));
            let add = |ctx: &mut ScmpFilterContext, cmps: &[ScmpArgCompare]| {
                if cmps.is_empty() {
                    ctx.add_rule(act, sc)
                } else {
                    ctx.add_rule_conditional(act, sc, cmps)
                }
                .map(|_| ())
                .map_err(err(format!("add rule for {name}")))
            };
            if one_per_arg {
                add(&mut ctx, &cmps)?;
            } else {
                for c in &cmps {
                    add(&mut ctx, std::slice::from_ref(c))?;
                }
            }
        }
    }
    Ok(ctx)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    let errno = errno.map_or(libc::EPERM, |e| i32::try_from(e).unwrap_or(libc::EPERM));
    match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(u16::try_from(errno).unwrap_or(0)),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    }
}

fn compare(op: LinuxSeccompOperator) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // Handled by the caller: the mask is an operand of its own.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(u64::MAX),
    }
}

fn arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}
