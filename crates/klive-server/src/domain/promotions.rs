//! Promotion of a release into a channel with maker-checker approval, and emergency promotion.

use super::*;

domain_service! {
    /// Promotion of a release into a channel with maker-checker approval, and emergency promotion.
    Promotions
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
        let pending = store::promotions::pending(&mut tx, &id, &to.name).await?;
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
            // Superseded by this effective promotion, in the same transaction as its record.
            store::promotions::supersede(&mut tx, &existing).await?;
            audit::append(
                &mut tx,
                now,
                &by.actor(),
                "promotion.superseded",
                &id,
                json!({"promotion": existing, "superseded_by": promotion_id, "to": to.name}),
            )
            .await?;
        }
        if immediate {
            store::releases::enter_channel_flagged(&mut tx, &id, &to.name, now, req.emergency)
                .await?;
            self.resign(&mut tx, &[&to.name], now).await?;
        }
        let approved_by = (status == PromotionStatus::Approved).then(|| by.name.clone());
        store::promotions::insert(
            &mut tx,
            &store::promotions::NewPromotion {
                id: &promotion_id,
                release_id: &id,
                to_channel: &to.name,
                requested_by: &by.name,
                requested_at: now,
                reason: reason.clone(),
                status,
                approved_by: approved_by.clone(),
                approved_at: approved_by.as_ref().map(|_| now),
            },
        )
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
        let already = store::promotions::in_channel_since(tx, id, &to.name).await?;
        if already.is_some() {
            return Err(Error::PromotionRefused(format!(
                "the release is already in {}",
                to.name
            )));
        }
        let prev = store::promotions::channel_at(tx, id, i64::from(to.position) - 1)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("no channel before {}", to.name)))?;
        prev.since.ok_or_else(|| {
            Error::PromotionRefused(format!(
                "the release is not in {} yet; promote it there before {}",
                prev.name, to.name
            ))
        })
    }

    /// Approves a pending promotion (making it effective) or an emergency one afterwards.
    /// The approver must differ from the publisher and from whoever asked.
    pub async fn approve(self, by: &AuthUser, promotion_id: &str) -> Result<Promotion, Error> {
        by.require(Role::Approver)?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let store::promotions::ApprovalRow {
            release_id: release,
            to_channel: to_name,
            requested_by,
            status,
            published_by,
            withdrawn_at,
        } = store::promotions::for_approval(&mut tx, promotion_id)
            .await?
            .ok_or_else(|| Error::PromotionNotFound(promotion_id.to_owned()))?;
        let maker_checker = if by.name == published_by {
            Some(format!(
                "{} published this release, so a different approver must approve its promotion",
                by.name
            ))
        } else if by.name == requested_by {
            Some(format!(
                "{} asked for this promotion, so a different approver must approve it",
                by.name
            ))
        } else {
            None
        };
        if let Some(reason) = maker_checker {
            // Nothing changed: the refusal is recorded after this transaction rolls back.
            drop(tx);
            let refusal = Error::MakerChecker(reason);
            self.audit_refusal(
                by,
                "promotion.refused",
                "promotion.approve",
                promotion_id,
                &refusal,
            )
            .await;
            return Err(refusal);
        }
        let new_status = match status.as_str() {
            "pending" => {
                if withdrawn_at.is_some() {
                    return Err(Error::PromotionRefused(
                        "the release was withdrawn; it cannot be promoted".into(),
                    ));
                }
                let to = self.channels().channel(&mut tx, &to_name).await?;
                let prev_since = self.check_order(&mut tx, &release, &to).await?;
                check_soak(&to, prev_since, now)?;
                store::releases::enter_channel(&mut tx, &release, &to_name, now).await?;
                self.resign(&mut tx, &[&to_name], now).await?;
                PromotionStatus::Approved
            }
            "emergency_unapproved" => {
                store::promotions::clear_awaiting(&mut tx, &release, &to_name).await?;
                PromotionStatus::EmergencyApproved
            }
            other => {
                return Err(Error::PromotionRefused(format!(
                    "promotion {promotion_id} is {other}; there is nothing to approve"
                )));
            }
        };
        store::promotions::set_approved(&mut tx, promotion_id, new_status, &by.name, now).await?;
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
        store::promotions::get(&self.db, id)
            .await?
            .ok_or_else(|| Error::PromotionNotFound(id.to_owned()))
    }

    /// All promotions, newest first.
    pub async fn list(self) -> Result<Vec<Promotion>, Error> {
        store::promotions::list(&self.db).await
    }
}
