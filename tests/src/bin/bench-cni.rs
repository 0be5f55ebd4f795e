//! The driver of `bench/cni`: `keelson cni` against the reference `bridge` + `host-local`
//! plugins, binary against binary with the same configuration, and the in-process library.
//!
//! `bench-cni --keelson PATH --cni-path DIR --runs N --parallel P --work DIR`
//!
//! It first moves itself into a network namespace and a mount namespace of its own (private
//! propagation), so the bridges, veths, masquerade rules and sysctls both plugins make live in
//! a throw-away "host" namespace, and every pinned pod namespace disappears with the process
//! on any exit path. Nothing is sent anywhere: no packet leaves those namespaces.
//!
//! Per plugin: N sandboxes, each ADDed one at a time (the two plugins alternate, so load from
//! elsewhere falls on both alike), then each DELed one at a time; then the same N sandboxes in
//! waves of P at once (ADD wave, then DEL wave), timing each invocation from spawn to exit.
//! Then the library (`keelson_cni::Network`) in process over N sandboxes of its own. Prints
//! `BENCH <figure> <value> <unit>` lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use keelson_cni::config::NetworkConfig;
use keelson_cni::{netns, Attach, Network};
use keelson_tests::bench::{isolate, report};

#[derive(Debug, Parser)]
struct Args {
    /// The `keelson` binary (its `cni` subcommand is the plugin).
    #[arg(long)]
    keelson: PathBuf,
    /// Where the reference plugins are (`bridge`, `host-local`).
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_path: PathBuf,
    /// Sandboxes per plugin and phase.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Invocations at once in the parallel phase.
    #[arg(long, default_value_t = 20)]
    parallel: usize,
    /// Scratch directory (pinned namespaces, IPAM state).
    #[arg(long)]
    work: PathBuf,
    /// Give every pod an IPv6 address too (both plugins).
    #[arg(long)]
    dual_stack: bool,
    /// Turn egress masquerade off (both plugins).
    #[arg(long)]
    no_masquerade: bool,
}

/// IPv4 (and with `dual`, IPv6) range sets for a network numbered `n`.
fn ranges(n: u8, dual: bool) -> serde_json::Value {
    let mut sets = vec![serde_json::json!([{ "subnet": format!("10.{n}.0.0/16") }])];
    if dual {
        sets.push(serde_json::json!([{ "subnet": format!("fd{n}::/64") }]));
    }
    serde_json::Value::Array(sets)
}

/// One plugin under test.
struct Plugin {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    config: String,
    cni_path: PathBuf,
}

impl Plugin {
    /// Runs one command; returns its wall time.
    fn invoke(&self, command: &str, id: &str, ns: &Path) -> Result<Duration> {
        let start = Instant::now();
        let child = self
            .spawn(command, id, ns)
            .with_context(|| format!("spawn {} {command}", self.name))?;
        let out = child.wait_with_output()?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!(
                "{} {command} {id} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(took)
    }

    fn spawn(&self, command: &str, id: &str, ns: &Path) -> Result<std::process::Child> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", ns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(self.config.as_bytes())?;
        Ok(child)
    }

    /// `command` for every sandbox in waves of `width`, each invocation timed on its own.
    fn waves(
        &self,
        command: &str,
        sandboxes: &[(String, PathBuf)],
        width: usize,
    ) -> Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(sandboxes.len());
        for wave in sandboxes.chunks(width) {
            let handles: Vec<_> = wave
                .iter()
                .map(|(id, ns)| {
                    let start = Instant::now();
                    let child = self.spawn(command, id, ns);
                    (id, start, child)
                })
                .collect();
            for (id, start, child) in handles {
                let out = child?.wait_with_output()?;
                times.push(start.elapsed());
                if !out.status.success() {
                    bail!(
                        "{} {command} {id} failed: {}",
                        self.name,
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
            }
        }
        Ok(times)
    }
}

/// Pins `n` fresh pod namespaces under `dir`.
fn sandboxes(dir: &Path, prefix: &str, n: usize) -> Result<Vec<(String, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i:04}{}", "0".repeat(56));
            let path = dir.join(&id[..12]);
            netns::create(&path).with_context(|| format!("create {}", path.display()))?;
            Ok((id, path))
        })
        .collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Before any thread exists: unshare(CLONE_NEWNS) refuses a multi-threaded process.
    isolate()?;
    let work = &args.work;
    std::fs::create_dir_all(work)?;
    let cni_path = args.cni_path.clone();

    // Same shape on both sides: dual stack, masquerade, hairpin, gateway on the bridge.
    let ours = Plugin {
        name: "keelson",
        program: args.keelson.clone(),
        args: vec!["cni".into()],
        config: serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench-keelson", "type": "keelson",
            "bridge": "keel0", "isGateway": true, "ipMasq": !args.no_masquerade, "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": work.join("ipam-keelson"),
                     "ranges": ranges(98, args.dual_stack)}
        })
        .to_string(),
        cni_path: cni_path.clone(),
    };
    let reference = Plugin {
        name: "reference",
        program: cni_path.join("bridge"),
        args: vec![],
        config: serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench-reference", "type": "bridge",
            "bridge": "cni0", "isGateway": true, "ipMasq": !args.no_masquerade, "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": work.join("ipam-reference"),
                     "ranges": ranges(99, args.dual_stack)}
        })
        .to_string(),
        cni_path,
    };

    let n = args.runs;
    let a = sandboxes(&work.join("ns-keelson"), "a", n)?;
    let b = sandboxes(&work.join("ns-reference"), "b", n)?;
    // Warm-up: one ADD/DEL each creates the bridges and the rules outside the measurement.
    for (p, (id, ns)) in [(&ours, &a[0]), (&reference, &b[0])] {
        p.invoke("ADD", id, ns)?;
        p.invoke("DEL", id, ns)?;
    }

    let (mut add_a, mut add_b, mut del_a, mut del_b) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let (first, second) = if i % 2 == 0 { (&ours, &reference) } else { (&reference, &ours) };
        for p in [first, second] {
            let (id, ns) = if p.name == "keelson" { &a[i] } else { &b[i] };
            let t = p.invoke("ADD", id, ns)?;
            if p.name == "keelson" {
                add_a.push(t)
            } else {
                add_b.push(t)
            }
        }
    }
    for i in 0..n {
        let (first, second) = if i % 2 == 0 { (&ours, &reference) } else { (&reference, &ours) };
        for p in [first, second] {
            let (id, ns) = if p.name == "keelson" { &a[i] } else { &b[i] };
            let t = p.invoke("DEL", id, ns)?;
            if p.name == "keelson" {
                del_a.push(t)
            } else {
                del_b.push(t)
            }
        }
    }
    report("cni_add", &add_a, Some(("reference", &add_b)));
    report("cni_del", &del_a, Some(("reference", &del_b)));

    let w = args.parallel;
    let (mut padd_a, mut padd_b, mut pdel_a, mut pdel_b) = (vec![], vec![], vec![], vec![]);
    for (chunk_a, chunk_b) in a.chunks(w).zip(b.chunks(w)) {
        padd_a.extend(ours.waves("ADD", chunk_a, w)?);
        padd_b.extend(reference.waves("ADD", chunk_b, w)?);
        pdel_a.extend(ours.waves("DEL", chunk_a, w)?);
        pdel_b.extend(reference.waves("DEL", chunk_b, w)?);
    }
    report(&format!("cni_add_{w}_at_once"), &padd_a, Some(("reference", &padd_b)));
    report(&format!("cni_del_{w}_at_once"), &pdel_a, Some(("reference", &pdel_b)));
    println!("BENCH cni_runs {n} sandboxes");
    println!("BENCH cni_dual_stack {} bool", u8::from(args.dual_stack));
    println!("BENCH cni_masquerade {} bool", u8::from(!args.no_masquerade));

    // The library, as the agent calls it: in process, no fork, no exec.
    let lib = sandboxes(&work.join("ns-library"), "c", n)?;
    let mut cidrs = vec!["10.97.0.0/16".parse()?];
    if args.dual_stack {
        cidrs.push("fd97::/64".parse()?);
    }
    let mut cfg = NetworkConfig::standalone(&cidrs);
    if args.no_masquerade {
        cfg.masquerade = None;
    }
    cfg.name = "bench-library".into();
    cfg.bridge = "keel1".into();
    cfg.state_dir = work.join("library");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let net = Network::new(cfg)?;
    let (mut ladd, mut ldel) = (vec![], vec![]);
    rt.block_on(async {
        for (id, ns) in &lib {
            let at = Attach { container_id: id.clone(), netns: ns.clone(), ifname: "eth0".into() };
            let start = Instant::now();
            net.add(&at).await?;
            ladd.push(start.elapsed());
        }
        for (id, ns) in &lib {
            let at = Attach { container_id: id.clone(), netns: ns.clone(), ifname: "eth0".into() };
            let start = Instant::now();
            net.del(&at).await?;
            ldel.push(start.elapsed());
        }
        anyhow::Ok(())
    })?;
    report("cni_library_add", &ladd, None);
    report("cni_library_del", &ldel, None);
    Ok(())
}
