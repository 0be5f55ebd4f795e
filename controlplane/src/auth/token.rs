//! Service-account tokens: JWTs signed with the cluster's service-account key, as upstream's
//! `pkg/serviceaccount/jwt.go` issues and checks them, restricted to bound tokens.
//!
//! - The key is ECDSA P-256 (ES256, ring), made on first start as `DIR/pki/sa.key` (PKCS#8
//!   PEM, 0600) next to the CA and kept; its `kid` is the unpadded base64url SHA-256 of the
//!   public point, so a verifier can tell keys apart after a rotation.
//! - Claims are upstream's private claims under `kubernetes.io` (namespace, service account,
//!   bound pod or secret, node) beside `iss`, `sub`, `aud`, `iat`, `nbf`, `exp` and `jti`.
//! - [`Signer::verify`] checks the signature, the issuer and the time window; the audience and
//!   the existence of the bound objects are the authenticator's checks
//!   ([`super::Auth`]). Legacy (secret-based, non-expiring) tokens are not issued nor accepted.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The issuer, and the API server's own audience.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Errors of the signing key and of token checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key file could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no usable P-256 key.
    #[error("the service-account key {path} is not a PKCS#8 P-256 key")]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// The key could not be generated or used.
    #[error("service-account key: {0}")]
    Crypto(&'static str),
    /// Writing the key failed.
    #[error("write the service-account key")]
    Write(#[source] crate::pki::Error),
    /// The token is not a well-formed JWT of ours.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with our key.
    #[error("invalid signature")]
    Signature,
    /// The token names another issuer.
    #[error("token issuer {0:?} is not {ISSUER}")]
    Issuer(String),
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// The token is not valid yet.
    #[error("token is not valid yet")]
    NotYetValid,
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A name and uid, as the claims name the service account and bound objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    /// The object's name.
    pub name: String,
    /// The object's uid.
    pub uid: String,
}

/// The `kubernetes.io` private claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Private {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: Ref,
    /// The pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    /// The secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    /// The node of the bound pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// A bound service-account token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `iss`.
    pub iss: String,
    /// `sub`: `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// `aud`.
    pub aud: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// The token's id.
    pub jti: String,
    /// Kubernetes' claims.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Private,
}

/// The service-account signing key.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unb64(data: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(data)
        .map_err(|_| Error::Malformed("bad base64url"))
}

const PEM_LABEL: &str = "PRIVATE KEY";

impl Signer {
    /// Loads `DIR/sa.key`, or makes and writes one on first start.
    pub fn load_or_create(pki_dir: &Path) -> Result<Signer> {
        let path = pki_dir.join("sa.key");
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let der = pem_body(&pem).ok_or_else(|| Error::BadKey { path: path.clone() })?;
                Signer::from_pkcs8(&der).map_err(|_| Error::BadKey { path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let doc =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| Error::Crypto("generate"))?;
                let signer = Signer::from_pkcs8(doc.as_ref())?;
                crate::pki::write_file(&path, &pem(doc.as_ref()), 0o600).map_err(Error::Write)?;
                tracing::info!(path = %path.display(), kid = %signer.kid, "made the service-account signing key");
                Ok(signer)
            }
            Err(source) => Err(Error::Io { op: "read", path, source }),
        }
    }

    /// A signer over a PKCS#8 P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| Error::Crypto("not a PKCS#8 P-256 key"))?;
        let kid = b64(&sha2::Sha256::digest(key.public_key().as_ref()));
        Ok(Signer { key, kid, rng })
    }

    /// A fresh key that is never written (tests, servers without a data directory).
    pub fn ephemeral() -> Result<Signer> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| Error::Crypto("generate"))?;
        Signer::from_pkcs8(doc.as_ref())
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (for `/openid/v1/jwks`).
    pub fn jwk(&self) -> serde_json::Value {
        let point = self.key.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 ‖ x ‖ y.
        let (x, y) = point.get(1..).map(|p| p.split_at(32)).unwrap_or((&[], &[]));
        serde_json::json!({
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": b64(x), "y": b64(y),
        })
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let header = serde_json::json!({ "alg": "ES256", "kid": self.kid });
        let payload = serde_json::to_vec(claims).map_err(|_| Error::Crypto("encode claims"))?;
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(&payload));
        let sig = self.key.sign(&self.rng, input.as_bytes()).map_err(|_| Error::Crypto("sign"))?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }

    /// Checks a token's signature, issuer and time window at `now` (Unix seconds); returns its
    /// claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Malformed("not a compact JWS"));
        };
        let header: serde_json::Value = serde_json::from_slice(&unb64(h)?)
            .map_err(|_| Error::Malformed("header is not JSON"))?;
        if header["alg"] != "ES256" {
            return Err(Error::Malformed("unsupported alg"));
        }
        let public = UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        let input_len = h.len() + 1 + p.len();
        public
            .verify(token.as_bytes().get(..input_len).unwrap_or_default(), &unb64(s)?)
            .map_err(|_| Error::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&unb64(p)?).map_err(|_| Error::Malformed("claims"))?;
        if claims.iss != ISSUER {
            return Err(Error::Issuer(claims.iss));
        }
        if now >= claims.exp {
            return Err(Error::Expired);
        }
        if now < claims.nbf {
            return Err(Error::NotYetValid);
        }
        Ok(claims)
    }
}

fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    out
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find(&format!("-----BEGIN {PEM_LABEL}-----"))?;
    let end = pem.find(&format!("-----END {PEM_LABEL}-----"))?;
    let body: String = pem
        .get(start + PEM_LABEL.len() + 16..end)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Whether a string looks like a JWT (three dot-separated parts), so the bootstrap-token
/// authenticator can leave it alone.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:default:reader".into(),
            aud: vec![ISSUER.into()],
            iat: now,
            nbf: now,
            exp: now + 600,
            jti: "j1".into(),
            kubernetes: Private {
                namespace: "default".into(),
                serviceaccount: Ref { name: "reader".into(), uid: "u1".into() },
                pod: None,
                secret: None,
                node: None,
            },
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let s = Signer::ephemeral().unwrap();
        let token = s.sign(&claims(1000)).unwrap();
        assert_eq!(s.verify(&token, 1000).unwrap(), claims(1000));
        assert_eq!(s.verify(&token, 1599).unwrap().exp, 1600);
        assert!(matches!(s.verify(&token, 1600), Err(Error::Expired)));
        assert!(matches!(s.verify(&token, 999), Err(Error::NotYetValid)));
    }

    #[test]
    fn tokens_of_another_key_or_tampered_ones_are_refused() {
        let s = Signer::ephemeral().unwrap();
        let other = Signer::ephemeral().unwrap();
        let token = other.sign(&claims(1000)).unwrap();
        assert!(matches!(s.verify(&token, 1000), Err(Error::Signature)));
        let mine = s.sign(&claims(1000)).unwrap();
        let parts: Vec<&str> = mine.split('.').collect();
        let mut forged = claims(1000);
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        let forged =
            format!("{}.{}.{}", parts[0], b64(&serde_json::to_vec(&forged).unwrap()), parts[2]);
        assert!(matches!(s.verify(&forged, 1000), Err(Error::Signature)));
        assert!(matches!(s.verify("abc", 1000), Err(Error::Malformed(_))));
        let mut wrong_issuer = claims(1000);
        wrong_issuer.iss = "https://elsewhere".into();
        let t = s.sign(&wrong_issuer).unwrap();
        assert!(matches!(s.verify(&t, 1000), Err(Error::Issuer(_))));
    }

    #[test]
    fn the_signing_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = Signer::load_or_create(dir.path()).unwrap();
        let token = first.sign(&claims(1000)).unwrap();
        let second = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(first.kid(), second.kid());
        second.verify(&token, 1000).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("sa.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("sa.key"), "garbage").unwrap();
        assert!(matches!(Signer::load_or_create(dir.path()), Err(Error::BadKey { .. })));
        let jwk = first.jwk();
        assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("EC"), Some("P-256")));
    }
}
