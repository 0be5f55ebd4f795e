//! What the benchmark drivers (`src/bin/bench-*.rs`) share: isolation in throw-away
//! namespaces, percentiles and the `BENCH <figure> <value> <unit>` lines.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Moves the calling process into a network namespace and a private mount namespace of its
/// own, with loopback up: bridges, veths, rules, sysctls and mounts made from here on live
/// and die with the process, and nothing touches the machine's root namespaces. Must run
/// before the process starts any thread (`unshare(CLONE_NEWNS)` refuses a threaded process).
pub fn isolate() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).context("unshare net+mnt")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("make / private")?;
    // The host namespace's loopback, as on a real node.
    let st = Command::new("ip").args(["link", "set", "lo", "up"]).status()?;
    if !st.success() {
        bail!("ip link set lo up: {st}");
    }
    Ok(())
}

/// The `q` quantile (0..=1, nearest rank) of `times`, in milliseconds; 0 when empty.
pub fn quantile_ms(times: &[Duration], q: f64) -> f64 {
    let mut v: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Prints the median and p99 of `ours` (`<figure>_keelson_*`), and with `theirs`, the peer's
/// (`<figure>_<peer>_*`) and the ratio of the medians (`<figure>_ratio_vs_<peer>`).
pub fn report(figure: &str, ours: &[Duration], theirs: Option<(&str, &[Duration])>) {
    println!("BENCH {figure}_keelson_median {:.2} ms", quantile_ms(ours, 0.5));
    println!("BENCH {figure}_keelson_p99 {:.2} ms", quantile_ms(ours, 0.99));
    if let Some((peer, theirs)) = theirs {
        println!("BENCH {figure}_{peer}_median {:.2} ms", quantile_ms(theirs, 0.5));
        println!("BENCH {figure}_{peer}_p99 {:.2} ms", quantile_ms(theirs, 0.99));
        println!(
            "BENCH {figure}_ratio_vs_{peer} {:.2} x",
            quantile_ms(ours, 0.5) / quantile_ms(theirs, 0.5)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let t: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&t, 0.5), 50.0);
        assert_eq!(quantile_ms(&t, 0.99), 99.0);
        assert_eq!(quantile_ms(&t, 1.0), 100.0);
        assert_eq!(quantile_ms(&[Duration::from_millis(7)], 0.99), 7.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
