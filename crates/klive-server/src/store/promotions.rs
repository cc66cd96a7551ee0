//! Promotion requests of releases into channels and their approval.

use sqlx::Row;
use sqlx::any::AnyRow;

use klive_format::api::{Promotion, PromotionStatus};

use crate::clock::rfc3339;
use crate::error::Error;
use crate::store::db::{Db, Tx};
use crate::store::releases::level_from_db;

fn status_name(s: PromotionStatus) -> &'static str {
    match s {
        PromotionStatus::Pending => "pending",
        PromotionStatus::Approved => "approved",
        PromotionStatus::EmergencyUnapproved => "emergency_unapproved",
        PromotionStatus::EmergencyApproved => "emergency_approved",
    }
}

fn promotion_row(row: &AnyRow) -> Result<Promotion, Error> {
    let status: String = row.try_get("status")?;
    let status = match status.as_str() {
        "pending" => PromotionStatus::Pending,
        "approved" => PromotionStatus::Approved,
        "emergency_unapproved" => PromotionStatus::EmergencyUnapproved,
        "emergency_approved" => PromotionStatus::EmergencyApproved,
        // A pending request overtaken by an effective promotion reads as approved by that one.
        "superseded" => PromotionStatus::Approved,
        other => {
            return Err(Error::Corrupt(format!(
                "unknown promotion status {other:?}"
            )));
        }
    };
    let build_id: String = row.try_get("build_id")?;
    Ok(Promotion {
        id: row.try_get("id")?,
        build_id: build_id
            .parse()
            .map_err(|_| Error::Corrupt(format!("stored build-id {build_id:?}")))?,
        level: level_from_db(row.try_get("level")?)?,
        to: row.try_get("to_channel")?,
        requested_by: row.try_get("requested_by")?,
        requested_at: rfc3339(row.try_get("requested_at")?),
        reason: row.try_get("reason")?,
        status,
        approved_by: row.try_get("approved_by")?,
        approved_at: row.try_get::<Option<i64>, _>("approved_at")?.map(rfc3339),
    })
}

/// A promotion to write.
#[derive(Debug, Clone)]
pub struct NewPromotion<'a> {
    pub id: &'a str,
    pub release_id: &'a str,
    pub to_channel: &'a str,
    pub requested_by: &'a str,
    pub requested_at: i64,
    pub reason: Option<String>,
    pub status: PromotionStatus,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
}

/// A promotion with what approving it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    pub release_id: String,
    pub to_channel: String,
    pub requested_by: String,
    /// As stored: pending, approved, emergency_unapproved, emergency_approved, superseded.
    pub status: String,
    pub published_by: String,
    pub withdrawn_at: Option<i64>,
}

/// The channel before another one, and since when a release is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousChannel {
    pub name: String,
    pub since: Option<i64>,
}

/// The pending promotion of `release_id` to `to_channel`, if any.
pub async fn pending(
    tx: &mut Tx,
    release_id: &str,
    to_channel: &str,
) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM promotions WHERE release_id = $1 AND to_channel = $2 AND status = 'pending'",
    )
    .bind(release_id)
    .bind(to_channel)
    .fetch_optional(&mut **tx)
    .await?)
}

pub async fn supersede(tx: &mut Tx, id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE promotions SET status = 'superseded' WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn insert(tx: &mut Tx, p: &NewPromotion<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO promotions (id, release_id, to_channel, requested_by, requested_at, reason, status, approved_by, approved_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(p.id)
    .bind(p.release_id)
    .bind(p.to_channel)
    .bind(p.requested_by)
    .bind(p.requested_at)
    .bind(p.reason.clone())
    .bind(status_name(p.status))
    .bind(p.approved_by.clone())
    .bind(p.approved_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Since when release `release_id` is in `channel`, if it is.
pub async fn in_channel_since(
    tx: &mut Tx,
    release_id: &str,
    channel: &str,
) -> Result<Option<i64>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT since FROM release_channels WHERE release_id = $1 AND channel = $2",
    )
    .bind(release_id)
    .bind(channel)
    .fetch_optional(&mut **tx)
    .await?)
}

/// The channel at `position` and since when `release_id` is in it.
pub async fn channel_at(
    tx: &mut Tx,
    release_id: &str,
    position: i64,
) -> Result<Option<PreviousChannel>, Error> {
    let Some(row) = sqlx::query(
        "SELECT c.name AS name, rc.since AS since FROM channels c LEFT JOIN release_channels rc ON rc.channel = c.name AND rc.release_id = $1 WHERE c.position = $2",
    )
    .bind(release_id)
    .bind(position)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(PreviousChannel {
        name: row.try_get("name")?,
        since: row.try_get("since")?,
    }))
}

pub async fn for_approval(tx: &mut Tx, id: &str) -> Result<Option<ApprovalRow>, Error> {
    let Some(row) = sqlx::query(
        "SELECT p.release_id AS release_id, p.to_channel AS to_channel, p.requested_by AS requested_by, p.status AS status, r.published_by AS published_by, r.withdrawn_at AS withdrawn_at FROM promotions p JOIN releases r ON r.id = p.release_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(ApprovalRow {
        release_id: row.try_get("release_id")?,
        to_channel: row.try_get("to_channel")?,
        requested_by: row.try_get("requested_by")?,
        status: row.try_get("status")?,
        published_by: row.try_get("published_by")?,
        withdrawn_at: row.try_get("withdrawn_at")?,
    }))
}

/// Clears the awaiting-approval flag of an emergency entry of `release_id` in `channel`.
pub async fn clear_awaiting(tx: &mut Tx, release_id: &str, channel: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE release_channels SET awaiting_approval = 0 WHERE release_id = $1 AND channel = $2",
    )
    .bind(release_id)
    .bind(channel)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn set_approved(
    tx: &mut Tx,
    id: &str,
    status: PromotionStatus,
    by: &str,
    now: i64,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE promotions SET status = $1, approved_by = $2, approved_at = $3 WHERE id = $4",
    )
    .bind(status_name(status))
    .bind(by)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Promotion>, Error> {
    sqlx::query(
        "SELECT p.*, r.build_id AS build_id, r.level AS level FROM promotions p JOIN releases r ON r.id = p.release_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .as_ref()
    .map(promotion_row)
    .transpose()
}

/// All promotions, newest first.
pub async fn list(db: &Db) -> Result<Vec<Promotion>, Error> {
    let rows = sqlx::query(
        "SELECT p.*, r.build_id AS build_id, r.level AS level FROM promotions p JOIN releases r ON r.id = p.release_id ORDER BY p.requested_at DESC, p.id",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(promotion_row).collect()
}
