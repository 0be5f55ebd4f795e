//! Seccomp profiles: the RuntimeDefault profile and `Localhost` profiles, resolved for one
//! architecture and one capability set into the OCI `linux.seccomp` section.
//!
//! Profiles are data in the Docker/moby profile format, a superset of the OCI one: besides
//! `architectures` and plain rules it has an `archMap` (native architecture plus its
//! sub-architectures) and rules conditional on the architecture and on the container's bounding
//! capabilities (`includes`/`excludes`). The RuntimeDefault profile is containerd's default
//! profile (`contrib/seccomp/seccomp_default.go`) written as such a file,
//! `seccomp_default.json`: an allow-list with `SCMP_ACT_ERRNO`/`EPERM` as the default action,
//! where `unshare`, `setns`, `mount` and namespace flags of `clone` are allowed only with
//! `CAP_SYS_ADMIN`, and `clone3` fails with `ENOSYS` without it (so libc falls back to `clone`,
//! whose flags the filter can inspect).
//!
//! Resolution drops the rules whose conditions do not hold and strips the conditions, so the
//! result is a plain OCI profile that libcontainer loads as is. Syscall names that do not exist
//! on an architecture (`chown32` on x86_64) stay in the profile: libcontainer skips names
//! libseccomp cannot resolve, as runc does.
//!
//! The resolver is our own: oci-spec models only the OCI form, the Docker form is read by Go
//! libraries (moby, containers/common) with no Rust counterpart, and resolving is a filter over
//! a list.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

use super::{Error, Result};

/// The RuntimeDefault profile, in the Docker profile format.
const DEFAULT_PROFILE: &str = include_str!("seccomp_default.json");

/// `EPERM`: the errno of the default action.
const EPERM: u32 = 1;

/// The architecture a profile is resolved for: the one the container runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetArch {
    /// x86_64 (Docker's `amd64`), with the x86 and x32 sub-architectures.
    X86_64,
    /// aarch64 (Docker's `arm64`), with the 32-bit arm sub-architecture.
    Aarch64,
}

impl TargetArch {
    /// The architecture this binary was built for.
    pub const fn native() -> Self {
        if cfg!(target_arch = "aarch64") {
            Self::Aarch64
        } else {
            Self::X86_64
        }
    }

    fn scmp(self) -> Arch {
        match self {
            Self::X86_64 => Arch::ScmpArchX86_64,
            Self::Aarch64 => Arch::ScmpArchAarch64,
        }
    }

    /// Names this architecture goes by in profiles' `arches` conditions.
    fn names(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["amd64", "x86_64", "SCMP_ARCH_X86_64"],
            Self::Aarch64 => &["arm64", "aarch64", "SCMP_ARCH_AARCH64"],
        }
    }
}

/// A profile in the Docker format (which also reads OCI `linux.seccomp` JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    /// OCI form: a flat list of architectures.
    #[serde(default)]
    architectures: Vec<Arch>,
    /// Docker form: native architectures with their sub-architectures.
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    /// Old Docker profiles name one syscall per rule.
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Arg>,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: usize,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: LinuxSeccompOperator,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

impl Profile {
    /// Parses a profile from JSON text; `origin` names it in errors.
    pub fn parse(json: &str, origin: &Path) -> Result<Self> {
        let profile: Profile = serde_json::from_str(json)
            .map_err(|source| Error::ParseSeccomp { path: origin.to_owned(), source })?;
        for rule in &profile.syscalls {
            if rule.names.is_empty() && rule.name.is_none() {
                return Err(Error::InvalidSeccomp {
                    path: origin.to_owned(),
                    reason: "a syscall rule names no syscall",
                });
            }
            if rule.args.iter().any(|a| a.index > 5) {
                return Err(Error::InvalidSeccomp {
                    path: origin.to_owned(),
                    reason: "a syscall argument index is above 5",
                });
            }
        }
        Ok(profile)
    }

    /// The RuntimeDefault profile (parsed once per process).
    pub fn runtime_default() -> &'static Self {
        static PROFILE: std::sync::OnceLock<Profile> = std::sync::OnceLock::new();
        PROFILE.get_or_init(|| {
            Self::parse(DEFAULT_PROFILE, Path::new("<runtime default>"))
                .expect("the embedded default profile is valid: a unit test parses it")
        })
    }

    /// Reads a `Localhost` profile from a file on the node.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::ReadSeccomp { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Resolves the profile for `arch` and the container's bounding capabilities.
    pub fn resolve(&self, arch: TargetArch, bounding: &Capabilities) -> Result<LinuxSeccomp> {
        let caps: HashSet<String> = bounding.iter().map(|c| format!("CAP_{c}")).collect();
        let arch_ok = |arches: &[String]| arches.iter().any(|a| arch.names().contains(&a.as_str()));

        let mut architectures = Vec::new();
        if self.arch_map.is_empty() {
            architectures.extend(self.architectures.iter().copied());
        } else if let Some(map) = self.arch_map.iter().find(|m| m.architecture == arch.scmp()) {
            architectures.push(map.architecture);
            architectures.extend(map.sub_architectures.iter().copied());
        }

        let mut syscalls = Vec::new();
        for rule in &self.syscalls {
            let inc = &rule.includes;
            if !inc.caps.iter().all(|c| caps.contains(c)) {
                continue;
            }
            if !inc.arches.is_empty() && !arch_ok(&inc.arches) {
                continue;
            }
            let exc = &rule.excludes;
            if exc.caps.iter().any(|c| caps.contains(c)) {
                continue;
            }
            if !exc.arches.is_empty() && arch_ok(&exc.arches) {
                continue;
            }
            let mut names = rule.names.clone();
            names.extend(rule.name.iter().cloned());
            let mut out = LinuxSyscall::default();
            out.set_names(names);
            out.set_action(rule.action);
            out.set_errno_ret(rule.errno_ret);
            if !rule.args.is_empty() {
                let args = rule
                    .args
                    .iter()
                    .map(|a| {
                        LinuxSeccompArgBuilder::default()
                            .index(a.index)
                            .value(a.value)
                            .value_two(a.value_two)
                            .op(a.op)
                            .build()
                            .map_err(|source| Error::Oci { section: "linux.seccomp", source })
                    })
                    .collect::<Result<Vec<_>>>()?;
                out.set_args(Some(args));
            }
            syscalls.push(out);
        }

        let mut seccomp = LinuxSeccomp::default();
        seccomp.set_default_action(self.default_action);
        let errno = match self.default_action {
            LinuxSeccompAction::ScmpActErrno => Some(self.default_errno_ret.unwrap_or(EPERM)),
            _ => self.default_errno_ret,
        };
        seccomp.set_default_errno_ret(errno);
        seccomp.set_architectures((!architectures.is_empty()).then_some(architectures));
        seccomp.set_flags((!self.flags.is_empty()).then(|| self.flags.clone()));
        seccomp.set_syscalls(Some(syscalls));
        Ok(seccomp)
    }
}

/// Rewrites `SCMP_CMP_MASKED_EQ` arguments for libcontainer 0.7, which reads them the other way
/// round from the runtime spec.
///
/// The runtime spec and runc read `{value, valueTwo}` of a masked comparison as mask and datum
/// (libseccomp's `SCMP_CMP(arg, MASKED_EQ, mask, datum)`, which matches when
/// `arg & mask == datum & mask`); libcontainer 0.7's `translate_op` passes `valueTwo` as the
/// mask and `value` as the datum. The default profile's `clone` rule (`value` = namespace
/// flags, `valueTwo` = 0) then becomes `arg & 0 == flags & 0`, which always matches: `clone`
/// with `CLONE_NEWUSER` is allowed without `CAP_SYS_ADMIN`. Measured here with libcontainer's
/// own `initialize_seccomp`: as written, `clone(CLONE_NEWUSER)` succeeds; after this swap it
/// fails with `EPERM` while a plain `clone` still works.
///
/// Specs built here are correct for runc and crun; the shim applies this (through
/// [`super::adapt_for_libcontainer`]) to the copy it writes for libcontainer. Applying it twice
/// restores the original.
pub fn swap_masked_eq_for_libcontainer(seccomp: &mut LinuxSeccomp) {
    let Some(mut syscalls) = seccomp.syscalls().clone() else {
        return;
    };
    for rule in &mut syscalls {
        let Some(args) = rule.args().clone() else {
            continue;
        };
        let swapped = args
            .into_iter()
            .map(|a| {
                if a.op() != LinuxSeccompOperator::ScmpCmpMaskedEq {
                    return a;
                }
                LinuxSeccompArgBuilder::default()
                    .index(a.index())
                    .value(a.value_two().unwrap_or(0))
                    .value_two(a.value())
                    .op(a.op())
                    .build()
                    .expect("every field of the argument is set")
            })
            .collect();
        rule.set_args(Some(swapped));
    }
    seccomp.set_syscalls(Some(syscalls));
}

/// What a filter does with one syscall, as far as [`evaluate`] can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The syscall runs.
    Allow,
    /// The syscall fails with this errno.
    Errno(u32),
    /// Some other action (kill, trap, log, notify, trace).
    Other(LinuxSeccompAction),
}

/// Evaluates a resolved profile for one syscall and its arguments the way libseccomp does for
/// the rules our profiles use: the first matching rule with an explicit action wins over the
/// default, and among matching rules `ALLOW` loses to a refusing action. Used by tests and by
/// diagnostics (`agentctl` can explain why a call fails); the kernel is the authority. Masked
/// comparisons are read as the runtime spec and runc read them (`value` is the mask).
pub fn evaluate(seccomp: &LinuxSeccomp, syscall: &str, args: &[u64; 6]) -> Verdict {
    let verdict = |action: LinuxSeccompAction, errno: Option<u32>| match action {
        LinuxSeccompAction::ScmpActAllow => Verdict::Allow,
        LinuxSeccompAction::ScmpActErrno => Verdict::Errno(errno.unwrap_or(EPERM)),
        other => Verdict::Other(other),
    };
    let mut matched: Option<Verdict> = None;
    for rule in seccomp.syscalls().iter().flatten() {
        if !rule.names().iter().any(|n| n == syscall) {
            continue;
        }
        let args_match = rule.args().iter().flatten().all(|a| {
            let v = args[a.index().min(5)];
            let datum = a.value();
            match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => v != datum,
                LinuxSeccompOperator::ScmpCmpLt => v < datum,
                LinuxSeccompOperator::ScmpCmpLe => v <= datum,
                LinuxSeccompOperator::ScmpCmpEq => v == datum,
                LinuxSeccompOperator::ScmpCmpGe => v >= datum,
                LinuxSeccompOperator::ScmpCmpGt => v > datum,
                // libseccomp masks both sides: `arg & mask == datum & mask`.
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    v & datum == a.value_two().unwrap_or(0) & datum
                }
            }
        });
        if !args_match {
            continue;
        }
        let v = verdict(rule.action(), rule.errno_ret());
        matched = match matched {
            None | Some(Verdict::Allow) => Some(v),
            refusing => refusing,
        };
    }
    matched.unwrap_or_else(|| verdict(seccomp.default_action(), seccomp.default_errno_ret()))
}

/// The seccomp section for a container, or `None` when it runs unconfined.
pub(super) fn for_container(
    profile: &crate::config::SeccompProfile,
    privileged: bool,
    bounding: &Capabilities,
) -> Result<Option<LinuxSeccomp>> {
    use crate::config::SeccompProfile;
    if privileged {
        return Ok(None);
    }
    let arch = TargetArch::native();
    match profile {
        SeccompProfile::Unconfined => Ok(None),
        SeccompProfile::RuntimeDefault => {
            Profile::runtime_default().resolve(arch, bounding).map(Some)
        }
        SeccompProfile::Localhost(path) => Profile::read(path)?.resolve(arch, bounding).map(Some),
    }
}

/// Whether a capability set holds `CAP_SYS_ADMIN` (used in docs and tests).
pub fn has_sys_admin(bounding: &Capabilities) -> bool {
    bounding.contains(&Capability::SysAdmin)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::caps;

    const CLONE_NEWUSER: u64 = 0x1000_0000;
    const CLONE_NEWNS: u64 = 0x0002_0000;
    const SIGCHLD: u64 = 17;

    fn default_caps() -> Capabilities {
        caps::default_set()
    }

    fn with_admin() -> Capabilities {
        let mut c = caps::default_set();
        c.insert(Capability::SysAdmin);
        c
    }

    fn no_args() -> [u64; 6] {
        [0; 6]
    }

    #[test]
    fn embedded_default_profile_parses() {
        let p = Profile::runtime_default();
        assert_eq!(p.default_action, LinuxSeccompAction::ScmpActErrno);
        assert!(p.syscalls.len() > 20);
    }

    #[test]
    fn runtime_default_refuses_unshare_of_a_user_namespace_without_sys_admin() {
        let s = Profile::runtime_default().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        assert_eq!(evaluate(&s, "unshare", &[CLONE_NEWUSER, 0, 0, 0, 0, 0]), Verdict::Errno(EPERM));
        assert_eq!(evaluate(&s, "unshare", &no_args()), Verdict::Errno(EPERM));
        assert_eq!(evaluate(&s, "setns", &no_args()), Verdict::Errno(EPERM));
        assert_eq!(evaluate(&s, "mount", &no_args()), Verdict::Errno(EPERM));
    }

    #[test]
    fn runtime_default_allows_unshare_with_sys_admin() {
        let s = Profile::runtime_default().resolve(TargetArch::X86_64, &with_admin()).unwrap();
        assert_eq!(evaluate(&s, "unshare", &[CLONE_NEWUSER, 0, 0, 0, 0, 0]), Verdict::Allow);
        assert_eq!(
            evaluate(&s, "clone", &[CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0, 0]),
            Verdict::Allow
        );
        assert_eq!(evaluate(&s, "clone3", &no_args()), Verdict::Allow);
        assert_eq!(evaluate(&s, "mount", &no_args()), Verdict::Allow);
    }

    #[test]
    fn runtime_default_allows_plain_clone_but_not_namespace_flags_without_sys_admin() {
        let s = Profile::runtime_default().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        assert_eq!(evaluate(&s, "clone", &[SIGCHLD, 0, 0, 0, 0, 0]), Verdict::Allow);
        assert_eq!(
            evaluate(&s, "clone", &[CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0, 0]),
            Verdict::Errno(EPERM)
        );
        assert_eq!(evaluate(&s, "clone", &[CLONE_NEWNS, 0, 0, 0, 0, 0]), Verdict::Errno(EPERM));
        // clone3 cannot be filtered by flags: ENOSYS makes libc fall back to clone.
        assert_eq!(evaluate(&s, "clone3", &no_args()), Verdict::Errno(38));
    }

    #[test]
    fn runtime_default_allows_ordinary_syscalls_and_defaults_to_eperm() {
        let s = Profile::runtime_default().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        for name in ["read", "write", "openat", "execve", "exit_group", "futex", "chroot"] {
            assert_eq!(evaluate(&s, name, &no_args()), Verdict::Allow, "{name}");
        }
        for name in ["reboot", "init_module", "kexec_load", "bpf", "ptrace_nonexistent", "acct"] {
            assert_eq!(evaluate(&s, name, &no_args()), Verdict::Errno(EPERM), "{name}");
        }
        assert_eq!(s.default_errno_ret(), Some(EPERM));
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
    }

    #[test]
    fn capability_conditional_syscalls_follow_the_bounding_set() {
        let mut no_chroot = default_caps();
        no_chroot.remove(&Capability::SysChroot);
        let s = Profile::runtime_default().resolve(TargetArch::X86_64, &no_chroot).unwrap();
        assert_eq!(evaluate(&s, "chroot", &no_args()), Verdict::Errno(EPERM));

        let mut ptrace = default_caps();
        ptrace.insert(Capability::SysPtrace);
        let s = Profile::runtime_default().resolve(TargetArch::X86_64, &ptrace).unwrap();
        assert_eq!(evaluate(&s, "process_vm_readv", &no_args()), Verdict::Allow);
    }

    #[test]
    fn personality_is_allowed_only_for_known_personas() {
        let s = Profile::runtime_default().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        assert_eq!(evaluate(&s, "personality", &[0, 0, 0, 0, 0, 0]), Verdict::Allow);
        assert_eq!(evaluate(&s, "personality", &[0xffff_ffff, 0, 0, 0, 0, 0]), Verdict::Allow);
        assert_eq!(
            evaluate(&s, "personality", &[0x0040_0000, 0, 0, 0, 0, 0]),
            Verdict::Errno(EPERM)
        );
    }

    #[test]
    fn architectures_follow_the_target() {
        let x = Profile::runtime_default().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        assert_eq!(
            x.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert_eq!(evaluate(&x, "arch_prctl", &no_args()), Verdict::Allow);
        assert_eq!(evaluate(&x, "set_tls", &no_args()), Verdict::Errno(EPERM));

        let a = Profile::runtime_default().resolve(TargetArch::Aarch64, &default_caps()).unwrap();
        assert_eq!(
            a.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        assert_eq!(evaluate(&a, "arch_prctl", &no_args()), Verdict::Errno(EPERM));
        assert_eq!(evaluate(&a, "set_tls", &no_args()), Verdict::Allow);
    }

    #[test]
    fn resolved_profile_has_no_conditions_left_and_serializes_as_oci() {
        let s = Profile::runtime_default().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        let text = json.to_string();
        assert!(!text.contains("includes") && !text.contains("excludes"));
        let back: LinuxSeccomp = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn localhost_profile_in_oci_format_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
               "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        )
        .unwrap();
        let s = Profile::read(&path).unwrap().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        assert_eq!(evaluate(&s, "mkdirat", &no_args()), Verdict::Errno(13));
        assert_eq!(evaluate(&s, "read", &no_args()), Verdict::Allow);
        assert_eq!(s.architectures().as_deref(), Some(&[Arch::ScmpArchX86_64][..]));
    }

    #[test]
    fn localhost_profile_in_docker_format_with_single_names_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"defaultAction":"SCMP_ACT_ERRNO",
               "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
               "syscalls":[{"name":"read","action":"SCMP_ACT_ALLOW","args":[]},
                           {"names":["reboot"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_BOOT"]}}]}"#,
        )
        .unwrap();
        let s = Profile::read(&path).unwrap().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        assert_eq!(evaluate(&s, "read", &no_args()), Verdict::Allow);
        assert_eq!(evaluate(&s, "reboot", &no_args()), Verdict::Errno(EPERM));
    }

    #[test]
    fn bad_localhost_profiles_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad_json = dir.path().join("bad.json");
        std::fs::write(&bad_json, "{ not json").unwrap();
        let err = Profile::read(&bad_json).unwrap_err();
        assert!(matches!(err, Error::ParseSeccomp { ref path, .. } if path == &bad_json), "{err}");
        assert!(err.to_string().contains("bad.json"));

        let bad_action = dir.path().join("action.json");
        std::fs::write(&bad_action, r#"{"defaultAction":"SCMP_ACT_MAYBE"}"#).unwrap();
        assert!(matches!(Profile::read(&bad_action), Err(Error::ParseSeccomp { .. })));

        let nameless = dir.path().join("nameless.json");
        std::fs::write(
            &nameless,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        assert!(matches!(Profile::read(&nameless), Err(Error::InvalidSeccomp { .. })));

        let missing = dir.path().join("missing.json");
        assert!(matches!(Profile::read(&missing), Err(Error::ReadSeccomp { .. })));
    }

    #[test]
    fn masked_eq_swap_for_libcontainer_moves_the_mask_and_is_an_involution() {
        let orig = Profile::runtime_default().resolve(TargetArch::X86_64, &default_caps()).unwrap();
        let mut s = orig.clone();
        swap_masked_eq_for_libcontainer(&mut s);
        let clone_rule = |s: &LinuxSeccomp| {
            s.syscalls()
                .iter()
                .flatten()
                .find(|r| r.names() == &["clone"] && r.args().is_some())
                .and_then(|r| r.args().clone())
                .unwrap()[0]
        };
        let ns = 0x7e02_0000u64;
        assert_eq!((clone_rule(&orig).value(), clone_rule(&orig).value_two()), (ns, Some(0)));
        assert_eq!((clone_rule(&s).value(), clone_rule(&s).value_two()), (0, Some(ns)));
        // Other comparisons are untouched.
        let personality = |s: &LinuxSeccomp| {
            s.syscalls().iter().flatten().filter(|r| r.names() == &["personality"]).count()
        };
        assert_eq!(personality(&s), personality(&orig));
        swap_masked_eq_for_libcontainer(&mut s);
        assert_eq!(s, orig);
    }

    #[test]
    fn privileged_and_unconfined_have_no_filter() {
        use crate::config::SeccompProfile;
        assert!(for_container(&SeccompProfile::RuntimeDefault, true, &default_caps())
            .unwrap()
            .is_none());
        assert!(for_container(&SeccompProfile::Unconfined, false, &default_caps())
            .unwrap()
            .is_none());
        assert!(for_container(&SeccompProfile::RuntimeDefault, false, &default_caps())
            .unwrap()
            .is_some());
        assert!(!has_sys_admin(&default_caps()));
    }
}
