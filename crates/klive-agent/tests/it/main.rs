//! The agent's integration tests, one binary: the CLI and operations against the fake kernel
//! (`fake_kernel`), and against a real klive-server through a tampering network (`fleet`).

mod fake_kernel;
mod fleet;
mod free_race;
