//! What the agent reports about its host: `klive status --json`, `klive list --json`, and the
//! body of a check-in. The parts of a report that come from the agent's own files
//! ([`Interrupted`], [`BootProbation`], [`HeldBack`]) are defined with those files in
//! [`crate::agent_state`]; nothing there depends on this module.

use serde::{Deserialize, Serialize};

use crate::agent_state::{BootProbation, HeldBack, Interrupted};
use crate::{BuildId, PatchLevel};

/// Identity of the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// `uname -r`
    pub release: String,
    /// `uname -v`
    pub version: String,
    /// `uname -m`
    pub arch: String,
    /// GNU build-id from `/sys/kernel/notes`; `None` when the kernel exposes none.
    pub build_id: Option<BuildId>,
    /// Distribution package version from `/proc/version` (Debian: `6.1.192-2`), when present.
    pub package_version: Option<String>,
    /// `PRETTY_NAME` of `/etc/os-release`, when present.
    pub distro: Option<String>,
}

/// Whether this kernel can be live patched, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Support {
    pub livepatch: bool,
    /// Human reasons when `livepatch` is false (or warnings when it is true).
    pub reasons: Vec<String>,
    /// `none`, `integrity` or `confidentiality`; `None` when the kernel has no lockdown LSM.
    pub lockdown: Option<String>,
    /// The kernel refuses unsigned modules (`module.sig_enforce` or lockdown).
    pub module_sig_enforce: bool,
}

/// Decoded `/proc/sys/kernel/tainted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    pub value: u64,
    /// One entry per set bit, e.g. `{"bit":15,"letter":"K","meaning":"kernel has been live patched"}`.
    pub flags: Vec<TaintFlag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaintFlag {
    pub bit: u8,
    pub letter: char,
    pub meaning: String,
}

/// State of one livepatch as the kernel shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchState {
    /// enabled, no transition: the patch's code runs everywhere.
    Applied,
    /// enabled, transition running: tasks are switching to the new code.
    Patching,
    /// disabled, transition running: tasks are switching back.
    Unpatching,
    /// disabled, no transition (about to be freed by the kernel).
    Disabled,
}

/// A livepatch loaded in the kernel, klive's or foreign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedPatch {
    pub name: String,
    pub state: PatchState,
    /// The patch's `replace` attribute (atomic replace); `None` on kernels that do not show it
    /// in sysfs (the attribute exists since Linux 6.11).
    pub replace: Option<bool>,
    /// True for modules following klive's naming (`klive_*`).
    pub klive: bool,
    /// Level from the module's version (klive modules only).
    pub level: Option<PatchLevel>,
    pub objects: Vec<PatchedObject>,
}

/// `klive list --json`: what the kernel has loaded, and what the agent keeps in its cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleList {
    pub loaded: Vec<LoadedPatch>,
    pub cached: Vec<CachedModule>,
}

/// A module in the agent's cache (`cache/<build-id>/`), which `klive boot` can restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedModule {
    /// The kernel build it was made for (the cache directory's name).
    pub build_id: String,
    /// File name inside the cache directory.
    pub file: String,
    pub size: u64,
    /// From the module's modinfo; `None` when the file cannot be read as a module.
    pub module: Option<String>,
    pub level: Option<PatchLevel>,
    /// Made for the kernel that runs now.
    pub running_kernel: bool,
    /// The level `klive boot` restores.
    pub last_good: bool,
    /// Why the file is not usable (unreadable, not a klive module), when it is not.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchedObject {
    /// `vmlinux` or a module name.
    pub name: String,
    pub patched: bool,
    /// `function,sympos` entries as sysfs names them.
    pub functions: Vec<String>,
}

/// The klive patch this host runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLevel {
    pub level: PatchLevel,
    pub module: String,
    pub state: PatchState,
    /// Fixes recorded when the level was applied (CVE ids).
    pub fixes: Vec<String>,
}

/// `klive status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub kernel: KernelInfo,
    pub support: Support,
    /// `None` when no klive patch is loaded.
    pub klive: Option<AppliedLevel>,
    /// `uname -r` with the klive level, e.g. `6.1.0-56-amd64+klive.2`.
    pub effective_release: String,
    pub patches: Vec<LoadedPatch>,
    pub taint: Taint,
    /// The last operation journalled as interrupted and reconciled, if any.
    pub last_interrupted: Option<Interrupted>,
    /// The level `klive boot` loaded in a boot that has not yet proved itself.
    #[serde(default)]
    pub boot_probation: Option<BootProbation>,
    /// A level the crash-loop guard holds back.
    #[serde(default)]
    pub held_back: Option<HeldBack>,
    /// One line a human can act on.
    pub summary: String,
}

/// `--json` result of `klive apply`, `revert` and `boot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationReport {
    pub operation: String,
    /// `applied`, `already-applied`, `reverted`, `nothing-applied`, `nothing-to-restore`,
    /// `kernel-changed`, or `failed`.
    pub result: String,
    pub module: Option<String>,
    pub level: Option<PatchLevel>,
    /// Modules unloaded because the new level replaced them.
    pub replaced: Vec<String>,
    /// Time from load to the end of the transition.
    pub transition_ms: Option<u64>,
    pub message: String,
    pub error: Option<ErrorReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// `refused`, `unsupported`, `stalled-reversed`, `kernel`, `state`, `failed`.
    pub code: String,
    pub exit_code: i32,
    pub stalled_tasks: Vec<StalledTaskReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StalledTaskReport {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub stack: Option<String>,
}

/// `klive uname --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnameReport {
    pub release: String,
    pub effective_release: String,
    pub level: Option<PatchLevel>,
    pub all: String,
}
