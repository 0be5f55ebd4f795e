//! A pod's status as the kubelet reports it, computed from a small [`PodRecord`] the pod worker
//! keeps: the phase (the kubelet's `getPhase` rules), the conditions (`PodScheduled`,
//! `PodReadyToStartContainers`, `Initialized`, `ContainersReady`, `Ready`), container and init
//! container statuses with their current and last states, restart counts, pod and host IPs.
//!
//! A running container is started and ready unless its probes say otherwise
//! ([`ContainerRecord::probed`]). [`status`] is pure: the same record gives the
//! same status, so it can be computed whenever asked.

use std::net::IpAddr;
use std::time::SystemTime;

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_runtime::api::ExitInfo;
use keelson_runtime::config::QosClass;

use super::convert::RestartPolicy;

/// `Waiting` reason: the sandbox, volumes or image are being prepared.
pub const CONTAINER_CREATING: &str = "ContainerCreating";
/// `Waiting` reason: init containers have not all succeeded yet.
pub const POD_INITIALIZING: &str = "PodInitializing";
/// `Waiting` reason: the container is in its restart back-off.
pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
/// `Waiting` reason: the image could not be found, imported or pulled.
pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
/// `Waiting` reason: the container could not be created.
pub const CREATE_CONTAINER_ERROR: &str = "CreateContainerError";
/// `Terminated` reason: exit code 0.
pub const COMPLETED: &str = "Completed";
/// `Terminated` reason: a non-zero exit.
pub const ERROR: &str = "Error";
/// `Terminated` reason: killed by the OOM killer.
pub const OOM_KILLED: &str = "OOMKilled";

/// The prefix of container ids in status (`<runtime>://<id>`).
pub const CONTAINER_ID_PREFIX: &str = "keelson://";

/// How a container run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// The runtime's container id.
    pub container_id: Option<String>,
    /// The exit code (128 + signal when killed).
    pub exit_code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// `Completed`, `Error` or `OOMKilled`.
    pub reason: String,
    /// Detail, if any.
    pub message: Option<String>,
    /// When it started.
    pub started_at: Option<SystemTime>,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
}

impl Termination {
    /// A termination from the runtime's exit, with the kubelet's reason.
    pub fn from_exit(
        container_id: Option<String>,
        exit: ExitInfo,
        started_at: Option<SystemTime>,
        finished_at: Option<SystemTime>,
    ) -> Self {
        let reason = if exit.oom_killed {
            OOM_KILLED
        } else if exit.code == 0 {
            COMPLETED
        } else {
            ERROR
        };
        Termination {
            container_id,
            exit_code: exit.code,
            signal: exit.signal,
            reason: reason.to_owned(),
            message: None,
            started_at,
            finished_at,
        }
    }

    /// Exit code 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0
    }
}

/// Where a container is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerPhase {
    /// Not running, with the reason (`ContainerCreating`, `PodInitializing`,
    /// `CrashLoopBackOff`, …).
    Waiting {
        /// The reason.
        reason: String,
        /// Detail.
        message: Option<String>,
    },
    /// Running since.
    Running {
        /// The runtime's container id.
        container_id: String,
        /// Start time.
        started_at: Option<SystemTime>,
    },
    /// Ended and not going to be restarted (or not yet).
    Terminated(Termination),
    /// Its shim is gone: nothing is known.
    Unknown,
}

/// What the worker knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Its name.
    pub name: String,
    /// The image reference of the spec.
    pub image: String,
    /// The resolved image (name@digest or id), once known.
    pub image_id: Option<String>,
    /// Current state.
    pub phase: ContainerPhase,
    /// How the previous run ended.
    pub last_termination: Option<Termination>,
    /// Restarts so far.
    pub restart_count: u32,
    /// What its probes found, when it has probes and runs.
    pub probed: Option<Probed>,
}

/// A running container's probe results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// Started, and the readiness probe succeeds (or there is none).
    pub ready: bool,
}

impl ContainerRecord {
    /// A container that has not been created yet, waiting for `reason`.
    pub fn waiting(name: &str, image: &str, reason: &str) -> Self {
        ContainerRecord {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: None,
            phase: ContainerPhase::Waiting { reason: reason.to_owned(), message: None },
            last_termination: None,
            restart_count: 0,
            probed: None,
        }
    }

    fn succeeded(&self) -> bool {
        matches!(&self.phase, ContainerPhase::Terminated(t) if t.succeeded())
    }

    fn running(&self) -> bool {
        matches!(self.phase, ContainerPhase::Running { .. })
    }

    fn started(&self) -> bool {
        self.running() && self.probed.is_none_or(|p| p.started)
    }

    /// Running and, with probes, started and ready.
    pub fn ready(&self) -> bool {
        self.running() && self.probed.is_none_or(|p| p.ready)
    }
}

/// What the worker knows about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// When the worker first saw the pod (`startTime` once the node accepted it).
    pub start_time: Option<SystemTime>,
    /// The sandbox is up with its network.
    pub sandbox_ready: bool,
    /// The pod's IPs (the host's with `hostNetwork`).
    pub pod_ips: Vec<IpAddr>,
    /// The node's IP.
    pub host_ip: Option<IpAddr>,
    /// `restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// QoS class.
    pub qos: QosClass,
    /// Init containers in spec order.
    pub init_containers: Vec<ContainerRecord>,
    /// App containers in spec order.
    pub containers: Vec<ContainerRecord>,
    /// The pod could not be started at all (e.g. a volume check failed): reason and message.
    pub failure: Option<(String, String)>,
    /// The worker lost track of the pod's sandbox.
    pub unknown: bool,
}

fn time(t: Option<SystemTime>) -> Option<Time> {
    let d = t?.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let secs = i64::try_from(d.as_secs()).ok()?;
    let nanos = i32::try_from(d.subsec_nanos()).ok()?;
    k8s_openapi::jiff::Timestamp::new(secs, nanos).ok().map(Time)
}

fn state(p: &ContainerPhase) -> k8s::ContainerState {
    match p {
        ContainerPhase::Waiting { reason, message } => k8s::ContainerState {
            waiting: Some(k8s::ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        ContainerPhase::Running { started_at, .. } => k8s::ContainerState {
            running: Some(k8s::ContainerStateRunning { started_at: time(*started_at) }),
            ..Default::default()
        },
        ContainerPhase::Terminated(t) => terminated(t),
        // The kubelet reports a container it lost as waiting with no reason.
        ContainerPhase::Unknown => k8s::ContainerState {
            waiting: Some(k8s::ContainerStateWaiting::default()),
            ..Default::default()
        },
    }
}

fn terminated(t: &Termination) -> k8s::ContainerState {
    k8s::ContainerState {
        terminated: Some(k8s::ContainerStateTerminated {
            container_id: t.container_id.as_ref().map(|c| format!("{CONTAINER_ID_PREFIX}{c}")),
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            message: t.message.clone(),
            started_at: time(t.started_at),
            finished_at: time(t.finished_at),
        }),
        ..Default::default()
    }
}

/// One container's status; an init container is ready once it succeeded, an app container
/// while it runs and its probes allow.
fn container_status(c: &ContainerRecord, init: bool) -> k8s::ContainerStatus {
    let id = match &c.phase {
        ContainerPhase::Running { container_id, .. } => Some(container_id.clone()),
        ContainerPhase::Terminated(t) => t.container_id.clone(),
        _ => None,
    };
    k8s::ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone().unwrap_or_default(),
        container_id: id.map(|i| format!("{CONTAINER_ID_PREFIX}{i}")),
        state: Some(state(&c.phase)),
        last_state: Some(c.last_termination.as_ref().map(terminated).unwrap_or_default()),
        ready: if init { c.succeeded() } else { c.ready() },
        started: Some(c.started()),
        restart_count: i32::try_from(c.restart_count).unwrap_or(i32::MAX),
        ..Default::default()
    }
}

/// The pod phase by the kubelet's rules.
pub fn phase(r: &PodRecord) -> &'static str {
    if r.unknown {
        return "Unknown";
    }
    if r.failure.is_some() && r.restart_policy == RestartPolicy::Never {
        return "Failed";
    }
    // Init containers: one that failed for good fails the pod; until all succeeded, Pending.
    let init_failed = r
        .init_containers
        .iter()
        .any(|c| matches!(&c.phase, ContainerPhase::Terminated(t) if !t.succeeded()));
    if init_failed && r.restart_policy == RestartPolicy::Never {
        return "Failed";
    }
    if !r.init_containers.iter().all(ContainerRecord::succeeded) {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded, mut unknown) = (0, 0, 0, 0, 0);
    for c in &r.containers {
        match &c.phase {
            ContainerPhase::Running { .. } => running += 1,
            ContainerPhase::Terminated(t) => {
                stopped += 1;
                if t.succeeded() {
                    succeeded += 1;
                }
            }
            // Waiting to be restarted counts as stopped.
            ContainerPhase::Waiting { .. } if c.last_termination.is_some() => stopped += 1,
            ContainerPhase::Waiting { .. } => waiting += 1,
            ContainerPhase::Unknown => unknown += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 && unknown == 0 {
        return "Running";
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        return match r.restart_policy {
            RestartPolicy::Always => "Running",
            _ if stopped == succeeded => "Succeeded",
            RestartPolicy::Never => "Failed",
            RestartPolicy::OnFailure => "Running",
        };
    }
    "Pending"
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> k8s::PodCondition {
    k8s::PodCondition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: if ok { None } else { reason.map(str::to_owned) },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

fn names(v: &[&ContainerRecord]) -> String {
    format!("[{}]", v.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(" "))
}

/// The pod's status.
pub fn status(r: &PodRecord) -> k8s::PodStatus {
    let phase = phase(r);
    let not_init: Vec<&ContainerRecord> =
        r.init_containers.iter().filter(|c| !c.succeeded()).collect();
    let not_ready: Vec<&ContainerRecord> = r.containers.iter().filter(|c| !c.ready()).collect();
    let done = matches!(phase, "Succeeded" | "Failed");
    let initialized = not_init.is_empty() || (done && phase == "Succeeded");
    let ready = not_ready.is_empty() && !done;
    let ready_reason = if done { "PodCompleted" } else { "ContainersNotReady" };
    let ready_msg =
        (!done).then(|| format!("containers with unready status: {}", names(&not_ready)));
    let conditions = vec![
        condition("PodReadyToStartContainers", r.sandbox_ready, None, None),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            Some(format!("containers with incomplete status: {}", names(&not_init))),
        ),
        condition("Ready", ready, Some(ready_reason), ready_msg.clone()),
        condition("ContainersReady", ready, Some(ready_reason), ready_msg),
        condition("PodScheduled", true, None, None),
    ];
    let ips: Vec<String> = r.pod_ips.iter().map(ToString::to_string).collect();
    let qos = match r.qos {
        QosClass::Guaranteed => "Guaranteed",
        QosClass::Burstable => "Burstable",
        QosClass::BestEffort => "BestEffort",
    };
    k8s::PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        reason: r.failure.as_ref().map(|f| f.0.clone()),
        message: r.failure.as_ref().map(|f| f.1.clone()),
        host_ip: r.host_ip.map(|i| i.to_string()),
        host_ips: r.host_ip.map(|i| vec![k8s::HostIP { ip: i.to_string() }]),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.into_iter().map(|ip| k8s::PodIP { ip }).collect()),
        start_time: time(r.start_time),
        qos_class: Some(qos.to_owned()),
        init_container_statuses: (!r.init_containers.is_empty())
            .then(|| r.init_containers.iter().map(|c| container_status(c, true)).collect()),
        container_statuses: Some(r.containers.iter().map(|c| container_status(c, false)).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::time::Duration;

    use super::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn running(name: &str) -> ContainerRecord {
        ContainerRecord {
            phase: ContainerPhase::Running {
                container_id: format!("{name}0"),
                started_at: Some(t0()),
            },
            ..ContainerRecord::waiting(name, "busybox:1", "")
        }
    }

    fn exited(name: &str, code: i32, oom: bool) -> ContainerRecord {
        ContainerRecord {
            phase: ContainerPhase::Terminated(Termination::from_exit(
                Some(format!("{name}0")),
                ExitInfo { code, signal: None, oom_killed: oom },
                Some(t0()),
                Some(t0()),
            )),
            ..ContainerRecord::waiting(name, "busybox:1", "")
        }
    }

    fn record(init: Vec<ContainerRecord>, app: Vec<ContainerRecord>) -> PodRecord {
        PodRecord {
            start_time: Some(t0()),
            sandbox_ready: true,
            pod_ips: vec!["10.42.0.2".parse().unwrap(), "fd42::2".parse().unwrap()],
            host_ip: Some("192.0.2.1".parse().unwrap()),
            restart_policy: RestartPolicy::Always,
            qos: QosClass::BestEffort,
            init_containers: init,
            containers: app,
            failure: None,
            unknown: false,
        }
    }

    fn cond<'a>(s: &'a k8s::PodStatus, t: &str) -> &'a k8s::PodCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_pod_with_all_containers_running_is_running_and_ready() {
        let s = status(&record(vec![exited("i", 0, false)], vec![running("a"), running("b")]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        for c in
            ["PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"]
        {
            assert_eq!(cond(&s, c).status, "True", "{c}");
        }
        assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.2"));
        assert_eq!(s.pod_ips.as_ref().unwrap().len(), 2);
        assert_eq!(s.host_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("keelson://a0"));
        assert!(cs.state.as_ref().unwrap().running.is_some());
        let init = &s.init_container_statuses.as_ref().unwrap()[0];
        assert!(init.ready, "a completed init container is ready");
        assert_eq!(
            init.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(),
            Some("Completed")
        );
        assert!(s.start_time.is_some());
    }

    #[test]
    fn a_pod_whose_init_containers_run_is_pending_and_not_initialized() {
        let r = record(
            vec![exited("i1", 0, false), running("i2")],
            vec![ContainerRecord::waiting("a", "busybox:1", POD_INITIALIZING)],
        );
        let s = status(&r);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = cond(&s, "Initialized");
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("ContainersNotInitialized"));
        assert_eq!(c.message.as_deref(), Some("containers with incomplete status: [i2]"));
        let w = s.container_statuses.as_ref().unwrap()[0].state.clone().unwrap().waiting.unwrap();
        assert_eq!(w.reason.as_deref(), Some("PodInitializing"));
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [a]")
        );
    }

    #[test]
    fn a_failed_init_container_fails_the_pod_only_with_restart_never() {
        let mut r = record(
            vec![exited("i", 1, false)],
            vec![ContainerRecord::waiting("a", "b", POD_INITIALIZING)],
        );
        assert_eq!(phase(&r), "Pending");
        r.restart_policy = RestartPolicy::Never;
        assert_eq!(phase(&r), "Failed");
    }

    #[test]
    fn a_pod_being_created_is_pending_and_not_ready_to_start_containers() {
        let mut r = record(vec![], vec![ContainerRecord::waiting("a", "b", CONTAINER_CREATING)]);
        r.sandbox_ready = false;
        r.pod_ips.clear();
        let s = status(&r);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
        assert!(s.pod_ip.is_none() && s.pod_ips.is_none());
    }

    #[test]
    fn a_crash_looping_container_keeps_the_pod_running_with_its_last_state() {
        let mut c = ContainerRecord::waiting("a", "b", CRASH_LOOP_BACK_OFF);
        c.restart_count = 3;
        c.last_termination = match exited("a", 2, false).phase {
            ContainerPhase::Terminated(t) => Some(t),
            _ => unreachable!(),
        };
        let s = status(&record(vec![], vec![c]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 3);
        assert!(!cs.ready);
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
        assert_eq!(
            cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
    }

    #[test]
    fn termination_reasons_are_completed_error_and_oom_killed() {
        let reason = |c: &ContainerRecord| match &c.phase {
            ContainerPhase::Terminated(t) => t.reason.clone(),
            _ => unreachable!(),
        };
        assert_eq!(reason(&exited("a", 0, false)), "Completed");
        assert_eq!(reason(&exited("a", 1, false)), "Error");
        assert_eq!(reason(&exited("a", 137, true)), "OOMKilled");
    }

    #[test]
    fn finished_pods_are_succeeded_or_failed_by_restart_policy() {
        let mut r = record(vec![], vec![exited("a", 0, false), exited("b", 0, false)]);
        r.restart_policy = RestartPolicy::Never;
        assert_eq!(phase(&r), "Succeeded");
        let s = status(&r);
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        r.restart_policy = RestartPolicy::OnFailure;
        assert_eq!(phase(&r), "Succeeded");
        r.restart_policy = RestartPolicy::Always;
        assert_eq!(phase(&r), "Running");
        let mut r = record(vec![], vec![exited("a", 0, false), exited("b", 1, false)]);
        r.restart_policy = RestartPolicy::Never;
        assert_eq!(phase(&r), "Failed");
        r.restart_policy = RestartPolicy::OnFailure;
        assert_eq!(phase(&r), "Running");
    }

    #[test]
    fn one_running_and_one_exited_container_is_running() {
        let mut r = record(vec![], vec![running("a"), exited("b", 0, false)]);
        r.restart_policy = RestartPolicy::Never;
        assert_eq!(phase(&r), "Running");
        assert_eq!(cond(&status(&r), "Ready").status, "False");
    }

    #[test]
    fn a_lost_sandbox_is_unknown_and_a_pod_that_cannot_start_reports_why() {
        let mut r = record(vec![], vec![running("a")]);
        r.unknown = true;
        assert_eq!(phase(&r), "Unknown");
        let mut r = record(vec![], vec![ContainerRecord::waiting("a", "b", CONTAINER_CREATING)]);
        r.failure = Some(("VolumeFailed".into(), "hostPath type check failed".into()));
        assert_eq!(phase(&r), "Pending");
        r.restart_policy = RestartPolicy::Never;
        let s = status(&r);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(s.reason.as_deref(), Some("VolumeFailed"));
    }

    #[test]
    fn probes_decide_started_and_ready_of_a_running_container() {
        let mut web = running("web");
        web.probed = Some(Probed { started: false, ready: false });
        let r = record(vec![], vec![web.clone(), running("side")]);
        let st = status(&r);
        assert_eq!(st.phase.as_deref(), Some("Running"));
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert_eq!((cs.started, cs.ready), (Some(false), false));
        let ready = st.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [web]"));

        web.probed = Some(Probed { started: true, ready: true });
        let st = status(&record(vec![], vec![web, running("side")]));
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert_eq!((cs.started, cs.ready), (Some(true), true));
        let ready = st.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
    }
}
