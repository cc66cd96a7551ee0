//! klive-elf's integration tests, one binary: diffs and emits of real objects compiled by gcc
//! at test time, checked against golden reports (`tests/golden/`), and malformed input.
//! Regenerate the goldens with `KLIVE_BLESS=1 cargo test -p klive-elf`.

mod diff;
mod emit;
mod garbage;
mod support;
