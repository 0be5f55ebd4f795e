//! The entry point driven as a runtime drives it, against a fake backend. Expected results
//! are written by hand from the spec (section 5 and its examples), not produced by our own
//! serializer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Cursor;

use serde_json::{json, Value};

use super::*;
use crate::config::{IpRange, Masquerade, Mtu, Overlay};
use crate::IpConfig;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Add(NetworkConfig, Attach),
    Del(NetworkConfig, AllocKey, Option<PathBuf>),
    Check(NetworkConfig, Attach, CniResult),
    Gc(NetworkConfig, Vec<AllocKey>),
    Status(NetworkConfig),
}

struct Fake {
    calls: RefCell<Vec<Call>>,
    fail: RefCell<Option<BackendError>>,
    attachment: Attachment,
}

impl Fake {
    fn new() -> Self {
        Fake {
            calls: RefCell::new(Vec::new()),
            fail: RefCell::new(None),
            attachment: Attachment {
                bridge: "keel0".into(),
                bridge_mac: [0x02, 0, 0, 0, 0, 0x01],
                host_veth: "vethk1a2b3c4".into(),
                host_mac: [0x02, 0, 0, 0, 0, 0x02],
                pod_ifname: "eth0".into(),
                pod_mac: [0x0a, 0x58, 0x0a, 0x2a, 0x00, 0xfe],
                mtu: 1450,
                ips: vec![
                    IpConfig {
                        address: "10.42.0.2/24".parse().unwrap(),
                        gateway: "10.42.0.1".parse().unwrap(),
                    },
                    IpConfig {
                        address: "fd42::2/64".parse().unwrap(),
                        gateway: "fd42::1".parse().unwrap(),
                    },
                ],
            },
        }
    }

    fn failing(err: BackendError) -> Self {
        let fake = Fake::new();
        *fake.fail.borrow_mut() = Some(err);
        fake
    }

    fn record(&self, call: Call) -> Result<(), BackendError> {
        self.calls.borrow_mut().push(call);
        match self.fail.borrow_mut().take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

impl Backend for Fake {
    fn add(&self, cfg: &NetworkConfig, attach: &Attach) -> Result<Attachment, BackendError> {
        self.record(Call::Add(cfg.clone(), attach.clone()))?;
        Ok(self.attachment.clone())
    }
    fn del(
        &self,
        cfg: &NetworkConfig,
        key: &AllocKey,
        netns: Option<&Path>,
    ) -> Result<(), BackendError> {
        self.record(Call::Del(cfg.clone(), key.clone(), netns.map(Path::to_path_buf)))
    }
    fn check(
        &self,
        cfg: &NetworkConfig,
        attach: &Attach,
        prev: &CniResult,
    ) -> Result<(), BackendError> {
        self.record(Call::Check(cfg.clone(), attach.clone(), prev.clone()))
    }
    fn gc(&self, cfg: &NetworkConfig, valid: &[AllocKey]) -> Result<(), BackendError> {
        self.record(Call::Gc(cfg.clone(), valid.to_vec()))
    }
    fn status(&self, cfg: &NetworkConfig) -> Result<(), BackendError> {
        self.record(Call::Status(cfg.clone()))
    }
}

/// The environment of a runtime calling `command` for container `abc123`, interface `eth0`.
fn env_for(command: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("CNI_COMMAND".to_string(), command.to_string());
    env.insert("CNI_CONTAINERID".to_string(), "abc123".to_string());
    env.insert("CNI_NETNS".to_string(), "/run/netns/pod1".to_string());
    env.insert("CNI_IFNAME".to_string(), "eth0".to_string());
    env.insert("CNI_PATH".to_string(), "/opt/cni/bin".to_string());
    env.insert("CNI_ARGS".to_string(), "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".to_string());
    env
}

/// Runs the plugin; returns the exit code and stdout (`Value::Null` when empty).
fn invoke_env(env: &HashMap<String, String>, stdin: &str, backend: &dyn Backend) -> (i32, Value) {
    let lookup = |name: &str| env.get(name).cloned();
    let mut out = Vec::new();
    let code = run(&lookup, &mut Cursor::new(stdin.as_bytes().to_vec()), &mut out, backend);
    let value = if out.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out))
        })
    };
    (code, value)
}

fn invoke(command: &str, stdin: &Value, backend: &dyn Backend) -> (i32, Value) {
    invoke_env(&env_for(command), &stdin.to_string(), backend)
}

fn dual_stack_config(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "keelson",
        "type": "keelson",
        "bridge": "keel0",
        "ipMasq": true,
        "serviceCIDRs": ["10.43.0.0/16"],
        "ipam": {
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.42.0.0/24"}],
                [{"subnet": "fd42::/64"}]
            ],
            "dataDir": "/tmp/keelson-cni-test"
        }
    })
}

/// Asserts an error object with `code` whose `msg` contains `needle`, in exactly the spec's
/// shape.
fn assert_error(result: (i32, Value), code: u32, needle: &str) -> Value {
    let (exit, out) = result;
    assert_eq!(exit, 1, "{out}");
    let obj = out.as_object().unwrap_or_else(|| panic!("not an error object: {out}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{out}");
    assert_eq!(out["code"], json!(code), "{out}");
    assert!(out["cniVersion"].is_string(), "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(msg.contains(needle), "msg {msg:?} lacks {needle:?}");
    out
}

#[test]
fn add_writes_the_spec_1_0_result() {
    let fake = Fake::new();
    let (code, out) = invoke("ADD", &dual_stack_config("1.0.0"), &fake);
    assert_eq!(code, 0, "{out}");
    // Shape from SPEC.md section 5 ("ADD Success") and the bridge example of the appendix.
    let want = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "keel0", "mac": "02:00:00:00:00:01"},
            {"name": "vethk1a2b3c4", "mac": "02:00:00:00:00:02"},
            {"name": "eth0", "mac": "0a:58:0a:2a:00:fe", "sandbox": "/run/netns/pod1"}
        ],
        "ips": [
            {"address": "10.42.0.2/24", "gateway": "10.42.0.1", "interface": 2},
            {"address": "fd42::2/64", "gateway": "fd42::1", "interface": 2}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "10.42.0.1"},
            {"dst": "::/0", "gw": "fd42::1"}
        ],
        "dns": {}
    });
    assert_eq!(out, want);
}

#[test]
fn add_passes_the_mapped_configuration_and_attachment_to_the_backend() {
    let fake = Fake::new();
    let (code, _) = invoke("ADD", &dual_stack_config("1.0.0"), &fake);
    assert_eq!(code, 0);
    let subnet = |s: &str| IpRange {
        subnet: s.parse().unwrap(),
        range_start: None,
        range_end: None,
        gateway: None,
    };
    let want_cfg = NetworkConfig {
        name: "keelson".into(),
        bridge: "keel0".into(),
        ranges: vec![vec![subnet("10.42.0.0/24")], vec![subnet("fd42::/64")]],
        mtu: Mtu::Auto { overlay: None },
        masquerade: Some(Masquerade {
            cluster_cidrs: vec!["10.42.0.0/24".parse().unwrap(), "fd42::/64".parse().unwrap()],
            service_cidrs: vec!["10.43.0.0/16".parse().unwrap()],
        }),
        hairpin: true,
        state_dir: "/tmp/keelson-cni-test".into(),
        host_netns: None,
    };
    let want_attach = Attach {
        container_id: "abc123".into(),
        netns: "/run/netns/pod1".into(),
        ifname: "eth0".into(),
    };
    assert_eq!(fake.calls(), [Call::Add(want_cfg, want_attach)]);
}

#[test]
fn add_results_follow_the_configuration_version() {
    // 0.4.0 results carry "version" in ips (types/040); 1.1.0 interfaces carry "mtu".
    let (code, out) = invoke("ADD", &dual_stack_config("0.4.0"), &Fake::new());
    assert_eq!(code, 0);
    assert_eq!(out["cniVersion"], "0.4.0");
    assert_eq!(
        out["ips"],
        json!([
            {"version": "4", "address": "10.42.0.2/24", "gateway": "10.42.0.1", "interface": 2},
            {"version": "6", "address": "fd42::2/64", "gateway": "fd42::1", "interface": 2}
        ])
    );
    assert!(out["interfaces"][0].get("mtu").is_none());

    let (code, out) = invoke("ADD", &dual_stack_config("1.1.0"), &Fake::new());
    assert_eq!(code, 0);
    assert_eq!(out["cniVersion"], "1.1.0");
    assert_eq!(
        out["interfaces"][2],
        json!({"name": "eth0", "mac": "0a:58:0a:2a:00:fe", "mtu": 1450, "sandbox": "/run/netns/pod1"})
    );
    assert!(out["ips"][0].get("version").is_none());
}

#[test]
fn add_echoes_the_configured_dns() {
    let mut cfg = dual_stack_config("1.0.0");
    cfg["dns"] = json!({"nameservers": ["10.43.0.10"], "search": ["svc.cluster.local"]});
    let (code, out) = invoke("ADD", &cfg, &Fake::new());
    assert_eq!(code, 0);
    assert_eq!(out["dns"], json!({"nameservers": ["10.43.0.10"], "search": ["svc.cluster.local"]}));
}

#[test]
fn add_with_a_prev_result_appends_to_it() {
    let mut cfg = dual_stack_config("1.0.0");
    cfg["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "dummy0", "mac": "02:00:00:00:00:09", "sandbox": "/run/netns/pod1"}],
        "ips": [{"address": "192.168.9.9/32", "interface": 0}],
        "dns": {"domain": "example.internal"}
    });
    let (code, out) = invoke("ADD", &cfg, &Fake::new());
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["interfaces"][0]["name"], "dummy0");
    assert_eq!(out["interfaces"][3]["name"], "eth0");
    assert_eq!(out["ips"][0], json!({"address": "192.168.9.9/32", "interface": 0}));
    assert_eq!(out["ips"][1]["interface"], 3);
    assert_eq!(out["ips"][2]["interface"], 3);
    assert_eq!(out["dns"], json!({"domain": "example.internal"}));
}

#[test]
fn del_calls_the_backend_and_prints_nothing() {
    let fake = Fake::new();
    let (code, out) = invoke("DEL", &dual_stack_config("1.0.0"), &fake);
    assert_eq!((code, out), (0, Value::Null));
    let mut env = env_for("DEL");
    env.remove("CNI_NETNS");
    let (code, out) = invoke_env(&env, &dual_stack_config("1.0.0").to_string(), &fake);
    assert_eq!((code, out), (0, Value::Null));
    let calls = fake.calls();
    let key = AllocKey::new("abc123", "eth0");
    assert!(
        matches!(&calls[0], Call::Del(_, k, Some(ns)) if *k == key && ns == Path::new("/run/netns/pod1"))
    );
    assert!(matches!(&calls[1], Call::Del(_, k, None) if *k == key));
}

#[test]
fn check_hands_the_prev_result_to_the_backend() {
    let fake = Fake::new();
    let mut cfg = dual_stack_config("1.0.0");
    cfg["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "keel0", "mac": "02:00:00:00:00:01"},
            {"name": "vethk1a2b3c4", "mac": "02:00:00:00:00:02"},
            {"name": "eth0", "mac": "0a:58:0a:2a:00:fe", "sandbox": "/run/netns/pod1"}
        ],
        "ips": [{"address": "10.42.0.2/24", "gateway": "10.42.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}],
        "dns": {}
    });
    let (code, out) = invoke("CHECK", &cfg, &fake);
    assert_eq!((code, out), (0, Value::Null));
    let Call::Check(_, attach, prev) = &fake.calls()[0] else { panic!("{:?}", fake.calls()) };
    assert_eq!(attach.netns, Path::new("/run/netns/pod1"));
    assert_eq!(prev.interfaces[2].sandbox.as_deref(), Some("/run/netns/pod1"));
    assert_eq!(prev.ips[0].address, "10.42.0.2/24".parse::<ipnet::IpNet>().unwrap());
    assert_eq!(prev.ips[0].interface, Some(2));
    assert_eq!(prev.routes[0].gw, Some("10.42.0.1".parse().unwrap()));

    // A failed check is our code 101.
    let failing = Fake::failing(BackendError::CheckFailed("eth0 has no default route".into()));
    let out = assert_error(invoke("CHECK", &cfg, &failing), CODE_CHECK_FAILED, "check failed");
    assert_eq!(out["details"], "eth0 has no default route");
}

#[test]
fn check_needs_a_prev_result_and_version_0_4_0() {
    assert_error(invoke("CHECK", &dual_stack_config("1.0.0"), &Fake::new()), 7, "prevResult");
    let mut old = dual_stack_config("0.3.1");
    old["prevResult"] = json!({"ips": []});
    assert_error(invoke("CHECK", &old, &Fake::new()), 1, "does not allow CHECK");
}

#[test]
fn gc_hands_the_valid_attachments_to_the_backend() {
    let fake = Fake::new();
    let mut cfg = dual_stack_config("1.1.0");
    cfg["cni.dev/valid-attachments"] = json!([
        {"containerID": "abc123", "ifname": "eth0"},
        {"containerID": "def456", "ifname": "net1"}
    ]);
    // GC needs no container environment.
    let mut env = HashMap::new();
    env.insert("CNI_COMMAND".to_string(), "GC".to_string());
    env.insert("CNI_PATH".to_string(), "/opt/cni/bin".to_string());
    let (code, out) = invoke_env(&env, &cfg.to_string(), &fake);
    assert_eq!((code, out), (0, Value::Null));
    let Call::Gc(_, valid) = &fake.calls()[0] else { panic!() };
    assert_eq!(valid, &[AllocKey::new("abc123", "eth0"), AllocKey::new("def456", "net1")]);
}

#[test]
fn gc_without_the_valid_list_releases_nothing() {
    let fake = Fake::new();
    assert_error(invoke("GC", &dual_stack_config("1.1.0"), &fake), 7, "valid-attachments");
    assert_error(invoke("GC", &dual_stack_config("1.0.0"), &fake), 1, "does not allow GC");
    assert!(fake.calls().is_empty());
}

#[test]
fn status_reports_readiness() {
    let (code, out) = invoke("STATUS", &dual_stack_config("1.1.0"), &Fake::new());
    assert_eq!((code, out), (0, Value::Null));
    let failing = Fake::failing(BackendError::NotAvailable("bridge keel0 is missing".into()));
    assert_error(invoke("STATUS", &dual_stack_config("1.1.0"), &failing), 50, "not available");
    assert_error(invoke("STATUS", &dual_stack_config("1.0.0"), &Fake::new()), 1, "STATUS");
}

#[test]
fn status_of_the_real_backend_is_code_50_whenever_add_cannot_be_served() {
    use crate::network::Status;
    let st =
        |exhausted: Vec<(usize, String)>| Status { bridge_present: true, allocated: 1, exhausted };
    assert!(backend::status_outcome(Ok(st(Vec::new()))).is_ok());
    let full = backend::status_outcome(Ok(st(vec![(1, "fd42::2-fd42::2".into())]))).unwrap_err();
    assert_eq!(full.code(), CODE_NOT_AVAILABLE);
    assert!(
        full.to_string().contains("no free address in range set 1 (fd42::2-fd42::2)"),
        "{full}"
    );
    // A host namespace that is gone is classified "container unknown" for ADD; for STATUS it
    // means the plugin is not available.
    let gone = BackendError::UnknownContainer("network namespace /x does not exist".into());
    let err = backend::status_outcome(Err(gone)).unwrap_err();
    assert_eq!(err.code(), CODE_NOT_AVAILABLE);
    assert!(err.to_string().contains("/x does not exist"), "{err}");
    let bad = BackendError::InvalidConfig("bridge name".into());
    assert_eq!(backend::status_outcome(Err(bad)).unwrap_err().code(), CODE_INVALID_CONFIG);
}

#[test]
fn version_lists_the_supported_versions() {
    let mut env = HashMap::new();
    env.insert("CNI_COMMAND".to_string(), "VERSION".to_string());
    let (code, out) = invoke_env(&env, r#"{"cniVersion": "1.0.0"}"#, &Fake::new());
    assert_eq!(code, 0);
    assert_eq!(
        out,
        json!({
            "cniVersion": "1.0.0",
            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        })
    );
    // No input at all still answers.
    let (code, out) = invoke_env(&env, "", &Fake::new());
    assert_eq!(code, 0);
    assert_eq!(out["cniVersion"], "1.1.0");
}

#[test]
fn missing_or_invalid_environment_is_code_4_naming_the_variables() {
    let cfg = dual_stack_config("1.0.0").to_string();
    let fake = Fake::new();
    assert_error(invoke_env(&HashMap::new(), &cfg, &fake), 4, "CNI_COMMAND");
    let out = assert_error(invoke_env(&env_for("SHOUT"), &cfg, &fake), 4, "CNI_COMMAND");
    assert!(out["msg"].as_str().unwrap().contains("SHOUT"));

    let mut env = env_for("ADD");
    env.remove("CNI_NETNS");
    env.remove("CNI_IFNAME");
    let out = assert_error(invoke_env(&env, &cfg, &fake), 4, "CNI_NETNS");
    assert!(out["msg"].as_str().unwrap().contains("CNI_IFNAME"));

    let mut env = env_for("DEL");
    env.insert("CNI_CONTAINERID".into(), String::new());
    assert_error(invoke_env(&env, &cfg, &fake), 4, "CNI_CONTAINERID");

    let mut env = env_for("ADD");
    env.insert("CNI_CONTAINERID".into(), "../../etc".into());
    assert_error(invoke_env(&env, &cfg, &fake), 4, "CNI_CONTAINERID");

    for bad in ["eth0:1", "a/b", "much-too-long-name0", "..", "e th"] {
        let mut env = env_for("ADD");
        env.insert("CNI_IFNAME".into(), bad.into());
        assert_error(invoke_env(&env, &cfg, &fake), 4, "CNI_IFNAME");
    }
    assert!(fake.calls().is_empty());
}

#[test]
fn unreadable_stdin_is_code_5() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("pipe broke"))
        }
    }
    let env = env_for("ADD");
    let lookup = |name: &str| env.get(name).cloned();
    let mut out = Vec::new();
    let code = run(&lookup, &mut Broken, &mut out, &Fake::new());
    let value: Value = serde_json::from_slice(&out).unwrap();
    let out = assert_error((code, value), 5, "read stdin");
    assert!(out["details"].as_str().unwrap().contains("pipe broke"));
}

#[test]
fn undecodable_input_is_code_6() {
    let fake = Fake::new();
    let env = env_for("ADD");
    for stdin in ["", "{", "not json", "{\"cniVersion\": \"1.0.0\",}"] {
        assert_error(invoke_env(&env, stdin, &fake), 6, "decode");
    }
    let mut cfg = dual_stack_config("1.0.0");
    cfg["mtu"] = json!("big");
    assert_error(invoke("ADD", &cfg, &fake), 6, "network configuration");
    let mut cfg = dual_stack_config("1.0.0");
    cfg["ipam"]["ranges"] = json!([[{"subnet": "10.42.0.0/33"}]]);
    assert_error(invoke("ADD", &cfg, &fake), 6, "network configuration");
    let mut cfg = dual_stack_config("1.0.0");
    cfg["prevResult"] = json!({"ips": [{"address": "nonsense"}]});
    assert_error(invoke("ADD", &cfg, &fake), 6, "prevResult");
    assert!(fake.calls().is_empty());
}

#[test]
fn unknown_versions_are_code_1() {
    for version in ["0.1.0", "0.2.0", "2.0.0", "1.0"] {
        let out = assert_error(
            invoke("ADD", &dual_stack_config(version), &Fake::new()),
            1,
            "incompatible CNI version",
        );
        // The error is in a version the runtime can read.
        assert_eq!(out["cniVersion"], "1.1.0");
    }
}

#[test]
fn invalid_configurations_are_code_7() {
    let cases: Vec<(Value, &str)> = vec![
        (json!([1, 2]), "not a JSON object"),
        (json!({"name": "n", "type": "keelson"}), "cniVersion is missing"),
        (json!({"cniVersion": 1, "name": "n", "type": "keelson"}), "not a string"),
        (json!({"cniVersion": "1.0.0", "type": "keelson"}), "name is missing"),
        (json!({"cniVersion": "1.0.0", "name": "bad/name", "type": "keelson"}), "name"),
        (json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}), "bridge"),
        (json!({"cniVersion": "1.0.0", "name": "n"}), "type is missing"),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson", "bridge": "a-very-long-bridge"}),
            "bridge",
        ),
        (json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson", "mtu": 40}), "mtu 40"),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson", "mtu": 1200,
                   "ipam": {"ranges": [[{"subnet": "fd00::/64"}]]}}),
            "mtu 1200",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson", "mtu": 1400, "overlay": "vxlanV4"}),
            "exclusive",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson", "ipam": {"type": "host-local"}}),
            "neither subnet nor ranges",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson", "ipam": {"rangeStart": "10.0.0.5"}}),
            "need ipam.subnet",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson",
                   "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}}),
            "overlaps",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson",
                   "ipam": {"subnet": "10.0.0.0/31"}}),
            "too small",
        ),
    ];
    for (cfg, needle) in cases {
        let out =
            assert_error(invoke("ADD", &cfg, &Fake::new()), 7, "invalid network configuration");
        let details = out["details"].as_str().unwrap();
        assert!(details.contains(needle), "{cfg}: details {details:?} lack {needle:?}");
    }
}

#[test]
fn behaviour_we_do_not_implement_is_code_2_naming_field_and_value() {
    let base = dual_stack_config("1.0.0");
    let with = |path: &[&str], value: Value| {
        let mut cfg = base.clone();
        let mut slot = &mut cfg;
        for key in path {
            slot = &mut slot[*key];
        }
        *slot = value;
        cfg
    };
    let cases = [
        (with(&["vlan"], json!(100)), "\"vlan\": 100"),
        (with(&["promiscMode"], json!(true)), "\"promiscMode\": true"),
        (with(&["enabledad"], json!(true)), "\"enabledad\": true"),
        (with(&["isGateway"], json!(false)), "\"isGateway\": false"),
        (with(&["ipam", "type"], json!("dhcp")), "\"ipam.type\": \"dhcp\""),
        (with(&["ipam", "resolvConf"], json!("/etc/resolv.conf")), "ipam.resolvConf"),
        (with(&["ipam", "routes"], json!([{"dst": "10.0.0.0/8"}])), "ipam.routes"),
        (
            with(&["ipam", "routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.42.0.99"}])),
            "10.42.0.99",
        ),
    ];
    for (cfg, needle) in cases {
        assert_error(invoke("ADD", &cfg, &Fake::new()), 2, needle);
    }
    // Their "off" values, default routes and fields for other tools pass.
    let fine = [
        with(&["vlan"], json!(0)),
        with(&["promiscMode"], json!(false)),
        with(&["isGateway"], json!(true)),
        with(&["isDefaultGateway"], json!(true)),
        with(&["forceAddress"], json!(true)),
        with(&["capabilities"], json!({"portMappings": true})),
        with(&["runtimeConfig"], json!({"portMappings": [{"hostPort": 80}]})),
        with(&["ipam", "routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd42::1"}])),
    ];
    for cfg in fine {
        let (code, out) = invoke("ADD", &cfg, &Fake::new());
        assert_eq!(code, 0, "{cfg}: {out}");
    }
}

#[test]
fn backend_failures_map_to_their_codes() {
    let cases = [
        (
            BackendError::Exhausted(
                "no free address in range set 0 (10.42.0.2-10.42.0.254)".into(),
            ),
            100,
            "no free address",
        ),
        (BackendError::TryAgain("busy".into()), 11, "try again"),
        (BackendError::Io("disk".into()), 5, "i/o"),
        (BackendError::UnknownContainer("gone".into()), 3, "container unknown"),
        (BackendError::InvalidConfig("uplink".into()), 7, "invalid network configuration"),
        (BackendError::LimitedConnectivity("nft".into()), 51, "connectivity"),
        (BackendError::Failed("netlink: EPERM".into()), 102, "failed"),
    ];
    for (err, code, needle) in cases {
        let details = err.to_string();
        let out = assert_error(
            invoke("ADD", &dual_stack_config("1.0.0"), &Fake::failing(err)),
            code,
            needle,
        );
        assert_eq!(out["details"], details.as_str());
        assert_eq!(out["cniVersion"], "1.0.0");
    }
}

#[test]
fn the_error_object_has_the_spec_shape() {
    let (code, out) = invoke(
        "ADD",
        &dual_stack_config("1.0.0"),
        &Fake::failing(BackendError::Exhausted(
            "no free address in range set 0 (10.42.0.2-10.42.0.254)".into(),
        )),
    );
    assert_eq!(code, 1);
    assert_eq!(
        out,
        json!({
            "cniVersion": "1.0.0",
            "code": 100,
            "msg": "no free address",
            "details": "no free address in range set 0 (10.42.0.2-10.42.0.254)"
        })
    );
}

#[test]
fn ipam_errors_map_to_backend_errors() {
    let exhausted = ipam::Error::Exhausted { set: 1, ranges: "fd42::2-fd42::3".into() };
    let err = BackendError::from(exhausted);
    assert_eq!(err.code(), CODE_EXHAUSTED);
    assert_eq!(err.to_string(), "no free address in range set 1 (fd42::2-fd42::3)");
    let io = ipam::Error::Io {
        op: "fsync directory",
        path: "/var/lib/keelson/cni/networks/k".into(),
        source: std::io::Error::other("EIO"),
    };
    let err = BackendError::from(io);
    assert_eq!(err.code(), CODE_IO);
    assert_eq!(err.to_string(), "cannot fsync directory /var/lib/keelson/cni/networks/k: EIO");
    assert_eq!(BackendError::from(ipam::Error::NoRanges).code(), CODE_INVALID_CONFIG);
}

#[test]
fn defaults_make_a_minimal_configuration_work() {
    let fake = Fake::new();
    let cfg = json!({"cniVersion": "1.0.0", "name": "pods", "type": "keelson"});
    let (code, _) = invoke("ADD", &cfg, &fake);
    assert_eq!(code, 0);
    let Call::Add(net, _) = &fake.calls()[0] else { panic!() };
    assert_eq!(
        net,
        &NetworkConfig {
            name: "pods".into(),
            masquerade: None,
            ..NetworkConfig::standalone(&["10.42.0.0/24".parse().unwrap()])
        }
    );
}

#[test]
fn host_local_single_range_form_comes_before_ranges() {
    let fake = Fake::new();
    let cfg = json!({
        "cniVersion": "1.0.0", "name": "n", "type": "keelson",
        "mtu": 1400, "hairpinMode": false, "hostNetns": "/run/netns/host",
        "ipMasq": true, "clusterCIDRs": ["10.0.0.0/8"],
        "ipam": {
            "type": "host-local",
            "subnet": "10.1.0.0/16", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20", "gateway": "10.1.0.254",
            "ranges": [[{"subnet": "10.2.0.0/24"}, {"subnet": "10.3.0.0/24"}]],
            "dataDir": "/var/lib/x"
        }
    });
    let (code, out) = invoke("ADD", &cfg, &fake);
    assert_eq!(code, 0, "{out}");
    let Call::Add(net, _) = &fake.calls()[0] else { panic!() };
    let r = |s: &str| IpRange {
        subnet: s.parse().unwrap(),
        range_start: None,
        range_end: None,
        gateway: None,
    };
    assert_eq!(
        net.ranges,
        vec![
            vec![IpRange {
                range_start: Some("10.1.0.10".parse().unwrap()),
                range_end: Some("10.1.0.20".parse().unwrap()),
                gateway: Some("10.1.0.254".parse().unwrap()),
                ..r("10.1.0.0/16")
            }],
            vec![r("10.2.0.0/24"), r("10.3.0.0/24")],
        ]
    );
    assert_eq!(net.mtu, Mtu::Fixed(1400));
    assert!(!net.hairpin);
    assert_eq!(net.host_netns.as_deref(), Some(Path::new("/run/netns/host")));
    assert_eq!(net.state_dir, Path::new("/var/lib/x"));
    assert_eq!(
        net.masquerade.as_ref().unwrap().cluster_cidrs,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );

    let fake = Fake::new();
    let (code, _) = invoke(
        "ADD",
        &json!({"cniVersion": "1.0.0", "name": "n", "type": "keelson", "overlay": "vxlanV6"}),
        &fake,
    );
    assert_eq!(code, 0);
    let Call::Add(net, _) = &fake.calls()[0] else { panic!() };
    assert_eq!(net.mtu, Mtu::Auto { overlay: Some(Overlay::VxlanV6) });
}

#[test]
fn malformed_input_never_panics_and_always_answers_in_spec_form() {
    // Every prefix of a valid configuration, every byte of it flipped, and some oddities,
    // through every command.
    let mut cfg = dual_stack_config("1.1.0");
    cfg["prevResult"] = json!({"ips": [{"address": "10.42.0.2/24", "interface": 2}], "interfaces": [{"name": "x"}]});
    cfg["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    let text = cfg.to_string();
    let mut inputs: Vec<Vec<u8>> = (0..text.len()).map(|n| text.as_bytes()[..n].to_vec()).collect();
    for i in (0..text.len()).step_by(3) {
        let mut flipped = text.as_bytes().to_vec();
        flipped[i] ^= 0x20;
        inputs.push(flipped);
    }
    for odd in [
        &b"null"[..], b"[]", b"0", b"\"x\"", b"{\"cniVersion\":null}", b"\xff\xfe\x00",
        b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"keelson\",\"ipam\":{\"ranges\":[[]]}}",
        b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"keelson\",\"ipam\":{\"ranges\":[]}}",
        b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"keelson\",\"mtu\":99999999999}",
        b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"keelson\",\"ipam\":{\"subnet\":\"::/0\"}}",
    ] {
        inputs.push(odd.to_vec());
    }
    let allowed = [0, 1, 2, 4, 6, 7];
    for command in ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"] {
        let env = env_for(command);
        let lookup = |name: &str| env.get(name).cloned();
        for input in &inputs {
            let mut out = Vec::new();
            let code = run(&lookup, &mut Cursor::new(input.clone()), &mut out, &Fake::new());
            if code == 0 {
                continue;
            }
            let value: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!("{command} {:?}: stdout not JSON: {e}", String::from_utf8_lossy(input))
            });
            let c = value["code"].as_u64().unwrap() as u32;
            assert!(
                allowed.contains(&c),
                "{command} {:?}: {value}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
