//! The workspace binaries that tests run as processes: `keelson` and `keelson-shim`.
//!
//! `dev/test` builds every binary before the privileged tier and exports `KEELSON_SHIM`; a
//! test run by hand builds them here, once per test process, with the same cargo and target
//! directory as the test binary (a no-op when they are fresh). `KEELSON_BIN` and
//! `KEELSON_SHIM` override the paths.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `keelson` multi-call binary.
pub fn keelson() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("KEELSON_BIN") {
        return Ok(PathBuf::from(p));
    }
    Ok(built()?.join("keelson"))
}

/// The `keelson-shim` binary.
pub fn shim() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("KEELSON_SHIM") {
        return Ok(PathBuf::from(p));
    }
    Ok(built()?.join("keelson-shim"))
}

/// Builds both binaries once and returns `target/<profile>`, next to this test binary's
/// `deps/`.
fn built() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe.parent().and_then(Path::parent).ok_or("odd test binary path")?;
        let target = profile_dir.parent().ok_or("odd test binary path")?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "keelson-agent", "-p", "keelson-shim"])
            .args(["--bin", "keelson", "--bin", "keelson-shim"])
            .env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().map_err(|e| format!("run cargo: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build keelson, keelson-shim: {st}"));
        }
        Ok(profile_dir.to_owned())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}
