//! A module before the kernel sees it: read once, hashed, matched to where it came from
//! (a verified release's signed metadata, or the digest recorded for the cached level) and
//! inspected: a klive livepatch module for this exact kernel release and build, loadable
//! under this kernel's signature policy. Nothing here changes the kernel.

use std::fs;
use std::path::Path;

use klive_format::digest::sha256_hex;
use klive_format::{BuildId, PatchLevel};
use klive_kernel::module::{self, ModuleInfo};
use klive_kernel::{Kernel, identity};

use super::{Agent, Source};
use crate::AgentError;

/// What a release's signed metadata says its module is; [`Agent::apply_verified`] refuses
/// any other bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedModule {
    pub sha256: String,
    pub size: u64,
    pub module_name: String,
    pub level: PatchLevel,
    pub build_id: BuildId,
}

impl ExpectedModule {
    /// The bytes read are the verified ones, and the module has the signed name.
    fn check(&self, bytes: &[u8], sha: &str, info: &ModuleInfo) -> Result<(), AgentError> {
        if bytes.len() as u64 != self.size || sha != self.sha256 {
            return Err(AgentError::refused(
                format!(
                    "{} is not the verified release: {} bytes with sha256 {sha}, expected {} bytes with sha256 {}",
                    info.path.display(),
                    bytes.len(),
                    self.size,
                    self.sha256
                ),
                "nothing was loaded; the staged download changed on disk: run `klive update` again",
            ));
        }
        if info.name != self.module_name {
            return Err(AgentError::refused(
                format!(
                    "the module is named {} but its signed manifest names {}",
                    info.name, self.module_name
                ),
                "nothing was loaded; the release is inconsistent: report it to its publisher",
            ));
        }
        Ok(())
    }

    /// The module's own tags say the level and build its signed manifest says.
    fn check_tags(
        &self,
        info: &ModuleInfo,
        level: PatchLevel,
        build_id: &BuildId,
    ) -> Result<(), AgentError> {
        if level != self.level || *build_id != self.build_id {
            return Err(AgentError::refused(
                format!(
                    "{} says level {level} for build {} but its signed manifest says level {} for build {}",
                    info.name,
                    build_id.short(),
                    self.level,
                    self.build_id.short()
                ),
                "nothing was loaded; the release is inconsistent: report it to its publisher",
            ));
        }
        Ok(())
    }
}

/// A module read once and checked: these bytes are the ones the kernel gets.
pub(super) struct Checked {
    pub bytes: Vec<u8>,
    pub sha: String,
    pub info: ModuleInfo,
    pub level: PatchLevel,
    pub build_id: BuildId,
}

impl<K: Kernel> Agent<'_, K> {
    /// Reads the module at `path` once and checks those bytes against `source` and this
    /// kernel; nothing re-reads the file afterwards.
    pub(super) fn read_checked(
        &self,
        path: &Path,
        source: &Source<'_>,
    ) -> Result<Checked, AgentError> {
        let (bytes, info) = self.read_module(path, source)?;
        let sha = sha256_hex(&bytes);
        match source {
            Source::Verified(e) => e.check(&bytes, &sha, &info)?,
            Source::Boot(good) if sha != good.sha256 => {
                return Err(AgentError::refused(
                    format!(
                        "the cached module {} does not match the digest recorded when it was applied",
                        path.display()
                    ),
                    "nothing was loaded; the cache was changed on disk: fetch the release again",
                ));
            }
            Source::ByHand | Source::Boot(_) => {}
        }
        let (level, build_id) = self.check_module(&info)?;
        if let Source::Verified(e) = source {
            e.check_tags(&info, level, &build_id)?;
        }
        Ok(Checked {
            bytes,
            sha,
            info,
            level,
            build_id,
        })
    }

    fn read_module(
        &self,
        path: &Path,
        source: &Source<'_>,
    ) -> Result<(Vec<u8>, ModuleInfo), AgentError> {
        let bytes = fs::read(path).map_err(|e| match source {
            Source::Boot(good) => AgentError::refused(
                format!(
                    "the cached module for level {} ({}) cannot be read: {e}",
                    good.level,
                    path.display()
                ),
                "nothing was loaded; fetch the release again (klive apply FILE)",
            ),
            _ => AgentError::refused(
                format!("cannot read {}: {e}", path.display()),
                "nothing was loaded; check the path and that you are root",
            ),
        })?;
        let info = module::inspect_bytes(path, &bytes).map_err(|e| {
            AgentError::refused(
                e.to_string(),
                "nothing was loaded; download or rebuild the module",
            )
        })?;
        Ok((bytes, info))
    }

    /// Pre-flight checks that need no change to the kernel.
    fn check_module(&self, info: &ModuleInfo) -> Result<(PatchLevel, BuildId), AgentError> {
        let root = self.kernel.root();
        let shown = info.path.display();
        if !info.livepatch {
            return Err(AgentError::refused(
                format!(
                    "{shown} ({}) is not a livepatch module (no livepatch=Y in its modinfo)",
                    info.name
                ),
                "nothing was loaded; klive only loads livepatch modules, use modprobe for others",
            ));
        }
        let (Some(level), Some(target)) = (info.klive_level, info.klive_build_id.clone()) else {
            return Err(AgentError::refused(
                format!(
                    "{shown} ({}) is not a klive module: it lacks the klive_level and klive_build_id tags",
                    info.name
                ),
                "nothing was loaded; build it with klive-build or add the tags",
            ));
        };
        if !info.name.starts_with(klive_format::modinfo::MODULE_PREFIX) {
            return Err(AgentError::refused(
                format!("module name {} does not start with `klive_`", info.name),
                "nothing was loaded; rebuild the module with a klive_ name",
            ));
        }
        let kernel = self.kernel_info()?;
        if info.vermagic_release() != kernel.release {
            return Err(AgentError::refused(
                format!(
                    "{shown} was built for kernel {} but this host runs {}",
                    info.vermagic_release(),
                    kernel.release
                ),
                "nothing was loaded; use the release made for this kernel",
            ));
        }
        let Some(running) = kernel.build_id.clone() else {
            return Err(AgentError::refused(
                "this kernel exposes no GNU build-id in /sys/kernel/notes, so the module's target cannot be verified",
                "nothing was loaded; klive needs a kernel built with a build-id",
            ));
        };
        if target != running {
            return Err(AgentError::refused(
                format!(
                    "{shown} targets kernel build {} but this host runs build {} (same release {}, different build)",
                    target.short(),
                    running.short(),
                    kernel.release
                ),
                "nothing was loaded; use the release made for this exact kernel build",
            ));
        }
        let support = identity::support(root)?;
        if !support.livepatch {
            return Err(AgentError::Unsupported {
                reasons: support.reasons,
            });
        }
        if support.module_sig_enforce && !info.signed {
            return Err(AgentError::refused(
                format!("{shown} is unsigned and this kernel only loads signed modules"),
                "nothing was loaded; sign the module with a key the kernel trusts",
            ));
        }
        Ok((level, target))
    }
}
