//! The cgroupfs boundary: [`CgroupFs`], its real implementation over a cgroup2 mount (or any
//! directory, for tests) and an in-memory fake that models the kernel's rules.
//!
//! Paths given to a [`CgroupFs`] are relative to its root (`keelson/burstable/pod<uid>`); an
//! absolute path or one with `..` is refused, so a hostile pod uid cannot name a cgroup
//! outside the tree.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{Error, Result};

/// Operations on a cgroup v2 hierarchy.
pub trait CgroupFs: std::fmt::Debug {
    /// Creates the cgroup `path`; its parent must exist. Creating an existing cgroup is fine.
    fn create_dir(&self, path: &Path) -> Result<()>;
    /// Writes `value` to the interface file `file` of cgroup `path`.
    fn write(&self, path: &Path, file: &str, value: &str) -> Result<()>;
    /// Reads the interface file `file` of cgroup `path`.
    fn read(&self, path: &Path, file: &str) -> Result<String>;
    /// Whether cgroup `path` has the interface file `file` (whether a controller or a kernel
    /// feature such as `cgroup.kill` is there).
    fn has_file(&self, path: &Path, file: &str) -> bool;
    /// Removes the cgroup `path`; it must have no processes and no children. Removing a
    /// missing cgroup is fine.
    fn remove_dir(&self, path: &Path) -> Result<()>;
    /// The processes in cgroup `path` (its `cgroup.procs`, not its descendants').
    fn pids(&self, path: &Path) -> Result<Vec<i32>>;
    /// Names of the child cgroups of `path`.
    fn children(&self, path: &Path) -> Result<Vec<String>>;
    /// Kills every process in cgroup `path` and its descendants: `cgroup.kill` where the
    /// kernel has it (5.14+), otherwise SIGKILL to every pid found, repeated until none is
    /// left or a bounded number of rounds has passed.
    fn kill(&self, path: &Path) -> Result<()>;
}

/// Refuses paths that could leave the root.
pub(super) fn check_relative(path: &Path) -> Result<()> {
    let ok = path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(Error::BadPath { path: path.to_owned() })
    }
}

/// The real cgroupfs below `root` (`/sys/fs/cgroup`, `/sys/fs/cgroup/unified`, or a tempdir).
#[derive(Debug, Clone)]
pub struct RealCgroupFs {
    /// The hierarchy's mount point.
    pub root: PathBuf,
}

impl RealCgroupFs {
    /// A cgroupfs rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn dir(&self, path: &Path) -> Result<PathBuf> {
        check_relative(path)?;
        Ok(self.root.join(path))
    }

    fn file(&self, path: &Path, file: &str) -> Result<PathBuf> {
        check_relative(Path::new(file))?;
        Ok(self.dir(path)?.join(file))
    }
}

fn io(op: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, path, source }
}

impl CgroupFs for RealCgroupFs {
    fn create_dir(&self, path: &Path) -> Result<()> {
        let dir = self.dir(path)?;
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other.map_err(io("create cgroup", dir)),
        }
    }

    fn write(&self, path: &Path, file: &str, value: &str) -> Result<()> {
        let f = self.file(path, file)?;
        std::fs::write(&f, value).map_err(io("write", f))
    }

    fn read(&self, path: &Path, file: &str) -> Result<String> {
        let f = self.file(path, file)?;
        std::fs::read_to_string(&f).map_err(io("read", f))
    }

    fn has_file(&self, path: &Path, file: &str) -> bool {
        self.file(path, file).map(|f| f.exists()).unwrap_or(false)
    }

    fn remove_dir(&self, path: &Path) -> Result<()> {
        let dir = self.dir(path)?;
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(io("remove cgroup", dir)),
        }
    }

    fn pids(&self, path: &Path) -> Result<Vec<i32>> {
        let f = self.file(path, "cgroup.procs")?;
        let text = match std::fs::read_to_string(&f) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(io("read", f.clone()))?,
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.trim().parse().map_err(|_| Error::Parse { path: f.clone(), line: l.to_owned() })
            })
            .collect()
    }

    fn children(&self, path: &Path) -> Result<Vec<String>> {
        let dir = self.dir(path)?;
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            other => other.map_err(io("list cgroup", dir.clone()))?,
        };
        for entry in entries {
            let entry = entry.map_err(io("list cgroup", dir.clone()))?;
            let is_dir = entry.file_type().map_err(io("list cgroup", entry.path()))?.is_dir();
            if is_dir {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn kill(&self, path: &Path) -> Result<()> {
        if self.has_file(path, "cgroup.kill") {
            return self.write(path, "cgroup.kill", "1");
        }
        // Older kernels: signal every pid, depth first, a few rounds to catch forks.
        for _ in 0..10 {
            let mut found = false;
            let mut stack = vec![path.to_path_buf()];
            while let Some(p) = stack.pop() {
                for pid in self.pids(&p)? {
                    found = true;
                    // ESRCH: it exited meanwhile, which is what we want.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
                stack.extend(self.children(&p)?.into_iter().map(|c| p.join(c)));
            }
            if !found {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// One cgroup of the fake.
#[derive(Debug, Clone, Default)]
pub struct FakeCgroup {
    /// Interface files and their contents.
    pub files: BTreeMap<String, String>,
    /// Processes in this cgroup.
    pub procs: Vec<i32>,
}

/// An in-memory cgroupfs with the kernel's rules that matter to us: a cgroup can be removed
/// only without children and processes, `cgroup.kill` empties a subtree, controllers can be
/// enabled in `cgroup.subtree_control` only if the parent offers them, and a new cgroup gets
/// the interface files of the controllers its parent enabled. Every write is logged.
#[derive(Debug)]
pub struct FakeCgroupFs {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    cgroups: BTreeMap<PathBuf, FakeCgroup>,
    writes: Vec<(PathBuf, String, String)>,
}

/// Interface files each controller adds to a cgroup.
fn controller_files(controller: &str) -> &'static [&'static str] {
    match controller {
        "cpu" => &["cpu.weight", "cpu.max", "cpu.stat"],
        "memory" => {
            &["memory.max", "memory.swap.max", "memory.current", "memory.peak", "memory.events"]
        }
        "pids" => &["pids.max", "pids.current"],
        _ => &[],
    }
}

impl FakeState {
    /// Controllers offered to `path`: the root's own, else what the parent enabled.
    fn controllers(&self, path: &Path) -> Vec<String> {
        let text = match path.parent() {
            None => self.cgroups.get(path).and_then(|c| c.files.get("cgroup.controllers")),
            Some(parent) => {
                self.cgroups.get(parent).and_then(|c| c.files.get("cgroup.subtree_control"))
            }
        };
        text.map(|t| t.split_whitespace().map(str::to_owned).collect()).unwrap_or_default()
    }
}

fn norm(path: &Path) -> PathBuf {
    path.components().filter(|c| matches!(c, Component::Normal(_))).collect()
}

impl FakeCgroupFs {
    /// A fake whose root offers `controllers` (e.g. `"cpu memory pids"`, or `""` as on hybrid
    /// hosts) and has `cgroup.kill` files when `has_kill`.
    pub fn new(controllers: &str, has_kill: bool) -> Self {
        let mut root = FakeCgroup::default();
        root.files.insert("cgroup.controllers".into(), controllers.to_owned());
        root.files.insert("cgroup.subtree_control".into(), String::new());
        root.files.insert("cgroup.procs".into(), String::new());
        root.files.insert("cpu.stat".into(), "usage_usec 0\n".into());
        if has_kill {
            root.files.insert("cgroup.kill".into(), String::new());
        }
        let mut cgroups = BTreeMap::new();
        cgroups.insert(PathBuf::new(), root);
        Self { state: Mutex::new(FakeState { cgroups, writes: Vec::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        // A panic in another test thread must not hide this one's result.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether cgroup `path` exists.
    pub fn exists(&self, path: &Path) -> bool {
        self.lock().cgroups.contains_key(&norm(path))
    }

    /// A copy of cgroup `path`.
    pub fn get(&self, path: &Path) -> Option<FakeCgroup> {
        self.lock().cgroups.get(&norm(path)).cloned()
    }

    /// Puts a process into cgroup `path` (as a fork there would).
    pub fn add_proc(&self, path: &Path, pid: i32) {
        if let Some(cg) = self.lock().cgroups.get_mut(&norm(path)) {
            cg.procs.push(pid);
        }
    }

    /// Sets an interface file's content (as the kernel would update a counter).
    pub fn set_file(&self, path: &Path, file: &str, value: &str) {
        if let Some(cg) = self.lock().cgroups.get_mut(&norm(path)) {
            cg.files.insert(file.to_owned(), value.to_owned());
        }
    }

    /// Every write so far: (cgroup, file, value).
    pub fn writes(&self) -> Vec<(PathBuf, String, String)> {
        self.lock().writes.clone()
    }

    /// All cgroup paths, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().cgroups.keys().cloned().collect()
    }
}

fn fake_err(op: &'static str, path: &Path, msg: &str) -> Error {
    Error::Io { op, path: path.to_owned(), source: std::io::Error::other(msg.to_owned()) }
}

impl CgroupFs for FakeCgroupFs {
    fn create_dir(&self, path: &Path) -> Result<()> {
        check_relative(path)?;
        let path = norm(path);
        let mut st = self.lock();
        if st.cgroups.contains_key(&path) {
            return Ok(());
        }
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let enabled = match st.cgroups.get(&parent) {
            Some(p) => p.files.get("cgroup.subtree_control").cloned().unwrap_or_default(),
            None => return Err(fake_err("create cgroup", &path, "parent does not exist")),
        };
        let has_kill =
            st.cgroups.get(&PathBuf::new()).is_some_and(|r| r.files.contains_key("cgroup.kill"));
        let mut cg = FakeCgroup::default();
        for f in ["cgroup.procs", "cgroup.subtree_control"] {
            cg.files.insert(f.into(), String::new());
        }
        cg.files.insert("cgroup.controllers".into(), String::new());
        cg.files.insert("cpu.stat".into(), "usage_usec 0\nuser_usec 0\nsystem_usec 0\n".into());
        if has_kill {
            cg.files.insert("cgroup.kill".into(), String::new());
        }
        for c in enabled.split_whitespace() {
            for f in controller_files(c) {
                cg.files.insert((*f).into(), String::new());
            }
        }
        st.cgroups.insert(path, cg);
        Ok(())
    }

    fn write(&self, path: &Path, file: &str, value: &str) -> Result<()> {
        check_relative(path)?;
        let path = norm(path);
        let mut st = self.lock();
        st.writes.push((path.clone(), file.to_owned(), value.to_owned()));
        let Some(cg) = st.cgroups.get(&path) else {
            return Err(fake_err("write", &path, "no such cgroup"));
        };
        if !cg.files.contains_key(file) {
            return Err(fake_err("write", &path.join(file), "no such file"));
        }
        match file {
            "cgroup.subtree_control" => {
                let offered = st.controllers(&path);
                if !path.as_os_str().is_empty() && !cg.procs.is_empty() {
                    // The "no internal processes" rule.
                    return Err(fake_err("write", &path.join(file), "device or resource busy"));
                }
                let mut enabled: Vec<String> = cg.files["cgroup.subtree_control"]
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                for token in value.split_whitespace() {
                    let (on, name) = match token.split_at(1) {
                        ("+", n) => (true, n),
                        ("-", n) => (false, n),
                        _ => return Err(fake_err("write", &path.join(file), "invalid argument")),
                    };
                    if !offered.iter().any(|o| o == name) {
                        return Err(fake_err("write", &path.join(file), "controller not offered"));
                    }
                    enabled.retain(|e| e != name);
                    if on {
                        enabled.push(name.to_owned());
                    }
                }
                for (child, cg) in st.cgroups.iter_mut() {
                    if child.parent() == Some(path.as_path()) && child != &path {
                        for c in &enabled {
                            for f in controller_files(c) {
                                cg.files.entry((*f).into()).or_default();
                            }
                        }
                    }
                }
                if let Some(cg) = st.cgroups.get_mut(&path) {
                    cg.files.insert(file.to_owned(), enabled.join(" "));
                }
            }
            "cgroup.kill" => {
                for (p, cg) in st.cgroups.iter_mut() {
                    if p.starts_with(&path) {
                        cg.procs.clear();
                    }
                }
            }
            "cgroup.procs" => {
                let pid =
                    value.trim().parse().map_err(|_| fake_err("write", &path, "invalid pid"))?;
                for cg in st.cgroups.values_mut() {
                    cg.procs.retain(|p| *p != pid);
                }
                if let Some(cg) = st.cgroups.get_mut(&path) {
                    cg.procs.push(pid);
                }
            }
            _ => {
                if let Some(cg) = st.cgroups.get_mut(&path) {
                    cg.files.insert(file.to_owned(), value.to_owned());
                }
            }
        }
        Ok(())
    }

    fn read(&self, path: &Path, file: &str) -> Result<String> {
        check_relative(path)?;
        let path = norm(path);
        let st = self.lock();
        let cg = st.cgroups.get(&path).ok_or_else(|| fake_err("read", &path, "no such cgroup"))?;
        if file == "cgroup.procs" {
            return Ok(cg.procs.iter().map(|p| format!("{p}\n")).collect());
        }
        if file == "cgroup.controllers" {
            return Ok(st.controllers(&path).join(" "));
        }
        cg.files
            .get(file)
            .cloned()
            .ok_or_else(|| fake_err("read", &path.join(file), "no such file"))
    }

    fn has_file(&self, path: &Path, file: &str) -> bool {
        self.lock().cgroups.get(&norm(path)).is_some_and(|cg| cg.files.contains_key(file))
    }

    fn remove_dir(&self, path: &Path) -> Result<()> {
        check_relative(path)?;
        let path = norm(path);
        let mut st = self.lock();
        let Some(cg) = st.cgroups.get(&path) else {
            return Ok(());
        };
        if !cg.procs.is_empty() {
            return Err(fake_err("remove cgroup", &path, "device or resource busy"));
        }
        if st.cgroups.keys().any(|k| k != &path && k.starts_with(&path)) {
            return Err(fake_err("remove cgroup", &path, "directory not empty"));
        }
        st.cgroups.remove(&path);
        Ok(())
    }

    fn pids(&self, path: &Path) -> Result<Vec<i32>> {
        check_relative(path)?;
        Ok(self.lock().cgroups.get(&norm(path)).map(|cg| cg.procs.clone()).unwrap_or_default())
    }

    fn children(&self, path: &Path) -> Result<Vec<String>> {
        check_relative(path)?;
        let path = norm(path);
        let st = self.lock();
        Ok(st
            .cgroups
            .keys()
            .filter(|k| k.parent() == Some(path.as_path()) && *k != &path)
            .filter_map(|k| k.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn kill(&self, path: &Path) -> Result<()> {
        if self.has_file(path, "cgroup.kill") {
            return self.write(path, "cgroup.kill", "1");
        }
        let path = norm(path);
        let mut st = self.lock();
        for (p, cg) in st.cgroups.iter_mut() {
            if p.starts_with(&path) {
                cg.procs.clear();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn real_cgroupfs_creates_writes_reads_lists_and_removes_in_a_tempdir() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealCgroupFs::new(dir.path());
        fs.create_dir(Path::new("keelson")).unwrap();
        fs.create_dir(Path::new("keelson")).unwrap(); // idempotent
        fs.create_dir(Path::new("keelson/pod1")).unwrap();
        fs.write(Path::new("keelson/pod1"), "memory.max", "1048576").unwrap();
        assert_eq!(fs.read(Path::new("keelson/pod1"), "memory.max").unwrap(), "1048576");
        assert!(fs.has_file(Path::new("keelson/pod1"), "memory.max"));
        assert!(!fs.has_file(Path::new("keelson/pod1"), "cgroup.kill"));
        assert_eq!(fs.children(Path::new("keelson")).unwrap(), vec!["pod1"]);
        std::fs::write(dir.path().join("keelson/cgroup.procs"), "12\n34\n").unwrap();
        assert_eq!(fs.pids(Path::new("keelson")).unwrap(), vec![12, 34]);
        assert_eq!(fs.pids(Path::new("keelson/pod1")).unwrap(), Vec::<i32>::new());
        std::fs::remove_file(dir.path().join("keelson/pod1/memory.max")).unwrap();
        fs.remove_dir(Path::new("keelson/pod1")).unwrap();
        fs.remove_dir(Path::new("keelson/pod1")).unwrap(); // missing is fine
        assert!(!dir.path().join("keelson/pod1").exists());
    }

    #[test]
    fn real_cgroupfs_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealCgroupFs::new(dir.path());
        let err = fs.read(Path::new("nope"), "cpu.stat").unwrap_err();
        assert!(err.to_string().contains("nope/cpu.stat"), "{err}");
        std::fs::write(dir.path().join("cgroup.procs"), "12\nabc\n").unwrap();
        assert!(matches!(fs.pids(Path::new("")), Err(Error::Parse { .. })));
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealCgroupFs::new(dir.path().join("root"));
        for bad in ["../escape", "/etc", "a/../../b"] {
            assert!(matches!(fs.create_dir(Path::new(bad)), Err(Error::BadPath { .. })), "{bad}");
        }
        assert!(matches!(fs.write(Path::new("a"), "../x", "1"), Err(Error::BadPath { .. })));
        assert!(!dir.path().join("escape").exists());
        let fake = FakeCgroupFs::new("", true);
        assert!(matches!(fake.create_dir(Path::new("../x")), Err(Error::BadPath { .. })));
    }

    #[test]
    fn real_kill_without_cgroup_kill_and_without_processes_returns() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealCgroupFs::new(dir.path());
        fs.create_dir(Path::new("a")).unwrap();
        fs.create_dir(Path::new("a/b")).unwrap();
        std::fs::write(dir.path().join("a/cgroup.procs"), "").unwrap();
        fs.kill(Path::new("a")).unwrap();
    }

    #[test]
    fn real_kill_uses_cgroup_kill_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealCgroupFs::new(dir.path());
        fs.create_dir(Path::new("a")).unwrap();
        std::fs::write(dir.path().join("a/cgroup.kill"), "").unwrap();
        fs.kill(Path::new("a")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a/cgroup.kill")).unwrap(), "1");
    }

    #[test]
    fn fake_models_the_kernel_rules() {
        let fs = FakeCgroupFs::new("cpu memory pids", true);
        assert!(fs.create_dir(Path::new("a/b")).is_err(), "parent must exist");
        fs.create_dir(Path::new("a")).unwrap();
        assert!(!fs.has_file(Path::new("a"), "memory.max"));
        fs.write(Path::new(""), "cgroup.subtree_control", "+memory +pids").unwrap();
        assert!(fs.write(Path::new(""), "cgroup.subtree_control", "+io").is_err());
        fs.create_dir(Path::new("a/b")).unwrap();
        assert!(fs.has_file(Path::new("a/b"), "cgroup.procs"));
        assert!(fs.has_file(Path::new("a"), "memory.max"), "enabling adds files to children");
        assert!(
            fs.write(Path::new("a"), "cgroup.subtree_control", "+cpu").is_err(),
            "not offered to a"
        );
        fs.write(Path::new("a"), "cgroup.subtree_control", "+memory").unwrap();
        fs.create_dir(Path::new("a/c")).unwrap();
        assert!(fs.has_file(Path::new("a/c"), "memory.max"));
        assert_eq!(fs.read(Path::new("a/c"), "cgroup.controllers").unwrap(), "memory");
        fs.add_proc(Path::new("a/b"), 7);
        assert!(
            fs.write(Path::new("a/b"), "cgroup.subtree_control", "+memory").is_err(),
            "internal process"
        );
        assert!(fs.remove_dir(Path::new("a/b")).is_err());
        assert!(fs.remove_dir(Path::new("a")).is_err());
        fs.kill(Path::new("a")).unwrap();
        fs.remove_dir(Path::new("a/b")).unwrap();
        fs.remove_dir(Path::new("a/c")).unwrap();
        fs.remove_dir(Path::new("a")).unwrap();
        assert_eq!(fs.paths(), vec![PathBuf::new()]);
    }
}
