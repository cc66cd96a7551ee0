//! `klive daemon`: `klive update` on a jittered interval, with exponential back-off while
//! the server is unreachable, until SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use klive_kernel::Kernel;

use super::{DEFAULT_INTERVAL, Fleet, FleetError};

/// Jitter for check-in intervals: uniform in [0.75, 1.25) × `base`, so a fleet restarted at
/// once spreads out. Per-process random keys of the std hasher are randomness enough.
pub fn jitter(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(0.75 + unit * 0.5)
}

/// Sleeps `wait`, waking early when `stop` is set.
pub fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) {
    let until = Instant::now() + wait;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

impl<K: Kernel> Fleet<'_, K> {
    /// `klive daemon`: update, then wait a jittered interval (the server's
    /// `next_checkin_secs`, or `interval`), backing off exponentially while the server is
    /// unreachable, until `stop` is set (SIGTERM). An operation in progress is finished
    /// before stopping. `log` gets one line per cycle.
    pub fn daemon(
        &self,
        stop: &AtomicBool,
        interval: Option<Duration>,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), FleetError> {
        self.daemon_with_backoff(stop, interval, Duration::from_secs(5), log)
    }

    /// [`Fleet::daemon`] with the first back-off step given (it doubles up to the interval).
    pub fn daemon_with_backoff(
        &self,
        stop: &AtomicBool,
        interval: Option<Duration>,
        min_backoff: Duration,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), FleetError> {
        self.registration()?;
        let mut backoff = min_backoff;
        while !stop.load(Ordering::SeqCst) {
            let wait = match self.update() {
                Ok(r) => {
                    backoff = min_backoff;
                    log(&format!("klive daemon: {}: {}", r.result, r.message));
                    let base = interval.unwrap_or_else(|| self.server_interval());
                    jitter(base)
                }
                Err(FleetError::NotRegistered) => return Err(FleetError::NotRegistered),
                Err(e) if e.is_transient() => {
                    let wait = backoff;
                    let cap = interval.unwrap_or_else(|| self.server_interval());
                    backoff = (backoff * 2).min(cap.max(min_backoff));
                    log(&format!(
                        "klive daemon: {e}; retrying in {:.1} s",
                        wait.as_secs_f64()
                    ));
                    wait
                }
                Err(e) => {
                    backoff = min_backoff;
                    log(&format!("klive daemon: update failed: {e}"));
                    jitter(interval.unwrap_or_else(|| self.server_interval()))
                }
            };
            sleep_unless_stopped(wait, stop);
        }
        log("klive daemon: stopping (signal received)");
        Ok(())
    }

    fn server_interval(&self) -> Duration {
        self.files
            .checkin_state()
            .ok()
            .and_then(|s| s.last_answer)
            .map(|a| Duration::from_secs(a.next_checkin_secs.clamp(10, 7 * 86400)))
            .unwrap_or(DEFAULT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_around_the_interval() {
        let base = Duration::from_secs(3600);
        let samples: Vec<Duration> = (0..200).map(|_| jitter(base)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= base.mul_f64(0.75) && *d < base.mul_f64(1.25))
        );
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(distinct.len() > 150, "jitter must differ between calls");
    }
}
