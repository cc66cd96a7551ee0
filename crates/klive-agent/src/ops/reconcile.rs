//! Reconciliation of an operation a previous process left unfinished (its intent is still
//! on disk): roll forward what the kernel completed, reverse what it did not, and record
//! what happened as the last interrupted operation.

use klive_format::agent_state::{AgentState, Intent, Interrupted, Operation};
use klive_kernel::Kernel;
use klive_kernel::livepatch::{self, TaskPatchState};

use super::Agent;
use super::apply::Release;
use super::kernel::Wait;
use crate::AgentError;

impl<K: Kernel> Agent<'_, K> {
    /// Finishes or rolls back an operation a previous process left unfinished. Call with the
    /// lock held. Rule: if the kernel completed the transition, the operation is finished
    /// (roll forward); if the transition is still running, it gets the normal timeout and is
    /// then reversed; if the host rebooted since, there is nothing left in the kernel.
    pub fn reconcile(&self) -> Result<Option<Interrupted>, AgentError> {
        let Some(intent) = self.store.load_intent()? else {
            return Ok(None);
        };
        let op = intent.operation.describe();
        self.journal(
            &op,
            "reconcile",
            format!(
                "interrupted operation started {} by pid {}",
                intent.started_at, intent.pid
            ),
        )?;
        let resolution = self.resolve(&op, &intent)?;
        self.store.clear_intent()?;
        let interrupted = Interrupted {
            operation: op.clone(),
            started_at: intent.started_at,
            resolution: resolution.clone(),
        };
        let mut state: AgentState = self.store.load_state()?;
        state.last_interrupted = Some(interrupted.clone());
        self.store.save_state(&state)?;
        self.journal(&op, "reconciled", resolution)?;
        Ok(Some(interrupted))
    }

    /// Brings the kernel and the state back into agreement; says how.
    fn resolve(&self, op: &str, intent: &Intent) -> Result<String, AgentError> {
        if intent.boot_id != self.boot_id() {
            return Ok(
                "the host rebooted during the operation; the kernel started without it".to_owned(),
            );
        }
        Ok(match &intent.operation {
            Operation::Apply {
                module,
                level,
                cached_file,
                sha256,
                fixes,
            } => {
                let release = Release {
                    module,
                    level: *level,
                    cached_file,
                    sha256,
                    fixes,
                };
                self.reconcile_apply(op, &release, intent.previous.as_deref())?
            }
            Operation::Revert => match self.revert_locked() {
                Ok(_) => "the revert was finished".to_owned(),
                Err(e) => format!("finishing the revert failed: {e}"),
            },
        })
    }

    fn reconcile_apply(
        &self,
        op: &str,
        release: &Release<'_>,
        previous: Option<&str>,
    ) -> Result<String, AgentError> {
        let root = self.kernel.root();
        let (module, level) = (release.module, release.level);
        let build_id = self.kernel_info()?.build_id.clone();
        match livepatch::patch(root, module)? {
            Some(p) if p.enabled => {
                let how = if !p.transition {
                    "the kernel had completed the transition"
                } else if matches!(
                    self.wait_transition(module, self.opts.transition_timeout)?,
                    Wait::Done
                ) {
                    "the transition completed"
                } else {
                    let tasks = self.stalled(TaskPatchState::Patched);
                    let e = self.reverse_apply(op, module, tasks, previous);
                    return Ok(format!("the transition had stalled and was reversed: {e}"));
                };
                let Some(build_id) = build_id else {
                    return Ok(format!(
                        "{how}, but the kernel has no build-id to record level {level} under"
                    ));
                };
                self.finish_apply(op, release, &build_id, false)?;
                Ok(format!("{how}: level {level} is applied"))
            }
            Some(_) => {
                self.wait_gone(
                    module,
                    self.opts.transition_timeout + self.opts.unload_timeout,
                )?;
                self.unload(module)?;
                Ok("the patch was being disabled; it is now unloaded and the previous level is active".into())
            }
            None => {
                if root.is_dir(&format!("/sys/module/{module}")) {
                    self.unload(module)?;
                    Ok("the module was loaded without an active patch; it was unloaded".into())
                } else {
                    Ok("the module never reached the kernel; nothing changed".into())
                }
            }
        }
    }
}
