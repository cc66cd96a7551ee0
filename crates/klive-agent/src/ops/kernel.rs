//! The kernel steps the operations share: listing klive patches and idle klive modules,
//! waiting for a transition to end or a disabled patch to go, unloading a module the
//! kernel still holds, and what a failed load means.

use std::thread::sleep;
use std::time::{Duration, Instant};

use klive_kernel::livepatch::{self, Patch, StalledTask, TaskPatchState};
use klive_kernel::module::ModuleInfo;
use klive_kernel::{Kernel, KernelError};

use super::Agent;
use crate::AgentError;

/// How waiting for a patch's transition ended.
pub(super) enum Wait {
    Done,
    Gone,
    TimedOut,
}

/// Turns a failed module load into a message that says what to do.
pub(super) fn load_error(info: &ModuleInfo, source: KernelError) -> AgentError {
    let hint = match source.errno() {
        Some(libc::EEXIST) => "a module with this name is already loaded; run `klive list`",
        Some(libc::ENOEXEC) => {
            "the kernel rejected the module format (vermagic or symbol versions); see dmesg"
        }
        Some(libc::ENOENT) => "the module needs symbols this kernel lacks; see dmesg",
        Some(libc::EKEYREJECTED | libc::EBADMSG) => {
            "the module signature was rejected; sign it with a trusted key"
        }
        Some(libc::EPERM) => {
            "module loading is not permitted (not root, lockdown or modules_disabled)"
        }
        Some(libc::EBUSY) => "another livepatch transition is running; retry when it is over",
        Some(libc::EINVAL) => {
            "the kernel refused the patch (does it patch functions that exist?); see dmesg"
        }
        _ => "see dmesg for the kernel's reason",
    };
    AgentError::Kernel {
        context: format!("loading {} ({})", info.path.display(), info.name),
        hint: format!("nothing was applied; {hint}"),
        source,
    }
}

impl<K: Kernel> Agent<'_, K> {
    pub(super) fn klive_patches(&self) -> Result<Vec<Patch>, AgentError> {
        Ok(livepatch::patches(self.kernel.root())?
            .into_iter()
            .filter(Patch::is_klive)
            .collect())
    }

    /// klive modules loaded without a live patch (replaced or disabled, not yet unloaded).
    pub(super) fn idle_klive_modules(&self) -> Result<Vec<String>, AgentError> {
        let root = self.kernel.root();
        Ok(root
            .list_dir("/sys/module")?
            .into_iter()
            .filter(|m| m.starts_with(klive_format::modinfo::MODULE_PREFIX))
            .filter(|m| !root.is_dir(&format!("{}/{m}", livepatch::LIVEPATCH_DIR)))
            .collect())
    }

    pub(super) fn wait_transition(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Wait, AgentError> {
        let start = Instant::now();
        let mut polls: u32 = 0;
        loop {
            match livepatch::in_transition(self.kernel.root(), name) {
                Ok(None) => return Ok(Wait::Gone),
                Ok(Some(false)) => return Ok(Wait::Done),
                Ok(Some(true)) => {}
                // The kernel frees a disabled patch while we read it.
                Err(_)
                    if !self
                        .kernel
                        .root()
                        .is_dir(&format!("{}/{name}", livepatch::LIVEPATCH_DIR)) =>
                {
                    return Ok(Wait::Gone);
                }
                Err(e) => return Err(e.into()),
            }
            if start.elapsed() >= timeout {
                return Ok(Wait::TimedOut);
            }
            // Most transitions end within a few milliseconds of the load: poll finely at
            // first, then at the configured period.
            polls += 1;
            sleep(if polls <= 20 {
                self.opts.poll.min(Duration::from_millis(1))
            } else {
                self.opts.poll
            });
        }
    }

    /// Waits until the kernel has freed a disabled patch's sysfs directory.
    pub(super) fn wait_gone(&self, name: &str, timeout: Duration) -> Result<bool, AgentError> {
        let start = Instant::now();
        loop {
            match self.wait_transition(name, timeout.saturating_sub(start.elapsed()))? {
                Wait::Gone => return Ok(true),
                Wait::TimedOut => return Ok(false),
                Wait::Done => {
                    if start.elapsed() >= timeout {
                        return Ok(false);
                    }
                    sleep(self.opts.poll);
                }
            }
        }
    }

    /// `delete_module`, retried while the kernel still holds the module (it releases a
    /// replaced or disabled livepatch asynchronously).
    pub(super) fn unload(&self, name: &str) -> Result<(), AgentError> {
        let start = Instant::now();
        loop {
            match self.kernel.delete_module(name) {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
                Err(e)
                    if matches!(e.errno(), Some(libc::EBUSY | libc::EAGAIN))
                        && start.elapsed() < self.opts.unload_timeout =>
                {
                    sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(AgentError::Kernel {
                        context: format!("unloading module {name}"),
                        hint: "the patch is disabled, so the kernel runs the previous code; \
                               retry `klive revert` later to free the module"
                            .into(),
                        source,
                    });
                }
            }
        }
    }

    pub(super) fn stalled(&self, target: TaskPatchState) -> Vec<StalledTask> {
        livepatch::stalled_tasks(self.kernel.root(), target).unwrap_or_default()
    }
}
