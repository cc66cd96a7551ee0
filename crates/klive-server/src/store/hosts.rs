//! The host registry: hosts, their credentials (as hashes), policy and reported state.

use klive_format::api::{FleetGroup, HostInfo};
use klive_format::status::PatchState;

use crate::clock::rfc3339;
use crate::error::Error;
use crate::store::db::{Db, Tx};
use crate::store::releases::level_from_db;

/// An authenticated host, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuthHost {
    pub id: String,
    pub channel: String,
    pub pinned_level: Option<i64>,
    pub update_delay_secs: i64,
    pub last_sequence: i64,
    pub build_id: Option<String>,
    pub applied_level: Option<i64>,
    pub applied_state: Option<String>,
    pub boot_id: Option<String>,
    pub last_error: Option<String>,
    pub taint: Option<i64>,
    pub last_checkin_at: Option<i64>,
    pub kernel_release: Option<String>,
    pub agent_version: Option<String>,
}

/// A host to register.
#[derive(Debug, Clone)]
pub struct NewHost<'a> {
    pub id: &'a str,
    pub credential_hash: &'a str,
    pub hostname: &'a str,
    pub channel: &'a str,
    pub registered_at: i64,
    pub kernel_release: &'a str,
    pub build_id: Option<String>,
    pub agent_version: &'a str,
}

fn parse_state(s: &str) -> Option<PatchState> {
    Some(match s {
        "applied" => PatchState::Applied,
        "patching" => PatchState::Patching,
        "unpatching" => PatchState::Unpatching,
        "disabled" => PatchState::Disabled,
        _ => return None,
    })
}

/// The columns of a host row that [`HostInfo`] shows, as stored.
#[derive(sqlx::FromRow)]
struct StoredHost {
    build_id: Option<String>,
    applied_state: Option<String>,
    id: String,
    hostname: String,
    channel: String,
    pinned_level: Option<i64>,
    update_delay_secs: i64,
    registered_at: i64,
    revoked_at: Option<i64>,
    last_checkin_at: Option<i64>,
    kernel_release: Option<String>,
    applied_level: Option<i64>,
    boot_id: Option<String>,
    uptime_secs: Option<i64>,
    agent_version: Option<String>,
    last_error: Option<String>,
}

impl TryFrom<StoredHost> for HostInfo {
    type Error = Error;

    fn try_from(h: StoredHost) -> Result<HostInfo, Error> {
        Ok(HostInfo {
            id: h.id,
            hostname: h.hostname,
            channel: h.channel,
            pinned_level: h.pinned_level.map(level_from_db).transpose()?,
            update_delay_secs: h.update_delay_secs.max(0) as u64,
            registered_at: rfc3339(h.registered_at),
            revoked_at: h.revoked_at.map(rfc3339),
            last_checkin_at: h.last_checkin_at.map(rfc3339),
            kernel_release: h.kernel_release,
            build_id: h.build_id.and_then(|b| b.parse().ok()),
            applied_level: h.applied_level.map(level_from_db).transpose()?,
            applied_state: h.applied_state.as_deref().and_then(parse_state),
            boot_id: h.boot_id,
            uptime_secs: h.uptime_secs.map(|v| v.max(0) as u64),
            agent_version: h.agent_version,
            last_error: h.last_error,
        })
    }
}

pub async fn insert(tx: &mut Tx, h: &NewHost<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO hosts (id, credential_hash, hostname, channel, update_delay_secs, registered_at, last_sequence, kernel_release, build_id, agent_version) VALUES ($1, $2, $3, $4, 0, $5, 0, $6, $7, $8)",
    )
    .bind(h.id)
    .bind(h.credential_hash)
    .bind(h.hostname)
    .bind(h.channel)
    .bind(h.registered_at)
    .bind(h.kernel_release)
    .bind(h.build_id.clone())
    .bind(h.agent_version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The host holding the credential with this hash, unless revoked (one indexed read).
pub async fn by_credential(db: &Db, credential_hash: &str) -> Result<Option<AuthHost>, Error> {
    Ok(sqlx::query_as::<_, AuthHost>(
        "SELECT id, channel, pinned_level, update_delay_secs, last_sequence, build_id, applied_level, applied_state, boot_id, last_error, taint, last_checkin_at, kernel_release, agent_version FROM hosts WHERE credential_hash = $1 AND revoked_at IS NULL",
    )
    .bind(credential_hash)
    .fetch_optional(&db.pool)
    .await?)
}

/// Whether any host, revoked or not, holds the credential with this hash.
pub async fn credential_known(db: &Db, credential_hash: &str) -> Result<bool, Error> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM hosts WHERE credential_hash = $1")
        .bind(credential_hash)
        .fetch_optional(&db.pool)
        .await?;
    Ok(id.is_some())
}

/// Hosts not revoked, counted per channel, applied level and state (one indexed aggregate).
pub async fn fleet_groups(db: &Db) -> Result<Vec<FleetGroup>, Error> {
    #[derive(sqlx::FromRow)]
    struct Group {
        n: i64,
        applied_state: Option<String>,
        channel: String,
        applied_level: Option<i64>,
    }
    let rows = sqlx::query_as::<_, Group>(
        "SELECT channel, applied_level, applied_state, COUNT(*) AS n FROM hosts WHERE revoked_at IS NULL GROUP BY channel, applied_level, applied_state ORDER BY channel, applied_level",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.into_iter()
        .map(|g| {
            Ok(FleetGroup {
                channel: g.channel,
                level: g.applied_level.map(level_from_db).transpose()?,
                state: g.applied_state.as_deref().and_then(parse_state),
                hosts: g.n.max(0) as u64,
            })
        })
        .collect()
}

/// Hosts not revoked that have not checked in since `before`.
pub async fn stale_count(db: &Db, before: i64) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM hosts WHERE revoked_at IS NULL AND (last_checkin_at IS NULL OR last_checkin_at < $1)",
    )
    .bind(before)
    .fetch_one(&db.pool)
    .await?)
}

/// Up to `limit` hosts with ids after `after`, by id.
pub async fn list(db: &Db, after: &str, limit: i64) -> Result<Vec<HostInfo>, Error> {
    sqlx::query_as::<_, StoredHost>("SELECT * FROM hosts WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(&db.pool)
        .await?
        .into_iter()
        .map(HostInfo::try_from)
        .collect()
}

pub async fn get(db: &Db, id: &str) -> Result<Option<HostInfo>, Error> {
    sqlx::query_as::<_, StoredHost>("SELECT * FROM hosts WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .map(HostInfo::try_from)
        .transpose()
}

/// Sets a host's channel, pinned level and update delay; returns the rows changed (0 or 1).
pub async fn set_policy(
    tx: &mut Tx,
    id: &str,
    channel: &str,
    pinned_level: Option<i64>,
    update_delay_secs: i64,
) -> Result<u64, Error> {
    Ok(sqlx::query(
        "UPDATE hosts SET channel = $1, pinned_level = $2, update_delay_secs = $3 WHERE id = $4",
    )
    .bind(channel)
    .bind(pinned_level)
    .bind(update_delay_secs)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Revokes a host not revoked yet; returns the rows changed (0 or 1).
pub async fn revoke(tx: &mut Tx, id: &str, now: i64) -> Result<u64, Error> {
    Ok(
        sqlx::query("UPDATE hosts SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    )
}
