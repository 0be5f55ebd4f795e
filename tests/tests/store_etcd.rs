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
