//! The fleet as it stood at a past time, for the findings engine: the hosts registered by
//! then, the releases published by then with their channel history, and every host's history
//! rows up to then.

use sqlx::Row;

use crate::error::Error;
use crate::store::db::Db;
use crate::store::history::HostState;

/// A host as registered.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HostRow {
    pub id: String,
    pub hostname: String,
    pub channel: String,
    pub registered_at: i64,
    pub revoked_at: Option<i64>,
    pub last_checkin_at: Option<i64>,
}

/// A stored release; `manifest` is its JSON text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReleaseRecord {
    pub id: String,
    pub build_id: String,
    pub level: i64,
    pub manifest: String,
    pub published_at: i64,
    pub published_by: String,
    pub withdrawn_at: Option<i64>,
}

/// A release's promotion into a channel.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReleaseChannel {
    pub release_id: String,
    pub channel: String,
    pub since: i64,
}

/// Hosts registered at or before `as_of`, by id, as they are stored now (a later revocation
/// included).
pub async fn hosts(db: &Db, as_of: i64) -> Result<Vec<HostRow>, Error> {
    Ok(sqlx::query_as::<_, HostRow>(
        "SELECT id, hostname, channel, registered_at, revoked_at, last_checkin_at FROM hosts WHERE registered_at <= $1 ORDER BY id",
    )
    .bind(as_of)
    .fetch_all(&db.pool)
    .await?)
}

/// Releases published at or before `as_of`, by build id then level, as stored now (a later
/// withdrawal included).
pub async fn releases(db: &Db, as_of: i64) -> Result<Vec<ReleaseRecord>, Error> {
    Ok(sqlx::query_as::<_, ReleaseRecord>(
        "SELECT id, build_id, level, manifest, published_at, published_by, withdrawn_at FROM releases WHERE published_at <= $1 ORDER BY build_id, level",
    )
    .bind(as_of)
    .fetch_all(&db.pool)
    .await?)
}

/// Channel promotions made at or before `as_of`, in no particular order.
pub async fn release_channels(db: &Db, as_of: i64) -> Result<Vec<ReleaseChannel>, Error> {
    Ok(sqlx::query_as::<_, ReleaseChannel>(
        "SELECT release_id, channel, since FROM release_channels WHERE since <= $1",
    )
    .bind(as_of)
    .fetch_all(&db.pool)
    .await?)
}

/// Streams every host's history rows up to `as_of`, ordered by host id then sequence (the
/// fleet has millions of rows, so they are never all in memory here). For each row `host`
/// is asked first with the host id: rows it answers `None` for are skipped undecoded, the
/// others are decoded (by column position) and handed to `row` with the answer.
pub async fn for_each_history_row<K: Copy>(
    db: &Db,
    as_of: i64,
    mut host: impl FnMut(&str) -> Option<K>,
    mut row: impl FnMut(K, HostState),
) -> Result<(), Error> {
    use futures_util::TryStreamExt as _;
    let mut rows = sqlx::query(
        "SELECT host_id, sequence, at, events, kernel_release, package_version, build_id, applied_level, applied_state, boot_id, uptime_secs, taint, error FROM host_history WHERE at <= $1 ORDER BY host_id, sequence",
    )
    .bind(as_of)
    .fetch(&db.pool);
    while let Some(r) = rows.try_next().await? {
        let host_id: String = r.try_get(0)?;
        let Some(key) = host(&host_id) else { continue };
        row(
            key,
            HostState {
                host_id,
                sequence: r.try_get(1)?,
                at: r.try_get(2)?,
                events: r.try_get(3)?,
                kernel_release: r.try_get(4)?,
                package_version: r.try_get(5)?,
                build_id: r.try_get(6)?,
                applied_level: r.try_get(7)?,
                applied_state: r.try_get(8)?,
                boot_id: r.try_get(9)?,
                uptime_secs: r.try_get(10)?,
                taint: r.try_get(11)?,
                error: r.try_get(12)?,
            },
        );
    }
    Ok(())
}

/// A promotion as recorded (times in unix ms).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PromotionRow {
    pub id: String,
    pub release_id: String,
    pub to_channel: String,
    pub requested_by: String,
    pub requested_at: i64,
    pub reason: Option<String>,
    pub status: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
}

/// The promotions requested at or before `as_of`, in request order.
pub async fn promotions(db: &Db, as_of: i64) -> Result<Vec<PromotionRow>, Error> {
    Ok(sqlx::query_as::<_, PromotionRow>(
        "SELECT id, release_id, to_channel, requested_by, requested_at, reason, status, approved_by, approved_at FROM promotions WHERE requested_at <= $1 ORDER BY requested_at, id",
    )
    .bind(as_of)
    .fetch_all(&db.pool)
    .await?)
}
