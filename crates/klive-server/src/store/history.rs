//! The host history: one append-only row per state change of a host (registration, reboot,
//! kernel change, applied level or state change, reported failure, taint change), written in
//! the same transaction as the audit records of that check-in, plus a per-day count of hosts
//! that checked in. Every "as of date D" question about hosts is answered from these rows.

use klive_format::status::KernelInfo;

use crate::error::Error;
use crate::store::db::{Db, Tx};

pub const DAY_MS: i64 = 86_400_000;

/// What a host reported at one state change.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HostState {
    pub host_id: String,
    pub sequence: i64,
    pub at: i64,
    /// Comma-separated: register, reboot, kernel, applied, update_failed, taint (or backfill).
    pub events: String,
    pub kernel_release: Option<String>,
    pub package_version: Option<String>,
    pub build_id: Option<String>,
    pub applied_level: Option<i64>,
    pub applied_state: Option<String>,
    pub boot_id: Option<String>,
    pub uptime_secs: Option<i64>,
    pub taint: Option<i64>,
    pub error: Option<String>,
}

impl HostState {
    /// A state from what the host reported.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per reported field, all from the check-in"
    )]
    pub fn reported(
        host_id: &str,
        sequence: i64,
        at: i64,
        events: &[&str],
        kernel: &KernelInfo,
        applied: Option<(i64, &str)>,
        boot_id: Option<&str>,
        uptime_secs: Option<i64>,
        taint: Option<i64>,
        error: Option<&str>,
    ) -> HostState {
        HostState {
            host_id: host_id.to_owned(),
            sequence,
            at,
            events: events.join(","),
            kernel_release: Some(kernel.release.clone()),
            package_version: kernel.package_version.clone(),
            build_id: kernel.build_id.as_ref().map(|b| b.to_string()),
            applied_level: applied.map(|a| a.0),
            applied_state: applied.map(|a| a.1.to_owned()),
            boot_id: boot_id.map(str::to_owned),
            uptime_secs,
            taint,
            error: error.map(str::to_owned),
        }
    }

    /// When the host booted, from the uptime it reported at this row.
    pub fn boot_time(&self) -> Option<i64> {
        self.uptime_secs.map(|u| self.at - u * 1000)
    }

    pub fn has_event(&self, event: &str) -> bool {
        self.events.split(',').any(|e| e == event)
    }

    /// The live patch level in effect: only an `applied` patch fixes anything.
    pub fn effective_level(&self) -> Option<i64> {
        match self.applied_state.as_deref() {
            Some("applied") => self.applied_level,
            _ => None,
        }
    }
}

/// Appends a state row inside an audited transaction.
pub async fn record(tx: &mut Tx, s: &HostState) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO host_history (host_id, sequence, at, events, kernel_release, package_version, build_id, applied_level, applied_state, boot_id, uptime_secs, taint, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&s.host_id)
    .bind(s.sequence)
    .bind(s.at)
    .bind(&s.events)
    .bind(s.kernel_release.clone())
    .bind(s.package_version.clone())
    .bind(s.build_id.clone())
    .bind(s.applied_level)
    .bind(s.applied_state.clone())
    .bind(s.boot_id.clone())
    .bind(s.uptime_secs)
    .bind(s.taint)
    .bind(s.error.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Adds `hosts` to day `day`'s check-in coverage (hosts whose first check-in of that UTC day
/// this is), inside the check-ins' transaction.
pub async fn count_daily(tx: &mut Tx, day: i64, hosts: i64) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO checkin_daily (day, hosts) VALUES ($1, $2) ON CONFLICT (day) DO UPDATE SET hosts = checkin_daily.hosts + $2",
    )
    .bind(day)
    .bind(hosts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const COLUMNS: &str = "host_id, sequence, at, events, kernel_release, package_version, build_id, applied_level, applied_state, boot_id, uptime_secs, taint, error";

/// One host's history up to `until` (inclusive), oldest first.
pub async fn host_timeline(db: &Db, host_id: &str, until: i64) -> Result<Vec<HostState>, Error> {
    Ok(sqlx::query_as::<_, HostState>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM host_history WHERE host_id = $1 AND at <= $2 ORDER BY sequence"
    )))
    .bind(host_id)
    .bind(until)
    .fetch_all(&db.pool)
    .await?)
}

/// Every host's history up to `until`, grouped by host (ordered by host id, then sequence).
pub async fn fleet_timelines(db: &Db, until: i64) -> Result<Vec<HostState>, Error> {
    Ok(sqlx::query_as::<_, HostState>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM host_history WHERE at <= $1 ORDER BY host_id, sequence"
    )))
    .bind(until)
    .fetch_all(&db.pool)
    .await?)
}

/// Hosts that checked in per UTC day in `[from, to]`: (day start ms, hosts).
pub async fn daily_coverage(db: &Db, from: i64, to: i64) -> Result<Vec<(i64, i64)>, Error> {
    #[derive(sqlx::FromRow)]
    struct Daily {
        day: i64,
        hosts: i64,
    }
    let rows = sqlx::query_as::<_, Daily>(
        "SELECT day, hosts FROM checkin_daily WHERE day >= $1 AND day <= $2 ORDER BY day",
    )
    .bind(from.div_euclid(DAY_MS))
    .bind(to.div_euclid(DAY_MS))
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.day * DAY_MS, r.hosts))
        .collect())
}
