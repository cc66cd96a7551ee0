//! Livepatch-shaped ELF modules for tests, written with `object::write`.
