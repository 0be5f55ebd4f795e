//! The control plane's PKI: a cluster CA made on first start, the API server's serving
//! certificate, an admin client certificate, and `admin.kubeconfig`, kept in the data
//! directory and reused on every start (same CA, keys and credentials after a restart).
//!
//! Files under `DIR/pki` (directory 0700, keys 0600): `ca.{crt,key}`, `apiserver.{crt,key}`
//! with `apiserver.sans` (a change of listen or advertise address re-issues the serving
//! certificate under the same CA), `admin.{crt,key}`. Keys are ECDSA P-256 (ring).
//!
//! Identities follow Kubernetes' x509 authenticator: the subject's Common Name is the user
//! name, each Organization a group. The admin is `kubernetes-admin` in `system:masters`.
//!
//! Expiry and rotation: the CA is valid for ten years, the serving and admin certificates for
//! one, as kubeadm's. At every start a leaf certificate with less than [`RENEW_BEFORE`] left (or
//! already expired, or unreadable) is re-issued under the same CA with a new key, so a server
//! restarted at least once a month never serves an expired certificate; the admin kubeconfig
//! is rewritten with the new credentials. A CA near its end is reported, not replaced (a new CA
//! would lock out every client and node).

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The admin's user name.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The admin's group: full access.
pub const ADMIN_GROUP: &str = "system:masters";
/// The `kubernetes` Service's address in the default service CIDR (10.96.0.0/12); the
/// serving certificate names it so pods can verify the server through the Service.
pub const DEFAULT_SERVICE_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 1));

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate could not be made or parsed.
    #[error("{what}")]
    Rcgen {
        /// Which one.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A stored PEM file does not parse.
    #[error("parse {what}")]
    Pem {
        /// Which one.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration.
    #[error("tls server configuration")]
    Rustls(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("tls client verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// The kubeconfig could not be serialised.
    #[error("serialise the kubeconfig")]
    Kubeconfig(#[source] serde_yaml_ng::Error),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate and its key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The certificate.
    pub crt: String,
    /// Its private key.
    pub key: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("crt", &self.crt).finish_non_exhaustive()
    }
}

/// The cluster CA and the certificates made from it.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    /// The cluster CA.
    pub ca: Credential,
    /// The API server's serving certificate.
    pub apiserver: Credential,
    /// The admin client certificate.
    pub admin: Credential,
}

/// The user a verified client certificate authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The subject's Common Name.
    pub name: String,
    /// The subject's Organizations.
    pub groups: Vec<String>,
}

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |source| Error::Rcgen { what, source }
}

fn read(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { op: "read", path: path.to_owned(), source }),
    }
}

/// Writes `data` whole (temporary file, fsync, rename) with `mode`.
pub fn write_file(path: &Path, data: &str, mode: u32) -> Result<()> {
    let io = |op, source| Error::Io { op, path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.write_all(data.as_bytes()).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

fn load_pair(dir: &Path, name: &str) -> Result<Option<Credential>> {
    let crt = read(&dir.join(format!("{name}.crt")))?;
    let key = read(&dir.join(format!("{name}.key")))?;
    Ok(match (crt, key) {
        (Some(crt), Some(key)) => Some(Credential { crt, key }),
        _ => None,
    })
}

fn store_pair(dir: &Path, name: &str, c: &Credential) -> Result<()> {
    // Key first: a certificate on disk always has its key.
    write_file(&dir.join(format!("{name}.key")), &c.key, 0o600)?;
    write_file(&dir.join(format!("{name}.crt")), &c.crt, 0o644)
}

/// A leaf certificate's lifetime.
pub const LEAF_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
/// The CA's lifetime.
pub const CA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
/// A leaf certificate with less than this left is re-issued at start.
pub const RENEW_BEFORE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Sets a validity window from an hour ago (clock skew) for `lifetime`.
fn validity(params: &mut CertificateParams, lifetime: std::time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + lifetime;
}

/// How long a PEM certificate has left (negative: expired); `None` when it does not parse.
pub fn remaining(crt_pem: &str) -> Option<i64> {
    let der = CertificateDer::from_pem_slice(crt_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    Some(not_after - time::OffsetDateTime::now_utc().unix_timestamp())
}

fn due(c: &Credential) -> bool {
    remaining(&c.crt).is_none_or(|left| left < RENEW_BEFORE.as_secs() as i64)
}

fn new_ca() -> Result<Credential> {
    let key = KeyPair::generate().map_err(rc("generate the CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA parameters"))?;
    validity(&mut params, CA_VALIDITY);
    params.distinguished_name.push(DnType::CommonName, "kubernetes");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let crt = params.self_signed(&key).map_err(rc("self-sign the CA"))?;
    Ok(Credential { crt: crt.pem(), key: key.serialize_pem() })
}

fn issue(ca: &Credential, mut params: CertificateParams, what: &str) -> Result<Credential> {
    validity(&mut params, LEAF_VALIDITY);
    let ca_key = KeyPair::from_pem(&ca.key).map_err(rc("parse the CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.crt, ca_key).map_err(rc("parse the CA certificate"))?;
    let key = KeyPair::generate().map_err(rc(format!("generate the {what} key")))?;
    let crt =
        params.signed_by(&key, &issuer).map_err(rc(format!("sign the {what} certificate")))?;
    Ok(Credential { crt: crt.pem(), key: key.serialize_pem() })
}

/// The names the serving certificate carries: the given addresses, loopback, `localhost` and
/// the `kubernetes` Service's names and address, without duplicates, in that order.
/// Unspecified addresses (`0.0.0.0`) are skipped.
pub fn server_names(addresses: &[IpAddr], service_ip: IpAddr) -> Vec<String> {
    let loopback: [IpAddr; 2] = [[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    let ips = addresses
        .iter()
        .chain(&loopback)
        .chain([&service_ip])
        .filter(|ip| !ip.is_unspecified())
        .map(ToString::to_string);
    let dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .map(str::to_owned);
    let mut names: Vec<String> = Vec::new();
    for n in ips.chain(dns) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

impl Pki {
    /// Loads the PKI under `dir`, creating what is missing: the CA only if there is none (a
    /// new CA would lock out every client), the serving certificate also when `sans` changed.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            op: "create",
            path: dir.to_owned(),
            source,
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|source| Error::Io { op: "chmod", path: dir.to_owned(), source })?;
        let ca = match load_pair(dir, "ca")? {
            Some(ca) => {
                if remaining(&ca.crt).is_some_and(|left| left < RENEW_BEFORE.as_secs() as i64) {
                    tracing::warn!(dir = %dir.display(), "the cluster CA expires within 30 days; plan a CA rotation");
                }
                ca
            }
            None => {
                let ca = new_ca()?;
                store_pair(dir, "ca", &ca)?;
                tracing::info!(dir = %dir.display(), "created the cluster CA");
                ca
            }
        };
        let sans_path = dir.join("apiserver.sans");
        let wanted = sans.join("\n");
        let apiserver = match (load_pair(dir, "apiserver")?, read(&sans_path)?) {
            (Some(s), Some(had)) if had == wanted && !due(&s) => s,
            _ => {
                let mut params = CertificateParams::new(sans.to_vec())
                    .map_err(rc("serving certificate names"))?;
                params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                let s = issue(&ca, params, "serving")?;
                store_pair(dir, "apiserver", &s)?;
                write_file(&sans_path, &wanted, 0o644)?;
                tracing::info!(?sans, "issued the API server's serving certificate");
                s
            }
        };
        let admin = match load_pair(dir, "admin")? {
            Some(c) if !due(&c) => c,
            _ => {
                let mut params =
                    CertificateParams::new(Vec::<String>::new()).map_err(rc("admin parameters"))?;
                params.distinguished_name.push(DnType::CommonName, ADMIN_USER);
                params.distinguished_name.push(DnType::OrganizationName, ADMIN_GROUP);
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let c = issue(&ca, params, "admin")?;
                store_pair(dir, "admin", &c)?;
                c
            }
        };
        Ok(Pki { dir: dir.to_owned(), ca, apiserver, admin })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TLS server side: the serving certificate; client certificates are verified against
    /// the CA when presented but not required, so that a client without one gets a Kubernetes
    /// 401 rather than a failed handshake. ALPN offers HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca.crt, "the CA certificate")? {
            roots.add(c).map_err(Error::Rustls)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(Error::Verifier)?;
        let key = PrivateKeyDer::from_pem_slice(self.apiserver.key.as_bytes())
            .map_err(|source| Error::Pem { what: "the serving key", source })?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Rustls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.apiserver.crt, "the serving certificate")?, key)
            .map_err(Error::Rustls)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A kubeconfig (YAML) for the admin reaching the server at `server` (`https://…`).
    pub fn admin_kubeconfig(&self, server: &str) -> Result<String> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "keelson", "cluster": {
                "server": server, "certificate-authority-data": b64(&self.ca.crt) } }],
            "users": [{ "name": ADMIN_USER, "user": {
                "client-certificate-data": b64(&self.admin.crt), "client-key-data": b64(&self.admin.key) } }],
            "contexts": [{ "name": "admin@keelson", "context": { "cluster": "keelson", "user": ADMIN_USER } }],
            "current-context": "admin@keelson",
            "preferences": {},
        });
        serde_yaml_ng::to_string(&config).map_err(Error::Kubeconfig)
    }
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem { what, source })
}

/// The user a (CA-verified) client certificate authenticates, or `None` when it does not parse
/// or has no Common Name.
pub fn user_of(cert_der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(UserInfo { name, groups })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    fn sans() -> Vec<String> {
        server_names(&["0.0.0.0".parse().unwrap()], DEFAULT_SERVICE_IP)
    }

    #[test]
    fn pki_survives_a_restart_with_the_same_ca_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &sans()).unwrap();
        let second = Pki::load_or_create(dir.path(), &sans()).unwrap();
        assert_eq!(
            (&first.ca, &first.apiserver, &first.admin),
            (&second.ca, &second.apiserver, &second.admin)
        );
        for key in ["ca.key", "apiserver.key", "admin.key"] {
            assert_eq!(
                fs::metadata(dir.path().join(key)).unwrap().permissions().mode() & 0o777,
                0o600,
                "{key}"
            );
        }
    }

    #[test]
    fn certificates_expire_and_those_near_their_end_are_reissued_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &sans()).unwrap();
        let day = 24 * 3600;
        let leaf = remaining(&first.apiserver.crt).unwrap();
        assert!((364 * day..=366 * day).contains(&leaf), "a leaf lives a year: {leaf} s");
        let ca = remaining(&first.ca.crt).unwrap();
        assert!(ca > 9 * 365 * day, "the CA lives ten years: {ca} s");
        // A serving certificate with 10 days left (issued by the same CA) is renewed at start.
        let mut params = CertificateParams::new(sans()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let ca_key = KeyPair::from_pem(&first.ca.key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&first.ca.crt, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(355);
        params.not_after = now + time::Duration::days(10);
        let old = Credential {
            crt: params.signed_by(&key, &issuer).unwrap().pem(),
            key: key.serialize_pem(),
        };
        store_pair(dir.path(), "apiserver", &old).unwrap();
        let second = Pki::load_or_create(dir.path(), &sans()).unwrap();
        assert_ne!(second.apiserver, old, "the serving certificate was renewed");
        assert!(remaining(&second.apiserver.crt).unwrap() > 300 * day);
        assert_eq!(second.ca, first.ca, "same CA");
        assert_eq!(second.admin, first.admin, "the admin certificate was not due");
        // An unreadable one is reissued too.
        fs::write(dir.path().join("admin.crt"), "garbage").unwrap();
        let third = Pki::load_or_create(dir.path(), &sans()).unwrap();
        assert!(remaining(&third.admin.crt).is_some());
    }

    #[test]
    fn a_new_advertise_address_reissues_only_the_serving_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &sans()).unwrap();
        let other = server_names(&["192.0.2.9".parse().unwrap()], DEFAULT_SERVICE_IP);
        let second = Pki::load_or_create(dir.path(), &other).unwrap();
        assert_eq!(first.ca, second.ca);
        assert_eq!(first.admin, second.admin);
        assert_ne!(first.apiserver, second.apiserver);
    }

    #[test]
    fn serving_names_cover_loopback_the_service_and_given_addresses() {
        let names = server_names(
            &["192.0.2.9".parse().unwrap(), "0.0.0.0".parse().unwrap()],
            DEFAULT_SERVICE_IP,
        );
        for n in [
            "192.0.2.9",
            "127.0.0.1",
            "::1",
            "10.96.0.1",
            "localhost",
            "kubernetes.default.svc.cluster.local",
        ] {
            assert!(names.contains(&n.to_owned()), "{n}");
        }
        assert!(!names.contains(&"0.0.0.0".to_owned()));
    }

    #[test]
    fn the_admin_certificate_authenticates_as_a_cluster_admin() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &sans()).unwrap();
        assert_eq!(
            user_of(&der(&pki.admin.crt)),
            Some(UserInfo { name: ADMIN_USER.into(), groups: vec![ADMIN_GROUP.into()] })
        );
        assert_eq!(user_of(b"garbage"), None);
        pki.server_config().unwrap();
        let kubeconfig = pki.admin_kubeconfig("https://127.0.0.1:6443").unwrap();
        assert!(kubeconfig.contains("server: https://127.0.0.1:6443"));
        assert!(kubeconfig.contains("client-key-data:"));
    }
}
