//! Test helper for the kill -9 durability test (`tests/kill9.rs`): writes to an embedded store
//! from many concurrent tasks and prints each write's key on stdout only once the store has
//! acknowledged it, until it is killed.
//!
//! Usage: `keelson-store-crashtest FILE`

use std::io::Write;
use std::sync::Arc;

use keelson_store::embedded::{EmbeddedStore, Options};
use keelson_store::{PutRequest, Store};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: keelson-store-crashtest FILE")?;
    let store = Arc::new(EmbeddedStore::open(&path, Options::default()).await?);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for writer in 0..16 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for n in 0u64.. {
                let key = format!("/crash/{writer}/{n}");
                match store.put(PutRequest::new(key.clone(), format!("value-{writer}-{n}"))).await {
                    Ok(resp) => {
                        if tx.send(format!("{key} {}", resp.header_revision)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("put {key}: {e}");
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}
