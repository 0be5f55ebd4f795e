//! The node API's PKI: a CA made on first start, the agent's serving certificate, and client
//! certificates for the two roles, kept under a directory and reused on every start.
//!
//! Like Talos, the role is the client certificate subject's Organization
//! ([`keelson_agentctl::ROLE_ADMIN`], [`keelson_agentctl::ROLE_READER`]); the server trusts
//! only certificates its own CA signed, so the Organization cannot be forged.
//!
//! Files (keys mode 0600, the directory 0700): `ca.{crt,key}`, `server.{crt,key}` with
//! `server.sans` (the names it was issued for: a change of host name or addresses re-issues
//! it with the same CA), `admin.{crt,key}`, `reader.{crt,key}`. Keys are ECDSA P-256 (ring).
//! Certificates keep rcgen's default validity (1975 to 4096): an edge node without a
//! real-time clock may boot in 1970-something, and a node must stay reachable regardless.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keelson_agentctl::config::{AgentctlConfig, Context};
use keelson_agentctl::{ROLE_ADMIN, ROLE_READER};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::Role;

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
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
    /// The stored credentials do not make a TLS configuration.
    #[error("tls configuration from {dir}")]
    Tls {
        /// The PKI directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: keelson_agentctl::tls::TlsError,
    },
    /// rustls refused the configuration.
    #[error("tls server configuration")]
    Rustls(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("tls client verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// `Result` of this module.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

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

/// The node API's CA and certificates.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    /// The CA (its certificate PEM and key).
    pub ca: Credential,
    /// The agent's serving certificate.
    pub server: Credential,
    /// The admin client certificate.
    pub admin: Credential,
    /// The reader client certificate.
    pub reader: Credential,
}

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Rcgen { what, source }
}

fn read(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io { op: "read", path: path.to_owned(), source }),
    }
}

/// Writes `data` whole (temporary file, then rename) with `mode`.
pub(crate) fn write_file(path: &Path, data: &str, mode: u32) -> Result<()> {
    let io = |op, source| PkiError::Io { op, path: path.to_owned(), source };
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

fn new_ca() -> Result<Credential> {
    let key = KeyPair::generate().map_err(rc("generate the CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA parameters"))?;
    params.distinguished_name.push(DnType::CommonName, "keelson node API CA");
    params.distinguished_name.push(DnType::OrganizationName, "keelson");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let crt = params.self_signed(&key).map_err(rc("self-sign the CA"))?;
    Ok(Credential { crt: crt.pem(), key: key.serialize_pem() })
}

fn issue(ca: &Credential, params: CertificateParams, what: &str) -> Result<Credential> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(rc("parse the CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.crt, ca_key).map_err(rc("parse the CA certificate"))?;
    let key = KeyPair::generate().map_err(rc(format!("generate the {what} key")))?;
    let crt =
        params.signed_by(&key, &issuer).map_err(rc(format!("sign the {what} certificate")))?;
    Ok(Credential { crt: crt.pem(), key: key.serialize_pem() })
}

fn server_params(sans: &[String]) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(sans.to_vec()).map_err(rc("server names"))?;
    params.distinguished_name.push(DnType::CommonName, "keelson agent");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

fn client_params(role: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("client params"))?;
    params.distinguished_name.push(DnType::CommonName, role);
    params.distinguished_name.push(DnType::OrganizationName, role);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// The names the serving certificate carries: the host name, the configured addresses, and
/// the loopback addresses, without duplicates, in that order.
pub fn server_names(hostname: &str, addresses: &[IpAddr]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let loopback: [IpAddr; 2] = [[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    let candidates = std::iter::once(hostname.to_owned())
        .chain(addresses.iter().chain(loopback.iter()).map(ToString::to_string));
    for n in candidates {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

impl Pki {
    /// Loads the PKI under `dir`, creating what is missing: the CA only if there is none
    /// (a new CA would lock out every existing client), the serving certificate also when its
    /// names (see [`server_names`]) changed.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            op: "create",
            path: dir.to_owned(),
            source,
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|source| PkiError::Io { op: "chmod", path: dir.to_owned(), source })?;
        let ca = match load_pair(dir, "ca")? {
            Some(ca) => ca,
            None => {
                let ca = new_ca()?;
                store_pair(dir, "ca", &ca)?;
                tracing::info!(dir = %dir.display(), "created the node API CA");
                ca
            }
        };
        let sans_path = dir.join("server.sans");
        let wanted = sans.join("\n");
        let server = match (load_pair(dir, "server")?, read(&sans_path)?) {
            (Some(s), Some(had)) if had == wanted => s,
            _ => {
                let s = issue(&ca, server_params(sans)?, "server")?;
                store_pair(dir, "server", &s)?;
                write_file(&sans_path, &wanted, 0o644)?;
                tracing::info!(?sans, "issued the node API serving certificate");
                s
            }
        };
        let client = |name: &str, role: &str| -> Result<Credential> {
            if let Some(c) = load_pair(dir, name)? {
                return Ok(c);
            }
            let c = issue(&ca, client_params(role)?, name)?;
            store_pair(dir, name, &c)?;
            Ok(c)
        };
        let admin = client("admin", ROLE_ADMIN)?;
        let reader = client("reader", ROLE_READER)?;
        Ok(Pki { dir: dir.to_owned(), ca, server, admin, reader })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TLS server side: this serving certificate, and a client certificate signed by the
    /// CA required in every handshake.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        use keelson_agentctl::tls;
        let tls_err = |source| PkiError::Tls { dir: self.dir.clone(), source };
        let provider = tls::provider();
        let roots = Arc::new(tls::roots(&self.ca.crt).map_err(tls_err)?);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(PkiError::Verifier)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(PkiError::Rustls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                tls::certs(&self.server.crt, "the server certificate").map_err(tls_err)?,
                tls::key(&self.server.key, "the server key").map_err(tls_err)?,
            )
            .map_err(PkiError::Rustls)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// An agentctl config for `role` reaching this node at `endpoints`.
    pub fn agentctl_config(
        &self,
        context: &str,
        endpoints: Vec<String>,
        role: Role,
    ) -> AgentctlConfig {
        let c = match role {
            Role::Admin => &self.admin,
            Role::Reader => &self.reader,
        };
        AgentctlConfig::single(
            context,
            Context {
                endpoints,
                ca: Some(self.ca.crt.clone()),
                crt: Some(c.crt.clone()),
                key: Some(c.key.clone()),
            },
        )
    }
}

/// The role a verified client certificate grants: the subject's Organization. `None` for a
/// certificate without a known role.
pub fn role_of(cert_der: &[u8]) -> Option<Role> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let mut role = None;
    for org in cert.subject().iter_organization() {
        match org.as_str().ok()? {
            ROLE_ADMIN => return Some(Role::Admin),
            ROLE_READER => role = Some(Role::Reader),
            _ => {}
        }
    }
    role
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<u8> {
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn pki_survives_a_restart_with_the_same_ca_and_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let sans = server_names("node1", &[]);
        let first = Pki::load_or_create(dir.path(), &sans).unwrap();
        let second = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(first.ca, second.ca);
        assert_eq!(first.server, second.server);
        assert_eq!(first.admin, second.admin);
        assert_eq!(first.reader, second.reader);
        for key in ["ca.key", "server.key", "admin.key", "reader.key"] {
            let mode = fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn new_server_names_reissue_the_serving_certificate_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &server_names("a", &[])).unwrap();
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        let second = Pki::load_or_create(dir.path(), &server_names("a", &[addr])).unwrap();
        assert_eq!(first.ca, second.ca);
        assert_ne!(first.server, second.server);
        assert_eq!(first.admin, second.admin);
    }

    #[test]
    fn client_certificates_carry_their_role() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &server_names("a", &[])).unwrap();
        assert_eq!(role_of(&der(&pki.admin.crt)), Some(Role::Admin));
        assert_eq!(role_of(&der(&pki.reader.crt)), Some(Role::Reader));
        assert_eq!(role_of(&der(&pki.server.crt)), None);
        assert_eq!(role_of(b"not a certificate"), None);
    }

    #[test]
    fn server_names_include_loopback_once() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let names = server_names("n", &[v4]);
        assert_eq!(names, vec!["n", "127.0.0.1", "::1"]);
    }

    #[test]
    fn the_server_tls_configuration_builds() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &server_names("a", &[])).unwrap();
        let cfg = pki.server_config().unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
    }
}
