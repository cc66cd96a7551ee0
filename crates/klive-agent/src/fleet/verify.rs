//! A release read through a loaded TUF repository and checked before anything reaches the
//! kernel: the running build, the signed target, the manifest against its signed target,
//! the module against its manifest; then staged on disk for [`Agent::apply_verified`].
//!
//! [`Agent::apply_verified`]: crate::ops::Agent::apply_verified

use std::sync::Arc;

use klive_format::api::{FleetRegistration, TargetRelease, tuf_manifest_target, tuf_module_target};
use klive_format::digest::{hex, sha256_hex};
use klive_format::release::ReleaseManifest;
use klive_format::{BuildId, PatchLevel};
use klive_kernel::{Kernel, identity};
use tough::{Repository, TargetName};

use super::tuf::read_target;
use super::{Fleet, FleetError, Staged};
use crate::ops::{ApplyOutcome, ExpectedModule};
use crate::store::{Durability, write_atomic_private};
use crate::transport::Http;

/// What the signed targets metadata says about a release's module.
struct SignedModule {
    module: TargetName,
    manifest: TargetName,
    sha256: String,
    length: u64,
}

/// Looks up the module of `build_id` at `level` in the signed targets of `repo`.
fn signed_module(
    repo: &Repository,
    build_id: &BuildId,
    level: PatchLevel,
    source: &str,
) -> Result<SignedModule, FleetError> {
    let name = |n: &str| {
        TargetName::new(n)
            .map_err(|e| FleetError::refused(format!("target name {n}: {e}"), "report it as a bug"))
    };
    let module = name(&tuf_module_target(build_id.as_str(), level.get()))?;
    let manifest = name(&tuf_manifest_target(build_id.as_str(), level.get()))?;
    let Some(signed) = repo.targets().signed.targets.get(&module) else {
        return Err(FleetError::refused(
            format!(
                "level {level} for build {} is not in the signed targets of {source}",
                build_id.short()
            ),
            "it was withdrawn or never published there; run `klive check` again",
        ));
    };
    Ok(SignedModule {
        sha256: hex(&signed.hashes.sha256),
        length: signed.length,
        module,
        manifest,
    })
}

/// Reads a target the signed metadata must list.
fn read_listed(
    repo: &Repository,
    target: &TargetName,
    source: &str,
) -> Result<Vec<u8>, FleetError> {
    let what = format!("target {} of {source}", target.raw());
    read_target(repo, target, &what)?.ok_or_else(|| {
        FleetError::refused(
            format!("{what} is not listed in the signed metadata"),
            "run `klive check` again",
        )
    })
}

/// Parses and validates the signed manifest and checks it names the signed module.
fn checked_manifest(
    bytes: &[u8],
    build_id: &BuildId,
    level: PatchLevel,
    signed: &SignedModule,
) -> Result<ReleaseManifest, FleetError> {
    let manifest: ReleaseManifest = serde_json::from_slice(bytes).map_err(|e| {
        FleetError::refused(
            format!("the signed manifest of level {level} is not a release manifest ({e})"),
            "report it to the release's publisher",
        )
    })?;
    manifest.validate().map_err(|e| {
        FleetError::refused(
            format!("the signed manifest of level {level} is invalid: {e}"),
            "report it to the release's publisher",
        )
    })?;
    let (signed_sha, signed_len) = (&signed.sha256, signed.length);
    if manifest.level != level
        || &manifest.kernel.build_id != build_id
        || manifest.module.sha256 != *signed_sha
        || manifest.module.size != signed_len
    {
        return Err(FleetError::refused(
            format!(
                "the manifest (level {}, build {}, module sha256 {}, {} bytes) does not match its signed target (level {level}, build {}, sha256 {signed_sha}, {signed_len} bytes)",
                manifest.level,
                manifest.kernel.build_id.short(),
                manifest.module.sha256,
                manifest.module.size,
                build_id.short()
            ),
            "the release is inconsistent (mix-and-match); report it to the release's publisher",
        ));
    }
    Ok(manifest)
}

/// Checks the module bytes against their manifest; returns their SHA-256.
fn check_module(module: &[u8], manifest: &ReleaseManifest) -> Result<String, FleetError> {
    let sha = sha256_hex(module);
    if sha != manifest.module.sha256 || module.len() as u64 != manifest.module.size {
        return Err(FleetError::refused(
            format!(
                "the module ({} bytes, sha256 {sha}) does not match its manifest ({} bytes, sha256 {})",
                module.len(),
                manifest.module.size,
                manifest.module.sha256
            ),
            "report it to the server's operator",
        ));
    }
    Ok(sha)
}

impl<K: Kernel> Fleet<'_, K> {
    /// Reads the target release through TUF, checks it, stages it.
    pub fn fetch(
        &self,
        reg: &FleetRegistration,
        http: &Arc<dyn Http>,
        channel: &str,
        target: &TargetRelease,
    ) -> Result<Staged, FleetError> {
        let repo = self.load_channel(reg, http, channel)?;
        let staged = self.verified_release(&repo, &target.build_id, target.level, channel)?;
        if staged.expected.sha256 != target.sha256
            || staged.expected.size != target.size
            || staged.expected.module_name != target.module_name
        {
            let _ = std::fs::remove_file(&staged.path);
            return Err(FleetError::refused(
                format!(
                    "the check-in named module {} ({} bytes, sha256 {}) but the signed release is {} ({} bytes, sha256 {})",
                    target.module_name,
                    target.size,
                    target.sha256,
                    staged.expected.module_name,
                    staged.expected.size,
                    staged.expected.sha256
                ),
                "report it to the server's operator",
            ));
        }
        Ok(staged)
    }

    /// The manifest and module of `build_id` at `level` from a loaded repository, checked
    /// against each other and the running kernel, the module staged on disk.
    pub(super) fn verified_release(
        &self,
        repo: &Repository,
        build_id: &BuildId,
        level: PatchLevel,
        source: &str,
    ) -> Result<Staged, FleetError> {
        let running = identity::kernel_info(self.kernel.root())?.build_id;
        if running.as_ref() != Some(build_id) {
            return Err(FleetError::refused(
                format!(
                    "the release is for kernel build {} but this host runs build {}",
                    build_id.short(),
                    running.as_ref().map_or("unknown", |b| b.short())
                ),
                "a release for another kernel build is never loaded (mix-and-match)",
            ));
        }
        let signed = signed_module(repo, build_id, level, source)?;
        let manifest_bytes = read_listed(repo, &signed.manifest, source)?;
        let manifest = checked_manifest(&manifest_bytes, build_id, level, &signed)?;
        let module = read_listed(repo, &signed.module, source)?;
        let sha = check_module(&module, &manifest)?;
        let path = self
            .files
            .staging_dir()?
            .join(format!("{}-{}.ko", build_id.as_str(), level));
        write_atomic_private(&path, &module, Durability::ProcessCrash)?;
        Ok(Staged {
            path,
            expected: ExpectedModule {
                sha256: sha,
                size: module.len() as u64,
                module_name: manifest.module_name.clone(),
                level,
                build_id: build_id.clone(),
            },
            manifest,
        })
    }

    /// Hands a staged release to the agent core, then removes the staged file.
    pub(super) fn apply_staged(&self, staged: &Staged) -> Result<ApplyOutcome, FleetError> {
        let outcome = self.agent.apply_verified(&staged.path, &staged.expected);
        let _ = std::fs::remove_file(&staged.path);
        Ok(outcome?)
    }
}
