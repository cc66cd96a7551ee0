//! The SLA policy versions (`sla_policies`, append-only) and the SLA exceptions
//! (`sla_exceptions`).

use sqlx::Row;
use sqlx::any::AnyRow;

use klive_format::evidence::ClockStart;

use crate::error::Error;
use crate::store::db::{Db, Tx};

/// One stored policy version, times in unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub version: u32,
    pub effective_at: i64,
    pub created_by: String,
    pub critical_days: u32,
    pub high_days: u32,
    pub medium_days: u32,
    pub low_days: u32,
    pub unrated_days: u32,
    pub kev_shortens: bool,
    pub kev_floor_days: u32,
    pub clock_start: ClockStart,
    pub note: String,
}

/// A policy version to append; its version number is the next free one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPolicy<'a> {
    pub effective_at: i64,
    pub created_by: &'a str,
    pub critical_days: u32,
    pub high_days: u32,
    pub medium_days: u32,
    pub low_days: u32,
    pub unrated_days: u32,
    pub kev_shortens: bool,
    pub kev_floor_days: u32,
    pub clock_start: ClockStart,
    pub note: &'a str,
}

/// One stored exception, times in unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionRow {
    pub id: String,
    pub cve: String,
    pub host_id: Option<String>,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

fn days(row: &AnyRow, col: &str) -> Result<u32, Error> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("stored {col} {v} is out of range")))
}

fn policy_row(row: &AnyRow) -> Result<PolicyRow, Error> {
    let effective_at: i64 = row.try_get("effective_at")?;
    let clock: String = row.try_get("clock_start")?;
    Ok(PolicyRow {
        version: days(row, "version")?,
        effective_at,
        created_by: row.try_get("created_by")?,
        critical_days: days(row, "critical_days")?,
        high_days: days(row, "high_days")?,
        medium_days: days(row, "medium_days")?,
        low_days: days(row, "low_days")?,
        unrated_days: days(row, "unrated_days")?,
        kev_shortens: row.try_get::<i64, _>("kev_shortens")? != 0,
        kev_floor_days: days(row, "kev_floor_days")?,
        clock_start: ClockStart::parse(&clock)
            .ok_or_else(|| Error::Corrupt(format!("unknown stored clock start {clock:?}")))?,
        note: row.try_get("note")?,
    })
}

/// Every policy version, oldest first.
pub async fn policies(db: &Db) -> Result<Vec<PolicyRow>, Error> {
    let rows = sqlx::query("SELECT * FROM sla_policies ORDER BY version")
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(policy_row).collect()
}

/// Appends `p` as the next policy version inside the caller's audited transaction; returns
/// its version number.
pub async fn append_policy(tx: &mut Tx, p: &NewPolicy<'_>) -> Result<i64, Error> {
    let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM sla_policies")
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO sla_policies (version, effective_at, created_by, critical_days, high_days, medium_days, low_days, unrated_days, kev_shortens, kev_floor_days, clock_start, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(version)
    .bind(p.effective_at)
    .bind(p.created_by)
    .bind(i64::from(p.critical_days))
    .bind(i64::from(p.high_days))
    .bind(i64::from(p.medium_days))
    .bind(i64::from(p.low_days))
    .bind(i64::from(p.unrated_days))
    .bind(i64::from(p.kev_shortens))
    .bind(i64::from(p.kev_floor_days))
    .bind(p.clock_start.as_str())
    .bind(p.note)
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
    let rows = sqlx::query(
        "SELECT id, cve, host_id, reason, created_by, created_at, expires_at FROM sla_exceptions WHERE created_at <= $1 ORDER BY created_at, id",
    )
    .bind(until)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ExceptionRow {
                id: r.try_get("id")?,
                cve: r.try_get("cve")?,
                host_id: r.try_get("host_id")?,
                reason: r.try_get("reason")?,
                created_by: r.try_get("created_by")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .collect()
}
