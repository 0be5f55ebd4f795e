//! The API server's HTTP side: [`router`] (axum 0.8) over shared [`ApiState`], and [`bind`] +
//! [`Listener::serve`], a TLS listener (rustls on ring, hyper-util's HTTP/1.1 + HTTP/2
//! connection builder) that authenticates x509 client certificates.
//!
//! Why axum over bare hyper: its `Router` gives the path table and extractors the pipeline
//! needs, it is already built for tonic's router, and it is a `tower::Service`, so tests drive
//! [`router`] with `oneshot` and no socket (STYLE.md). TLS is terminated by us with
//! tokio-rustls because the handshake's client certificate is the identity, which each
//! connection's router receives as an [`Authenticated`] extension.
//!
//! Authentication: a client certificate must chain to the cluster CA (rustls checks it in
//! the handshake); a connection without one is accepted, and its requests must carry a bearer
//! token (service-account or bootstrap token) or are refused with a 401 `Status`, as upstream
//! does with anonymous authentication off. Every request then passes the
//! [`auth`](crate::auth) middleware: authorization (system:masters, the node authorizer,
//! RBAC) and the node's admission.
//!
//! Served today: `/version`, `/healthz`, `/livez`, `/readyz`, discovery (`/api`, `/api/v1`,
//! `/apis`, `/apis/<g>`, `/apis/<g>/<v>`, aggregated discovery by `Accept`), `/openapi/v2`
//! (JSON; a client that accepts only protobuf gets 406, to which client-go reacts by trying
//! its legacy path) and `/openapi/v3` with per-group-version documents.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path as UrlPath};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::discovery::{self, Aggregated};
use crate::pki::{self, Pki, UserInfo};
use crate::schema::Schemas;

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The PKI could not be loaded or created.
    #[error("pki in {dir}")]
    Pki {
        /// The PKI directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: pki::Error,
    },
    /// The admin kubeconfig could not be written.
    #[error("write {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: pki::Error,
    },
    /// The embedded store could not be opened.
    #[error("open the store {path}")]
    Store {
        /// The store's file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<keelson_store::embedded::Error>,
    },
    /// The service-account signing key could not be loaded or made.
    #[error("service-account key in {dir}")]
    ServiceAccountKey {
        /// The PKI directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: crate::auth::token::Error,
    },
    /// The audit log could not be opened.
    #[error("open the audit log {path}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file for Secrets at rest is unusable.
    #[error("the encryption key file")]
    EncryptionKeys {
        /// The cause.
        #[source]
        source: Box<keelson_store::encrypted::KeyFileError>,
    },
    /// The system namespaces or the `kubernetes` Service could not be written.
    #[error("bootstrap the cluster's system objects")]
    Bootstrap {
        /// The cause.
        #[source]
        source: crate::objects::ApiError,
    },
    /// The etcd cluster could not be reached.
    #[error("connect to etcd at {}", .endpoints.join(","))]
    Etcd {
        /// Its client URLs.
        endpoints: Vec<String>,
        /// The cause.
        #[source]
        source: Box<keelson_store::etcd::Error>,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where credentials (and later the store) live.
    pub data_dir: PathBuf,
    /// The listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The address clients should use, when not the listen address (for example when
    /// listening on `0.0.0.0`).
    pub advertise: Option<IpAddr>,
    /// Where objects live.
    pub store: StoreChoice,
    /// The audit log (`None`: `DIR/audit.log`).
    pub audit_log: Option<PathBuf>,
    /// The key file Secrets are encrypted at rest with (`None`:
    /// `DIR/pki/secrets-encryption.key`, created on first start).
    pub encryption_key_file: Option<PathBuf>,
    /// The service CIDR and node-port range.
    pub services: crate::admission::ServiceNetwork,
    /// How much history the store keeps: every `compaction_interval` (sampled more often) it
    /// compacts away revisions older than this, as upstream's `--etcd-compaction-interval`
    /// (default [`DEFAULT_COMPACTION_INTERVAL`]). The watch caches' windows reach no further
    /// back, so watches from older revisions get `410 Gone`.
    pub compaction_interval: Duration,
}

/// The store backend (`--store embedded|etcd:URL,…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded store in `DIR/store.redb` (the default).
    #[default]
    Embedded,
    /// An etcd cluster at these client URLs.
    Etcd(Vec<String>),
}

impl std::str::FromStr for StoreChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "embedded" {
            return Ok(StoreChoice::Embedded);
        }
        let Some(urls) = s.strip_prefix("etcd:") else {
            return Err(format!("unknown store {s:?}: use embedded or etcd:URL[,URL…]"));
        };
        let urls: Vec<String> =
            urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        if urls.is_empty() {
            return Err("etcd: needs at least one client URL (etcd:http://127.0.0.1:2379)".into());
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("the etcd URL {u:?} must start with http:// or https://"));
            }
        }
        Ok(StoreChoice::Etcd(urls))
    }
}

/// Upstream's default `--etcd-compaction-interval`: five minutes.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(300);

/// How often the store tells each watch cache how far it has got when its resource is idle:
/// the longest a consistent list from a cache waits after writes to other resources.
const STORE_PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

impl Config {
    /// The address written into the kubeconfig and discovery: the advertise address, else the
    /// listen address, else loopback when listening on all addresses.
    pub fn client_address(&self, port: u16) -> SocketAddr {
        let ip = self.advertise.unwrap_or(self.listen.ip());
        let ip = if ip.is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { ip };
        SocketAddr::new(ip, port)
    }
}

/// Errors answered to clients, each a Kubernetes `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No (valid) client certificate.
    Unauthorized,
    /// No such path or group version.
    NotFound(String),
    /// The client accepts no media type we produce.
    NotAcceptable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::Unauthorized => {
                (StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".to_owned())
            }
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({what})"),
            ),
            ApiError::NotAcceptable(what) => (
                StatusCode::NOT_ACCEPTABLE,
                "NotAcceptable",
                format!("only the following media types are accepted: {what}"),
            ),
        }
    }
}

impl From<ApiError> for crate::objects::ApiError {
    fn from(e: ApiError) -> Self {
        let (code, reason, message) = e.parts();
        crate::objects::ApiError::new(code.as_u16(), reason, message)
    }
}

impl IntoResponse for ApiError {
    /// The `metav1.Status` body of [`crate::objects::ApiError`], the one Status renderer.
    fn into_response(self) -> Response {
        crate::objects::ApiError::from(self).into_response()
    }
}

/// What every handler reads: the schema source and the precomputed documents.
#[derive(Debug)]
pub struct ApiState {
    schemas: Schemas,
    openapi_v2: String,
    openapi_v3_index: String,
    /// Per-group-version v3 documents by index path (`apis/apps/v1`).
    openapi_v3: BTreeMap<String, String>,
    server_address: String,
    objects: Option<crate::objects::Objects>,
    admission: crate::admission::Admission,
    auth: Arc<crate::auth::Auth>,
    snapshots: Option<Arc<keelson_store::embedded::EmbeddedStore>>,
    metrics: Arc<crate::metrics::Metrics>,
    audit: Option<Arc<crate::audit::AuditLog>>,
}

impl ApiState {
    /// Builds the schemas and documents; `server_address` (`host:port`) is what `/api` tells
    /// clients to dial.
    pub fn new(server_address: String) -> ApiState {
        let schemas = Schemas::build();
        let openapi_v2 = schemas.openapi_v2().to_string();
        let openapi_v3_index = schemas.openapi_v3_index().to_string();
        let openapi_v3 = Schemas::v3_paths()
            .into_iter()
            .filter_map(|(path, g, v)| schemas.openapi_v3(g, v).map(|doc| (path, doc.to_string())))
            .collect();
        ApiState {
            schemas,
            openapi_v2,
            openapi_v3_index,
            openapi_v3,
            server_address,
            objects: None,
            admission: crate::admission::Admission::default(),
            auth: Arc::new(crate::auth::Auth::default()),
            snapshots: None,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            audit: None,
        }
    }

    /// The authenticators and authorizers.
    pub fn auth(&self) -> &Arc<crate::auth::Auth> {
        &self.auth
    }

    /// The same state authenticating and authorizing with `auth`.
    pub fn with_auth(mut self, auth: crate::auth::Auth) -> ApiState {
        self.auth = Arc::new(auth);
        self
    }

    /// The `host:port` clients are told to dial.
    pub fn server_address(&self) -> &str {
        &self.server_address
    }

    /// The same state serving objects from `objects`.
    pub fn with_objects(mut self, objects: crate::objects::Objects) -> ApiState {
        self.objects = Some(objects);
        self
    }

    /// The objects, when this server has a store.
    pub fn objects(&self) -> Option<&crate::objects::Objects> {
        self.objects.as_ref()
    }

    /// The schema source.
    pub fn schemas(&self) -> &Schemas {
        &self.schemas
    }

    /// The same state recording every request in `log`.
    pub fn with_audit(mut self, log: crate::audit::AuditLog) -> ApiState {
        self.audit = Some(Arc::new(log));
        self
    }

    /// The same state serving snapshots of this embedded store.
    pub fn with_snapshots(
        mut self,
        store: Arc<keelson_store::embedded::EmbeddedStore>,
    ) -> ApiState {
        self.snapshots = Some(store);
        self
    }

    /// The admission chain.
    pub fn admission(&self) -> &crate::admission::Admission {
        &self.admission
    }

    /// The same state with this admission chain (its service network).
    pub fn with_admission(mut self, admission: crate::admission::Admission) -> ApiState {
        self.admission = admission;
        self
    }
}

/// The identity of a connection, set by the TLS listener (or by tests): `None` when the client
/// presented no certificate.
#[derive(Debug, Clone, Default)]
pub struct Authenticated(pub Option<UserInfo>);

/// The API router. Requests need an [`Authenticated`] extension with a user or a valid bearer
/// token; without either they get 401. Then they are authorized ([`crate::auth::middleware`]).
pub fn router(state: Arc<ApiState>) -> Router {
    let router = Router::new()
        .route("/version", get(version))
        // The Python client asks for `/version/`.
        .route("/version/", get(version))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/api", get(api))
        .route("/api/{version}", get(core_resources))
        .route("/apis", get(apis))
        .route("/apis/{group}", get(group))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3_index))
        .route("/openapi/v3/{*path}", get(openapi_v3))
        .route(crate::snapshot::PATH, get(snapshot))
        .merge(crate::auth::review::routes())
        .merge(crate::rest::routes())
        .fallback(|| async { ApiError::NotFound("no such path".to_owned()) })
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::middleware))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), crate::metrics::track));
    let router = match state.audit.clone() {
        Some(log) => router.layer(middleware::from_fn_with_state(log, crate::audit::record)),
        None => router,
    };
    router.with_state(state)
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics(axum::extract::State(state): axum::extract::State<Arc<ApiState>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /keelson/v1/snapshot`: a consistent copy of the embedded store.
async fn snapshot(axum::extract::State(state): axum::extract::State<Arc<ApiState>>) -> Response {
    let Some(store) = &state.snapshots else {
        return crate::objects::ApiError::new(
            501,
            "NotImplemented",
            "this control plane keeps its objects in etcd: use etcdctl snapshot save",
        )
        .into_response();
    };
    match crate::snapshot::serve(store).await {
        Ok(body) => {
            ([(http::header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
        }
        Err(e) => crate::objects::ApiError::internal(format!("snapshot: {e:#}")).into_response(),
    }
}

type State = axum::extract::State<Arc<ApiState>>;

fn json_response(content_type: &str, body: String) -> Response {
    let mut response = body.into_response();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

fn to_json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => json_response("application/json", body),
        Err(e) => {
            tracing::error!(error = %e, "serialise a discovery document");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn version() -> Response {
    to_json(&json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("{}+keelson", crate::KUBERNETES_VERSION),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", go_arch()),
    }))
}

/// The architecture as Go (and so Kubernetes) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn health() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response()
}

async fn api(state: State, headers: HeaderMap) -> Response {
    match Aggregated::negotiate(accept(&headers)) {
        Some(v) => json_response(&v.content_type(), discovery::aggregated(v, true).to_string()),
        None => to_json(&discovery::api_versions(&state.server_address)),
    }
}

async fn apis(headers: HeaderMap) -> Response {
    match Aggregated::negotiate(accept(&headers)) {
        Some(v) => json_response(&v.content_type(), discovery::aggregated(v, false).to_string()),
        None => to_json(&discovery::api_group_list()),
    }
}

async fn core_resources(UrlPath(version): UrlPath<String>) -> Response {
    match discovery::api_resource_list("", &version) {
        Some(list) => to_json(&list),
        None => ApiError::NotFound(format!("/api/{version}")).into_response(),
    }
}

async fn group(UrlPath(group): UrlPath<String>) -> Response {
    match discovery::group(&group) {
        Some(g) => to_json(&g),
        None => ApiError::NotFound(format!("/apis/{group}")).into_response(),
    }
}

async fn group_resources(UrlPath((group, version)): UrlPath<(String, String)>) -> Response {
    match discovery::api_resource_list(&group, &version) {
        Some(list) => to_json(&list),
        None => ApiError::NotFound(format!("/apis/{group}/{version}")).into_response(),
    }
}

/// Whether an `Accept` header admits JSON (absent, `*/*`, `application/*` or `application/json`).
fn accepts_json(accept: &str) -> bool {
    accept.is_empty()
        || accept.split(',').any(|range| {
            let media = range.split(';').next().unwrap_or_default().trim();
            matches!(media, "application/json" | "application/*" | "*/*")
        })
}

async fn openapi_v2(state: State, headers: HeaderMap) -> Response {
    if !accepts_json(accept(&headers)) {
        return ApiError::NotAcceptable("application/json".to_owned()).into_response();
    }
    json_response("application/json", state.openapi_v2.clone())
}

async fn openapi_v3_index(state: State) -> Response {
    json_response("application/json", state.openapi_v3_index.clone())
}

async fn openapi_v3(state: State, UrlPath(path): UrlPath<String>, headers: HeaderMap) -> Response {
    if !accepts_json(accept(&headers)) {
        return ApiError::NotAcceptable("application/json".to_owned()).into_response();
    }
    match state.openapi_v3.get(&path) {
        Some(doc) => json_response("application/json", doc.clone()),
        None => ApiError::NotFound(format!("/openapi/v3/{path}")).into_response(),
    }
}

/// A bound, not yet serving, API server.
pub struct Listener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    kubeconfig: PathBuf,
    /// The RBAC index's refresher, which ends with the listener.
    refresher: tokio::task::AbortHandle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// Loads or creates the PKI under `DIR/pki`, binds the listen address, and writes
/// `DIR/admin.kubeconfig` pointing at the bound port.
pub async fn bind(config: &Config) -> Result<Listener> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind { addr: config.listen, source })?;
    let port =
        listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?.port();
    let client = config.client_address(port);
    let addresses: Vec<IpAddr> =
        [Some(config.listen.ip()), config.advertise].into_iter().flatten().collect();
    let pki_dir = config.data_dir.join("pki");
    let pki_err = |source| Error::Pki { dir: pki_dir.clone(), source };
    let pki =
        Pki::load_or_create(&pki_dir, &pki::server_names(&addresses, config.services.first_ip()))
            .map_err(pki_err)?;
    let tls = pki.server_config().map_err(pki_err)?;
    let kubeconfig = config.data_dir.join("admin.kubeconfig");
    write_kubeconfig(&pki, &kubeconfig, &format!("https://{client}"))?;
    let mut embedded = None;
    let store: Arc<dyn keelson_store::Store> = match &config.store {
        StoreChoice::Embedded => {
            let path = config.data_dir.join("store.redb");
            let store_opts = keelson_store::embedded::Options {
                history_window: Some(config.compaction_interval),
                compaction_interval: (config.compaction_interval / 5)
                    .clamp(Duration::from_millis(100), Duration::from_secs(60)),
                progress_interval: STORE_PROGRESS_INTERVAL,
                ..Default::default()
            };
            let store = keelson_store::embedded::EmbeddedStore::open(&path, store_opts)
                .await
                .map_err(|source| Error::Store { path: path.clone(), source: Box::new(source) })?;
            let store = Arc::new(store);
            embedded = Some(store.clone());
            store
        }
        StoreChoice::Etcd(endpoints) => {
            let store =
                keelson_store::etcd::EtcdStore::connect(endpoints).await.map_err(|source| {
                    Error::Etcd { endpoints: endpoints.clone(), source: Box::new(source) }
                })?;
            Arc::new(store)
        }
    };
    let key_file = config
        .encryption_key_file
        .clone()
        .unwrap_or_else(|| pki_dir.join("secrets-encryption.key"));
    let keys = keelson_store::encrypted::KeyFile::load_or_create(&key_file)
        .map_err(|source| Error::EncryptionKeys { source: Box::new(source) })?;
    let store: Arc<dyn keelson_store::Store> =
        Arc::new(keelson_store::encrypted::EncryptedStore::new(
            store,
            keys,
            vec![b"/registry/secrets/".to_vec()],
        ));
    let cache_opts = keelson_store::watch_cache::Options {
        max_age: Some(config.compaction_interval),
        ..Default::default()
    };
    let objects = crate::objects::Objects::with_watch_caches(store.clone(), cache_opts);
    let signer = crate::auth::token::Signer::load_or_create(&pki_dir)
        .map_err(|source| Error::ServiceAccountKey { dir: pki_dir.clone(), source })?;
    let mut state = ApiState::new(client.to_string())
        .with_objects(objects.clone())
        .with_admission(crate::admission::Admission {
            services: config.services.clone(),
            ..Default::default()
        })
        .with_auth(crate::auth::Auth::new(Some(signer), Some(objects)));
    if let Some(e) = embedded {
        state = state.with_snapshots(e);
    }
    let audit_path = config.audit_log.clone().unwrap_or_else(|| config.data_dir.join("audit.log"));
    let audit = crate::audit::AuditLog::start(audit_path.clone())
        .map_err(|source| Error::Audit { path: audit_path, source })?;
    state = state.with_audit(audit);
    let state = Arc::new(state);
    crate::bootstrap::run(&state, client).await.map_err(|source| Error::Bootstrap { source })?;
    // The first RBAC index before the first request; the refresher keeps it current.
    state.auth().refresh().await.map_err(|source| Error::Bootstrap { source })?;
    let refresher = crate::auth::Auth::spawn_refresher(state.clone(), store).abort_handle();
    tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), kubeconfig = %kubeconfig.display(), "API server listening");
    Ok(Listener {
        listener,
        acceptor: TlsAcceptor::from(tls),
        router: router(state),
        kubeconfig,
        refresher,
    })
}

fn write_kubeconfig(pki: &Pki, path: &Path, server: &str) -> Result<()> {
    let err = |source| Error::Kubeconfig { path: path.to_owned(), source };
    let yaml = pki.admin_kubeconfig(server).map_err(err)?;
    pki::write_file(path, &yaml, 0o600).map_err(err)
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("listener", &self.listener)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin kubeconfig written by [`bind`].
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Accepts connections until `shutdown` completes. A failed handshake or connection is
    /// logged and ends only that connection.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept");
                        continue;
                    }
                },
            };
            let acceptor = self.acceptor.clone();
            let router = self.router.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "tls handshake");
                        return;
                    }
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| pki::user_of(c));
                let service = TowerToHyperService::new(
                    router
                        .layer(Extension(Authenticated(user)))
                        .layer(Extension(crate::audit::Peer(peer))),
                );
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) =
                    builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await
                {
                    tracing::debug!(%peer, error = %e, "connection");
                }
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Request;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use std::sync::OnceLock;
    use tower::ServiceExt;

    fn parse(body: &[u8]) -> Option<Value> {
        serde_json::from_slice(body).ok()
    }

    fn state() -> Arc<ApiState> {
        static S: OnceLock<Arc<ApiState>> = OnceLock::new();
        S.get_or_init(|| Arc::new(ApiState::new("127.0.0.1:6443".into()))).clone()
    }

    fn admin() -> Authenticated {
        Authenticated(Some(UserInfo {
            name: pki::ADMIN_USER.into(),
            groups: vec![pki::ADMIN_GROUP.into()],
        }))
    }

    async fn get(
        path: &str,
        accept: Option<&str>,
        auth: Authenticated,
    ) -> (StatusCode, String, Value) {
        let mut req = Request::builder().uri(path);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let response = router(state())
            .layer(Extension(auth))
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let ct = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            ct,
            parse(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned())),
        )
    }

    #[tokio::test]
    async fn anonymous_requests_get_401_status() {
        for path in ["/version", "/healthz", "/api", "/openapi/v3", "/nope"] {
            let (status, _, body) = get(path, None, Authenticated(None)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(
                (&body["kind"], &body["reason"], &body["code"]),
                (&json!("Status"), &json!("Unauthorized"), &json!(401))
            );
        }
    }

    #[tokio::test]
    async fn discovery_answers_legacy_or_aggregated_by_accept() {
        let (status, ct, body) = get("/apis", Some("application/json"), admin()).await;
        assert_eq!(
            (status, ct.as_str(), &body["kind"]),
            (StatusCode::OK, "application/json", &json!("APIGroupList"))
        );
        let agg =
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        let (_, ct, body) = get("/apis", Some(agg), admin()).await;
        assert_eq!(ct, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
        assert_eq!(body["kind"], "APIGroupDiscoveryList");
        let (_, _, body) = get("/api", None, admin()).await;
        assert_eq!(body["versions"], json!(["v1"]));
        let (_, _, body) = get("/api/v1", None, admin()).await;
        assert_eq!(body["groupVersion"], "v1");
        let (_, _, body) = get("/apis/apps/v1", None, admin()).await;
        assert_eq!(body["groupVersion"], "apps/v1");
        let (_, _, body) = get("/apis/apps", None, admin()).await;
        assert_eq!(body["preferredVersion"]["version"], "v1");
        let (status, _, body) = get("/apis/apps/v2", None, admin()).await;
        assert_eq!((status, &body["reason"]), (StatusCode::NOT_FOUND, &json!("NotFound")));
    }

    #[tokio::test]
    async fn openapi_serves_json_and_refuses_protobuf_only_clients() {
        let (status, _, body) = get("/openapi/v2", Some("application/json"), admin()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
        let (status, _, body) = get(
            "/openapi/v2",
            Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
            admin(),
        )
        .await;
        assert_eq!((status, &body["code"]), (StatusCode::NOT_ACCEPTABLE, &json!(406)));
        let (_, _, index) = get("/openapi/v3", None, admin()).await;
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap().to_owned();
        let (status, _, doc) = get(&url, Some("application/json"), admin()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
                ["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let (status, _, _) = get("/openapi/v3/apis/nope/v1", None, admin()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn version_and_health_endpoints_answer() {
        let (status, _, body) = get("/version", None, admin()).await;
        assert_eq!(
            (status, &body["major"], &body["minor"]),
            (StatusCode::OK, &json!("1"), &json!("33"))
        );
        for path in ["/healthz", "/livez", "/readyz"] {
            let (status, _, body) = get(path, None, admin()).await;
            assert_eq!((status, body), (StatusCode::OK, json!("ok")), "{path}");
        }
    }

    #[test]
    fn the_client_address_replaces_unspecified_listen_addresses() {
        let c = Config {
            data_dir: "/x".into(),
            listen: "0.0.0.0:6443".parse().unwrap(),
            advertise: None,
            store: StoreChoice::Embedded,
            encryption_key_file: None,
            audit_log: None,
            services: Default::default(),
            compaction_interval: DEFAULT_COMPACTION_INTERVAL,
        };
        assert_eq!(c.client_address(6443), "127.0.0.1:6443".parse().unwrap());
        let c = Config { advertise: Some("192.0.2.1".parse().unwrap()), ..c };
        assert_eq!(c.client_address(1), "192.0.2.1:1".parse().unwrap());
    }

    #[test]
    fn store_choices_parse_and_bad_ones_say_what_to_write() {
        assert_eq!("embedded".parse(), Ok(StoreChoice::Embedded));
        assert_eq!(
            "etcd:http://127.0.0.1:2379, http://127.0.0.1:2479".parse(),
            Ok(StoreChoice::Etcd(vec![
                "http://127.0.0.1:2379".into(),
                "http://127.0.0.1:2479".into()
            ]))
        );
        for bad in ["etcd:", "etcd:127.0.0.1:2379", "sqlite"] {
            let e = bad.parse::<StoreChoice>().unwrap_err();
            assert!(e.contains("etcd") || e.contains("embedded"), "{bad}: {e}");
        }
    }
}
