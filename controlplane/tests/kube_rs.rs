//! The `kube` crate's client and runtime (5.x: `watcher`, `reflector`) against an API server
//! this test starts on a free loopback port: watches survive a server restart on the same data
//! directory and port, a compaction past the watcher's revision (410 Gone, then a new list),
//! and paged lists of 5000 objects return each exactly once. Plain `cargo test`: no root,
//! loopback only, nothing to install.
//!
//! The server runs on its own thread and tokio runtime; stopping it drops that runtime, which
//! ends every connection, watch and store task at once, as a process exit would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use keelson_controlplane::server::{bind, Config, DEFAULT_COMPACTION_INTERVAL};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

/// A server on its own runtime; stopped (runtime dropped) on drop.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
}

impl Server {
    /// Starts a server on `data` and `listen`, retrying while the previous one on the same
    /// directory is still letting go of its store file.
    fn start(data: &Path, listen: SocketAddr, compaction_interval: Duration) -> Result<Server> {
        let config = Config {
            data_dir: data.to_owned(),
            listen,
            advertise: None,
            compaction_interval,
            store: Default::default(),
            encryption_key_file: None,
            audit_log: None,
            services: Default::default(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                let listener = loop {
                    match bind(&config).await {
                        Ok(l) => break l,
                        Err(e) if std::time::Instant::now() < deadline => {
                            note_retry(&e);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    }
                };
                let info = listener
                    .local_addr()
                    .map(|a| (a, listener.kubeconfig().to_owned()))
                    .map_err(anyhow::Error::from);
                let _ = ready_tx.send(info);
                listener
                    .serve(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            // Dropping the runtime here ends every connection and background task.
            drop(rt);
        });
        let (addr, kubeconfig) =
            ready_rx.recv_timeout(Duration::from_secs(30)).context("server start")??;
        Ok(Server { stop: Some(stop), thread: Some(thread), addr, kubeconfig })
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn note_retry(e: &keelson_controlplane::server::Error) {
    eprintln!("server not up yet: {e}");
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

fn cm(name: &str, value: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.to_owned());
    c.data = Some(BTreeMap::from([("v".to_owned(), value.to_owned())]));
    c
}

/// The reflector's objects as name → data value.
fn contents(store: &Store<ConfigMap>) -> BTreeMap<String, String> {
    store
        .state()
        .iter()
        .map(|c| {
            let v = c.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default();
            (c.name_any(), v)
        })
        .collect()
}

async fn wait_for(
    what: &str,
    store: &Store<ConfigMap>,
    want: &BTreeMap<String, String>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while contents(store) != *want {
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: the reflector holds {:?}, want {want:?}", contents(store));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn want(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// What the watcher stream produced, recorded by a task that drives it.
#[derive(Debug, Default, Clone)]
struct Seen {
    inits: usize,
    errors: Vec<String>,
    gone: usize,
}

fn drive(
    stream: impl Stream<Item = watcher::Result<watcher::Event<ConfigMap>>> + Send + 'static,
) -> (tokio::task::JoinHandle<()>, tokio::sync::watch::Receiver<Seen>) {
    let (tx, rx) = tokio::sync::watch::channel(Seen::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            tx.send_modify(|seen| match &item {
                Ok(watcher::Event::Init) => seen.inits += 1,
                Ok(_) => {}
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    seen.gone += 1;
                    seen.errors.push(format!("{} {}", status.reason, status.message));
                }
                Err(e) => seen.errors.push(e.to_string()),
            });
        }
    });
    (task, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watcher_and_reflector_survive_a_server_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = Server::start(&data, "127.0.0.1:0".parse()?, DEFAULT_COMPACTION_INTERVAL)?;
    let addr = server.addr;
    let client = client(&server.kubeconfig).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("a", "1")).await?;

    // A list-then-watch reflector (bookmarks on, as kube's default) and a streaming-list one
    // (sendInitialEvents with the initial-events-end bookmark).
    let (reader, writer) = reflector::store();
    let (task, seen) = drive(
        reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff(),
    );
    let (streaming_reader, streaming_writer) = reflector::store();
    let (streaming_task, _) = drive(
        reflector::reflector(
            streaming_writer,
            watcher(api.clone(), watcher::Config::default().streaming_lists()),
        )
        .default_backoff(),
    );
    wait_for("first list", &reader, &want(&[("a", "1")])).await?;
    wait_for("first streaming list", &streaming_reader, &want(&[("a", "1")])).await?;
    api.create(&PostParams::default(), &cm("b", "1")).await?;
    wait_for("watched create", &reader, &want(&[("a", "1"), ("b", "1")])).await?;

    // Restart on the same directory and port; the same client (kubeconfig, CA, credentials).
    server.stop();
    let server = Server::start(&data, addr, DEFAULT_COMPACTION_INTERVAL)?;
    ensure!(server.addr == addr, "restarted on {} instead of {addr}", server.addr);
    let mut a = api.get("a").await?;
    a.data = Some(BTreeMap::from([("v".to_owned(), "2".to_owned())]));
    api.replace("a", &PostParams::default(), &a).await?;
    api.create(&PostParams::default(), &cm("c", "1")).await?;
    api.delete("b", &DeleteParams::default()).await?;
    let after = want(&[("a", "2"), ("c", "1")]);
    wait_for("after the restart", &reader, &after).await?;
    wait_for("streaming, after the restart", &streaming_reader, &after).await?;
    // The watcher resumed from its resourceVersion: no 410 and no second list.
    let s = seen.borrow().clone();
    ensure!(s.gone == 0 && s.inits == 1, "the watcher started over: {s:?}");
    task.abort();
    streaming_task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watcher_and_reflector_recover_from_a_compaction_with_410_and_a_new_list() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    // A one-second history: the store compacts, and the watch cache's window ages, within
    // seconds.
    let server =
        Server::start(&dir.path().join("data"), "127.0.0.1:0".parse()?, Duration::from_secs(1))?;
    let client = client(&server.kubeconfig).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let elsewhere: Api<ConfigMap> = Api::namespaced(client.clone(), "elsewhere");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some("elsewhere".into());
    namespaces.create(&PostParams::default(), &ns).await?;
    api.create(&PostParams::default(), &cm("a", "1")).await?;

    // Without bookmarks and with a 2 s watch timeout, the watcher's revision stays at its
    // list's while configmaps elsewhere change; once those changes are compacted away, its
    // next watch (after the timeout) starts below the history: 410 Expired, and kube lists
    // again.
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().disable_bookmarks().timeout(2);
    let (task, mut seen) =
        drive(reflector::reflector(writer, watcher(api.clone(), config)).default_backoff());
    wait_for("first list", &reader, &want(&[("a", "1")])).await?;
    for i in 0..20 {
        elsewhere.create(&PostParams::default(), &cm(&format!("x{i}"), "1")).await?;
    }
    let s = tokio::time::timeout(
        Duration::from_secs(30),
        seen.wait_for(|s| s.gone > 0 && s.inits >= 2),
    )
    .await
    .context("no 410 and new list within 30 s")??
    .clone();
    ensure!(
        s.errors.iter().any(|e| e.contains("Expired") && e.contains("too old resource version")),
        "{s:?}"
    );
    // The reflector is whole again and follows changes.
    api.create(&PostParams::default(), &cm("b", "1")).await?;
    wait_for("after the new list", &reader, &want(&[("a", "1"), ("b", "1")])).await?;
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_lists_5000_objects_in_pages_of_500_each_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        &dir.path().join("data"),
        "127.0.0.1:0".parse()?,
        DEFAULT_COMPACTION_INTERVAL,
    )?;
    let client = client(&server.kubeconfig).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let names: Vec<String> = (0..5000).map(|i| format!("cm-{i:04}")).collect();
    futures::stream::iter(names.iter().map(|n| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &cm(n, "1")).await }
    }))
    .buffer_unordered(50)
    .try_collect::<Vec<_>>()
    .await?;

    // Pages of 500 through continue tokens; a create between pages is not in this list (it
    // reads one snapshot).
    let mut params = ListParams::default().limit(500);
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut snapshot = None;
    loop {
        let page = api.list(&params).await?;
        pages += 1;
        ensure!(page.items.len() <= 500, "page of {}", page.items.len());
        if pages == 1 {
            snapshot = page.metadata.resource_version.clone();
            api.create(&PostParams::default(), &cm("late", "1")).await?;
        }
        seen.extend(page.items.iter().map(ResourceExt::name_any));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = ListParams::default().limit(500).continue_token(&c),
            None => break,
        }
    }
    ensure!(pages == 10, "{pages} pages");
    ensure!(seen == names, "the pages do not hold each object once, in order");
    ensure!(snapshot.is_some(), "no list resourceVersion");
    let unique: BTreeSet<&String> = seen.iter().collect();
    ensure!(unique.len() == 5000, "{} distinct names", unique.len());

    // A watcher's paged initial list (kube's default: most recent, pages of 500) and a list at
    // resourceVersion=0 (from the watch cache, whole) see all of them and the late one.
    let (reader, writer) = reflector::store();
    let (task, _) =
        drive(reflector::reflector(writer, watcher(api.clone(), watcher::Config::default())));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while reader.state().len() != 5001 {
        ensure!(tokio::time::Instant::now() < deadline, "reflector holds {}", reader.state().len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
    let cached = api.list(&ListParams::default().match_any()).await?;
    ensure!(cached.items.len() == 5001, "resourceVersion=0 list of {}", cached.items.len());
    Ok(())
}
