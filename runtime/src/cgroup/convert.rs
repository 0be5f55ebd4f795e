//! Kubernetes resource units to cgroup v2 values, as the kubelet and runc convert them.
//!
//! CPU requests become shares (`millicores * 1024 / 1000`, clamped to 2..=262144, the kubelet's
//! `MilliCPUToShares`), shares become `cpu.weight` with the conversion runc (1.3), crun and
//! libcontainer's `libcgroups` use: `ceil(10^((l² + 125 l) / 612 - 7/34))` with `l = log2(shares)`,
//! which maps 2 → 1, 1024 (one CPU) → 100 (the cgroup default) and 262144 → 10000. Pod
//! cgroups (ours) and container cgroups (libcgroups') must agree, or a pod would weigh less
//! than its own containers. CPU limits
//! become `cpu.max` = `quota period` with the kubelet's period of 100 ms and a quota of
//! `millicores * 100` µs, at least 1 ms.

/// Smallest shares value (the kubelet's `MinShares`): what a container without a request gets.
pub const MIN_SHARES: u64 = 2;
/// Largest shares value (the kubelet's `MaxShares`).
pub const MAX_SHARES: u64 = 262_144;
/// Shares of one whole CPU.
pub const SHARES_PER_CPU: u64 = 1024;
/// `cpu.max` period in microseconds (the kubelet's default CFS period).
pub const CPU_PERIOD_US: u64 = 100_000;
/// Smallest `cpu.max` quota in microseconds (the kubelet's `MinQuotaPeriod`).
pub const MIN_QUOTA_US: i64 = 1_000;

/// CPU request in millicores to cgroup v1 shares.
pub fn millicores_to_shares(millis: u64) -> u64 {
    if millis == 0 {
        return MIN_SHARES;
    }
    let shares = millis.saturating_mul(SHARES_PER_CPU) / 1000;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// Shares to `cpu.weight` (1..=10000), the quadratic-in-log conversion of runc, crun and
/// libcgroups (identical arithmetic, so our pod cgroups and libcontainer's container cgroups
/// agree to the unit).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    if shares <= MIN_SHARES {
        return 1;
    }
    if shares >= MAX_SHARES {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    // The float is in 1.0..=10000.0 here; the cast saturates in any case.
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

/// CPU limit in millicores to a `cpu.max` quota in microseconds per [`CPU_PERIOD_US`].
pub fn millicores_to_quota(millis: u64) -> i64 {
    let quota = millis.saturating_mul(CPU_PERIOD_US) / 1000;
    i64::try_from(quota).unwrap_or(i64::MAX).max(MIN_QUOTA_US)
}

/// The `cpu.max` line for an optional limit: `"<quota> 100000"` or `"max 100000"`.
pub fn cpu_max(limit_millis: Option<u64>) -> String {
    match limit_millis {
        Some(m) => format!("{} {CPU_PERIOD_US}", millicores_to_quota(m)),
        None => format!("max {CPU_PERIOD_US}"),
    }
}

/// The `cpu.weight` value for an optional request (a missing request is the minimum).
pub fn cpu_weight(request_millis: Option<u64>) -> u64 {
    shares_to_weight(millicores_to_shares(request_millis.unwrap_or(0)))
}

/// A `memory.max` or `pids.max` value: the number, or `max`.
pub fn max_or(limit: Option<u64>) -> String {
    match limit {
        Some(v) => v.to_string(),
        None => "max".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_kubelet_at_the_edges() {
        assert_eq!(millicores_to_shares(0), 2);
        assert_eq!(millicores_to_shares(1), 2);
        assert_eq!(millicores_to_shares(2), 2);
        assert_eq!(millicores_to_shares(3), 3);
        assert_eq!(millicores_to_shares(100), 102);
        assert_eq!(millicores_to_shares(1000), 1024);
        assert_eq!(millicores_to_shares(256_000), 262_144);
        assert_eq!(millicores_to_shares(1_000_000), 262_144);
        assert_eq!(millicores_to_shares(u64::MAX), 262_144);
    }

    #[test]
    fn weight_follows_runc_and_libcgroups() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(1024), 100, "one CPU weighs the cgroup default");
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
        assert_eq!(cpu_weight(None), 1);
        assert_eq!(cpu_weight(Some(500)), 59);
    }

    #[test]
    fn quota_is_millis_times_one_hundred_with_a_one_ms_floor() {
        assert_eq!(millicores_to_quota(0), 1000);
        assert_eq!(millicores_to_quota(1), 1000);
        assert_eq!(millicores_to_quota(10), 1000);
        assert_eq!(millicores_to_quota(11), 1100);
        assert_eq!(millicores_to_quota(250), 25_000);
        assert_eq!(millicores_to_quota(2000), 200_000);
        assert_eq!(millicores_to_quota(u64::MAX), (u64::MAX / 1000) as i64, "saturates, no panic");
        assert_eq!(cpu_max(Some(500)), "50000 100000");
        assert_eq!(cpu_max(None), "max 100000");
    }

    #[test]
    fn max_values_are_numbers_or_max() {
        assert_eq!(max_or(Some(64 << 20)), "67108864");
        assert_eq!(max_or(None), "max");
    }
}
