//! The result of validating a release on its kernel: `klive-validate` boots the exact kernel
//! build in a VM, applies the release with the real agent, runs the fix's check, and writes
//! this report; `klive-server worker` reads it and gates the rollout on it.

use serde::{Deserialize, Serialize};

use crate::BuildId;

/// Version of the report format; bumped on incompatible changes.
pub const VALIDATION_FORMAT: u32 = 1;

/// `klive-validate`'s exit statuses. Anything else (a signal, a crash) counts as
/// [`EXIT_INFRASTRUCTURE`]: the validation says nothing about the release and may be retried.
pub const EXIT_PASSED: i32 = 0;
/// The release failed on its kernel: do not roll it out. Retrying gives the same answer.
pub const EXIT_FAILED: i32 = 1;
/// The command line or the inputs are wrong (missing file, manifest for another kernel).
pub const EXIT_BAD_INPUT: i32 = 2;
/// The VM could not be prepared or booted, or it stopped answering: nothing was learnt about
/// the release.
pub const EXIT_INFRASTRUCTURE: i32 = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationReport {
    pub format: u32,
    pub verdict: Verdict,
    /// `uname -r` of the booted kernel.
    pub kernel_release: String,
    /// GNU build-id the booted kernel reported (`/sys/kernel/notes`).
    pub build_id: BuildId,
    pub module_name: String,
    /// Lowercase hex SHA-256 of the module file that was applied.
    pub module_sha256: String,
    pub level: u32,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Each step the guest ran, in order.
    pub steps: Vec<Step>,
    /// Why the verdict is not `passed`, in one sentence for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Wall-clock milliseconds: preparing the VM (fetch, initramfs), booting, the whole run.
    pub prepare_ms: u64,
    pub boot_ms: u64,
    pub total_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
}

/// One step of the guest's run: `smoke-before`, `check-before`, `apply`, `transition`,
/// `check-after`, `smoke-after`, `dmesg`, `revert`, `check-reverted` ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    /// What the step printed or found (truncated by the writer), for the operator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub ms: u64,
}

impl ValidationReport {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Passed && self.steps.iter().all(|s| s.ok)
    }
}
