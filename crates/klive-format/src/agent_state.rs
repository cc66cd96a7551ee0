//! The agent's files under its state directory (`/var/lib/klive`): `state.json`, the intent
//! of the operation in progress (`intent.json`) and the append-only `journal.jsonl`.

use serde::{Deserialize, Serialize};

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
    /// The level `klive boot` loaded in a boot that has not yet proved itself (crash-loop
    /// guard).
    #[serde(default)]
    pub boot_probation: Option<BootProbation>,
    /// A level `klive boot` no longer loads because boots that loaded it kept ending without
    /// confirmation (crashes). Cleared by applying a module by hand.
    #[serde(default)]
    pub held_back: Option<HeldBack>,
}

/// Boots that load a level with `klive boot` and end unconfirmed this many times in a row
/// put that level on hold.
pub const MAX_UNCONFIRMED_BOOTS: u32 = 2;

/// A boot that loaded a level stops being on probation after this much uptime since the
/// load, or when it shuts down cleanly.
pub const BOOT_PROBATION_SECS: u64 = 300;

/// Written durably by `klive boot` just before it loads a level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootProbation {
    pub level: PatchLevel,
    pub sha256: String,
    /// The boot that loaded it (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Uptime in seconds when it was loaded.
    pub loaded_at_uptime: u64,
    /// Consecutive boots that loaded this module without being confirmed, this one included.
    pub unconfirmed_boots: u32,
}

/// A level held back by the crash-loop guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    pub build_id: BuildId,
    pub level: PatchLevel,
    pub sha256: String,
    pub since: String,
    pub reason: String,
}

/// An operation that did not finish (the agent crashed or was killed) and what was done about
/// it: recorded in `state.json`, shown by `klive status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupted {
    pub operation: String,
    pub started_at: String,
    pub resolution: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `state.json` files written by earlier agents must still read, and new ones must read
    /// on hosts that roll back: the spelling is fixed.
    #[test]
    fn state_json_spelling_is_stable() {
        let state = AgentState {
            format: STATE_FORMAT,
            last_good: None,
            last_interrupted: Some(Interrupted {
                operation: "apply level 2 (klive_x_l2)".into(),
                started_at: "2026-01-01T00:00:00Z".into(),
                resolution: "reversed".into(),
            }),
            boot_probation: Some(BootProbation {
                level: PatchLevel::new(2).unwrap(),
                sha256: "ab".into(),
                boot_id: "b".into(),
                loaded_at_uptime: 7,
                unconfirmed_boots: 1,
            }),
            held_back: Some(HeldBack {
                build_id: "a1b2c3d4".parse().unwrap(),
                level: PatchLevel::new(2).unwrap(),
                sha256: "ab".into(),
                since: "2026-01-02T00:00:00Z".into(),
                reason: "r".into(),
            }),
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"format":1,"last_good":null,"#,
                r#""last_interrupted":{"operation":"apply level 2 (klive_x_l2)","started_at":"2026-01-01T00:00:00Z","resolution":"reversed"},"#,
                r#""boot_probation":{"level":2,"sha256":"ab","boot_id":"b","loaded_at_uptime":7,"unconfirmed_boots":1},"#,
                r#""held_back":{"build_id":"a1b2c3d4","level":2,"sha256":"ab","since":"2026-01-02T00:00:00Z","reason":"r"}}"#
            )
        );
        assert_eq!(serde_json::from_str::<AgentState>(&json).unwrap(), state);
    }
}
