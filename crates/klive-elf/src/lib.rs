//! klive's pure ELF logic for building livepatches: bytes in, bytes and reports out.
//!
//! - [`diff`]: compare the original and patched object of one translation unit by meaning
//!   and decide which functions change, which are new and what cannot be patched;
//! - [`symbols`]: symbol positions (`sympos`) from a `/proc/kallsyms` dump, an unstripped
//!   vmlinux's symtab or a module's symtab, and a kernel image's GNU build-id;
//! - [`emit`]: write the patch object holding the changed and new functions, with references
//!   to non-exported symbols pointed at `.klp.sym.*` placeholders;
//! - [`klp`]: turn those placeholders into livepatch relocation sections after kbuild's link.
//!
//! Nothing here runs processes or touches the file system.

pub mod diff;
pub mod emit;
pub mod klp;
pub mod layout;
pub mod model;
pub mod sections;
pub mod symbols;

pub use diff::{Analysis, DiffReport, Refusal, RefusalKind, analyze};

/// Why an object could not be read, compared or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("cannot read {file} as an x86-64 relocatable ELF object: {reason}")]
    Parse { file: String, reason: String },
    #[error(
        "cannot read {file} as an unstripped x86-64 vmlinux: {reason}; give the vmlinux of the kernel's -dbg package (usr/lib/debug/boot/vmlinux-RELEASE)"
    )]
    Vmlinux { file: String, reason: String },
    #[error("cannot write the {what}: {reason}")]
    Write { what: String, reason: String },
    #[error(
        "relocation at {section}+{offset:#x} points into {target}, which is not in the patch and has no symbol to refer to; patch the function that owns it too"
    )]
    Unreferenceable {
        section: String,
        offset: u64,
        target: String,
    },
    #[error(
        "relocation type {r_type} at {section}+{offset:#x} is not supported by the 6.1 module loader"
    )]
    RelocationType {
        section: String,
        offset: u64,
        r_type: u32,
    },
    #[error("symbol {symbol} (referenced from {section}): {reason}")]
    Symbol {
        symbol: String,
        section: String,
        reason: String,
    },
    #[error("{section}: {reason}")]
    Module { section: String, reason: String },
}
