//! The only serialisable types of klive: identifiers, release manifests, the agent's reports.
//!
//! Every other crate converts its own types to and from these at its edge. This crate does no
//! I/O and depends on nothing that does.

pub mod agent_state;
pub mod api;
pub mod evidence;
mod ids;
pub mod release;
pub mod status;

pub use ids::{BuildId, IdError, PatchLevel};

/// Names of the modinfo tags klive puts in every livepatch module it builds.
pub mod modinfo {
    /// Cumulative patch level, decimal (`klive_level=3`).
    pub const LEVEL: &str = "klive_level";
    /// GNU build-id (hex) of the one kernel build the module was made for.
    pub const BUILD_ID: &str = "klive_build_id";
    /// Comma-separated CVE ids fixed by this level (optional).
    pub const FIXES: &str = "klive_fixes";
    /// Every klive livepatch module name starts with this prefix.
    pub const MODULE_PREFIX: &str = "klive_";
}
