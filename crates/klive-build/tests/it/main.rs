//! klive-build's integration tests: one binary.

mod cli;
