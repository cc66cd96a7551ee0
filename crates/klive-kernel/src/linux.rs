use std::ffi::CString;
use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{DeleteModuleFlags, ModuleInitFlags, delete_module, finit_module, init_module};

use crate::{Kernel, KernelError, SysRoot};

/// The running Linux kernel: syscalls through `nix`, sysfs under `/`.
#[derive(Debug, Default)]
pub struct LinuxKernel {
    root: SysRoot,
}

impl LinuxKernel {
    pub fn new() -> Self {
        Self::default()
    }
}

fn syscall_err(op: &'static str, object: &str, errno: nix::errno::Errno) -> KernelError {
    KernelError::Syscall {
        op,
        object: object.to_owned(),
        source: std::io::Error::from_raw_os_error(errno as i32),
    }
}

impl Kernel for LinuxKernel {
    fn root(&self) -> &SysRoot {
        &self.root
    }

    fn load_module(&self, image: &[u8], source: &Path) -> Result<(), KernelError> {
        let shown = source.display().to_string();
        // No parameters: vermagic and modversions are always checked by the kernel.
        match init_module(image, c"") {
            Ok(()) => Ok(()),
            Err(Errno::EPERM | Errno::EACCES) => {
                let file = File::open(source).map_err(|source| KernelError::Syscall {
                    op: "open",
                    object: shown.clone(),
                    source,
                })?;
                finit_module(&file, c"", ModuleInitFlags::empty())
                    .map_err(|e| syscall_err("finit_module", &shown, e))
            }
            Err(e) => Err(syscall_err("init_module", &shown, e)),
        }
    }

    fn delete_module(&self, name: &str) -> Result<(), KernelError> {
        let c_name = CString::new(name).map_err(|_| KernelError::Syscall {
            op: "delete_module",
            object: name.to_owned(),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        delete_module(&c_name, DeleteModuleFlags::O_NONBLOCK)
            .map_err(|e| syscall_err("delete_module", name, e))
    }

    fn set_enabled(&self, patch: &str, enabled: bool) -> Result<(), KernelError> {
        let attr = format!("{}/{patch}/enabled", crate::livepatch::LIVEPATCH_DIR);
        Ok(self.root.write(&attr, if enabled { "1" } else { "0" })?)
    }
}
