//! What check-ins read and write: the releases a host may be offered, and the host row each
//! check-in updates (inside the group-committed transaction).

use crate::error::Error;
use crate::store::db::{Db, Tx};

/// One release of a build that is in a channel and not withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Candidate {
    pub level: i64,
    /// When the release entered the channel (unix ms).
    pub since: i64,
    pub module_name: String,
    pub sha256: String,
    pub size: i64,
}

/// A host's last accepted sequence and whether it was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceState {
    pub last_sequence: i64,
    pub revoked: bool,
}

/// Everything a check-in that changed more than its sequence, time and uptime writes.
#[derive(Debug, Clone)]
pub struct HostUpdate<'a> {
    pub host_id: &'a str,
    pub sequence: i64,
    pub now: i64,
    pub kernel_release: &'a str,
    pub build_id: Option<String>,
    pub applied_level: Option<i64>,
    pub applied_state: Option<&'static str>,
    pub boot_id: &'a str,
    pub uptime_secs: i64,
    pub agent_version: &'a str,
    pub last_error: Option<String>,
    pub taint: Option<i64>,
}

/// The releases of `build_id` in `channel` that are not withdrawn, newest first.
pub async fn candidates(db: &Db, build_id: &str, channel: &str) -> Result<Vec<Candidate>, Error> {
    Ok(sqlx::query_as::<_, Candidate>(
        "SELECT r.level AS level, rc.since AS since, r.module_name AS module_name, r.module_sha256 AS sha256, r.module_size AS size FROM releases r JOIN release_channels rc ON rc.release_id = r.id WHERE r.build_id = $1 AND rc.channel = $2 AND r.withdrawn_at IS NULL ORDER BY r.level DESC",
    )
    .bind(build_id)
    .bind(channel)
    .fetch_all(&db.pool)
    .await?)
}

/// A transaction that does not take the audit chain's head, for check-ins that append no
/// audit record.
pub async fn begin(db: &Db) -> Result<Tx, Error> {
    Ok(db.pool.begin().await?)
}

/// The error a check-in gets when the writer task ended before answering it.
pub fn writer_gone() -> Error {
    Error::Database(sqlx::Error::WorkerCrashed)
}

/// Writes only sequence, time and uptime, if the host row still has `seen_sequence` and is not
/// revoked; returns the rows changed (0 or 1).
pub async fn touch(
    tx: &mut Tx,
    host_id: &str,
    sequence: i64,
    seen_sequence: i64,
    now: i64,
    uptime_secs: i64,
) -> Result<u64, Error> {
    Ok(sqlx::query(
        "UPDATE hosts SET last_sequence = $1, last_checkin_at = $2, uptime_secs = $3 WHERE id = $4 AND last_sequence = $5 AND revoked_at IS NULL",
    )
    .bind(sequence)
    .bind(now)
    .bind(uptime_secs)
    .bind(host_id)
    .bind(seen_sequence)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Writes everything the host reported, if its sequence is higher than the stored one and the
/// host is not revoked; returns the rows changed (0 or 1).
pub async fn update(tx: &mut Tx, u: &HostUpdate<'_>) -> Result<u64, Error> {
    Ok(sqlx::query(
        "UPDATE hosts SET last_sequence = $1, last_checkin_at = $2, kernel_release = $3, build_id = $4, applied_level = $5, applied_state = $6, boot_id = $7, uptime_secs = $8, agent_version = $9, last_error = $10, taint = $12 WHERE id = $11 AND last_sequence < $1 AND revoked_at IS NULL",
    )
    .bind(u.sequence)
    .bind(u.now)
    .bind(u.kernel_release)
    .bind(u.build_id.clone())
    .bind(u.applied_level)
    .bind(u.applied_state)
    .bind(u.boot_id)
    .bind(u.uptime_secs)
    .bind(u.agent_version)
    .bind(u.last_error.clone())
    .bind(u.host_id)
    .bind(u.taint)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// A host's stored sequence and revocation, if the host exists.
pub async fn sequence_state(tx: &mut Tx, host_id: &str) -> Result<Option<SequenceState>, Error> {
    #[derive(sqlx::FromRow)]
    struct Stored {
        revoked_at: Option<i64>,
        last_sequence: i64,
    }
    let row =
        sqlx::query_as::<_, Stored>("SELECT last_sequence, revoked_at FROM hosts WHERE id = $1")
            .bind(host_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.map(|r| SequenceState {
        last_sequence: r.last_sequence,
        revoked: r.revoked_at.is_some(),
    }))
}
