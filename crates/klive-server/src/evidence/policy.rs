//! The SLA policy (versioned; a new version applies to findings detected from its effective
//! time on, earlier findings keep the version they were detected under) and exceptions.

use serde_json::json;

use klive_format::api::Role;
use klive_format::evidence::{ExceptionRecord, SlaPolicy};

use crate::clock::rfc3339;
use crate::domain::{AuthUser, Service};
use crate::error::Error;
use crate::evidence::cve::{is_cve_id, require};
use crate::store::audit::{self, Actor};
use crate::store::policy::{self as store, ExceptionRow};
use crate::trust::secrets::new_id;

/// A policy version with its effective time in unix ms, as the findings engine uses it.
pub use crate::store::policy::PolicyVersion;
/// The days and rules of a new policy version.
pub use klive_format::evidence::SlaRules as PolicyChange;

fn exception_record(row: ExceptionRow) -> (i64, i64, ExceptionRecord) {
    (
        row.created_at,
        row.expires_at,
        ExceptionRecord {
            id: row.id,
            cve: row.cve,
            host_id: row.host_id,
            reason: row.reason,
            created_by: row.created_by,
            created_at: rfc3339(row.created_at),
            expires_at: rfc3339(row.expires_at),
        },
    )
}

/// The policy version in force at `at` among `versions` (ordered by version).
pub fn in_force(versions: &[PolicyVersion], at: i64) -> Option<&PolicyVersion> {
    versions.iter().rev().find(|v| v.effective_at <= at)
}

/// The SLA policy and exceptions of a service: `Policies::new(&service)`.
#[derive(Debug, Clone, Copy)]
pub struct Policies<'a>(&'a Service);

impl<'a> Policies<'a> {
    pub fn new(service: &'a Service) -> Policies<'a> {
        Policies(service)
    }

    /// Every policy version, oldest first.
    pub async fn sla_policies(&self) -> Result<Vec<PolicyVersion>, Error> {
        store::policies(self.0.db()).await
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
        let now = self.0.now();
        let mut tx = self.0.db().begin_audited().await?;
        let version = store::append_policy(&mut tx, now, &by.name, change).await?;
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
        let now = self.0.now();
        let expires = now + expires_in_secs as i64 * 1000;
        let id = new_id()?;
        let mut tx = self.0.db().begin_audited().await?;
        if let Some(h) = host_id
            && !store::host_exists(&mut tx, h).await?
        {
            return Err(Error::HostNotFound(h.to_owned()));
        }
        let row = ExceptionRow {
            id,
            cve: cve.to_owned(),
            host_id: host_id.map(str::to_owned),
            reason: reason.to_owned(),
            created_by: by.name.clone(),
            created_at: now,
            expires_at: expires,
        };
        store::insert_exception(&mut tx, &row).await?;
        audit::append(
            &mut tx,
            now,
            &Actor::User(by.name.clone()),
            "exception.add",
            &row.id,
            json!({"cve": cve, "host": host_id, "reason": reason, "expires_at": expires}),
        )
        .await?;
        tx.commit().await?;
        Ok(exception_record(row).2)
    }

    /// Exceptions created at or before `until`, with their times in ms.
    pub async fn exceptions(&self, until: i64) -> Result<Vec<(i64, i64, ExceptionRecord)>, Error> {
        let rows = store::exceptions(self.0.db(), until).await?;
        Ok(rows.into_iter().map(exception_record).collect())
    }
}
