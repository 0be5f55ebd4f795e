//! `bench-runtime`: the in-process half of `bench/runtime`.
//!
//! - `export-bundle --image DIR --out DIR -- ARGS…`: one bundle for crun, runc and
//!   `keelson-shim run`, made by Keelson's own image store and spec builder. The rootfs is a
//!   plain copy of the image's unpacked layers in `OUT/rootfs` (no mount stays behind).
//!   `OUT/config.json` is the spec as built (what crun and runc read); `OUT/keelson/config.json`
//!   is the same spec prepared as the runtime prepares bundles: the seccomp profile compiled
//!   once to `OUT/keelson/seccomp.bpf` for the shim's executor (`spec::filter`), then
//!   `spec::adapt_for_libcontainer` (what libcontainer reads; crun and runc would read the
//!   adaptation with different semantics, so they must not get it). Both name the same
//!   absolute rootfs.
//! - `full --images DIR --runs N --work DIR`: through the `Runtime` trait (`ShimRuntime`,
//!   `NoNetwork`): image import, pod sandbox creation without network, and the full container
//!   path (create, start, exit event, remove) of `true`. Prints `BENCH <figure> <value> <unit>`.
//!
//! Runs as root. Everything it creates lives under its work directory or a
//! `keelson-bench-<pid>` cgroup tree and is removed on every exit path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use keelson_runtime::api::{ContainerImage, Rootfs, Runtime, RuntimeEvent};
use keelson_runtime::cgroup::{detect_host, Layout};
use keelson_runtime::config::{ContainerConfig, PodMeta, SandboxConfig, SandboxId};
use keelson_runtime::image::{ImageStore, ImportOptions};
use keelson_runtime::network::NoNetwork;
use keelson_runtime::sandbox::{CgroupConfig, RuntimeConfig, ShimRuntime};
use keelson_runtime::spec::{self, EtcFiles, NamespaceMode, SandboxNamespaces, SpecInput};

const IMAGE_NAME: &str = "keelson.bench/busybox:latest";

#[derive(Debug, Parser)]
#[command(name = "bench-runtime", about = "Keelson's runtime benchmark helper")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes a bundle (rootfs, config.json, keelson/config.json) for ARGS in an image.
    ExportBundle {
        /// OCI image layout directory (or archive).
        #[arg(long)]
        image: PathBuf,
        /// The bundle directory to create.
        #[arg(long)]
        out: PathBuf,
        /// The cgroup (absolute, in the cgroup v2 hierarchy) the container is placed in.
        #[arg(long, default_value = "/keelson-bench/container")]
        cgroups_path: PathBuf,
        /// Give the spec the device allow-list of `linux.resources` (and no other resource):
        /// runc needs it on a hybrid host, where its v1 device cgroup otherwise denies
        /// /dev/null.
        #[arg(long)]
        cgroup_resources: bool,
        /// The container's command.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Measures the full path through the runtime library.
    Full {
        /// The test images directory (with `busybox-oci`).
        #[arg(long)]
        images: PathBuf,
        /// Runs per figure.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Work directory (created; removed at the end).
        #[arg(long)]
        work: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::ExportBundle { image, out, cgroups_path, cgroup_resources, args } => {
            export_bundle(&image, &out, &cgroups_path, cgroup_resources, &args)
        }
        Cmd::Full { images, runs, work } => {
            ensure!(runs > 0, "--runs must be at least 1");
            std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
            let res = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(full(&images, runs, &work));
            let cleaned = std::fs::remove_dir_all(&work)
                .with_context(|| format!("remove {}", work.display()));
            res?;
            cleaned
        }
    }
}

fn container_config(args: &[String]) -> ContainerConfig {
    ContainerConfig::new("bench", IMAGE_NAME, args.to_vec())
}

/// Copies the image's unpacked layers into `dest` (a plain directory, no mount left).
fn copy_rootfs(
    store: &ImageStore,
    image: &keelson_runtime::image::Image,
    dest: &Path,
) -> Result<()> {
    let mount = store.prepare_rootfs(image, "export")?;
    std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    let cp = |src: &Path| -> Result<()> {
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(dest)
            .status()
            .context("run cp")?;
        ensure!(st.success(), "cp -a {} {}: {st}", src.display(), dest.display());
        Ok(())
    };
    if let [only] = mount.lowerdirs.as_slice() {
        cp(only)?;
    } else {
        // Several layers: let overlayfs apply the whiteouts (read-only, lowers only).
        let mnt = store.root().join("export-mnt");
        std::fs::create_dir_all(&mnt)?;
        let lower: Vec<String> = mount.lowerdirs.iter().map(|p| p.display().to_string()).collect();
        nix::mount::mount(
            Some("overlay"),
            &mnt,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(format!("lowerdir={}", lower.join(":")).as_str()),
        )
        .context("mount the image's layers")?;
        let res = cp(&mnt);
        nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).context("unmount layers")?;
        res?;
    }
    store.release_rootfs("export")?;
    Ok(())
}

fn export_bundle(
    image: &Path,
    out: &Path,
    cgroups_path: &Path,
    cgroup_resources: bool,
    args: &[String],
) -> Result<()> {
    let tmp = tempfile::tempdir().context("temp store")?;
    let store = ImageStore::open(tmp.path().join("store"))?;
    let img = store.import(image, &ImportOptions::named(IMAGE_NAME), None)?;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let out = out.canonicalize()?;
    let rootfs = out.join("rootfs");
    copy_rootfs(&store, &img, &rootfs)?;
    let config = container_config(args);
    let ns = SandboxNamespaces {
        network: NamespaceMode::New,
        ipc: NamespaceMode::New,
        uts: NamespaceMode::New,
        pid: NamespaceMode::New,
    };
    let etc = EtcFiles::default();
    let input = SpecInput {
        container: &config,
        image: &img.container_config(),
        rootfs: &rootfs,
        sandbox: &ns,
        hostname: "kbench",
        cgroups_path,
        cgroup_limits: cgroup_resources,
        etc_files: &etc,
    };
    let mut built = spec::build(&input)?;
    if cgroup_resources {
        // Only the device allow-list of a spec built with cgroup limits: runc needs it here;
        // cpu, memory and pids limits cannot be applied on this host's controller-less v2.
        let limited = spec::build(&SpecInput { cgroup_limits: true, ..input })?;
        let devices = limited
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().clone());
        let resources = oci_spec::runtime::LinuxResourcesBuilder::default()
            .devices(devices.unwrap_or_default())
            .build()
            .context("linux.resources")?;
        if let Some(linux) = built.linux_mut() {
            linux.set_resources(Some(resources));
        }
    }
    let plain = out.join("config.json");
    built.save(&plain).with_context(|| format!("write {}", plain.display()))?;
    let kdir = out.join("keelson");
    std::fs::create_dir_all(&kdir)?;
    // As the runtime prepares a bundle: the profile compiled once (here, per export) and
    // loaded by the shim's executor, or left to libcontainer when the process could not load it.
    let mut adapted = built.clone();
    let cache = spec::filter::FilterCache::new(out.join("seccomp-cache"));
    let compiled = spec::filter::prepare_bundle_seccomp(&cache, &mut adapted, &kdir)?;
    spec::adapt_for_libcontainer(&mut adapted);
    let kcfg = kdir.join("config.json");
    adapted.save(&kcfg).with_context(|| format!("write {}", kcfg.display()))?;
    println!(
        "bundle {}: rootfs {} (copy of {} layer(s) of {}); crun/runc read {}; keelson-shim reads {} ({})",
        out.display(),
        rootfs.display(),
        img.chain_ids.len(),
        image.display(),
        plain.display(),
        kcfg.display(),
        if compiled {
            "seccomp compiled once to keelson/seccomp.bpf, loaded by the shim's executor"
        } else {
            "seccomp loaded by libcontainer"
        }
    );
    Ok(())
}

/// Median and 99th percentile of durations, in milliseconds.
fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = v.len();
    let median = if n % 2 == 1 { ms(v[n / 2]) } else { (ms(v[n / 2 - 1]) + ms(v[n / 2])) / 2.0 };
    let idx = ((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1;
    (median, ms(v[idx]))
}

fn bench(name: &str, v: Vec<Duration>, p99: bool) {
    let n = v.len();
    let (median, p) = stats(v);
    println!("BENCH {name}_median {median:.2} ms");
    if p99 {
        println!("BENCH {name}_p99 {p:.2} ms");
    }
    println!("BENCH {name}_runs {n} runs");
}

fn pod(n: usize) -> SandboxConfig {
    let uid = format!("00000000-0000-4000-8000-{:012x}", (std::process::id() as usize) << 16 | n);
    SandboxConfig::new(PodMeta::new(format!("bench-{n}"), "default", uid))
}

/// Removes what the benchmark created in the runtime and the cgroup tree, also on failure.
struct Cleanup {
    rt: ShimRuntime,
    sandboxes: Vec<SandboxId>,
    cgroup_base: Option<PathBuf>,
}

impl Cleanup {
    async fn run(&mut self) {
        for id in std::mem::take(&mut self.sandboxes) {
            if let Err(e) = self.rt.remove_sandbox(&id).await {
                eprintln!("bench-runtime: cleanup of sandbox {id}: {e:#}");
            }
        }
        if let Some(b) = self.cgroup_base.take() {
            for d in ["burstable", "besteffort", ""] {
                let _ = std::fs::remove_dir(b.join(d));
            }
        }
    }
}

async fn full(images: &Path, runs: usize, work: &Path) -> Result<()> {
    let layout = images.join("busybox-oci");
    ensure!(layout.is_dir(), "no test image at {}", layout.display());

    // Image import into fresh stores (the layers are not unpacked by an import).
    let import_runs = runs.min(50);
    let (mut imports, mut unpacks) = (Vec::new(), Vec::new());
    for i in 0..import_runs {
        let root = work.join(format!("import-{i}"));
        let (layout, root2) = (layout.clone(), root.clone());
        let (imp, unp) = tokio::task::spawn_blocking(move || -> Result<(Duration, Duration)> {
            let t = Instant::now();
            let store = ImageStore::open(&root2)?;
            let img = store.import(&layout, &ImportOptions::named(IMAGE_NAME), None)?;
            let imported = t.elapsed();
            let t = Instant::now();
            store.prepare_rootfs(&img, "c")?;
            Ok((imported, t.elapsed()))
        })
        .await??;
        imports.push(imp);
        unpacks.push(unp);
        std::fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    }
    bench("image_import", imports, false);
    bench("image_first_unpack", unpacks, false);

    let shim_path = std::env::current_exe()?.with_file_name("keelson-shim");
    ensure!(shim_path.is_file(), "no keelson-shim next to this binary: {}", shim_path.display());
    let setup = detect_host().context("detect cgroup layout")?;
    let base = format!("keelson-bench-{}", std::process::id());
    let cgroup_base = setup.v2_root().map(|r| r.join(&base));
    let cfg = RuntimeConfig {
        shim_path,
        state_dir: work.join("state"),
        run_dir: work.join("run"),
        netns_dir: work.join("netns"),
        log_root: work.join("logs"),
        cgroup: setup
            .v2_root()
            .is_some()
            .then(|| CgroupConfig { setup, layout: Layout { base: PathBuf::from(&base) } }),
        shim_log: Some(work.join("shim.log")),
    };
    let rt = ShimRuntime::new(cfg, Arc::new(NoNetwork)).await?;
    let mut cleanup = Cleanup { rt: rt.clone(), sandboxes: Vec::new(), cgroup_base };
    let res = measure_runtime(&rt, &mut cleanup, images, runs, work).await;
    cleanup.run().await;
    if res.is_err() {
        if let Ok(log) = std::fs::read_to_string(work.join("shim.log")) {
            eprintln!("--- shim diagnostics ---\n{log}");
        }
    }
    res
}

async fn measure_runtime(
    rt: &ShimRuntime,
    cleanup: &mut Cleanup,
    images: &Path,
    runs: usize,
    work: &Path,
) -> Result<()> {
    // Pod sandboxes without network: create (timed), remove (timed).
    let (mut creates, mut removes) = (Vec::new(), Vec::new());
    for n in 0..runs {
        let t = Instant::now();
        let info = rt.create_sandbox(pod(n)).await?;
        creates.push(t.elapsed());
        cleanup.sandboxes.push(info.id.clone());
        let t = Instant::now();
        rt.remove_sandbox(&info.id).await?;
        removes.push(t.elapsed());
        cleanup.sandboxes.retain(|s| s != &info.id);
    }
    bench("sandbox_create", creates, true);
    bench("sandbox_remove", removes, true);

    // The full container path of `true` in one sandbox, on an overlay rootfs prepared
    // beforehand (untimed), like a pod worker does after pulling.
    let store_root = work.join("store");
    let layout = images.join("busybox-oci");
    let (store, img) = tokio::task::spawn_blocking(move || -> Result<_> {
        let store = ImageStore::open(&store_root)?;
        let img = store.import(&layout, &ImportOptions::named(IMAGE_NAME), None)?;
        Ok((store, img))
    })
    .await??;
    let sb = rt.create_sandbox(pod(runs)).await?;
    cleanup.sandboxes.push(sb.id.clone());
    let mut paths = Vec::new();
    let args = vec!["true".to_owned()];
    for n in 0..runs {
        let cid_name = format!("c{n}");
        let (s2, i2, c2) = (store.clone(), img.clone(), cid_name.clone());
        let mount = tokio::task::spawn_blocking(move || s2.prepare_rootfs(&i2, &c2)).await??;
        let image = ContainerImage {
            reference: IMAGE_NAME.into(),
            config: img.container_config(),
            rootfs: Rootfs::Overlay {
                lowerdirs: mount.lowerdirs,
                upperdir: mount.upperdir,
                workdir: mount.workdir,
            },
        };
        let mut events = rt.events();
        let t = Instant::now();
        let id = rt.create_container(&sb.id, container_config(&args), image).await?;
        rt.start_container(&id).await?;
        let code = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match events.recv().await {
                    Ok(RuntimeEvent::ContainerExited { id: e, exit, .. }) if e == id => {
                        return Ok(exit.code)
                    }
                    Ok(_) => {}
                    Err(e) => bail!("event stream: {e}"),
                }
            }
        })
        .await
        .context("container did not exit in time")??;
        rt.remove_container(&id).await?;
        paths.push(t.elapsed());
        ensure!(code == 0, "`true` exited with {code}");
        let (s2, c2) = (store.clone(), cid_name);
        tokio::task::spawn_blocking(move || s2.release_rootfs(&c2)).await??;
    }
    bench("full_container_path", paths, true);
    Ok(())
}
