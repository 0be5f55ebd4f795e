use std::sync::Arc;

use super::*;
use crate::embedded::{EmbeddedStore, Options};
use crate::{KeyRange, PutRequest, RangeRequest};

const SECRETS: &[u8] = b"/registry/secrets/";

struct H {
    plain: Arc<EmbeddedStore>,
    sealed: EncryptedStore,
    dir: tempfile::TempDir,
}

async fn h() -> H {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = Arc::new(
        EmbeddedStore::open(dir.path().join("db"), Options::default()).await.expect("open"),
    );
    let keys = KeyFile::load_or_create(&dir.path().join("keys")).expect("keys");
    let sealed = EncryptedStore::new(plain.clone(), keys, vec![SECRETS.to_vec()]);
    H { plain, sealed, dir }
}

async fn raw(store: &dyn Store, key: &str) -> Vec<u8> {
    store.range(RangeRequest::new(KeyRange::key(key))).await.expect("range").kvs[0].value.to_vec()
}

#[tokio::test]
async fn secrets_are_sealed_in_the_backend_and_open_through_every_read_path() {
    let h = h().await;
    let key = "/registry/secrets/default/db";
    h.sealed.put(PutRequest::new(key, b"hunter2".to_vec())).await.expect("put");
    h.sealed
        .put(PutRequest::new("/registry/configmaps/default/c", b"visible".to_vec()))
        .await
        .expect("put");
    let stored = raw(h.plain.as_ref(), key).await;
    assert!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "{:?}",
        String::from_utf8_lossy(&stored)
    );
    assert!(!stored.windows(7).any(|w| w == b"hunter2"), "the backend holds plaintext");
    assert_eq!(
        raw(h.plain.as_ref(), "/registry/configmaps/default/c").await,
        b"visible",
        "other prefixes stay plain"
    );
    assert_eq!(raw(&h.sealed, key).await, b"hunter2");

    let mut watch = h
        .sealed
        .watch(WatchRequest::new(KeyRange::prefix(SECRETS), 1).with_prev_kv())
        .await
        .expect("watch");
    h.sealed.put(PutRequest::new(key, b"hunter3".to_vec())).await.expect("put");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let resp = watch.next().await.expect("event").expect("ok");
        seen.extend(
            resp.events
                .into_iter()
                .map(|e| (e.kv.value.to_vec(), e.prev_kv.map(|p| p.value.to_vec()))),
        );
    }
    assert_eq!(seen[0].0, b"hunter2".to_vec());
    assert_eq!(seen[1], (b"hunter3".to_vec(), Some(b"hunter2".to_vec())));
}

#[tokio::test]
async fn a_sealed_value_moved_to_another_key_or_an_unknown_key_name_does_not_open() {
    let h = h().await;
    h.sealed.put(PutRequest::new("/registry/secrets/a/x", b"s".to_vec())).await.expect("put");
    let sealed = raw(h.plain.as_ref(), "/registry/secrets/a/x").await;
    h.plain.put(PutRequest::new("/registry/secrets/a/y", sealed.clone())).await.expect("put");
    let e = h
        .sealed
        .range(RangeRequest::new(KeyRange::key("/registry/secrets/a/y")))
        .await
        .expect_err("must fail");
    assert!(matches!(e, Error::Decrypt { .. }), "{e:?}");
    // Plaintext from before encryption was on still reads.
    h.plain.put(PutRequest::new("/registry/secrets/a/old", b"legacy".to_vec())).await.expect("put");
    assert_eq!(raw(&h.sealed, "/registry/secrets/a/old").await, b"legacy");
    // Rotation: a new first key seals, the old one still opens.
    let path = h.dir.path().join("keys");
    let old = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("key2:{}\n{old}", STANDARD.encode([7u8; 32]))).expect("write");
    let rotated = EncryptedStore::new(
        h.plain.clone(),
        KeyFile::load_or_create(&path).expect("keys"),
        vec![SECRETS.to_vec()],
    );
    assert_eq!(raw(&rotated, "/registry/secrets/a/x").await, b"s");
    rotated.put(PutRequest::new("/registry/secrets/a/z", b"new".to_vec())).await.expect("put");
    assert!(raw(h.plain.as_ref(), "/registry/secrets/a/z")
        .await
        .starts_with(b"k8s:enc:aesgcm:v1:key2:"));
    // Without the old key, what it sealed does not open.
    std::fs::write(&path, format!("key2:{}\n", STANDARD.encode([7u8; 32]))).expect("write");
    let without = EncryptedStore::new(
        h.plain.clone(),
        KeyFile::load_or_create(&path).expect("keys"),
        vec![SECRETS.to_vec()],
    );
    let e = without
        .range(RangeRequest::new(KeyRange::key("/registry/secrets/a/x")))
        .await
        .expect_err("must fail");
    assert!(e.to_string().contains("key1"), "{e}");
}

#[test]
fn key_files_are_created_0600_and_bad_ones_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pki/keys");
    KeyFile::load_or_create(&path).expect("create");
    assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
    let first = std::fs::read_to_string(&path).expect("read");
    KeyFile::load_or_create(&path).expect("load");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), first, "an existing file is kept");
    for bad in [
        "",
        "nokey\n",
        "k:notbase64!\n",
        "k:AAAA\n",
        ":AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    ] {
        std::fs::write(&path, bad).expect("write");
        assert!(
            matches!(KeyFile::load_or_create(&path), Err(KeyFileError::Format { .. })),
            "{bad:?}"
        );
    }
}
