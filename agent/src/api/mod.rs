//! The node API server: gRPC (`keelson.node.v1`, see the `keelson-agentctl` crate) over the
//! agent's pod registry, runtime, image store and pod network.
//!
//! - [`service::NodeApi`] implements the services over [`registry::PodRegistry`] and the
//!   runtime; it knows nothing of sockets. Every RPC first checks the caller's [`Role`]
//!   ([`authorize`]): readers may only read.
//! - [`serve`] runs it on a unix socket (mode 0600 in a root-owned directory: a local caller
//!   is an admin) and/or on TCP with mutual TLS. TLS is terminated here with tokio-rustls on
//!   ring (tonic is built without its TLS features, which keeps aws-lc out): the handshake
//!   requires a client certificate signed by the node-API CA ([`pki`]), and the certificate's
//!   Organization becomes the connection's [`Peer`] role, which tonic hands each request.
//! - [`pki::Pki`] makes and keeps the CA and certificates; [`write_agentctl_config`] writes
//!   the admin's agentctl config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::Connected;

pub mod pki;
pub mod registry;
pub mod service;

pub use registry::{ContainerRef, ManifestError, NoPods, PodRegistry};
pub use service::NodeApi;

/// Errors of starting the node API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be set up.
    #[error("{op} {what}")]
    Listen {
        /// What was being done.
        op: &'static str,
        /// The socket path or address.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A TCP listener without a TLS configuration.
    #[error("the TCP listener {0} needs a TLS configuration")]
    NoTls(SocketAddr),
    /// The PKI failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The agentctl config could not be written.
    #[error("write agentctl config")]
    Config(#[from] keelson_agentctl::config::ConfigError),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read-only RPCs.
    Reader,
}

/// Who is calling: set per connection by the listener, read per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The role; `None` for a verified certificate that names no role (it may do nothing).
    pub role: Option<Role>,
    /// `unix` or the TCP peer address.
    pub from: String,
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Looks only.
    Read,
    /// Changes something or runs something on the node.
    Write,
}

/// Checks that the request's peer may make a call needing `access`.
pub fn authorize<T>(
    req: &tonic::Request<T>,
    access: Access,
    rpc: &str,
) -> Result<(), tonic::Status> {
    let Some(peer) = req.extensions().get::<Peer>() else {
        return Err(tonic::Status::unauthenticated("no authenticated connection"));
    };
    match (peer.role, access) {
        (Some(Role::Admin), _) | (Some(Role::Reader), Access::Read) => Ok(()),
        (Some(Role::Reader), Access::Write) => {
            tracing::info!(rpc, from = %peer.from, "refused a reader a mutating call");
            Err(tonic::Status::permission_denied(format!(
                "{rpc} needs the admin role; this client has the reader role"
            )))
        }
        (None, _) => Err(tonic::Status::permission_denied(format!(
            "{rpc}: the client certificate names no role"
        ))),
    }
}

/// A connection with its [`Peer`], as tonic takes it.
#[derive(Debug)]
pub struct PeerIo<T> {
    io: T,
    peer: Peer,
}

impl<T> Connected for PeerIo<T> {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PeerIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PeerIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Where the API listens.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// The unix socket (root only).
    pub socket: Option<PathBuf>,
    /// The TCP address (mutual TLS); port 0 picks one (see [`ApiServer::tcp_addr`]).
    pub tcp: Option<SocketAddr>,
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running API.
#[derive(Debug)]
pub struct ApiServer {
    tcp_addr: Option<SocketAddr>,
    socket: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn router(api: &NodeApi) -> tonic::transport::server::Router {
    use keelson_agentctl::proto::{
        containers_server::ContainersServer, images_server::ImagesServer, net_server::NetServer,
        pods_server::PodsServer, system_server::SystemServer,
    };
    tonic::transport::Server::builder()
        .add_service(PodsServer::new(api.clone()))
        .add_service(ContainersServer::new(api.clone()))
        .add_service(ImagesServer::new(api.clone()))
        .add_service(NetServer::new(api.clone()))
        .add_service(SystemServer::new(api.clone()))
}

/// Binds the unix socket at `path` (replacing a stale one), mode 0600.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let err = |op| {
        let what = path.display().to_string();
        move |source| Error::Listen { op, what, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("create the directory of"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove the stale socket")(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err("chmod"))?;
    Ok(listener)
}

/// Starts the API on `listen`. `tls` is needed for a TCP listener.
pub async fn serve(
    api: NodeApi,
    listen: &Listen,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<ApiServer> {
    let (shutdown, _) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut server = ApiServer { tcp_addr: None, socket: None, shutdown, tasks: Vec::new() };
    if let Some(path) = &listen.socket {
        let listener = bind_unix(path)?;
        let (tx, rx) = mpsc::channel::<std::io::Result<PeerIo<tokio::net::UnixStream>>>(16);
        let mut stop = server.shutdown.subscribe();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((io, _)) => {
                            let peer = Peer { role: Some(Role::Admin), from: "unix".into() };
                            if tx.send(Ok(PeerIo { io, peer })).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept on the node API socket");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            }
        }));
        let mut stop = server.shutdown.subscribe();
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let r = router(&api);
        tasks.push(tokio::spawn(async move {
            let signal = async move {
                let _ = stop.changed().await;
            };
            if let Err(e) = r.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(error = %e, "node API on the unix socket");
            }
        }));
        tracing::info!(socket = %path.display(), "node API listening");
        server.socket = Some(path.clone());
    }
    if let Some(addr) = listen.tcp {
        let tls = tls.ok_or(Error::NoTls(addr))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { op: "bind", what: addr.to_string(), source })?;
        let local = listener.local_addr().map_err(|source| Error::Listen {
            op: "address of",
            what: addr.to_string(),
            source,
        })?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        let (tx, rx) = mpsc::channel::<std::io::Result<PeerIo<Tls>>>(16);
        let mut stop = server.shutdown.subscribe();
        tasks.push(tokio::spawn(async move {
            loop {
                let (tcp, from) = tokio::select! {
                    _ = stop.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept on the node API port");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                // Handshakes run apart, so a slow client holds up no one else.
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%from, error = %e, "refused a node API client at the TLS handshake");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%from, "node API TLS handshake timed out");
                            return;
                        }
                    };
                    let role = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| pki::role_of(c));
                    let peer = Peer { role, from: from.to_string() };
                    let _ = tx.send(Ok(PeerIo { io: tls, peer })).await;
                });
            }
        }));
        let mut stop = server.shutdown.subscribe();
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let r = router(&api);
        tasks.push(tokio::spawn(async move {
            let signal = async move {
                let _ = stop.changed().await;
            };
            if let Err(e) = r.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(error = %e, "node API on TCP");
            }
        }));
        tracing::info!(addr = %local, "node API listening with mutual TLS");
        server.tcp_addr = Some(local);
    }
    server.tasks = tasks;
    Ok(server)
}

impl ApiServer {
    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The unix socket.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// Stops accepting, lets calls in flight finish, removes the socket.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes the admin's agentctl config for this node to `path` (mode 0600: it holds the
/// admin key). Endpoints: the unix socket, then `host:port` for each of `tcp_endpoints`.
///
/// With TCP endpoints, also writes the reader's config next to it ([`reader_config_path`]):
/// the same endpoints over mutual TLS with the reader's certificate, which may look at
/// everything and change nothing. The unix socket is left out of it: a local client there is
/// the admin whatever it presents. Returns the reader's path when written.
pub fn write_agentctl_config(
    pki: &pki::Pki,
    path: &Path,
    context: &str,
    socket: Option<&Path>,
    tcp_endpoints: &[String],
) -> Result<Option<PathBuf>> {
    let mut endpoints: Vec<String> =
        socket.map(|s| format!("unix:{}", s.display())).into_iter().collect();
    endpoints.extend(tcp_endpoints.iter().cloned());
    write_config(path, &pki.agentctl_config(context, endpoints, Role::Admin))?;
    if tcp_endpoints.is_empty() {
        return Ok(None);
    }
    let reader = reader_config_path(path);
    write_config(&reader, &pki.agentctl_config(context, tcp_endpoints.to_vec(), Role::Reader))?;
    Ok(Some(reader))
}

/// Where the reader's config goes, next to the admin's: `agentctl.yaml` gives
/// `agentctl-reader.yaml`.
pub fn reader_config_path(admin: &Path) -> PathBuf {
    let stem = admin.file_stem().map_or_else(|| "agentctl".into(), |s| s.to_string_lossy());
    let name = match admin.extension() {
        Some(ext) => format!("{stem}-reader.{}", ext.to_string_lossy()),
        None => format!("{stem}-reader"),
    };
    admin.with_file_name(name)
}

fn write_config(path: &Path, cfg: &keelson_agentctl::config::AgentctlConfig) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Listen {
            op: "create the directory of",
            what: path.display().to_string(),
            source,
        })?;
    }
    pki::write_file(path, &cfg.to_yaml()?, 0o600)?;
    tracing::info!(path = %path.display(), "wrote an agentctl config");
    Ok(())
}

#[cfg(test)]
mod tests;
