//! The host registry: hosts, their credentials (as hashes), policy and reported state.

use sqlx::Row;
use sqlx::any::AnyRow;

use klive_format::api::{FleetGroup, HostInfo};
use klive_format::status::PatchState;

use crate::clock::rfc3339;
use crate::error::Error;
use crate::store::db::{Db, Tx};
use crate::store::releases::level_from_db;

/// An authenticated host, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
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

fn host_row(row: &AnyRow) -> Result<HostInfo, Error> {
    let build_id: Option<String> = row.try_get("build_id")?;
    let state: Option<String> = row.try_get("applied_state")?;
    Ok(HostInfo {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        channel: row.try_get("channel")?,
        pinned_level: row
            .try_get::<Option<i64>, _>("pinned_level")?
            .map(level_from_db)
            .transpose()?,
        update_delay_secs: row.try_get::<i64, _>("update_delay_secs")?.max(0) as u64,
        registered_at: rfc3339(row.try_get("registered_at")?),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(rfc3339),
        last_checkin_at: row
            .try_get::<Option<i64>, _>("last_checkin_at")?
            .map(rfc3339),
        kernel_release: row.try_get("kernel_release")?,
        build_id: build_id.and_then(|b| b.parse().ok()),
        applied_level: row
            .try_get::<Option<i64>, _>("applied_level")?
            .map(level_from_db)
            .transpose()?,
        applied_state: state.as_deref().and_then(parse_state),
        boot_id: row.try_get("boot_id")?,
        uptime_secs: row
            .try_get::<Option<i64>, _>("uptime_secs")?
            .map(|v| v.max(0) as u64),
        agent_version: row.try_get("agent_version")?,
        last_error: row.try_get("last_error")?,
    })
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
    let Some(row) = sqlx::query(
        "SELECT id, channel, pinned_level, update_delay_secs, last_sequence, build_id, applied_level, applied_state, boot_id, last_error, taint, last_checkin_at, kernel_release, agent_version FROM hosts WHERE credential_hash = $1 AND revoked_at IS NULL",
    )
    .bind(credential_hash)
    .fetch_optional(&db.pool)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(AuthHost {
        id: row.try_get("id")?,
        channel: row.try_get("channel")?,
        pinned_level: row.try_get("pinned_level")?,
        update_delay_secs: row.try_get("update_delay_secs")?,
        last_sequence: row.try_get("last_sequence")?,
        build_id: row.try_get("build_id")?,
        applied_level: row.try_get("applied_level")?,
        applied_state: row.try_get("applied_state")?,
        boot_id: row.try_get("boot_id")?,
        last_error: row.try_get("last_error")?,
        taint: row.try_get("taint")?,
        last_checkin_at: row.try_get("last_checkin_at")?,
        kernel_release: row.try_get("kernel_release")?,
        agent_version: row.try_get("agent_version")?,
    }))
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
    let rows = sqlx::query(
        "SELECT channel, applied_level, applied_state, COUNT(*) AS n FROM hosts WHERE revoked_at IS NULL GROUP BY channel, applied_level, applied_state ORDER BY channel, applied_level",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            let n = row.try_get::<i64, _>("n")?.max(0) as u64;
            let state: Option<String> = row.try_get("applied_state")?;
            Ok(FleetGroup {
                channel: row.try_get("channel")?,
                level: row
                    .try_get::<Option<i64>, _>("applied_level")?
                    .map(level_from_db)
                    .transpose()?,
                state: state.as_deref().and_then(parse_state),
                hosts: n,
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
    let rows = sqlx::query("SELECT * FROM hosts WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(host_row).collect()
}

pub async fn get(db: &Db, id: &str) -> Result<Option<HostInfo>, Error> {
    sqlx::query("SELECT * FROM hosts WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .as_ref()
        .map(host_row)
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
