//! apply, revert, boot and crash reconciliation.
//!
//! Every operation takes the state-directory lock, first reconciles an operation a previous
//! process left unfinished, writes its intent before touching the kernel and clears it only
//! when the kernel and `state.json` agree again. Invariant: a failed or interrupted operation
//! leaves the kernel at the previous good level.
//!
//! One file a concern: `module` (reading and checking a module before the kernel sees it),
//! `kernel` (the kernel steps the operations share: waiting for transitions, unloading),
//! `apply`, `revert`, `boot` (with its crash-loop guard) and `reconcile`.

mod apply;
mod boot;
mod kernel;
mod module;
mod reconcile;
mod revert;

use std::path::PathBuf;
use std::time::Duration;

use klive_format::agent_state::{GoodLevel, Intent, JournalEntry, Operation};
use klive_format::status::KernelInfo;
use klive_format::{BuildId, PatchLevel};
use klive_kernel::{Kernel, identity};

use crate::AgentError;
use crate::store::{Lock, Store};

pub use module::ExpectedModule;

/// Timing knobs of the agent.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a patching transition may take before it is reversed.
    pub transition_timeout: Duration,
    /// How long to wait for the kernel to release a module after its patch was disabled.
    pub unload_timeout: Duration,
    /// How long to wait for another klive command to finish.
    pub lock_wait: Duration,
    /// Sysfs polling period while waiting.
    pub poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            transition_timeout: Duration::from_secs(60),
            unload_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(30),
            poll: Duration::from_millis(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied {
        module: String,
        level: PatchLevel,
        replaced: Vec<String>,
        took: Duration,
    },
    AlreadyApplied {
        module: String,
        level: PatchLevel,
    },
}

/// What `klive apply` and `klive update` say about a level they applied.
pub fn applied_message(
    module: &str,
    level: PatchLevel,
    replaced: &[String],
    took: Duration,
) -> String {
    format!(
        "level {level} applied ({module}) in {} ms{}",
        took.as_millis(),
        if replaced.is_empty() {
            String::new()
        } else {
            format!("; replaced and unloaded {}", replaced.join(", "))
        }
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevertOutcome {
    Reverted { modules: Vec<String> },
    NothingApplied,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    Restored(ApplyOutcome),
    NothingToRestore,
    /// `klive.boot=0` on the kernel command line: the escape hatch after a bad patch.
    DisabledOnCommandLine,
    KernelChanged {
        level: PatchLevel,
        was: BuildId,
        now: Option<BuildId>,
    },
}

pub struct Agent<'k, K: Kernel> {
    kernel: &'k K,
    store: Store,
    opts: Options,
    /// The running kernel's identity, read once (it cannot change while the agent runs).
    kernel_info: std::cell::OnceCell<KernelInfo>,
}

impl<K: Kernel> std::fmt::Debug for Agent<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("store", &self.store).finish()
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Where a module to apply comes from, and what its bytes must be: an administrator's
/// `klive apply FILE`, a verified release (`klive update`, bundles) that must match its
/// signed metadata, or the cache at boot, which must match the digest recorded when that
/// level was applied.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    ByHand,
    Verified(&'a ExpectedModule),
    Boot(&'a GoodLevel),
}

/// Whole seconds of uptime from the text of `/proc/uptime`; 0 when absent or unreadable.
pub(crate) fn uptime_secs_of(uptime: Option<String>) -> u64 {
    uptime
        .and_then(|u| {
            u.split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
        })
        .map_or(0, |s| s as u64)
}

impl<'k, K: Kernel> Agent<'k, K> {
    pub fn new(kernel: &'k K, state_dir: impl Into<PathBuf>, opts: Options) -> Self {
        Self {
            kernel,
            store: Store::new(state_dir),
            opts,
            kernel_info: std::cell::OnceCell::new(),
        }
    }

    fn kernel_info(&self) -> Result<&KernelInfo, AgentError> {
        if let Some(info) = self.kernel_info.get() {
            return Ok(info);
        }
        let info = identity::kernel_info(self.kernel.root())?;
        Ok(self.kernel_info.get_or_init(|| info))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn kernel(&self) -> &K {
        self.kernel
    }

    /// Takes the lock and reconciles any interrupted operation.
    pub fn begin(&self) -> Result<Lock, AgentError> {
        let lock = self.store.lock(self.opts.lock_wait)?;
        self.reconcile()?;
        Ok(lock)
    }

    fn journal(
        &self,
        operation: &str,
        step: &str,
        detail: impl Into<String>,
    ) -> Result<(), AgentError> {
        Ok(self.store.journal(&JournalEntry {
            at: now(),
            operation: operation.to_owned(),
            step: step.to_owned(),
            detail: detail.into(),
        })?)
    }

    /// Writes the intent of `operation` (from `previous`, the klive patch active now)
    /// before the kernel is touched, and journals its beginning; returns its description.
    fn begin_operation(
        &self,
        operation: Operation,
        previous: Option<String>,
        detail: String,
    ) -> Result<String, AgentError> {
        let op = operation.describe();
        self.store.save_intent(&Intent {
            operation,
            started_at: now(),
            pid: std::process::id(),
            boot_id: self.boot_id(),
            previous,
        })?;
        self.journal(&op, "begin", detail)?;
        Ok(op)
    }

    fn boot_id(&self) -> String {
        self.kernel
            .root()
            .read_optional("/proc/sys/kernel/random/boot_id")
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn uptime_secs(&self) -> u64 {
        uptime_secs_of(
            self.kernel
                .root()
                .read_optional("/proc/uptime")
                .ok()
                .flatten(),
        )
    }
}
