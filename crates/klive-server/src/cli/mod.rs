//! The admin commands of `klive-server`, one module per group.

pub mod evidence;
