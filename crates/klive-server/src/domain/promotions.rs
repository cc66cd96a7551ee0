//! Promotion of a release into a channel with maker-checker approval, and emergency promotion.

use super::*;

/// Promotion of a release into a channel with maker-checker approval, and emergency promotion.
#[derive(Debug, Clone, Copy)]
pub struct Promotions<'a>(pub(super) &'a Service);

impl std::ops::Deref for Promotions<'_> {
    type Target = Service;
    fn deref(&self) -> &Service {
        self.0
    }
}

impl Promotions<'_> {
    /// Asks for a release to enter the next channel. An approver who did not publish the
    /// release promotes at once (they are the checker); anyone else creates a pending request
    /// that a different approver must approve. `emergency` skips approval and soak time, needs
    /// a reason, and stays flagged until approved afterwards.
    pub async fn promote(
        self,
        by: &AuthUser,
        build_id: &BuildId,
        level: PatchLevel,
        req: &PromoteRequest,
    ) -> Result<Promotion, Error> {
        by.require(Role::Publisher)?;
        let reason = nonblank(req.reason.as_deref());
        if req.emergency {
            by.require(Role::Approver)?;
            if reason.is_none() {
                return Err(Error::BadRequest(
                    "an emergency promotion needs a reason; give --reason".into(),
                ));
            }
        }
        let id = release_id(build_id, level);
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let (published_by, withdrawn) = release_state(&mut tx, &id, build_id, level).await?;
        if withdrawn {
            return Err(Error::Withdrawn {
                build_id: build_id.to_string(),
                level: level.get(),
            });
        }
        let to = self.channels().channel(&mut tx, &req.to).await?;
        let prev_since = self.check_order(&mut tx, &id, &to).await?;
        let pending: Option<String> = sqlx::query_scalar(
            "SELECT id FROM promotions WHERE release_id = $1 AND to_channel = $2 AND status = 'pending'",
        )
        .bind(&id)
        .bind(&to.name)
        .fetch_optional(&mut *tx)
        .await?;
        let promotion_id = new_id()?;
        let immediate = req.emergency || (by.role >= Role::Approver && by.name != published_by);
        let status = if req.emergency {
            PromotionStatus::EmergencyUnapproved
        } else if immediate {
            check_soak(&to, prev_since, now)?;
            PromotionStatus::Approved
        } else {
            PromotionStatus::Pending
        };
        if let Some(existing) = pending {
            if status == PromotionStatus::Pending {
                return Err(Error::PromotionRefused(format!(
                    "a promotion of this release to {} is already pending (id {existing}); an approver must approve it",
                    to.name
                )));
            }
            // Superseded by this effective promotion.
            sqlx::query("UPDATE promotions SET status = 'superseded' WHERE id = $1")
                .bind(&existing)
                .execute(&mut *tx)
                .await?;
        }
        if immediate {
            sqlx::query(
                "INSERT INTO release_channels (release_id, channel, since, emergency, awaiting_approval) VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(&id)
            .bind(&to.name)
            .bind(now)
            .bind(i64::from(req.emergency))
            .execute(&mut *tx)
            .await?;
            self.resign(&mut tx, &[&to.name], now).await?;
        }
        let approved_by = (status == PromotionStatus::Approved).then(|| by.name.clone());
        sqlx::query(
            "INSERT INTO promotions (id, release_id, to_channel, requested_by, requested_at, reason, status, approved_by, approved_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&promotion_id)
        .bind(&id)
        .bind(&to.name)
        .bind(&by.name)
        .bind(now)
        .bind(reason.clone())
        .bind(status_name(status))
        .bind(approved_by.clone())
        .bind(approved_by.as_ref().map(|_| now))
        .execute(&mut *tx)
        .await?;
        let action = match status {
            PromotionStatus::EmergencyUnapproved => "promotion.emergency",
            PromotionStatus::Approved => "promotion.approve",
            _ => "promotion.request",
        };
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            action,
            &id,
            json!({"promotion": promotion_id, "to": to.name, "reason": reason}),
        )
        .await?;
        tx.commit().await?;
        self.release_cache.invalidate();
        self.get(&promotion_id).await
    }

    /// Checks that `to` follows a channel the release is in and that it is not in `to` yet;
    /// returns when the release entered the previous channel.
    async fn check_order(self, tx: &mut Tx, id: &str, to: &Channel) -> Result<i64, Error> {
        if to.position == 0 {
            return Err(Error::PromotionRefused(format!(
                "{} is the first channel: releases enter it when published",
                to.name
            )));
        }
        let already: Option<i64> = sqlx::query_scalar(
            "SELECT since FROM release_channels WHERE release_id = $1 AND channel = $2",
        )
        .bind(id)
        .bind(&to.name)
        .fetch_optional(&mut **tx)
        .await?;
        if already.is_some() {
            return Err(Error::PromotionRefused(format!(
                "the release is already in {}",
                to.name
            )));
        }
        let prev = sqlx::query(
            "SELECT c.name AS name, rc.since AS since FROM channels c LEFT JOIN release_channels rc ON rc.channel = c.name AND rc.release_id = $1 WHERE c.position = $2",
        )
        .bind(id)
        .bind(i64::from(to.position) - 1)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::Corrupt(format!("no channel before {}", to.name)))?;
        let prev_name: String = prev.try_get("name")?;
        let since: Option<i64> = prev.try_get("since")?;
        since.ok_or_else(|| {
            Error::PromotionRefused(format!(
                "the release is not in {prev_name} yet; promote it there before {}",
                to.name
            ))
        })
    }

    /// Approves a pending promotion (making it effective) or an emergency one afterwards.
    /// The approver must differ from the publisher and from whoever asked.
    pub async fn approve(self, by: &AuthUser, promotion_id: &str) -> Result<Promotion, Error> {
        by.require(Role::Approver)?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let row = sqlx::query(
            "SELECT p.release_id AS release_id, p.to_channel AS to_channel, p.requested_by AS requested_by, p.status AS status, r.published_by AS published_by, r.withdrawn_at AS withdrawn_at FROM promotions p JOIN releases r ON r.id = p.release_id WHERE p.id = $1",
        )
        .bind(promotion_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::PromotionNotFound(promotion_id.to_owned()))?;
        let release: String = row.try_get("release_id")?;
        let to_name: String = row.try_get("to_channel")?;
        let requested_by: String = row.try_get("requested_by")?;
        let published_by: String = row.try_get("published_by")?;
        let status: String = row.try_get("status")?;
        if by.name == published_by {
            return Err(Error::MakerChecker(format!(
                "{} published this release, so a different approver must approve its promotion",
                by.name
            )));
        }
        if by.name == requested_by {
            return Err(Error::MakerChecker(format!(
                "{} asked for this promotion, so a different approver must approve it",
                by.name
            )));
        }
        let new_status = match status.as_str() {
            "pending" => {
                if row.try_get::<Option<i64>, _>("withdrawn_at")?.is_some() {
                    return Err(Error::PromotionRefused(
                        "the release was withdrawn; it cannot be promoted".into(),
                    ));
                }
                let to = self.channels().channel(&mut tx, &to_name).await?;
                let prev_since = self.check_order(&mut tx, &release, &to).await?;
                check_soak(&to, prev_since, now)?;
                sqlx::query(
                    "INSERT INTO release_channels (release_id, channel, since, emergency, awaiting_approval) VALUES ($1, $2, $3, 0, 0)",
                )
                .bind(&release)
                .bind(&to_name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                self.resign(&mut tx, &[&to_name], now).await?;
                PromotionStatus::Approved
            }
            "emergency_unapproved" => {
                sqlx::query(
                    "UPDATE release_channels SET awaiting_approval = 0 WHERE release_id = $1 AND channel = $2",
                )
                .bind(&release)
                .bind(&to_name)
                .execute(&mut *tx)
                .await?;
                PromotionStatus::EmergencyApproved
            }
            other => {
                return Err(Error::PromotionRefused(format!(
                    "promotion {promotion_id} is {other}; there is nothing to approve"
                )));
            }
        };
        sqlx::query(
            "UPDATE promotions SET status = $1, approved_by = $2, approved_at = $3 WHERE id = $4",
        )
        .bind(status_name(new_status))
        .bind(&by.name)
        .bind(now)
        .bind(promotion_id)
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "promotion.approve",
            &release,
            json!({"promotion": promotion_id, "to": to_name, "was": status}),
        )
        .await?;
        tx.commit().await?;
        self.release_cache.invalidate();
        self.get(promotion_id).await
    }

    pub async fn get(self, id: &str) -> Result<Promotion, Error> {
        let row = sqlx::query(
            "SELECT p.*, r.build_id AS build_id, r.level AS level FROM promotions p JOIN releases r ON r.id = p.release_id WHERE p.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| Error::PromotionNotFound(id.to_owned()))?;
        promotion_row(&row)
    }

    /// All promotions, newest first.
    pub async fn list(self) -> Result<Vec<Promotion>, Error> {
        let rows = sqlx::query(
            "SELECT p.*, r.build_id AS build_id, r.level AS level FROM promotions p JOIN releases r ON r.id = p.release_id ORDER BY p.requested_at DESC, p.id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(promotion_row).collect()
    }
}
