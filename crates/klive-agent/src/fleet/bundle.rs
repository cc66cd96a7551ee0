//! Release bundles for air-gapped hosts: `klive bundle DIR` exports this host's channel
//! repository (metadata and the releases of one kernel build) and verifies the copy;
//! `klive apply DIR` verifies a bundle against the pinned root and applies from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use klive_format::api::FleetRegistration;
use klive_format::digest::hex;
use klive_format::{BuildId, PatchLevel};
use klive_kernel::{Kernel, identity};
use tough::Repository;

use super::api::get;
use super::tuf::{highest_level, load_from_dir, parse_target, read_target};
use super::{Fleet, FleetError};
use crate::config::is_safe_name;
use crate::ops::ApplyOutcome;
use crate::store::Durability;
use crate::transport::Http;

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    crate::store::write_atomic(path, bytes, Durability::Durable).map_err(FleetError::from)
}

/// A bundle directory, opened: its parts and the channel it was exported from.
struct Bundle {
    dir: PathBuf,
    metadata_dir: PathBuf,
    targets_dir: PathBuf,
    channel: String,
}

fn open_bundle(dir: &Path) -> Result<Bundle, FleetError> {
    let dir = dir
        .canonicalize()
        .map_err(|e| FleetError::Usage(format!("cannot open the bundle {}: {e}", dir.display())))?;
    let (metadata_dir, targets_dir) = (dir.join("metadata"), dir.join("targets"));
    if !metadata_dir.is_dir() || !targets_dir.is_dir() {
        return Err(FleetError::Usage(format!(
            "{} is not a release bundle: it needs metadata/ and targets/ (made by `klive bundle`)",
            dir.display()
        )));
    }
    let channel = std::fs::read_to_string(dir.join("channel"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "default".into());
    if !is_safe_name(&channel) {
        return Err(FleetError::Usage(format!(
            "{}/channel names {channel:?}, which is not a channel name",
            dir.display()
        )));
    }
    Ok(Bundle {
        dir,
        metadata_dir,
        targets_dir,
        channel,
    })
}

/// The metadata files of an export: the whole root chain (so that a host that pinned root
/// 1 reaches the one in force), the timestamp, and the snapshot and targets in force. Each
/// is (name on the server, second name in the bundle or "").
fn metadata_files(repo: &Repository) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = vec![("root.json".to_owned(), "1.root.json".to_owned())];
    files.extend(
        (2..=repo.root().signed.version.get()).map(|v| (format!("{v}.root.json"), String::new())),
    );
    files.extend([
        ("timestamp.json".to_owned(), "timestamp.json".to_owned()),
        (
            format!("{}.snapshot.json", repo.snapshot().signed.version),
            String::new(),
        ),
        (
            format!("{}.targets.json", repo.targets().signed.version),
            String::new(),
        ),
    ]);
    files
}

/// Copies the targets of `build_id` (at `level`, or all levels) read through `repo` into
/// `targets_dir` under their consistent-snapshot names; returns how many.
fn copy_targets(
    repo: &Repository,
    build_id: &BuildId,
    level: Option<PatchLevel>,
    targets_dir: &Path,
) -> Result<usize, FleetError> {
    let mut count = 0;
    for (name, target) in repo.targets().signed.targets.iter() {
        let Some((b, l)) = parse_target(name.raw()) else {
            continue;
        };
        if b != build_id.as_str() || level.is_some_and(|want| want.get() != l) {
            continue;
        }
        let sha = hex(&target.hashes.sha256);
        let bytes = read_target(repo, name, &format!("target {}", name.raw()))?.unwrap_or_default();
        write_file(&targets_dir.join(format!("{sha}.{}", name.raw())), &bytes)?;
        count += 1;
    }
    Ok(count)
}

impl<K: Kernel> Fleet<'_, K> {
    /// `klive apply DIR`: a release bundle (`DIR/metadata/`, `DIR/targets/`, optional
    /// `DIR/channel`) verified against the registered root, or `root` when given.
    pub fn apply_bundle(
        &self,
        dir: &Path,
        root: Option<&Path>,
        level: Option<PatchLevel>,
    ) -> Result<ApplyOutcome, FleetError> {
        let root_bytes = self.bundle_root(root)?;
        let bundle = open_bundle(dir)?;
        let what = format!("the bundle {}", bundle.dir.display());
        let datastore = self
            .files
            .tuf_datastore(&format!("bundle-{}", bundle.channel))?;
        let repo = load_from_dir(
            &what,
            &root_bytes,
            &bundle.metadata_dir,
            &bundle.targets_dir,
            &datastore,
        )?;
        let build_id = identity::kernel_info(self.kernel.root())?
            .build_id
            .ok_or_else(|| {
                FleetError::refused(
                    "this kernel exposes no GNU build-id",
                    "klive needs a kernel built with a build-id",
                )
            })?;
        let level = match level {
            Some(l) => l,
            None => highest_level(&repo, &build_id).ok_or_else(|| {
                FleetError::refused(
                    format!(
                        "the bundle has no release for this kernel build {}",
                        build_id.short()
                    ),
                    "export a bundle from a channel that has one",
                )
            })?,
        };
        let staged = self.verified_release(&repo, &build_id, level, &what)?;
        self.apply_staged(&staged)
    }

    /// The root a bundle is verified against: `root` when given, else the newest one this
    /// registered host trusts.
    fn bundle_root(&self, root: Option<&Path>) -> Result<Vec<u8>, FleetError> {
        match root {
            Some(p) => std::fs::read(p).map_err(|e| {
                FleetError::Usage(format!(
                    "cannot read the TUF root {}: {e}; give the server's root.json",
                    p.display()
                ))
            }),
            None => match self.files.registration()? {
                Some(r) => self.trusted_root(&r),
                None => Err(FleetError::Usage(
                    "no pinned TUF root: register this host, or give --root FILE (the server's root.json) to verify the bundle".into(),
                )),
            },
        }
    }

    /// `klive bundle DIR`: exports this host's channel repository (metadata and the
    /// releases for `build_id`, all levels unless `level`) for `klive apply DIR` on an
    /// air-gapped host, then verifies the copy.
    pub fn export_bundle(
        &self,
        dir: &Path,
        build_id: Option<BuildId>,
        level: Option<PatchLevel>,
    ) -> Result<String, FleetError> {
        let _lock = self.files.lock(self.lock_wait)?;
        let reg = self.registration()?;
        let http = self.connect(&reg)?;
        let channel = self.channel(&reg)?;
        let repo = self.load_channel(&reg, &http, &channel)?;
        let build_id = match build_id {
            Some(b) => b,
            None => identity::kernel_info(self.kernel.root())?
                .build_id
                .ok_or_else(|| {
                    FleetError::Usage("this kernel has no build-id; give --build-id".into())
                })?,
        };
        let (metadata_dir, targets_dir) = (dir.join("metadata"), dir.join("targets"));
        for d in [&metadata_dir, &targets_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| FleetError::Usage(format!("cannot create {}: {e}", d.display())))?;
        }
        copy_metadata(&reg, &http, &channel, &repo, &metadata_dir)?;
        let count = copy_targets(&repo, &build_id, level, &targets_dir)?;
        write_file(&dir.join("channel"), format!("{channel}\n").as_bytes())?;
        self.verify_export(&reg, dir, &metadata_dir, &targets_dir)?;
        Ok(format!(
            "exported channel {channel} with {count} target(s) for build {} to {}; `klive apply {}` on the air-gapped host verifies and applies it",
            build_id.short(),
            dir.display(),
            dir.display()
        ))
    }

    /// Verifies an exported copy as the air-gapped host will: from the pinned root (as a
    /// host that never saw a newer one), with a throwaway datastore.
    fn verify_export(
        &self,
        reg: &FleetRegistration,
        dir: &Path,
        metadata_dir: &Path,
        targets_dir: &Path,
    ) -> Result<(), FleetError> {
        let check = self
            .files
            .tuf_datastore(&format!("export-check-{}", std::process::id()))?;
        let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        let what = format!("the exported bundle {}", dir.display());
        let verified = load_from_dir(
            &what,
            reg.tuf_root.as_bytes(),
            &abs(metadata_dir),
            &abs(targets_dir),
            &check,
        );
        let _ = std::fs::remove_dir_all(&check);
        verified.map(drop)
    }
}

/// Copies the channel's metadata files from the server into `metadata_dir`.
fn copy_metadata(
    reg: &FleetRegistration,
    http: &Arc<dyn Http>,
    channel: &str,
    repo: &Repository,
    metadata_dir: &Path,
) -> Result<(), FleetError> {
    let base = format!("{}/api/v1/tuf/{channel}", reg.server);
    for (name, also) in &metadata_files(repo) {
        let url = format!("{base}/metadata/{name}");
        let bytes = get(&**http, &url, Some(&reg.credential), &format!("GET {url}"))?;
        write_file(&metadata_dir.join(name), &bytes)?;
        if !also.is_empty() {
            write_file(&metadata_dir.join(also), &bytes)?;
        }
    }
    Ok(())
}
