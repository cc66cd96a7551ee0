//! Time, in unix milliseconds, with a test hook to move it forward (soak times, expiry, delays).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub fn system_now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The service's clock: the system clock plus an offset that only tests change, or (for
/// simulations) a frozen time that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    frozen: bool,
}

impl Clock {
    /// A clock that stands still at `ms` until [`Clock::advance_secs`] moves it, so that a
    /// simulation knows the exact time of everything it does.
    pub fn frozen(ms: i64) -> Clock {
        Clock {
            offset_ms: Arc::new(AtomicI64::new(ms)),
            frozen: true,
        }
    }

    pub fn now_ms(&self) -> i64 {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        if self.frozen {
            offset
        } else {
            system_now_ms() + offset
        }
    }

    /// Moves this clock (and its clones) forward.
    pub fn advance_secs(&self, secs: i64) {
        self.offset_ms.fetch_add(secs * 1000, Ordering::Relaxed);
    }
}

/// RFC 3339 text of a unix-milliseconds time, for the API and the CLI.
pub fn rfc3339(ms: i64) -> String {
    let mut s = String::new();
    write_rfc3339(&mut s, ms);
    s
}

/// [`rfc3339`] into `out` (cleared first), reusing its allocation: the evidence pack formats
/// millions of times.
pub fn write_rfc3339(out: &mut String, ms: i64) {
    use std::fmt::Write as _;
    out.clear();
    let _ = match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => write!(out, "{t}"),
        Err(_) => write!(out, "@{ms}ms"),
    };
}
