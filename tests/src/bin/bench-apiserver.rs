//! The driver of `bench/apiserver`: `keelson controlplane` on its embedded store and on a
//! one-member etcd, side by side in one run, under the same workload, with the machine's fsync
//! latency printed beside the figures.
//!
//! `bench-apiserver --keelson PATH --work DIR [--clients 50] [--pods 10000] [--watchers 100]
//! [--rate 500] [--watch-secs 10] …`
//!
//! Everything runs on loopback: the two servers listen on free 127.0.0.1 ports, etcd (Debian's,
//! `KEELSON_ETCD` overrides it) too; every data directory is under `--work`, so the fsync
//! figure, the embedded store and etcd share one filesystem. The servers and etcd are killed
//! when the driver ends, also when it is killed (`PR_SET_PDEATHSIG`).
//!
//! The client is a thin one (hyper's HTTP/2 connection over rustls, with the admin client
//! certificate of `DIR/admin.kubeconfig`), so its own overhead stays out of the figures. Each
//! phase runs on the embedded side, then on the etcd side, before the next phase starts:
//! - fsync: `--fsync-runs` appends of 4 KiB, each followed by `fdatasync`, in `--work`;
//! - create, get, update (PUT with the last resourceVersion) of `--pods` pods of about 3 KB
//!   (`--pod-bytes` of JSON: a realistic pod padded with labels, annotations and env) by
//!   `--clients` tasks, one HTTP/2 connection each; latency from sending the request to the
//!   last byte of the response, median and p99;
//! - list of all pods in one response (a consistent list, as `kubectl get` asks), and for
//!   information paged with `limit=500` and with `resourceVersion=0`, median of `--list-runs`;
//! - watch: `--watchers` watches of the pods (one connection each) from the current
//!   resourceVersion, while writers update pods at `--rate` writes/s for `--watch-secs`; each
//!   write carries a sequence number in an annotation; delivery latency is the time from the
//!   write's response to the event's arrival at each watcher (an event that arrives before
//!   the response counts as 0 and is counted), median and p99 over all deliveries;
//! - memory after `--idle-secs` idle: VmRSS and PSS (smaps_rollup) of each server, and of etcd.
//!
//! Any failed call ends the run with an error: a figure over failed calls would lie.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keelson_tests::bench::quantile_ms;
use keelson_tests::etcd::{kill_with_parent, EtcdCluster};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// The `keelson` binary (its `controlplane` subcommand is the server).
    #[arg(long)]
    keelson: PathBuf,
    /// Scratch directory on the filesystem to measure (data dirs of both stores).
    #[arg(long)]
    work: PathBuf,
    /// Concurrent clients (tasks, one HTTP/2 connection each) for create, get and update.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Pods created (then read and updated once each); the list and memory figures are taken
    /// with this many pods stored.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Size of a pod's JSON as sent.
    #[arg(long, default_value_t = 3072)]
    pod_bytes: usize,
    /// Runs of each list.
    #[arg(long, default_value_t = 5)]
    list_runs: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes per second while the watchers watch.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// How long the writes go on.
    #[arg(long, default_value_t = 10)]
    watch_secs: u64,
    /// Idle time before memory is read.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// 4 KiB write + fdatasync samples.
    #[arg(long, default_value_t = 2000)]
    fsync_runs: usize,
}

/// The namespace the pods live in.
const NS: &str = "bench";
/// The annotation that carries a write's sequence number (fixed width: every pod body has the
/// same size).
const SEQ: &str = "bench.keelson.dev/seq";

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.clients > 0 && args.pods >= args.clients, "need pods >= clients > 0");
    ensure!(
        u64::from(args.rate) * args.watch_secs <= args.pods as u64,
        "rate x watch-secs must not exceed pods (each watch-phase write updates another pod)"
    );
    ensure!(
        rustls::crypto::ring::default_provider().install_default().is_ok(),
        "install the ring crypto provider"
    );
    std::fs::create_dir_all(&args.work)?;
    println!("BENCH machine_cpus {} count", std::thread::available_parallelism()?);
    fsync(&args.work, args.fsync_runs)?;

    // Processes start on the main thread, which lives until the end: their PR_SET_PDEATHSIG
    // fires when the driver dies, not when some worker thread does.
    let etcd =
        EtcdCluster::start_in(&args.work, 1, Duration::from_secs(5)).context("start etcd")?;
    let store = format!("etcd:{}", etcd.endpoints().join(","));
    let mut sides = [
        Side::start("embedded", &args.keelson, &args.work.join("embedded"), &[])?,
        Side::start(
            "etcd",
            &args.keelson,
            &args.work.join("etcd-apiserver"),
            &["--store", &store],
        )?,
    ];
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        for side in &mut sides {
            side.connect().await?;
        }
        let template = Arc::new(PodTemplate::new(args.pod_bytes)?);
        println!("BENCH pod_json_bytes {} bytes", template.render(0, 0).len());
        for side in &mut sides {
            side.setup(args.clients).await?;
        }
        for side in &mut sides {
            side.crud(&args, &template, Verb::Create).await?;
        }
        for side in &mut sides {
            side.crud(&args, &template, Verb::Get).await?;
        }
        for side in &mut sides {
            side.crud(&args, &template, Verb::Update).await?;
        }
        for side in &mut sides {
            side.list(&args).await?;
        }
        for side in &mut sides {
            side.watch(&args).await?;
        }
        // Close every client connection before the idle period.
        for side in &mut sides {
            side.clients.clear();
        }
        anyhow::Ok(())
    })?;
    drop(rt);
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    for side in &mut sides {
        side.check_alive()?;
        memory(&format!("{}_apiserver", side.name), side.child.id())?;
    }
    for pid in etcd.pids() {
        memory("etcd_etcd", pid)?;
    }
    Ok(())
}

/// Median and p99 of 4 KiB appends each made durable with `fdatasync`.
fn fsync(dir: &Path, runs: usize) -> Result<()> {
    use std::io::Write;
    let path = dir.join("fsync.probe");
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = [0x5au8; 4096];
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    println!("BENCH fsync_4k_median {:.3} ms", quantile_ms(&times, 0.5));
    println!("BENCH fsync_4k_p99 {:.3} ms", quantile_ms(&times, 0.99));
    Ok(())
}

/// VmRSS and PSS of `pid`, as `<figure>_rss` and `<figure>_pss`.
fn memory(figure: &str, pid: u32) -> Result<()> {
    let kb = |file: &str, key: &str| -> Result<f64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .with_context(|| format!("read /proc/{pid}/{file}"))?;
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} in /proc/{pid}/{file}"))?;
        let n = line[key.len()..].trim().trim_end_matches("kB").trim();
        Ok(n.parse::<f64>()?)
    };
    println!("BENCH {figure}_rss {:.1} MB", kb("status", "VmRSS:")? / 1024.0);
    println!("BENCH {figure}_pss {:.1} MB", kb("smaps_rollup", "Pss:")? / 1024.0);
    Ok(())
}

/// The pod every client writes: realistic fields, padded with an annotation to a fixed size.
struct PodTemplate {
    pad: String,
}

impl PodTemplate {
    fn new(bytes: usize) -> Result<Self> {
        let mut t = PodTemplate { pad: String::new() };
        let bare = t.render(0, 0).len();
        ensure!(bare <= bytes, "a pod without padding is already {bare} bytes (> {bytes})");
        t.pad = "x".repeat(bytes - bare);
        Ok(t)
    }

    /// Pod `i`'s JSON with sequence number `seq`.
    fn render(&self, i: usize, seq: u64) -> Vec<u8> {
        let app = format!("web-{}", i % 20);
        let metadata = json!({
            "name": pod_name(i),
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": app,
                "app.kubernetes.io/instance": format!("{app}-prod"),
                "app.kubernetes.io/version": "1.27.3",
                "app.kubernetes.io/component": "frontend",
                "app.kubernetes.io/part-of": "shop",
                "app.kubernetes.io/managed-by": "bench",
                "pod-template-hash": "7d9f8b6c5d",
                "team": "storefront",
            },
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "prometheus.io/path": "/metrics",
                "kubectl.kubernetes.io/default-container": "app",
                SEQ: format!("{seq:010}"),
                "bench.keelson.dev/pad": self.pad,
            },
        });
        let env: Vec<Value> = [
            ("LOG_LEVEL", "info"),
            ("LOG_FORMAT", "json"),
            ("HTTP_PORT", "8080"),
            ("METRICS_PORT", "9090"),
            ("CACHE_URL", "redis://cache.shop.svc.cluster.local:6379/0"),
            ("DATABASE_HOST", "postgres.shop.svc.cluster.local"),
            ("DATABASE_NAME", "storefront"),
            ("FEATURE_FLAGS", "checkout-v2,search-suggestions,recommendations"),
        ]
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "containers": [{
                    "name": "app",
                    "image": "registry.example/shop/storefront:1.27.3",
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["--config=/etc/storefront/config.yaml", "--port=8080"],
                    "ports": [
                        { "name": "http", "containerPort": 8080, "protocol": "TCP" },
                        { "name": "metrics", "containerPort": 9090, "protocol": "TCP" },
                    ],
                    "env": env,
                    "resources": {
                        "requests": { "cpu": "250m", "memory": "256Mi" },
                        "limits": { "cpu": "1", "memory": "512Mi" },
                    },
                    "readinessProbe": {
                        "httpGet": { "path": "/ready", "port": "http" },
                        "periodSeconds": 5,
                        "failureThreshold": 3,
                    },
                    "livenessProbe": {
                        "httpGet": { "path": "/healthz", "port": "http" },
                        "initialDelaySeconds": 10,
                        "periodSeconds": 10,
                    },
                    "volumeMounts": [
                        { "name": "config", "mountPath": "/etc/storefront", "readOnly": true },
                        { "name": "cache", "mountPath": "/var/cache/storefront" },
                    ],
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 10001,
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                    },
                }],
                "volumes": [
                    { "name": "config", "configMap": { "name": "storefront-config" } },
                    { "name": "cache", "emptyDir": { "sizeLimit": "1Gi" } },
                ],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst",
                "automountServiceAccountToken": false,
                "nodeSelector": { "kubernetes.io/os": "linux" },
                "tolerations": [{
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }],
            },
        });
        serde_json::to_vec(&pod).expect("a JSON value always serialises")
    }
}

fn pod_name(i: usize) -> String {
    format!("storefront-7d9f8b6c5d-{i:05}")
}

/// Where the sequence number's ten digits start in an event line or a pod's JSON.
fn seq_at(json: &[u8]) -> Option<usize> {
    let key = b"\"bench.keelson.dev/seq\":\"";
    let at = json.windows(key.len()).position(|w| w == key)? + key.len();
    json.get(at..at + 10)?.iter().all(u8::is_ascii_digit).then_some(at)
}

/// The sequence number in an event line or a pod's JSON, if any.
fn seq_of(json: &[u8]) -> Option<u64> {
    let at = seq_at(json)?;
    std::str::from_utf8(&json[at..at + 10]).ok()?.parse().ok()
}

/// A pod's JSON as the server returned it, with sequence number `seq` (everything else,
/// `resourceVersion` included, as it was).
fn with_seq(json: &[u8], seq: u64) -> Result<Vec<u8>> {
    let at = seq_at(json).context("no sequence annotation in the pod")?;
    let mut out = json.to_vec();
    out[at..at + 10].copy_from_slice(format!("{seq:010}").as_bytes());
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Create,
    Get,
    Update,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Get => "get",
            Verb::Update => "update",
        }
    }
}

/// One API server under test.
struct Side {
    name: &'static str,
    child: Child,
    data: PathBuf,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// One connection per client task.
    clients: Vec<Client>,
    /// Every pod as the server last returned it: an update sends it back with another
    /// sequence number, as a controller updates what its informer holds.
    pods: Arc<Mutex<Vec<Bytes>>>,
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Side {
    fn start(name: &'static str, keelson: &Path, data: &Path, extra: &[&str]) -> Result<Side> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(keelson);
        cmd.arg("controlplane")
            .arg("--data-dir")
            .arg(data)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        kill_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("start {}", keelson.display()))?;
        Ok(Side {
            name,
            child,
            data: data.to_owned(),
            addr,
            tls: None,
            clients: Vec::new(),
            pods: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("the {} server exited: {st}", self.name);
        }
        Ok(())
    }

    /// Waits for the kubeconfig and `/readyz`, then keeps the client TLS configuration.
    async fn connect(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let kubeconfig = self.data.join("admin.kubeconfig");
        loop {
            self.check_alive()?;
            if kubeconfig.exists() {
                if let Ok(tls) = tls_config(&kubeconfig) {
                    if let Ok(mut c) = Client::connect(self.addr, tls.clone()).await {
                        if let Ok((StatusCode::OK, _)) =
                            c.call(Method::GET, "/readyz", None, None).await
                        {
                            self.tls = Some(tls);
                            return Ok(());
                        }
                    }
                }
            }
            ensure!(Instant::now() < deadline, "the {} server did not become ready", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn client(&self) -> Result<Client> {
        Client::connect(self.addr, self.tls.clone().context("not connected")?).await
    }

    /// The namespace, and the client connections.
    async fn setup(&mut self, clients: usize) -> Result<()> {
        let mut c = self.client().await?;
        let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } });
        c.expect(Method::POST, "/api/v1/namespaces", Some(serde_json::to_vec(&ns)?), None)
            .await
            .context("create the namespace")?;
        for _ in 0..clients {
            self.clients.push(self.client().await?);
        }
        Ok(())
    }

    /// `verb` once on every pod, by all clients at once.
    async fn crud(&mut self, args: &Args, template: &Arc<PodTemplate>, verb: Verb) -> Result<()> {
        if verb == Verb::Create {
            *self.pods.lock().expect("no panics while held") = vec![Bytes::new(); args.pods];
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (k, mut client) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            let stored = self.pods.clone();
            let template = template.clone();
            let (clients, pods) = (args.clients, args.pods);
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::with_capacity(pods / clients + 1);
                for i in (k..pods).step_by(clients) {
                    let name = pod_name(i);
                    let (method, path, body) = match verb {
                        Verb::Create => (
                            Method::POST,
                            format!("/api/v1/namespaces/{NS}/pods"),
                            Some(template.render(i, 0)),
                        ),
                        Verb::Get => {
                            (Method::GET, format!("/api/v1/namespaces/{NS}/pods/{name}"), None)
                        }
                        Verb::Update => {
                            let pod = stored.lock().expect("no panics while held")[i].clone();
                            let body = with_seq(&pod, 1).with_context(|| format!("pod {name}"))?;
                            (
                                Method::PUT,
                                format!("/api/v1/namespaces/{NS}/pods/{name}"),
                                Some(body),
                            )
                        }
                    };
                    let t = Instant::now();
                    let out = client.expect(method, &path, body, None).await;
                    times.push(t.elapsed());
                    let out = out.with_context(|| format!("{} {name}", verb.name()))?;
                    if verb != Verb::Get {
                        stored.lock().expect("no panics while held")[i] = out;
                    }
                }
                anyhow::Ok((client, times))
            }));
        }
        let mut all = Vec::with_capacity(args.pods);
        for t in tasks {
            let (client, times) = t.await??;
            self.clients.push(client);
            all.extend(times);
        }
        let took = started.elapsed();
        let figure = format!("{}_{}", self.name, verb.name());
        println!("BENCH {figure}_median {:.2} ms", quantile_ms(&all, 0.5));
        println!("BENCH {figure}_p99 {:.2} ms", quantile_ms(&all, 0.99));
        println!("BENCH {figure}_throughput {:.0} per_s", all.len() as f64 / took.as_secs_f64());
        if verb == Verb::Update {
            let bytes = self.pods.lock().expect("no panics while held")[0].len();
            println!("BENCH {}_pod_as_returned_bytes {bytes} bytes", self.name);
        }
        Ok(())
    }

    /// The whole list in one response, then in pages of 500.
    async fn list(&mut self, args: &Args) -> Result<()> {
        let client = self.clients.first_mut().context("no clients")?;
        let path = format!("/api/v1/namespaces/{NS}/pods");
        let (mut whole, mut paged, mut cached) = (Vec::new(), Vec::new(), Vec::new());
        let mut bytes = 0;
        for _ in 0..args.list_runs {
            let t = Instant::now();
            let body = client.expect(Method::GET, &path, None, None).await?;
            whole.push(t.elapsed());
            bytes = body.len();
            let n = items(&body)?;
            ensure!(n == args.pods, "the {} list has {n} pods, not {}", self.name, args.pods);

            let t = Instant::now();
            let mut n = 0;
            let mut token = String::new();
            loop {
                let q = if token.is_empty() {
                    format!("{path}?limit=500")
                } else {
                    format!("{path}?limit=500&continue={token}")
                };
                let body = client.expect(Method::GET, &q, None, None).await?;
                let page = serde_json::from_slice::<Page>(&body)?;
                n += page.items.len();
                match page.metadata.continue_token {
                    Some(c) if !c.is_empty() => token = c,
                    _ => break,
                }
            }
            paged.push(t.elapsed());
            ensure!(n == args.pods, "the {} pages hold {n} pods, not {}", self.name, args.pods);

            // Any resourceVersion will do (upstream serves it from the watch cache).
            let t = Instant::now();
            let body = client
                .expect(Method::GET, &format!("{path}?resourceVersion=0"), None, None)
                .await?;
            cached.push(t.elapsed());
            let n = items(&body)?;
            ensure!(n == args.pods, "the {} rv=0 list has {n} pods, not {}", self.name, args.pods);
        }
        let pods = args.pods;
        println!("BENCH {}_list_{pods}_median {:.1} ms", self.name, quantile_ms(&whole, 0.5));
        println!("BENCH {}_list_{pods}_bytes {:.1} MB", self.name, bytes as f64 / 1e6);
        println!(
            "BENCH {}_list_{pods}_paged500_median {:.1} ms",
            self.name,
            quantile_ms(&paged, 0.5)
        );
        println!("BENCH {}_list_{pods}_rv0_median {:.1} ms", self.name, quantile_ms(&cached, 0.5));
        Ok(())
    }

    /// Watchers watch the pods while writers update them at a fixed rate.
    async fn watch(&mut self, args: &Args) -> Result<()> {
        let writes = (u64::from(args.rate) * args.watch_secs) as usize;
        let client = self.clients.first_mut().context("no clients")?;
        let path = format!("/api/v1/namespaces/{NS}/pods");
        let body = client.expect(Method::GET, &format!("{path}?limit=1"), None, None).await?;
        let v: Value = serde_json::from_slice(&body)?;
        let rv =
            v["metadata"]["resourceVersion"].as_str().context("list without a resourceVersion")?;
        let query = format!("{path}?watch=true&allowWatchBookmarks=true&resourceVersion={rv}");

        let epoch = Instant::now();
        // Nanoseconds since `epoch` at which write `seq`'s response arrived (0: not yet).
        let answered: Arc<Vec<AtomicU64>> =
            Arc::new((0..writes).map(|_| AtomicU64::new(0)).collect());
        let received = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut watchers = Vec::new();
        for _ in 0..args.watchers {
            let mut c = self.client().await?;
            let resp = c.open(Method::GET, &query).await?;
            ensure!(resp.status() == StatusCode::OK, "watch: {}", resp.status());
            let received = received.clone();
            let mut stopped = stopped.clone();
            watchers.push(tokio::spawn(async move {
                let mut body = resp.into_body();
                let mut line = Vec::new();
                let mut arrivals = Vec::with_capacity(writes);
                let mut errors = 0u64;
                loop {
                    let frame = tokio::select! {
                        f = body.frame() => f,
                        _ = stopped.changed() => break,
                    };
                    let Some(frame) = frame else { break };
                    let frame = frame?;
                    let Some(data) = frame.data_ref() else { continue };
                    let now = epoch.elapsed().as_nanos() as u64;
                    for chunk in data.split_inclusive(|b| *b == b'\n') {
                        line.extend_from_slice(chunk);
                        if line.last() != Some(&b'\n') {
                            continue;
                        }
                        match seq_of(&line) {
                            Some(seq) if seq > 0 => {
                                arrivals.push((seq - 1, now));
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                            // The server writes `object` before `type` (sorted keys).
                            _ if line.starts_with(b"{\"type\":\"ERROR\"")
                                || line.ends_with(b"\"type\":\"ERROR\"}\n") =>
                            {
                                errors += 1
                            }
                            _ => {}
                        }
                        line.clear();
                    }
                }
                drop(c);
                anyhow::Ok((arrivals, errors))
            }));
        }
        // Let every watch register before the first write.
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Open loop: one write every 1/rate s whatever the server's speed, spread over the
        // client connections.
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut writers = Vec::with_capacity(writes);
        for seq in 0..writes {
            tick.tick().await;
            let mut client = self.clients[seq % self.clients.len()].clone();
            let (stored, answered) = (self.pods.clone(), answered.clone());
            // Every write updates another pod, so no two race for one resourceVersion.
            let i = seq;
            writers.push(tokio::spawn(async move {
                let pod = stored.lock().expect("no panics while held")[i].clone();
                let body = with_seq(&pod, seq as u64 + 1)?;
                let path = format!("/api/v1/namespaces/{NS}/pods/{}", pod_name(i));
                let t = Instant::now();
                let out = client.expect(Method::PUT, &path, Some(body), None).await;
                answered[seq].store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let took = t.elapsed();
                let out = out.with_context(|| format!("watch-phase write {seq}"))?;
                stored.lock().expect("no panics while held")[i] = out;
                anyhow::Ok(took)
            }));
        }
        let mut write_times = Vec::with_capacity(writes);
        for w in writers {
            write_times.push(w.await??);
        }
        let write_secs = started.elapsed().as_secs_f64();
        // Every watcher should see every write: wait for the stragglers, within reason.
        let expected = (writes * args.watchers) as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop.send(true);
        let mut deliveries = Vec::with_capacity(expected as usize);
        let (mut early, mut errors) = (0u64, 0u64);
        for w in watchers {
            let (arrivals, e) = w.await??;
            errors += e;
            for (seq, at) in arrivals {
                let answered = answered[seq as usize].load(Ordering::Relaxed);
                if at < answered {
                    early += 1;
                }
                deliveries.push(Duration::from_nanos(at.saturating_sub(answered)));
            }
        }
        let n = self.name;
        println!("BENCH {n}_watch_writes_per_s {:.0} per_s", writes as f64 / write_secs);
        println!("BENCH {n}_watch_write_p99 {:.2} ms", quantile_ms(&write_times, 0.99));
        println!("BENCH {n}_watch_delivery_median {:.2} ms", quantile_ms(&deliveries, 0.5));
        println!("BENCH {n}_watch_delivery_p99 {:.2} ms", quantile_ms(&deliveries, 0.99));
        println!("BENCH {n}_watch_deliveries {} count", deliveries.len());
        println!("BENCH {n}_watch_deliveries_missing {} count", expected - deliveries.len() as u64);
        println!("BENCH {n}_watch_deliveries_before_response {early} count");
        ensure!(errors == 0, "the {n} watches got {errors} ERROR events");
        Ok(())
    }
}

/// The number of items of a list's JSON.
/// A page of a list as the client needs it: the items counted (skipped over, not decoded, so
/// the client's own parsing stays out of the figure as far as it can) and the continue token.
#[derive(serde::Deserialize)]
struct Page {
    items: Vec<serde::de::IgnoredAny>,
    metadata: PageMeta,
}

#[derive(serde::Deserialize)]
struct PageMeta {
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

fn items(body: &[u8]) -> Result<usize> {
    #[derive(serde::Deserialize)]
    struct List {
        items: Vec<serde::de::IgnoredAny>,
    }
    Ok(serde_json::from_slice::<List>(body)?.items.len())
}

/// The client side of the admin kubeconfig: the CA to trust, the client certificate and key,
/// HTTP/2 only.
fn tls_config(kubeconfig: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let v: Value = serde_yaml_ng::from_str(&text)?;
    let field = |v: &Value, key: &str| -> Result<Vec<u8>> {
        let b64 = v[key].as_str().with_context(|| format!("no {key} in the kubeconfig"))?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    };
    let ca = field(&v["clusters"][0]["cluster"], "certificate-authority-data")?;
    let crt = field(&v["users"][0]["user"], "client-certificate-data")?;
    let key = field(&v["users"][0]["user"], "client-key-data")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_slice_iter(&crt).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&key)?;
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// One HTTP/2 connection (clones share it as separate streams).
#[derive(Clone)]
struct Client {
    send: SendRequest<Full<Bytes>>,
    base: String,
}

impl Client {
    async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Client> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
        // Go's client windows (kubectl, client-go): 4 MiB per stream, 1 GiB per connection.
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(1 << 30)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { send, base: format!("https://{addr}") })
    }

    /// Sends a request and returns the response with its body unread.
    async fn open(
        &mut self,
        method: Method,
        path: &str,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        self.send_request(method, path, None, None).await
    }

    async fn send_request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        self.send.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, content_type.unwrap_or("application/json"))
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        Ok(self.send.send_request(req).await?)
    }

    /// A request and its whole response.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<(StatusCode, Bytes)> {
        let resp = self.send_request(method, path, body, content_type).await?;
        let status = resp.status();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }

    /// Like [`Client::call`], and an error unless the status is a success.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<Bytes> {
        let (status, body) = self.call(method.clone(), path, body, content_type).await?;
        ensure!(
            status.is_success(),
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(1000)])
        );
        Ok(body)
    }
}
