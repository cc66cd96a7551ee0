//! klive-kernel
