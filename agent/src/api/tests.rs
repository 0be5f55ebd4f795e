//! The node API against a fake pod registry and a fake runtime, over a real unix socket in a
//! tempdir and over TCP with mutual TLS on 127.0.0.1.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use keelson_agentctl::config::Context;
use keelson_agentctl::proto::{self, ExecStart, LogsRequest};
use keelson_agentctl::Client;
use keelson_runtime::api::{self as rt, ExecControl, ExecResizer, ExitInfo, LogEntry, Runtime};
use keelson_runtime::config::{
    ContainerConfig, ContainerId, PodMeta, SandboxConfig, SandboxId, StopOptions,
};
use keelson_runtime::image::ImageStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use super::pki::{server_names, Pki};
use super::*;

struct FakeRegistry {
    pods: Vec<Pod>,
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "annotations": {"keelson.dev/manifest": format!("/m/{name}.yaml")}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.42.0.5"}],
                   "containerStatuses": [{"name": "app", "image": "busybox", "imageID": "",
                                          "ready": true, "restartCount": 2}]}
    }))
    .unwrap()
}

impl PodRegistry for FakeRegistry {
    fn pods(&self) -> Vec<Pod> {
        self.pods.clone()
    }
    fn manifest_errors(&self) -> Vec<ManifestError> {
        vec![
            ManifestError {
                path: "/m/web.yaml".into(),
                message: "spec.containers: missing".into(),
            },
            ManifestError { path: "/m/broken.yaml".into(), message: "not YAML".into() },
        ]
    }
    fn container_id(&self, pod: &str, container: Option<&str>) -> Option<ContainerRef> {
        (pod == "default/web" && container.is_none_or(|c| c == "app")).then(|| ContainerRef {
            id: ContainerId::new("c1").unwrap(),
            name: "app".into(),
            restart_count: 2,
            previous: Some(ContainerId::new("c0").unwrap()),
        })
    }
}

/// A runtime with one sandbox and one container `c1` (previous instance `c0`). Exec runs a
/// tiny command language: `echo ARGS…`, `exit N`, `cat` (stdin to stdout), `err TEXT`.
struct FakeRuntime {
    follow: broadcast::Sender<LogEntry>,
}

fn entry(text: &str) -> LogEntry {
    LogEntry {
        timestamp: chrono::Utc::now(),
        stream: rt::LogStreamKind::Stdout,
        partial: false,
        content: text.as_bytes().to_vec(),
    }
}

fn fake_err() -> rt::Error {
    rt::Error::InvalidState { what: "fake", id: "-".into(), reason: "not implemented".into() }
}

struct FakeExec {
    code: i32,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

#[async_trait::async_trait]
impl ExecControl for FakeExec {
    fn resize(&self, _: u16, _: u16) -> rt::Result<()> {
        Ok(())
    }
    fn resizer(&self) -> ExecResizer {
        Arc::new(|_, _| Ok(()))
    }
    async fn wait(&mut self) -> rt::Result<ExitInfo> {
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        Ok(ExitInfo { code: self.code, signal: None, oom_killed: false })
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn create_sandbox(&self, _: SandboxConfig) -> rt::Result<rt::SandboxInfo> {
        Err(fake_err())
    }
    async fn stop_sandbox(&self, _: &SandboxId) -> rt::Result<()> {
        Err(fake_err())
    }
    async fn remove_sandbox(&self, _: &SandboxId) -> rt::Result<()> {
        Err(fake_err())
    }
    async fn list_sandboxes(&self) -> rt::Result<Vec<rt::SandboxStatus>> {
        Ok(vec![rt::SandboxStatus {
            id: SandboxId::new("s1").unwrap(),
            pod: PodMeta::new("web", "default", "uid-web"),
            state: rt::SandboxState::Ready,
            ips: vec![],
            netns_path: None,
            shim_pid: None,
            created_at: SystemTime::now(),
        }])
    }
    async fn sandbox_status(&self, _: &SandboxId) -> rt::Result<rt::SandboxStatus> {
        Err(fake_err())
    }
    async fn create_container(
        &self,
        _: &SandboxId,
        _: ContainerConfig,
        _: rt::ContainerImage,
    ) -> rt::Result<ContainerId> {
        Err(fake_err())
    }
    async fn start_container(&self, _: &ContainerId) -> rt::Result<()> {
        Err(fake_err())
    }
    async fn stop_container(&self, _: &ContainerId, _: StopOptions) -> rt::Result<()> {
        Err(fake_err())
    }
    async fn kill_container(&self, _: &ContainerId, _: i32) -> rt::Result<()> {
        Err(fake_err())
    }
    async fn remove_container(&self, _: &ContainerId) -> rt::Result<()> {
        Err(fake_err())
    }
    async fn container_status(&self, _: &ContainerId) -> rt::Result<rt::ContainerStatus> {
        Err(fake_err())
    }
    async fn list_containers(&self, _: Option<&SandboxId>) -> rt::Result<Vec<rt::ContainerStatus>> {
        Ok(vec![rt::ContainerStatus {
            id: ContainerId::new("c1").unwrap(),
            sandbox_id: SandboxId::new("s1").unwrap(),
            name: "app".into(),
            image: "docker.io/library/busybox:latest".into(),
            state: rt::ContainerState::Running,
            pid: Some(42),
            created_at: SystemTime::now(),
            started_at: Some(SystemTime::now()),
            finished_at: None,
            exit_code: None,
            signal: None,
            oom_killed: false,
            log_path: "/dev/null".into(),
            restart_count: 2,
            labels: BTreeMap::new(),
        }])
    }
    async fn container_stats(&self, _: &ContainerId) -> rt::Result<rt::ContainerStats> {
        Err(fake_err())
    }
    async fn exec(&self, id: &ContainerId, config: rt::ExecConfig) -> rt::Result<rt::ExecSession> {
        if id.as_str() != "c1" {
            return Err(rt::Error::ContainerNotFound(id.clone()));
        }
        let (mut out_w, out_r) = tokio::io::duplex(1 << 16);
        let (mut err_w, err_r) = tokio::io::duplex(1 << 16);
        let (in_w, mut in_r) = tokio::io::duplex(1 << 16);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let args = config.command.clone();
        let code = match args.first().map(String::as_str) {
            Some("exit") => args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1),
            _ => 0,
        };
        tokio::spawn(async move {
            match args.first().map(String::as_str) {
                Some("echo") => {
                    let _ = out_w.write_all(format!("{}\n", args[1..].join(" ")).as_bytes()).await;
                }
                Some("err") => {
                    let _ = err_w.write_all(args[1..].join(" ").as_bytes()).await;
                }
                Some("cat") => {
                    let mut buf = Vec::new();
                    let _ = in_r.read_to_end(&mut buf).await;
                    let _ = out_w.write_all(&buf).await;
                }
                _ => {}
            }
            drop((out_w, err_w));
            let _ = done_tx.send(());
        });
        Ok(rt::ExecSession::new(
            Some(Box::pin(in_w)),
            Some(Box::pin(out_r)),
            Some(Box::pin(err_r)),
            7,
            Box::new(FakeExec { code, done: Some(done_rx) }),
        ))
    }
    async fn attach(&self, _: &ContainerId) -> rt::Result<rt::AttachSession> {
        Err(fake_err())
    }
    async fn logs(&self, id: &ContainerId, options: rt::LogOptions) -> rt::Result<rt::LogStream> {
        let lines: Vec<String> = match id.as_str() {
            "c1" => (1..=5).map(|i| format!("line {i}")).collect(),
            "c0" => vec!["previous".into()],
            _ => return Err(rt::Error::ContainerNotFound(id.clone())),
        };
        let skip = options.tail.map(|t| lines.len().saturating_sub(t)).unwrap_or(0);
        let past = futures::stream::iter(lines.into_iter().skip(skip).map(|l| Ok(entry(&l))));
        if !options.follow {
            return Ok(Box::pin(past));
        }
        let live = tokio_stream::wrappers::BroadcastStream::new(self.follow.subscribe())
            .filter_map(|r| async move { r.ok().map(Ok) });
        Ok(Box::pin(past.chain(live)))
    }
    fn events(&self) -> broadcast::Receiver<rt::RuntimeEvent> {
        broadcast::channel(1).1
    }
}

struct Node {
    _dir: tempfile::TempDir,
    server: ApiServer,
    pki: Pki,
    follow: broadcast::Sender<LogEntry>,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (follow, _) = broadcast::channel(16);
        let runtime = Arc::new(FakeRuntime { follow: follow.clone() });
        let images = ImageStore::open(dir.path().join("images")).unwrap();
        let api = NodeApi::new(
            Arc::new(FakeRegistry { pods: vec![pod("web"), pod("db")] }),
            runtime,
            Some(images),
            None,
            dir.path().join("uploads"),
        );
        let pki = Pki::load_or_create(&dir.path().join("pki"), &server_names("node", &[])).unwrap();
        let listen = Listen {
            socket: Some(dir.path().join("run/agent.sock")),
            tcp: Some("127.0.0.1:0".parse().unwrap()),
        };
        let server = serve(api, &listen, Some(pki.server_config().unwrap())).await.unwrap();
        Node { _dir: dir, server, pki, follow }
    }

    async fn unix(&self) -> Client {
        Client::connect_unix(self.server.socket().unwrap()).await.unwrap()
    }

    fn tcp_context(&self, role: Role) -> Context {
        let endpoint = self.server.tcp_addr().unwrap().to_string();
        let cfg = self.pki.agentctl_config("node", vec![endpoint], role);
        cfg.context(None).unwrap().clone()
    }

    async fn tcp(&self, role: Role) -> Client {
        Client::connect(&self.tcp_context(role)).await.unwrap()
    }
}

fn start(pod: &str, command: &[&str]) -> ExecStart {
    ExecStart {
        pod: pod.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn code(e: keelson_agentctl::Error) -> tonic::Code {
    match e {
        keelson_agentctl::Error::Rpc(s) => s.code(),
        other => panic!("not a refusal: {other}"),
    }
}

#[tokio::test]
async fn unix_socket_clients_list_pods_containers_and_manifest_errors() {
    let node = Node::start().await;
    let mode = std::fs::metadata(node.server.socket().unwrap()).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    let c = node.unix().await;
    let pods = c.list_pods().await.unwrap();
    let names: Vec<_> = pods.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["db", "web"]);
    let web = &pods.pods[1];
    assert_eq!((web.ready_containers, web.total_containers, web.restarts), (1, 1, 2));
    assert_eq!(web.pod_ips, ["10.42.0.5"]);
    assert_eq!(pods.manifest_errors.len(), 2);
    let ps = c.list_containers().await.unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!((ps[0].pod.as_str(), ps[0].state.as_str()), ("default/web", "running"));
    node.server.shutdown().await;
}

#[tokio::test]
async fn inspect_returns_the_pod_as_json_with_its_manifest_errors() {
    let node = Node::start().await;
    let c = node.unix().await;
    let r = c.inspect_pod("web").await.unwrap();
    let pod: Pod = serde_json::from_str(&r.pod_json).unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some("web"));
    assert_eq!(r.manifest_errors.len(), 1);
    assert_eq!(r.manifest_errors[0].path, "/m/web.yaml");
    assert_eq!(code(c.inspect_pod("default/nope").await.unwrap_err()), tonic::Code::NotFound);
}

#[tokio::test]
async fn exec_passes_output_stdin_and_the_exit_code() {
    let node = Node::start().await;
    let c = node.unix().await;
    let r = c.exec_collect(start("web", &["echo", "hi", "there"]), None).await.unwrap();
    assert_eq!((r.stdout.as_slice(), r.exit.code), (&b"hi there\n"[..], 0));
    let r = c.exec_collect(start("web", &["exit", "3"]), None).await.unwrap();
    assert_eq!(r.exit.code, 3);
    let r = c.exec_collect(start("web", &["cat"]), Some(b"piped".to_vec())).await.unwrap();
    assert_eq!(r.stdout, b"piped");
    let r = c.exec_collect(start("web", &["err", "oops"]), None).await.unwrap();
    assert_eq!((r.stdout.len(), r.stderr.as_slice()), (0, &b"oops"[..]));
    let e = c.exec_collect(start("nope", &["true"]), None).await.unwrap_err();
    assert_eq!(code(e), tonic::Code::NotFound);
    let e = c.exec_collect(start("web", &[]), None).await.unwrap_err();
    assert_eq!(code(e), tonic::Code::InvalidArgument);
}

async fn texts(mut s: tonic::Streaming<proto::LogRecord>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        match s.message().await.unwrap() {
            Some(r) => out.push(String::from_utf8(r.content).unwrap()),
            None => break,
        }
    }
    out
}

#[tokio::test]
async fn logs_honour_tail_previous_and_follow() {
    let node = Node::start().await;
    let c = node.unix().await;
    let req = |tail, follow, previous| LogsRequest {
        pod: "web".into(),
        container: None,
        follow,
        tail,
        previous,
    };
    let all = texts(c.logs(req(None, false, false)).await.unwrap(), usize::MAX).await;
    assert_eq!(all.len(), 5);
    let last2 = texts(c.logs(req(Some(2), false, false)).await.unwrap(), usize::MAX).await;
    assert_eq!(last2, ["line 4", "line 5"]);
    let prev = texts(c.logs(req(None, false, true)).await.unwrap(), usize::MAX).await;
    assert_eq!(prev, ["previous"]);
    let mut live = c.logs(req(Some(1), true, false)).await.unwrap();
    assert_eq!(live.message().await.unwrap().unwrap().content, b"line 5");
    // Wait until the server subscribed before sending the new line.
    for _ in 0..200 {
        if node.follow.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    node.follow.send(entry("new line")).unwrap();
    assert_eq!(live.message().await.unwrap().unwrap().content, b"new line");
}

#[tokio::test]
async fn admin_over_mutual_tls_may_exec_and_remove_images() {
    let node = Node::start().await;
    let c = node.tcp(Role::Admin).await;
    let r = c.exec_collect(start("web", &["exit", "5"]), None).await.unwrap();
    assert_eq!(r.exit.code, 5);
    // Past authorization, into the store: the image is not there.
    let e = c.remove_image("busybox:nope").await.unwrap_err();
    assert_eq!(code(e), tonic::Code::NotFound);
    assert!(c.list_images().await.unwrap().is_empty());
}

#[tokio::test]
async fn reader_may_look_but_is_refused_every_mutating_call() {
    let node = Node::start().await;
    let c = node.tcp(Role::Reader).await;
    assert_eq!(c.list_pods().await.unwrap().pods.len(), 2);
    assert_eq!(c.list_containers().await.unwrap().len(), 1);
    assert!(c.list_images().await.unwrap().is_empty());
    assert_eq!(c.version().await.unwrap().api, keelson_agentctl::API_VERSION);
    assert!(!c.net_status().await.unwrap().configured);
    let logs = texts(
        c.logs(LogsRequest { pod: "web".into(), tail: Some(1), ..Default::default() })
            .await
            .unwrap(),
        usize::MAX,
    )
    .await;
    assert_eq!(logs, ["line 5"]);
    let denied = tonic::Code::PermissionDenied;
    assert_eq!(code(c.exec_collect(start("web", &["true"]), None).await.unwrap_err()), denied);
    assert_eq!(code(c.remove_image("busybox").await.unwrap_err()), denied);
    assert_eq!(code(c.pull_image("127.0.0.1:1/x:y", None).await.unwrap_err()), denied);
    let archive = node._dir.path().join("x.tar");
    std::fs::write(&archive, b"not an archive").unwrap();
    assert_eq!(code(c.import_image(&archive, None, None).await.unwrap_err()), denied);
}

/// A TLS client that presents `client` (or nothing) to the node; returns whether a gRPC
/// call got an answer.
async fn raw_tls_call(node: &Node, client: Option<&super::pki::Credential>) -> bool {
    use keelson_agentctl::tls;
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tls::roots(&node.pki.ca.crt).unwrap());
    let mut cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(
                tls::certs(&c.crt, "crt").unwrap(),
                tls::key(&c.key, "key").unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(node.server.tcp_addr().unwrap()).await.unwrap();
    let Ok(mut tls) = connector.connect(tls::server_name("127.0.0.1").unwrap(), tcp).await else {
        return false;
    };
    // TLS 1.3 finishes the client's side before the server checks its certificate: the
    // refusal shows as an alert or a closed connection on the first exchange.
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await;
    let mut buf = [0u8; 64];
    matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
}

#[tokio::test]
async fn tcp_clients_without_a_certificate_or_with_another_cas_are_refused_at_the_handshake() {
    let node = Node::start().await;
    // The control: the admin's certificate gets an HTTP/2 answer.
    assert!(raw_tls_call(&node, Some(&node.pki.admin)).await);
    assert!(!raw_tls_call(&node, None).await);
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(other_dir.path(), &server_names("other", &[])).unwrap();
    assert!(!raw_tls_call(&node, Some(&other.admin)).await);
    // The same through the client library: no call succeeds.
    let mut ctx = node.tcp_context(Role::Admin);
    ctx.crt = Some(other.admin.crt.clone());
    ctx.key = Some(other.admin.key.clone());
    match Client::connect(&ctx).await {
        Err(_) => {}
        Ok(c) => assert!(c.health().await.is_err()),
    }
}

#[tokio::test]
async fn the_written_agentctl_config_reaches_the_node_over_both_transports() {
    let node = Node::start().await;
    let path = node._dir.path().join("etc/agentctl.yaml");
    let tcp = node.server.tcp_addr().unwrap().to_string();
    let reader = write_agentctl_config(
        &node.pki,
        &path,
        "node",
        node.server.socket(),
        std::slice::from_ref(&tcp),
    )
    .unwrap();
    let mode = std::fs::metadata(&path).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    let cfg = keelson_agentctl::AgentctlConfig::load(&path).unwrap();
    let ctx = cfg.context(None).unwrap();
    let c = Client::connect(ctx).await.unwrap();
    assert!(c.endpoint().starts_with("unix:"));
    assert!(c.health().await.unwrap().checks.iter().any(|h| h.name == "runtime" && h.ok));
    let only_tcp = Context { endpoints: vec![tcp.clone()], ..ctx.clone() };
    let c = Client::connect(&only_tcp).await.unwrap();
    let r = c.exec_collect(start("web", &["exit", "9"]), None).await.unwrap();
    assert_eq!(r.exit.code, 9);

    // The reader's config: TCP only, looks, changes nothing.
    let reader = reader.unwrap();
    assert_eq!(reader, node._dir.path().join("etc/agentctl-reader.yaml"));
    let mode = std::fs::metadata(&reader).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    let cfg = keelson_agentctl::AgentctlConfig::load(&reader).unwrap();
    let ctx = cfg.context(None).unwrap();
    assert_eq!(ctx.endpoints, [tcp]);
    let c = Client::connect(ctx).await.unwrap();
    assert_eq!(c.list_pods().await.unwrap().pods.len(), 2);
    let e = c.exec_collect(start("web", &["true"]), None).await.unwrap_err();
    assert_eq!(code(e), tonic::Code::PermissionDenied);
}

#[test]
fn the_reader_config_sits_next_to_the_admins() {
    use super::reader_config_path;
    let p = |s: &str| reader_config_path(std::path::Path::new(s));
    assert_eq!(
        p("/var/lib/keelson/agentctl.yaml"),
        std::path::Path::new("/var/lib/keelson/agentctl-reader.yaml")
    );
    assert_eq!(p("/etc/talosconfig"), std::path::Path::new("/etc/talosconfig-reader"));
}

#[tokio::test]
async fn without_tcp_no_reader_config_is_written() {
    let node = Node::start().await;
    let path = node._dir.path().join("agentctl.yaml");
    let reader =
        write_agentctl_config(&node.pki, &path, "node", node.server.socket(), &[]).unwrap();
    assert_eq!(reader, None);
    assert!(!node._dir.path().join("agentctl-reader.yaml").exists());
}

#[tokio::test]
async fn a_restarted_node_keeps_its_ca_so_old_configs_still_work() {
    let node = Node::start().await;
    let dir = node._dir.path().join("pki");
    let again = Pki::load_or_create(&dir, &server_names("node", &[])).unwrap();
    assert_eq!(again.ca, node.pki.ca);
}
