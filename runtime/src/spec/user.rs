//! The container's user: `runAsUser`/`runAsGroup`, else the image's `User`, with names and
//! group memberships resolved from the rootfs's own `/etc/passwd` and `/etc/group`.
//!
//! Those files belong to the image and may be hostile: they are opened with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` relative to the rootfs, so a symlinked
//! `/etc/passwd` (absolute or `../..`) resolves inside the rootfs, never on the host. Files are
//! read up to [`MAX_DB_BYTES`]. The parsers are our own: they are a few lines, the crates that
//! parse passwd files read the host's database through NSS or path strings, and static binaries
//! cannot use NSS at all (TOOLCHAIN.md).

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

use super::{Error, Result};

/// Largest `/etc/passwd` or `/etc/group` read from an image.
pub const MAX_DB_BYTES: u64 = 4 << 20;

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Parses `/etc/passwd` text, skipping malformed lines as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            let uid = f.next()?.trim().parse().ok()?;
            let gid = f.next()?.trim().parse().ok()?;
            (!name.is_empty()).then(|| PasswdEntry { name: name.to_owned(), uid, gid })
        })
        .collect()
}

/// Parses `/etc/group` text, skipping malformed lines.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            let gid = f.next()?.trim().parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            (!name.is_empty()).then(|| GroupEntry { name: name.to_owned(), gid, members })
        })
        .collect()
}

/// Reads `path` (absolute inside the container) from `rootfs`, resolved with the rootfs as
/// root. A missing file is `Ok(None)`.
pub fn read_in_root(rootfs: &Path, path: &str) -> Result<Option<String>> {
    let io_err = |source: std::io::Error| Error::ReadRootfsFile {
        rootfs: rootfs.to_owned(),
        path: PathBuf::from(path),
        source,
    };
    let root = File::open(rootfs).map_err(io_err)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(std::os::fd::AsRawFd::as_raw_fd(&root), path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(io_err(e.into())),
    };
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(std::io::Error::other("not a regular file")));
    }
    let mut text = String::new();
    file.take(MAX_DB_BYTES).read_to_string(&mut text).map_err(io_err)?;
    Ok(Some(text))
}

/// The resolved identity of a container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Additional group ids: the primary gid, `/etc/group` memberships, then supplemental ids,
    /// without duplicates.
    pub additional_gids: Vec<u32>,
}

/// The user databases of one rootfs, read once.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    /// `/etc/passwd` entries.
    pub passwd: Vec<PasswdEntry>,
    /// `/etc/group` entries.
    pub group: Vec<GroupEntry>,
}

impl UserDb {
    /// Reads `/etc/passwd` and `/etc/group` of a rootfs; missing files are empty.
    pub fn read(rootfs: &Path) -> Result<Self> {
        let passwd =
            read_in_root(rootfs, "/etc/passwd")?.map(|t| parse_passwd(&t)).unwrap_or_default();
        let group =
            read_in_root(rootfs, "/etc/group")?.map(|t| parse_group(&t)).unwrap_or_default();
        Ok(Self { passwd, group })
    }

    /// Resolves the process identity.
    ///
    /// `run_as_user`/`run_as_group` win over the image's `User` field (`name`, `uid`,
    /// `name:group`, `uid:gid`, empty for root). Without a group, the user's primary group
    /// from `/etc/passwd` is used (0 for a uid not listed there). Unknown names are errors.
    pub fn resolve(
        &self,
        image_user: &str,
        run_as_user: Option<u32>,
        run_as_group: Option<u32>,
        supplemental: &[u32],
    ) -> Result<ResolvedUser> {
        let image_user = image_user.trim();
        let (user_part, group_part) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };

        let entry: Option<&PasswdEntry>;
        let uid = match run_as_user {
            Some(uid) => {
                entry = self.passwd.iter().find(|e| e.uid == uid);
                uid
            }
            None if user_part.is_empty() => {
                entry = self.passwd.iter().find(|e| e.uid == 0);
                0
            }
            None => match user_part.parse::<u32>() {
                Ok(uid) => {
                    entry = self.passwd.iter().find(|e| e.uid == uid);
                    uid
                }
                Err(_) => {
                    let found = self
                        .passwd
                        .iter()
                        .find(|e| e.name == user_part)
                        .ok_or_else(|| Error::UnknownUser { name: user_part.to_owned() })?;
                    entry = Some(found);
                    found.uid
                }
            },
        };

        // The image's group applies only together with the image's user.
        let image_group =
            if run_as_user.is_none() { group_part.filter(|g| !g.is_empty()) } else { None };
        let gid = match (run_as_group, image_group) {
            (Some(gid), _) => gid,
            (None, Some(g)) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    self.group
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| Error::UnknownGroup { name: g.to_owned() })?
                        .gid
                }
            },
            (None, None) => entry.map_or(0, |e| e.gid),
        };

        let mut additional_gids = vec![gid];
        if let Some(e) = entry {
            for g in &self.group {
                if g.members.iter().any(|m| m == &e.name) {
                    additional_gids.push(g.gid);
                }
            }
        }
        additional_gids.extend_from_slice(supplemental);
        let mut seen = std::collections::HashSet::new();
        additional_gids.retain(|g| seen.insert(*g));
        Ok(ResolvedUser { uid, gid, additional_gids })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        daemon:x:1:1::/:/sbin/nologin\n\
        www-data:x:33:33:www:/var/www:/bin/false\n\
        broken line\n\
        app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        www-data:x:33:\n\
        wheel:x:10:root,app\n\
        audio:x:29:app\n\
        app:x:1000:\n\
        staff:x:50:\n";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    fn db() -> UserDb {
        UserDb { passwd: parse_passwd(PASSWD), group: parse_group(GROUP) }
    }

    #[test]
    fn passwd_and_group_parsing_skips_comments_and_broken_lines() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 4);
        assert_eq!(p[2], PasswdEntry { name: "www-data".into(), uid: 33, gid: 33 });
        let g = parse_group(GROUP);
        assert_eq!(g.iter().find(|e| e.name == "wheel").unwrap().members, vec!["root", "app"]);
    }

    #[test]
    fn empty_image_user_is_root_with_root_memberships() {
        let u = db().resolve("", None, None, &[]).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert_eq!(u.additional_gids, vec![0, 10]);
    }

    #[test]
    fn image_user_by_name_takes_primary_group_and_memberships() {
        let u = db().resolve("app", None, None, &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![1000, 10, 29]);
    }

    #[test]
    fn image_user_forms_uid_name_group_and_uid_gid() {
        let d = db();
        let u = d.resolve("33", None, None, &[]).unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        let u = d.resolve("app:staff", None, None, &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        let u = d.resolve("1000:7", None, None, &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        // A uid not in /etc/passwd runs with gid 0 and no memberships.
        let u = d.resolve("4242", None, None, &[]).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (4242, 0, vec![0]));
    }

    #[test]
    fn run_as_user_and_group_override_the_image() {
        let d = db();
        let u = d.resolve("app:staff", Some(33), None, &[]).unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        let u = d.resolve("app", None, Some(5), &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 5));
        let u = d.resolve("", Some(5000), Some(6000), &[7000, 6000]).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (5000, 6000, vec![6000, 7000]));
    }

    #[test]
    fn supplemental_groups_are_appended_without_duplicates() {
        let u = db().resolve("app", None, None, &[29, 2000, 2000]).unwrap();
        assert_eq!(u.additional_gids, vec![1000, 10, 29, 2000]);
    }

    #[test]
    fn unknown_user_or_group_names_are_errors() {
        let err = db().resolve("nobody-here", None, None, &[]).unwrap_err();
        assert!(matches!(err, Error::UnknownUser { ref name } if name == "nobody-here"));
        assert!(err.to_string().contains("nobody-here"));
        let err = db().resolve("app:no-group", None, None, &[]).unwrap_err();
        assert!(matches!(err, Error::UnknownGroup { ref name } if name == "no-group"));
        // runAsUser makes an unresolvable image user irrelevant.
        assert!(db().resolve("nobody-here", Some(1), None, &[]).is_ok());
    }

    #[test]
    fn databases_are_read_from_the_rootfs() {
        let dir = rootfs();
        let d = UserDb::read(dir.path()).unwrap();
        assert_eq!(d.resolve("www-data", None, None, &[]).unwrap().uid, 33);
    }

    #[test]
    fn missing_databases_allow_numeric_users_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = UserDb::read(dir.path()).unwrap();
        assert_eq!(d.resolve("1234:5", None, None, &[]).unwrap().uid, 1234);
        assert!(matches!(d.resolve("app", None, None, &[]), Err(Error::UnknownUser { .. })));
    }

    #[test]
    fn symlinked_passwd_cannot_escape_the_rootfs() {
        // A host "passwd" outside the rootfs that names a user the image does not have.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "hostonly:x:4321:4321::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // Absolute symlink to the host file: resolved inside the rootfs, where it is missing.
        std::os::unix::fs::symlink(outside.path().join("passwd"), root.path().join("etc/passwd"))
            .unwrap();
        let d = UserDb::read(root.path()).unwrap();
        assert!(d.passwd.is_empty(), "read the host's file through an absolute symlink");
        assert!(matches!(d.resolve("hostonly", None, None, &[]), Err(Error::UnknownUser { .. })));

        // Relative symlink climbing out: `..` stops at the rootfs.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        let depth = root.path().components().count() + 2;
        let climb = format!("{}{}", "../".repeat(depth), outside.path().join("passwd").display());
        std::os::unix::fs::symlink(&climb, root.path().join("etc/passwd")).unwrap();
        let d = UserDb::read(root.path()).unwrap();
        assert!(d.passwd.is_empty(), "read the host's file through a ../ symlink");

        // A symlink that stays inside the rootfs is followed.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::fs::write(root.path().join("etc/real-passwd"), "inside:x:77:77::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/real-passwd", root.path().join("etc/passwd")).unwrap();
        let d = UserDb::read(root.path()).unwrap();
        assert_eq!(d.resolve("inside", None, None, &[]).unwrap().uid, 77);
    }

    #[test]
    fn a_directory_in_place_of_passwd_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/passwd")).unwrap();
        assert!(matches!(UserDb::read(root.path()), Err(Error::ReadRootfsFile { .. })));
    }
}
