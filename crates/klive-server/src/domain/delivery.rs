//! What an authenticated host downloads: its release manifest and module, and the TUF metadata of its channel.

use super::*;

domain_service! {
    /// What an authenticated host downloads: its release manifest and module, and the TUF metadata of its channel.
    Delivery
}

impl Delivery<'_> {
    /// The manifest of a release in the host's channel.
    pub async fn host_manifest(
        self,
        host: &AuthHost,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<ReleaseManifest, Error> {
        let release = self.checkins().host_release(host, build_id, level).await?;
        serde_json::from_str(&release.manifest)
            .map_err(|e| Error::Corrupt(format!("stored manifest: {e}")))
    }

    /// The module of a release in the host's channel, checked against its digest.
    pub async fn host_module(
        self,
        host: &AuthHost,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<Bytes, Error> {
        let release = self.checkins().host_release(host, build_id, level).await?;
        self.blobs.get(&release.sha256).await
    }

    /// Root version 1 (`1.root.json`), which agents pin at registration; they reach the
    /// version in force through `{N}.root.json`.
    pub fn tuf_root(self) -> Result<Vec<u8>, Error> {
        self.signer
            .as_ref()
            .map(|s| s.root_bytes().to_vec())
            .ok_or_else(|| Error::MetadataNotFound("root.json".into()))
    }

    /// A metadata file of the host's own channel's TUF repository.
    pub async fn host_tuf_metadata(
        self,
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
        let body = store::tuf::metadata(&self.db, channel, name).await?;
        body.map(String::into_bytes).ok_or_else(missing)
    }

    /// A target (`{sha256}.{name}`) of the host's own channel: a module or a manifest of a
    /// release in that channel, not withdrawn, with that digest.
    pub async fn host_tuf_target(
        self,
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
        let release = match self.checkins().host_release(host, &build_id, level).await {
            Err(Error::ReleaseNotFound { .. }) => return Err(missing()),
            other => other?,
        };
        if is_module {
            if release.sha256 != sha {
                return Err(missing());
            }
            self.blobs.get(&release.sha256).await
        } else {
            if sha256_hex(release.manifest.as_bytes()) != sha {
                return Err(missing());
            }
            Ok(Bytes::from(release.manifest))
        }
    }
}
