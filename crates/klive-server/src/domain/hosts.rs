//! The host registry: fleet summary, host list and detail, per-host policy, revocation.

use super::*;

/// The host registry: fleet summary, host list and detail, per-host policy, revocation.
#[derive(Debug, Clone, Copy)]
pub struct Hosts<'a>(pub(super) &'a Service);

impl std::ops::Deref for Hosts<'_> {
    type Target = Service;
    fn deref(&self) -> &Service {
        self.0
    }
}

impl Hosts<'_> {
    /// Counts of hosts per channel, level and state: one indexed aggregate, not a host list.
    pub async fn fleet(self, by: &AuthUser) -> Result<FleetSummary, Error> {
        by.require(Role::Viewer)?;
        let rows = sqlx::query(
            "SELECT channel, applied_level, applied_state, COUNT(*) AS n FROM hosts WHERE revoked_at IS NULL GROUP BY channel, applied_level, applied_state ORDER BY channel, applied_level",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut summary = FleetSummary {
            hosts: 0,
            stale_hosts: 0,
            groups: Vec::with_capacity(rows.len()),
        };
        for row in &rows {
            let n = row.try_get::<i64, _>("n")?.max(0) as u64;
            let state: Option<String> = row.try_get("applied_state")?;
            summary.hosts += n;
            summary.groups.push(FleetGroup {
                channel: row.try_get("channel")?,
                level: row
                    .try_get::<Option<i64>, _>("applied_level")?
                    .map(level_from_db)
                    .transpose()?,
                state: state.as_deref().and_then(parse_state),
                hosts: n,
            });
        }
        let stale_before = self.now() - 2 * self.checkin_interval_secs as i64 * 1000;
        let stale: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM hosts WHERE revoked_at IS NULL AND (last_checkin_at IS NULL OR last_checkin_at < $1)",
        )
        .bind(stale_before)
        .fetch_one(&self.db.pool)
        .await?;
        summary.stale_hosts = stale.max(0) as u64;
        Ok(summary)
    }

    /// One page of hosts, ordered by id.
    pub async fn list(self, by: &AuthUser, q: &HostListQuery) -> Result<Vec<HostInfo>, Error> {
        by.require(Role::Viewer)?;
        let limit = i64::from(q.limit.unwrap_or(1000).clamp(1, 10_000));
        let rows = sqlx::query("SELECT * FROM hosts WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(q.after.as_deref().unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(host_row).collect()
    }

    pub async fn get(self, by: &AuthUser, id: &str) -> Result<HostInfo, Error> {
        by.require(Role::Viewer)?;
        let row = sqlx::query("SELECT * FROM hosts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| Error::HostNotFound(id.to_owned()))?;
        host_row(&row)
    }

    pub async fn set_host_policy(
        self,
        by: &AuthUser,
        id: &str,
        policy: &HostPolicy,
    ) -> Result<HostInfo, Error> {
        by.require(Role::Admin)?;
        let delay = secs_to_i64(policy.update_delay_secs, "update_delay_secs")?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        self.channels().channel(&mut tx, &policy.channel).await?;
        let affected = sqlx::query("UPDATE hosts SET channel = $1, pinned_level = $2, update_delay_secs = $3 WHERE id = $4")
            .bind(&policy.channel)
            .bind(policy.pinned_level.map(|l| i64::from(l.get())))
            .bind(delay)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if affected == 0 {
            return Err(Error::HostNotFound(id.to_owned()));
        }
        audit::append(&mut tx, now, &by.actor(), "host.policy", id,
            json!({"channel": policy.channel, "pinned_level": policy.pinned_level, "update_delay_secs": delay})).await?;
        tx.commit().await?;
        self.get(by, id).await
    }

    /// Revokes a host's credential: its next request is refused.
    pub async fn revoke_host(self, by: &AuthUser, id: &str) -> Result<HostInfo, Error> {
        by.require(Role::Admin)?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let affected =
            sqlx::query("UPDATE hosts SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if affected == 0 {
            return Err(Error::HostNotFound(id.to_owned()));
        }
        audit::append(&mut tx, now, &by.actor(), "host.revoke", id, json!({})).await?;
        tx.commit().await?;
        self.get(by, id).await
    }
}
