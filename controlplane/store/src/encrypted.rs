//! Encryption at rest: a [`Store`] wrapper that seals the values of chosen key prefixes
//! (`/registry/secrets/`) with AES-256-GCM before they reach the backend and opens them on
//! the way back, as upstream's storage transformers (`aesgcm` provider) do at the same layer.
//!
//! - **Format**: `k8s:enc:aesgcm:v1:<key name>:` + a 12-byte random nonce + ciphertext and
//!   tag; the associated data is the storage key, so a sealed value copied to another key
//!   does not open. Values without the prefix (written before encryption was on) are read as
//!   they are and sealed on their next write.
//! - **Keys** (`KeyFile`): a file of `name:base64(32 bytes)` lines, mode 0600, created with one
//!   random key when missing. The first key seals; every key opens, so a rotation is: put a new
//!   key first, restart, rewrite the objects (`kubectl get secrets -A -o json | kubectl replace
//!   -f -`), then drop the old key.
//! - Everything above the wrapper (objects, watch caches) sees plaintext; the backend, its
//!   snapshots and etcd see only sealed values. Random nonces stay safe for about 2^32
//!   writes per key: rotate before that.
//!
//! Built on `ring`'s AEAD (already in the tree through rustls) rather than another crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{
    DeleteResponse, Error, KeyValue, Lease, LeaseId, RangeResponse, Result, Revision, Store, TxnOp,
    TxnOpResponse, TxnRequest, TxnResponse, WatchRequest, WatchStream,
};

const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or creating it failed.
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
    /// A line is not `name:base64 of 32 bytes`.
    #[error("{path} line {line}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// The keys: the first seals, all open.
pub struct KeyFile {
    keys: Vec<(String, LessSafeKey)>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("KeyFile").field("keys", &names).finish()
    }
}

impl KeyFile {
    /// Reads `path`, creating it (0600, one random key named `key1`) when missing.
    pub fn load_or_create(path: &Path) -> Result<KeyFile, KeyFileError> {
        let io = |what: &'static str| {
            move |source| KeyFileError::Io { what, path: path.to_path_buf(), source }
        };
        if !path.exists() {
            let mut key = [0u8; 32];
            SystemRandom::new().fill(&mut key).map_err(|_| KeyFileError::Format {
                path: path.to_path_buf(),
                line: 0,
                why: "no randomness for a new key".into(),
            })?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
            }
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io("create"))?;
                f.write_all(format!("key1:{}\n", STANDARD.encode(key)).as_bytes())
                    .map_err(io("write"))?;
                f.sync_all().map_err(io("sync"))?;
            }
            std::fs::rename(&tmp, path).map_err(io("rename into place"))?;
        }
        let text = std::fs::read_to_string(path).map_err(io("read"))?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<KeyFile, KeyFileError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| KeyFileError::Format {
                path: path.to_path_buf(),
                line: i + 1,
                why: why.into(),
            };
            let (name, secret) =
                line.split_once(':').ok_or_else(|| bad("expected name:base64-key"))?;
            if name.is_empty() || name.contains(':') {
                return Err(bad("a key needs a name without ':'"));
            }
            let bytes = STANDARD.decode(secret.trim()).map_err(|_| bad("the key is not base64"))?;
            if bytes.len() != 32 {
                return Err(bad("the key must be 32 bytes (AES-256)"));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| bad("unusable key"))?;
            keys.push((name.to_owned(), LessSafeKey::new(key)));
        }
        if keys.is_empty() {
            return Err(KeyFileError::Format {
                path: path.to_path_buf(),
                line: 0,
                why: "no key".into(),
            });
        }
        Ok(KeyFile { keys })
    }

    fn seal(&self, storage_key: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let (name, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::InvalidRequest { reason: "no randomness for a nonce".into() })?;
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(storage_key),
            &mut body,
        )
        .map_err(|_| Error::InvalidRequest { reason: "encryption failed".into() })?;
        let mut out = Vec::with_capacity(PREFIX.len() + name.len() + 1 + NONCE_LEN + body.len());
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, storage_key: &[u8], value: Bytes) -> Result<Bytes> {
        let Some(rest) = value.strip_prefix(PREFIX) else { return Ok(value) };
        let fail = |why: &str| Error::Decrypt {
            key: String::from_utf8_lossy(storage_key).into_owned(),
            reason: why.into(),
        };
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(|| fail("no key name"))?;
        let name = std::str::from_utf8(&rest[..colon]).map_err(|_| fail("bad key name"))?;
        let (_, key) = self.keys.iter().find(|(n, _)| n == name).ok_or_else(|| {
            fail(&format!("sealed with key {name:?}, which the key file does not have"))
        })?;
        let sealed = &rest[colon + 1..];
        if sealed.len() < NONCE_LEN {
            return Err(fail("truncated"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN])
            .map_err(|_| fail("bad nonce"))?;
        let mut body = sealed[NONCE_LEN..].to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(storage_key), &mut body)
            .map_err(|_| fail("authentication failed"))?;
        Ok(Bytes::copy_from_slice(plain))
    }
}

/// A store whose values under the given prefixes are sealed at rest.
#[derive(Debug)]
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keys: Arc<KeyFile>,
    prefixes: Vec<Vec<u8>>,
}

impl EncryptedStore {
    /// Seals the values of keys under `prefixes` in `inner` with `keys`.
    pub fn new(inner: Arc<dyn Store>, keys: KeyFile, prefixes: Vec<Vec<u8>>) -> Self {
        EncryptedStore { inner, keys: Arc::new(keys), prefixes }
    }

    fn sealed(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        if self.sealed(&kv.key) && !kv.value.is_empty() {
            kv.value = self.keys.open(&kv.key, std::mem::take(&mut kv.value))?;
        }
        Ok(kv)
    }

    fn open_range(&self, mut r: RangeResponse) -> Result<RangeResponse> {
        r.kvs = r.kvs.into_iter().map(|kv| self.open_kv(kv)).collect::<Result<_>>()?;
        Ok(r)
    }

    fn seal_ops(&self, ops: &mut [TxnOp]) -> Result<()> {
        for op in ops {
            if let TxnOp::Put(p) = op {
                if self.sealed(&p.key) {
                    p.value = self.keys.seal(&p.key, &p.value)?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn range(&self, req: crate::RangeRequest) -> Result<RangeResponse> {
        self.open_range(self.inner.range(req).await?)
    }

    async fn txn(&self, mut req: TxnRequest) -> Result<TxnResponse> {
        if req
            .compare
            .iter()
            .any(|c| matches!(c.target, crate::CompareTarget::Value(_)) && self.sealed(&c.key))
        {
            return Err(Error::InvalidRequest {
                reason: "value compares on encrypted keys are not supported".into(),
            });
        }
        self.seal_ops(&mut req.success)?;
        self.seal_ops(&mut req.failure)?;
        let mut resp = self.inner.txn(req).await?;
        for r in &mut resp.responses {
            match r {
                TxnOpResponse::Range(range) => *range = self.open_range(std::mem::take(range))?,
                TxnOpResponse::Put(p) => {
                    if let Some(prev) = p.prev_kv.take() {
                        p.prev_kv = Some(self.open_kv(prev)?);
                    }
                }
                TxnOpResponse::Delete(DeleteResponse { prev_kvs, .. }) => {
                    *prev_kvs = std::mem::take(prev_kvs)
                        .into_iter()
                        .map(|kv| self.open_kv(kv))
                        .collect::<Result<_>>()?;
                }
            }
        }
        Ok(resp)
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        let keys = self.keys.clone();
        let prefixes = self.prefixes.clone();
        let open = move |mut kv: KeyValue| -> Result<KeyValue> {
            if prefixes.iter().any(|p| kv.key.starts_with(p)) && !kv.value.is_empty() {
                kv.value = keys.open(&kv.key, std::mem::take(&mut kv.value))?;
            }
            Ok(kv)
        };
        let stream = self.inner.watch(req).await?.map(move |resp| {
            let mut resp = resp?;
            for e in &mut resp.events {
                e.kv = open(std::mem::take(&mut e.kv))?;
                if let Some(prev) = e.prev_kv.take() {
                    e.prev_kv = Some(open(prev)?);
                }
            }
            Ok(resp)
        });
        Ok(Box::pin(stream))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn lease_grant(&self, ttl: i64, id: LeaseId) -> Result<Lease> {
        self.inner.lease_grant(ttl, id).await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.inner.lease_revoke(id).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64> {
        self.inner.lease_keep_alive(id).await
    }
}

#[cfg(test)]
#[path = "encrypted_tests.rs"]
mod tests;
