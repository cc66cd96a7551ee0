//! Failed sign-ins and unknown API tokens go to the audit log, at most one record per kind of
//! presented token per minute so that guessing cannot flood the log: each record carries how
//! many failures of that kind happened since the previous record (the last minute's are
//! counted into the next record, when there is one). Refused privileged actions (a missing
//! role, a maker-checker refusal) are limited the same way, per user and action, and so are
//! hosts' taint and error changes, per host and kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Shortest time between two records of one kind.
pub const WINDOW_MS: i64 = 60_000;

#[derive(Debug, Default)]
struct Window {
    last_record: Option<i64>,
    pending: u64,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct FailedAuth {
    kinds: Arc<Mutex<HashMap<String, Window>>>,
}

impl FailedAuth {
    /// Counts one failure of `kind` at `now`; `Some(failures)` when a record is due.
    pub fn note(&self, kind: &str, now: i64) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let w = kinds.entry(kind.to_owned()).or_default();
        w.pending += 1;
        if w.last_record.is_some_and(|t| now - t < WINDOW_MS) {
            return None;
        }
        w.last_record = Some(now);
        Some(std::mem::take(&mut w.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_kind_per_minute_carrying_the_count() {
        let f = FailedAuth::default();
        assert_eq!(f.note("api token", 0), Some(1));
        assert_eq!(f.note("api token", 1_000), None);
        assert_eq!(
            f.note("malformed token", 1_000),
            Some(1),
            "kinds are separate"
        );
        assert_eq!(f.note("api token", 59_999), None);
        assert_eq!(f.note("api token", 60_000), Some(3));
        assert_eq!(f.note("api token", 200_000), Some(1));
    }
}
