//! The agent's files under its state directory (`/var/lib/klive`): `state.json`, the intent
//! of the operation in progress (`intent.json`) and the append-only `journal.jsonl`.

use serde::{Deserialize, Serialize};

use crate::status::Interrupted;
use crate::{BuildId, PatchLevel};

pub const STATE_FORMAT: u32 = 1;

/// `state.json`: what the agent knows to be true after its last finished operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub format: u32,
    /// The last level that applied cleanly and was not reverted; `klive boot` restores it.
    pub last_good: Option<GoodLevel>,
    /// The last interrupted operation the agent found and reconciled.
    pub last_interrupted: Option<Interrupted>,
}

/// A level that applied cleanly, and the cached module that restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodLevel {
    pub build_id: BuildId,
    pub kernel_release: String,
    pub level: PatchLevel,
    pub module: String,
    /// File name inside `cache/<build_id>/`.
    pub cached_file: String,
    pub sha256: String,
    pub fixes: Vec<String>,
    pub applied_at: String,
}

/// `intent.json`: written before an operation touches the kernel, removed when it is over.
/// Finding one at start-up means the previous operation was interrupted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub operation: Operation,
    pub started_at: String,
    pub pid: u32,
    /// `/proc/sys/kernel/random/boot_id`: tells a crash from a reboot.
    pub boot_id: String,
    /// klive patch that was applied when the operation started.
    pub previous: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Operation {
    Apply {
        module: String,
        level: PatchLevel,
        cached_file: String,
        sha256: String,
        fixes: Vec<String>,
    },
    Revert,
}

impl Operation {
    pub fn describe(&self) -> String {
        match self {
            Operation::Apply { module, level, .. } => format!("apply level {level} ({module})"),
            Operation::Revert => "revert".to_owned(),
        }
    }
}

/// One line of `journal.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub at: String,
    pub operation: String,
    pub step: String,
    pub detail: String,
}
