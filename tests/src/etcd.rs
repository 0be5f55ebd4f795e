//! Real etcd clusters for tests: Debian's `etcd` (3.4, installed by `dev/setup`) started on
//! 127.0.0.1 with free ports and temporary data directories, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The etcd binary (`KEELSON_ETCD` overrides it).
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("KEELSON_ETCD").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// `None` when the etcd binary is present, else why an etcd test cannot run.
pub fn need_etcd() -> Option<String> {
    let bin = etcd_binary();
    (!bin.exists())
        .then(|| format!("needs etcd at {} (dev/setup installs etcd-server)", bin.display()))
}

/// A running etcd cluster of one or more members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Child>,
    endpoints: Vec<String>,
    // Kept for the data directories and logs; removed on drop after the members are gone.
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdCluster {
    /// Starts `members` members and waits until every one answers its health endpoint.
    /// `progress` is the watch progress notification interval (etcd's default is 10 min).
    pub fn start(members: usize, progress: Duration) -> anyhow::Result<Self> {
        Self::spawn(tempfile::tempdir()?, members, progress, false)
    }

    /// Like [`EtcdCluster::start`], with the data directories in a new directory under
    /// `parent` (a benchmark keeps them on the filesystem it measures), and members that the
    /// kernel kills when the calling thread exits (`PR_SET_PDEATHSIG`), so that a driver killed
    /// before its drops run leaves no etcd behind. Call it from a thread that outlives the
    /// cluster (the main thread).
    pub fn start_in(parent: &Path, members: usize, progress: Duration) -> anyhow::Result<Self> {
        Self::spawn(tempfile::tempdir_in(parent)?, members, progress, true)
    }

    fn spawn(
        dir: tempfile::TempDir,
        members: usize,
        progress: Duration,
        die_with_parent: bool,
    ) -> anyhow::Result<Self> {
        let ports = (0..members)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("keelson-test-{}-{}", std::process::id(), ports[0].0);
        let mut cluster = EtcdCluster { members: Vec::new(), endpoints: Vec::new(), dir };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(cluster.dir.path().join(format!("m{i}.log")))?;
            let mut cmd = Command::new(etcd_binary());
            if die_with_parent {
                kill_with_parent(&mut cmd);
            }
            let child = cmd
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(cluster.dir.path().join(format!("m{i}.etcd")))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args([
                    "--experimental-watch-progress-notify-interval",
                    &format!("{}ms", progress.as_millis()),
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {}", etcd_binary().display()))?;
            cluster.members.push(child);
            cluster.endpoints.push(format!("http://127.0.0.1:{client}"));
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// The client URLs, one per member.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }

    /// Member `i`'s log so far (for failure messages).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("m{i}.log"))).unwrap_or_default()
    }

    fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for (i, ep) in self.endpoints.clone().iter().enumerate() {
            let addr = ep.trim_start_matches("http://").to_owned();
            loop {
                if let Some(status) = self.members[i].try_wait()? {
                    anyhow::bail!("etcd member {i} exited with {status}:\n{}", self.log(i));
                }
                if health(&addr).unwrap_or(false) {
                    break;
                }
                if Instant::now() > deadline {
                    anyhow::bail!(
                        "etcd member {i} not healthy within {timeout:?}:\n{}",
                        self.log(i)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

/// Makes the kernel SIGKILL the child when the thread that spawns it exits.
pub fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// GET /health on a loopback member: `{"health":"true"}` once it has a leader.
fn health(addr: &str) -> anyhow::Result<bool> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body.contains("\"health\":\"true\""))
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
