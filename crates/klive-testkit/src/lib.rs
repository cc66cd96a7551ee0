//! Test-only building blocks shared by klive's test suites. Never a dependency of a binary.
//!
//! - [`elf`]: livepatch-shaped ELF modules written with `object::write`.
//! - `agent` (feature `agent`): a host with the fake kernel and the `klive` CLI run in-process.
//!
//! The klive-server fixture (a service on SQLite or PostgreSQL, users of every role) lives in
//! klive-server's own tests (`tests/it/common.rs`), its only user.

#[cfg(feature = "agent")]
pub mod agent;
pub mod elf;
