//! kill -9 durability of the embedded store: a writer process is killed mid-stream and every
//! write it had been told was committed must be there after reopening the file.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keelson_store::embedded::{EmbeddedStore, Options};
use keelson_store::{KeyRange, RangeRequest, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigkill_of_the_writer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.redb");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keelson-store-crashtest"))
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    let started = Instant::now();
    // Kill it while the writers are in full flight.
    while acked.len() < 3000 && started.elapsed() < Duration::from_secs(20) {
        match lines.next() {
            Some(line) => acked.push(line?),
            None => anyhow::bail!("writer ended early after {} writes", acked.len()),
        }
    }
    child.kill()?; // SIGKILL
    let status = child.wait()?;
    assert!(!status.success(), "the writer was killed, not finished: {status:?}");
    // Lines already in the pipe were acknowledged before the kill, too.
    for line in lines {
        acked.push(line?);
    }
    assert!(acked.len() >= 100, "too few writes before the kill: {}", acked.len());
    eprintln!("{} acknowledged writes before SIGKILL", acked.len());

    let store = EmbeddedStore::open(&path, Options::default()).await?;
    let current = store.current_revision().await?;
    let all = store.range(RangeRequest::new(KeyRange::prefix("/crash/"))).await?;
    let present: std::collections::HashMap<_, _> =
        all.kvs.into_iter().map(|kv| (kv.key, (kv.value, kv.mod_revision))).collect();
    for line in &acked {
        let (key, rev) =
            line.split_once(' ').ok_or_else(|| anyhow::anyhow!("bad line {line:?}"))?;
        let rev: i64 = rev.parse()?;
        let (value, mod_rev) = present
            .get(key.as_bytes())
            .ok_or_else(|| anyhow::anyhow!("acknowledged write {key} at revision {rev} is lost"))?;
        let (_, rest) = key.split_at("/crash/".len());
        let (w, n) = rest.split_once('/').ok_or_else(|| anyhow::anyhow!("bad key {key}"))?;
        assert_eq!(value, format!("value-{w}-{n}").as_bytes(), "{key}");
        assert_eq!(*mod_rev, rev, "{key}");
        assert!(rev <= current);
    }
    Ok(())
}
