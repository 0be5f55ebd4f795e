//! Privileged tests of the `keelson` binary: `keelson run` end to end, as `dev/up` uses it.
//!
//! Run: `KEELSON_TEST_TIERS=privileged cargo test -p keelson-tests --test cli` as root, with the
//! test images built (`cargo xtask test-images`; `KEELSON_TEST_IMAGES` says where). The
//! `keelson` and `keelson-shim` binaries are built on first use with the same cargo and target
//! dir. Each test has its own data, state and log directories (a tempdir); `keelson run`
//! removes its sandbox itself, and the test checks that nothing of it is left.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use keelson_tests::images::{need_test_images, test_images_dir};
use keelson_tests::{need_root, require, Tier};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn keelson_run(dir: &Path, image: &Path, name: &str, cmd: &[&str]) -> Result<Run> {
    let out = Command::new(keelson_tests::bins::keelson()?)
        .arg("run")
        .arg("--image")
        .arg(image)
        .args(["--name", name])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--log-root")
        .arg(dir.join("logs"))
        .arg("--")
        .args(cmd)
        .output()
        .context("run keelson")?;
    Ok(Run {
        code: out.status.code().context("keelson killed by a signal")?,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The sandboxes left in a state dir.
fn sandboxes_left(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("sandboxes"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn keelson_run_streams_output_and_passes_the_exit_code_through() {
    require!(Tier::Privileged, need_root(), need_test_images());
    let dir = tempfile::tempdir().expect("tempdir");
    let image = test_images_dir().join("busybox-oci");
    let r = keelson_run(
        dir.path(),
        &image,
        "hello",
        &["sh", "-c", "echo hello from keelson; echo oops >&2; hostname; exit 3"],
    )
    .expect("keelson run");
    assert_eq!(r.code, 3, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "hello from keelson\nhello\n", "stderr: {}", r.stderr);
    assert!(r.stderr.contains("oops\n"), "{}", r.stderr);
    assert!(r.stderr.contains("container hello exited with code 3"), "{}", r.stderr);
    assert_eq!(sandboxes_left(&dir.path().join("state")), Vec::<String>::new());
    // The CRI log stays where the kubelet would keep it.
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("logs"))
        .expect("log root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(logs.iter().any(|l| l.starts_with("default_hello_")), "{logs:?}");
}

#[test]
fn keelson_run_imports_a_docker_archive_and_reports_a_failed_start() {
    require!(Tier::Privileged, need_root(), need_test_images());
    let dir = tempfile::tempdir().expect("tempdir");
    let image = test_images_dir().join("busybox-docker.tar");
    let r = keelson_run(dir.path(), &image, "ok", &["true"]).expect("keelson run true");
    assert_eq!(r.code, 0, "true: {}", r.stderr);
    let r = keelson_run(dir.path(), &image, "missing", &["/no/such/binary"]).expect("keelson run");
    assert_ne!(r.code, 0, "a missing binary must fail: {}", r.stderr);
    assert_eq!(sandboxes_left(&dir.path().join("state")), Vec::<String>::new());
}

#[test]
fn keelson_run_removes_its_sandbox_when_interrupted() {
    use std::io::{BufRead, BufReader};
    require!(Tier::Privileged, need_root(), need_test_images());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(keelson_tests::bins::keelson().expect("the keelson binary"))
        .arg("run")
        .arg("--image")
        .arg(test_images_dir().join("busybox-oci"))
        .args(["--name", "sleeper"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--log-root")
        .arg(dir.path().join("logs"))
        .args(["--", "sh", "-c", "echo started; exec sleep 1000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keelson");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    out.read_line(&mut line).expect("read keelson's output");
    assert_eq!(line, "started\n");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("send SIGINT");
    let st = child.wait().expect("wait for keelson");
    assert_eq!(st.code(), Some(130));
    assert_eq!(sandboxes_left(&dir.path().join("state")), Vec::<String>::new());
}
