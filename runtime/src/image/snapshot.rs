//! Container root filesystems: overlayfs over the image's snapshots.
//!
//! Each layer is unpacked once into `<root>/snapshots/<n>/fs`, keyed by chain id (so images
//! sharing a base share its snapshots), where `<n>` is a short counter: overlay options must
//! fit in one page and `sha256` paths would exhaust it after a few dozen layers. A container
//! gets `<root>/containers/<id>/{upper,work}`. [`Mounter`] is the narrow boundary to the mount
//! syscalls so the rest can be tested without privileges.

use std::path::{Path, PathBuf};

use super::{Error, Result};

/// The overlay a container's root filesystem is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// Lower layers, topmost first (overlayfs order).
    pub lowerdirs: Vec<PathBuf>,
    /// The container's writable layer.
    pub upperdir: PathBuf,
    /// overlayfs' work directory (same filesystem as `upperdir`).
    pub workdir: PathBuf,
}

/// The longest option string `mount(2)` accepts (one page).
pub const MAX_OPTIONS: usize = 4095;

impl RootfsMount {
    /// The overlay mount options: `lowerdir=…:…,upperdir=…,workdir=…`.
    pub fn options(&self) -> Result<String> {
        let lower: Vec<String> = self.lowerdirs.iter().map(|p| p.display().to_string()).collect();
        let s = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upperdir.display(),
            self.workdir.display()
        );
        if s.len() > MAX_OPTIONS {
            return Err(Error::OptionsTooLong(self.lowerdirs.len()));
        }
        Ok(s)
    }
}

/// Mounts and unmounts overlays.
pub trait Mounter: Send + Sync + std::fmt::Debug {
    /// Mounts `rootfs` at `target` (an existing directory).
    fn mount(&self, rootfs: &RootfsMount, target: &Path) -> Result<()>;
    /// Unmounts `target`.
    fn unmount(&self, target: &Path) -> Result<()>;
}

/// The real overlayfs mounter.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlayMounter;

impl Mounter for OverlayMounter {
    fn mount(&self, rootfs: &RootfsMount, target: &Path) -> Result<()> {
        let options = rootfs.options()?;
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| Error::Io {
            op: "mounting overlay on",
            path: target.to_owned(),
            source: e.into(),
        })
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        nix::mount::umount2(target, nix::mount::MntFlags::empty()).map_err(|e| Error::Io {
            op: "unmounting",
            path: target.to_owned(),
            source: e.into(),
        })
    }
}

/// Container ids become directory names: one path component of `[A-Za-z0-9_.-]`, not `.`/`..`.
pub fn validate_container_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidContainerId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_lower_layers_topmost_first_and_respect_the_page_limit() {
        let m = RootfsMount {
            lowerdirs: vec!["/s/2/fs".into(), "/s/1/fs".into()],
            upperdir: "/c/x/upper".into(),
            workdir: "/c/x/work".into(),
        };
        assert_eq!(
            m.options().expect("options"),
            "lowerdir=/s/2/fs:/s/1/fs,upperdir=/c/x/upper,workdir=/c/x/work"
        );
        let many = RootfsMount {
            lowerdirs: vec!["/var/lib/keelson/images/snapshots/123/fs".into(); 200],
            ..m
        };
        assert!(matches!(many.options(), Err(Error::OptionsTooLong(200))));
    }

    #[test]
    fn container_ids_cannot_escape() {
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        validate_container_id("pod-1_c.2").expect("valid");
    }
}
