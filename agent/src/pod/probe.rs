//! Container probes as the kubelet runs them: startup, liveness and readiness, each an exec,
//! an HTTP GET or a TCP connect, with `initialDelaySeconds`, `periodSeconds`,
//! `timeoutSeconds`, `successThreshold` and `failureThreshold`.
//!
//! - [`Probes::from_container`] turns a container's probes into plans, with the API's
//!   defaults and validation (named ports resolved against the container's ports; gRPC probes
//!   and HTTPS are refused, never ignored).
//! - [`Counter`] is the pure threshold logic: a probe's result flips only after
//!   `successThreshold` successes or `failureThreshold` failures in a row.
//! - [`Prober`] runs one container instance's probes on a task of its own and publishes what
//!   they found ([`Findings`]): until the startup probe succeeds nothing else runs and the
//!   container is not started; then liveness and readiness run side by side. A failed startup
//!   or liveness probe asks the pod worker to kill the container (it is then restarted under
//!   the pod's `restartPolicy`); readiness only moves the container's `ready`.
//!
//! Network probes connect from the node's network namespace (the pod network's host
//! namespace) through [`ProbeNet`]; exec probes run through the runtime like `agentctl exec`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_runtime::api::{ExecConfig, Runtime};
use keelson_runtime::config::ContainerId;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The `User-Agent` of HTTP probes (the kubelet sends `kube-probe/<major>.<minor>`).
pub const USER_AGENT: &str = "kube-probe/1.33";

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Runs a command in the container; exit code 0 is success.
    Exec(Vec<String>),
    /// An HTTP GET; a status from 200 to 399 is success.
    Http {
        /// The host to connect to; the pod's IP when unset.
        host: Option<IpAddr>,
        /// The port.
        port: u16,
        /// The path (with its query).
        path: String,
        /// Extra request headers (a `Host` among them replaces the default).
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens is success.
    Tcp {
        /// The host; the pod's IP when unset.
        host: Option<IpAddr>,
        /// The port.
        port: u16,
    },
}

/// One probe, with its timing and thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What it does.
    pub handler: Handler,
    /// From the container's start to the first probe.
    pub initial_delay: Duration,
    /// Between probes.
    pub period: Duration,
    /// A probe taking longer fails.
    pub timeout: Duration,
    /// Successes in a row that make the result a success.
    pub success_threshold: u32,
    /// Failures in a row that make the result a failure.
    pub failure_threshold: u32,
    /// `terminationGracePeriodSeconds` of the probe: the grace a kill it causes gets, instead
    /// of the pod's.
    pub termination_grace: Option<Duration>,
}

/// A container's probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    /// `startupProbe`.
    pub startup: Option<Probe>,
    /// `livenessProbe`.
    pub liveness: Option<Probe>,
    /// `readinessProbe`.
    pub readiness: Option<Probe>,
}

/// A refused probe: the field path (under the container's) and why.
pub type Refusal = (String, String);

impl Probes {
    /// `c`'s probes; `init` containers may have none (as the API validates).
    pub fn from_container(c: &k8s::Container, init: bool) -> Result<Probes, Refusal> {
        let probes = [
            ("startupProbe", c.startup_probe.as_ref()),
            ("livenessProbe", c.liveness_probe.as_ref()),
            ("readinessProbe", c.readiness_probe.as_ref()),
        ];
        if init {
            if let Some((f, _)) = probes.iter().find(|(_, p)| p.is_some()) {
                return Err((f.to_string(), "may not be set for init containers".into()));
            }
            return Ok(Probes::default());
        }
        let ports = c.ports.as_deref().unwrap_or_default();
        let [startup, liveness, readiness] = probes.map(|(f, p)| {
            p.map(|p| {
                probe(p, ports, f == "readinessProbe")
                    .map_err(|(sub, why)| (format!("{f}{sub}"), why))
            })
            .transpose()
        });
        Ok(Probes { startup: startup?, liveness: liveness?, readiness: readiness? })
    }

    /// Whether the container has any probe.
    pub fn any(&self) -> bool {
        self.startup.is_some() || self.liveness.is_some() || self.readiness.is_some()
    }
}

fn seconds(v: Option<i32>, default: i32, min: i32, sub: &str) -> Result<Duration, Refusal> {
    let v = v.unwrap_or(default);
    if v < min {
        return Err((sub.to_owned(), format!("{v} must be at least {min}")));
    }
    Ok(Duration::from_secs(u64::try_from(v).unwrap_or(0)))
}

fn count(v: Option<i32>, default: i32, sub: &str) -> Result<u32, Refusal> {
    let v = v.unwrap_or(default);
    u32::try_from(v)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| (sub.to_owned(), format!("{v} must be at least 1")))
}

fn probe(p: &k8s::Probe, ports: &[k8s::ContainerPort], readiness: bool) -> Result<Probe, Refusal> {
    let handler = match (&p.exec, &p.http_get, &p.tcp_socket, &p.grpc) {
        (Some(e), None, None, None) => {
            let cmd = e.command.clone().unwrap_or_default();
            if cmd.is_empty() {
                return Err((".exec.command".into(), "required".into()));
            }
            Handler::Exec(cmd)
        }
        (None, Some(h), None, None) => {
            if let Some(s) = h.scheme.as_deref().filter(|s| *s != "HTTP") {
                return Err((
                    ".httpGet.scheme".into(),
                    format!("{s:?} is not supported (HTTP is)"),
                ));
            }
            let mut headers = Vec::new();
            for (i, hd) in h.http_headers.iter().flatten().enumerate() {
                if hd.name.is_empty() || !hd.name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                {
                    return Err((
                        format!(".httpGet.httpHeaders[{i}].name"),
                        format!("{:?} is not a header name", hd.name),
                    ));
                }
                headers.push((hd.name.clone(), hd.value.clone()));
            }
            let path = match h.path.as_deref() {
                None | Some("") => "/".to_owned(),
                Some(p) if p.starts_with('/') => p.to_owned(),
                Some(p) => format!("/{p}"),
            };
            Handler::Http {
                host: host(h.host.as_deref(), ".httpGet.host")?,
                port: port(&h.port, ports, ".httpGet.port")?,
                path,
                headers,
            }
        }
        (None, None, Some(t), None) => Handler::Tcp {
            host: host(t.host.as_deref(), ".tcpSocket.host")?,
            port: port(&t.port, ports, ".tcpSocket.port")?,
        },
        (None, None, None, Some(_)) => {
            return Err((
                ".grpc".into(),
                "gRPC probes are not supported (exec, httpGet and tcpSocket are)".into(),
            ))
        }
        (None, None, None, None) => {
            return Err(("".into(), "must have one handler (exec, httpGet or tcpSocket)".into()))
        }
        _ => return Err(("".into(), "may have only one handler".into())),
    };
    let success_threshold = count(p.success_threshold, 1, ".successThreshold")?;
    if !readiness && success_threshold != 1 {
        return Err((
            ".successThreshold".into(),
            "must be 1 for liveness and startup probes".into(),
        ));
    }
    let termination_grace = match p.termination_grace_period_seconds {
        None => None,
        Some(_) if readiness => {
            return Err((
                ".terminationGracePeriodSeconds".into(),
                "may not be set for readiness probes".into(),
            ))
        }
        Some(s) if s < 1 => {
            return Err((
                ".terminationGracePeriodSeconds".into(),
                format!("{s} must be at least 1"),
            ))
        }
        Some(s) => Some(Duration::from_secs(s.unsigned_abs())),
    };
    Ok(Probe {
        handler,
        initial_delay: seconds(p.initial_delay_seconds, 0, 0, ".initialDelaySeconds")?,
        period: seconds(p.period_seconds, 10, 1, ".periodSeconds")?,
        timeout: seconds(p.timeout_seconds, 1, 1, ".timeoutSeconds")?,
        success_threshold,
        failure_threshold: count(p.failure_threshold, 3, ".failureThreshold")?,
        termination_grace,
    })
}

fn host(h: Option<&str>, sub: &str) -> Result<Option<IpAddr>, Refusal> {
    match h.filter(|h| !h.is_empty()) {
        None => Ok(None),
        Some(h) => h.parse().map(Some).map_err(|_| {
            (sub.to_owned(), format!("{h:?} is not an IP address (names are not resolved)"))
        }),
    }
}

fn port(p: &IntOrString, ports: &[k8s::ContainerPort], sub: &str) -> Result<u16, Refusal> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| (sub.to_owned(), format!("{n} is not a port number"))),
        IntOrString::String(s) => match s.parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => ports
                .iter()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| (sub.to_owned(), format!("no container port is named {s:?}"))),
        },
    }
}

/// A probe's result over time: it flips after enough results in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    success_threshold: u32,
    failure_threshold: u32,
    /// The current result; `None` before it was ever decided.
    result: Option<bool>,
    streak: u32,
    streak_ok: bool,
}

impl Counter {
    /// A counter for `probe`'s thresholds.
    pub fn new(probe: &Probe) -> Self {
        Counter {
            success_threshold: probe.success_threshold,
            failure_threshold: probe.failure_threshold,
            result: None,
            streak: 0,
            streak_ok: false,
        }
    }

    /// Records one probe's outcome; returns the result when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.streak_ok {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak_ok = ok;
            self.streak = 1;
        }
        let threshold = if ok { self.success_threshold } else { self.failure_threshold };
        if self.streak >= threshold && self.result != Some(ok) {
            self.result = Some(ok);
            return Some(ok);
        }
        None
    }

    /// The current result.
    pub fn result(&self) -> Option<bool> {
        self.result
    }
}

/// What a container's probes found so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings {
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// Ready: started, and the readiness probe's result is success (or there is none).
    pub ready: bool,
    /// A startup or liveness probe failed: the container must be killed (with this message
    /// and, when the probe says so, this grace period).
    pub kill: Option<(String, Option<Duration>)>,
}

/// Network probes, from the node's network namespace.
#[async_trait::async_trait]
pub trait ProbeNet: Send + Sync + std::fmt::Debug {
    /// Opens (then closes) a TCP connection to `addr` within `timeout`.
    async fn tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String>;
    /// Sends a GET for `path` with `headers` to `addr`; returns the response status.
    async fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<u16, String>;
}

/// The real [`ProbeNet`]: connects from the calling task, or, when the pod network's host
/// side is another namespace (`host_netns`), from a thread inside it.
#[derive(Debug, Clone, Default)]
pub struct HostNet {
    /// The pod network's host namespace, when it is not the agent's own.
    pub host_netns: Option<std::path::PathBuf>,
}

#[async_trait::async_trait]
impl ProbeNet for HostNet {
    async fn tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        self.in_host(move || async move {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: timed out after {timeout:?}")),
            }
        })
        .await
    }

    async fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<u16, String> {
        let (path, headers) = (path.to_owned(), headers.to_vec());
        self.in_host(move || async move {
            match tokio::time::timeout(timeout, http_get(addr, &path, &headers)).await {
                Ok(r) => r,
                Err(_) => Err(format!("GET http://{addr}{path}: timed out after {timeout:?}")),
            }
        })
        .await
    }
}

impl HostNet {
    async fn in_host<T, F, Fut>(&self, work: F) -> Result<T, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, String>>,
        T: Send + 'static,
    {
        let Some(path) = &self.host_netns else { return work().await };
        let ns = keelson_cni::netns::Netns::open(path).map_err(|e| e.to_string())?;
        keelson_cni::netns::run(Some(&ns), move |_t| work()).await.map_err(|e| e.to_string())?
    }
}

/// One HTTP/1.1 GET over a fresh connection (hyper's client connection): the status code.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let url = format!("http://{addr}{path}");
    let stream =
        tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("GET {url}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::get(path)
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .header(hyper::header::ACCEPT, "*/*");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req = req.header(hyper::header::HOST, addr.to_string());
    }
    for (n, v) in headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let res = sender.send_request(req).await.map_err(|e| format!("GET {url}: {e}"));
    conn.abort();
    Ok(res?.status().as_u16())
}

/// Where a container's probes go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The container instance.
    pub container: ContainerId,
    /// The pod's first IP (the default host of network probes).
    pub pod_ip: Option<IpAddr>,
}

/// What a prober needs from the node.
#[derive(Clone)]
pub struct ProberEnv {
    /// Exec probes run through it.
    pub rt: Arc<dyn Runtime>,
    /// Network probes go through it.
    pub net: Arc<dyn ProbeNet>,
    /// Notified whenever [`Findings`] changes.
    pub wake: Arc<Notify>,
}

impl std::fmt::Debug for ProberEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProberEnv").field("net", &self.net).finish_non_exhaustive()
    }
}

/// One container instance's probes, running on a task of their own (aborted on drop).
#[derive(Debug)]
pub struct Prober {
    container: ContainerId,
    findings: Arc<Mutex<Findings>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Prober {
    /// Starts probing `target`, which started at `started` (initial delays count from there).
    pub fn start(probes: Probes, target: Target, started: Instant, env: ProberEnv) -> Prober {
        let findings = Arc::new(Mutex::new(Findings {
            started: probes.startup.is_none(),
            ready: probes.startup.is_none() && probes.readiness.is_none(),
            kill: None,
        }));
        let container = target.container.clone();
        let task = tokio::spawn(run(probes, target, started, env, findings.clone()));
        Prober { container, findings, task }
    }

    /// The container instance probed.
    pub fn container(&self) -> &ContainerId {
        &self.container
    }

    /// What the probes found so far.
    pub fn findings(&self) -> Findings {
        lock(&self.findings).clone()
    }
}

/// Which probe, for messages.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        })
    }
}

async fn run(
    probes: Probes,
    target: Target,
    started: Instant,
    env: ProberEnv,
    findings: Arc<Mutex<Findings>>,
) {
    let set = |f: &dyn Fn(&mut Findings)| {
        let changed = {
            let mut p = lock(&findings);
            let before = p.clone();
            f(&mut p);
            *p != before
        };
        if changed {
            env.wake.notify_one();
        }
    };
    if let Some(p) = &probes.startup {
        if let Err(why) = until_decided(Kind::Startup, p, &target, started, &env, true).await {
            set(&|s| s.kill = Some((why.clone(), p.termination_grace)));
            return;
        }
        let no_readiness = probes.readiness.is_none();
        set(&|s| {
            s.started = true;
            s.ready = no_readiness;
        });
    }
    if probes.liveness.is_none() && probes.readiness.is_none() {
        return;
    }
    let liveness = async {
        let Some(p) = &probes.liveness else { return std::future::pending().await };
        // Liveness runs until it fails: success never ends it.
        if let Err(why) = until_decided(Kind::Liveness, p, &target, started, &env, false).await {
            set(&|s| s.kill = Some((why.clone(), p.termination_grace)));
        }
    };
    let readiness = async {
        let Some(p) = &probes.readiness else { return std::future::pending().await };
        let mut counter = Counter::new(p);
        let mut next = started + p.initial_delay;
        loop {
            tokio::time::sleep_until(next.max(Instant::now())).await;
            next = Instant::now() + p.period;
            let outcome = once(Kind::Readiness, p, &target, &env).await;
            if let Err(why) = &outcome {
                tracing::debug!(container = %target.container, %why, "readiness probe failed");
            }
            if let Some(ready) = counter.record(outcome.is_ok()) {
                set(&|s| s.ready = ready);
            }
        }
    };
    // Liveness ending (a failure) ends readiness too: the container is being killed.
    // Readiness never ends by itself.
    tokio::select! {
        () = liveness => {}
        () = readiness => {}
    }
}

/// Probes every period from `started + initial_delay` until the result is decided: with
/// `stop_on_success`, `Ok` once it is a success; a failure is `Err(message)`.
async fn until_decided(
    kind: Kind,
    p: &Probe,
    target: &Target,
    started: Instant,
    env: &ProberEnv,
    stop_on_success: bool,
) -> Result<(), String> {
    let mut counter = Counter::new(p);
    let mut next = started + p.initial_delay;
    loop {
        tokio::time::sleep_until(next.max(Instant::now())).await;
        next = Instant::now() + p.period;
        let outcome = once(kind, p, target, env).await;
        match counter.record(outcome.is_ok()) {
            Some(true) if stop_on_success => return Ok(()),
            Some(false) => {
                let why = outcome.err().unwrap_or_default();
                tracing::warn!(container = %target.container, probe = %kind, %why, "probe failed");
                return Err(format!("{kind} probe failed: {why}"));
            }
            _ => {}
        }
    }
}

/// Runs the probe once; `Err` says why it failed.
async fn once(kind: Kind, p: &Probe, target: &Target, env: &ProberEnv) -> Result<(), String> {
    let addr = |host: &Option<IpAddr>, port: u16| {
        host.or(target.pod_ip)
            .map(|ip| SocketAddr::new(ip, port))
            .ok_or_else(|| format!("{kind} probe: the pod has no IP and the probe names no host"))
    };
    match &p.handler {
        Handler::Exec(cmd) => {
            let run = async {
                let cfg = ExecConfig { command: cmd.clone(), ..Default::default() };
                let mut s = env.rt.exec(&target.container, cfg).await.map_err(|e| e.to_string())?;
                s.wait().await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(p.timeout, run).await {
                Ok(Ok(exit)) if exit.code == 0 => Ok(()),
                Ok(Ok(exit)) => Err(format!("command {cmd:?} exited with {}", exit.code)),
                Ok(Err(e)) => Err(format!("command {cmd:?}: {e}")),
                Err(_) => Err(format!("command {cmd:?} timed out after {:?}", p.timeout)),
            }
        }
        Handler::Tcp { host, port } => env.net.tcp(addr(host, *port)?, p.timeout).await,
        Handler::Http { host, port, path, headers } => {
            let status = env.net.http_get(addr(host, *port)?, path, headers, p.timeout).await?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            }
        }
    }
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
