//! Privileged tests of the CNI entry point: the `keelson` binary driven exactly as a container
//! runtime drives a plugin. The runtime's side is played by [`Fixture::exec`]: it finds the
//! plugin the way libcni does (a file named after the configuration's `type` in one of the
//! `CNI_PATH` directories, here a symlink named `keelson` in a temporary directory), runs it
//! with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` and `CNI_PATH`
//! in its environment and the network configuration on stdin, and reads the result or the
//! error object from stdout and the exit status.
//!
//! Everything happens inside network namespaces the test creates and pins in a tempdir: a
//! "host" namespace (the configuration's `hostNetns`, holding the bridge) and one per pod. A
//! Drop guard unpins them, which deletes every link in them. What the plugin claims is checked
//! against the kernel with `ip -j` run through `nsenter --net=<pin>`, an oracle independent of
//! the plugin's own netlink code.
//!
//! Run: `KEELSON_TEST_TIERS=privileged KEELSON_TEST_STRICT=1 cargo test -p keelson-tests
//! --test cni_plugin` (the `keelson` binary is built on first use, or taken from
//! `KEELSON_BIN`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keelson_cni::netns;
use keelson_tests::{need_root, require, Tier};
use serde_json::{json, Value};

/// The network name of every test configuration (names the IPAM directory).
const NET: &str = "kt";

/// A host namespace, pod namespaces and the runtime's CNI_PATH, all in one tempdir.
struct Fixture {
    dir: tempfile::TempDir,
    pins: Vec<PathBuf>,
}

impl Fixture {
    fn new() -> Result<Self> {
        let mut f = Fixture { dir: tempfile::tempdir()?, pins: Vec::new() };
        f.netns("host")?;
        let bin = f.cni_path();
        std::fs::create_dir(&bin)?;
        std::os::unix::fs::symlink(keelson_tests::bins::keelson()?, bin.join("keelson"))?;
        Ok(f)
    }

    fn netns(&mut self, name: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        netns::create(&path).with_context(|| format!("create netns {name}"))?;
        self.pins.push(path.clone());
        Ok(path)
    }

    fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    fn cni_path(&self) -> PathBuf {
        self.dir.path().join("cni-bin")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The IPAM directory of the network.
    fn ipam_dir(&self) -> PathBuf {
        self.data_dir().join("networks").join(NET)
    }

    /// A dual-stack configuration of spec version `version`, the bridge in the host namespace.
    fn config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NET,
            "type": "keelson",
            "bridge": "keel0",
            "hairpinMode": true,
            "hostNetns": self.host(),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.42.0.0/24"}], [{"subnet": "fd42::/64"}]],
                "dataDir": self.data_dir(),
            },
        })
    }

    /// The runtime's call: `command` for `id` in `netns` (`None`: not passed) with `stdin`.
    fn exec(&self, command: &str, id: Option<&str>, netns: Option<&Path>, stdin: &[u8]) -> Out {
        self.spawn(command, id, netns, stdin)
            .and_then(|child| Out::of(child.wait_with_output()?))
            .unwrap_or_else(|e| panic!("cannot run the plugin: {e:#}"))
    }

    fn exec_json(&self, command: &str, id: Option<&str>, netns: Option<&Path>, cfg: &Value) -> Out {
        self.exec(command, id, netns, cfg.to_string().as_bytes())
    }

    fn add(&self, id: &str, netns: &Path) -> Result<Value> {
        let out = self.exec_json("ADD", Some(id), Some(netns), &self.config("1.0.0"));
        out.ok().with_context(|| format!("ADD {id}"))?;
        out.json()
    }

    fn spawn(
        &self,
        command: &str,
        id: Option<&str>,
        netns: Option<&Path>,
        stdin: &[u8],
    ) -> Result<Child> {
        let cni_path = self.cni_path().display().to_string();
        let plugin = find_plugin(&cni_path, "keelson")?;
        let mut cmd = Command::new(plugin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", &cni_path)
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Ok(filter) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        if let Some(id) = id {
            cmd.env("CNI_CONTAINERID", id).env("CNI_IFNAME", "eth0");
        }
        if let Some(ns) = netns {
            cmd.env("CNI_NETNS", ns);
        }
        let mut child = cmd.spawn().context("spawn the plugin")?;
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        // A plugin may exit before reading everything (e.g. VERSION): ignore EPIPE.
        let _ = pipe.write_all(stdin);
        drop(pipe);
        Ok(child)
    }

    /// Every allocation file of the network: address -> (containerID, ifname).
    fn allocations(&self) -> Result<BTreeMap<IpAddr, (String, String)>> {
        let mut out = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(self.ipam_dir()) else { return Ok(out) };
        for e in rd {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Ok(ip) = name.parse::<IpAddr>() else { continue };
            let text = std::fs::read(self.ipam_dir().join(&name))?;
            let rec: Value = serde_json::from_slice(&text)
                .with_context(|| format!("allocation {name} is not readable JSON"))?;
            ensure!(rec["v"] == 1, "allocation {name}: {rec}");
            let field = |f: &str| rec[f].as_str().map(str::to_owned);
            let key = field("containerId").zip(field("ifname"));
            out.insert(ip, key.with_context(|| format!("allocation {name}: {rec}"))?);
        }
        Ok(out)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pin in self.pins.iter().rev() {
            if let Err(e) = netns::remove(pin) {
                eprintln!("cannot remove netns pin {}: {e}", pin.display());
            }
        }
    }
}

/// libcni's lookup: the first `CNI_PATH` directory holding an executable named `plugin_type`.
fn find_plugin(cni_path: &str, plugin_type: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for dir in cni_path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(plugin_type);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    bail!("failed to find plugin {plugin_type:?} in path [{cni_path}]")
}

/// What a plugin invocation left.
struct Out {
    /// The exit code; `None` when killed by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn of(o: std::process::Output) -> Result<Out> {
        Ok(Out {
            code: o.status.code(),
            stdout: String::from_utf8(o.stdout).context("stdout is not UTF-8")?,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }

    fn ok(&self) -> Result<()> {
        ensure!(
            self.code == Some(0),
            "exit {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        ensure!(!self.stderr.contains("panicked"), "stderr: {}", self.stderr);
        Ok(())
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout: {:?}", self.stdout))
    }

    /// Checks that this is a spec error object with `code`; returns it.
    fn error(&self, code: u64) -> Result<Value> {
        ensure!(
            self.code.is_some_and(|c| c != 0),
            "a failure must exit non-zero: {:?}, stdout {}",
            self.code,
            self.stdout
        );
        ensure!(!self.stderr.contains("panicked"), "stderr: {}", self.stderr);
        let v = self.json()?;
        ensure!(v["code"] == code, "want code {code}: {v}\nstderr: {}", self.stderr);
        ensure!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "msg: {v}");
        ensure!(v["cniVersion"].is_string(), "cniVersion: {v}");
        Ok(v)
    }
}

/// `ip -j ARGS` inside the namespace pinned at `ns`.
fn ip_json(ns: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("run nsenter ip")?;
    ensure!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    if text.trim().is_empty() {
        return Ok(json!([]));
    }
    serde_json::from_str(&text).with_context(|| format!("ip {args:?}: {text}"))
}

/// Link names in the namespace at `ns`.
fn links(ns: &Path) -> Result<BTreeSet<String>> {
    let v = ip_json(ns, &["link", "show"])?;
    Ok(v.as_array()
        .context("ip link output")?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

/// The pod's view: MAC and addresses of `eth0` (`None` when missing), default-route gateways.
struct PodView {
    mac: String,
    mtu: u64,
    addrs: BTreeSet<String>,
    gateways: BTreeSet<(String, String)>,
}

fn pod_view(ns: &Path) -> Result<Option<PodView>> {
    if !links(ns)?.contains("eth0") {
        return Ok(None);
    }
    let link = &ip_json(ns, &["addr", "show", "dev", "eth0"])?[0];
    let mut addrs = BTreeSet::new();
    for a in link["addr_info"].as_array().context("addr_info")? {
        if a["scope"] == "global" {
            addrs.insert(format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]));
        }
    }
    let mut gateways = BTreeSet::new();
    for family in ["-4", "-6"] {
        for r in ip_json(ns, &[family, "route", "show", "default"])?.as_array().context("routes")? {
            let gw = r["gateway"].as_str().unwrap_or("?").to_owned();
            gateways.insert((gw, r["dev"].as_str().unwrap_or("?").to_owned()));
        }
    }
    Ok(Some(PodView {
        mac: link["address"].as_str().unwrap_or("?").to_owned(),
        mtu: link["mtu"].as_u64().unwrap_or(0),
        addrs,
        gateways,
    }))
}

/// The addresses of an ADD result, sorted.
fn result_ips(result: &Value) -> Vec<String> {
    let mut v: Vec<String> = result["ips"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["address"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The host veth an ADD result names (interface 1).
fn result_host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"].as_str().unwrap_or_default().to_owned()
}

fn in_net(addr: &str, net: &str) -> bool {
    let (Ok(a), Ok(n)) = (addr.parse::<ipnet::IpNet>(), net.parse::<ipnet::IpNet>()) else {
        return false;
    };
    n.contains(&a.addr()) && a.prefix_len() == n.prefix_len()
}

#[test]
fn add_returns_a_spec_result_that_matches_the_pod_namespace_and_is_idempotent() {
    require!(Tier::Privileged, need_root(), which("nsenter"), which("ip"));
    add_result().expect("ADD");
}

fn add_result() -> Result<()> {
    let mut fx = Fixture::new()?;
    let pod = fx.netns("pod-a")?;
    let r = fx.add("a", &pod)?;

    // The result, per spec 1.0: interfaces (bridge, host veth, the pod's with its sandbox),
    // ips naming the pod's interface by index, no "version" in ips, default routes.
    ensure!(r["cniVersion"] == "1.0.0", "{r}");
    let ifs = r["interfaces"].as_array().context("interfaces")?;
    ensure!(ifs.len() == 3, "bridge, host veth, pod interface: {r}");
    ensure!(ifs[0]["name"] == "keel0" && ifs[0]["sandbox"].is_null(), "{r}");
    ensure!(ifs[1]["sandbox"].is_null(), "the host veth is on the host: {r}");
    ensure!(ifs[2]["name"] == "eth0", "{r}");
    ensure!(ifs[2]["sandbox"].as_str() == Some(&*pod.display().to_string()), "{r}");
    for i in ifs {
        let mac = i["mac"].as_str().context("mac")?;
        ensure!(mac.len() == 17 && mac.split(':').count() == 6, "mac {mac}");
    }
    let ips = r["ips"].as_array().context("ips")?;
    ensure!(ips.len() == 2, "one address per family: {r}");
    for ip in ips {
        ensure!(ip["interface"] == 2, "ips name eth0 by index: {r}");
        ensure!(ip.get("version").is_none(), "no version field in a 1.0.0 result: {r}");
    }
    let addr = |i: usize| ips[i]["address"].as_str().unwrap_or_default().to_owned();
    ensure!(in_net(&addr(0), "10.42.0.0/24") && ips[0]["gateway"] == "10.42.0.1", "{r}");
    ensure!(in_net(&addr(1), "fd42::/64") && ips[1]["gateway"] == "fd42::1", "{r}");
    let routes: BTreeSet<(String, String)> = r["routes"]
        .as_array()
        .context("routes")?
        .iter()
        .map(|rt| (rt["dst"].as_str().unwrap_or("").into(), rt["gw"].as_str().unwrap_or("").into()))
        .collect();
    let want_routes: BTreeSet<(String, String)> =
        [("0.0.0.0/0", "10.42.0.1"), ("::/0", "fd42::1")].map(|(d, g)| (d.into(), g.into())).into();
    ensure!(routes == want_routes, "{r}");

    // The kernel agrees: the pod has eth0 with that MAC, both addresses and default routes,
    // the host end is on the bridge, the bridge holds the gateways.
    let view = pod_view(&pod)?.context("eth0 in the pod")?;
    ensure!(view.mac == ifs[2]["mac"].as_str().unwrap_or_default(), "pod mac {}", view.mac);
    ensure!(view.addrs == BTreeSet::from([addr(0), addr(1)]), "pod addresses {:?}", view.addrs);
    let want_gws: BTreeSet<(String, String)> =
        [("10.42.0.1", "eth0"), ("fd42::1", "eth0")].map(|(g, d)| (g.into(), d.into())).into();
    ensure!(view.gateways == want_gws, "pod default routes {:?}", view.gateways);
    let veth = result_host_veth(&r);
    let host_end = &ip_json(&fx.host(), &["link", "show", "dev", &veth])?[0];
    ensure!(host_end["master"] == "keel0", "host end on the bridge: {host_end}");
    ensure!(host_end["address"] == ifs[1]["mac"], "host end mac: {host_end}");
    ensure!(host_end["operstate"] == "UP", "host end up: {host_end}");
    let bridge = &ip_json(&fx.host(), &["addr", "show", "dev", "keel0"])?[0];
    let bridge_addrs: BTreeSet<String> = bridge["addr_info"]
        .as_array()
        .context("bridge addr_info")?
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect();
    ensure!(
        bridge_addrs == BTreeSet::from(["10.42.0.1/24".into(), "fd42::1/64".into()]),
        "bridge addresses {bridge_addrs:?}"
    );
    ensure!(bridge["address"] == ifs[0]["mac"], "bridge mac: {bridge}");

    // ADD again: the same addresses, the same interfaces, nothing added.
    let again = fx.add("a", &pod)?;
    ensure!(result_ips(&again) == result_ips(&r), "idempotent ADD: {r} then {again}");
    ensure!(again["interfaces"] == r["interfaces"], "same interfaces: {r} then {again}");
    ensure!(pod_view(&pod)?.context("eth0")?.addrs == view.addrs);
    ensure!(fx.allocations()?.len() == 2, "{:?}", fx.allocations()?);
    ensure!(links(&pod)? == BTreeSet::from(["eth0".into(), "lo".into()]));

    // A 1.1.0 result also carries MTUs, a 0.3.1 one the ip versions (same pod, still idempotent).
    let out = fx.exec_json("ADD", Some("a"), Some(&pod), &fx.config("1.1.0"));
    out.ok()?;
    let r11 = out.json()?;
    ensure!(r11["interfaces"][2]["mtu"] == view.mtu, "1.1.0 mtu: {r11}");
    let out = fx.exec_json("ADD", Some("a"), Some(&pod), &fx.config("0.3.1"));
    out.ok()?;
    let r03 = out.json()?;
    ensure!(r03["ips"][0]["version"] == "4" && r03["ips"][1]["version"] == "6", "{r03}");
    ensure!(result_ips(&r03) == result_ips(&r));
    Ok(())
}

#[test]
fn del_twice_exits_zero_and_releases_everything() {
    require!(Tier::Privileged, need_root(), which("nsenter"), which("ip"));
    del_twice().expect("DEL");
}

fn del_twice() -> Result<()> {
    let mut fx = Fixture::new()?;
    let (pa, pb) = (fx.netns("pod-a")?, fx.netns("pod-b")?);
    let a = fx.add("a", &pa)?;
    fx.add("b", &pb)?;
    let cfg = fx.config("1.0.0");
    for _ in 0..2 {
        let out = fx.exec_json("DEL", Some("a"), Some(&pa), &cfg);
        out.ok()?;
        ensure!(out.stdout.trim().is_empty(), "DEL prints nothing: {}", out.stdout);
    }
    ensure!(!links(&pa)?.contains("eth0"), "a is off the network: {:?}", links(&pa)?);
    let left: BTreeSet<String> = fx.allocations()?.values().map(|(id, _)| id.clone()).collect();
    ensure!(left == BTreeSet::from(["b".into()]), "a's addresses released: {left:?}");
    let host = links(&fx.host())?;
    ensure!(!host.contains(&result_host_veth(&a)) || retired(&fx.host(), &result_host_veth(&a))?);
    // A runtime that lost the namespace: DEL without CNI_NETNS, and with a path that is gone.
    netns::remove(&pb)?;
    fx.exec_json("DEL", Some("b"), Some(&pb), &cfg).ok()?;
    fx.exec_json("DEL", Some("b"), None, &cfg).ok()?;
    ensure!(fx.allocations()?.is_empty(), "{:?}", fx.allocations()?);
    // A DEL of something never added is fine as well.
    fx.exec_json("DEL", Some("never"), None, &cfg).ok()?;
    Ok(())
}

/// Whether `veth` in `ns` is down and off the bridge's forwarding (retired, not reaped yet).
fn retired(ns: &Path, veth: &str) -> Result<bool> {
    let l = &ip_json(ns, &["link", "show", "dev", veth])?[0];
    Ok(l["group"] != "default" && !l["flags"].as_array().is_some_and(|f| f.contains(&json!("UP"))))
}

#[test]
fn check_passes_with_prev_result_then_fails_with_101_after_the_default_route_is_deleted() {
    require!(Tier::Privileged, need_root(), which("nsenter"), which("ip"));
    check().expect("CHECK");
}

fn check() -> Result<()> {
    let mut fx = Fixture::new()?;
    let pod = fx.netns("pod-a")?;
    let r = fx.add("a", &pod)?;
    let mut cfg = fx.config("1.0.0");
    cfg["prevResult"] = r.clone();
    let out = fx.exec_json("CHECK", Some("a"), Some(&pod), &cfg);
    out.ok()?;
    ensure!(out.stdout.trim().is_empty(), "CHECK prints nothing: {}", out.stdout);

    // A prevResult with an address the pod does not hold fails.
    let mut wrong = cfg.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.42.0.200/24");
    fx.exec_json("CHECK", Some("a"), Some(&pod), &wrong).error(101)?;
    // CHECK without prevResult is a configuration error.
    fx.exec_json("CHECK", Some("a"), Some(&pod), &fx.config("1.0.0")).error(7)?;

    let st = Command::new("nsenter")
        .arg(format!("--net={}", pod.display()))
        .args(["ip", "route", "del", "default"])
        .status()?;
    ensure!(st.success(), "ip route del default: {st}");
    let v = fx.exec_json("CHECK", Some("a"), Some(&pod), &cfg).error(101)?;
    let details = v["details"].as_str().unwrap_or_default();
    ensure!(details.contains("no default route via 10.42.0.1"), "clear error: {v}");

    // ADD repairs it; CHECK passes again.
    fx.add("a", &pod)?;
    fx.exec_json("CHECK", Some("a"), Some(&pod), &cfg).ok()?;
    Ok(())
}

#[test]
fn gc_with_valid_attachments_releases_the_others() {
    require!(Tier::Privileged, need_root(), which("nsenter"), which("ip"));
    gc().expect("GC");
}

fn gc() -> Result<()> {
    let mut fx = Fixture::new()?;
    let mut results = BTreeMap::new();
    let mut pods = BTreeMap::new();
    for id in ["a", "b", "c"] {
        let ns = fx.netns(&format!("pod-{id}"))?;
        results.insert(id, fx.add(id, &ns)?);
        pods.insert(id, ns);
    }
    let mut cfg = fx.config("1.1.0");
    cfg["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    let out = fx.exec_json("GC", None, None, &cfg);
    out.ok()?;
    ensure!(out.stdout.trim().is_empty(), "GC prints nothing: {}", out.stdout);

    let held: BTreeSet<String> = fx.allocations()?.values().map(|(id, _)| id.clone()).collect();
    ensure!(held == BTreeSet::from(["a".into()]), "only a keeps addresses: {held:?}");
    let want_host: BTreeSet<String> =
        ["lo".into(), "keel0".into(), result_host_veth(&results["a"])].into();
    ensure!(links(&fx.host())? == want_host, "b's and c's veths reaped: {:?}", links(&fx.host())?);
    for id in ["b", "c"] {
        ensure!(pod_view(&pods[id])?.is_none(), "{id} lost eth0 with its host end");
    }
    let mut check = fx.config("1.0.0");
    check["prevResult"] = results["a"].clone();
    fx.exec_json("CHECK", Some("a"), Some(&pods["a"]), &check).ok()?;

    // GC needs a 1.1.0 configuration and the list of valid attachments.
    fx.exec_json("GC", None, None, &fx.config("1.0.0")).error(1)?;
    fx.exec_json("GC", None, None, &fx.config("1.1.0")).error(7)?;
    ensure!(fx.allocations()?.len() == 2, "refused GCs released nothing");
    Ok(())
}

#[test]
fn status_and_version_answer_per_spec() {
    require!(Tier::Privileged, need_root(), which("nsenter"), which("ip"));
    status_version().expect("STATUS and VERSION");
}

fn status_version() -> Result<()> {
    let mut fx = Fixture::new()?;
    let out = fx.exec_json("STATUS", None, None, &fx.config("1.1.0"));
    out.ok()?;
    ensure!(out.stdout.trim().is_empty(), "STATUS prints nothing on success: {}", out.stdout);
    fx.exec_json("STATUS", None, None, &fx.config("1.0.0")).error(1)?;
    // A host namespace that is gone: ADD cannot be served.
    let mut gone = fx.config("1.1.0");
    gone["hostNetns"] = json!(fx.dir.path().join("no-such-netns"));
    fx.exec_json("STATUS", None, None, &gone).error(50)?;
    // A full pool: ADD cannot be served either.
    let mut tiny = fx.config("1.1.0");
    tiny["ipam"]["ranges"] = json!([[{"subnet": "10.45.0.0/30"}]]);
    fx.exec_json("STATUS", None, None, &tiny).ok()?;
    let pod = fx.netns("pod-a")?;
    fx.exec_json("ADD", Some("a"), Some(&pod), &tiny).ok()?;
    let v = fx.exec_json("STATUS", None, None, &tiny).error(50)?;
    ensure!(v["details"].as_str().is_some_and(|d| d.contains("no free address")), "{v}");

    for asked in ["0.3.1", "1.0.0", "1.1.0"] {
        let out =
            fx.exec("VERSION", None, None, json!({"cniVersion": asked}).to_string().as_bytes());
        out.ok()?;
        let v = out.json()?;
        ensure!(v["cniVersion"] == asked, "{v}");
        let supported: BTreeSet<&str> = v["supportedVersions"]
            .as_array()
            .context("supportedVersions")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            ensure!(supported.contains(want), "{want} missing: {v}");
        }
    }
    Ok(())
}

#[test]
fn malformed_input_gets_a_spec_error_and_touches_nothing() {
    require!(Tier::Privileged, need_root(), which("nsenter"), which("ip"));
    malformed().expect("malformed input");
}

fn malformed() -> Result<()> {
    let mut fx = Fixture::new()?;
    let pod = fx.netns("pod-a")?;
    let good = fx.config("1.0.0");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c.to_string()
    };
    let cases: Vec<(&str, String, u64)> = vec![
        ("empty stdin", String::new(), 6),
        ("truncated JSON", good.to_string()[..40].to_owned(), 6),
        ("not an object", "[1,2,3]".into(), 7),
        ("binary garbage", "\u{1}\u{2}{{{".into(), 6),
        ("unknown version", with(&|c| c["cniVersion"] = json!("9.9.9")), 1),
        ("version not a string", with(&|c| c["cniVersion"] = json!(1)), 7),
        ("missing name", with(&|c| drop(c.as_object_mut().map(|o| o.remove("name")))), 7),
        ("another plugin's type", with(&|c| c["type"] = json!("bridge")), 7),
        ("mtu of the wrong type", with(&|c| c["mtu"] = json!("big")), 6),
        (
            "subnet that does not parse",
            with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "10.42.0.0/33"}]])),
            6,
        ),
        (
            "host bits in the subnet",
            with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "10.42.0.7/24"}]])),
            7,
        ),
        ("unsupported vlan", with(&|c| c["vlan"] = json!(5)), 2),
        ("bridge name too long", with(&|c| c["bridge"] = json!("a-much-too-long-bridge")), 7),
        ("prevResult of the wrong shape", with(&|c| c["prevResult"] = json!({"ips": 5})), 6),
    ];
    for (what, stdin, code) in &cases {
        let out = fx.exec("ADD", Some("a"), Some(&pod), stdin.as_bytes());
        out.error(*code).with_context(|| format!("ADD with {what}"))?;
    }
    // Bad environment: no container id, an invalid one, an unknown command.
    let cfg = good.to_string();
    let out = fx.spawn("ADD", None, Some(&pod), cfg.as_bytes())?.wait_with_output()?;
    Out::of(out)?.error(4).context("ADD without CNI_CONTAINERID")?;
    fx.exec("ADD", Some("../x"), Some(&pod), cfg.as_bytes()).error(4).context("bad id")?;
    fx.exec("FROB", Some("a"), Some(&pod), cfg.as_bytes()).error(4).context("unknown command")?;
    // CNI_NETNS naming a file that is not a network namespace: refused before any work.
    let plain = fx.dir.path().join("not-a-netns");
    std::fs::write(&plain, b"")?;
    let v = fx.exec("ADD", Some("a"), Some(&plain), cfg.as_bytes()).error(4)?;
    ensure!(v["details"].as_str().is_some_and(|d| d.contains("is not a network namespace")), "{v}");

    ensure!(links(&fx.host())? == BTreeSet::from(["lo".into()]), "no bridge was created");
    ensure!(links(&pod)? == BTreeSet::from(["lo".into()]), "no pod interface");
    ensure!(!fx.data_dir().exists(), "no state was written");
    // A DEL of such a file still succeeds: there is nothing to unwire.
    fx.exec("DEL", Some("a"), Some(&plain), cfg.as_bytes()).ok()?;
    Ok(())
}

#[test]
fn address_exhaustion_gives_code_100_with_a_clear_message() {
    require!(Tier::Privileged, need_root(), which("nsenter"), which("ip"));
    exhaustion().expect("exhaustion");
}

fn exhaustion() -> Result<()> {
    let mut fx = Fixture::new()?;
    let (p0, p1) = (fx.netns("p0")?, fx.netns("p1")?);
    // A /30: .0 network, .1 gateway, .3 broadcast: one pod address.
    let mut cfg = fx.config("1.0.0");
    cfg["ipam"]["ranges"] = json!([[{"subnet": "10.45.0.0/30"}]]);
    let out = fx.exec_json("ADD", Some("p0"), Some(&p0), &cfg);
    out.ok()?;
    ensure!(result_ips(&out.json()?) == ["10.45.0.2/30"], "{}", out.stdout);
    let v = fx.exec_json("ADD", Some("p1"), Some(&p1), &cfg).error(100)?;
    ensure!(v["msg"] == "no free address", "{v}");
    let details = v["details"].as_str().unwrap_or_default();
    ensure!(
        details.contains("no free address in range set 0") && details.contains("p1/eth0"),
        "{v}"
    );
    ensure!(pod_view(&p1)?.is_none(), "the refused pod got no interface");
    ensure!(fx.allocations()?.len() == 1, "{:?}", fx.allocations()?);
    // Freed, the address serves the next pod.
    fx.exec_json("DEL", Some("p0"), Some(&p0), &cfg).ok()?;
    let out = fx.exec_json("ADD", Some("p1"), Some(&p1), &cfg);
    out.ok()?;
    ensure!(result_ips(&out.json()?) == ["10.45.0.2/30"], "{}", out.stdout);
    Ok(())
}

/// What killed ADDs left: addresses of ids that never completed, pod interfaces in killed
/// ADDs' namespaces, and whether a staging file is left.
fn leftovers(
    fx: &Fixture,
    completed: &BTreeMap<String, (PathBuf, Value)>,
    killed: &BTreeMap<String, PathBuf>,
) -> Result<(usize, usize, bool)> {
    let allocs = fx.allocations()?;
    let leaked_addresses = allocs.values().filter(|(id, _)| !completed.contains_key(id)).count();
    let killed_veths = killed.values().filter(|ns| links(ns).is_ok_and(|l| l.len() > 1)).count();
    Ok((leaked_addresses, killed_veths, fx.ipam_dir().join(".staging").exists()))
}

/// Whether some kill landed inside an ADD (and some ADD completed besides the warm one).
fn landed(
    fx: &Fixture,
    completed: &BTreeMap<String, (PathBuf, Value)>,
    killed: &BTreeMap<String, PathBuf>,
) -> Result<bool> {
    let (addresses, veths, staging) = leftovers(fx, completed, killed)?;
    Ok(completed.len() > 1 && (addresses + veths > 0 || staging))
}

#[test]
fn kill_9_during_add_then_gc_leaks_nothing() {
    require!(Tier::Privileged, need_root(), which("nsenter"), which("ip"));
    kill_9().expect("kill -9 then GC");
}

/// A small xorshift generator; the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed =
            std::env::var("KT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                t.as_nanos() as u64 | 1
            });
        eprintln!("kill_9 seed: KT_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn kill_9() -> Result<()> {
    // At least ROUNDS rounds, more (up to MAX_ROUNDS) until a kill has landed inside an ADD:
    // where the kills fall is random, and on a loaded machine a few rounds can all miss.
    const ROUNDS: usize = 6;
    const MAX_ROUNDS: usize = 30;
    const AT_ONCE: usize = 8;
    let mut fx = Fixture::new()?;
    let mut rng = Rng::new();
    let cfg = fx.config("1.0.0").to_string();

    // One ADD to time (and to create the bridge, so kills land in the per-pod work).
    let warm = fx.netns("warm")?;
    let t = Instant::now();
    let warm_result = fx.add("warm", &warm)?;
    // With AT_ONCE processes sharing two cores each ADD takes several times longer: spread
    // the kills over that, so some ADDs die early, some in the middle and some finish.
    let window = t.elapsed().as_micros() as u64 * AT_ONCE as u64 * 3 / 4;
    eprintln!("kill_9: a warm ADD takes {:?}; kills land in 0..{window} us", t.elapsed());

    let mut completed: BTreeMap<String, (PathBuf, Value)> = BTreeMap::new();
    completed.insert("warm".into(), (warm, warm_result));
    let mut killed: BTreeMap<String, PathBuf> = BTreeMap::new();
    for round in 0..MAX_ROUNDS {
        if round >= ROUNDS && landed(&fx, &completed, &killed)? {
            break;
        }
        let mut batch = Vec::new();
        for i in 0..AT_ONCE {
            let id = format!("k{round}-{i}");
            let ns = fx.netns(&id)?;
            let delay = Duration::from_micros(rng.below(window));
            batch.push((id, ns, delay));
        }
        let start = Instant::now();
        let mut children = Vec::new();
        for (id, ns, delay) in batch {
            let child = fx.spawn("ADD", Some(&id), Some(&ns), cfg.as_bytes())?;
            children.push((id, ns, delay, child));
        }
        children.sort_by_key(|c| c.2);
        for (_, _, delay, child) in &mut children {
            if let Some(left) = delay.checked_sub(start.elapsed()) {
                std::thread::sleep(left);
            }
            if child.try_wait()?.is_none() {
                // SIGKILL; it may have exited in between, which is fine.
                let _ = child.kill();
            }
        }
        for (id, ns, _, child) in children {
            let out = Out::of(child.wait_with_output()?)?;
            match out.code {
                Some(0) => {
                    completed.insert(id, (ns, out.json()?));
                }
                None => {
                    killed.insert(id, ns);
                }
                Some(c) => {
                    bail!("ADD {id} failed on its own with {c}: {}{}", out.stdout, out.stderr)
                }
            }
        }
    }

    // What the kills left behind, to prove some landed in the middle of an ADD.
    let (leaked_addresses, killed_veths, staging) = leftovers(&fx, &completed, &killed)?;
    eprintln!(
        "kill_9: {} completed, {} killed; before GC: {leaked_addresses} addresses and {killed_veths} \
         pod interfaces of killed ADDs, staging file left: {staging}",
        completed.len() - 1,
        killed.len(),
    );
    ensure!(!killed.is_empty(), "no ADD was killed: the kill window missed");
    ensure!(completed.len() > 1, "every ADD was killed: the kill window is too short");
    ensure!(
        leaked_addresses + killed_veths > 0 || staging,
        "no kill landed inside an ADD (nothing to collect); rerun or widen the window"
    );

    let mut gc = fx.config("1.1.0");
    gc["cni.dev/valid-attachments"] = completed
        .keys()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect::<Vec<_>>()
        .into();
    fx.exec_json("GC", None, None, &gc).ok()?;

    // Allocation files: exactly the completed ADDs' addresses; every file readable.
    let allocs = fx.allocations()?;
    let mut want: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
    for (id, (_, r)) in &completed {
        for a in result_ips(r) {
            let ip: ipnet::IpNet = a.parse()?;
            want.insert(ip.addr(), (id.clone(), "eth0".into()));
        }
    }
    ensure!(allocs == want, "allocations after GC:\n{allocs:?}\nwant:\n{want:?}");
    // Besides them only the layout's own files, and index entries (`k.<hash>.<address>`) that
    // are hard links of a valid address's record.
    use std::os::unix::fs::MetadataExt;
    let ino = |name: &str| std::fs::metadata(fx.ipam_dir().join(name)).map(|m| m.ino());
    for e in std::fs::read_dir(fx.ipam_dir())? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let indexed = name.strip_prefix("k.").and_then(|rest| rest.get(17..));
        let ok = match indexed {
            Some(addr) => {
                let ip: Option<IpAddr> = addr.parse().ok();
                ip.is_some_and(|ip| want.contains_key(&ip)) && ino(&name)? == ino(addr)?
            }
            None => {
                ["VERSION", "lock"].contains(&name.as_str())
                    || name.starts_with("last_reserved.")
                    || name.parse::<IpAddr>().is_ok_and(|ip| want.contains_key(&ip))
            }
        };
        ensure!(ok, "file {name} left in the IPAM directory");
        std::fs::read(fx.ipam_dir().join(&name)).with_context(|| format!("read {name}"))?;
    }
    let version: Value = serde_json::from_slice(&std::fs::read(fx.ipam_dir().join("VERSION"))?)?;
    ensure!(version == json!({"format": "keelson-ipam", "v": 1}), "{version}");

    // Links: the bridge and the completed pods' host ends only; killed pods have no eth0.
    let mut want_host: BTreeSet<String> = ["lo".into(), "keel0".into()].into();
    want_host.extend(completed.values().map(|(_, r)| result_host_veth(r)));
    let host = links(&fx.host())?;
    ensure!(host == want_host, "host links after GC: {host:?}, want {want_host:?}");
    for (id, ns) in &killed {
        ensure!(links(ns)? == BTreeSet::from(["lo".into()]), "{id}: {:?}", links(ns)?);
    }
    // The survivors are intact, and a killed pod can be added again.
    for (id, (ns, r)) in &completed {
        let mut check = fx.config("1.0.0");
        check["prevResult"] = r.clone();
        fx.exec_json("CHECK", Some(id), Some(ns), &check)
            .ok()
            .with_context(|| format!("CHECK {id}"))?;
    }
    if let Some((id, ns)) = killed.iter().next() {
        let r = fx.add(id, ns)?;
        ensure!(pod_view(ns)?.is_some_and(|v| v.addrs.len() == 2), "re-ADD of {id}: {r}");
    }
    Ok(())
}

fn which(bin: &str) -> Option<String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    (!found).then(|| format!("needs {bin} in PATH"))
}
