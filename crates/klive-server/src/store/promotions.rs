//! Promotion requests of releases into channels and their approval.

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
        PromotionStatus::Superseded => "superseded",
    }
}

/// A promotion as stored, with its release's build-id and level.
#[derive(sqlx::FromRow)]
struct StoredPromotion {
    status: String,
    build_id: String,
    id: String,
    level: i64,
    to_channel: String,
    requested_by: String,
    requested_at: i64,
    reason: Option<String>,
    approved_by: Option<String>,
    approved_at: Option<i64>,
}

impl TryFrom<StoredPromotion> for Promotion {
    type Error = Error;

    fn try_from(p: StoredPromotion) -> Result<Promotion, Error> {
        let status = match p.status.as_str() {
            "pending" => PromotionStatus::Pending,
            "approved" => PromotionStatus::Approved,
            "emergency_unapproved" => PromotionStatus::EmergencyUnapproved,
            "emergency_approved" => PromotionStatus::EmergencyApproved,
            "superseded" => PromotionStatus::Superseded,
            other => {
                return Err(Error::Corrupt(format!(
                    "unknown promotion status {other:?}"
                )));
            }
        };
        let build_id = p.build_id;
        Ok(Promotion {
            id: p.id,
            build_id: build_id
                .parse()
                .map_err(|_| Error::Corrupt(format!("stored build-id {build_id:?}")))?,
            level: level_from_db(p.level)?,
            to: p.to_channel,
            requested_by: p.requested_by,
            requested_at: rfc3339(p.requested_at),
            reason: p.reason,
            status,
            approved_by: p.approved_by,
            approved_at: p.approved_at.map(rfc3339),
        })
    }
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
    Ok(sqlx::query_as::<_, PreviousChannel>(
        "SELECT c.name AS name, rc.since AS since FROM channels c LEFT JOIN release_channels rc ON rc.channel = c.name AND rc.release_id = $1 WHERE c.position = $2",
    )
    .bind(release_id)
    .bind(position)
    .fetch_optional(&mut **tx)
    .await?)
}

pub async fn for_approval(tx: &mut Tx, id: &str) -> Result<Option<ApprovalRow>, Error> {
    Ok(sqlx::query_as::<_, ApprovalRow>(
        "SELECT p.release_id AS release_id, p.to_channel AS to_channel, p.requested_by AS requested_by, p.status AS status, r.published_by AS published_by, r.withdrawn_at AS withdrawn_at FROM promotions p JOIN releases r ON r.id = p.release_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
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
    sqlx::query_as::<_, StoredPromotion>(
        "SELECT p.*, r.build_id AS build_id, r.level AS level FROM promotions p JOIN releases r ON r.id = p.release_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .map(Promotion::try_from)
    .transpose()
}

/// All promotions, newest first.
pub async fn list(db: &Db) -> Result<Vec<Promotion>, Error> {
    sqlx::query_as::<_, StoredPromotion>(
        "SELECT p.*, r.build_id AS build_id, r.level AS level FROM promotions p JOIN releases r ON r.id = p.release_id ORDER BY p.requested_at DESC, p.id",
    )
    .fetch_all(&db.pool)
    .await?
    .into_iter()
    .map(Promotion::try_from)
    .collect()
}
