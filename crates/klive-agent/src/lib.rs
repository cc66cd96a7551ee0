//! The `klive` agent: applies, replaces and reverts klive livepatch modules on this host.
//!
//! All kernel access goes through [`klive_kernel::Kernel`], so every operation here runs
//! unchanged against the real kernel or the temp-dir fake. The state directory holds what
//! must survive a crash or a reboot ([`store`]). Operations live in [`ops`], reports in
//! [`report`], the command line in [`cli`].

pub mod cli;
pub mod config;
pub mod fleet;
pub mod ops;
pub mod report;
pub mod store;
pub mod transport;

use std::time::Duration;

use klive_kernel::livepatch::StalledTask;

/// Process exit codes, documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success; for `status`: a klive patch is applied and healthy.
    Ok = 0,
    /// `status`: no klive patch is applied.
    NoPatch = 1,
    /// Reserved: an update is available (server-driven commands).
    UpdateAvailable = 2,
    /// This kernel cannot be live patched.
    Unsupported = 3,
    /// Refused before touching the kernel (bad module, wrong kernel, transition running...).
    Refused = 4,
    /// The transition did not finish in time and was reversed: the kernel is at its previous level.
    Reversed = 5,
    /// Any other failure (I/O, permissions, the kernel refused an operation, unhealthy state).
    Failed = 6,
    /// Wrong command line.
    Usage = 64,
}

/// How a failed operation ended; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}; {hint}")]
    Refused { what: String, hint: String },
    #[error("this kernel cannot be live patched: {}", .reasons.join("; "))]
    Unsupported { reasons: Vec<String> },
    #[error("{}", stalled_message(.module, .waited, .tasks, .outcome))]
    Stalled {
        module: String,
        waited: Duration,
        tasks: Vec<StalledTask>,
        outcome: String,
    },
    #[error("{context}: {source}; {hint}")]
    Kernel {
        context: String,
        hint: String,
        #[source]
        source: klive_kernel::KernelError,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Other(String),
}

fn stalled_message(
    module: &str,
    waited: &Duration,
    tasks: &[StalledTask],
    outcome: &str,
) -> String {
    let mut s = format!(
        "the livepatch transition of {module} did not finish within {:.0} s; {} task(s) were still running old code:",
        waited.as_secs_f64(),
        tasks.len()
    );
    for t in tasks.iter().take(20) {
        s.push_str(&format!("\n  pid {} tid {} ({})", t.pid, t.tid, t.comm));
        if let Some(stack) = &t.stack {
            for line in stack.lines().take(8) {
                s.push_str(&format!("\n      {line}"));
            }
        }
    }
    if tasks.len() > 20 {
        s.push_str(&format!("\n  ... and {} more", tasks.len() - 20));
    }
    s.push_str(&format!("\n{outcome}"));
    s
}

impl AgentError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AgentError::Refused { .. } => ExitCode::Refused,
            AgentError::Unsupported { .. } => ExitCode::Unsupported,
            AgentError::Stalled { .. } => ExitCode::Reversed,
            AgentError::Kernel { .. } | AgentError::Store(_) | AgentError::Other(_) => {
                ExitCode::Failed
            }
        }
    }

    pub(crate) fn refused(what: impl Into<String>, hint: impl Into<String>) -> Self {
        AgentError::Refused {
            what: what.into(),
            hint: hint.into(),
        }
    }
}

impl From<klive_kernel::SysfsError> for AgentError {
    fn from(e: klive_kernel::SysfsError) -> Self {
        AgentError::Other(format!("{e}; is /sys and /proc mounted and are you root?"))
    }
}
