//! Test doubles of the kernel; nothing here is used by a binary.
//!
//! With the `fake` feature (off by default; test suites enable it through their
//! dev-dependencies or klive-testkit's `agent` feature): [`FakeKernel`], which materialises
//! what the kernel would show in a temp dir, records calls, injects errnos and stalls
//! transitions. Modules to feed it are built by `klive_testkit::elf`.

#[cfg(feature = "fake")]
mod kernel;

#[cfg(feature = "fake")]
pub use kernel::{
    Call, FAKE_BUILD_ID, FAKE_RELEASE, FAKE_VERMAGIC, FakeKernel, FreePlan, TransitionPlan,
};
