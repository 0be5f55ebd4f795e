#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::manifests::{parse, Snapshot};
use crate::testing::{running_names, FakeImages, FakeMounter, FakeRuntime};

struct H {
    rt: FakeRuntime,
    env: Arc<WorkerEnv>,
    dir: tempfile::TempDir,
}

fn h() -> H {
    let rt = FakeRuntime::default();
    let dir = tempfile::tempdir().unwrap();
    let env = Arc::new(WorkerEnv {
        rt: Arc::new(rt.clone()),
        images: Arc::new(FakeImages::default()),
        host_ip: None,
        host_hosts: dir.path().join("hosts"),
        host_resolv: dir.path().join("resolv.conf"),
        mounter: Arc::new(FakeMounter::default()),
        probe_net: Arc::new(crate::pod::probe::HostNet::default()),
    });
    H { rt, env, dir }
}

impl H {
    fn agent(&self) -> Agent {
        Agent::new(
            self.env.clone(),
            AgentConfig {
                node_name: "n".into(),
                state_dir: self.dir.path().join("state"),
                seccomp_root: self.dir.path().join("seccomp"),
            },
        )
    }
}

fn manifest(name: &str, image: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{terminationGracePeriodSeconds: 3, containers: [{{name: c, image: '{image}'}}]}}\n")
}

fn snap(files: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot::default();
    for (path, content) in files {
        let sp = parse(Path::new(path), content.as_bytes(), "n").unwrap();
        s.pods.insert(PathBuf::from(path), sp);
    }
    s
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn phase(a: &Agent, name: &str) -> Option<String> {
    a.pods()
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .and_then(|p| p.status?.phase)
}

#[tokio::test(start_paused = true)]
async fn manifests_start_change_and_stop_pods() {
    let h = h();
    let a = h.agent();
    let (tx, rx) = watch::channel(snap(&[("/m/web.yaml", &manifest("web", "b:1"))]));
    let run = tokio::spawn({
        let a = a.clone();
        async move { a.run(rx).await }
    });
    settle().await;
    assert_eq!(running_names(&h.rt), ["c"]);
    assert_eq!(phase(&a, "web-n").as_deref(), Some("Running"));
    let p = &a.pods()[0];
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n"));

    // A changed manifest replaces the pod: the old sandbox goes, a new one comes.
    let old_sb: Vec<_> = h.rt.st().sandboxes.keys().cloned().collect();
    tx.send(snap(&[("/m/web.yaml", &manifest("web", "b:2"))])).unwrap();
    settle().await;
    a.wait_stopped().await;
    settle().await;
    {
        let st = h.rt.st();
        assert_eq!(st.sandboxes.len(), 1);
        assert!(!st.sandboxes.contains_key(&old_sb[0]));
        let (cfg, _) = st.containers.values().next().unwrap();
        assert_eq!(cfg.image, "b:2");
    }
    // A removed manifest stops its pod.
    tx.send(Snapshot::default()).unwrap();
    settle().await;
    a.wait_stopped().await;
    assert!(h.rt.st().sandboxes.is_empty());
    assert!(a.pods().is_empty());
    drop(tx);
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_invalid_pod_is_reported_and_does_not_touch_the_others() {
    let h = h();
    let a = h.agent();
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: [{name: c}]}\n";
    let mut s = snap(&[("/m/web.yaml", &manifest("web", "b:1")), ("/m/bad.yaml", bad)]);
    s.errors.push(ManifestError { path: "/m/junk.yaml".into(), message: "empty file".into() });
    a.apply(&s);
    settle().await;
    assert_eq!(running_names(&h.rt), ["c"]);
    let errs = a.manifest_errors();
    assert_eq!(errs.len(), 2);
    assert!(errs
        .iter()
        .any(|e| e.path == Path::new("/m/bad.yaml")
            && e.message == "spec.containers[0].image: required"));
    assert!(errs.iter().any(|e| e.path == Path::new("/m/junk.yaml")));
    // The bad file is fixed; the good pod is not restarted.
    let fixed = bad.replace("{name: c}", "{name: c, image: b}");
    a.apply(&snap(&[("/m/web.yaml", &manifest("web", "b:1")), ("/m/bad.yaml", &fixed)]));
    settle().await;
    assert_eq!(running_names(&h.rt), ["c", "c"]);
    assert_eq!(h.rt.starts_of("c"), 2);
    assert!(a.manifest_errors().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_new_agent_adopts_running_pods_and_stops_those_without_a_manifest() {
    let h = h();
    let files = [("/m/web.yaml", manifest("web", "b:1")), ("/m/old.yaml", manifest("old", "b:1"))];
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    {
        let a = h.agent();
        let (_tx, rx) = watch::channel(snap(&files));
        let run = tokio::spawn({
            let a = a.clone();
            async move { a.run(rx).await }
        });
        settle().await;
        assert_eq!(running_names(&h.rt), ["c", "c"]);
        // The agent dies: its task and workers go, the pods stay.
        run.abort();
    }
    settle().await;
    assert_eq!(running_names(&h.rt), ["c", "c"]);
    let web_sb =
        h.rt.st()
            .sandboxes
            .values()
            .find(|(c, _)| c.pod.name == "web-n")
            .map(|(_, s)| (s.id.clone(), s.ips.clone()))
            .unwrap();
    let a = h.agent();
    let (_tx, rx) = watch::channel(snap(&files[..1]));
    let _run = tokio::spawn({
        let a = a.clone();
        async move { a.run(rx).await }
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.rt.starts_of("c"), 2, "a container was restarted");
    let st = h.rt.st();
    assert_eq!(st.sandboxes.len(), 1, "the orphan pod was not removed");
    assert_eq!(st.sandboxes[&web_sb.0].1.ips, web_sb.1);
    drop(st);
    let cref = a.container_id("default/web-n", None).unwrap();
    assert_eq!(cref.name, "c");
    assert_eq!(a.container_id("web-n", Some("c")).unwrap().id, cref.id);
    assert!(a.container_id("default/old-n", None).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_orphan_is_stopped_within_its_recorded_grace_period_and_its_files_removed() {
    let h = h();
    // A pod from a manifest that is gone by the time the agent starts.
    {
        let a = h.agent();
        let m = "apiVersion: v1\nkind: Pod\nmetadata: {name: gone}\nspec: {terminationGracePeriodSeconds: 7, volumes: [{name: m, emptyDir: {medium: Memory}}], containers: [{name: c, image: b, volumeMounts: [{name: m, mountPath: /m}]}]}\n";
        a.apply(&snap(&[("/m/gone.yaml", m)]));
        settle().await;
        assert_eq!(running_names(&h.rt), ["c"]);
        a.detach().await;
    }
    let pods_dir = h.dir.path().join("state/pods");
    assert_eq!(std::fs::read_dir(&pods_dir).unwrap().count(), 1);
    let a = h.agent();
    let (_tx, rx) = watch::channel(Snapshot::default());
    let _run = tokio::spawn({
        let a = a.clone();
        async move { a.run(rx).await }
    });
    settle().await;
    let st = h.rt.st();
    assert!(st.sandboxes.is_empty(), "the orphan's sandbox is left");
    assert_eq!(st.stops, [("c".to_owned(), Duration::from_secs(7))]);
    drop(st);
    assert_eq!(std::fs::read_dir(&pods_dir).unwrap().count(), 0, "the orphan's files are left");
}
