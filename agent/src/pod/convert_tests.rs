#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use super::*;

fn node() -> NodeContext {
    NodeContext {
        node_name: "edge-1".into(),
        state_dir: "/var/lib/keelson/agent".into(),
        seccomp_root: "/var/lib/keelson/seccomp".into(),
    }
}

fn pod(yaml: &str) -> k8s::Pod {
    let base = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, uid: 1234-abcd}\n";
    serde_yaml_ng::from_str(&format!("{base}{yaml}")).unwrap()
}

fn ok(yaml: &str) -> PodPlan {
    plan(&pod(yaml), &node()).unwrap()
}

fn err(yaml: &str) -> String {
    plan(&pod(yaml), &node()).unwrap_err().to_string()
}

const ONE: &str = "spec: {containers: [{name: c, image: 'busybox:1.36'}]}";

#[test]
fn a_minimal_pod_gets_kubernetes_defaults() {
    let p = ok(ONE);
    assert_eq!(p.restart_policy, RestartPolicy::Always);
    assert_eq!(p.grace_period, Duration::from_secs(30));
    assert_eq!(p.sandbox.hostname, "web");
    assert_eq!(p.sandbox.pod.namespace, "default");
    assert_eq!(p.sandbox.qos, QosClass::BestEffort);
    assert_eq!(p.containers[0].pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(p.containers[0].template().security.seccomp, SeccompProfile::RuntimeDefault);
    assert_eq!(p.pod_dir, Path::new("/var/lib/keelson/agent/pods/1234-abcd"));
}

#[test]
fn latest_or_untagged_images_are_pulled_always() {
    assert_eq!(default_pull_policy("busybox"), PullPolicy::Always);
    assert_eq!(default_pull_policy("busybox:latest"), PullPolicy::Always);
    assert_eq!(default_pull_policy("localhost:5000/busybox"), PullPolicy::Always);
    assert_eq!(default_pull_policy("localhost:5000/busybox:1"), PullPolicy::IfNotPresent);
    assert_eq!(default_pull_policy("busybox@sha256:abcd"), PullPolicy::IfNotPresent);
}

#[test]
fn missing_spec_metadata_and_image_are_named_by_field() {
    let p: k8s::Pod =
        serde_yaml_ng::from_str("metadata: {uid: u}\nspec: {containers: []}").unwrap();
    assert_eq!(plan(&p, &node()).unwrap_err().to_string(), "metadata.name: required");
    assert_eq!(
        err("spec: {containers: []}"),
        "spec.containers: at least one container is required"
    );
    assert_eq!(err("spec: {containers: [{name: c}]}"), "spec.containers[0].image: required");
    assert!(
        err("spec: {containers: [{name: C_x, image: b}]}").starts_with("spec.containers[0].name:")
    );
}

#[test]
fn duplicate_container_names_across_init_and_app_are_refused() {
    let e = err("spec: {initContainers: [{name: c, image: b}], containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.containers[0].name: \"c\" is already the name of spec.initContainers[0]");
}

#[test]
fn command_args_and_working_dir_are_kept() {
    let p = ok("spec: {containers: [{name: c, image: b, command: [sh, -c], args: ['echo hi'], workingDir: /srv}]}");
    let cfg = p.container_config(&p.containers[0], &[], 0);
    assert_eq!(cfg.command, ["sh", "-c"]);
    assert_eq!(cfg.args, ["echo hi"]);
    assert_eq!(cfg.working_dir.as_deref(), Some("/srv"));
    assert!(err("spec: {containers: [{name: c, image: b, workingDir: srv}]}")
        .starts_with("spec.containers[0].workingDir:"));
}

#[test]
fn env_expands_earlier_variables_and_keeps_undefined_references() {
    let p = ok(r#"spec: {containers: [{name: c, image: b,
        env: [{name: A, value: one}, {name: B, value: "$(A)-$(C)-$$(A)"}, {name: C, value: three}],
        command: ["echo", "$(B)", "$(C)", "$(NOPE)"]}]}"#);
    let cfg = p.container_config(&p.containers[0], &[], 0);
    assert_eq!(
        cfg.env,
        [
            ("A".into(), "one".into()),
            ("B".into(), "one-$(C)-$(A)".into()),
            ("C".into(), "three".into())
        ]
    );
    assert_eq!(cfg.command, ["echo", "one-$(C)-$(A)", "three", "$(NOPE)"]);
}

#[test]
fn env_field_refs_resolve_metadata_node_and_pod_ips() {
    let p = ok(r#"metadata: {name: web, uid: u1, labels: {app: x}}
spec: {containers: [{name: c, image: b, env: [
  {name: N, valueFrom: {fieldRef: {fieldPath: metadata.name}}},
  {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}},
  {name: L, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}},
  {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}},
  {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}},
  {name: IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}},
  {name: MSG, value: "$(N)@$(IP)"}]}]}"#);
    let ips: Vec<IpAddr> = vec!["10.42.0.5".parse().unwrap(), "fd42::5".parse().unwrap()];
    let env: HashMap<String, String> =
        p.container_config(&p.containers[0], &ips, 0).env.into_iter().collect();
    assert_eq!(env["N"], "web");
    assert_eq!(env["NS"], "default");
    assert_eq!(env["L"], "x");
    assert_eq!(env["NODE"], "edge-1");
    assert_eq!(env["IP"], "10.42.0.5");
    assert_eq!(env["IPS"], "10.42.0.5,fd42::5");
    assert_eq!(env["MSG"], "web@10.42.0.5");
}

#[test]
fn env_from_secrets_and_config_maps_is_refused() {
    let e = err(
        r#"spec: {containers: [{name: c, image: b, env: [{name: S, valueFrom: {secretKeyRef: {name: s, key: k}}}]}]}"#,
    );
    assert!(e.starts_with("spec.containers[0].env[0].valueFrom: configMap and secret"), "{e}");
    let e = err(
        r#"spec: {containers: [{name: c, image: b, env: [{name: S, valueFrom: {fieldRef: {fieldPath: status.phase}}}]}]}"#,
    );
    assert_eq!(e, "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: unsupported field path \"status.phase\"");
}

#[test]
fn resource_field_refs_use_the_divisor() {
    let p = ok(
        r#"spec: {containers: [{name: c, image: b, resources: {limits: {cpu: 1500m, memory: 64Mi}},
      env: [{name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}},
            {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}]}]}"#,
    );
    let env: HashMap<String, String> =
        p.container_config(&p.containers[0], &[], 0).env.into_iter().collect();
    assert_eq!(env["CPU"], "2");
    assert_eq!(env["MEM"], "64");
}

#[test]
fn pod_security_context_is_the_default_for_containers() {
    let p = ok(r#"spec:
  securityContext: {runAsUser: 1000, runAsGroup: 2000, fsGroup: 3000, supplementalGroups: [4000, 3000],
                    seccompProfile: {type: Unconfined}}
  containers:
  - {name: a, image: b}
  - name: c
    image: b
    securityContext: {runAsUser: 1001, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false,
                      capabilities: {add: [NET_ADMIN], drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}"#);
    let a = &p.containers[0].template().security;
    assert_eq!((a.run_as_user, a.run_as_group), (Some(1000), Some(2000)));
    assert_eq!(a.supplemental_groups, [3000, 4000]);
    assert_eq!(a.seccomp, SeccompProfile::Unconfined);
    let c = &p.containers[1].template().security;
    assert_eq!((c.run_as_user, c.run_as_group), (Some(1001), Some(2000)));
    assert!(c.read_only_root_filesystem);
    assert_eq!(c.allow_privilege_escalation, Some(false));
    assert_eq!(c.capabilities.add, ["NET_ADMIN"]);
    assert_eq!(c.capabilities.drop, ["ALL"]);
    assert_eq!(c.seccomp, SeccompProfile::RuntimeDefault);
}

#[test]
fn localhost_seccomp_profiles_resolve_under_the_seccomp_root_only() {
    let p = ok("spec: {containers: [{name: c, image: b, securityContext: {seccompProfile: {type: Localhost, localhostProfile: prof/a.json}}}]}");
    assert_eq!(
        p.containers[0].template().security.seccomp,
        SeccompProfile::Localhost("/var/lib/keelson/seccomp/prof/a.json".into())
    );
    let e = err("spec: {containers: [{name: c, image: b, securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../../etc/x}}}]}");
    assert!(
        e.starts_with("spec.containers[0].securityContext.seccompProfile.localhostProfile:"),
        "{e}"
    );
    let e = err("spec: {securityContext: {seccompProfile: {type: Localhost}}, containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.securityContext.seccompProfile.localhostProfile: required with Localhost");
}

#[test]
fn contradictory_privilege_settings_are_refused() {
    let e = err("spec: {containers: [{name: c, image: b, securityContext: {privileged: true, allowPrivilegeEscalation: false}}]}");
    assert_eq!(e, "spec.containers[0].securityContext.allowPrivilegeEscalation: cannot be false when privileged is true");
    let e = err("spec: {containers: [{name: c, image: b, securityContext: {allowPrivilegeEscalation: false, capabilities: {add: [CAP_SYS_ADMIN]}}}]}");
    assert!(e.ends_with("cannot be false when CAP_SYS_ADMIN is added"), "{e}");
}

#[test]
fn run_as_non_root_refuses_root_users() {
    let e = err("spec: {securityContext: {runAsNonRoot: true, runAsUser: 0}, containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.securityContext.runAsUser: runAsNonRoot is set but the user is 0 (root)");
    let p = ok("spec: {securityContext: {runAsNonRoot: true}, containers: [{name: c, image: b}]}");
    let c = &p.containers[0];
    assert!(c.verify_non_root(Some("1000")).is_ok());
    assert!(c.verify_non_root(Some("0")).unwrap_err().contains("will run as root"));
    assert!(c.verify_non_root(None).unwrap_err().contains("will run as root"));
    assert!(c.verify_non_root(Some("app")).unwrap_err().contains("non-numeric user (app)"));
    let p = ok("spec: {securityContext: {runAsNonRoot: true, runAsUser: 5}, containers: [{name: c, image: b}]}");
    assert!(p.containers[0].verify_non_root(Some("root")).is_ok());
}

#[test]
fn only_safe_sysctls_are_accepted() {
    let p = ok("spec: {securityContext: {sysctls: [{name: net/ipv4/tcp_syncookies, value: '1'}, {name: kernel.shm_rmid_forced, value: '1'}]}, containers: [{name: c, image: b}]}");
    assert_eq!(p.sandbox.sysctls.get("net.ipv4.tcp_syncookies").map(String::as_str), Some("1"));
    assert_eq!(p.sandbox.sysctls.len(), 2);
    let e = err("spec: {securityContext: {sysctls: [{name: kernel.msgmax, value: '1'}]}, containers: [{name: c, image: b}]}");
    assert_eq!(
        e,
        "spec.securityContext.sysctls[0].name: sysctl \"kernel.msgmax\" is not in the safe set"
    );
    let e = err("spec: {hostNetwork: true, securityContext: {sysctls: [{name: net.ipv4.tcp_syncookies, value: '1'}]}, containers: [{name: c, image: b}]}");
    assert!(e.ends_with("net.* sysctls cannot be set with hostNetwork"), "{e}");
}

#[test]
fn host_namespaces_and_hostname_come_from_the_spec() {
    let p = ok("spec: {hostNetwork: true, hostPID: true, hostIPC: true, hostname: edge, containers: [{name: c, image: b}]}");
    assert_eq!(p.sandbox.host_namespaces, HostNamespaces { network: true, pid: true, ipc: true });
    assert_eq!(p.sandbox.hostname, "edge");
    assert!(err("spec: {hostname: Bad_Name, containers: [{name: c, image: b}]}")
        .starts_with("spec.hostname:"));
}

#[test]
fn host_ports_need_host_network() {
    let e = err(
        "spec: {containers: [{name: c, image: b, ports: [{containerPort: 80, hostPort: 8080}]}]}",
    );
    assert_eq!(
        e,
        "spec.containers[0].ports[0].hostPort: host ports are only supported with hostNetwork"
    );
    ok("spec: {hostNetwork: true, containers: [{name: c, image: b, ports: [{containerPort: 80, hostPort: 80}]}]}");
}

#[test]
fn qos_is_best_effort_without_any_requests_or_limits() {
    assert_eq!(ok(ONE).sandbox.qos, QosClass::BestEffort);
}

#[test]
fn qos_is_guaranteed_when_every_container_has_equal_cpu_and_memory_limits() {
    let p = ok("spec: {containers: [{name: a, image: b, resources: {limits: {cpu: 500m, memory: 64Mi}}},
                                    {name: c, image: b, resources: {requests: {cpu: '1', memory: 1Gi}, limits: {cpu: 1000m, memory: 1Gi}}}]}");
    assert_eq!(p.sandbox.qos, QosClass::Guaranteed);
    assert_eq!(p.sandbox.resources.cpu_limit_millis, Some(1500));
    assert_eq!(p.sandbox.resources.memory_limit_bytes, Some((64 << 20) + (1 << 30)));
}

#[test]
fn qos_is_burstable_with_unequal_or_partial_resources() {
    let p = ok("spec: {containers: [{name: a, image: b, resources: {requests: {cpu: 100m}, limits: {cpu: 200m, memory: 64Mi}}}]}");
    assert_eq!(p.sandbox.qos, QosClass::Burstable);
    let p = ok("spec: {containers: [{name: a, image: b, resources: {limits: {cpu: 500m, memory: 64Mi}}}, {name: c, image: b}]}");
    assert_eq!(p.sandbox.qos, QosClass::Burstable);
    // One container unlimited: no pod memory limit.
    assert_eq!(p.sandbox.resources.memory_limit_bytes, None);
    let p = ok("spec: {containers: [{name: a, image: b, resources: {limits: {memory: 64Mi}}}]}");
    assert_eq!(p.sandbox.qos, QosClass::Burstable);
}

#[test]
fn container_resources_become_runtime_resources() {
    let p = ok("spec: {containers: [{name: a, image: b, resources: {requests: {cpu: 250m, memory: 32Mi}, limits: {cpu: '1', memory: 64Mi}}}]}");
    let r = p.containers[0].template().resources;
    assert_eq!(r.cpu_request_millis, Some(250));
    assert_eq!(r.cpu_limit_millis, Some(1000));
    assert_eq!(r.memory_request_bytes, Some(32 << 20));
    assert_eq!(r.memory_limit_bytes, Some(64 << 20));
}

#[test]
fn bad_resources_are_refused_with_their_path() {
    let e = err("spec: {containers: [{name: a, image: b, resources: {limits: {memory: lots}}}]}");
    assert_eq!(e, "spec.containers[0].resources.limits[memory]: invalid quantity \"lots\"");
    let e = err("spec: {containers: [{name: a, image: b, resources: {requests: {cpu: '2'}, limits: {cpu: '1'}}}]}");
    assert_eq!(
        e,
        "spec.containers[0].resources.requests[cpu]: must be less than or equal to the cpu limit"
    );
    let e = err(
        "spec: {containers: [{name: a, image: b, resources: {limits: {nvidia.com/gpu: '1'}}}]}",
    );
    assert!(
        e.starts_with("spec.containers[0].resources.limits[nvidia.com/gpu]: unsupported"),
        "{e}"
    );
}

#[test]
fn init_containers_raise_the_pod_limits_to_their_largest() {
    let p = ok("spec: {initContainers: [{name: i, image: b, resources: {limits: {cpu: '4', memory: 1Gi}}}],
                       containers: [{name: a, image: b, resources: {limits: {cpu: '1', memory: 64Mi}}}]}");
    assert_eq!(p.sandbox.resources.cpu_limit_millis, Some(4000));
    assert_eq!(p.sandbox.resources.memory_limit_bytes, Some(1 << 30));
    assert_eq!(p.sandbox.qos, QosClass::Guaranteed);
}

#[test]
fn empty_dirs_live_under_the_pod_directory() {
    let p = ok("spec: {volumes: [{name: data, emptyDir: {}}, {name: mem, emptyDir: {medium: Memory, sizeLimit: 16Mi}}],
                       containers: [{name: c, image: b, volumeMounts: [{name: data, mountPath: /data, subPath: sub/dir}, {name: mem, mountPath: /mem, readOnly: true}]}]}");
    assert_eq!(
        p.volumes[0].host_path,
        Path::new("/var/lib/keelson/agent/pods/1234-abcd/volumes/kubernetes.io~empty-dir/data")
    );
    assert_eq!(
        p.volumes[1].source,
        VolumeSource::EmptyDir { memory: true, size_limit: Some(16 << 20) }
    );
    let m = &p.containers[0].template().mounts;
    assert_eq!(m[0].host_path, p.volumes[0].host_path.join("sub/dir"));
    assert_eq!(m[0].container_path, Path::new("/data"));
    assert!(!m[0].read_only);
    assert!(m[1].read_only);
}

#[test]
fn containers_get_the_pods_hosts_and_resolv_conf() {
    let p = ok(ONE);
    let cfg = p.container_config(&p.containers[0], &[], 3);
    assert_eq!(cfg.restart_count, 3);
    let etc: Vec<_> =
        cfg.mounts.iter().map(|m| (m.host_path.clone(), m.container_path.clone())).collect();
    assert!(etc.contains(&(p.hosts_path(), "/etc/hosts".into())));
    assert!(etc.contains(&(p.resolv_conf_path(), "/etc/resolv.conf".into())));
}

#[test]
fn mounts_of_unknown_volumes_name_the_field() {
    let e = err("spec: {volumes: [{name: a, emptyDir: {}}], containers: [{name: c, image: b, volumeMounts: [{name: a, mountPath: /a}, {name: data, mountPath: /d}]}]}");
    assert_eq!(e, "spec.containers[0].volumeMounts[1].name: no volume \"data\"");
}

#[test]
fn bad_mount_paths_and_sub_paths_are_refused() {
    let v = "volumes: [{name: a, emptyDir: {}}]";
    let e = err(&format!("spec: {{{v}, containers: [{{name: c, image: b, volumeMounts: [{{name: a, mountPath: rel}}]}}]}}"));
    assert!(e.starts_with("spec.containers[0].volumeMounts[0].mountPath:"), "{e}");
    let e = err(&format!("spec: {{{v}, containers: [{{name: c, image: b, volumeMounts: [{{name: a, mountPath: /a, subPath: ../x}}]}}]}}"));
    assert!(e.starts_with("spec.containers[0].volumeMounts[0].subPath:"), "{e}");
    let e = err(&format!("spec: {{{v}, containers: [{{name: c, image: b, volumeMounts: [{{name: a, mountPath: /a}}, {{name: a, mountPath: /a}}]}}]}}"));
    assert!(e.ends_with("is mounted twice"), "{e}");
    let e = err(&format!("spec: {{{v}, containers: [{{name: c, image: b, volumeMounts: [{{name: a, mountPath: /a, mountPropagation: Bidirectional}}]}}]}}"));
    assert!(e.ends_with("Bidirectional needs a privileged container"), "{e}");
}

#[test]
fn unsupported_volume_sources_are_named() {
    let e = err("spec: {volumes: [{name: a, emptyDir: {}}, {name: cm, configMap: {name: x}}], containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.volumes[1]: unsupported volume source configMap (emptyDir and hostPath are supported)");
    let e = err("spec: {volumes: [{name: a}], containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.volumes[0]: a volume source is required (emptyDir or hostPath)");
    let e = err("spec: {volumes: [{name: a, emptyDir: {}}, {name: a, emptyDir: {}}], containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.volumes[1].name: duplicate volume \"a\"");
}

#[test]
fn host_paths_must_be_absolute_with_a_known_type() {
    let e = err(
        "spec: {volumes: [{name: a, hostPath: {path: etc}}], containers: [{name: c, image: b}]}",
    );
    assert!(e.starts_with("spec.volumes[0].hostPath.path:"), "{e}");
    let e = err("spec: {volumes: [{name: a, hostPath: {path: /etc, type: Fifo}}], containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.volumes[0].hostPath.type: unsupported type \"Fifo\"");
    let p = ok("spec: {volumes: [{name: a, hostPath: {path: /etc, type: Directory}}], containers: [{name: c, image: b}]}");
    assert_eq!(p.volumes[0].source, VolumeSource::HostPath { kind: HostPathType::Directory });
}

#[test]
fn host_path_type_checks_and_creation() {
    let dir = tempfile::tempdir().unwrap();
    let hp = |p: &str, kind| VolumePlan {
        name: "v".into(),
        host_path: dir.path().join(p),
        source: VolumeSource::HostPath { kind },
    };
    prepare_volume(&hp("made/deep", HostPathType::DirectoryOrCreate)).unwrap();
    assert!(dir.path().join("made/deep").is_dir());
    prepare_volume(&hp("made", HostPathType::Directory)).unwrap();
    assert!(prepare_volume(&hp("absent", HostPathType::Directory))
        .unwrap_err()
        .contains("is not a directory"));
    prepare_volume(&hp("f", HostPathType::FileOrCreate)).unwrap();
    assert!(dir.path().join("f").is_file());
    prepare_volume(&hp("f", HostPathType::File)).unwrap();
    assert!(prepare_volume(&hp("made", HostPathType::File)).unwrap_err().contains("is not a file"));
    assert!(prepare_volume(&hp("made", HostPathType::FileOrCreate)).is_err());
    assert!(prepare_volume(&hp("no/parent/f", HostPathType::FileOrCreate)).is_err());
    let _l = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
    prepare_volume(&hp("s", HostPathType::Socket)).unwrap();
    assert!(prepare_volume(&hp("f", HostPathType::Socket)).is_err());
    assert!(prepare_volume(&hp("f", HostPathType::CharDevice)).is_err());
    prepare_volume(&hp("anything", HostPathType::Unchecked)).unwrap();
    let ed = VolumePlan {
        name: "e".into(),
        host_path: dir.path().join("pods/u/volumes/e"),
        source: VolumeSource::EmptyDir { memory: false, size_limit: None },
    };
    prepare_volume(&ed).unwrap();
    assert!(ed.host_path.is_dir());
}

#[test]
fn etc_hosts_has_the_pod_ips_and_host_aliases() {
    let p = ok("spec: {hostAliases: [{ip: 10.1.2.3, hostnames: [foo.local, bar]}], containers: [{name: c, image: b}]}");
    let h = p.etc_hosts(&["10.42.0.9".parse().unwrap()], "ignored");
    assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"), "{h}");
    assert!(h.contains("10.42.0.9\tweb\n"), "{h}");
    assert!(h.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar\n"), "{h}");
    assert!(!h.contains("ignored"));
    let e =
        err("spec: {hostAliases: [{ip: nope, hostnames: [a]}], containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.hostAliases[0].ip: \"nope\" is not an IP address");
}

#[test]
fn host_network_pods_get_the_nodes_hosts_file_plus_aliases() {
    let p = ok("spec: {hostNetwork: true, hostAliases: [{ip: 10.1.2.3, hostnames: [foo]}], containers: [{name: c, image: b}]}");
    let h = p.etc_hosts(&[], "127.0.0.1 localhost\n192.168.1.2 node");
    assert_eq!(
        h,
        "127.0.0.1 localhost\n192.168.1.2 node\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo\n"
    );
}

#[test]
fn resolv_conf_merges_the_nodes_with_dns_config() {
    let host = "# comment\nnameserver 1.1.1.1\nsearch lan\noptions ndots:1 edns0\n";
    assert_eq!(
        ok(ONE).resolv_conf(host),
        "nameserver 1.1.1.1\nsearch lan\noptions ndots:1 edns0\n"
    );
    let p = ok("spec: {dnsConfig: {nameservers: [9.9.9.9], searches: [svc.local], options: [{name: ndots, value: '5'}]}, containers: [{name: c, image: b}]}");
    assert_eq!(
        p.resolv_conf(host),
        "nameserver 1.1.1.1\nnameserver 9.9.9.9\nsearch lan svc.local\noptions edns0 ndots:5\n"
    );
    let p = ok("spec: {dnsPolicy: None, dnsConfig: {nameservers: [9.9.9.9]}, containers: [{name: c, image: b}]}");
    assert_eq!(p.resolv_conf(host), "nameserver 9.9.9.9\n");
    let e = err("spec: {dnsPolicy: None, containers: [{name: c, image: b}]}");
    assert_eq!(e, "spec.dnsConfig.nameservers: dnsPolicy None needs a nameserver");
}

#[test]
fn restart_policy_and_grace_period_are_read() {
    let p = ok("spec: {restartPolicy: OnFailure, terminationGracePeriodSeconds: 5, containers: [{name: c, image: b}]}");
    assert_eq!(p.restart_policy, RestartPolicy::OnFailure);
    assert_eq!(p.grace_period, Duration::from_secs(5));
    let e = err("spec: {restartPolicy: Sometimes, containers: [{name: c, image: b}]}");
    assert!(e.starts_with("spec.restartPolicy: unsupported value \"Sometimes\""), "{e}");
}

#[test]
fn pre_stop_exec_hooks_are_kept_and_other_hooks_refused() {
    let p = ok("spec: {containers: [{name: c, image: b, lifecycle: {preStop: {exec: {command: [sh, -c, 'kill 1']}}}}]}");
    assert_eq!(
        p.containers[0].pre_stop.as_deref(),
        Some(&["sh".to_owned(), "-c".into(), "kill 1".into()][..])
    );
    let e = err(
        "spec: {containers: [{name: c, image: b, lifecycle: {preStop: {httpGet: {port: 80}}}}]}",
    );
    assert_eq!(e, "spec.containers[0].lifecycle.preStop: only exec hooks are supported");
    let e = err(
        "spec: {containers: [{name: c, image: b, lifecycle: {postStart: {exec: {command: ['true']}}}}]}",
    );
    assert_eq!(e, "spec.containers[0].lifecycle.postStart: not supported");
    let e = err("spec: {containers: [{name: c, image: b, readinessProbe: {grpc: {port: 9}}}]}");
    assert_eq!(
        e,
        "spec.containers[0].readinessProbe.grpc: gRPC probes are not supported (exec, httpGet and tcpSocket are)"
    );
}

#[test]
fn containers_are_labelled_with_their_pod_and_kind() {
    let p = ok("spec: {initContainers: [{name: i, image: b}], containers: [{name: c, image: b}]}");
    let l = &p.init_containers[0].template().labels;
    assert_eq!(l[LABEL_POD_UID], "1234-abcd");
    assert_eq!(l[LABEL_CONTAINER_NAME], "i");
    assert_eq!(l[LABEL_CONTAINER_KIND], "init");
    assert_eq!(p.containers[0].template().labels[LABEL_CONTAINER_KIND], "app");
    assert_ne!(p.init_containers[0].hash, p.containers[0].hash);
}
