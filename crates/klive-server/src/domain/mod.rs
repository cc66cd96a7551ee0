//! The server's domain: users and tokens, channels, releases and their promotion, hosts and
//! their check-ins. Every method checks the caller's role, runs in one transaction and, when it
//! changes anything, appends to the audit log in that same transaction.

mod auth_failures;
pub mod checkin;
pub mod modinfo;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyRow;

use klive_format::api::{
    Action, AppliedReport, BlobStored, Channel, ChannelEntry, ChannelRequest, CheckIn,
    CheckInResponse, ENROLLMENT_TOKEN_PREFIX, EnrollTokenCreated, EnrollTokenRequest, FleetGroup,
    FleetSummary, HOST_CREDENTIAL_PREFIX, HostInfo, HostListQuery, HostPolicy, PromoteRequest,
    Promotion, PromotionStatus, RegisterRequest, RegisterResponse, ReleaseInfo, Role,
    TargetRelease, TokenCreated, USER_TOKEN_PREFIX, User, Withdrawal,
};
use klive_format::release::ReleaseManifest;
use klive_format::status::PatchState;
use klive_format::{BuildId, PatchLevel, modinfo as tags};

use crate::clock::{Clock, rfc3339};
use crate::domain::checkin::release_cache::{Candidate, ReleaseCache};
use crate::error::{Error, on_unique};
use crate::store::audit::{self, Actor};
use crate::store::blobs::Blobs;
use crate::store::db::{Db, Tx};
use crate::trust::secrets::{new_id, new_secret, sha256_hex};
use crate::trust::tuf::Signer;

/// Longest accepted enrollment token lifetime: one year.
pub const MAX_ENROLL_SECS: u64 = 366 * 24 * 3600;

/// An authenticated admin user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub name: String,
    pub role: Role,
}

impl AuthUser {
    fn actor(&self) -> Actor {
        Actor::User(self.name.clone())
    }

    fn require(&self, needed: Role) -> Result<(), Error> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Error::Forbidden {
                needed: needed.as_str(),
            })
        }
    }
}

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

#[derive(Debug, Clone)]
pub struct Service {
    pub db: Db,
    pub blobs: Blobs,
    pub clock: Clock,
    /// Suggested time between check-ins, sent to agents.
    pub checkin_interval_secs: u64,
    /// Signs each channel's TUF metadata; `None` until `keys init`.
    pub signer: Option<Arc<Signer>>,
    /// Writes check-ins in batches, see [`crate::domain::checkin::group_commit`].
    checkins: crate::domain::checkin::group_commit::Writer,
    /// What check-ins choose from, see [`crate::domain::checkin::release_cache`].
    release_cache: ReleaseCache,
    /// Rate limit of the audit records of failed sign-ins.
    failed_auth: crate::domain::auth_failures::FailedAuth,
}

fn release_id(build_id: &BuildId, level: PatchLevel) -> String {
    format!("{build_id}-{level}")
}

fn state_name(s: PatchState) -> &'static str {
    match s {
        PatchState::Applied => "applied",
        PatchState::Patching => "patching",
        PatchState::Unpatching => "unpatching",
        PatchState::Disabled => "disabled",
    }
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

fn level_from_db(v: i64) -> Result<PatchLevel, Error> {
    u32::try_from(v)
        .ok()
        .and_then(|v| PatchLevel::new(v).ok())
        .ok_or_else(|| Error::Corrupt(format!("stored level {v} is out of range")))
}

fn secs_to_i64(v: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(v)
        .ok()
        .filter(|v| *v <= 100 * 365 * 24 * 3600)
        .ok_or_else(|| Error::BadRequest(format!("{what} {v} is too large")))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

fn nonblank(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl Service {
    pub fn new(db: Db, blobs: Blobs) -> Service {
        Service {
            db,
            blobs,
            clock: Clock::default(),
            checkin_interval_secs: 3600,
            signer: None,
            checkins: crate::domain::checkin::group_commit::Writer::default(),
            release_cache: ReleaseCache::default(),
            failed_auth: crate::domain::auth_failures::FailedAuth::default(),
        }
    }

    pub fn with_signer(mut self, signer: Option<Signer>) -> Service {
        self.signer = signer.map(Arc::new);
        self
    }

    /// Re-signs the TUF metadata of `channels` inside `tx` (no-op before `keys init`).
    async fn resign(&self, tx: &mut Tx, channels: &[&str], now: i64) -> Result<(), Error> {
        if let Some(signer) = &self.signer {
            for channel in channels {
                signer.regenerate(tx, channel, now).await?;
            }
        }
        Ok(())
    }

    /// Re-signs every channel whose timestamp is missing or past half its lifetime (all of them
    /// with `force`); returns the channels re-signed. The server calls this periodically so
    /// agents never see an expired timestamp while it runs.
    pub async fn tuf_refresh(&self, force: bool) -> Result<Vec<String>, Error> {
        let Some(signer) = &self.signer else {
            return Ok(Vec::new());
        };
        let now = self.now();
        let half = signer.lifetimes.timestamp_secs * 1000 / 2;
        let mut done = Vec::new();
        for channel in self.channels().await? {
            let expires: Option<i64> = sqlx::query_scalar(
                "SELECT expires_at FROM tuf_metadata WHERE channel = $1 AND name = 'timestamp.json'",
            )
            .bind(&channel.name)
            .fetch_optional(&self.db.pool)
            .await?
            .flatten();
            if !force && expires.is_some_and(|e| e - now > half) {
                continue;
            }
            let mut tx = self.db.begin_audited().await?;
            signer.regenerate(&mut tx, &channel.name, now).await?;
            audit::append(
                &mut tx,
                now,
                &Actor::System,
                "tuf.refresh",
                &channel.name,
                json!({}),
            )
            .await?;
            tx.commit().await?;
            done.push(channel.name);
        }
        Ok(done)
    }

    /// Appends one audit record by the system (an operator's command on the server itself).
    pub async fn record_system_event(
        &self,
        action: &str,
        object: &str,
        detail: serde_json::Value,
    ) -> Result<(), Error> {
        let mut tx = self.db.begin_audited().await?;
        audit::append(&mut tx, self.now(), &Actor::System, action, object, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    // ------------------------------------------------------------------------------------------
    // Users and tokens

    /// Adds a user. `by` is `None` only for the local operator bootstrapping the first admin
    /// through the CLI (recorded as `system`).
    pub async fn add_user(
        &self,
        by: Option<&AuthUser>,
        name: &str,
        role: Role,
    ) -> Result<User, Error> {
        if let Some(u) = by {
            u.require(Role::Admin)?;
        }
        if !valid_name(name) {
            return Err(Error::BadUserName(name.to_owned()));
        }
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        sqlx::query("INSERT INTO users (name, role, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(role.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| on_unique(e, Error::UserExists(name.to_owned())))?;
        let actor = by.map_or(Actor::System, AuthUser::actor);
        audit::append(
            &mut tx,
            now,
            &actor,
            "user.add",
            name,
            json!({"role": role.as_str()}),
        )
        .await?;
        tx.commit().await?;
        Ok(User {
            name: name.to_owned(),
            role,
            created_at: rfc3339(now),
        })
    }

    pub async fn users(&self, by: &AuthUser) -> Result<Vec<User>, Error> {
        by.require(Role::Admin)?;
        let rows = sqlx::query("SELECT name, role, created_at FROM users ORDER BY name")
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let role: String = r.try_get("role")?;
                Ok(User {
                    name: r.try_get("name")?,
                    role: Role::parse(&role)
                        .ok_or_else(|| Error::Corrupt(format!("unknown stored role {role:?}")))?,
                    created_at: rfc3339(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    /// Creates an API token for `user`; only its hash is kept.
    pub async fn create_token(
        &self,
        by: Option<&AuthUser>,
        user: &str,
    ) -> Result<TokenCreated, Error> {
        if let Some(u) = by {
            u.require(Role::Admin)?;
        }
        self.user_by_name(user).await?;
        let token = new_secret(USER_TOKEN_PREFIX)?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_name, created_at) VALUES ($1, $2, $3)",
        )
        .bind(sha256_hex(token.as_bytes()))
        .bind(user)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let actor = by.map_or(Actor::System, AuthUser::actor);
        audit::append(&mut tx, now, &actor, "token.create", user, json!({})).await?;
        tx.commit().await?;
        Ok(TokenCreated {
            user: user.to_owned(),
            token,
        })
    }

    /// Revokes every API token of `user`; returns how many were active.
    pub async fn revoke_tokens(&self, by: Option<&AuthUser>, user: &str) -> Result<u64, Error> {
        if let Some(u) = by {
            u.require(Role::Admin)?;
        }
        self.user_by_name(user).await?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let n = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let actor = by.map_or(Actor::System, AuthUser::actor);
        audit::append(
            &mut tx,
            now,
            &actor,
            "token.revoke",
            user,
            json!({"revoked": n}),
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn user_by_name(&self, name: &str) -> Result<AuthUser, Error> {
        let row = sqlx::query("SELECT name, role FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| Error::UserNotFound(name.to_owned()))?;
        auth_user(&row)
    }

    /// The user holding this API token. A failure is audited (at most once a minute per
    /// kind of token, see [`crate::domain::auth_failures`]).
    pub async fn authenticate_user(&self, token: &str) -> Result<AuthUser, Error> {
        if !token.starts_with(USER_TOKEN_PREFIX) {
            self.audit_failed_auth("malformed token").await;
            return Err(Error::Unauthenticated);
        }
        let row = sqlx::query(
            "SELECT u.name AS name, u.role AS role FROM api_tokens t JOIN users u ON u.name = t.user_name WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        )
        .bind(sha256_hex(token.as_bytes()))
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            self.audit_failed_auth("api token").await;
            return Err(Error::Unauthenticated);
        };
        auth_user(&row)
    }

    async fn audit_failed_auth(&self, kind: &'static str) {
        let now = self.now();
        let Some(failures) = self.failed_auth.note(kind, now) else {
            return;
        };
        let record = async {
            let mut tx = self.db.begin_audited().await?;
            audit::append(
                &mut tx,
                now,
                &Actor::System,
                "auth.failed",
                kind,
                json!({"failures": failures, "window_secs": crate::domain::auth_failures::WINDOW_MS / 1000}),
            )
            .await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        };
        if let Err(e) = record.await {
            // The caller is refused either way; the failure stays in the server's log.
            tracing::warn!(kind, failures, "recording a failed sign-in failed: {e}");
        }
    }

    // ------------------------------------------------------------------------------------------
    // Channels

    pub async fn channels(&self) -> Result<Vec<Channel>, Error> {
        let rows =
            sqlx::query("SELECT name, position, min_soak_secs FROM channels ORDER BY position")
                .fetch_all(&self.db.pool)
                .await?;
        rows.iter().map(channel_row).collect()
    }

    async fn channel(&self, tx: &mut Tx, name: &str) -> Result<Channel, Error> {
        let row = sqlx::query("SELECT name, position, min_soak_secs FROM channels WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Error::ChannelNotFound(name.to_owned()))?;
        channel_row(&row)
    }

    /// Appends a channel after the last one.
    pub async fn add_channel(&self, by: &AuthUser, req: &ChannelRequest) -> Result<Channel, Error> {
        by.require(Role::Admin)?;
        if !valid_name(&req.name) {
            return Err(Error::BadRequest(format!(
                "channel name {:?} must be 1 to 64 characters of [a-z0-9._-]",
                req.name
            )));
        }
        let soak = secs_to_i64(req.min_soak_secs, "min_soak_secs")?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position) + 1, 0) FROM channels")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO channels (name, position, min_soak_secs) VALUES ($1, $2, $3)")
            .bind(&req.name)
            .bind(next)
            .bind(soak)
            .execute(&mut *tx)
            .await
            .map_err(|e| on_unique(e, Error::ChannelExists(req.name.clone())))?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "channel.add",
            &req.name,
            json!({"position": next, "min_soak_secs": soak}),
        )
        .await?;
        tx.commit().await?;
        Ok(Channel {
            name: req.name.clone(),
            position: next as u32,
            min_soak_secs: req.min_soak_secs,
        })
    }

    /// Sets how long a release must spend in the previous channel before entering this one.
    pub async fn set_channel_soak(
        &self,
        by: &AuthUser,
        name: &str,
        secs: u64,
    ) -> Result<Channel, Error> {
        by.require(Role::Admin)?;
        let soak = secs_to_i64(secs, "min_soak_secs")?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let mut channel = self.channel(&mut tx, name).await?;
        sqlx::query("UPDATE channels SET min_soak_secs = $1 WHERE name = $2")
            .bind(soak)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "channel.set_soak",
            name,
            json!({"min_soak_secs": soak}),
        )
        .await?;
        tx.commit().await?;
        channel.min_soak_secs = secs;
        Ok(channel)
    }

    // ------------------------------------------------------------------------------------------
    // Releases

    /// Stores a module under its digest. Nothing becomes visible until a release names it.
    pub async fn store_blob(&self, by: &AuthUser, bytes: Bytes) -> Result<BlobStored, Error> {
        by.require(Role::Publisher)?;
        if bytes.is_empty() {
            return Err(Error::InvalidModule("the upload is empty".into()));
        }
        let size = bytes.len() as u64;
        let sha256 = self.blobs.put(bytes).await?;
        Ok(BlobStored { sha256, size })
    }

    /// Uploads the module and publishes its release: the blob is written first, then one
    /// transaction makes the release visible, so a crash in between leaves only an unused blob.
    pub async fn publish_with_module(
        &self,
        by: &AuthUser,
        manifest: ReleaseManifest,
        module: Bytes,
    ) -> Result<ReleaseInfo, Error> {
        by.require(Role::Publisher)?;
        manifest.validate()?;
        check_module(&manifest, &module)?;
        self.refuse_duplicate(&manifest).await?;
        self.blobs.put(module.clone()).await?;
        self.commit_release(by, manifest, &module).await
    }

    /// Publishes a release whose module was uploaded before (`POST /api/v1/blobs`).
    pub async fn publish(
        &self,
        by: &AuthUser,
        manifest: ReleaseManifest,
    ) -> Result<ReleaseInfo, Error> {
        by.require(Role::Publisher)?;
        manifest.validate()?;
        let module = self.blobs.get(&manifest.module.sha256).await?;
        check_module(&manifest, &module)?;
        self.commit_release(by, manifest, &module).await
    }

    async fn refuse_duplicate(&self, m: &ReleaseManifest) -> Result<(), Error> {
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM releases WHERE id = $1")
            .bind(release_id(&m.kernel.build_id, m.level))
            .fetch_optional(&self.db.pool)
            .await?;
        if exists.is_some() {
            return Err(Error::DuplicateRelease {
                build_id: m.kernel.build_id.to_string(),
                level: m.level.get(),
            });
        }
        Ok(())
    }

    async fn commit_release(
        &self,
        by: &AuthUser,
        manifest: ReleaseManifest,
        _module: &[u8],
    ) -> Result<ReleaseInfo, Error> {
        let id = release_id(&manifest.kernel.build_id, manifest.level);
        let duplicate = || Error::DuplicateRelease {
            build_id: manifest.kernel.build_id.to_string(),
            level: manifest.level.get(),
        };
        let manifest_json = serde_json::to_string(&manifest)
            .map_err(|e| Error::Corrupt(format!("serialising a manifest: {e}")))?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let first: String =
            sqlx::query_scalar("SELECT name FROM channels ORDER BY position LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::Config("no channel is configured; add one first".into()))?;
        sqlx::query(
            "INSERT INTO releases (id, build_id, level, module_name, module_sha256, module_size, manifest, published_by, published_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(manifest.kernel.build_id.as_str())
        .bind(i64::from(manifest.level.get()))
        .bind(&manifest.module_name)
        .bind(&manifest.module.sha256)
        .bind(manifest.module.size as i64)
        .bind(&manifest_json)
        .bind(&by.name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| on_unique(e, duplicate()))?;
        sqlx::query(
            "INSERT INTO release_channels (release_id, channel, since, emergency, awaiting_approval) VALUES ($1, $2, $3, 0, 0)",
        )
        .bind(&id)
        .bind(&first)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.resign(&mut tx, &[&first], now).await?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "release.publish",
            &id,
            json!({"sha256": manifest.module.sha256, "size": manifest.module.size, "channel": first,
                   "fixes": manifest.fixes.iter().map(|f| f.cve.clone()).collect::<Vec<_>>()}),
        )
        .await?;
        tx.commit().await?;
        self.release_cache.invalidate();
        tracing::info!(release = %id, channel = %first, by = %by.name, "release published");
        self.release(&manifest.kernel.build_id, manifest.level)
            .await
    }

    pub async fn releases(&self) -> Result<Vec<ReleaseInfo>, Error> {
        let rows = sqlx::query("SELECT * FROM releases ORDER BY build_id, level")
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.release_info(row).await?);
        }
        Ok(out)
    }

    pub async fn release(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<ReleaseInfo, Error> {
        let row = sqlx::query("SELECT * FROM releases WHERE id = $1")
            .bind(release_id(build_id, level))
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| not_found(build_id, level))?;
        self.release_info(&row).await
    }

    async fn release_info(&self, row: &AnyRow) -> Result<ReleaseInfo, Error> {
        let id: String = row.try_get("id")?;
        let manifest: String = row.try_get("manifest")?;
        let manifest: ReleaseManifest = serde_json::from_str(&manifest)
            .map_err(|e| Error::Corrupt(format!("stored manifest of {id}: {e}")))?;
        let entries = sqlx::query(
            "SELECT rc.channel AS channel, rc.since AS since, rc.emergency AS emergency, rc.awaiting_approval AS awaiting FROM release_channels rc JOIN channels c ON c.name = rc.channel WHERE rc.release_id = $1 ORDER BY c.position",
        )
        .bind(&id)
        .fetch_all(&self.db.pool)
        .await?;
        let channels = entries
            .iter()
            .map(|e| {
                Ok(ChannelEntry {
                    channel: e.try_get("channel")?,
                    since: rfc3339(e.try_get("since")?),
                    emergency: e.try_get::<i64, _>("emergency")? != 0,
                    awaiting_approval: e.try_get::<i64, _>("awaiting")? != 0,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let withdrawn_at: Option<i64> = row.try_get("withdrawn_at")?;
        let withdrawn = match withdrawn_at {
            Some(at) => Some(Withdrawal {
                at: rfc3339(at),
                by: row
                    .try_get::<Option<String>, _>("withdrawn_by")?
                    .unwrap_or_default(),
                reason: row
                    .try_get::<Option<String>, _>("withdraw_reason")?
                    .unwrap_or_default(),
            }),
            None => None,
        };
        Ok(ReleaseInfo {
            manifest,
            published_by: row.try_get("published_by")?,
            published_at: rfc3339(row.try_get("published_at")?),
            channels,
            withdrawn,
        })
    }

    /// Asks for a release to enter the next channel. An approver who did not publish the
    /// release promotes at once (they are the checker); anyone else creates a pending request
    /// that a different approver must approve. `emergency` skips approval and soak time, needs
    /// a reason, and stays flagged until approved afterwards.
    pub async fn promote(
        &self,
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
        let to = self.channel(&mut tx, &req.to).await?;
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
        self.promotion(&promotion_id).await
    }

    /// Checks that `to` follows a channel the release is in and that it is not in `to` yet;
    /// returns when the release entered the previous channel.
    async fn check_order(&self, tx: &mut Tx, id: &str, to: &Channel) -> Result<i64, Error> {
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
    pub async fn approve(&self, by: &AuthUser, promotion_id: &str) -> Result<Promotion, Error> {
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
                let to = self.channel(&mut tx, &to_name).await?;
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
        self.promotion(promotion_id).await
    }

    pub async fn promotion(&self, id: &str) -> Result<Promotion, Error> {
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
    pub async fn promotions(&self) -> Result<Vec<Promotion>, Error> {
        let rows = sqlx::query(
            "SELECT p.*, r.build_id AS build_id, r.level AS level FROM promotions p JOIN releases r ON r.id = p.release_id ORDER BY p.requested_at DESC, p.id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(promotion_row).collect()
    }

    /// Withdraws a release from every channel: hosts at that level go to the newest level still
    /// allowed (or revert) at their next check-in.
    pub async fn withdraw(
        &self,
        by: &AuthUser,
        build_id: &BuildId,
        level: PatchLevel,
        reason: &str,
    ) -> Result<ReleaseInfo, Error> {
        by.require(Role::Publisher)?;
        let reason = nonblank(Some(reason))
            .ok_or_else(|| Error::BadRequest("a withdrawal needs a reason".into()))?;
        let id = release_id(build_id, level);
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let (_, withdrawn) = release_state(&mut tx, &id, build_id, level).await?;
        if withdrawn {
            return Err(Error::Withdrawn {
                build_id: build_id.to_string(),
                level: level.get(),
            });
        }
        sqlx::query("UPDATE releases SET withdrawn_at = $1, withdrawn_by = $2, withdraw_reason = $3 WHERE id = $4")
            .bind(now)
            .bind(&by.name)
            .bind(&reason)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let channels: Vec<String> =
            sqlx::query_scalar("SELECT channel FROM release_channels WHERE release_id = $1")
                .bind(&id)
                .fetch_all(&mut *tx)
                .await?;
        let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
        self.resign(&mut tx, &channels, now).await?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "release.withdraw",
            &id,
            json!({"reason": reason}),
        )
        .await?;
        tx.commit().await?;
        self.release_cache.invalidate();
        self.release(build_id, level).await
    }

    // ------------------------------------------------------------------------------------------
    // Hosts

    pub async fn create_enroll_token(
        &self,
        by: &AuthUser,
        req: &EnrollTokenRequest,
    ) -> Result<EnrollTokenCreated, Error> {
        by.require(Role::Admin)?;
        if req.expires_in_secs == 0 || req.expires_in_secs > MAX_ENROLL_SECS {
            return Err(Error::BadRequest(format!(
                "expires_in_secs must be between 1 and {MAX_ENROLL_SECS}"
            )));
        }
        if req.max_uses == 0 {
            return Err(Error::BadRequest("max_uses must be at least 1".into()));
        }
        let token = new_secret(ENROLLMENT_TOKEN_PREFIX)?;
        let now = self.now();
        let expires = now + req.expires_in_secs as i64 * 1000;
        let mut tx = self.db.begin_audited().await?;
        self.channel(&mut tx, &req.channel).await?;
        sqlx::query(
            "INSERT INTO enroll_tokens (token_hash, channel, created_by, created_at, expires_at, max_uses, uses) VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(sha256_hex(token.as_bytes()))
        .bind(&req.channel)
        .bind(&by.name)
        .bind(now)
        .bind(expires)
        .bind(i64::from(req.max_uses))
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now,
            &by.actor(),
            "enroll_token.create",
            &req.channel,
            json!({"expires_at": expires, "max_uses": req.max_uses}),
        )
        .await?;
        tx.commit().await?;
        Ok(EnrollTokenCreated {
            token,
            channel: req.channel.clone(),
            expires_at: rfc3339(expires),
            max_uses: req.max_uses,
        })
    }

    /// Trades a valid enrollment token for a new host and its credential.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, Error> {
        let hostname = req.hostname.trim();
        if hostname.is_empty() || hostname.len() > 253 || hostname.chars().any(char::is_control) {
            return Err(Error::BadRequest(
                "hostname must be 1 to 253 printable characters".into(),
            ));
        }
        if !req.enrollment_token.starts_with(ENROLLMENT_TOKEN_PREFIX) {
            return Err(Error::EnrollmentTokenInvalid);
        }
        let now = self.now();
        let host_id = new_id()?;
        let credential = new_secret(HOST_CREDENTIAL_PREFIX)?;
        let mut tx = self.db.begin_audited().await?;
        let channel: Option<String> = sqlx::query_scalar(
            "UPDATE enroll_tokens SET uses = uses + 1 WHERE token_hash = $1 AND uses < max_uses AND expires_at > $2 RETURNING channel",
        )
        .bind(sha256_hex(req.enrollment_token.as_bytes()))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let channel = channel.ok_or(Error::EnrollmentTokenInvalid)?;
        sqlx::query(
            "INSERT INTO hosts (id, credential_hash, hostname, channel, update_delay_secs, registered_at, last_sequence, kernel_release, build_id, agent_version) VALUES ($1, $2, $3, $4, 0, $5, 0, $6, $7, $8)",
        )
        .bind(&host_id)
        .bind(sha256_hex(credential.as_bytes()))
        .bind(hostname)
        .bind(&channel)
        .bind(now)
        .bind(&req.kernel.release)
        .bind(req.kernel.build_id.as_ref().map(|b| b.to_string()))
        .bind(&req.agent_version)
        .execute(&mut *tx)
        .await?;
        let state = crate::store::history::HostState::reported(
            &host_id,
            0,
            now,
            &["register"],
            &req.kernel,
            None,
            None,
            None,
            None,
            None,
        );
        crate::store::history::record(&mut tx, &state).await?;
        audit::append(&mut tx, now, &Actor::Host(host_id.clone()), "host.register", &host_id,
            json!({"hostname": hostname, "channel": channel, "kernel": req.kernel.release, "build_id": req.kernel.build_id})).await?;
        tx.commit().await?;
        Ok(RegisterResponse {
            host_id,
            credential,
            channel,
        })
    }

    /// The host holding this credential, unless revoked. A failure is audited like a failed
    /// sign-in (at most once a minute per kind: malformed, unknown, revoked).
    pub async fn authenticate_host(&self, credential: &str) -> Result<AuthHost, Error> {
        if !credential.starts_with(HOST_CREDENTIAL_PREFIX) {
            self.audit_failed_auth("malformed host credential").await;
            return Err(Error::Unauthenticated);
        }
        let hash = sha256_hex(credential.as_bytes());
        let row = sqlx::query(
            "SELECT id, channel, pinned_level, update_delay_secs, last_sequence, build_id, applied_level, applied_state, boot_id, last_error, taint, last_checkin_at, kernel_release, agent_version FROM hosts WHERE credential_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else {
            // Only on failure: tell a revoked host (still running, or its credential stolen)
            // from a guess.
            let revoked: Option<String> =
                sqlx::query_scalar("SELECT id FROM hosts WHERE credential_hash = $1")
                    .bind(&hash)
                    .fetch_optional(&self.db.pool)
                    .await?;
            self.audit_failed_auth(if revoked.is_some() {
                "revoked host credential"
            } else {
                "host credential"
            })
            .await;
            return Err(Error::Unauthenticated);
        };
        Ok(AuthHost {
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
        })
    }

    /// Records what the host reports and answers the level it should run.
    pub async fn checkin(&self, host: &AuthHost, c: &CheckIn) -> Result<CheckInResponse, Error> {
        let seq = i64::try_from(c.sequence)
            .map_err(|_| Error::BadRequest("sequence is larger than 2^63-1".into()))?;
        if c.boot_id.len() > 128 || c.agent_version.len() > 128 {
            return Err(Error::BadRequest(
                "boot_id and agent_version are at most 128 bytes".into(),
            ));
        }
        if seq <= host.last_sequence {
            return Err(Error::Replay {
                got: c.sequence,
                last: host.last_sequence.max(0) as u64,
            });
        }
        let build_id = c.kernel.build_id.as_ref().map(|b| b.to_string());
        let level = c.applied.as_ref().map(|a| i64::from(a.level.get()));
        let state = c.applied.as_ref().map(|a| state_name(a.state));
        let last_error = c.last_error.as_deref().map(|e| truncate(e, 2000));
        let taint = c.taint.and_then(|t| i64::try_from(t).ok());
        let events = host_events(
            host,
            c,
            build_id.as_deref(),
            level,
            state,
            last_error.as_deref(),
        );

        let uptime_secs = i64::try_from(c.uptime_secs).unwrap_or(i64::MAX);
        let steady = events.is_empty()
            && host.kernel_release.as_deref() == Some(c.kernel.release.as_str())
            && host.build_id == build_id
            && host.applied_level == level
            && host.applied_state.as_deref() == state
            && host.boot_id.as_deref() == Some(c.boot_id.as_str())
            && host.agent_version.as_deref() == Some(c.agent_version.as_str())
            && host.last_error == last_error
            && host.taint == taint;
        let history = (!events.is_empty()).then(|| {
            let kinds: Vec<&str> = events
                .iter()
                .map(|(action, _)| action.trim_start_matches("host."))
                .collect();
            crate::store::history::HostState::reported(
                &host.id,
                seq,
                0,
                &kinds,
                &c.kernel,
                level.zip(state),
                Some(&c.boot_id),
                i64::try_from(c.uptime_secs).ok(),
                taint,
                last_error.as_deref(),
            )
        });
        let write = crate::domain::checkin::group_commit::Write {
            host_id: host.id.clone(),
            sequence: seq,
            seen_sequence: host.last_sequence,
            previous_checkin: host.last_checkin_at,
            steady,
            kernel_release: c.kernel.release.clone(),
            build_id,
            applied_level: level,
            applied_state: state,
            boot_id: c.boot_id.clone(),
            uptime_secs,
            agent_version: c.agent_version.clone(),
            last_error,
            taint,
            history,
            events,
        };
        // Answered once the batch holding this check-in committed.
        let now = self.checkins.write(&self.db, &self.clock, write).await?;
        self.decide(host, c.kernel.build_id.as_ref(), c.applied.as_ref(), now)
            .await
    }

    async fn decide(
        &self,
        host: &AuthHost,
        build_id: Option<&BuildId>,
        applied: Option<&AppliedReport>,
        now: i64,
    ) -> Result<CheckInResponse, Error> {
        let mut response = CheckInResponse {
            host_id: host.id.clone(),
            channel: host.channel.clone(),
            action: Action::None,
            target: None,
            reason: String::new(),
            next_checkin_secs: self.checkin_interval_secs,
        };
        let Some(build_id) = build_id else {
            response.reason = "the kernel reports no build-id, so no release can match it".into();
            if applied.is_some() {
                response.action = Action::Revert;
            }
            return Ok(response);
        };
        let eligible_since = now - host.update_delay_secs * 1000;
        let pin = host.pinned_level.unwrap_or(i64::MAX);
        let candidates = self.candidates(build_id, &host.channel).await?;
        // Newest first: the newest level that has soaked long enough and is not above the pin.
        let row = candidates
            .iter()
            .find(|r| r.since <= eligible_since && r.level <= pin);
        match row {
            None => {
                response.reason = format!(
                    "no release for kernel build {} is allowed in channel {}",
                    build_id.short(),
                    host.channel
                );
                if applied.is_some() {
                    response.action = Action::Revert;
                    response.reason.push_str("; unload the klive patch");
                }
            }
            Some(row) => {
                let level = level_from_db(row.level)?;
                let target = TargetRelease {
                    build_id: build_id.clone(),
                    level,
                    module_name: row.module_name.clone(),
                    sha256: row.sha256.clone(),
                    size: row.size.max(0) as u64,
                    manifest_path: format!("/api/v1/host/releases/{build_id}/{level}/manifest"),
                    module_path: format!("/api/v1/host/releases/{build_id}/{level}/module"),
                };
                let running = applied.is_some_and(|a| {
                    a.level == level
                        && matches!(a.state, PatchState::Applied | PatchState::Patching)
                });
                response.action = if running { Action::None } else { Action::Apply };
                response.reason = if running {
                    format!("level {level} is the newest allowed level and is applied")
                } else {
                    format!(
                        "level {level} is the newest level allowed in channel {}",
                        host.channel
                    )
                };
                if let Some(pin) = host.pinned_level {
                    response.reason.push_str(&format!(" (pinned at {pin})"));
                }
                response.target = Some(target);
            }
        }
        Ok(response)
    }

    /// How check-ins were grouped: (write transactions, check-ins they carried) since start.
    pub fn checkin_batches(&self) -> (u64, u64) {
        self.checkins.stats()
    }

    /// The releases of `build_id` in `channel` that are not withdrawn, newest first.
    async fn candidates(
        &self,
        build_id: &BuildId,
        channel: &str,
    ) -> Result<Arc<Vec<Candidate>>, Error> {
        if let Some(hit) = self.release_cache.get(build_id.as_str(), channel) {
            return Ok(hit);
        }
        let generation = self.release_cache.generation();
        let rows = sqlx::query(
            "SELECT r.level AS level, rc.since AS since, r.module_name AS module_name, r.module_sha256 AS sha256, r.module_size AS size FROM releases r JOIN release_channels rc ON rc.release_id = r.id WHERE r.build_id = $1 AND rc.channel = $2 AND r.withdrawn_at IS NULL ORDER BY r.level DESC",
        )
        .bind(build_id.as_str())
        .bind(channel)
        .fetch_all(&self.db.pool)
        .await?;
        let candidates = rows
            .iter()
            .map(|row| {
                Ok(Candidate {
                    level: row.try_get("level")?,
                    since: row.try_get("since")?,
                    module_name: row.try_get("module_name")?,
                    sha256: row.try_get("sha256")?,
                    size: row.try_get("size")?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let candidates = Arc::new(candidates);
        self.release_cache.put(
            build_id.as_str(),
            channel,
            generation,
            Arc::clone(&candidates),
        );
        Ok(candidates)
    }

    async fn host_release_row(
        &self,
        host: &AuthHost,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<AnyRow, Error> {
        sqlx::query(
            "SELECT r.manifest AS manifest, r.module_sha256 AS sha256 FROM releases r JOIN release_channels rc ON rc.release_id = r.id WHERE r.id = $1 AND rc.channel = $2 AND r.withdrawn_at IS NULL",
        )
        .bind(release_id(build_id, level))
        .bind(&host.channel)
        .fetch_optional(&self.db.pool)
        .await?
        // The same answer whether the release does not exist or is not the host's to read.
        .ok_or_else(|| not_found(build_id, level))
    }

    /// The manifest of a release in the host's channel.
    pub async fn host_manifest(
        &self,
        host: &AuthHost,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<ReleaseManifest, Error> {
        let row = self.host_release_row(host, build_id, level).await?;
        let text: String = row.try_get("manifest")?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("stored manifest: {e}")))
    }

    /// The module of a release in the host's channel, checked against its digest.
    pub async fn host_module(
        &self,
        host: &AuthHost,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<Bytes, Error> {
        let row = self.host_release_row(host, build_id, level).await?;
        let sha256: String = row.try_get("sha256")?;
        self.blobs.get(&sha256).await
    }

    /// Root version 1 (`1.root.json`), which agents pin at registration; they reach the
    /// version in force through `{N}.root.json`.
    pub fn tuf_root(&self) -> Result<Vec<u8>, Error> {
        self.signer
            .as_ref()
            .map(|s| s.root_bytes().to_vec())
            .ok_or_else(|| Error::MetadataNotFound("root.json".into()))
    }

    /// A metadata file of the host's own channel's TUF repository.
    pub async fn host_tuf_metadata(
        &self,
        host: &AuthHost,
        channel: &str,
        name: &str,
    ) -> Result<Vec<u8>, Error> {
        let missing = || Error::MetadataNotFound(name.to_owned());
        if channel != host.channel {
            return Err(missing());
        }
        if name == "root.json" {
            return self.tuf_root();
        }
        if let Some(version) = name
            .strip_suffix(".root.json")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let signer = self.signer.as_ref().ok_or_else(missing)?;
            return signer.root_metadata(version)?.ok_or_else(missing);
        }
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM tuf_metadata WHERE channel = $1 AND name = $2")
                .bind(channel)
                .bind(name)
                .fetch_optional(&self.db.pool)
                .await?;
        body.map(String::into_bytes).ok_or_else(missing)
    }

    /// A target (`{sha256}.{name}`) of the host's own channel: a module or a manifest of a
    /// release in that channel, not withdrawn, with that digest.
    pub async fn host_tuf_target(
        &self,
        host: &AuthHost,
        channel: &str,
        file: &str,
    ) -> Result<Bytes, Error> {
        let missing = || Error::MetadataNotFound(file.to_owned());
        if channel != host.channel {
            return Err(missing());
        }
        let (sha, name) = file.split_once('.').ok_or_else(missing)?;
        let (stem, is_module) = if let Some(stem) = name.strip_suffix(".manifest.json") {
            (stem, false)
        } else if let Some(stem) = name.strip_suffix(".ko") {
            (stem, true)
        } else {
            return Err(missing());
        };
        let (build_id, level) = stem.rsplit_once('-').ok_or_else(missing)?;
        let build_id: BuildId = build_id.parse().map_err(|_| missing())?;
        let level: PatchLevel = level.parse().map_err(|_| missing())?;
        let row = match self.host_release_row(host, &build_id, level).await {
            Err(Error::ReleaseNotFound { .. }) => return Err(missing()),
            other => other?,
        };
        if is_module {
            let digest: String = row.try_get("sha256")?;
            if digest != sha {
                return Err(missing());
            }
            self.blobs.get(&digest).await
        } else {
            let manifest: String = row.try_get("manifest")?;
            if sha256_hex(manifest.as_bytes()) != sha {
                return Err(missing());
            }
            Ok(Bytes::from(manifest))
        }
    }

    /// Counts of hosts per channel, level and state: one indexed aggregate, not a host list.
    pub async fn fleet(&self, by: &AuthUser) -> Result<FleetSummary, Error> {
        by.require(Role::Viewer)?;
        let rows = sqlx::query(
            "SELECT channel, applied_level, applied_state, COUNT(*) AS n FROM hosts WHERE revoked_at IS NULL GROUP BY channel, applied_level, applied_state ORDER BY channel, applied_level",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut summary = FleetSummary {
            hosts: 0,
            stale_hosts: 0,
            groups: Vec::with_capacity(rows.len()),
        };
        for row in &rows {
            let n = row.try_get::<i64, _>("n")?.max(0) as u64;
            let state: Option<String> = row.try_get("applied_state")?;
            summary.hosts += n;
            summary.groups.push(FleetGroup {
                channel: row.try_get("channel")?,
                level: row
                    .try_get::<Option<i64>, _>("applied_level")?
                    .map(level_from_db)
                    .transpose()?,
                state: state.as_deref().and_then(parse_state),
                hosts: n,
            });
        }
        let stale_before = self.now() - 2 * self.checkin_interval_secs as i64 * 1000;
        let stale: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM hosts WHERE revoked_at IS NULL AND (last_checkin_at IS NULL OR last_checkin_at < $1)",
        )
        .bind(stale_before)
        .fetch_one(&self.db.pool)
        .await?;
        summary.stale_hosts = stale.max(0) as u64;
        Ok(summary)
    }

    /// One page of hosts, ordered by id.
    pub async fn hosts(&self, by: &AuthUser, q: &HostListQuery) -> Result<Vec<HostInfo>, Error> {
        by.require(Role::Viewer)?;
        let limit = i64::from(q.limit.unwrap_or(1000).clamp(1, 10_000));
        let rows = sqlx::query("SELECT * FROM hosts WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(q.after.as_deref().unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(host_row).collect()
    }

    pub async fn host(&self, by: &AuthUser, id: &str) -> Result<HostInfo, Error> {
        by.require(Role::Viewer)?;
        let row = sqlx::query("SELECT * FROM hosts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| Error::HostNotFound(id.to_owned()))?;
        host_row(&row)
    }

    pub async fn set_host_policy(
        &self,
        by: &AuthUser,
        id: &str,
        policy: &HostPolicy,
    ) -> Result<HostInfo, Error> {
        by.require(Role::Admin)?;
        let delay = secs_to_i64(policy.update_delay_secs, "update_delay_secs")?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        self.channel(&mut tx, &policy.channel).await?;
        let affected = sqlx::query("UPDATE hosts SET channel = $1, pinned_level = $2, update_delay_secs = $3 WHERE id = $4")
            .bind(&policy.channel)
            .bind(policy.pinned_level.map(|l| i64::from(l.get())))
            .bind(delay)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if affected == 0 {
            return Err(Error::HostNotFound(id.to_owned()));
        }
        audit::append(&mut tx, now, &by.actor(), "host.policy", id,
            json!({"channel": policy.channel, "pinned_level": policy.pinned_level, "update_delay_secs": delay})).await?;
        tx.commit().await?;
        self.host(by, id).await
    }

    /// Revokes a host's credential: its next request is refused.
    pub async fn revoke_host(&self, by: &AuthUser, id: &str) -> Result<HostInfo, Error> {
        by.require(Role::Admin)?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let affected =
            sqlx::query("UPDATE hosts SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if affected == 0 {
            return Err(Error::HostNotFound(id.to_owned()));
        }
        audit::append(&mut tx, now, &by.actor(), "host.revoke", id, json!({})).await?;
        tx.commit().await?;
        self.host(by, id).await
    }
}

/// Checks the uploaded module against its manifest: digest, size, and its own modinfo tags.
fn check_module(m: &ReleaseManifest, module: &[u8]) -> Result<(), Error> {
    let actual = sha256_hex(module);
    if actual != m.module.sha256 {
        return Err(Error::DigestMismatch {
            expected: m.module.sha256.clone(),
            actual,
        });
    }
    if module.len() as u64 != m.module.size {
        return Err(Error::SizeMismatch {
            expected: m.module.size,
            actual: module.len() as u64,
        });
    }
    let info = modinfo::read(module)?;
    let mismatch =
        |tag: &'static str, expected: String, actual: Option<&str>| Error::ModinfoMismatch {
            tag,
            expected,
            actual: actual.unwrap_or("(missing)").to_owned(),
        };
    let level = modinfo::get(&info, tags::LEVEL);
    if level.and_then(|l| l.parse::<PatchLevel>().ok()) != Some(m.level) {
        return Err(mismatch(tags::LEVEL, m.level.to_string(), level));
    }
    let build = modinfo::get(&info, tags::BUILD_ID);
    if build.and_then(|b| b.parse::<BuildId>().ok()).as_ref() != Some(&m.kernel.build_id) {
        return Err(mismatch(
            tags::BUILD_ID,
            m.kernel.build_id.to_string(),
            build,
        ));
    }
    if let Some(name) = modinfo::get(&info, "name")
        && name != m.module_name
    {
        return Err(mismatch("name", m.module_name.clone(), Some(name)));
    }
    Ok(())
}

fn check_soak(to: &Channel, prev_since: i64, now: i64) -> Result<(), Error> {
    let ready_at = prev_since + to.min_soak_secs as i64 * 1000;
    if now < ready_at {
        return Err(Error::SoakNotElapsed {
            channel: to.name.clone(),
            remaining_secs: (ready_at - now + 999) / 1000,
        });
    }
    Ok(())
}

/// Publisher and withdrawn flag of a release, or not-found.
async fn release_state(
    tx: &mut Tx,
    id: &str,
    build_id: &BuildId,
    level: PatchLevel,
) -> Result<(String, bool), Error> {
    let row = sqlx::query("SELECT published_by, withdrawn_at FROM releases WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| not_found(build_id, level))?;
    Ok((
        row.try_get("published_by")?,
        row.try_get::<Option<i64>, _>("withdrawn_at")?.is_some(),
    ))
}

fn not_found(build_id: &BuildId, level: PatchLevel) -> Error {
    Error::ReleaseNotFound {
        build_id: build_id.to_string(),
        level: level.get(),
    }
}

/// The audit events a check-in implies, compared with what the host reported before.
fn host_events(
    host: &AuthHost,
    c: &CheckIn,
    build_id: Option<&str>,
    level: Option<i64>,
    state: Option<&str>,
    last_error: Option<&str>,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut events = Vec::new();
    if host.boot_id.as_deref().is_some_and(|b| b != c.boot_id) {
        events.push((
            "host.reboot",
            json!({"boot_id": c.boot_id, "uptime_secs": c.uptime_secs}),
        ));
    }
    if host.build_id.as_deref() != build_id {
        events.push((
            "host.kernel",
            json!({"kernel": c.kernel.release, "build_id": build_id}),
        ));
    }
    if host.applied_level != level || host.applied_state.as_deref() != state {
        events.push((
            "host.applied",
            json!({"level": level, "state": state, "previous_level": host.applied_level}),
        ));
    }
    if last_error.is_some() && host.last_error.as_deref() != last_error {
        events.push(("host.update_failed", json!({"error": last_error})));
    }
    if let Some(taint) = c.taint
        && host.taint != i64::try_from(taint).ok()
    {
        events.push(("host.taint", json!({"taint": taint})));
    }
    events
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn auth_user(row: &AnyRow) -> Result<AuthUser, Error> {
    let role: String = row.try_get("role")?;
    Ok(AuthUser {
        name: row.try_get("name")?,
        role: Role::parse(&role)
            .ok_or_else(|| Error::Corrupt(format!("unknown stored role {role:?}")))?,
    })
}

fn channel_row(row: &AnyRow) -> Result<Channel, Error> {
    Ok(Channel {
        name: row.try_get("name")?,
        position: row
            .try_get::<i64, _>("position")?
            .clamp(0, i64::from(u32::MAX)) as u32,
        min_soak_secs: row.try_get::<i64, _>("min_soak_secs")?.max(0) as u64,
    })
}

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
