//! Support for Keelson's cross-crate, privileged, VM and end-to-end tests.
//!
//! Tiers (see `docs/ARCHITECTURE.md`): plain `cargo test` runs only the unit tier, as any user
//! and offline. The other tiers need root, network namespaces, qemu or built test images, and
//! run only when `KEELSON_TEST_TIERS` names them (`dev/test` sets it). A test of a tier that is
//! not enabled, or whose requirement this machine lacks, prints why and returns early; with
//! `KEELSON_TEST_STRICT=1` (also set by `dev/test`) a missing requirement fails the test
//! instead, so CI never passes a tier that did not run.

use std::fmt;

pub mod bench;
pub mod bins;
pub mod etcd;
pub mod images;
pub mod vm;

/// A test tier beyond the unit tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Root, inside network namespaces the test creates.
    Privileged,
    /// qemu booting a real kernel with our binaries.
    Vm,
    /// A whole node or cluster driven by real clients.
    EndToEnd,
}

impl Tier {
    /// The name used in `KEELSON_TEST_TIERS`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Privileged => "privileged",
            Tier::Vm => "vm",
            Tier::EndToEnd => "e2e",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `KEELSON_TEST_TIERS` (comma separated, or `all`) enables `tier`.
pub fn tier_enabled(tier: Tier) -> bool {
    std::env::var("KEELSON_TEST_TIERS")
        .map(|v| v.split(',').map(str::trim).any(|t| t == "all" || t == tier.name()))
        .unwrap_or(false)
}

/// Whether a missing requirement must fail rather than skip (`KEELSON_TEST_STRICT=1`).
pub fn strict() -> bool {
    std::env::var("KEELSON_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Decides whether a test of `tier` runs. Returns `false` (after printing the reason) when it
/// must be skipped; panics instead in strict mode when the tier is enabled but `missing` names
/// a requirement this machine lacks.
pub fn should_run(test: &str, tier: Tier, missing: Option<String>) -> bool {
    if !tier_enabled(tier) {
        eprintln!("SKIP {test}: the {tier} tier is not enabled (KEELSON_TEST_TIERS={tier}, set by dev/test)");
        return false;
    }
    match missing {
        None => true,
        Some(why) if strict() => panic!("{test}: required for the {tier} tier: {why}"),
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            false
        }
    }
}

/// `None` when running as root, else the reason a privileged test cannot run.
pub fn need_root() -> Option<String> {
    (!nix::unistd::geteuid().is_root()).then(|| "needs root".to_owned())
}

/// Skips the calling test (returning from it) unless `tier` is enabled and every listed
/// requirement (`Option<String>` reasons, `None` meaning satisfied) holds.
///
/// ```ignore
/// #[test]
/// fn bridge_reaches_gateway() {
///     keelson_tests::require!(Tier::Privileged, keelson_tests::need_root());
///     ...
/// }
/// ```
#[macro_export]
macro_rules! require {
    ($tier:expr $(, $req:expr)* $(,)?) => {{
        let missing: Option<String> = None $(.or_else(|| $req))*;
        let test = std::thread::current().name().unwrap_or("test").to_owned();
        if !$crate::should_run(&test, $tier, missing) {
            return;
        }
    }};
}

/// A container's whole log as text: every entry's content, a newline after each full line
/// (partial entries are joined with what follows, as the kubelet shows them).
pub async fn log_text(
    rt: &dyn keelson_runtime::api::Runtime,
    id: &keelson_runtime::config::ContainerId,
) -> anyhow::Result<String> {
    use futures::StreamExt;
    let mut s = rt.logs(id, keelson_runtime::api::LogOptions::default()).await?;
    let mut out = String::new();
    while let Some(e) = s.next().await {
        let e = e?;
        out.push_str(&String::from_utf8_lossy(&e.content));
        if !e.partial {
            out.push('\n');
        }
    }
    Ok(out)
}
