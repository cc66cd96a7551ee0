//! Releases (one per kernel build and level) and the channels each one is in.

use klive_format::PatchLevel;
use klive_format::api::{ChannelEntry, ReleaseInfo, Withdrawal};
use klive_format::release::ReleaseManifest;

use crate::clock::rfc3339;
use crate::error::{Error, on_unique};
use crate::store::db::{Db, Tx};

/// A stored patch level, checked to be one.
pub fn level_from_db(v: i64) -> Result<PatchLevel, Error> {
    u32::try_from(v)
        .ok()
        .and_then(|v| PatchLevel::new(v).ok())
        .ok_or_else(|| Error::Corrupt(format!("stored level {v} is out of range")))
}

/// Who published a release and whether it was withdrawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseStatus {
    pub published_by: String,
    pub withdrawn: bool,
}

/// What a host downloads of a release: its manifest and its module's digest.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HostRelease {
    pub manifest: String,
    pub sha256: String,
}

pub async fn exists(db: &Db, id: &str) -> Result<bool, Error> {
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM releases WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(exists.is_some())
}

/// Adds release `id`; [`Error::DuplicateRelease`] when it exists.
pub async fn insert(
    tx: &mut Tx,
    id: &str,
    manifest: &ReleaseManifest,
    manifest_json: &str,
    published_by: &str,
    now: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO releases (id, build_id, level, module_name, module_sha256, module_size, manifest, published_by, published_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(manifest.kernel.build_id.as_str())
    .bind(i64::from(manifest.level.get()))
    .bind(&manifest.module_name)
    .bind(&manifest.module.sha256)
    .bind(manifest.module.size as i64)
    .bind(manifest_json)
    .bind(published_by)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        on_unique(
            e,
            Error::DuplicateRelease {
                build_id: manifest.kernel.build_id.to_string(),
                level: manifest.level.get(),
            },
        )
    })?;
    Ok(())
}

/// Puts release `id` in `channel` from `now` on, neither emergency nor awaiting approval.
pub async fn enter_channel(tx: &mut Tx, id: &str, channel: &str, now: i64) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO release_channels (release_id, channel, since, emergency, awaiting_approval) VALUES ($1, $2, $3, 0, 0)",
    )
    .bind(id)
    .bind(channel)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Puts release `id` in `channel` from `now` on; an emergency entry awaits approval.
pub async fn enter_channel_flagged(
    tx: &mut Tx,
    id: &str,
    channel: &str,
    now: i64,
    emergency: bool,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO release_channels (release_id, channel, since, emergency, awaiting_approval) VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(id)
    .bind(channel)
    .bind(now)
    .bind(i64::from(emergency))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The columns of a release row that [`ReleaseInfo`] shows, as stored.
#[derive(sqlx::FromRow)]
struct StoredRelease {
    id: String,
    manifest: String,
    withdrawn_at: Option<i64>,
    withdrawn_by: Option<String>,
    withdraw_reason: Option<String>,
    published_by: String,
    published_at: i64,
}

/// A release's entry in a channel, as stored.
#[derive(sqlx::FromRow)]
struct StoredEntry {
    channel: String,
    since: i64,
    emergency: i64,
    awaiting: i64,
}

/// Every release, by build and level.
pub async fn list(db: &Db) -> Result<Vec<ReleaseInfo>, Error> {
    let rows =
        sqlx::query_as::<_, StoredRelease>("SELECT * FROM releases ORDER BY build_id, level")
            .fetch_all(&db.pool)
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(release_info(db, row).await?);
    }
    Ok(out)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<ReleaseInfo>, Error> {
    let row = sqlx::query_as::<_, StoredRelease>("SELECT * FROM releases WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    match row {
        Some(row) => Ok(Some(release_info(db, row).await?)),
        None => Ok(None),
    }
}

async fn release_info(db: &Db, row: StoredRelease) -> Result<ReleaseInfo, Error> {
    let id = row.id;
    let manifest: ReleaseManifest = serde_json::from_str(&row.manifest)
        .map_err(|e| Error::Corrupt(format!("stored manifest of {id}: {e}")))?;
    let entries = sqlx::query_as::<_, StoredEntry>(
        "SELECT rc.channel AS channel, rc.since AS since, rc.emergency AS emergency, rc.awaiting_approval AS awaiting FROM release_channels rc JOIN channels c ON c.name = rc.channel WHERE rc.release_id = $1 ORDER BY c.position",
    )
    .bind(&id)
    .fetch_all(&db.pool)
    .await?;
    let channels = entries
        .into_iter()
        .map(|e| ChannelEntry {
            channel: e.channel,
            since: rfc3339(e.since),
            emergency: e.emergency != 0,
            awaiting_approval: e.awaiting != 0,
        })
        .collect();
    let withdrawn = row.withdrawn_at.map(|at| Withdrawal {
        at: rfc3339(at),
        by: row.withdrawn_by.unwrap_or_default(),
        reason: row.withdraw_reason.unwrap_or_default(),
    });
    Ok(ReleaseInfo {
        manifest,
        published_by: row.published_by,
        published_at: rfc3339(row.published_at),
        channels,
        withdrawn,
    })
}

/// Publisher and withdrawn flag of release `id`, if it exists.
pub async fn status(tx: &mut Tx, id: &str) -> Result<Option<ReleaseStatus>, Error> {
    #[derive(sqlx::FromRow)]
    struct Stored {
        published_by: String,
        withdrawn_at: Option<i64>,
    }
    let row = sqlx::query_as::<_, Stored>(
        "SELECT published_by, withdrawn_at FROM releases WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| ReleaseStatus {
        published_by: r.published_by,
        withdrawn: r.withdrawn_at.is_some(),
    }))
}

pub async fn withdraw(
    tx: &mut Tx,
    id: &str,
    now: i64,
    by: &str,
    reason: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE releases SET withdrawn_at = $1, withdrawn_by = $2, withdraw_reason = $3 WHERE id = $4")
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The channels release `id` is in.
pub async fn channels(tx: &mut Tx, id: &str) -> Result<Vec<String>, Error> {
    Ok(
        sqlx::query_scalar("SELECT channel FROM release_channels WHERE release_id = $1")
            .bind(id)
            .fetch_all(&mut **tx)
            .await?,
    )
}

/// Release `id` if it is in `channel` and not withdrawn.
pub async fn in_channel(db: &Db, id: &str, channel: &str) -> Result<Option<HostRelease>, Error> {
    Ok(sqlx::query_as::<_, HostRelease>(
        "SELECT r.manifest AS manifest, r.module_sha256 AS sha256 FROM releases r JOIN release_channels rc ON rc.release_id = r.id WHERE r.id = $1 AND rc.channel = $2 AND r.withdrawn_at IS NULL",
    )
    .bind(id)
    .bind(channel)
    .fetch_optional(&db.pool)
    .await?)
}
