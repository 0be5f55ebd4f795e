//! The store's conformance suite against a real etcd (privileged tier): one member and a
//! three-member cluster on loopback, started by the test and killed on drop. The same suite
//! runs against the embedded store in keelson-store's plain `cargo test`.
//!
//! `KEELSON_TEST_TIERS=privileged KEELSON_TEST_STRICT=1 cargo test -p keelson-tests --test store_etcd`

use std::sync::Arc;
use std::time::Duration;

use keelson_store::conformance::{self, Config};
use keelson_store::etcd::EtcdStore;
use keelson_store::Store;
use keelson_tests::etcd::{need_etcd, EtcdCluster};
use keelson_tests::{need_root, require, Tier};

fn config() -> Config {
    Config { progress_timeout: Duration::from_secs(10), event_timeout: Duration::from_secs(10) }
}

async fn run(members: usize) -> anyhow::Result<()> {
    let cluster = EtcdCluster::start(members, Duration::from_secs(1))?;
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(cluster.endpoints()).await?);
    conformance::run_all(store, &format!("/conformance-{members}"), config()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_single_member_passes_the_store_conformance_suite() {
    require!(Tier::Privileged, need_root(), need_etcd());
    run(1).await.expect("one-member etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_three_member_cluster_passes_the_store_conformance_suite() {
    require!(Tier::Privileged, need_root(), need_etcd());
    run(3).await.expect("three-member etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_range_larger_than_four_mebibytes_comes_back_whole() {
    require!(Tier::Privileged, need_root(), need_etcd());
    let run = || async {
        use keelson_store::{KeyRange, PutRequest, RangeRequest, TxnOp, TxnRequest};
        let cluster = EtcdCluster::start(1, Duration::from_secs(1))?;
        let store = EtcdStore::connect(cluster.endpoints()).await?;
        // 12 values of 512 KiB: 6 MiB in one range response, beyond tonic's default 4 MiB
        // decoding limit (a list of 700 pods of 6 KB is already that large).
        let value = vec![b'v'; 512 << 10];
        for i in 0..12 {
            store.put(PutRequest::new(format!("/big/{i:02}"), value.clone())).await?;
        }
        let all = store.range(RangeRequest::new(KeyRange::prefix("/big/"))).await?;
        anyhow::ensure!(all.kvs.len() == 12, "the range returned {} of 12 keys", all.kvs.len());
        anyhow::ensure!(all.kvs.iter().all(|kv| kv.value == value), "a value came back altered");
        let txn =
            TxnRequest::new().then(TxnOp::Range(RangeRequest::new(KeyRange::prefix("/big/"))));
        let resp = store.txn(txn).await?;
        anyhow::ensure!(resp.responses.len() == 1, "the transaction lost its range");
        anyhow::Ok(())
    };
    run().await.expect("a 6 MiB range from etcd");
}
