//! [`Client`]: one connection to a node's agent, and the calls `agentctl` and the tests make.
//!
//! [`Client::connect`] tries a context's endpoints in order and keeps the first that answers
//! the connection (for TCP: the TCP connect and the mutual TLS handshake). The typed gRPC
//! clients are there for anything the helpers do not cover ([`Client::pods`] …).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;

use crate::config::{ConfigError, Context};
use crate::proto::{self, containers_client::ContainersClient, images_client::ImagesClient};
use crate::proto::{net_client::NetClient, pods_client::PodsClient, system_client::SystemClient};
use crate::tls::{self, TlsError};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config could not be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A context without endpoints.
    #[error("the agentctl context has no endpoints")]
    NoEndpoints,
    /// A TCP endpoint in a context without CA, certificate and key.
    #[error("endpoint {0} needs TLS credentials: the context has no ca, crt and key")]
    NoCredentials(String),
    /// An endpoint that is not `unix:PATH` or `host:port`.
    #[error("endpoint {0:?} is neither unix:PATH nor host:port")]
    BadEndpoint(String),
    /// The TLS configuration could not be built.
    #[error("tls credentials of the agentctl context")]
    Tls(#[from] TlsError),
    /// No endpoint could be reached.
    #[error("cannot reach the agent at {endpoint}: {hint}")]
    Connect {
        /// The (last) endpoint tried.
        endpoint: String,
        /// What to do about it.
        hint: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent answered with an error.
    #[error("{}", status_message(.0))]
    Rpc(#[from] tonic::Status),
    /// A local file (an image archive) could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stream ended without its final message.
    #[error("the agent ended the {0} stream early")]
    Truncated(&'static str),
}

/// `Result` of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the user can do about a refused call.
fn status_message(s: &tonic::Status) -> String {
    use tonic::Code;
    let hint = match s.code() {
        Code::PermissionDenied => {
            " (this certificate's role may not do that: use an admin agentctl config)"
        }
        Code::Unauthenticated => " (the agent does not know this certificate)",
        Code::Unavailable => " (is `keelson agent` still running?)",
        Code::NotFound => " (see `agentctl pods` and `agentctl ps`)",
        Code::Unimplemented => " (the agent is older than this agentctl)",
        _ => "",
    };
    format!("the agent refused: {}{hint}", s.message())
}

/// The output of [`Client::exec_collect`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// How the process ended.
    pub exit: proto::ExitStatus,
}

/// A connection to one agent.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    endpoint: String,
}

fn hint_for(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            "is `keelson agent` running?"
        }
        std::io::ErrorKind::PermissionDenied => {
            "the socket is root only: run agentctl as root, or use the TCP endpoint of an \
             agentctl config"
        }
        std::io::ErrorKind::InvalidData => {
            "the TLS handshake failed: check that the config's CA, certificate and key are \
             the ones this node wrote"
        }
        std::io::ErrorKind::TimedOut => "is the address right and the port open?",
        _ => "check the endpoint in the agentctl config",
    }
}

/// Splits `host:port` (`[v6]:port`).
fn host_port(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port = port.parse().ok()?;
    if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
        return None;
    }
    Some((host, port))
}

fn dummy_endpoint() -> Endpoint {
    // The connector ignores the URI: it only names the HTTP/2 authority.
    Endpoint::from_static("http://keelson-agent")
}

impl Client {
    /// Connects to the first endpoint of `ctx` that answers.
    pub async fn connect(ctx: &Context) -> Result<Client> {
        let mut last = Error::NoEndpoints;
        for endpoint in &ctx.endpoints {
            match Self::connect_endpoint(ctx, endpoint).await {
                Ok(c) => return Ok(c),
                Err(e @ Error::Connect { .. }) => {
                    tracing::debug!(%endpoint, error = %e, "endpoint unreachable");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Connects to the agent's unix socket at `path`.
    pub async fn connect_unix(path: &Path) -> Result<Client> {
        Self::connect(&Context::unix(path)).await
    }

    async fn connect_endpoint(ctx: &Context, endpoint: &str) -> Result<Client> {
        let connect_err = |source: std::io::Error| Error::Connect {
            endpoint: endpoint.to_owned(),
            hint: hint_for(&source),
            source: Box::new(source),
        };
        let channel = if let Some(path) = endpoint.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            // Fail here with the socket's own error rather than later in the first call.
            let probe = tokio::net::UnixStream::connect(&path).await.map_err(connect_err)?;
            let mut first = Some(probe);
            dummy_endpoint()
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    let ready = first.take();
                    async move {
                        let s = match ready {
                            Some(s) => s,
                            None => tokio::net::UnixStream::connect(&path).await?,
                        };
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
                .await
                .map_err(|e| Error::Connect {
                    endpoint: endpoint.to_owned(),
                    hint: "is `keelson agent` running?",
                    source: Box::new(e),
                })?
        } else {
            let (host, port) =
                host_port(endpoint).ok_or_else(|| Error::BadEndpoint(endpoint.to_owned()))?;
            let (Some(ca), Some(crt), Some(key)) = (&ctx.ca, &ctx.crt, &ctx.key) else {
                return Err(Error::NoCredentials(endpoint.to_owned()));
            };
            let connector = tokio_rustls::TlsConnector::from(tls::client_config(ca, crt, key)?);
            let name = tls::server_name(host)?;
            let addr = format!("{host}:{port}");
            let dial = {
                let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
                move || {
                    let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
                    async move {
                        let tcp = tokio::net::TcpStream::connect(&addr).await?;
                        tcp.set_nodelay(true)?;
                        connector.connect(name, tcp).await
                    }
                }
            };
            let first = dial().await.map_err(connect_err)?;
            let first = Arc::new(std::sync::Mutex::new(Some(first)));
            dummy_endpoint()
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let ready = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                    let dial = dial.clone();
                    async move {
                        let s = match ready {
                            Some(s) => s,
                            None => dial().await?,
                        };
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
                .await
                .map_err(|e| Error::Connect {
                    endpoint: endpoint.to_owned(),
                    hint: "check the endpoint in the agentctl config",
                    source: Box::new(e),
                })?
        };
        tracing::debug!(%endpoint, "connected");
        Ok(Client { channel, endpoint: endpoint.to_owned() })
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The Pods service.
    pub fn pods(&self) -> PodsClient<Channel> {
        PodsClient::new(self.channel.clone())
    }

    /// The Containers service.
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    /// The Images service.
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    /// The Net service.
    pub fn net(&self) -> NetClient<Channel> {
        NetClient::new(self.channel.clone())
    }

    /// The System service.
    pub fn system(&self) -> SystemClient<Channel> {
        SystemClient::new(self.channel.clone())
    }

    /// Every pod and the manifest errors.
    pub async fn list_pods(&self) -> Result<proto::ListPodsResponse> {
        Ok(self.pods().list(proto::ListPodsRequest {}).await?.into_inner())
    }

    /// One pod, as JSON.
    pub async fn inspect_pod(&self, pod: &str) -> Result<proto::InspectPodResponse> {
        Ok(self
            .pods()
            .inspect(proto::InspectPodRequest { pod: pod.to_owned() })
            .await?
            .into_inner())
    }

    /// Every container.
    pub async fn list_containers(&self) -> Result<Vec<proto::ContainerInfo>> {
        Ok(self.containers().list(proto::ListContainersRequest {}).await?.into_inner().containers)
    }

    /// A container's log records.
    pub async fn logs(&self, req: proto::LogsRequest) -> Result<Streaming<proto::LogRecord>> {
        Ok(self.containers().logs(req).await?.into_inner())
    }

    /// Starts an exec: `input` follows the start message (stdin, resizes, close).
    pub async fn exec(
        &self,
        start: proto::ExecStart,
        input: impl Stream<Item = proto::ExecInput> + Send + 'static,
    ) -> Result<Streaming<proto::ExecOutput>> {
        let first = proto::ExecInput { input: Some(proto::exec_input::Input::Start(start)) };
        let stream = futures::stream::once(async move { first }).chain(input);
        Ok(self.containers().exec(stream).await?.into_inner())
    }

    /// Runs a command to its end with `stdin` as its input; collects its output.
    pub async fn exec_collect(
        &self,
        mut start: proto::ExecStart,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult> {
        use proto::exec_input::Input;
        start.stdin = stdin.is_some();
        let mut input = Vec::new();
        if let Some(data) = stdin {
            input.push(proto::ExecInput { input: Some(Input::Stdin(data)) });
            input.push(proto::ExecInput { input: Some(Input::CloseStdin(true)) });
        }
        // Keep the request stream open until the output ends, as a terminal session would.
        let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
        let input = futures::stream::iter(input)
            .chain(futures::stream::once(hold_rx).filter_map(|_| async { None }));
        let mut out = self.exec(start, input).await?;
        let mut result = ExecResult::default();
        let mut exit = None;
        while let Some(msg) = out.message().await? {
            match msg.output {
                Some(proto::exec_output::Output::Stdout(b)) => result.stdout.extend(b),
                Some(proto::exec_output::Output::Stderr(b)) => result.stderr.extend(b),
                Some(proto::exec_output::Output::Exit(e)) => exit = Some(e),
                None => {}
            }
        }
        drop(hold_tx);
        result.exit = exit.ok_or(Error::Truncated("exec"))?;
        Ok(result)
    }

    /// Every image.
    pub async fn list_images(&self) -> Result<Vec<proto::ImageInfo>> {
        Ok(self.images().list(proto::ListImagesRequest {}).await?.into_inner().images)
    }

    /// Uploads and imports the archive at `path`; progress events go to `progress`.
    pub async fn import_image(
        &self,
        path: &Path,
        name: Option<String>,
        progress: Option<UnboundedSender<proto::ImageProgress>>,
    ) -> Result<proto::ImageStored> {
        use proto::import_chunk::Chunk;
        let read_err = |source| Error::Read { path: path.to_owned(), source };
        let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
        let size = file.metadata().await.map_err(read_err)?.len();
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::ImportChunk>(4);
        let header =
            proto::ImportChunk { chunk: Some(Chunk::Header(proto::ImportHeader { name, size })) };
        // The header fits the channel's buffer: the send cannot wait.
        let _ = tx.send(header).await;
        let owned = path.to_owned();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|source| Error::Read { path: owned.clone(), source })?;
                if n == 0 {
                    return Ok(());
                }
                let chunk = proto::ImportChunk { chunk: Some(Chunk::Data(buf[..n].to_vec())) };
                if tx.send(chunk).await.is_err() {
                    return Ok(()); // the call failed; its status says why
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let result = async {
            let events = self.images().import(stream).await?.into_inner();
            follow_progress(events, progress).await
        }
        .await;
        if let Ok(Err(e)) = reader.await {
            return Err(e);
        }
        result
    }

    /// Pulls `reference` on the node; progress events go to `progress`.
    pub async fn pull_image(
        &self,
        reference: &str,
        progress: Option<UnboundedSender<proto::ImageProgress>>,
    ) -> Result<proto::ImageStored> {
        let req = proto::PullImageRequest { reference: reference.to_owned() };
        let events = self.images().pull(req).await?.into_inner();
        follow_progress(events, progress).await
    }

    /// Removes an image record; returns the names removed.
    pub async fn remove_image(&self, reference: &str) -> Result<Vec<String>> {
        let req = proto::RemoveImageRequest { reference: reference.to_owned() };
        Ok(self.images().remove(req).await?.into_inner().removed)
    }

    /// The pod network.
    pub async fn net_status(&self) -> Result<proto::NetStatusResponse> {
        Ok(self.net().status(proto::NetStatusRequest {}).await?.into_inner())
    }

    /// The agent's health.
    pub async fn health(&self) -> Result<proto::HealthResponse> {
        Ok(self.system().health(proto::HealthRequest {}).await?.into_inner())
    }

    /// The agent's version.
    pub async fn version(&self) -> Result<proto::VersionResponse> {
        Ok(self.system().version(proto::VersionRequest {}).await?.into_inner())
    }
}

async fn follow_progress(
    mut events: Streaming<proto::ImageProgress>,
    progress: Option<UnboundedSender<proto::ImageProgress>>,
) -> Result<proto::ImageStored> {
    let mut stored = None;
    while let Some(ev) = events.message().await? {
        if let Some(proto::image_progress::Event::Stored(s)) = &ev.event {
            stored = Some(s.clone());
        }
        if let Some(tx) = &progress {
            let _ = tx.send(ev);
        }
    }
    stored.ok_or(Error::Truncated("image"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_into_host_and_port() {
        assert_eq!(host_port("10.0.0.1:50100"), Some(("10.0.0.1", 50100)));
        assert_eq!(host_port("[::1]:7"), Some(("[::1]", 7)));
        assert_eq!(host_port("node.example:1"), Some(("node.example", 1)));
        assert_eq!(host_port("::1:7"), None);
        assert_eq!(host_port("nohost"), None);
    }

    #[tokio::test]
    async fn an_absent_socket_says_to_start_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::connect_unix(&dir.path().join("agent.sock")).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cannot reach the agent at unix:"), "{text}");
        assert!(text.contains("is `keelson agent` running?"), "{text}");
    }

    #[test]
    fn a_refusal_by_role_says_what_config_to_use() {
        let e = Error::Rpc(tonic::Status::permission_denied("role keelson:reader"));
        assert!(e.to_string().contains("use an admin agentctl config"));
    }
}
