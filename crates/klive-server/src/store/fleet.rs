//! Fleet-wide counts read by the dashboard and `/metrics`.

use crate::error::Error;
use crate::store::db::Db;

/// Hosts by state at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCounts {
    /// Not revoked, checked in at or after the staleness bound.
    pub online: i64,
    /// Not revoked.
    pub active: i64,
    pub revoked: i64,
    /// Not revoked, last check-in reported an error.
    pub failed: i64,
    /// Not revoked, checked in at or after `recent_since`.
    pub checked_in_since: i64,
    /// Hosts counted in the day's check-in coverage.
    pub checked_in_today: i64,
}

/// [`HostCounts`] with `stale_before` as the online bound, `recent_since` for recent activity
/// and `day` (days since the epoch, UTC) for the daily coverage.
pub async fn host_counts(
    db: &Db,
    stale_before: i64,
    recent_since: i64,
    day: i64,
) -> Result<HostCounts, Error> {
    let pool = &db.pool;
    let online: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM hosts WHERE revoked_at IS NULL AND last_checkin_at >= $1",
    )
    .bind(stale_before)
    .fetch_one(pool)
    .await?;
    let active: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hosts WHERE revoked_at IS NULL")
        .fetch_one(pool)
        .await?;
    let revoked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM hosts WHERE revoked_at IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let failed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM hosts WHERE revoked_at IS NULL AND last_error IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    let checked_in_since: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM hosts WHERE revoked_at IS NULL AND last_checkin_at >= $1",
    )
    .bind(recent_since)
    .fetch_one(pool)
    .await?;
    let today: Option<i64> = sqlx::query_scalar("SELECT hosts FROM checkin_daily WHERE day = $1")
        .bind(day)
        .fetch_optional(pool)
        .await?;
    Ok(HostCounts {
        online,
        active,
        revoked,
        failed,
        checked_in_since,
        checked_in_today: today.unwrap_or(0),
    })
}
