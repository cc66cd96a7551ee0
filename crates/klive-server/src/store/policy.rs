//! The SLA policy versions (`sla_policies`, append-only) and the SLA exceptions
//! (`sla_exceptions`).

use klive_format::evidence::{ClockStart, SlaPolicy, SlaRules};

use crate::clock::rfc3339;
use crate::error::Error;
use crate::store::db::{Db, Tx};

/// One stored policy version, with its effective time also in unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub effective_at: i64,
    pub policy: SlaPolicy,
}

/// One stored exception, times in unix ms.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ExceptionRow {
    pub id: String,
    pub cve: String,
    pub host_id: Option<String>,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A policy version as stored: numbers as the database holds them, the clock start as text.
#[derive(sqlx::FromRow)]
struct StoredPolicy {
    effective_at: i64,
    clock_start: String,
    version: i64,
    created_by: String,
    critical_days: i64,
    high_days: i64,
    medium_days: i64,
    low_days: i64,
    unrated_days: i64,
    kev_shortens: i64,
    kev_floor_days: i64,
    note: String,
}

fn days(v: i64, col: &str) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("stored {col} {v} is out of range")))
}

impl TryFrom<StoredPolicy> for PolicyVersion {
    type Error = Error;

    fn try_from(p: StoredPolicy) -> Result<PolicyVersion, Error> {
        let clock = p.clock_start;
        Ok(PolicyVersion {
            effective_at: p.effective_at,
            policy: SlaPolicy {
                version: days(p.version, "version")?,
                effective_at: rfc3339(p.effective_at),
                created_by: p.created_by,
                rules: SlaRules {
                    critical_days: days(p.critical_days, "critical_days")?,
                    high_days: days(p.high_days, "high_days")?,
                    medium_days: days(p.medium_days, "medium_days")?,
                    low_days: days(p.low_days, "low_days")?,
                    unrated_days: days(p.unrated_days, "unrated_days")?,
                    kev_shortens: p.kev_shortens != 0,
                    kev_floor_days: days(p.kev_floor_days, "kev_floor_days")?,
                    clock_start: ClockStart::parse(&clock).ok_or_else(|| {
                        Error::Corrupt(format!("unknown stored clock start {clock:?}"))
                    })?,
                    note: p.note,
                },
            },
        })
    }
}

/// Every policy version, oldest first.
pub async fn policies(db: &Db) -> Result<Vec<PolicyVersion>, Error> {
    sqlx::query_as::<_, StoredPolicy>("SELECT * FROM sla_policies ORDER BY version")
        .fetch_all(&db.pool)
        .await?
        .into_iter()
        .map(PolicyVersion::try_from)
        .collect()
}

/// Appends `p` as the next policy version, effective at `effective_at` (unix ms) and made by
/// `created_by`, inside the caller's audited transaction; returns its version number.
pub async fn append_policy(
    tx: &mut Tx,
    effective_at: i64,
    created_by: &str,
    p: &SlaRules,
) -> Result<i64, Error> {
    let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM sla_policies")
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO sla_policies (version, effective_at, created_by, critical_days, high_days, medium_days, low_days, unrated_days, kev_shortens, kev_floor_days, clock_start, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(version)
    .bind(effective_at)
    .bind(created_by)
    .bind(i64::from(p.critical_days))
    .bind(i64::from(p.high_days))
    .bind(i64::from(p.medium_days))
    .bind(i64::from(p.low_days))
    .bind(i64::from(p.unrated_days))
    .bind(i64::from(p.kev_shortens))
    .bind(i64::from(p.kev_floor_days))
    .bind(p.clock_start.as_str())
    .bind(&p.note)
    .execute(&mut **tx)
    .await?;
    Ok(version)
}

/// True when host `host_id` is registered (revoked or not), read inside `tx`.
pub async fn host_exists(tx: &mut Tx, host_id: &str) -> Result<bool, Error> {
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM hosts WHERE id = $1")
        .bind(host_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(exists.is_some())
}

/// Stores an exception inside the caller's audited transaction.
pub async fn insert_exception(tx: &mut Tx, e: &ExceptionRow) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO sla_exceptions (id, cve, host_id, reason, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&e.id)
    .bind(&e.cve)
    .bind(e.host_id.as_deref())
    .bind(&e.reason)
    .bind(&e.created_by)
    .bind(e.created_at)
    .bind(e.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Exceptions created at or before `until`, ordered by creation time, then id.
pub async fn exceptions(db: &Db, until: i64) -> Result<Vec<ExceptionRow>, Error> {
    Ok(sqlx::query_as::<_, ExceptionRow>(
        "SELECT id, cve, host_id, reason, created_by, created_at, expires_at FROM sla_exceptions WHERE created_at <= $1 ORDER BY created_at, id",
    )
    .bind(until)
    .fetch_all(&db.pool)
    .await?)
}
