//! Restart decisions: whether a container that ended is restarted (`restartPolicy`), and when
//! (the kubelet's crash-loop back-off: 10 s, doubling to at most 5 min, measured from the
//! exit; a container that ran for 10 min before ending starts over at 10 s).
//!
//! Times are tokio [`Instant`]s so that tests run with paused time.

use std::time::Duration;

use tokio::time::Instant;

use super::convert::RestartPolicy;

/// The first back-off delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The largest back-off delay.
pub const MAX: Duration = Duration::from_secs(300);
/// A run at least this long resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// Whether a container that exited with `exit_code` is started again.
pub fn should_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// Whether an init container that exited with `exit_code` is run again (init containers
/// follow `OnFailure` under `Always`).
pub fn should_restart_init(policy: RestartPolicy, exit_code: i32) -> bool {
    exit_code != 0 && policy != RestartPolicy::Never
}

/// The back-off state of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    current: Option<Duration>,
}

impl Backoff {
    /// No back-off yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delay after a run of `ran` that just ended: 10 s, 20 s, 40 s … 5 min, back to
    /// 10 s after a run of 10 min or more.
    pub fn next_delay(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.current = None;
        }
        let d = match self.current {
            None => INITIAL,
            Some(c) => (c * 2).min(MAX),
        };
        self.current = Some(d);
        d
    }

    /// When the container that ran for `ran` and exited at `exited_at` may start again.
    pub fn restart_at(&mut self, exited_at: Instant, ran: Duration) -> Instant {
        exited_at + self.next_delay(ran)
    }

    /// The delay last handed out.
    pub fn current(&self) -> Option<Duration> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_decides_by_exit_code() {
        use RestartPolicy::*;
        assert!(should_restart(Always, 0) && should_restart(Always, 1));
        assert!(!should_restart(OnFailure, 0) && should_restart(OnFailure, 2));
        assert!(!should_restart(Never, 0) && !should_restart(Never, 1));
        assert!(should_restart_init(Always, 1) && !should_restart_init(Always, 0));
        assert!(should_restart_init(OnFailure, 1) && !should_restart_init(Never, 1));
    }

    #[test]
    fn backoff_starts_at_ten_seconds_and_doubles_to_five_minutes() {
        let mut b = Backoff::new();
        let secs: Vec<u64> =
            (0..8).map(|_| b.next_delay(Duration::from_secs(1)).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_ten_minute_run_resets_the_backoff() {
        let mut b = Backoff::new();
        for _ in 0..5 {
            b.next_delay(Duration::from_secs(5));
        }
        assert_eq!(b.next_delay(Duration::from_secs(599)), MAX);
        assert_eq!(b.next_delay(Duration::from_secs(600)), INITIAL);
        assert_eq!(b.next_delay(Duration::ZERO), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_waits_out_its_delay_in_tokio_time() {
        let mut b = Backoff::new();
        let start = Instant::now();
        let at = b.restart_at(Instant::now(), Duration::ZERO);
        tokio::time::sleep_until(at).await;
        assert_eq!(start.elapsed(), INITIAL);
        let at = b.restart_at(Instant::now(), Duration::ZERO);
        tokio::time::sleep_until(at).await;
        assert_eq!(start.elapsed(), INITIAL * 3);
    }
}
