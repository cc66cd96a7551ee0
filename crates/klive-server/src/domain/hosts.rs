//! The host registry: fleet summary, host list and detail, per-host policy, revocation.

use super::*;

domain_service! {
    /// The host registry: fleet summary, host list and detail, per-host policy, revocation.
    Hosts
}

impl Hosts<'_> {
    /// Counts of hosts per channel, level and state: one indexed aggregate, not a host list.
    pub async fn fleet(self, by: &AuthUser) -> Result<FleetSummary, Error> {
        by.require(Role::Viewer)?;
        let groups = store::hosts::fleet_groups(&self.db).await?;
        let mut summary = FleetSummary {
            hosts: groups.iter().map(|g| g.hosts).sum(),
            stale_hosts: 0,
            groups,
        };
        let stale_before = self.now() - 2 * self.checkin_interval_secs as i64 * 1000;
        let stale = store::hosts::stale_count(&self.db, stale_before).await?;
        summary.stale_hosts = stale.max(0) as u64;
        Ok(summary)
    }

    /// One page of hosts, ordered by id.
    pub async fn list(self, by: &AuthUser, q: &HostListQuery) -> Result<Vec<HostInfo>, Error> {
        by.require(Role::Viewer)?;
        let limit = i64::from(q.limit.unwrap_or(1000).clamp(1, 10_000));
        store::hosts::list(&self.db, q.after.as_deref().unwrap_or(""), limit).await
    }

    pub async fn get(self, by: &AuthUser, id: &str) -> Result<HostInfo, Error> {
        by.require(Role::Viewer)?;
        store::hosts::get(&self.db, id)
            .await?
            .ok_or_else(|| Error::HostNotFound(id.to_owned()))
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
        let affected = store::hosts::set_policy(
            &mut tx,
            id,
            &policy.channel,
            policy.pinned_level.map(|l| i64::from(l.get())),
            delay,
        )
        .await?;
        if affected == 0 {
            return Err(Error::HostNotFound(id.to_owned()));
        }
        audit::append(&mut tx, now, &by.actor(), "host.policy", id,
            json!({"channel": policy.channel, "pinned_level": policy.pinned_level, "update_delay_secs": delay})).await?;
        tx.commit().await?;
        self.get(by, id).await
    }

    /// Revokes a host's credential: its next request is refused. Revoking a revoked host
    /// changes and audits nothing and answers the host as it is; an unknown id is not found.
    pub async fn revoke_host(self, by: &AuthUser, id: &str) -> Result<HostInfo, Error> {
        by.require(Role::Admin)?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let affected = store::hosts::revoke(&mut tx, id, now).await?;
        if affected == 0 {
            // Unknown, or revoked already: the read tells which (the transaction rolls back).
            drop(tx);
            return self.get(by, id).await;
        }
        audit::append(&mut tx, now, &by.actor(), "host.revoke", id, json!({})).await?;
        tx.commit().await?;
        self.get(by, id).await
    }
}
