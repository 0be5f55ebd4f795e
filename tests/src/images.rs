//! Test images and registries for image tests.
//!
//! - The project's own busybox images, built by `cargo xtask test-images --out DIR` (the
//!   `images` tier of dev/test): [`test_images_dir`] finds them (`KEELSON_TEST_IMAGES`, default
//!   `/var/cache/keelson/target/test-images`) and [`need_test_images`] gives the skip reason
//!   when they are missing.
//! - [`DockerRegistry`]: Debian's `docker-registry` on a free loopback port, filesystem storage
//!   in a tempdir, optionally with htpasswd (bcrypt) basic auth; killed on drop.
//! - [`TokenRegistry`]: a minimal in-test registry that answers with a bearer challenge and
//!   hands out a token at its own realm for basic credentials, serving an OCI layout read-only.
//!   Why not `docker-registry`'s `token` auth: it needs a token server that signs JWTs with an
//!   X.509 key chain the registry trusts, which would bring a signing stack into the tests
//!   only to exercise the registry's verifier. What Keelson's code must get right is the client
//!   side of the challenge (realm, scope, basic credentials at the realm, bearer on every
//!   request), and that is what this server checks, strictly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The docker archive's tag.
pub const DOCKER_TAG: &str = "keelson.test/busybox:latest";

/// Where the test images are (`KEELSON_TEST_IMAGES`, default
/// `/var/cache/keelson/target/test-images`).
pub fn test_images_dir() -> PathBuf {
    std::env::var_os("KEELSON_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/keelson/target/test-images"))
}

/// `None` when the test images exist, else why a test needing them cannot run.
pub fn need_test_images() -> Option<String> {
    let dir = test_images_dir();
    let missing: Vec<&str> = ["busybox-oci/index.json", "busybox-oci.tar", "busybox-docker.tar"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "test images missing in {} ({}): run `cargo xtask test-images --out {}` (the images tier of dev/test)",
            dir.display(),
            missing.join(", "),
            dir.display()
        )
    })
}

/// The OCI layout directory.
pub fn oci_layout() -> PathBuf {
    test_images_dir().join("busybox-oci")
}

/// The OCI layout as a tar.
pub fn oci_tar() -> PathBuf {
    test_images_dir().join("busybox-oci.tar")
}

/// The `docker save` archive.
pub fn docker_tar() -> PathBuf {
    test_images_dir().join("busybox-docker.tar")
}

/// `None` when `binary` is on the machine, else the reason (and the package to install).
pub fn need_binary(binary: &str, package: &str) -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false);
    (!found)
        .then(|| format!("{binary} not found (Debian package {package}, installed by dev/setup)"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("registry exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("registry did not listen on 127.0.0.1:{port} within 15 s")
}

/// Debian's `docker-registry`, on loopback, killed on drop.
#[derive(Debug)]
pub struct DockerRegistry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// Filesystem storage (`<storage>/docker/registry/v2/...`).
    pub storage: PathBuf,
    /// Basic credentials, if htpasswd auth is on.
    pub creds: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// Starts a registry; with `creds`, htpasswd auth (bcrypt, written by `htpasswd -B`).
    pub fn start(creds: Option<(&str, &str)>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((user, pass)) = creds {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-nbB", user, pass])
                .output()
                .context("running htpasswd (apache2-utils)")?;
            ensure!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&htpasswd, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: keelson-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log"))?)
            .spawn()
            .context("starting docker-registry")?;
        if let Err(e) = wait_for_port(port, &mut child) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            storage,
            creds: creds.map(|(u, p)| (u.to_owned(), p.to_owned())),
            _dir: dir,
        })
    }

    /// Copies an OCI layout's `tag` (all platforms) to `repo:tag` with skopeo.
    pub fn push_oci_layout(&self, layout: &Path, tag: &str, repo: &str) -> Result<String> {
        self.push_oci_layout_with(layout, tag, repo, &[])
    }

    /// As [`DockerRegistry::push_oci_layout`], with extra `skopeo copy` arguments (for
    /// example `--format v2s2` to store Docker v2 media types).
    pub fn push_oci_layout_with(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        extra: &[&str],
    ) -> Result<String> {
        let dest = format!("{}/{repo}:{tag}", self.addr);
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--all", "--quiet", "--dest-tls-verify=false"]);
        cmd.args(extra);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .context("running skopeo")?;
        ensure!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(dest)
    }

    /// The storage file of a blob.
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal registry with bearer-token auth, serving one OCI layout read-only.
///
/// `GET /v2/` and every content request without `Authorization: Bearer <token>` get
/// `401` with `WWW-Authenticate: Bearer realm="http://127.0.0.1:<port>/token",service="keelson-test"`.
/// `GET /token?service=…&scope=repository:<repo>:pull` with the right basic credentials returns
/// `{"token": …}`. Manifests by tag (the layout's `ref.name`) or digest, blobs by digest.
#[derive(Debug)]
pub struct TokenRegistry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The token handed out.
    pub token: String,
    /// Requests seen: `METHOD path auth-scheme`.
    pub log: Arc<Mutex<Vec<String>>>,
    blobs: Arc<BlobStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Concurrency of blob downloads, and an artificial delay to make overlaps observable.
#[derive(Debug, Default)]
struct BlobStats {
    delay_ms: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct TokenState {
    blobs: Arc<BlobStats>,
    layout: PathBuf,
    token: String,
    basic: String,
    realm: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl TokenRegistry {
    /// Serves `layout` with basic credentials `user`/`pass` accepted at the token realm.
    pub fn start(layout: &Path, user: &str, pass: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let token = format!("keelson-token-{:x}", std::process::id());
        let log = Arc::new(Mutex::new(Vec::new()));
        let blobs = Arc::new(BlobStats::default());
        let state = Arc::new(TokenState {
            blobs: blobs.clone(),
            layout: layout.to_owned(),
            token: token.clone(),
            basic: format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())),
            realm: format!("http://{addr}/token"),
            log: log.clone(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let state = state.clone();
                        std::thread::spawn(move || {
                            let _ = serve(stream, &state);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self { addr, token, log, blobs, stop, thread: Some(thread) })
    }

    /// Delays every blob response by `ms` milliseconds.
    pub fn set_blob_delay(&self, ms: u64) {
        self.blobs.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The most blob downloads that were in flight at once.
    pub fn max_parallel_blobs(&self) -> usize {
        self.blobs.max_in_flight.load(Ordering::SeqCst)
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) -> Result<()> {
    let mut resp =
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    stream.write_all(resp.as_bytes())?;
    if !head {
        stream.write_all(body)?;
    }
    stream.flush()?;
    Ok(())
}

fn serve(stream: TcpStream, st: &TokenState) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) =
        (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    if let Some(len) = headers.get("content-length").and_then(|l| l.parse::<u64>().ok()) {
        std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
    }
    let auth = headers.get("authorization").cloned().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if let Ok(mut log) = st.log.lock() {
        log.push(format!("{method} {path} {}", auth.split(' ').next().unwrap_or("-")));
    }
    let head = method == "HEAD";

    if path == "/token" {
        if auth != st.basic {
            return respond(
                &mut stream,
                "401 Unauthorized",
                &[],
                b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
                head,
            );
        }
        if !query.contains("scope=repository") {
            return respond(&mut stream, "400 Bad Request", &[], b"no scope", head);
        }
        let body =
            format!("{{\"token\":\"{0}\",\"access_token\":\"{0}\",\"expires_in\":300}}", st.token);
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
            head,
        );
    }
    if auth != format!("Bearer {}", st.token) {
        let challenge = format!(
            "Bearer realm=\"{}\",service=\"keelson-test\",scope=\"repository:busybox:pull\"",
            st.realm
        );
        return respond(
            &mut stream,
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge), ("Content-Type", "application/json".into())],
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
            head,
        );
    }
    if path == "/v2/" || path == "/v2" {
        return respond(&mut stream, "200 OK", &[], b"{}", head);
    }
    let blob = |digest: &str| -> Option<Vec<u8>> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        std::fs::read(st.layout.join("blobs/sha256").join(hex)).ok()
    };
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    if let Some((_, reference)) = rest.rsplit_once("/manifests/") {
        let digest = if reference.starts_with("sha256:") {
            reference.to_owned()
        } else {
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(st.layout.join("index.json"))?)?;
            let found = index["manifests"].as_array().into_iter().flatten().find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(reference)
            });
            match found.and_then(|m| m["digest"].as_str()) {
                Some(d) => d.to_owned(),
                None => return respond(&mut stream, "404 Not Found", &[], b"{}", head),
            }
        };
        let Some(data) = blob(&digest) else {
            return respond(&mut stream, "404 Not Found", &[], b"{}", head);
        };
        let v: serde_json::Value = serde_json::from_slice(&data)?;
        let mt = v["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_owned();
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", mt), ("Docker-Content-Digest", digest)],
            &data,
            head,
        );
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let stats = &st.blobs;
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(stats.delay_ms.load(Ordering::SeqCst)));
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        return match blob(digest) {
            Some(data) => respond(
                &mut stream,
                "200 OK",
                &[
                    ("Content-Type", "application/octet-stream".into()),
                    ("Docker-Content-Digest", digest.to_owned()),
                ],
                &data,
                head,
            ),
            None => respond(&mut stream, "404 Not Found", &[], b"{}", head),
        };
    }
    respond(&mut stream, "404 Not Found", &[], b"{}", head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
