//! The audit log: one `audit.k8s.io/v1` `Event` per request as a JSON line, at upstream's
//! `Metadata` level (who, what, where from, which object, the answer's code, when), stage
//! `ResponseComplete` (`ResponseStarted` for watches, which stream on), written to
//! `--audit-log-path` (default `DIR/audit.log`).
//!
//! - Lines are appended by one writer task through a bounded queue, so a slow disk never
//!   stalls requests; a full queue drops the event and counts it in the log's own warnings,
//!   as upstream's batch backend does.
//! - The file rotates at [`MAX_BYTES`] into `audit.log.1` … `.3` (upstream's
//!   `--audit-log-maxsize`/`--audit-log-maxbackup`), and is created 0600: it names users and
//!   objects.
//! - Request and response bodies are never logged (upstream's `Request` and
//!   `RequestResponse` levels are not offered: they would copy Secrets into the log).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The size at which the log rotates.
pub const MAX_BYTES: u64 = 100 * 1024 * 1024;
/// How many rotated files are kept.
pub const MAX_BACKUPS: u32 = 3;

/// The peer's address, set per connection by the listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Where events go.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Value>,
}

impl AuditLog {
    /// Starts the writer for `path` (created 0600 if missing; appended to).
    pub fn start(path: PathBuf) -> std::io::Result<AuditLog> {
        let file = open(&path)?;
        let (tx, rx) = mpsc::channel::<Value>(4096);
        std::thread::Builder::new()
            .name("keelson-audit".into())
            .spawn(move || write_loop(path, file, rx))?;
        Ok(AuditLog { tx })
    }

    fn record(&self, event: Value) {
        if self.tx.try_send(event).is_err() {
            tracing::warn!("the audit queue is full: an event was dropped");
        }
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

fn rotate(path: &Path) -> std::io::Result<std::fs::File> {
    for i in (1..MAX_BACKUPS).rev() {
        let from = path.with_extension(format!("log.{i}"));
        if from.exists() {
            std::fs::rename(&from, path.with_extension(format!("log.{}", i + 1)))?;
        }
    }
    std::fs::rename(path, path.with_extension("log.1"))?;
    open(path)
}

fn write_loop(path: PathBuf, file: std::fs::File, mut rx: mpsc::Receiver<Value>) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::new(file);
    while let Some(event) = rx.blocking_recv() {
        let mut line = event.to_string();
        line.push('\n');
        if out.write_all(line.as_bytes()).is_err() {
            tracing::warn!(path = %path.display(), "write the audit log");
            continue;
        }
        size += line.len() as u64;
        // Flush when the queue is drained: a burst shares one write.
        if rx.is_empty() {
            let _ = out.flush();
        }
        if size >= MAX_BYTES {
            let _ = out.flush();
            match rotate(&path) {
                Ok(f) => {
                    out = std::io::BufWriter::new(f);
                    size = 0;
                }
                Err(e) => tracing::warn!(error = %e, "rotate the audit log"),
            }
        }
    }
    let _ = out.flush();
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The middleware that records every request.
pub async fn record(
    log: axum::extract::State<Arc<AuditLog>>,
    request: Request,
    next: Next,
) -> Response {
    let received = now();
    let info = crate::auth::request::parse(
        request.method().as_str(),
        request.uri().path(),
        request.uri().query(),
    );
    let peer = request.extensions().get::<Peer>().map(|p| p.0.ip().to_string());
    let agent = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let uri = request.uri().to_string();
    let audit_id = crate::objects::new_uid();
    let response = next.run(request).await;
    // The authentication middleware, inside this one, hands the user back on the response.
    let user = response.extensions().get::<crate::auth::User>();
    let mut event = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": if info.verb == "watch" { "ResponseStarted" } else { "ResponseComplete" },
        "requestURI": uri,
        "verb": info.verb,
        "user": match user {
            Some(u) if u.uid.is_empty() => json!({ "username": u.name, "groups": u.groups }),
            Some(u) => json!({ "username": u.name, "uid": u.uid, "groups": u.groups }),
            None => json!({ "username": "system:anonymous", "groups": ["system:unauthenticated"] }),
        },
        "sourceIPs": peer.into_iter().collect::<Vec<_>>(),
        "responseStatus": { "metadata": {}, "code": response.status().as_u16() },
        "requestReceivedTimestamp": received,
        "stageTimestamp": now(),
    });
    if let Some(a) = agent {
        event["userAgent"] = json!(a);
    }
    if !info.resource.is_empty() {
        let mut r = json!({ "resource": info.resource, "apiVersion": info.api_version });
        if !info.api_group.is_empty() {
            r["apiGroup"] = json!(info.api_group);
        }
        for (k, v) in [
            ("namespace", &info.namespace),
            ("name", &info.name),
            ("subresource", &info.subresource),
        ] {
            if !v.is_empty() {
                r[k] = json!(v);
            }
        }
        event["objectRef"] = r;
    }
    log.record(event);
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    #[test]
    fn the_log_rotates_and_keeps_three_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        for i in 0..5 {
            std::fs::write(&path, format!("generation {i}")).unwrap();
            rotate(&path).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "a fresh file after rotating");
        assert_eq!(std::fs::read_to_string(path.with_extension("log.1")).unwrap(), "generation 4");
        assert_eq!(std::fs::read_to_string(path.with_extension("log.3")).unwrap(), "generation 2");
        assert!(!path.with_extension("log.4").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
