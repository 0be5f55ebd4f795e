//! TLS for the node API: rustls with the ring provider only (the workspace bans aws-lc), and
//! ALPN `h2`. tonic is built without its TLS features; the client terminates TLS itself and
//! hands tonic the stream (the agent does the same on its side).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Errors of building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM document did not parse.
    #[error("{what} is not valid PEM")]
    Pem {
        /// Which document.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM document holds no certificate.
    #[error("{0} holds no certificate")]
    Empty(&'static str),
    /// rustls refused the configuration.
    #[error("tls configuration")]
    Rustls(#[from] rustls::Error),
    /// The CA certificate cannot be a trust anchor.
    #[error("the CA certificate cannot be trusted")]
    Anchor(#[source] rustls::Error),
    /// A host that is neither a DNS name nor an IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// The ring provider, the only one the workspace builds.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM text.
pub fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(what));
    }
    Ok(certs)
}

/// The private key in a PEM text.
pub fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Pem { what, source })
}

/// A root store holding the PEM CA.
pub fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, "the CA certificate")? {
        roots.add(c).map_err(TlsError::Anchor)?;
    }
    Ok(roots)
}

/// The client side: trusts only `ca_pem`, presents `crt_pem` with `key_pem`.
pub fn client_config(
    ca_pem: &str,
    crt_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            certs(crt_pem, "the client certificate")?,
            key(key_pem, "the client key")?,
        )?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The name the server's certificate must carry for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}
