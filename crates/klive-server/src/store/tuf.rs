//! The signed TUF metadata of each channel, and what a channel's targets are made from.

use crate::error::Error;
use crate::store::db::{Db, Tx};

/// A release in a channel, as its TUF targets describe it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TargetRow {
    pub build_id: String,
    pub level: i64,
    pub module_name: String,
    pub sha256: String,
    pub size: i64,
    pub manifest: String,
}

/// The version the next metadata of `channel` gets.
pub async fn next_version(tx: &mut Tx, channel: &str) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM tuf_metadata WHERE channel = $1",
    )
    .bind(channel)
    .fetch_one(&mut **tx)
    .await?)
}

/// The releases in `channel` that are not withdrawn.
pub async fn targets(tx: &mut Tx, channel: &str) -> Result<Vec<TargetRow>, Error> {
    Ok(sqlx::query_as::<_, TargetRow>(
        "SELECT r.build_id AS build_id, r.level AS level, r.module_name AS module_name, r.module_sha256 AS sha256, r.module_size AS size, r.manifest AS manifest FROM releases r JOIN release_channels rc ON rc.release_id = r.id WHERE rc.channel = $1 AND r.withdrawn_at IS NULL",
    )
    .bind(channel)
    .fetch_all(&mut **tx)
    .await?)
}

/// Stores (or replaces) metadata file `name` of `channel`.
pub async fn put_metadata(
    tx: &mut Tx,
    channel: &str,
    name: &str,
    version: i64,
    body: String,
    expires_at: Option<i64>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO tuf_metadata (channel, name, version, body, expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, name) DO UPDATE SET version = excluded.version, body = excluded.body, expires_at = excluded.expires_at",
    )
    .bind(channel)
    .bind(name)
    .bind(version)
    .bind(body)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// When `channel`'s timestamp expires, if it has one.
pub async fn timestamp_expiry(db: &Db, channel: &str) -> Result<Option<i64>, Error> {
    let expires: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT expires_at FROM tuf_metadata WHERE channel = $1 AND name = 'timestamp.json'",
    )
    .bind(channel)
    .fetch_optional(&db.pool)
    .await?;
    Ok(expires.flatten())
}

/// The body of metadata file `name` of `channel`.
pub async fn metadata(db: &Db, channel: &str, name: &str) -> Result<Option<String>, Error> {
    Ok(
        sqlx::query_scalar("SELECT body FROM tuf_metadata WHERE channel = $1 AND name = $2")
            .bind(channel)
            .bind(name)
            .fetch_optional(&db.pool)
            .await?,
    )
}
