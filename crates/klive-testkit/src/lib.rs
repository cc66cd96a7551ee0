//! Test-only building blocks shared by klive's test suites. Never a dependency of a binary.
//!
//! - [`elf`]: livepatch-shaped ELF modules written with `object::write`.
//! - `agent` (feature `agent`): a host with the fake kernel and the `klive` CLI run in-process.
//! - `server` (feature `server`): a klive-server on a temporary SQLite or a fresh PostgreSQL
//!   database.

#[cfg(feature = "agent")]
pub mod agent;
pub mod elf;
