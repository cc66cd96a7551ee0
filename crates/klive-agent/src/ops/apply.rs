//! `klive apply FILE.ko` and [`Agent::apply_verified`]: check the module, cache it, write
//! the intent, load the cached bytes, wait for the transition (reversing it when it
//! stalls), unload what it replaced and record the new level.

use std::path::Path;
use std::time::Instant;

use klive_format::agent_state::{GoodLevel, Operation};
use klive_format::{BuildId, PatchLevel};
use klive_kernel::Kernel;
use klive_kernel::livepatch::{self, Patch, StalledTask, TaskPatchState};

use super::boot::held_back_error;
use super::kernel::{Wait, load_error};
use super::module::Checked;
use super::{Agent, ApplyOutcome, ExpectedModule, Source, now};
use crate::AgentError;

/// A level being applied: what its intent records.
pub(super) struct Release<'a> {
    pub module: &'a str,
    pub level: PatchLevel,
    pub cached_file: &'a str,
    pub sha256: &'a str,
    pub fixes: &'a [String],
}

impl Release<'_> {
    fn operation(&self) -> Operation {
        Operation::Apply {
            module: self.module.to_owned(),
            level: self.level,
            cached_file: self.cached_file.to_owned(),
            sha256: self.sha256.to_owned(),
            fixes: self.fixes.to_vec(),
        }
    }
}

/// Refuses to start a transition while one runs, or to replace a livepatch klive did not
/// install.
fn check_no_conflict(patches: &[Patch]) -> Result<(), AgentError> {
    if let Some(busy) = patches.iter().find(|p| p.transition) {
        return Err(AgentError::refused(
            format!(
                "the livepatch {} is in transition; the kernel allows one transition at a time",
                busy.name
            ),
            "nothing was loaded; wait for it to finish (klive status) and retry",
        ));
    }
    if let Some(foreign) = patches.iter().find(|p| !p.is_klive() && p.enabled) {
        return Err(AgentError::refused(
            format!(
                "a livepatch that klive did not install ({}) is enabled; klive's atomic replace would remove it",
                foreign.name
            ),
            "nothing was loaded; disable it first (echo 0 > /sys/kernel/livepatch/NAME/enabled) if that is intended",
        ));
    }
    Ok(())
}

impl<K: Kernel> Agent<'_, K> {
    /// `klive apply FILE.ko`.
    pub fn apply(&self, path: &Path) -> Result<ApplyOutcome, AgentError> {
        let _lock = self.begin()?;
        self.apply_locked(path, Source::ByHand)
    }

    /// Applies a downloaded release whose signed metadata says what the module must be. The
    /// file is read once; those bytes are checked against `expected`, inspected, cached and
    /// loaded from the cache, so the bytes verified are the bytes the kernel gets.
    pub fn apply_verified(
        &self,
        path: &Path,
        expected: &ExpectedModule,
    ) -> Result<ApplyOutcome, AgentError> {
        let _lock = self.begin()?;
        if let Some(held) = self.store.load_state()?.held_back
            && held.sha256 == expected.sha256
        {
            return Err(held_back_error(&held));
        }
        self.apply_locked(path, Source::Verified(expected))
    }

    pub(super) fn apply_locked(
        &self,
        path: &Path,
        source: Source<'_>,
    ) -> Result<ApplyOutcome, AgentError> {
        let m = self.read_checked(path, &source)?;
        let patches = livepatch::patches(self.kernel.root())?;
        check_no_conflict(&patches)?;
        if patches.iter().any(|p| p.name == m.info.name && p.enabled) {
            return Ok(ApplyOutcome::AlreadyApplied {
                module: m.info.name,
                level: m.level,
            });
        }
        self.unload_leftover(&m.info.name)?;
        let cached_file = format!("{}-{}.ko", m.info.name, &m.sha[..16]);
        let cached = self
            .store
            .cache_module(m.build_id.as_str(), &cached_file, &m.bytes)?;
        let previous = patches
            .iter()
            .find(|p| p.is_klive())
            .map(|p| p.name.clone());
        let release = Release {
            module: &m.info.name,
            level: m.level,
            cached_file: &cached_file,
            sha256: &m.sha,
            fixes: &m.info.klive_fixes,
        };
        let op = self.begin_operation(
            release.operation(),
            previous.clone(),
            format!("sha256 {}", m.sha),
        )?;
        let start = Instant::now();
        self.load_and_wait(&op, &m, &cached, previous.as_deref())?;
        let took = start.elapsed();
        let by_hand = matches!(source, Source::ByHand);
        let replaced = self.finish_apply(&op, &release, &m.build_id, by_hand)?;
        Ok(ApplyOutcome::Applied {
            module: m.info.name.clone(),
            level: m.level,
            replaced,
            took,
        })
    }

    /// A module of the same name loaded without a live patch: an earlier level that was
    /// replaced or disabled but never unloaded. The kernel would refuse the load (EEXIST).
    fn unload_leftover(&self, name: &str) -> Result<(), AgentError> {
        let root = self.kernel.root();
        if root.is_dir(&format!("/sys/module/{name}"))
            && !root.is_dir(&format!("{}/{name}", livepatch::LIVEPATCH_DIR))
        {
            self.unload(name)?;
        }
        Ok(())
    }

    /// Loads the checked bytes (from the cached file) and waits for the patching
    /// transition; a failed load, a dropped patch or a stalled transition leaves the
    /// previous level active.
    fn load_and_wait(
        &self,
        op: &str,
        m: &Checked,
        cached: &Path,
        previous: Option<&str>,
    ) -> Result<(), AgentError> {
        let name = &m.info.name;
        if let Err(source) = self.kernel.load_module(&m.bytes, cached) {
            self.store.clear_intent()?;
            self.journal(op, "failed", source.to_string())?;
            return Err(load_error(&m.info, source));
        }
        self.journal(op, "loaded", "")?;
        match self.wait_transition(name, self.opts.transition_timeout)? {
            Wait::Done => Ok(()),
            Wait::Gone => {
                self.unload(name)?;
                self.store.clear_intent()?;
                self.journal(op, "failed", "the patch disappeared during its transition")?;
                Err(AgentError::Other(format!(
                    "the kernel dropped livepatch {name} during its transition; it is unloaded and the previous level is active; see dmesg"
                )))
            }
            Wait::TimedOut => {
                let tasks = self.stalled(TaskPatchState::Patched);
                Err(self.reverse_apply(op, name, tasks, previous))
            }
        }
    }

    /// After a completed patching transition: unload what it replaced, record the new level.
    pub(super) fn finish_apply(
        &self,
        op: &str,
        release: &Release<'_>,
        build_id: &BuildId,
        by_hand: bool,
    ) -> Result<Vec<String>, AgentError> {
        self.refuse_stacked(op, release.module)?;
        // The kernel frees the replaced patches after the transition, asynchronously: wait
        // until their sysfs directories are gone, then unload their modules.
        let freed: Vec<String> = self
            .klive_patches()?
            .into_iter()
            .filter(|p| p.name != release.module && !p.enabled)
            .map(|p| p.name)
            .collect();
        for name in &freed {
            self.wait_gone(name, self.opts.unload_timeout)?;
        }
        let mut replaced = self.idle_klive_modules()?;
        replaced.extend(freed);
        replaced.sort();
        replaced.dedup();
        for m in &replaced {
            self.unload(m)?;
        }
        let release_name = self.kernel_info()?.release.clone();
        let mut state = self.store.load_state()?;
        state.last_good = Some(GoodLevel {
            build_id: build_id.clone(),
            kernel_release: release_name,
            level: release.level,
            module: release.module.to_owned(),
            cached_file: release.cached_file.to_owned(),
            sha256: release.sha256.to_owned(),
            fixes: release.fixes.to_vec(),
            applied_at: now(),
        });
        // Applying by hand is the administrator's decision that overrides the crash-loop guard.
        if by_hand {
            state.held_back = None;
        }
        self.store.save_state(&state)?;
        self.store.clear_intent()?;
        self.journal(op, "done", format!("replaced [{}]", replaced.join(", ")))?;
        Ok(replaced)
    }

    /// A module built without `replace = true` stacks on the previous level instead of
    /// replacing it: klive runs one patch at a time, so take it out again. A replaced patch
    /// the kernel has not freed yet shows disabled: that is not stacking.
    fn refuse_stacked(&self, op: &str, name: &str) -> Result<(), AgentError> {
        let stacked: Vec<String> = self
            .klive_patches()?
            .into_iter()
            .filter(|p| p.name != name && p.enabled)
            .map(|p| p.name)
            .collect();
        if stacked.is_empty() {
            return Ok(());
        }
        self.kernel
            .set_enabled(name, false)
            .map_err(|source| AgentError::Kernel {
                context: format!(
                    "disabling {name}, which did not replace {}",
                    stacked.join(", ")
                ),
                hint: "run `klive revert` and report the module to its builder".into(),
                source,
            })?;
        self.wait_gone(name, self.opts.transition_timeout)?;
        self.unload(name)?;
        self.store.clear_intent()?;
        self.journal(op, "failed", "module is not built with replace=true")?;
        Err(AgentError::refused(
            format!(
                "{name} is not built with `replace = true` and would stack on {}",
                stacked.join(", ")
            ),
            "it was taken out again; the previous level is active; rebuild it as a cumulative replace patch",
        ))
    }

    /// The patching transition stalled: reverse it and unload the module.
    pub(super) fn reverse_apply(
        &self,
        op: &str,
        name: &str,
        tasks: Vec<StalledTask>,
        previous: Option<&str>,
    ) -> AgentError {
        let back_to = match previous {
            Some(p) => format!("the previous patch {p} is still active"),
            None => "the kernel runs its original code".into(),
        };
        let outcome = match self.reverse_transition(op, name, tasks.len()) {
            Ok(true) => format!(
                "the transition was reversed and the module unloaded: {back_to}, nothing changed. \
                 Retry when the listed tasks are idle, or raise --timeout"
            ),
            Ok(false) => "the reversal is still running in the kernel; the next klive command finishes the cleanup \
                 (run `klive status`)"
                .into(),
            Err(e) => format!("reversing failed: {e}"),
        };
        AgentError::Stalled {
            module: name.to_owned(),
            waited: self.opts.transition_timeout,
            tasks,
            outcome,
        }
    }

    /// Disables the stalled patch and unloads it once the kernel let it go; false when the
    /// reversal is still running.
    fn reverse_transition(&self, op: &str, name: &str, stalled: usize) -> Result<bool, AgentError> {
        self.journal(
            op,
            "stalled",
            format!("{stalled} task(s) stalled; reversing"),
        )?;
        self.kernel
            .set_enabled(name, false)
            .map_err(|source| AgentError::Kernel {
                context: format!("reversing the transition of {name}"),
                hint:
                    "the transition is still running; run `klive status` and retry `klive revert`"
                        .into(),
                source,
            })?;
        if !self.wait_gone(
            name,
            self.opts.transition_timeout + self.opts.unload_timeout,
        )? {
            return Ok(false);
        }
        self.unload(name)?;
        self.store.clear_intent()?;
        self.journal(op, "reversed", "")?;
        Ok(true)
    }
}
