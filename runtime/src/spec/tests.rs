//! Tests of the spec builder: golden-ish assertions on the fields and every error case.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxNamespaceType, LinuxSeccompAction, PosixRlimitType, Spec,
};

use super::*;
use crate::config::{self, SeccompProfile};

struct Fixture {
    rootfs: tempfile::TempDir,
    container: ContainerConfig,
    image: oci_spec::image::Config,
    sandbox: SandboxNamespaces,
    etc: EtcFiles,
    limits: bool,
}

impl Fixture {
    fn new() -> Self {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("etc")).unwrap();
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnginx:x:101:101::/:/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            rootfs.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root\nnginx:x:101:\nweb:x:500:nginx\n",
        )
        .unwrap();
        let mut image = oci_spec::image::Config::default();
        image.set_entrypoint(Some(vec!["/docker-entrypoint.sh".into()]));
        image.set_cmd(Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]));
        image.set_env(Some(vec!["PATH=/usr/sbin:/usr/bin".into(), "NGINX_VERSION=1.27".into()]));
        Self {
            rootfs,
            container: ContainerConfig {
                name: "web".into(),
                image: "nginx:1.27".into(),
                command: vec![],
                args: vec![],
                env: vec![],
                working_dir: None,
                mounts: vec![],
                security: config::SecurityContext::default(),
                resources: Resources::default(),
                stdin: false,
                stdin_once: false,
                tty: false,
                restart_count: 0,
                labels: Default::default(),
                log_rotation: Default::default(),
            },
            image,
            sandbox: SandboxNamespaces {
                network: NamespaceMode::Join("/run/keelson/netns/abc".into()),
                ipc: NamespaceMode::Join("/proc/42/ns/ipc".into()),
                uts: NamespaceMode::Join("/proc/42/ns/uts".into()),
                pid: NamespaceMode::New,
            },
            etc: EtcFiles {
                hosts: Some("/var/lib/keelson/sandboxes/abc/hosts".into()),
                resolv_conf: Some("/var/lib/keelson/sandboxes/abc/resolv.conf".into()),
                hostname: Some("/var/lib/keelson/sandboxes/abc/hostname".into()),
                shm: Some("/run/keelson/sandboxes/abc/shm".into()),
            },
            limits: true,
        }
    }

    fn input(&self) -> SpecInput<'_> {
        SpecInput {
            container: &self.container,
            image: &self.image,
            rootfs: self.rootfs.path(),
            sandbox: &self.sandbox,
            hostname: "web-7d9f",
            cgroups_path: Path::new("/keelson/burstable/podu1/c1"),
            cgroup_limits: self.limits,
            etc_files: &self.etc,
        }
    }

    fn build(&self) -> Spec {
        build_with_host(&self.input(), &host(20_000)).unwrap()
    }

    fn err(&self) -> Error {
        build_with_host(&self.input(), &host(20_000)).unwrap_err()
    }
}

/// A host with every capability and the given open-files hard limit.
fn host(nofile_hard: u64) -> HostFacts {
    HostFacts { nofile_hard, bounding: caps::ALL.into_iter().collect() }
}

fn process(spec: &Spec) -> &Process {
    spec.process().as_ref().unwrap()
}

fn args(spec: &Spec) -> Vec<String> {
    process(spec).args().clone().unwrap()
}

fn env(spec: &Spec) -> Vec<String> {
    process(spec).env().clone().unwrap()
}

fn linux(spec: &Spec) -> &oci_spec::runtime::Linux {
    spec.linux().as_ref().unwrap()
}

fn mount_at<'a>(spec: &'a Spec, dest: &str) -> Option<&'a Mount> {
    spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(dest))
}

fn options(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

#[test]
fn image_entrypoint_and_cmd_run_when_the_container_says_nothing() {
    let f = Fixture::new();
    assert_eq!(args(&f.build()), vec!["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]);
}

#[test]
fn args_alone_replace_cmd_and_keep_the_entrypoint() {
    let mut f = Fixture::new();
    f.container.args = vec!["nginx-debug".into()];
    assert_eq!(args(&f.build()), vec!["/docker-entrypoint.sh", "nginx-debug"]);
}

#[test]
fn command_replaces_entrypoint_and_drops_cmd() {
    let mut f = Fixture::new();
    f.container.command = vec!["sh".into(), "-c".into()];
    assert_eq!(args(&f.build()), vec!["sh", "-c"]);
    f.container.args = vec!["echo hello; exit 3".into()];
    assert_eq!(args(&f.build()), vec!["sh", "-c", "echo hello; exit 3"]);
}

#[test]
fn cmd_alone_runs_when_there_is_no_entrypoint() {
    let mut f = Fixture::new();
    f.image.set_entrypoint(None);
    assert_eq!(args(&f.build()), vec!["nginx", "-g", "daemon off;"]);
}

#[test]
fn nothing_to_run_is_a_clear_error() {
    let mut f = Fixture::new();
    f.image.set_entrypoint(None);
    f.image.set_cmd(None);
    let err = f.err();
    assert!(matches!(err, Error::NothingToRun { ref container } if container == "web"), "{err}");
    assert!(err.to_string().contains("web"));
    f.image.set_cmd(Some(vec![String::new()]));
    assert!(matches!(f.err(), Error::NothingToRun { .. }));
}

#[test]
fn env_is_image_then_hostname_then_container_overriding_by_name() {
    let mut f = Fixture::new();
    f.container.env =
        vec![("NGINX_VERSION".into(), "custom".into()), ("EXTRA".into(), "a=b".into())];
    assert_eq!(
        env(&f.build()),
        vec!["PATH=/usr/sbin:/usr/bin", "NGINX_VERSION=custom", "HOSTNAME=web-7d9f", "EXTRA=a=b"]
    );
}

#[test]
fn path_defaults_when_nobody_sets_it() {
    let mut f = Fixture::new();
    f.image.set_env(None);
    let e = env(&f.build());
    assert_eq!(e[0], format!("PATH={DEFAULT_PATH}"));
    assert!(e.contains(&"HOSTNAME=web-7d9f".to_owned()));
    f.container.env = vec![("HOSTNAME".into(), "mine".into())];
    assert!(env(&f.build()).contains(&"HOSTNAME=mine".to_owned()));
}

#[test]
fn working_dir_comes_from_container_then_image_then_root() {
    let mut f = Fixture::new();
    assert_eq!(process(&f.build()).cwd(), Path::new("/"));
    f.image.set_working_dir(Some("/srv".into()));
    assert_eq!(process(&f.build()).cwd(), Path::new("/srv"));
    f.container.working_dir = Some("/app".into());
    assert_eq!(process(&f.build()).cwd(), Path::new("/app"));
    f.container.working_dir = Some("relative".into());
    assert!(matches!(f.err(), Error::RelativeWorkingDir { .. }));
}

#[test]
fn image_user_is_resolved_from_the_rootfs() {
    let mut f = Fixture::new();
    f.image.set_user(Some("nginx".into()));
    f.container.security.supplemental_groups = vec![2000];
    let s = f.build();
    let u = process(&s).user();
    assert_eq!((u.uid(), u.gid()), (101, 101));
    assert_eq!(u.additional_gids().clone().unwrap(), vec![101, 500, 2000]);
}

#[test]
fn run_as_user_overrides_the_image_user() {
    let mut f = Fixture::new();
    f.image.set_user(Some("nginx".into()));
    f.container.security.run_as_user = Some(1234);
    f.container.security.run_as_group = Some(5678);
    let s = f.build();
    let u = process(&s).user();
    assert_eq!((u.uid(), u.gid()), (1234, 5678));
    assert_eq!(u.additional_gids().clone().unwrap(), vec![5678]);
}

#[test]
fn unknown_image_user_is_a_clear_error() {
    let mut f = Fixture::new();
    f.image.set_user(Some("postgres".into()));
    let err = f.err();
    assert!(matches!(err, Error::UnknownUser { ref name } if name == "postgres"), "{err}");
    f.image.set_user(Some("nginx:nogroup".into()));
    assert!(matches!(f.err(), Error::UnknownGroup { .. }));
}

#[test]
fn default_capabilities_with_changes_and_unknown_names_rejected() {
    let mut f = Fixture::new();
    let s = f.build();
    let b = bounding_set(&s);
    assert_eq!(b, caps::default_set());
    let c = process(&s).capabilities().clone().unwrap();
    assert_eq!(c.effective().clone().unwrap(), b);
    assert_eq!(c.permitted().clone().unwrap(), b);
    assert!(c.inheritable().clone().unwrap().is_empty());
    assert!(c.ambient().clone().unwrap().is_empty());

    f.container.security.capabilities =
        config::Capabilities { add: vec!["NET_ADMIN".into()], drop: vec!["ALL".into()] };
    assert_eq!(bounding_set(&f.build()), [Capability::NetAdmin].into_iter().collect());

    f.container.security.capabilities.add = vec!["CAP_FLY".into()];
    assert!(matches!(f.err(), Error::UnknownCapability { ref name } if name == "CAP_FLY"));

    // On a host without CAP_SYS_RESOURCE (these sandboxes), privileged gets what there is.
    f.container.security.capabilities = config::Capabilities::default();
    f.container.security.privileged = true;
    let poor = HostFacts { nofile_hard: 1024, bounding: caps::from_mask(0x0000_01ff_feff_ffff) };
    let s = build_with_host(&f.input(), &poor).unwrap();
    assert_eq!(bounding_set(&s), poor.bounding);
}

#[test]
fn runtime_default_seccomp_is_applied_with_the_final_capabilities() {
    let mut f = Fixture::new();
    let s = f.build();
    let sc = linux(&s).seccomp().clone().unwrap();
    assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
    let none = [0u64; 6];
    assert_eq!(
        seccomp::evaluate(&sc, "unshare", &[0x1000_0000, 0, 0, 0, 0, 0]),
        seccomp::Verdict::Errno(1)
    );
    assert_eq!(seccomp::evaluate(&sc, "read", &none), seccomp::Verdict::Allow);

    f.container.security.capabilities.add = vec!["SYS_ADMIN".into()];
    let sc = linux(&f.build()).seccomp().clone().unwrap();
    assert_eq!(
        seccomp::evaluate(&sc, "unshare", &[0x1000_0000, 0, 0, 0, 0, 0]),
        seccomp::Verdict::Allow
    );
}

#[test]
fn unconfined_and_localhost_seccomp() {
    let mut f = Fixture::new();
    f.container.security.seccomp = SeccompProfile::Unconfined;
    assert!(linux(&f.build()).seccomp().is_none());

    let profile = f.rootfs.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    f.container.security.seccomp = SeccompProfile::Localhost(profile.clone());
    let sc = linux(&f.build()).seccomp().clone().unwrap();
    assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActAllow);

    std::fs::write(&profile, "[1,2").unwrap();
    let err = f.err();
    assert!(matches!(err, Error::ParseSeccomp { ref path, .. } if path == &profile), "{err}");
}

#[test]
fn privileged_gets_all_caps_no_seccomp_no_masks_and_rw_sys() {
    let mut f = Fixture::new();
    f.container.security.privileged = true;
    let s = f.build();
    assert_eq!(bounding_set(&s).len(), caps::ALL.len());
    let l = linux(&s);
    assert!(l.seccomp().is_none());
    assert!(l.masked_paths().is_none());
    assert!(l.readonly_paths().is_none());
    assert!(options(mount_at(&s, "/sys").unwrap()).contains(&"rw".to_owned()));
    assert_eq!(process(&s).no_new_privileges(), Some(false));
}

#[test]
fn unprivileged_has_masked_and_readonly_paths_and_ro_sys() {
    let s = Fixture::new().build();
    let l = linux(&s);
    let masked = l.masked_paths().clone().unwrap();
    assert!(
        masked.contains(&"/proc/kcore".to_owned()) && masked.contains(&"/sys/firmware".to_owned())
    );
    assert!(l.readonly_paths().clone().unwrap().contains(&"/proc/sys".to_owned()));
    assert!(options(mount_at(&s, "/sys").unwrap()).contains(&"ro".to_owned()));
    let cg = mount_at(&s, "/sys/fs/cgroup").unwrap();
    assert_eq!(cg.typ().as_deref(), Some("cgroup2"));
    assert!(options(cg).contains(&"ro".to_owned()));
}

#[test]
fn no_new_privs_follows_the_config_rule() {
    let mut f = Fixture::new();
    assert_eq!(process(&f.build()).no_new_privileges(), Some(true));
    f.container.security.allow_privilege_escalation = Some(true);
    assert_eq!(process(&f.build()).no_new_privileges(), Some(false));
    f.container.security.allow_privilege_escalation = None;
    f.container.security.capabilities.add = vec!["SYS_ADMIN".into()];
    assert_eq!(process(&f.build()).no_new_privileges(), Some(false));
    f.container.security.allow_privilege_escalation = Some(false);
    assert_eq!(process(&f.build()).no_new_privileges(), Some(true));
}

#[test]
fn standard_mounts_are_present_in_order() {
    let s = Fixture::new().build();
    let dests: Vec<PathBuf> =
        s.mounts().clone().unwrap().iter().map(|m| m.destination().clone()).collect();
    let expect = [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
    ];
    assert_eq!(dests, expect.iter().map(PathBuf::from).collect::<Vec<_>>());
    let pts = mount_at(&s, "/dev/pts").unwrap();
    assert!(options(pts).contains(&"newinstance".to_owned()));
    let hosts = mount_at(&s, "/etc/hosts").unwrap();
    assert_eq!(hosts.source().as_deref(), Some(Path::new("/var/lib/keelson/sandboxes/abc/hosts")));
    assert_eq!(hosts.typ().as_deref(), Some("bind"));
}

#[test]
fn dev_shm_is_the_pods_when_given_the_hosts_with_host_ipc_and_fresh_otherwise() {
    let mut f = Fixture::new();
    let s = f.build();
    let shm = mount_at(&s, "/dev/shm").unwrap();
    assert_eq!(shm.source().as_deref(), Some(Path::new("/run/keelson/sandboxes/abc/shm")));
    assert!(options(shm).contains(&"rbind".to_owned()));

    f.etc.shm = None;
    let s = f.build();
    let shm = mount_at(&s, "/dev/shm").unwrap();
    assert_eq!(shm.typ().as_deref(), Some("tmpfs"));

    f.sandbox.ipc = NamespaceMode::Host;
    let s = f.build();
    assert_eq!(mount_at(&s, "/dev/shm").unwrap().source().as_deref(), Some(Path::new("/dev/shm")));
}

#[test]
fn bind_mounts_carry_propagation_and_ro_and_sort_parents_first() {
    let mut f = Fixture::new();
    f.container.mounts = vec![
        config::Mount {
            host_path: "/var/lib/keelson/vol/b".into(),
            container_path: "/data/cache".into(),
            read_only: true,
            propagation: MountPropagation::HostToContainer,
        },
        config::Mount {
            host_path: "/var/lib/keelson/vol/a".into(),
            container_path: "/data".into(),
            read_only: false,
            propagation: MountPropagation::Private,
        },
    ];
    let s = f.build();
    let all = s.mounts().clone().unwrap();
    let data = all.iter().position(|m| m.destination() == Path::new("/data")).unwrap();
    let cache = all.iter().position(|m| m.destination() == Path::new("/data/cache")).unwrap();
    assert!(data < cache, "parent mounted after child");
    assert_eq!(options(&all[cache]), vec!["rbind", "rslave", "ro"]);
    assert_eq!(options(&all[data]), vec!["rbind", "rprivate", "rw"]);
    assert_eq!(linux(&s).rootfs_propagation().as_deref(), Some("rslave"));

    f.container.mounts[1].propagation = MountPropagation::Bidirectional;
    let s = f.build();
    assert_eq!(linux(&s).rootfs_propagation().as_deref(), Some("rshared"));
    assert!(options(mount_at(&s, "/data").unwrap()).contains(&"rshared".to_owned()));
}

#[test]
fn a_container_mount_replaces_a_default_at_the_same_place() {
    let mut f = Fixture::new();
    f.container.mounts = vec![config::Mount {
        host_path: "/var/lib/keelson/my-hosts".into(),
        container_path: "/etc/hosts/".into(),
        read_only: true,
        propagation: MountPropagation::Private,
    }];
    let s = f.build();
    let hosts: Vec<&Mount> = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| normalize(m.destination()) == Path::new("/etc/hosts"))
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/var/lib/keelson/my-hosts")));
}

#[test]
fn relative_mount_paths_are_errors() {
    let mut f = Fixture::new();
    f.container.mounts = vec![config::Mount {
        host_path: "vol".into(),
        container_path: "/data".into(),
        read_only: false,
        propagation: MountPropagation::Private,
    }];
    assert!(matches!(f.err(), Error::RelativeMount { .. }));
    f.container.mounts[0].host_path = "/vol".into();
    f.container.mounts[0].container_path = "data".into();
    assert!(matches!(f.err(), Error::RelativeMount { .. }));
}

#[test]
fn readonly_rootfs_makes_root_and_etc_files_read_only() {
    let mut f = Fixture::new();
    assert_eq!(f.build().root().as_ref().unwrap().readonly(), Some(false));
    f.container.security.read_only_root_filesystem = true;
    let s = f.build();
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(s.root().as_ref().unwrap().path(), f.rootfs.path());
    assert!(options(mount_at(&s, "/etc/resolv.conf").unwrap()).contains(&"ro".to_owned()));
}

#[test]
fn nofile_is_1024_clamped_to_the_hard_limit() {
    let f = Fixture::new();
    let nofile = |hard| {
        let s = build_with_host(&f.input(), &host(hard)).unwrap();
        let r = process(&s).rlimits().clone().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].typ(), PosixRlimitType::RlimitNofile);
        (r[0].soft(), r[0].hard())
    };
    assert_eq!(nofile(20_000), (1024, 1024));
    assert_eq!(nofile(512), (512, 512));
    // The real build reads this process's limit and never asks for more.
    let s = build(&f.input()).unwrap();
    let hard =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap().1;
    assert!(process(&s).rlimits().clone().unwrap()[0].hard() <= hard);
}

#[test]
fn namespaces_follow_the_sandbox() {
    let mut f = Fixture::new();
    let ns = |s: &Spec| -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        linux(s).namespaces().clone().unwrap().iter().map(|n| (n.typ(), n.path().clone())).collect()
    };
    let s = f.build();
    assert_eq!(
        ns(&s),
        vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Cgroup, None),
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Network, Some("/run/keelson/netns/abc".into())),
            (LinuxNamespaceType::Ipc, Some("/proc/42/ns/ipc".into())),
            (LinuxNamespaceType::Uts, Some("/proc/42/ns/uts".into())),
        ]
    );
    assert_eq!(s.hostname().as_deref(), Some("web-7d9f"));

    f.sandbox = SandboxNamespaces {
        network: NamespaceMode::Host,
        ipc: NamespaceMode::Host,
        uts: NamespaceMode::Host,
        pid: NamespaceMode::Join("/proc/42/ns/pid".into()),
    };
    let s = f.build();
    assert_eq!(
        ns(&s),
        vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Cgroup, None),
            (LinuxNamespaceType::Pid, Some("/proc/42/ns/pid".into())),
        ]
    );
    assert_eq!(
        s.hostname(),
        &None,
        "no hostname without a UTS namespace (libcontainer refuses it)"
    );
}

#[test]
fn resources_map_like_the_kubelet_only_when_limits_are_on() {
    let mut f = Fixture::new();
    f.container.resources = Resources {
        cpu_request_millis: Some(250),
        cpu_limit_millis: Some(500),
        memory_request_bytes: Some(64 << 20),
        memory_limit_bytes: Some(128 << 20),
        pids_limit: Some(64),
    };
    let s = f.build();
    let r = linux(&s).resources().clone().unwrap();
    let cpu = r.cpu().clone().unwrap();
    assert_eq!(cpu.shares(), Some(256));
    assert_eq!(cpu.quota(), Some(50_000));
    assert_eq!(cpu.period(), Some(100_000));
    let mem = r.memory().unwrap();
    assert_eq!(mem.limit(), Some(128 << 20));
    assert_eq!(mem.swap(), Some(128 << 20));
    assert_eq!(r.pids().unwrap().limit(), 64);
    let devices = r.devices().clone().unwrap();
    assert!(!devices[0].allow() && devices[0].access().as_deref() == Some("rwm"), "deny all first");
    assert!(devices.iter().any(|d| d.allow() && d.major() == Some(136)), "ptys allowed");
    assert_eq!(linux(&s).cgroups_path().as_deref(), Some(Path::new("/keelson/burstable/podu1/c1")));

    // No request: the limit is the request, as the API server defaults it.
    f.container.resources.cpu_request_millis = None;
    let cpu = linux(&f.build()).resources().clone().unwrap().cpu().clone().unwrap();
    assert_eq!(cpu.shares(), Some(512));

    // BestEffort: minimum shares, no quota, no memory or pids section.
    f.container.resources = Resources::default();
    let r = linux(&f.build()).resources().clone().unwrap();
    assert_eq!(r.cpu().clone().unwrap().shares(), Some(2));
    assert_eq!(r.cpu().clone().unwrap().quota(), None);
    assert!(r.memory().is_none() && r.pids().is_none());

    f.limits = false;
    let s = f.build();
    assert!(linux(&s).resources().is_none());
    assert!(linux(&s).cgroups_path().is_some(), "accounting still places the container");
}

#[test]
fn default_devices_are_listed() {
    let s = Fixture::new().build();
    let devs: Vec<(PathBuf, i64, i64)> = linux(&s)
        .devices()
        .clone()
        .unwrap()
        .iter()
        .map(|d| (d.path().clone(), d.major(), d.minor()))
        .collect();
    for (p, ma, mi) in DEFAULT_DEVICES {
        assert!(devs.contains(&(PathBuf::from(p), ma, mi)), "{p}");
    }
}

#[test]
fn terminal_follows_tty() {
    let mut f = Fixture::new();
    assert_eq!(process(&f.build()).terminal(), Some(false));
    f.container.tty = true;
    assert_eq!(process(&f.build()).terminal(), Some(true));
}

#[test]
fn the_spec_round_trips_as_config_json() {
    let s = Fixture::new().build();
    let json = serde_json::to_string_pretty(&s).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert!(json.contains("\"ociVersion\": \"1.0.2\""));
}

#[test]
fn exec_inherits_user_cwd_and_caps_and_overrides_args_tty_env() {
    let mut f = Fixture::new();
    f.image.set_user(Some("nginx".into()));
    f.container.working_dir = Some("/srv".into());
    f.container.tty = false;
    let spec = f.build();
    let exec = ExecProcess {
        args: vec!["sh".into()],
        env: vec![("TERM".into(), "xterm".into()), ("NGINX_VERSION".into(), "x".into())],
        tty: true,
    };
    let p = build_exec_process(&spec, &exec).unwrap();
    assert_eq!(p.args().clone().unwrap(), vec!["sh"]);
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.user().uid(), 101);
    assert_eq!(p.capabilities(), process(&spec).capabilities());
    assert_eq!(p.no_new_privileges(), process(&spec).no_new_privileges());
    let e = p.env().clone().unwrap();
    assert!(e.contains(&"NGINX_VERSION=x".to_owned()) && e.contains(&"TERM=xterm".to_owned()));
    assert_eq!(e.iter().filter(|v| v.starts_with("NGINX_VERSION=")).count(), 1);

    assert!(matches!(build_exec_process(&spec, &ExecProcess::default()), Err(Error::EmptyExec)));
    let mut bare = spec.clone();
    bare.set_process(None);
    assert!(matches!(build_exec_process(&bare, &exec), Err(Error::NoProcess)));
}

#[test]
fn privileged_containers_get_the_host_devices() {
    let host = host_devices(Path::new("/dev")).unwrap();
    let null = host.iter().find(|d| d.path() == Path::new("/dev/null")).expect("/dev/null listed");
    assert_eq!((null.major(), null.minor()), (1, 3));
    assert!(host
        .iter()
        .all(|d| d.path() != Path::new("/dev/ptmx") && d.path() != Path::new("/dev/console")));
    assert!(host.iter().all(|d| !d.path().starts_with("/dev/pts")));

    let mut f = Fixture::new();
    f.container.security.privileged = true;
    let s = f.build();
    let devs = linux(&s).devices().clone().unwrap();
    let nulls = devs.iter().filter(|d| d.path() == Path::new("/dev/null")).count();
    assert_eq!(nulls, 1, "default and host devices are merged by path");
    assert!(host.iter().all(|h| devs.contains(h)), "every host device is in the spec");
    let rules = linux(&s).resources().clone().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow(), "privileged: every device allowed");
}

#[test]
fn unprivileged_containers_get_only_the_default_devices() {
    let s = Fixture::new().build();
    assert_eq!(linux(&s).devices().clone().unwrap().len(), DEFAULT_DEVICES.len());
}

#[test]
fn adapting_for_libcontainer_swaps_only_the_masked_comparisons() {
    let f = Fixture::new();
    let spec = f.build();
    let mut adapted = spec.clone();
    adapt_for_libcontainer(&mut adapted);
    assert_ne!(adapted, spec);
    let sc = linux(&adapted).seccomp().clone().unwrap();
    let clone = sc.syscalls().iter().flatten().find(|r| r.names() == &["clone"]).unwrap();
    let arg = clone.args().clone().unwrap()[0];
    assert_eq!((arg.value(), arg.value_two()), (0, Some(0x7e02_0000)));
    adapt_for_libcontainer(&mut adapted);
    assert_eq!(adapted, spec);
    // Nothing to do without seccomp (no_new_privs is set here).
    let mut unconfined = spec.clone();
    unconfined.linux_mut().as_mut().unwrap().set_seccomp(None);
    let before = unconfined.clone();
    adapt_for_libcontainer(&mut unconfined);
    assert_eq!(unconfined, before);
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn runtime_default_compiles_once_per_profile_to_a_kernel_sized_program() {
    let dir = tempfile::tempdir().unwrap();
    let cache = filter::FilterCache::new(dir.path().join("seccomp"));
    let spec = Fixture::new().build();
    let seccomp = linux(&spec).seccomp().clone().unwrap();
    let first = cache.program(&seccomp).unwrap();
    let program = keelson_shim_proto::seccomp::Program::parse(&first).unwrap();
    // ~350 syscalls on three architectures, with argument checks: hundreds of instructions.
    assert!(program.len() > 300, "{} instructions", program.len());
    let again = cache.program(&seccomp).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "compiled twice");
    assert_eq!(files_in(&dir.path().join("seccomp")).len(), 1);

    // Another profile (CAP_SYS_ADMIN's rules) is another program and another file.
    let mut f = Fixture::new();
    f.container.security.capabilities.add = vec!["SYS_ADMIN".into()];
    let admin = linux(&f.build()).seccomp().clone().unwrap();
    assert_ne!(*cache.program(&admin).unwrap(), *first);
    assert_eq!(files_in(&dir.path().join("seccomp")).len(), 2);

    // A restarted runtime reads the file; a torn one is compiled again.
    let file = files_in(&dir.path().join("seccomp"))
        .into_iter()
        .find(|p| std::fs::read(p).unwrap() == *first);
    let file = file.unwrap();
    let reopened = filter::FilterCache::new(dir.path().join("seccomp"));
    assert_eq!(*reopened.program(&seccomp).unwrap(), *first);
    std::fs::write(&file, [1, 2, 3]).unwrap();
    let repaired = filter::FilterCache::new(dir.path().join("seccomp"));
    assert_eq!(*repaired.program(&seccomp).unwrap(), *first);
    assert_eq!(std::fs::read(&file).unwrap(), *first);
}

#[test]
fn the_executor_loads_the_filter_only_when_the_process_can() {
    // RuntimeDefault sets no_new_privs unless escalation is allowed.
    let mut f = Fixture::new();
    assert!(filter::executor_can_load(&f.build()));
    f.container.security.allow_privilege_escalation = Some(true);
    assert!(!filter::executor_can_load(&f.build()), "no nnp and no CAP_SYS_ADMIN");
    f.container.security.capabilities.add = vec!["SYS_ADMIN".into()];
    assert!(filter::executor_can_load(&f.build()), "CAP_SYS_ADMIN stays effective");

    // Profiles that need libcontainer's plumbing stay with libcontainer.
    let mut notify = Fixture::new().build();
    let sc = notify.linux_mut().as_mut().unwrap().seccomp_mut().as_mut().unwrap();
    let mut rules = sc.syscalls().clone().unwrap();
    rules[0].set_action(LinuxSeccompAction::ScmpActNotify);
    sc.set_syscalls(Some(rules));
    assert!(!filter::executor_can_load(&notify));
    let mut flagged = Fixture::new().build();
    let sc = flagged.linux_mut().as_mut().unwrap().seccomp_mut().as_mut().unwrap();
    sc.set_flags(Some(vec![oci_spec::runtime::LinuxSeccompFilterFlag::SeccompFilterFlagLog]));
    assert!(!filter::executor_can_load(&flagged));
}

#[test]
fn bundles_carry_either_the_program_or_the_profile_never_both() {
    let dir = tempfile::tempdir().unwrap();
    let cache = filter::FilterCache::new(dir.path().join("cache"));
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let program_file = bundle.join(filter::BUNDLE_FILTER);

    let mut fast = Fixture::new().build();
    assert!(filter::prepare_bundle_seccomp(&cache, &mut fast, &bundle).unwrap());
    assert!(linux(&fast).seccomp().is_none(), "libcontainer would compile it again");
    assert!(program_file.exists());

    let mut f = Fixture::new();
    f.container.security.allow_privilege_escalation = Some(true);
    let mut slow = f.build();
    let before = slow.clone();
    assert!(!filter::prepare_bundle_seccomp(&cache, &mut slow, &bundle).unwrap());
    assert_eq!(slow, before);
    assert!(!program_file.exists(), "a stale program would be loaded on top");

    let mut unconfined = Fixture::new().build();
    unconfined.linux_mut().as_mut().unwrap().set_seccomp(None);
    assert!(!filter::prepare_bundle_seccomp(&cache, &mut unconfined, &bundle).unwrap());
    assert!(!program_file.exists());
}

#[test]
fn adapting_for_libcontainer_writes_escalation_allowed_as_absent_no_new_privs() {
    let mut f = Fixture::new();
    f.container.security.allow_privilege_escalation = Some(true);
    let mut spec = f.build();
    assert_eq!(process(&spec).no_new_privileges(), Some(false));
    adapt_for_libcontainer(&mut spec);
    assert_eq!(process(&spec).no_new_privileges(), None);
    let mut nnp = Fixture::new().build();
    adapt_for_libcontainer(&mut nnp);
    assert_eq!(process(&nnp).no_new_privileges(), Some(true));
}
