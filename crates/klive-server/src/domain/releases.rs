//! Releases: module blobs, publishing a release checked against its module, listing, withdrawal.

use super::*;

/// Releases: module blobs, publishing a release checked against its module, listing, withdrawal.
#[derive(Debug, Clone, Copy)]
pub struct Releases<'a>(pub(super) &'a Service);

impl std::ops::Deref for Releases<'_> {
    type Target = Service;
    fn deref(&self) -> &Service {
        self.0
    }
}

impl Releases<'_> {
    /// Stores a module under its digest. Nothing becomes visible until a release names it.
    pub async fn store_blob(self, by: &AuthUser, bytes: Bytes) -> Result<BlobStored, Error> {
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
        self,
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
        self,
        by: &AuthUser,
        manifest: ReleaseManifest,
    ) -> Result<ReleaseInfo, Error> {
        by.require(Role::Publisher)?;
        manifest.validate()?;
        let module = self.blobs.get(&manifest.module.sha256).await?;
        check_module(&manifest, &module)?;
        self.commit_release(by, manifest, &module).await
    }

    async fn refuse_duplicate(self, m: &ReleaseManifest) -> Result<(), Error> {
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
        self,
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
        self.get(&manifest.kernel.build_id, manifest.level).await
    }

    pub async fn list(self) -> Result<Vec<ReleaseInfo>, Error> {
        let rows = sqlx::query("SELECT * FROM releases ORDER BY build_id, level")
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.release_info(row).await?);
        }
        Ok(out)
    }

    pub async fn get(self, build_id: &BuildId, level: PatchLevel) -> Result<ReleaseInfo, Error> {
        let row = sqlx::query("SELECT * FROM releases WHERE id = $1")
            .bind(release_id(build_id, level))
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| not_found(build_id, level))?;
        self.release_info(&row).await
    }

    async fn release_info(self, row: &AnyRow) -> Result<ReleaseInfo, Error> {
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

    /// Withdraws a release from every channel: hosts at that level go to the newest level still
    /// allowed (or revert) at their next check-in.
    pub async fn withdraw(
        self,
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
        self.get(build_id, level).await
    }
}
