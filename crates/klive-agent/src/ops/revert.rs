//! `klive revert`: disable every klive patch (undoing the revert when its transition
//! stalls), unload the klive modules and forget the last good level.

use klive_format::agent_state::Operation;
use klive_kernel::Kernel;
use klive_kernel::livepatch::{self, Patch, TaskPatchState};

use super::kernel::Wait;
use super::{Agent, RevertOutcome};
use crate::AgentError;

impl<K: Kernel> Agent<'_, K> {
    /// `klive revert`: back to the unpatched kernel code.
    pub fn revert(&self) -> Result<RevertOutcome, AgentError> {
        let _lock = self.begin()?;
        self.revert_locked()
    }

    pub(super) fn revert_locked(&self) -> Result<RevertOutcome, AgentError> {
        let patches = self.klive_patches()?;
        if let Some(busy) = livepatch::patches(self.kernel.root())?
            .iter()
            .find(|p| p.transition)
        {
            return Err(AgentError::refused(
                format!("the livepatch {} is in transition", busy.name),
                "nothing was changed; wait for it to finish (klive status) and retry",
            ));
        }
        let idle = self.idle_klive_modules()?;
        if patches.is_empty() && idle.is_empty() {
            let mut state = self.store.load_state()?;
            if state.last_good.take().is_some() {
                self.store.save_state(&state)?;
            }
            return Ok(RevertOutcome::NothingApplied);
        }
        let names: Vec<&str> = patches.iter().map(|p| p.name.as_str()).collect();
        let op = self.begin_operation(
            Operation::Revert,
            patches.first().map(|p| p.name.clone()),
            names.join(", "),
        )?;
        let mut modules = Vec::new();
        for p in patches.iter().filter(|p| p.enabled) {
            self.disable_for_revert(&op, p)?;
            // The patch is gone from sysfs, but its directory may still be listed while the
            // kernel tears it down: unload it by name rather than wait to see it idle.
            self.unload(&p.name)?;
            modules.push(p.name.clone());
        }
        for m in self.idle_klive_modules()? {
            self.unload(&m)?;
            if !modules.contains(&m) {
                modules.push(m);
            }
        }
        let mut state = self.store.load_state()?;
        state.last_good = None;
        self.store.save_state(&state)?;
        self.store.clear_intent()?;
        self.journal(&op, "done", modules.join(", "))?;
        Ok(RevertOutcome::Reverted { modules })
    }

    /// Disables `p` and waits for the kernel to free it; when that transition stalls, the
    /// revert is undone and the kernel stays on the patched code it was running.
    fn disable_for_revert(&self, op: &str, p: &Patch) -> Result<(), AgentError> {
        self.kernel
            .set_enabled(&p.name, false)
            .map_err(|source| AgentError::Kernel {
                context: format!("disabling {}", p.name),
                hint: "nothing was changed; check dmesg".into(),
                source,
            })?;
        if self.wait_gone(&p.name, self.opts.transition_timeout)? {
            return Ok(());
        }
        let tasks = self.stalled(TaskPatchState::Unpatched);
        let undone = self.kernel.set_enabled(&p.name, true).is_ok()
            && matches!(
                self.wait_transition(&p.name, self.opts.transition_timeout)?,
                Wait::Done
            );
        let outcome = if undone {
            self.store.clear_intent()?;
            self.journal(op, "reversed", "")?;
            format!(
                "the revert was undone: {} stays applied. Retry when the listed tasks are idle",
                p.name
            )
        } else {
            "undoing the revert is still running in the kernel; run `klive status`".into()
        };
        Err(AgentError::Stalled {
            module: p.name.clone(),
            waited: self.opts.transition_timeout,
            tasks,
            outcome,
        })
    }
}
