//! Everything klive does to the running kernel, and nothing else.
//!
//! - [`identity`]: who the running kernel is (release, build-id, distro), whether it can be
//!   live patched, its taint and lockdown state.
//! - [`livepatch`]: a typed model of `/sys/kernel/livepatch` and per-task `patch_state`.
//! - [`module`]: inspection of a `.ko` file before it goes anywhere near the kernel.
//! - [`Kernel`]: the small trait every kernel-changing operation goes through, with the real
//!   [`LinuxKernel`] and, with the `fake` feature, a scripted `fake::FakeKernel` for tests.
//!
//! Every path is read under a [`SysRoot`], so tests point the whole crate at a temp dir.
//! This crate never touches the network; it is the only klive crate that makes kernel syscalls.

pub mod fake;
pub mod identity;
mod linux;
pub mod livepatch;
pub mod module;
mod sysroot;

pub use linux::LinuxKernel;
pub use sysroot::{SysRoot, SysfsError};

use std::path::Path;

/// A kernel-side failure, naming the operation and its object.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op} {object}: {source}")]
    Syscall {
        op: &'static str,
        object: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

impl KernelError {
    /// The errno of a failed syscall, if that is what failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Syscall { source, .. } => source.raw_os_error(),
            KernelError::Sysfs(_) => None,
        }
    }
}

/// The operations that change the kernel. Reading goes through [`Kernel::root`].
///
/// Kept small on purpose: load a module, unload a module, flip a livepatch's `enabled`.
pub trait Kernel {
    /// Where `/sys` and `/proc` are read from.
    fn root(&self) -> &SysRoot;
    /// Loads a module with no parameters: `init_module(2)` of `image`, the bytes the caller
    /// verified, so nothing can change them between the check and the load. `source` is a
    /// file holding the same bytes, loaded with `finit_module(2)` instead when the kernel only
    /// accepts modules from files (LoadPin, IMA appraisal: `init_module` gets EPERM/EACCES).
    fn load_module(&self, image: &[u8], source: &Path) -> Result<(), KernelError>;
    /// `delete_module(2)` with `O_NONBLOCK`.
    fn delete_module(&self, name: &str) -> Result<(), KernelError>;
    /// Writes `/sys/kernel/livepatch/<patch>/enabled`. Writing the opposite value while a
    /// transition runs reverses that transition.
    fn set_enabled(&self, patch: &str, enabled: bool) -> Result<(), KernelError>;
}
