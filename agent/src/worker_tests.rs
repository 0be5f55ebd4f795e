#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use super::*;
use crate::pod::convert::{plan, NodeContext};
use crate::testing::{running_names, FakeImages, FakeMounter, FakeProbeNet, FakeRuntime};

struct Harness {
    rt: FakeRuntime,
    images: Arc<FakeImages>,
    mounter: Arc<FakeMounter>,
    net: Arc<FakeProbeNet>,
    env: Arc<WorkerEnv>,
    dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let rt = FakeRuntime::default();
    let images = Arc::new(FakeImages::default());
    let mounter = Arc::new(FakeMounter::default());
    let net = Arc::new(FakeProbeNet::default());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost node\n").unwrap();
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
    let env = Arc::new(WorkerEnv {
        rt: Arc::new(rt.clone()),
        images: images.clone(),
        host_ip: Some("192.0.2.10".parse().unwrap()),
        host_hosts: dir.path().join("hosts"),
        host_resolv: dir.path().join("resolv.conf"),
        mounter: mounter.clone(),
        probe_net: net.clone(),
    });
    Harness { rt, images, mounter, net, env, dir }
}

impl Harness {
    fn plan(&self, spec: &str) -> PodPlan {
        let yaml = format!("metadata: {{name: web, uid: u-1}}\nspec: {spec}");
        let pod = serde_yaml_ng::from_str(&yaml).unwrap();
        let node = NodeContext {
            node_name: "n".into(),
            state_dir: self.dir.path().join("state"),
            seccomp_root: self.dir.path().join("seccomp"),
        };
        plan(&pod, &node).unwrap()
    }

    fn spawn(&self, plan: PodPlan) -> Running {
        self.spawn_adopting(plan, None)
    }

    fn spawn_adopting(&self, plan: PodPlan, adopted: Option<(SandboxId, Vec<IpAddr>)>) -> Running {
        let w = Worker::new(self.env.clone(), plan, adopted);
        let view = w.view();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(w.run(rx));
        Running { view, stop: tx, task }
    }
}

struct Running {
    view: Arc<Mutex<PodView>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn status(&self) -> k8s_openapi::api::core::v1::PodStatus {
        status::status(&lock(&self.view).record)
    }

    fn phase(&self) -> String {
        self.status().phase.unwrap()
    }

    fn waiting_reason(&self, name: &str) -> Option<String> {
        let s = self.status();
        let all =
            s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten());
        all.filter(|c| c.name == name).find_map(|c| c.state.clone()?.waiting?.reason)
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(600), self.task).await.unwrap().unwrap();
    }
}

/// Lets every task run until all wait on time, then moves paused time by `d`.
async fn advance(d: Duration) {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(d).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

async fn settle() {
    advance(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_to_success_before_app_containers() {
    let h = harness();
    h.rt.script("i1", &[0]);
    h.rt.script("i2", &[0]);
    let r = h.spawn(h.plan("{initContainers: [{name: i1, image: b}, {name: i2, image: b}], containers: [{name: a, image: b}, {name: z, image: b}]}"));
    settle().await;
    assert_eq!(h.rt.st().starts, ["i1", "i2", "a", "z"]);
    assert_eq!(running_names(&h.rt), ["a", "z"]);
    assert_eq!(r.phase(), "Running");
    let s = r.status();
    assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.1"));
    assert_eq!(s.host_ip.as_deref(), Some("192.0.2.10"));
    let app = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(app.image_id, "sha256:b", "the image id is the resolved image's");
    let init = s.init_container_statuses.unwrap();
    assert!(init.iter().all(|c| c
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap()
        .reason
        .as_deref()
        == Some("Completed")));
}

#[tokio::test(start_paused = true)]
async fn a_failing_init_container_holds_back_app_containers_until_it_succeeds() {
    let h = harness();
    h.rt.script("i", &[1, 0]);
    let r = h.spawn(
        h.plan("{initContainers: [{name: i, image: b}], containers: [{name: a, image: b}]}"),
    );
    settle().await;
    assert_eq!(h.rt.starts_of("a"), 0);
    assert_eq!(r.phase(), "Pending");
    assert_eq!(r.waiting_reason("i").as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(r.waiting_reason("a").as_deref(), Some("PodInitializing"));
    advance(Duration::from_secs(9)).await;
    assert_eq!(h.rt.starts_of("i"), 1, "restarted before its 10 s back-off");
    advance(Duration::from_secs(2)).await;
    assert_eq!(h.rt.starts_of("i"), 2);
    assert_eq!(running_names(&h.rt), ["a"]);
    assert_eq!(r.phase(), "Running");
}

#[tokio::test(start_paused = true)]
async fn an_init_container_failing_under_restart_never_fails_the_pod() {
    let h = harness();
    h.rt.script("i", &[3]);
    let r = h.spawn(h.plan("{restartPolicy: Never, initContainers: [{name: i, image: b}], containers: [{name: a, image: b}]}"));
    advance(Duration::from_secs(60)).await;
    assert_eq!(h.rt.starts_of("i"), 1);
    assert_eq!(h.rt.starts_of("a"), 0);
    assert_eq!(r.phase(), "Failed");
}

#[tokio::test(start_paused = true)]
async fn a_crash_looping_container_backs_off_10_20_40_80_160_then_300_seconds() {
    let h = harness();
    h.rt.script("c", &[1; 8]);
    let r = h.spawn(h.plan("{containers: [{name: c, image: b}]}"));
    advance(Duration::from_secs(1000)).await;
    let times: Vec<tokio::time::Instant> =
        h.rt.st().start_times.iter().filter(|(n, _)| n == "c").map(|(_, t)| *t).collect();
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, [10, 20, 40, 80, 160, 300, 300], "{gaps:?}");
    let s = r.status();
    let cs = &s.container_statuses.unwrap()[0];
    assert_eq!(cs.restart_count, 7);
    assert_eq!(
        cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(),
        Some("CrashLoopBackOff")
    );
    assert_eq!(
        cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(),
        Some("Error")
    );
    // Only the current and the previous instance are kept.
    assert!(h.rt.st().containers.len() <= 2);
    assert_eq!(r.phase(), "Running");
}

#[tokio::test(start_paused = true)]
async fn a_container_that_ran_ten_minutes_restarts_after_the_initial_back_off() {
    let h = harness();
    h.rt.script("c", &[1, 1, 1]);
    let _r = h.spawn(h.plan("{containers: [{name: c, image: b}]}"));
    advance(Duration::from_secs(71)).await; // starts at 0, 10, 30, 70
    assert_eq!(h.rt.starts_of("c"), 4);
    advance(Duration::from_secs(601)).await;
    h.rt.exit("c", 2);
    advance(Duration::from_secs(9)).await;
    assert_eq!(h.rt.starts_of("c"), 4);
    advance(Duration::from_secs(2)).await;
    assert_eq!(h.rt.starts_of("c"), 5, "the back-off was not reset by a 10 min run");
}

#[tokio::test(start_paused = true)]
async fn restart_policy_on_failure_restarts_only_failures_and_the_pod_succeeds() {
    let h = harness();
    h.rt.script("c", &[1, 0]);
    let r = h.spawn(h.plan("{restartPolicy: OnFailure, containers: [{name: c, image: b}]}"));
    advance(Duration::from_secs(100)).await;
    assert_eq!(h.rt.starts_of("c"), 2);
    assert_eq!(r.phase(), "Succeeded");
    let cs = &r.status().container_statuses.unwrap()[0];
    assert_eq!(cs.restart_count, 1);
}

#[tokio::test(start_paused = true)]
async fn restart_policy_never_leaves_a_failed_container_and_fails_the_pod() {
    let h = harness();
    h.rt.script("c", &[2]);
    let r = h.spawn(h.plan("{restartPolicy: Never, containers: [{name: c, image: b}]}"));
    advance(Duration::from_secs(100)).await;
    assert_eq!(h.rt.starts_of("c"), 1);
    assert_eq!(r.phase(), "Failed");
    let cs = &r.status().container_statuses.unwrap()[0];
    let t = cs.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (2, Some("Error")));
}

#[tokio::test(start_paused = true)]
async fn a_worker_over_an_existing_sandbox_restarts_nothing_and_keeps_the_ip() {
    let h = harness();
    let plan = h.plan("{containers: [{name: a, image: b}]}");
    let r = h.spawn(plan.clone());
    settle().await;
    let (sb, before) = {
        let v = lock(&r.view);
        (v.sandbox.clone().unwrap(), v.refs["a"].id.clone())
    };
    // The agent goes away: the stop channel is dropped without a stop request.
    drop(r.stop);
    r.task.await.unwrap();
    assert_eq!(running_names(&h.rt), ["a"], "containers keep running without the agent");
    let ips = h.rt.st().sandboxes[&sb].1.ips.clone();
    let r2 = h.spawn_adopting(plan, Some((sb.clone(), ips.clone())));
    advance(Duration::from_secs(30)).await;
    assert_eq!(h.rt.starts_of("a"), 1, "the container was restarted");
    assert_eq!(h.rt.st().sandboxes.len(), 1, "a second sandbox was created");
    assert_eq!(lock(&r2.view).refs["a"].id, before);
    assert_eq!(r2.status().pod_ip, Some(ips[0].to_string()));
    assert_eq!(r2.phase(), "Running");
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_that_died_is_replaced_and_its_containers_started_again() {
    let h = harness();
    let r = h.spawn(h.plan("{containers: [{name: a, image: b}]}"));
    settle().await;
    let sb = lock(&r.view).sandbox.clone().unwrap();
    h.rt.st().sandboxes.get_mut(&sb).unwrap().1.state = SandboxState::NotReady;
    advance(RESYNC + Duration::from_secs(1)).await;
    assert_eq!(h.rt.starts_of("a"), 2);
    let st = h.rt.st();
    assert_eq!(st.sandboxes.len(), 1);
    assert!(!st.sandboxes.contains_key(&sb));
}

#[tokio::test(start_paused = true)]
async fn stopping_runs_pre_stop_hooks_stops_within_the_grace_period_and_cleans_up() {
    let h = harness();
    let r = h.spawn(h.plan(
        "{terminationGracePeriodSeconds: 7, volumes: [{name: m, emptyDir: {medium: Memory}}],
          containers: [{name: a, image: b, volumeMounts: [{name: m, mountPath: /m}],
                        lifecycle: {preStop: {exec: {command: [sh, -c, bye]}}}}, {name: z, image: b}]}",
    ));
    settle().await;
    assert_eq!(h.mounter.mounted.lock().unwrap().len(), 1);
    let pod_dir = h.dir.path().join("state/pods/u-1");
    assert!(pod_dir.join("etc-hosts").is_file());
    assert_eq!(h.images.rootfs.lock().unwrap().len(), 2);
    r.stop().await;
    let st = h.rt.st();
    assert_eq!(st.execs, [("a".to_owned(), vec!["sh".to_owned(), "-c".into(), "bye".into()])]);
    assert_eq!(st.stops.len(), 2);
    assert!(st.stops.iter().all(|(_, g)| *g <= Duration::from_secs(7) && *g > Duration::ZERO));
    assert!(st.sandboxes.is_empty() && st.containers.is_empty());
    assert!(h.images.rootfs.lock().unwrap().is_empty(), "root filesystems leaked");
    assert!(h.mounter.mounted.lock().unwrap().is_empty());
    assert!(!pod_dir.exists());
}

#[tokio::test(start_paused = true)]
async fn the_pods_etc_files_carry_its_ip_host_aliases_and_the_nodes_resolver() {
    let h = harness();
    let _r = h.spawn(h.plan(
        "{hostAliases: [{ip: 10.9.9.9, hostnames: [db]}], containers: [{name: a, image: b}]}",
    ));
    settle().await;
    let dir = h.dir.path().join("state/pods/u-1");
    let hosts = std::fs::read_to_string(dir.join("etc-hosts")).unwrap();
    assert!(hosts.contains("10.42.0.1\tweb\n") && hosts.contains("10.9.9.9\tdb\n"), "{hosts}");
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "nameserver 192.0.2.53\n"
    );
    let st = h.rt.st();
    let (cfg, _) = st.containers.values().next().unwrap();
    assert!(cfg.mounts.iter().any(|m| m.container_path == std::path::Path::new("/etc/hosts")));
}

#[tokio::test(start_paused = true)]
async fn host_network_pods_report_the_node_ip_and_get_the_nodes_hosts_file() {
    let h = harness();
    let r = h.spawn(h.plan("{hostNetwork: true, containers: [{name: a, image: b}]}"));
    settle().await;
    assert_eq!(r.status().pod_ip.as_deref(), Some("192.0.2.10"));
    let hosts = std::fs::read_to_string(h.dir.path().join("state/pods/u-1/etc-hosts")).unwrap();
    assert_eq!(hosts, "127.0.0.1 localhost node\n");
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_with_pull_policy_never_waits_with_err_image_pull() {
    let h = harness();
    h.images.missing.lock().unwrap().push("b:1".into());
    let r = h.spawn(h.plan(
        "{containers: [{name: a, image: 'b:1', imagePullPolicy: Never}, {name: z, image: b}]}",
    ));
    settle().await;
    assert_eq!(r.waiting_reason("a").as_deref(), Some("ErrImagePull"));
    // A pass before the retry is due (here: another container's exit) keeps the reason.
    advance(Duration::from_secs(2)).await;
    h.rt.exit("z", 1);
    settle().await;
    assert_eq!(r.waiting_reason("a").as_deref(), Some("ErrImagePull"));
    advance(Duration::from_secs(30)).await;
    assert_eq!(h.rt.starts_of("a"), 0);
    assert_eq!(r.waiting_reason("a").as_deref(), Some("ErrImagePull"));
    assert_eq!(r.phase(), "Pending");
    h.images.missing.lock().unwrap().clear();
    advance(RETRY).await;
    assert!(running_names(&h.rt).contains(&"a".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn pull_policy_always_pulls_at_each_start() {
    let h = harness();
    h.rt.script("a", &[0]);
    let _r = h.spawn(h.plan("{containers: [{name: a, image: 'b:latest'}]}"));
    advance(Duration::from_secs(11)).await;
    assert_eq!(*h.images.pulls.lock().unwrap(), ["b:latest", "b:latest"]);
}

#[tokio::test(start_paused = true)]
async fn run_as_non_root_refuses_an_image_running_as_root() {
    let h = harness();
    *h.images.user.lock().unwrap() = Some("0".into());
    let r = h.spawn(
        h.plan("{securityContext: {runAsNonRoot: true}, containers: [{name: a, image: b}]}"),
    );
    settle().await;
    assert_eq!(h.rt.starts_of("a"), 0);
    assert_eq!(r.waiting_reason("a").as_deref(), Some("CreateContainerConfigError"));
}

#[tokio::test(start_paused = true)]
async fn a_bad_host_path_keeps_the_pod_pending_with_the_reason() {
    let h = harness();
    let missing = h.dir.path().join("absent");
    let r = h.spawn(h.plan(&format!(
        "{{volumes: [{{name: v, hostPath: {{path: {}, type: Directory}}}}], containers: [{{name: a, image: b}}]}}",
        missing.display()
    )));
    settle().await;
    assert!(h.rt.st().sandboxes.is_empty());
    let s = r.status();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(s.reason.as_deref(), Some("FailedMount"));
    assert!(s.message.unwrap().contains("is not a directory"));
    std::fs::create_dir(&missing).unwrap();
    advance(RETRY).await;
    assert_eq!(running_names(&h.rt), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn env_gets_the_pod_ip_once_the_sandbox_has_one() {
    let h = harness();
    let _r = h.spawn(h.plan("{containers: [{name: a, image: b, env: [{name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}, {name: URL, value: 'http://$(IP):80'}]}]}"));
    settle().await;
    let st = h.rt.st();
    let (cfg, _) = st.containers.values().next().unwrap();
    assert_eq!(
        cfg.env,
        [("IP".into(), "10.42.0.1".into()), ("URL".into(), "http://10.42.0.1:80".into())]
    );
}

fn container_status(r: &Running, name: &str) -> k8s_openapi::api::core::v1::ContainerStatus {
    r.status().container_statuses.unwrap().into_iter().find(|c| c.name == name).unwrap()
}

#[tokio::test(start_paused = true)]
async fn probes_make_a_container_ready_and_a_failed_liveness_probe_restarts_it() {
    use std::sync::atomic::Ordering;
    let h = harness();
    let r = h.spawn(h.plan(
        "{containers: [{name: a, image: b, \
          livenessProbe: {tcpSocket: {port: 80}, initialDelaySeconds: 2, periodSeconds: 1, failureThreshold: 2}, \
          readinessProbe: {httpGet: {port: 80}, periodSeconds: 1}}]}",
    ));
    settle().await;
    let a = container_status(&r, "a");
    assert!(a.state.unwrap().running.is_some());
    assert!(!a.ready, "not ready before the readiness probe succeeded");
    assert_eq!(r.phase(), "Running");
    h.net.0.store(true, Ordering::SeqCst);
    advance(Duration::from_secs(1)).await;
    assert!(container_status(&r, "a").ready);

    h.net.0.store(false, Ordering::SeqCst);
    advance(Duration::from_secs(1)).await;
    assert_eq!(h.rt.starts_of("a"), 1, "one liveness failure of two");
    advance(Duration::from_secs(2)).await;
    let a = container_status(&r, "a");
    assert!(!a.ready);
    assert!(a.state.unwrap().running.is_none(), "killed after the second failure");
    // Restarted after the back-off, as any exited container.
    h.net.0.store(true, Ordering::SeqCst);
    advance(Duration::from_secs(11)).await;
    assert_eq!(h.rt.starts_of("a"), 2);
    let a = container_status(&r, "a");
    assert_eq!(a.restart_count, 1);
    assert!(a.state.unwrap().running.is_some());
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_container_is_not_started_until_its_startup_probe_succeeds() {
    use std::sync::atomic::Ordering;
    let h = harness();
    let r = h.spawn(h.plan(
        "{containers: [{name: a, image: b, startupProbe: {tcpSocket: {port: 80}, periodSeconds: 1, failureThreshold: 30}}]}",
    ));
    advance(Duration::from_secs(5)).await;
    let a = container_status(&r, "a");
    assert_eq!((a.started, a.ready), (Some(false), false));
    h.net.0.store(true, Ordering::SeqCst);
    advance(Duration::from_secs(1)).await;
    let a = container_status(&r, "a");
    assert_eq!((a.started, a.ready), (Some(true), true));
    assert_eq!(h.rt.starts_of("a"), 1);
    r.stop().await;
}
