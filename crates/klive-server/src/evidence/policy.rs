//! The SLA policy (versioned; a new version applies to findings detected from its effective
//! time on, earlier findings keep the version they were detected under) and exceptions.

use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyRow;

use klive_format::api::Role;
use klive_format::evidence::{ClockStart, ExceptionRecord, SlaPolicy};

use crate::clock::rfc3339;
use crate::domain::{AuthUser, Service};
use crate::error::Error;
use crate::evidence::cve::{is_cve_id, require};
use crate::store::audit::{self, Actor};
use crate::trust::secrets::new_id;

/// A policy version with its effective time in unix ms, as the findings engine uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub effective_at: i64,
    pub policy: SlaPolicy,
}

/// The days and rules of a new policy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
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

fn days(row: &AnyRow, col: &str) -> Result<u32, Error> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("stored {col} {v} is out of range")))
}

fn policy_row(row: &AnyRow) -> Result<PolicyVersion, Error> {
    let effective_at: i64 = row.try_get("effective_at")?;
    let clock: String = row.try_get("clock_start")?;
    Ok(PolicyVersion {
        effective_at,
        policy: SlaPolicy {
            version: days(row, "version")?,
            effective_at: rfc3339(effective_at),
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
        },
    })
}

/// The policy version in force at `at` among `versions` (ordered by version).
pub fn in_force(versions: &[PolicyVersion], at: i64) -> Option<&PolicyVersion> {
    versions.iter().rev().find(|v| v.effective_at <= at)
}

impl Service {
    /// Every policy version, oldest first.
    pub async fn sla_policies(&self) -> Result<Vec<PolicyVersion>, Error> {
        let rows = sqlx::query("SELECT * FROM sla_policies ORDER BY version")
            .fetch_all(&self.db().pool)
            .await?;
        rows.iter().map(policy_row).collect()
    }

    /// Adds a policy version effective now (admin). Findings detected earlier keep theirs.
    pub async fn set_sla_policy(
        &self,
        by: &AuthUser,
        change: &PolicyChange,
    ) -> Result<SlaPolicy, Error> {
        require(by, Role::Admin)?;
        let all = [
            change.critical_days,
            change.high_days,
            change.medium_days,
            change.low_days,
            change.unrated_days,
        ];
        if all.iter().any(|d| *d == 0 || *d > 3650) {
            return Err(Error::BadRequest(
                "every SLA must be between 1 and 3650 days".into(),
            ));
        }
        if change.critical_days > change.high_days
            || change.high_days > change.medium_days
            || change.medium_days > change.low_days
        {
            return Err(Error::BadRequest(
                "a more severe level cannot have a longer deadline (critical <= high <= medium <= low)"
                    .into(),
            ));
        }
        let now = self.clock().now_ms();
        let mut tx = self.db().begin_audited().await?;
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM sla_policies")
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO sla_policies (version, effective_at, created_by, critical_days, high_days, medium_days, low_days, unrated_days, kev_shortens, kev_floor_days, clock_start, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(version)
        .bind(now)
        .bind(&by.name)
        .bind(i64::from(change.critical_days))
        .bind(i64::from(change.high_days))
        .bind(i64::from(change.medium_days))
        .bind(i64::from(change.low_days))
        .bind(i64::from(change.unrated_days))
        .bind(i64::from(change.kev_shortens))
        .bind(i64::from(change.kev_floor_days))
        .bind(change.clock_start.as_str())
        .bind(&change.note)
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now,
            &Actor::User(by.name.clone()),
            "policy.set",
            &format!("sla-v{version}"),
            json!({"critical_days": change.critical_days, "high_days": change.high_days,
                   "medium_days": change.medium_days, "low_days": change.low_days,
                   "unrated_days": change.unrated_days, "kev_shortens": change.kev_shortens,
                   "kev_floor_days": change.kev_floor_days, "clock_start": change.clock_start.as_str(),
                   "note": change.note}),
        )
        .await?;
        tx.commit().await?;
        let versions = self.sla_policies().await?;
        versions
            .into_iter()
            .find(|v| i64::from(v.policy.version) == version)
            .map(|v| v.policy)
            .ok_or_else(|| Error::Corrupt("the new policy version vanished".into()))
    }

    /// Records an approved exception for a CVE on one host or all (approver).
    pub async fn add_exception(
        &self,
        by: &AuthUser,
        cve: &str,
        host_id: Option<&str>,
        reason: &str,
        expires_in_secs: u64,
    ) -> Result<ExceptionRecord, Error> {
        require(by, Role::Approver)?;
        if !is_cve_id(cve) {
            return Err(Error::BadRequest(format!(
                "{cve:?} is not a CVE id (CVE-YYYY-NNNN)"
            )));
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Error::BadRequest(
                "an exception needs a reason (the compensating control)".into(),
            ));
        }
        if expires_in_secs == 0 || expires_in_secs > 366 * 86400 {
            return Err(Error::BadRequest(
                "an exception expires within 1 second to 366 days; renew it when it expires".into(),
            ));
        }
        let now = self.clock().now_ms();
        let expires = now + expires_in_secs as i64 * 1000;
        let id = new_id()?;
        let mut tx = self.db().begin_audited().await?;
        if let Some(h) = host_id {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM hosts WHERE id = $1")
                .bind(h)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(Error::HostNotFound(h.to_owned()));
            }
        }
        sqlx::query(
            "INSERT INTO sla_exceptions (id, cve, host_id, reason, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(cve)
        .bind(host_id)
        .bind(reason)
        .bind(&by.name)
        .bind(now)
        .bind(expires)
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now,
            &Actor::User(by.name.clone()),
            "exception.add",
            &id,
            json!({"cve": cve, "host": host_id, "reason": reason, "expires_at": expires}),
        )
        .await?;
        tx.commit().await?;
        Ok(ExceptionRecord {
            id,
            cve: cve.to_owned(),
            host_id: host_id.map(str::to_owned),
            reason: reason.to_owned(),
            created_by: by.name.clone(),
            created_at: rfc3339(now),
            expires_at: rfc3339(expires),
        })
    }

    /// Exceptions created at or before `until`, with their times in ms.
    pub async fn exceptions(&self, until: i64) -> Result<Vec<(i64, i64, ExceptionRecord)>, Error> {
        let rows = sqlx::query(
            "SELECT id, cve, host_id, reason, created_by, created_at, expires_at FROM sla_exceptions WHERE created_at <= $1 ORDER BY created_at, id",
        )
        .bind(until)
        .fetch_all(&self.db().pool)
        .await?;
        rows.iter()
            .map(|r| {
                let created: i64 = r.try_get("created_at")?;
                let expires: i64 = r.try_get("expires_at")?;
                Ok((
                    created,
                    expires,
                    ExceptionRecord {
                        id: r.try_get("id")?,
                        cve: r.try_get("cve")?,
                        host_id: r.try_get("host_id")?,
                        reason: r.try_get("reason")?,
                        created_by: r.try_get("created_by")?,
                        created_at: rfc3339(created),
                        expires_at: rfc3339(expires),
                    },
                ))
            })
            .collect()
    }
}
