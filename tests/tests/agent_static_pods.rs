//! Privileged end-to-end tests of a standalone node: the agent library in process
//! ([`Standalone`]: the real [`ShimRuntime`](keelson_runtime::sandbox::ShimRuntime) with the
//! in-process pod network, the image store, the manifest watcher) running static pods from a
//! manifest directory. The bridge lives in a host namespace the test created (the network's
//! `host_netns`), so nothing touches the machine's root namespace; traffic to pods is sent from
//! a thread inside that namespace. Images are the project's busybox test images, imported from
//! their absolute path.
//!
//! Run: `KEELSON_TEST_TIERS=privileged KEELSON_TEST_STRICT=1 cargo test -p keelson-tests
//! --test agent_static_pods` as root. Every test has its own tempdirs, host namespace and
//! cgroup tree, and removes its sandboxes on every exit path (a Drop guard).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use keelson_agent::api::registry::PodRegistry;
use keelson_agent::network::CniNetwork;
use keelson_agent::standalone::{Options, Standalone};
use keelson_cni::config::{IpRange, Mtu, NetworkConfig};
use keelson_cni::netns::{self, Netns};
use keelson_runtime::api::Runtime;
use keelson_runtime::cgroup::{detect_host, Layout};
use keelson_runtime::sandbox::{CgroupConfig, RuntimeConfig, ShimRuntime};
use keelson_tests::images::{need_test_images, oci_layout};
use keelson_tests::{need_root, require, Tier};

/// A network namespace pinned by the test; unpinned (so destroyed) on drop.
struct Pin(PathBuf);

impl Drop for Pin {
    fn drop(&mut self) {
        if let Err(e) = netns::remove(&self.0) {
            eprintln!("cannot remove netns pin {}: {e}", self.0.display());
        }
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32)
}

/// A node's state: fields drop after `Env::drop` removed the sandboxes, the pin before the
/// tempdir holding it.
struct Env {
    node: Option<Standalone>,
    runtime: Option<Arc<dyn Runtime>>,
    opts: Options,
    cgroup_base: Option<PathBuf>,
    host: Pin,
    dir: tempfile::TempDir,
}

async fn env() -> Result<Env> {
    let dir = tempfile::tempdir()?;
    let host_path = dir.path().join("host-netns");
    netns::create(&host_path).context("create the host netns")?;
    let host = Pin(host_path.clone());
    let subnet = format!("10.{}.{}.0/24", 100 + rand_u32() % 50, rand_u32() % 250);
    let network = NetworkConfig {
        name: "ksp".into(),
        bridge: "keel0".into(),
        ranges: vec![vec![IpRange {
            subnet: subnet.parse().context("subnet")?,
            range_start: None,
            range_end: None,
            gateway: None,
        }]],
        mtu: Mtu::Auto { overlay: None },
        masquerade: None,
        hairpin: true,
        state_dir: dir.path().join("cni"),
        host_netns: Some(host_path),
    };
    let base = format!("keelson-test-agent-{}-{:x}", std::process::id(), rand_u32());
    let setup = detect_host().context("detect cgroup layout")?;
    let cgroup_base = setup.v2_root().map(|r| r.join(&base));
    let runtime = RuntimeConfig {
        shim_path: keelson_tests::bins::shim()?,
        state_dir: dir.path().join("run"),
        run_dir: dir.path().join("run/shims"),
        netns_dir: dir.path().join("run/netns"),
        log_root: dir.path().join("logs"),
        cgroup: cgroup_base
            .is_some()
            .then(|| CgroupConfig { setup, layout: Layout { base: PathBuf::from(&base) } }),
        shim_log: Some(dir.path().join("shim.log")),
    };
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.53\n")?;
    let opts = Options {
        manifests,
        node_name: "edge".into(),
        node_ip: Some("127.0.0.1".parse()?),
        state_dir: dir.path().join("agent"),
        data_dir: dir.path().join("data"),
        runtime,
        network,
        host_hosts: dir.path().join("hosts"),
        host_resolv: dir.path().join("resolv.conf"),
    };
    Ok(Env { node: None, runtime: None, opts, cgroup_base, host, dir })
}

impl Drop for Env {
    fn drop(&mut self) {
        let rt = self.runtime.clone();
        let (cfg, net) = (self.opts.runtime.clone(), self.opts.network.clone());
        let node = self.node.take();
        let base = self.cgroup_base.clone();
        // On a fresh thread with its own tokio runtime: this may run inside the test's.
        let _ = std::thread::spawn(move || {
            let Ok(t) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            t.block_on(async {
                if let Some(n) = node {
                    n.detach().await;
                }
                // A node run as a process: a runtime over its state takes the shims over.
                let rt: Arc<dyn Runtime> = match rt {
                    Some(rt) => rt,
                    None => {
                        let Ok(net) = CniNetwork::new(net) else { return };
                        match ShimRuntime::new(cfg, Arc::new(net)).await {
                            Ok(rt) => Arc::new(rt),
                            Err(e) => return eprintln!("cleanup: runtime: {e:#}"),
                        }
                    }
                };
                for s in rt.list_sandboxes().await.unwrap_or_default() {
                    if let Err(e) = rt.remove_sandbox(&s.id).await {
                        eprintln!("cleanup of sandbox {}: {e:#}", s.id);
                    }
                }
            });
            if let Some(b) = base {
                for d in ["burstable", "besteffort", ""] {
                    let _ = std::fs::remove_dir(b.join(d));
                }
            }
        })
        .join();
        if let Ok(log) = std::fs::read_to_string(self.dir.path().join("shim.log")) {
            if !log.is_empty() {
                eprintln!("--- shim diagnostics ---\n{log}");
            }
        }
    }
}

impl Env {
    async fn start(&mut self) -> Result<()> {
        let node = Standalone::start(self.opts.clone()).await?;
        self.runtime = Some(node.runtime.clone());
        self.node = Some(node);
        Ok(())
    }

    /// The agent goes away (as if killed): pods stay.
    async fn detach(&mut self) {
        if let Some(n) = self.node.take() {
            n.detach().await;
        }
    }

    fn agent(&self) -> &keelson_agent::node::Agent {
        &self.node.as_ref().expect("node started").agent
    }

    fn write(&self, file: &str, yaml: &str) -> Result<()> {
        // Written aside and renamed in, as deployment tools do: the watcher never sees half.
        let tmp = self.opts.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.opts.manifests.join(file))?;
        Ok(())
    }

    fn pod(&self, name: &str) -> Option<Pod> {
        let full = format!("{name}-edge");
        self.agent().pods().into_iter().find(|p| p.metadata.name.as_deref() == Some(&full))
    }

    /// Waits until `name`'s pod satisfies `ok`.
    async fn wait(&self, name: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Result<Pod> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(p) = self.pod(name) {
                if ok(&p) {
                    return Ok(p);
                }
                if Instant::now() > deadline {
                    bail!("pod {name}: not {what} in time: {:#?}", p.status);
                }
            } else if Instant::now() > deadline {
                bail!(
                    "pod {name} never appeared; manifest errors: {:?}",
                    self.agent().manifest_errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_running(&self, name: &str) -> Result<Pod> {
        self.wait(name, "running", |p| {
            let st = p.status.as_ref();
            st.and_then(|s| s.phase.as_deref()) == Some("Running")
                && st
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.ready))
        })
        .await
    }

    /// An emptyDir's directory on the node.
    fn empty_dir(&self, pod: &Pod, volume: &str) -> PathBuf {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.opts
            .state_dir
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(volume)
    }

    /// `GET /` from inside the host namespace.
    fn http_get(&self, ip: IpAddr, port: u16) -> Result<String> {
        let ns = Netns::open(&self.host.0)?;
        netns::run_blocking(Some(&ns), move |_t| async move {
            let to = SocketAddr::new(ip, port);
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .with_context(|| format!("connect {to}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            anyhow::Ok(body)
        })?
    }
}

fn image() -> String {
    oci_layout().display().to_string()
}

fn pod_ip(p: &Pod) -> Result<IpAddr> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .context("no pod IP")?
        .parse()
        .context("pod IP")
}

fn httpd(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: {img}
    command: [sh, -c, 'mkdir -p /www && echo "hello from $(POD)" > /www/index.html && exec httpd -f -p 8080 -h /www']
    env: [{{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
"#,
        img = image()
    )
}

fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(f)
}

#[test]
fn a_busybox_httpd_static_pod_answers_on_its_pod_ip() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let mut e = env().await?;
        e.start().await?;
        e.write("web.yaml", &httpd("web"))?;
        let p = e.wait_running("web").await?;
        let ip = pod_ip(&p)?;
        // Running is the container's process, not yet httpd's listening socket.
        wait_for("httpd answering", 10, || e.http_get(ip, 8080).is_ok()).await?;
        let body = e.http_get(ip, 8080)?;
        ensure!(body.contains("hello from web-edge"), "unexpected answer: {body}");
        let hosts = std::fs::read_to_string(
            e.opts
                .state_dir
                .join("pods")
                .join(p.metadata.uid.clone().unwrap_or_default())
                .join("etc-hosts"),
        )?;
        ensure!(hosts.contains(&format!("{ip}\tweb-edge")), "{hosts}");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn probes_gate_readiness_and_a_failed_liveness_probe_restarts_the_container() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let mut e = env().await?;
        e.start().await?;
        e.write(
            "probed.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  terminationGracePeriodSeconds: 2
  volumes: [{{name: alive, emptyDir: {{}}}}]
  containers:
  - name: web
    image: {img}
    command: [sh, -c, 'touch /alive/ok && mkdir -p /www && echo up > /www/index.html && sleep 1 && exec httpd -f -p 8080 -h /www']
    ports: [{{name: http, containerPort: 8080}}]
    volumeMounts: [{{name: alive, mountPath: /alive}}]
    readinessProbe: {{httpGet: {{port: http, path: /index.html}}, periodSeconds: 1}}
    livenessProbe: {{exec: {{command: [test, -f, /alive/ok]}}, periodSeconds: 1, failureThreshold: 2}}
"#,
                img = image()
            ),
        )?;
        // Ready only once httpd answers the readiness probe (from the host namespace).
        let p = e.wait_running("probed").await?;
        let ip = pod_ip(&p)?;
        let body = e.http_get(ip, 8080)?;
        ensure!(body.contains("200 OK"), "ready but httpd does not answer: {body}");

        // The liveness probe fails: the container is killed and started again.
        std::fs::remove_file(e.empty_dir(&p, "alive").join("ok"))?;
        let restarted = e
            .wait("probed", "restarted after its liveness probe failed", |p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.restart_count == 1 && c.ready))
            })
            .await?;
        ensure!(pod_ip(&restarted)? == ip, "the pod's IP changed");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn a_host_network_pod_sees_the_hosts_interfaces() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let mut e = env().await?;
        e.start().await?;
        let out = e.dir.path().join("out");
        e.write(
            "hn.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: hn}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  volumes: [{{name: out, hostPath: {{path: {out}, type: DirectoryOrCreate}}}}]
  containers:
  - name: c
    image: {img}
    command: [sh, -c, 'cat /proc/net/dev > /out/dev.tmp && mv /out/dev.tmp /out/dev; exec sleep 3600']
    volumeMounts: [{{name: out, mountPath: /out}}]
"#,
                out = out.display(),
                img = image()
            ),
        )?;
        let p = e.wait_running("hn").await?;
        ensure!(pod_ip(&p)? == "127.0.0.1".parse::<IpAddr>()?, "a hostNetwork pod has the node IP");
        let names = |s: &str| -> Vec<String> {
            let mut v: Vec<String> = s
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
                .collect();
            v.sort();
            v
        };
        // Renamed into place by the pod, so it is whole once it exists.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.join("dev").exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = names(&std::fs::read_to_string(out.join("dev"))?);
        let ours = names(&std::fs::read_to_string("/proc/self/net/dev")?);
        ensure!(seen == ours, "the pod sees {seen:?}, the host has {ours:?}");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn init_containers_gate_app_containers() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let mut e = env().await?;
        e.start().await?;
        e.write(
            "init.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: init}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: work, emptyDir: {{}}}}]
  initContainers:
  - {{name: first, image: {img}, command: [sh, -c, 'sleep 1; echo 1 >> /work/order'], volumeMounts: [{{name: work, mountPath: /work}}]}}
  - {{name: second, image: {img}, command: [sh, -c, 'test -f /work/order && echo 2 >> /work/order'], volumeMounts: [{{name: work, mountPath: /work}}]}}
  containers:
  - {{name: app, image: {img}, command: [sh, -c, 'test "$(cat /work/order | tr -d "\n")" = 12 || exit 3; echo app >> /work/order; exec sleep 3600'], volumeMounts: [{{name: work, mountPath: /work}}]}}
"#,
                img = image()
            ),
        )?;
        let p = e.wait_running("init").await?;
        // Running means the app's process exists, not that its first command has run.
        let file = e.empty_dir(&p, "work").join("order");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut order = std::fs::read_to_string(&file)?;
        while !order.ends_with("app\n") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            order = std::fs::read_to_string(&file)?;
        }
        ensure!(order == "1\n2\napp\n", "order: {order:?}");
        let st = p.status.context("status")?;
        let app = &st.container_statuses.context("statuses")?[0];
        ensure!(app.restart_count == 0, "the app container failed before init was done");
        for c in st.init_container_statuses.context("init statuses")? {
            let t = c.state.and_then(|s| s.terminated).context("init not terminated")?;
            ensure!(t.reason.as_deref() == Some("Completed"), "{:?}", t);
        }
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn a_crash_looping_pod_backs_off_10_then_20_seconds_in_real_time() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let mut e = env().await?;
        e.start().await?;
        e.write(
            "crash.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  volumes: [{{name: work, emptyDir: {{}}}}]
  containers:
  - {{name: c, image: {img}, command: [sh, -c, 'date +%s >> /work/starts; exit 1'], volumeMounts: [{{name: work, mountPath: /work}}]}}
"#,
                img = image()
            ),
        )?;
        let p = e
            .wait("crash", "restarted twice", |p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|c| c[0].restart_count >= 2)
            })
            .await?;
        // The restart count moves when the third instance is created, before its command ran.
        let file = e.empty_dir(&p, "work").join("starts");
        let read = || -> Vec<i64> {
            std::fs::read_to_string(&file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        };
        wait_for("the third start recorded", 10, || read().len() >= 3).await?;
        let starts = read();
        let gaps: Vec<i64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        ensure!((9..=12).contains(&gaps[0]), "first back-off {}s, want 10s: {gaps:?}", gaps[0]);
        ensure!((19..=22).contains(&gaps[1]), "second back-off {}s, want 20s: {gaps:?}", gaps[1]);
        let p = e.wait("crash", "backing off", |p| {
            p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|c| {
                c[0].state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref())
                    == Some("CrashLoopBackOff")
            })
        })
        .await?;
        let st = p.status.context("status")?;
        ensure!(st.phase.as_deref() == Some("Running"), "phase {:?}", st.phase);
        let last = st.container_statuses.context("statuses")?[0]
            .last_state
            .clone()
            .and_then(|s| s.terminated)
            .context("no last state")?;
        ensure!(last.exit_code == 1 && last.reason.as_deref() == Some("Error"), "{last:?}");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn a_bad_manifest_is_reported_and_does_not_affect_other_pods() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let mut e = env().await?;
        e.start().await?;
        e.write("web.yaml", &httpd("web"))?;
        e.write(
            "bad.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: [{name: c}]}\n",
        )?;
        e.write("junk.yaml", "{{{ not yaml")?;
        let p = e.wait_running("web").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let errs = loop {
            let errs = e.agent().manifest_errors();
            if errs.len() >= 2 || Instant::now() > deadline {
                break errs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let msg = |f: &str| {
            errs.iter().find(|x| x.path.file_name() == Some(f.as_ref())).map(|x| x.message.clone())
        };
        ensure!(
            msg("bad.yaml").as_deref() == Some("spec.containers[0].image: required"),
            "{errs:?}"
        );
        ensure!(msg("junk.yaml").is_some(), "{errs:?}");
        ensure!(e.pod("bad").is_none(), "the bad pod runs");
        let ip = pod_ip(&p)?;
        wait_for("httpd answering", 10, || e.http_get(ip, 8080).is_ok()).await?;
        let body = e.http_get(ip, 8080)?;
        ensure!(body.contains("hello"), "{body}");
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn an_agent_restart_keeps_containers_and_ip_and_a_removed_manifest_stops_the_pod() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let mut e = env().await?;
        e.start().await?;
        e.write("web.yaml", &httpd("web"))?;
        let before = e.wait_running("web").await?;
        let ip = pod_ip(&before)?;
        let id = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c[0].container_id.clone())
        };
        let cid = id(&before).context("container id")?;
        e.detach().await;
        e.start().await?;
        // Give a wrongly restarting agent time to do so.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = e.wait_running("web").await?;
        ensure!(
            id(&after).as_deref() == Some(cid.as_str()),
            "container restarted: {:?} -> {:?}",
            cid,
            id(&after)
        );
        ensure!(pod_ip(&after)? == ip, "new IP");
        let restarts = after
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c[0].restart_count);
        ensure!(restarts == Some(0), "restart count {restarts:?}");
        ensure!(e.http_get(ip, 8080)?.contains("hello"), "no answer after the restart");
        let rt = e.runtime.clone().context("runtime")?;
        ensure!(rt.list_sandboxes().await?.len() == 1, "a sandbox leaked");

        std::fs::remove_file(e.opts.manifests.join("web.yaml"))?;
        // The worker removes the sandbox, then the pod's directory: wait for both.
        let pod_dir = e.opts.state_dir.join("pods").join(before.metadata.uid.unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rt.list_sandboxes().await?.is_empty() || pod_dir.exists() {
            ensure!(
                Instant::now() < deadline,
                "the pod was not stopped and cleaned up (sandboxes: {}, {} exists: {})",
                rt.list_sandboxes().await?.len(),
                pod_dir.display(),
                pod_dir.exists()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(e.pod("web").is_none());
        Ok(())
    })
    .expect("test body failed");
}

/// The `keelson agent` process; killed with SIGKILL when dropped.
struct AgentProcess(std::process::Child);

impl AgentProcess {
    fn spawn(e: &Env) -> Result<Self> {
        let o = &e.opts;
        let subnet = o.network.ranges[0][0].subnet.to_string();
        let base = o
            .runtime
            .cgroup
            .as_ref()
            .map_or_else(|| "keelson".into(), |c| c.layout.base.display().to_string());
        let mut cmd = std::process::Command::new(keelson_tests::bins::keelson()?);
        cmd.arg("agent")
            .arg("--manifests")
            .arg(&o.manifests)
            .arg("--state-dir")
            .arg(&o.state_dir)
            .arg("--data-dir")
            .arg(&o.data_dir)
            .arg("--run-dir")
            .arg(&o.runtime.state_dir)
            .arg("--log-root")
            .arg(&o.runtime.log_root)
            .args(["--pod-cidr", &subnet, "--node-name", "edge", "--node-ip", "127.0.0.1"])
            .arg("--no-masquerade")
            .arg("--bridge-netns")
            .arg(&e.host.0)
            .arg("--network-state-dir")
            .arg(&o.network.state_dir)
            .args(["--cgroup-base", &base])
            .arg("--hosts-file")
            .arg(&o.host_hosts)
            .arg("--resolv-conf")
            .arg(&o.host_resolv)
            .arg("--api-socket")
            .arg(e.dir.path().join("agent.sock"))
            .arg("--pki-dir")
            .arg(e.dir.path().join("pki"))
            .arg("--agentctl-config")
            .arg(e.dir.path().join("agentctl.yaml"))
            .env("KEELSON_SHIM", keelson_tests::bins::shim()?)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(e.dir.path().join("agent.log"))?);
        Ok(AgentProcess(cmd.spawn().context("spawn keelson agent")?))
    }

    fn sigkill(&mut self) -> Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        ensure!(Instant::now() < deadline, "{what}: timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[test]
fn the_agent_binary_killed_with_sigkill_and_started_again_restarts_nothing_and_keeps_the_ip() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let e = env().await?;
        let yaml = format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: k}}
spec:
  terminationGracePeriodSeconds: 2
  volumes: [{{name: work, emptyDir: {{}}}}]
  containers:
  - name: web
    image: {img}
    env: [{{name: IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]
    command: [sh, -c, 'echo "$(IP)" >> /work/starts; mkdir -p /www; echo up > /www/index.html; exec httpd -f -p 8080 -h /www']
    volumeMounts: [{{name: work, mountPath: /work}}]
"#,
            img = image()
        );
        let path = e.opts.manifests.join("k.yaml");
        let sp = keelson_agent::manifests::parse(&path, yaml.as_bytes(), "edge")
            .map_err(anyhow::Error::msg)?;
        let uid = sp.pod.metadata.uid.clone().context("uid")?;
        let pod_dir = e.opts.state_dir.join("pods").join(&uid);
        let starts = pod_dir.join("volumes/kubernetes.io~empty-dir/work/starts");
        e.write("k.yaml", &yaml)?;
        let mut agent = AgentProcess::spawn(&e)?;
        wait_for("the container's first start", 60, || starts.exists()).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first = std::fs::read_to_string(&starts)?;
        let ip: IpAddr = first.trim().parse().with_context(|| format!("pod IP {first:?}"))?;
        let answer = || e.http_get(ip, 8080).unwrap_or_default();
        wait_for("httpd answering", 10, || answer().contains("up")).await?;

        agent.sigkill()?;
        ensure!(answer().contains("up"), "the pod died with the agent");
        let mut agent = AgentProcess::spawn(&e)?;
        // Long enough for a restarted agent to have recreated anything it wrongly thought lost.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = std::fs::read_to_string(&starts)?;
        ensure!(now == first, "the container was started again: {now:?}");
        ensure!(answer().contains("up"), "no answer after the agent restart");
        let log = std::fs::read_to_string(e.dir.path().join("agent.log")).unwrap_or_default();
        ensure!(log.contains("adopting the running pod"), "agent log: {log}");

        // agentctl, through the configuration the agent wrote, sees the adopted pod running.
        let cfg_path = e.dir.path().join("agentctl.yaml");
        wait_for("the agentctl configuration", 10, || cfg_path.exists()).await?;
        let cfg = keelson_agentctl::AgentctlConfig::load(&cfg_path)?;
        let client = keelson_agentctl::Client::connect(cfg.context(None)?).await?;
        let pods = client.list_pods().await?;
        ensure!(
            pods.pods.iter().any(|p| p.name.ends_with("-edge") && p.phase == "Running"),
            "agentctl pods: {pods:?}"
        );

        std::fs::remove_file(&path)?;
        wait_for("the pod stopped and its directory removed", 30, || !pod_dir.exists()).await?;
        ensure!(e.http_get(ip, 8080).is_err(), "the removed pod still answers");
        agent.sigkill()?;
        Ok(())
    })
    .expect("test body failed");
}

#[test]
fn removing_a_manifest_runs_the_pre_stop_hook_and_kills_after_the_grace_period() {
    require!(Tier::Privileged, need_root(), need_test_images());
    block_on(async {
        let mut e = env().await?;
        e.start().await?;
        let out = e.dir.path().join("out");
        e.write(
            "stubborn.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 3
  volumes: [{{name: out, hostPath: {{path: {out}, type: DirectoryOrCreate}}}}]
  containers:
  - name: c
    image: {img}
    command: [sh, -c, 'trap "" TERM; while true; do sleep 1; done']
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle: {{preStop: {{exec: {{command: [sh, -c, 'echo bye > /out/prestop']}}}}}}
"#,
                out = out.display(),
                img = image()
            ),
        )?;
        e.wait_running("stubborn").await?;
        let rt = e.runtime.clone().context("runtime")?;
        let t0 = Instant::now();
        std::fs::remove_file(e.opts.manifests.join("stubborn.yaml"))?;
        wait_for("the pod to be removed", 30, || e.pod("stubborn").is_none()).await?;
        e.agent().wait_stopped().await;
        let took = t0.elapsed();
        ensure!(rt.list_sandboxes().await?.is_empty(), "the sandbox is left");
        ensure!(
            std::fs::read_to_string(out.join("prestop")).ok().as_deref() == Some("bye\n"),
            "the preStop hook did not run"
        );
        ensure!(
            took >= Duration::from_millis(2500) && took < Duration::from_secs(15),
            "a container ignoring SIGTERM was stopped after {took:?}, want about the 3 s grace period"
        );
        Ok(())
    })
    .expect("test body failed");
}
