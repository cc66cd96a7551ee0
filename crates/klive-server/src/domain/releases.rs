//! Releases: module blobs, publishing a release checked against its module, listing, withdrawal.

use super::*;
use crate::failpoint::kill_point;

domain_service! {
    /// Releases: module blobs, publishing a release checked against its module, listing, withdrawal.
    Releases
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
        kill_point("publish.blob_stored");
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
        if store::releases::exists(&self.db, &release_id(&m.kernel.build_id, m.level)).await? {
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
        let manifest_json = serde_json::to_string(&manifest)
            .map_err(|e| Error::Corrupt(format!("serialising a manifest: {e}")))?;
        let now = self.now();
        let mut tx = self.db.begin_audited().await?;
        let first = store::channels::first(&mut tx)
            .await?
            .ok_or_else(|| Error::Config("no channel is configured; add one first".into()))?;
        store::releases::insert(&mut tx, &id, &manifest, &manifest_json, &by.name, now).await?;
        store::releases::enter_channel(&mut tx, &id, &first, now).await?;
        kill_point("publish.rows_written");
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
        kill_point("publish.before_commit");
        tx.commit().await?;
        kill_point("publish.committed");
        self.release_cache.invalidate();
        tracing::info!(release = %id, channel = %first, by = %by.name, "release published");
        self.get(&manifest.kernel.build_id, manifest.level).await
    }

    pub async fn list(self) -> Result<Vec<ReleaseInfo>, Error> {
        store::releases::list(&self.db).await
    }

    pub async fn get(self, build_id: &BuildId, level: PatchLevel) -> Result<ReleaseInfo, Error> {
        store::releases::get(&self.db, &release_id(build_id, level))
            .await?
            .ok_or_else(|| not_found(build_id, level))
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
        store::releases::withdraw(&mut tx, &id, now, &by.name, &reason).await?;
        let channels = store::releases::channels(&mut tx, &id).await?;
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
