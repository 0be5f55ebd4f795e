//! `keelson controlplane snapshot save|restore` for the embedded store, as `etcdctl snapshot`
//! is for etcd.
//!
//! - **save** copies the store at one revision (an MVCC snapshot of every table; writes go on)
//!   to a new file, fsynced, then renamed into place. If the server is running it holds the
//!   database, so the copy is made by the server: `GET /keelson/v1/snapshot` (cluster admins
//!   only), fetched with the data dir's admin kubeconfig; otherwise the file is opened
//!   directly.
//! - **restore** refuses while a server holds the data dir, checks that the snapshot is a store
//!   this build reads, keeps the current `store.redb` as `store.redb.before-restore-<unix
//!   time>`, and puts the snapshot in its place (copy, fsync, rename). Credentials in `pki/`
//!   are untouched, so clients keep working after the restart.
//!
//! A snapshot of an etcd-backed control plane is etcd's business (`etcdctl snapshot save`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use http_body_util::BodyExt;
use keelson_store::embedded::{self, EmbeddedStore};
use keelson_store::Revision;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The server's snapshot path.
pub const PATH: &str = "/keelson/v1/snapshot";

/// Why a snapshot could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be read, written or checked.
    #[error("the store")]
    Store(#[from] embedded::Error),
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The admin kubeconfig is unusable.
    #[error("the admin kubeconfig {path}: {why}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The running server could not be asked.
    #[error("ask the running server for a snapshot: {0}")]
    Server(String),
    /// The data dir is in use by a running server.
    #[error("a control plane is running on {0}; stop it before restoring")]
    Running(PathBuf),
    /// The target exists.
    #[error("{0} already exists")]
    Exists(PathBuf),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { what, path: path.to_path_buf(), source }
}

/// Whether the error says another process holds the database.
fn in_use(e: &embedded::Error) -> bool {
    format!("{e:?}").contains("DatabaseAlreadyOpen")
}

/// Saves a snapshot of the embedded store in `data_dir` to `dest` (which must not exist);
/// returns its revision.
pub async fn save(data_dir: &Path, dest: &Path) -> Result<Revision, Error> {
    if dest.exists() {
        return Err(Error::Exists(dest.to_path_buf()));
    }
    let tmp = dest.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let db = data_dir.join("store.redb");
    let revision = match embedded::verify(&db) {
        Err(e) if in_use(&e) => {
            fetch(&data_dir.join("admin.kubeconfig"), &tmp).await.map(|()| 0)?
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {
            let store = EmbeddedStore::open(
                &db,
                embedded::Options { history_window: None, ..Default::default() },
            )
            .await?;
            let r = store.snapshot(&tmp).await;
            store.close().await;
            r?
        }
    };
    let revision = match embedded::verify(&tmp) {
        Ok(r) => r.max(revision),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    std::fs::rename(&tmp, dest).map_err(io("rename into place", dest))?;
    Ok(revision)
}

/// Restores `snapshot` as the embedded store of `data_dir`; returns its revision and where the
/// previous store was kept.
pub fn restore(data_dir: &Path, snapshot: &Path) -> Result<(Revision, Option<PathBuf>), Error> {
    let revision = embedded::verify(snapshot)?;
    let db = data_dir.join("store.redb");
    let kept = if db.exists() {
        if let Err(e) = embedded::verify(&db) {
            if in_use(&e) {
                return Err(Error::Running(data_dir.to_path_buf()));
            }
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let kept = data_dir.join(format!("store.redb.before-restore-{secs}"));
        std::fs::rename(&db, &kept).map_err(io("keep the current store as", &kept))?;
        Some(kept)
    } else {
        std::fs::create_dir_all(data_dir).map_err(io("create", data_dir))?;
        None
    };
    let tmp = data_dir.join("store.redb.restoring");
    std::fs::copy(snapshot, &tmp).map_err(io("copy the snapshot to", &tmp))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &db).map_err(io("rename into place", &db))?;
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(io("sync", data_dir))?;
    Ok((revision, kept))
}

/// The server side: a snapshot of `store` streamed as the response body. The file is made
/// next to the database and unlinked once open, so nothing is left behind.
pub async fn serve(store: &EmbeddedStore) -> Result<axum::body::Body, Error> {
    let dir = store.path().parent().unwrap_or(Path::new(".")).to_path_buf();
    let tmp = dir.join(format!("snapshot-{}.tmp", hex::encode(rand::random::<[u8; 8]>())));
    let result = store.snapshot(&tmp).await;
    let file = tokio::fs::File::open(&tmp).await;
    let _ = std::fs::remove_file(&tmp);
    result?;
    let file = file.map_err(io("open", &tmp))?;
    let stream = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok(axum::body::Body::from_stream(stream))
}

/// Fetches the snapshot from the running server into `dest`.
async fn fetch(kubeconfig: &Path, dest: &Path) -> Result<(), Error> {
    let kc = Kubeconfig::read(kubeconfig)?;
    let tls = kc.tls(kubeconfig)?;
    let host = kc.server.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let tcp = tokio::net::TcpStream::connect(&host)
        .await
        .map_err(|e| Error::Server(format!("connect to {host}: {e}")))?;
    let name =
        host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_owned();
    let server_name = ServerName::try_from(name).map_err(|e| Error::Server(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| Error::Server(format!("TLS: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Error::Server(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::get(PATH)
        .header(http::header::HOST, &host)
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .map_err(|e| Error::Server(e.to_string()))?;
    let res = sender.send_request(req).await.map_err(|e| Error::Server(e.to_string()))?;
    let status = res.status();
    let mut body = res.into_body();
    if !status.is_success() {
        let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(Error::Server(format!("{status}: {}", String::from_utf8_lossy(&text))));
    }
    let mut out = tokio::fs::File::create(dest).await.map_err(io("create", dest))?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Server(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            out.write_all(data).await.map_err(io("write", dest))?;
        }
    }
    out.sync_all().await.map_err(io("sync", dest))?;
    Ok(())
}

/// The parts of a kubeconfig an admin client needs.
struct Kubeconfig {
    server: String,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Kubeconfig {
    fn read(path: &Path) -> Result<Kubeconfig, Error> {
        let bad = |why: String| Error::Kubeconfig { path: path.to_path_buf(), why };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: Value = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let current = v.get("current-context").and_then(Value::as_str).unwrap_or_default();
        let named = |list: &str, name: &str| -> Option<Value> {
            v.get(list)?
                .as_array()?
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
                .cloned()
        };
        let ctx =
            named("contexts", current).ok_or_else(|| bad(format!("no context {current:?}")))?;
        let cluster_name =
            ctx.pointer("/context/cluster").and_then(Value::as_str).unwrap_or_default();
        let user_name = ctx.pointer("/context/user").and_then(Value::as_str).unwrap_or_default();
        let cluster = named("clusters", cluster_name)
            .ok_or_else(|| bad(format!("no cluster {cluster_name:?}")))?;
        let user =
            named("users", user_name).ok_or_else(|| bad(format!("no user {user_name:?}")))?;
        let data = |v: &Value, ptr: &str| -> Result<Vec<u8>, Error> {
            let s =
                v.pointer(ptr).and_then(Value::as_str).ok_or_else(|| bad(format!("no {ptr}")))?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| bad(format!("{ptr}: {e}")))
        };
        Ok(Kubeconfig {
            server: cluster
                .pointer("/cluster/server")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            ca: data(&cluster, "/cluster/certificate-authority-data")?,
            cert: data(&user, "/user/client-certificate-data")?,
            key: data(&user, "/user/client-key-data")?,
        })
    }

    fn tls(&self, path: &Path) -> Result<rustls::ClientConfig, Error> {
        let bad = |why: String| Error::Kubeconfig { path: path.to_path_buf(), why };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(c.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| bad(e.to_string()))?;
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(e.to_string()))
    }
}
