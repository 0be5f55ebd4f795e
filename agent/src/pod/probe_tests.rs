#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::VecDeque;

use super::*;

fn container(yaml: &str) -> k8s::Container {
    serde_yaml_ng::from_str(yaml).unwrap()
}

const WEB: &str = "
name: web
image: busybox
ports: [{name: http, containerPort: 8080}]
";

#[test]
fn probes_get_the_apis_defaults_and_named_ports() {
    let c = container(&format!(
        "{WEB}
livenessProbe: {{httpGet: {{port: http, path: healthz}}}}
readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 2, successThreshold: 2}}
startupProbe: {{exec: {{command: [cat, /ready]}}, failureThreshold: 30, initialDelaySeconds: 1}}
"
    ));
    let p = Probes::from_container(&c, false).unwrap();
    let l = p.liveness.unwrap();
    assert_eq!(
        l.handler,
        Handler::Http { host: None, port: 8080, path: "/healthz".into(), headers: vec![] }
    );
    assert_eq!(
        (l.initial_delay, l.period, l.timeout, l.success_threshold, l.failure_threshold),
        (Duration::ZERO, Duration::from_secs(10), Duration::from_secs(1), 1, 3)
    );
    let r = p.readiness.unwrap();
    assert_eq!(r.handler, Handler::Tcp { host: None, port: 8080 });
    assert_eq!((r.period, r.success_threshold), (Duration::from_secs(2), 2));
    let s = p.startup.unwrap();
    assert_eq!(s.handler, Handler::Exec(vec!["cat".into(), "/ready".into()]));
    assert_eq!((s.failure_threshold, s.initial_delay), (30, Duration::from_secs(1)));
}

#[test]
fn bad_probes_are_refused_with_their_field_path() {
    let refused = |probe: &str| {
        let c = container(&format!("{WEB}\n{probe}"));
        Probes::from_container(&c, false).unwrap_err()
    };
    assert_eq!(refused("livenessProbe: {httpGet: {port: nope}}").0, "livenessProbe.httpGet.port");
    assert_eq!(refused("livenessProbe: {tcpSocket: {port: 0}}").0, "livenessProbe.tcpSocket.port");
    assert_eq!(
        refused("livenessProbe: {exec: {command: [x]}, successThreshold: 2}").0,
        "livenessProbe.successThreshold"
    );
    assert_eq!(refused("readinessProbe: {exec: {command: []}}").0, "readinessProbe.exec.command");
    assert_eq!(refused("readinessProbe: {}").0, "readinessProbe");
    assert_eq!(
        refused("readinessProbe: {exec: {command: [x]}, tcpSocket: {port: 1}}").0,
        "readinessProbe"
    );
    assert_eq!(refused("startupProbe: {grpc: {port: 9000}}").0, "startupProbe.grpc");
    assert_eq!(
        refused("startupProbe: {httpGet: {port: 80, scheme: HTTPS}}").0,
        "startupProbe.httpGet.scheme"
    );
    assert_eq!(
        refused("startupProbe: {tcpSocket: {port: 80, host: db.local}}").0,
        "startupProbe.tcpSocket.host"
    );
    assert_eq!(
        refused("readinessProbe: {exec: {command: [x]}, periodSeconds: 0}").0,
        "readinessProbe.periodSeconds"
    );
    assert_eq!(
        refused("readinessProbe: {exec: {command: [x]}, terminationGracePeriodSeconds: 5}").0,
        "readinessProbe.terminationGracePeriodSeconds"
    );
    let init = container(&format!("{WEB}\nreadinessProbe: {{exec: {{command: [x]}}}}"));
    assert_eq!(Probes::from_container(&init, true).unwrap_err().0, "readinessProbe");
}

fn probe(handler: Handler, success: u32, failure: u32) -> Probe {
    Probe {
        handler,
        initial_delay: Duration::ZERO,
        period: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        success_threshold: success,
        failure_threshold: failure,
        termination_grace: None,
    }
}

#[test]
fn a_result_flips_only_after_its_threshold_in_a_row() {
    let mut c = Counter::new(&probe(Handler::Tcp { host: None, port: 1 }, 2, 3));
    assert_eq!(c.result(), None);
    assert_eq!(c.record(true), None);
    assert_eq!(c.record(false), None, "the streak of successes was broken");
    assert_eq!(c.record(true), None);
    assert_eq!(c.record(true), Some(true));
    assert_eq!(c.record(true), None, "no change, no news");
    assert_eq!(c.record(false), None);
    assert_eq!(c.record(false), None);
    assert_eq!(c.record(false), Some(false));
    assert_eq!(c.result(), Some(false));
}

/// Answers network probes from a script, then with the last answer forever.
#[derive(Debug, Default)]
struct Script(Mutex<VecDeque<bool>>, Mutex<Vec<(SocketAddr, Instant)>>);

impl Script {
    fn new(answers: &[bool]) -> Arc<Script> {
        Arc::new(Script(Mutex::new(answers.iter().copied().collect()), Mutex::default()))
    }

    fn next(&self, addr: SocketAddr) -> bool {
        lock(&self.1).push((addr, Instant::now()));
        let mut q = lock(&self.0);
        if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            q.front().copied().unwrap_or(false)
        }
    }

    fn calls(&self) -> Vec<(SocketAddr, Instant)> {
        lock(&self.1).clone()
    }
}

#[async_trait::async_trait]
impl ProbeNet for Script {
    async fn tcp(&self, addr: SocketAddr, _: Duration) -> Result<(), String> {
        if self.next(addr) {
            Ok(())
        } else {
            Err("connection refused".into())
        }
    }

    async fn http_get(
        &self,
        addr: SocketAddr,
        _: &str,
        _: &[(String, String)],
        _: Duration,
    ) -> Result<u16, String> {
        Ok(if self.next(addr) { 200 } else { 503 })
    }
}

fn env(net: Arc<Script>) -> ProberEnv {
    let rt = crate::testing::FakeRuntime::default();
    ProberEnv { rt: Arc::new(rt), net, wake: Arc::new(Notify::new()) }
}

fn target() -> Target {
    Target { container: "c1".parse().unwrap(), pod_ip: Some("10.42.0.7".parse().unwrap()) }
}

/// Lets the prober's task run until it waits on the (paused) clock again.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_its_probe_and_never_kills() {
    let net = Script::new(&[false, true, true, false, false, false]);
    let probes = Probes {
        readiness: Some(probe(
            Handler::Http { host: None, port: 80, path: "/".into(), headers: vec![] },
            2,
            3,
        )),
        ..Probes::default()
    };
    let p = Prober::start(probes, target(), Instant::now(), env(net.clone()));
    let ready_at = |secs| async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        settle().await;
    };
    settle().await;
    assert!(!p.findings().ready, "not ready before the first success");
    assert!(p.findings().started);
    ready_at(2).await; // probes at 0 (fail), 1 (ok), 2 (ok)
    assert!(p.findings().ready, "{:?}", net.calls());
    ready_at(3).await; // 3, 4, 5: three failures
    let probed = p.findings();
    assert!(!probed.ready);
    assert_eq!(probed.kill, None);
    assert_eq!(net.calls()[0].0, "10.42.0.7:80".parse().unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_asks_for_a_kill_after_its_threshold() {
    let net = Script::new(&[true, false, false, false]);
    let mut live = probe(Handler::Tcp { host: None, port: 80 }, 1, 3);
    live.initial_delay = Duration::from_secs(5);
    live.termination_grace = Some(Duration::from_secs(3));
    let start = Instant::now();
    let p = Prober::start(
        Probes { liveness: Some(live), ..Probes::default() },
        target(),
        start,
        env(net.clone()),
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    settle().await;
    assert_eq!(p.findings().kill, None, "two failures of three");
    assert!(p.findings().ready, "no readiness probe: ready while alive");
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    let (why, grace) = p.findings().kill.unwrap();
    assert!(why.starts_with("Liveness probe failed"), "{why}");
    assert_eq!(grace, Some(Duration::from_secs(3)));
    let first = net.calls()[0].1;
    assert_eq!(first - start, Duration::from_secs(5), "initialDelaySeconds from the start");
}

#[tokio::test(start_paused = true)]
async fn nothing_else_runs_until_the_startup_probe_succeeds() {
    let net = Script::new(&[false, false, true, true]);
    let probes = Probes {
        startup: Some(probe(Handler::Tcp { host: None, port: 1 }, 1, 10)),
        liveness: Some(probe(Handler::Tcp { host: None, port: 2 }, 1, 1)),
        ..Probes::default()
    };
    let p = Prober::start(probes, target(), Instant::now(), env(net.clone()));
    settle().await;
    assert!(!p.findings().started);
    assert!(!p.findings().ready);
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    let probed = p.findings();
    assert!(probed.started && probed.ready, "{probed:?}");
    let ports: Vec<u16> = net.calls().iter().map(|(a, _)| a.port()).collect();
    assert_eq!(&ports[..3], [1, 1, 1], "liveness waited for startup");
    assert!(ports[3..].iter().all(|&p| p == 2));
    assert_eq!(probed.kill, None);
}

#[tokio::test(start_paused = true)]
async fn a_startup_probe_out_of_attempts_asks_for_a_kill() {
    let net = Script::new(&[false]);
    let probes = Probes {
        startup: Some(probe(Handler::Tcp { host: None, port: 1 }, 1, 2)),
        ..Probes::default()
    };
    let p = Prober::start(probes, target(), Instant::now(), env(net));
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    let probed = p.findings();
    assert!(!probed.started);
    assert!(probed.kill.unwrap().0.starts_with("Startup probe failed"));
}

#[tokio::test]
async fn http_probes_send_a_get_with_the_kubelets_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 4096];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let headers = vec![("X-Check".to_string(), "deep".to_string())];
    let status = HostNet::default()
        .http_get(addr, "/healthz?full=1", &headers, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 204);
    let req = server.await.unwrap().to_ascii_lowercase();
    assert!(req.starts_with("get /healthz?full=1 http/1.1\r\n"), "{req}");
    assert!(req.contains("user-agent: kube-probe/1.33\r\n"), "{req}");
    assert!(req.contains(&format!("host: {addr}\r\n")), "{req}");
    assert!(req.contains("x-check: deep\r\n"), "{req}");
}

#[tokio::test]
async fn tcp_probes_fail_on_a_closed_port() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let net = HostNet::default();
    assert!(net.tcp(addr, Duration::from_secs(5)).await.is_ok());
    drop(listener);
    let e = net.tcp(addr, Duration::from_secs(5)).await.unwrap_err();
    assert!(e.contains("dial tcp"), "{e}");
}
