//! Capability sets: containerd's default set, `add`/`drop` with `ALL`, and privileged.
//!
//! The order follows containerd's CRI plugin: `add: [ALL]` grants every capability, then
//! `drop: [ALL]` clears the set, then the named additions, then the named drops. So
//! `drop: [ALL], add: [NET_BIND_SERVICE]` leaves exactly `NET_BIND_SERVICE`, and a capability
//! both added and dropped is dropped.

use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::{Error, Result};

/// The default capability set: containerd's (and Docker's) 14 capabilities minus `MKNOD`.
///
/// containerd relies on the device cgroup to make `mknod` harmless. On cgroup v2 that is a BPF
/// program, which `libcontainer` attaches only with its `cgroupsv2_devices` feature (a C build
/// of libbpf that we do not take); until Keelson attaches its own device filter, a container
/// with `CAP_MKNOD` could create and open a host block device. CRI-O leaves `MKNOD` out of its
/// defaults for the same kind of reason. A pod that needs it adds it explicitly.
pub const DEFAULT: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability oci-spec knows, which is every capability of Linux 6.x, indexed by the
/// kernel's capability number (`CAP_CHOWN` is 0, `CAP_CHECKPOINT_RESTORE` is 40).
pub const ALL: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The capabilities in a kernel capability mask (`CapBnd` of `/proc/<pid>/status`); bits
/// beyond the ones oci-spec knows are ignored.
pub fn from_mask(mask: u64) -> Capabilities {
    ALL.iter().enumerate().filter(|(bit, _)| mask & (1u64 << bit) != 0).map(|(_, c)| *c).collect()
}

/// The bounding set of this process, from `/proc/self/status`: what a container started by
/// it can have at most (the development sandboxes lack `CAP_SYS_RESOURCE`, for one).
pub fn current_bounding() -> Result<Capabilities> {
    let path = std::path::Path::new("/proc/self/status");
    let text = std::fs::read_to_string(path)
        .map_err(|source| Error::ReadHost { path: path.to_owned(), source })?;
    let mask = text
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| Error::ReadHost {
            path: path.to_owned(),
            source: std::io::Error::other("no CapBnd line"),
        })?;
    Ok(from_mask(mask))
}

/// The default set as a [`Capabilities`] set.
pub fn default_set() -> Capabilities {
    DEFAULT.into_iter().collect()
}

/// Parses a capability name as Kubernetes writes it: `NET_ADMIN` or `CAP_NET_ADMIN`, in any
/// case. `ALL` is not a capability and is handled by [`effective_set`].
pub fn parse(name: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| Error::UnknownCapability { name: name.to_owned() })
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The bounding set of a container: default or all (privileged), then `add`/`drop`.
///
/// `available` is the runtime's own bounding set (see [`current_bounding`]): "all" means all
/// of those, as containerd's `WithAllCurrentCapabilities`; the default set is trimmed to it;
/// an explicitly added capability outside it is an error, since no runtime could grant it.
pub fn effective_set(
    caps: &crate::config::Capabilities,
    privileged: bool,
    available: &Capabilities,
) -> Result<Capabilities> {
    // Parse everything first so that an unknown name is an error even when `ALL` makes it moot.
    let add: Vec<Capability> =
        caps.add.iter().filter(|n| !is_all(n)).map(|n| parse(n)).collect::<Result<_>>()?;
    let drop: Vec<Capability> =
        caps.drop.iter().filter(|n| !is_all(n)).map(|n| parse(n)).collect::<Result<_>>()?;
    if privileged {
        return Ok(available.clone());
    }
    let mut set: Capabilities = default_set().intersection(available).copied().collect();
    if caps.add.iter().any(|n| is_all(n)) {
        set = available.clone();
    }
    if caps.drop.iter().any(|n| is_all(n)) {
        set.clear();
    }
    for c in add {
        if !available.contains(&c) {
            return Err(Error::CapabilityUnavailable { name: format!("CAP_{c}") });
        }
        set.insert(c);
    }
    for c in drop {
        set.remove(&c);
    }
    Ok(set)
}

/// The process capabilities for a bounding set: bounding, effective and permitted hold it;
/// inheritable and ambient are empty (containerd since CVE-2022-24769).
pub fn process_capabilities(set: &Capabilities) -> LinuxCapabilities {
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set.clone()));
    caps.set_inheritable(Some(Capabilities::new()));
    caps.set_ambient(Some(Capabilities::new()));
    caps
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Capabilities as Change;

    fn every() -> Capabilities {
        ALL.into_iter().collect()
    }

    fn change(add: &[&str], drop: &[&str]) -> Change {
        Change {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn default_set_is_containerds_fourteen_without_mknod() {
        let set = effective_set(&Change::default(), false, &every()).unwrap();
        assert_eq!(set.len(), 13);
        assert!(!set.contains(&Capability::Mknod));
        assert!(set.contains(&Capability::NetBindService));
        assert!(!set.contains(&Capability::SysAdmin));
        assert!(!set.contains(&Capability::NetAdmin));
    }

    #[test]
    fn names_are_accepted_with_or_without_prefix_and_in_any_case() {
        assert_eq!(parse("NET_ADMIN").unwrap(), Capability::NetAdmin);
        assert_eq!(parse("CAP_NET_ADMIN").unwrap(), Capability::NetAdmin);
        assert_eq!(parse("cap_sys_admin").unwrap(), Capability::SysAdmin);
    }

    #[test]
    fn unknown_capability_names_are_rejected() {
        let err = effective_set(&change(&["NET_WIZARD"], &[]), false, &every()).unwrap_err();
        assert!(matches!(err, Error::UnknownCapability { ref name } if name == "NET_WIZARD"));
        assert!(err.to_string().contains("NET_WIZARD"));
        assert!(effective_set(&change(&[], &["CAP_"]), false, &every()).is_err());
        // Even when ALL makes the name moot, a typo is reported.
        assert!(effective_set(&change(&["ALL", "BOGUS"], &[]), false, &every()).is_err());
    }

    #[test]
    fn add_and_drop_change_the_default_set() {
        let set =
            effective_set(&change(&["NET_ADMIN"], &["CAP_NET_RAW", "sys_chroot"]), false, &every())
                .unwrap();
        assert!(set.contains(&Capability::NetAdmin));
        assert!(!set.contains(&Capability::NetRaw));
        assert!(!set.contains(&Capability::SysChroot));
        assert_eq!(set.len(), 12);
    }

    #[test]
    fn drop_all_then_add_keeps_only_the_added() {
        let set = effective_set(&change(&["NET_BIND_SERVICE"], &["ALL"]), false, &every()).unwrap();
        assert_eq!(set, [Capability::NetBindService].into_iter().collect());
        let none = effective_set(&change(&[], &["all"]), false, &every()).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn add_all_grants_everything_and_named_drops_still_apply() {
        let set = effective_set(&change(&["ALL"], &["SYS_ADMIN"]), false, &every()).unwrap();
        assert_eq!(set.len(), ALL.len() - 1);
        assert!(!set.contains(&Capability::SysAdmin));
    }

    #[test]
    fn a_capability_added_and_dropped_is_dropped() {
        let set = effective_set(&change(&["SYS_ADMIN"], &["SYS_ADMIN"]), false, &every()).unwrap();
        assert!(!set.contains(&Capability::SysAdmin));
    }

    #[test]
    fn privileged_gets_every_capability() {
        let set = effective_set(&change(&[], &["ALL"]), true, &every()).unwrap();
        assert_eq!(set.len(), ALL.len());
    }

    #[test]
    fn all_means_all_the_runtime_has() {
        // This sandbox's bounding set: everything but CAP_SYS_RESOURCE (bit 24).
        let available = from_mask(0x0000_01ff_feff_ffff);
        assert_eq!(available.len(), 40);
        assert!(!available.contains(&Capability::SysResource));
        let privileged = effective_set(&Change::default(), true, &available).unwrap();
        assert_eq!(privileged, available);
        let add_all = effective_set(&change(&["ALL"], &[]), false, &available).unwrap();
        assert_eq!(add_all, available);
        let err = effective_set(&change(&["SYS_RESOURCE"], &[]), false, &available).unwrap_err();
        assert!(
            matches!(err, Error::CapabilityUnavailable { ref name } if name == "CAP_SYS_RESOURCE")
        );
        // The default set is trimmed to what exists rather than failing.
        let poor = from_mask(1 << 0 | 1 << 5);
        let set = effective_set(&Change::default(), false, &poor).unwrap();
        assert_eq!(set, [Capability::Chown, Capability::Kill].into_iter().collect());
    }

    #[test]
    fn mask_bits_follow_the_kernel_numbering() {
        assert_eq!(from_mask(1 << 21), [Capability::SysAdmin].into_iter().collect());
        assert_eq!(from_mask(1 << 40), [Capability::CheckpointRestore].into_iter().collect());
        // Docker's default CapEff is 0xa80425fb; ours lacks CAP_MKNOD (bit 27).
        assert_eq!(from_mask(0xa80425fb & !(1 << 27)), default_set());
        assert_eq!(from_mask(u64::MAX).len(), 41);
        // Whatever this process holds (a test may run with an empty bounding set), it parses.
        assert!(current_bounding().is_ok());
    }

    #[test]
    fn inheritable_and_ambient_are_empty() {
        let caps = process_capabilities(&default_set());
        assert_eq!(caps.inheritable().as_ref().map(|s| s.len()), Some(0));
        assert_eq!(caps.ambient().as_ref().map(|s| s.len()), Some(0));
        assert_eq!(caps.bounding(), caps.effective());
        assert_eq!(caps.bounding(), caps.permitted());
    }
}
