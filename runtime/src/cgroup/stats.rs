//! Resource usage of a cgroup from its v2 interface files, and OOM-kill detection.
//!
//! Files of a controller that is not enabled (all of `memory.*` and `pids.*` on hybrid hosts)
//! are missing: their fields are `None`, never zero. `cpu.stat`'s usage lines exist on every
//! cgroup2 cgroup; its throttling lines only with the cpu controller.

use std::path::Path;

use super::fs::CgroupFs;
use super::{Error, Result};

/// One sample of a cgroup's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// `cpu.stat` `usage_usec`: CPU time used, in microseconds.
    pub cpu_usage_usec: Option<u64>,
    /// `cpu.stat` `nr_throttled`: periods in which the cgroup was throttled.
    pub cpu_nr_throttled: Option<u64>,
    /// `cpu.stat` `throttled_usec`: time spent throttled.
    pub cpu_throttled_usec: Option<u64>,
    /// `memory.current`, bytes.
    pub memory_current: Option<u64>,
    /// `memory.peak`, bytes (Linux 5.19+).
    pub memory_peak: Option<u64>,
    /// `memory.events` `oom`: times the limit was hit and reclaim failed.
    pub memory_oom: Option<u64>,
    /// `memory.events` `oom_kill`: processes killed by the OOM killer in this cgroup.
    pub memory_oom_kill: Option<u64>,
    /// `pids.current`.
    pub pids_current: Option<u64>,
}

/// Parses a flat-keyed file (`key value` per line) and returns the value of `key`.
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok()).flatten()
    })
}

fn optional(fs: &dyn CgroupFs, path: &Path, file: &str) -> Result<Option<String>> {
    if !fs.has_file(path, file) {
        return Ok(None);
    }
    fs.read(path, file).map(Some)
}

fn single(fs: &dyn CgroupFs, path: &Path, file: &str) -> Result<Option<u64>> {
    let Some(text) = optional(fs, path, file)? else {
        return Ok(None);
    };
    let t = text.trim();
    if t.is_empty() {
        // The fake's placeholder for a counter not yet set; the kernel never writes it.
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| Error::Parse { path: path.join(file), line: t.to_owned() })
}

/// Reads the stats of cgroup `path`.
pub fn read_stats(fs: &dyn CgroupFs, path: &Path) -> Result<CgroupStats> {
    let cpu = optional(fs, path, "cpu.stat")?.unwrap_or_default();
    let events = optional(fs, path, "memory.events")?.unwrap_or_default();
    Ok(CgroupStats {
        cpu_usage_usec: flat_keyed(&cpu, "usage_usec"),
        cpu_nr_throttled: flat_keyed(&cpu, "nr_throttled"),
        cpu_throttled_usec: flat_keyed(&cpu, "throttled_usec"),
        memory_current: single(fs, path, "memory.current")?,
        memory_peak: single(fs, path, "memory.peak")?,
        memory_oom: flat_keyed(&events, "oom"),
        memory_oom_kill: flat_keyed(&events, "oom_kill"),
        pids_current: single(fs, path, "pids.current")?,
    })
}

/// Notices OOM kills in one cgroup between samples of its `memory.events`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OomWatcher {
    last_oom_kill: u64,
}

impl OomWatcher {
    /// A watcher that counts kills from `baseline` on (the sample taken at container start).
    pub fn new(baseline: &CgroupStats) -> Self {
        Self { last_oom_kill: baseline.memory_oom_kill.unwrap_or(0) }
    }

    /// How many OOM kills happened since the previous call (0 when memory accounting is off).
    pub fn observe(&mut self, now: &CgroupStats) -> u64 {
        let now = now.memory_oom_kill.unwrap_or(self.last_oom_kill);
        let new = now.saturating_sub(self.last_oom_kill);
        self.last_oom_kill = self.last_oom_kill.max(now);
        new
    }
}

/// Whether `after` records an OOM kill that `before` did not.
pub fn oom_killed(before: &CgroupStats, after: &CgroupStats) -> bool {
    after.memory_oom_kill.unwrap_or(0) > before.memory_oom_kill.unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cgroup::fs::{FakeCgroupFs, RealCgroupFs};

    const CPU_STAT: &str = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n\
        core_sched.force_idle_usec 0\nnr_periods 50\nnr_throttled 7\nthrottled_usec 8910\n\
        nr_bursts 0\nburst_usec 0\n";
    const EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";

    #[test]
    fn stats_are_parsed_from_the_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealCgroupFs::new(dir.path());
        fs.create_dir(Path::new("c")).unwrap();
        for (f, v) in [
            ("cpu.stat", CPU_STAT),
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            ("memory.events", EVENTS),
            ("pids.current", "3\n"),
        ] {
            fs.write(Path::new("c"), f, v).unwrap();
        }
        let s = read_stats(&fs, Path::new("c")).unwrap();
        assert_eq!(
            s,
            CgroupStats {
                cpu_usage_usec: Some(123_456),
                cpu_nr_throttled: Some(7),
                cpu_throttled_usec: Some(8910),
                memory_current: Some(4096),
                memory_peak: Some(8192),
                memory_oom: Some(2),
                memory_oom_kill: Some(1),
                pids_current: Some(3),
            }
        );
    }

    #[test]
    fn missing_controllers_give_none_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealCgroupFs::new(dir.path());
        fs.create_dir(Path::new("c")).unwrap();
        fs.write(Path::new("c"), "cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\n").unwrap();
        let s = read_stats(&fs, Path::new("c")).unwrap();
        assert_eq!(s.cpu_usage_usec, Some(5));
        assert_eq!(s.cpu_nr_throttled, None);
        assert_eq!(s.memory_current, None);
        assert_eq!(s.memory_oom_kill, None);
        assert_eq!(s.pids_current, None);
    }

    #[test]
    fn garbage_in_a_counter_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealCgroupFs::new(dir.path());
        fs.create_dir(Path::new("c")).unwrap();
        fs.write(Path::new("c"), "memory.current", "lots\n").unwrap();
        let err = read_stats(&fs, Path::new("c")).unwrap_err();
        assert!(err.to_string().contains("memory.current"), "{err}");
    }

    #[test]
    fn oom_kills_are_noticed_once() {
        let fs = FakeCgroupFs::new("cpu memory pids", true);
        fs.write(Path::new(""), "cgroup.subtree_control", "+memory").unwrap();
        fs.create_dir(Path::new("c")).unwrap();
        fs.set_file(Path::new("c"), "memory.events", "oom 0\noom_kill 0\n");
        let start = read_stats(&fs, Path::new("c")).unwrap();
        let mut w = OomWatcher::new(&start);
        assert_eq!(w.observe(&start), 0);
        fs.set_file(Path::new("c"), "memory.events", "oom 1\noom_kill 1\n");
        let after = read_stats(&fs, Path::new("c")).unwrap();
        assert!(oom_killed(&start, &after));
        assert_eq!(w.observe(&after), 1);
        assert_eq!(w.observe(&after), 0, "the same kill is not reported twice");
        assert!(!oom_killed(&after, &after));
        // Without memory accounting nothing is ever reported.
        let mut blind = OomWatcher::default();
        assert_eq!(blind.observe(&CgroupStats::default()), 0);
    }

    #[test]
    fn flat_keyed_matches_whole_keys() {
        assert_eq!(flat_keyed(EVENTS, "oom"), Some(2));
        assert_eq!(flat_keyed(EVENTS, "oom_kill"), Some(1));
        assert_eq!(flat_keyed(EVENTS, "oom_group_kill"), Some(0));
        assert_eq!(flat_keyed(EVENTS, "nope"), None);
    }
}
